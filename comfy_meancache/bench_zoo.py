"""``python -m comfy_meancache bench``: the default against the honest competitor, on a zoo, leave-one-out.

For every zoo model (``comfy_meancache.flowmodel.zoo``), CFG scale, sampler
(euler, dpmpp_2m, res_multistep) and model-call budget B of N steps:

* **fewer steps**: the same sampler with B steps, the honest competitor;
* **default**: MeanCache as a user gets it without calibrating, a model's
  first run under ``auto``: the default estimator on even costs
  (:func:`core.costs.even_costs`), which fit nothing, kept while sigma is
  above 0.75 and planned for flat curvature below (:func:`core.learning.first_run_plan`);
* **prior**: the Gaussian-mixture prior *refit without the model being
  scored* (:func:`core.prior.fit_prior` on the other zoo models), so no
  number is measured on what was fitted;
* **learned** and **4th run**: MeanCache after one (three) earlier cached
  runs of the same model, sampler and budget, each on its own seeds and each
  planned from what the runs before it learned: the plan comes from the
  curvature those runs' computed steps showed (:mod:`core.learning`), at no
  extra model call;
* **calibrated**: planned from costs measured on this model's own full runs
  (calibration seeds disjoint from the evaluation seeds): the ceiling a
  self-learning default should approach.

Quality is PSNR of the decoded images against the same sampler's full N-step
run, and against a near-exact ODE solution (Heun, 500 steps).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from functools import partial
from pathlib import Path

import torch

from .bench import full_runs
from .core.estimators import DEFAULT_ESTIMATOR
from .core.learning import Observations
from .core.prior import MixturePrior, fit_prior, prior_costs
from .core.profile import Profile, Trajectory
from .core.runtime import cached_denoiser
from .core.sigmas import flow_sigmas
from .metrics import psnr
from .samplers import DISCARD_PENULTIMATE_SIGMA, SAMPLERS

SHIFT = 3.0
STEPS = 50
BUDGETS = (25, 20, 15, 12)
ZOO_SAMPLERS = ("euler", "dpmpp_2m", "res_multistep")
EXACT_STEPS = 500
CALIBRATION_SEEDS = tuple(range(4))
EARLIER_RUNS = 3  # the 4th run learns from three earlier ones, each on 4 seeds of its own
LEARNED_AFTER = {1: "learned", 3: "4th run"}
EVAL_SEED_BASE = 1000


@dataclass
class Cell:
    """One method at one budget: PSNR (mean over seeds) against the full run and against the exact solution.

    ``per_seed`` keeps each seed's PSNR against the full run, so two methods
    can be compared seed by seed (:func:`paired`).
    """

    model: str
    cfg: float
    sampler: str
    method: str
    budget: int
    calls: int
    psnr_full: float
    psnr_exact: float
    per_seed: list[float] = field(default_factory=list)


def paired(a: Cell, b: Cell) -> tuple[float, float]:
    """Mean and standard error over seeds of ``a``'s PSNR minus ``b``'s.

    Both ran on the same seeds, so how hard each seed is cancels: on a model
    whose trajectories flip with small changes (the photo UNet at cfg 4) a
    seed's PSNR varies by tens of dB, far more than the methods differ.
    Without per-seed values (cells from before they were kept) the error is
    taken as 0: no miss is put down to noise.
    """
    differences = [x - y for x, y in zip(a.per_seed, b.per_seed, strict=True)]
    if len(differences) < 2:
        return a.psnr_full - b.psnr_full, 0.0
    return statistics.mean(differences), statistics.stdev(differences) / math.sqrt(len(differences))


def sampler_sigmas(sampler: str, steps: int) -> list[float]:
    """The sigmas ComfyUI's KSampler gives ``sampler`` for ``steps`` steps on the zoo's schedule."""
    if sampler in DISCARD_PENULTIMATE_SIGMA:
        sigmas = flow_sigmas(steps + 1, SHIFT)
        return sigmas[:-2] + sigmas[-1:]
    return flow_sigmas(steps, SHIFT)


def seeds_batch(model, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and a class label per seed (seed mod classes), independent of batch composition."""
    from .flowmodel.zoo import sample_noise

    noise = torch.cat([sample_noise(1, s, model.latent_shape) for s in seeds])
    return noise, torch.tensor([s % model.num_classes for s in seeds])


def calibration_runs(model, cfgs: list[float]) -> dict[float, Trajectory]:
    noise, labels = seeds_batch(model, list(CALIBRATION_SEEDS))
    sigmas = flow_sigmas(STEPS, SHIFT)
    return {cfg: full_runs(model, sigmas, noise, labels, cfg) for cfg in cfgs}


def leave_one_out_prior(held_out: str, runs: dict[str, dict[float, Trajectory]]) -> MixturePrior:
    """The prior fitted on every zoo model but ``held_out``."""
    others = [run for name, by_cfg in runs.items() if name != held_out for run in by_cfg.values()]
    return fit_prior([(run.sigmas, run.velocities, run.states) for run in others])[0][1]


@dataclass(frozen=True)
class References:
    """What a case's latents are scored against: the full run and the near-exact solution, decoded."""

    full: torch.Tensor
    exact: torch.Tensor

    def score(self, model, latent: torch.Tensor) -> tuple[float, float, list[float]]:
        """Mean PSNR against the full run and the exact solution, and each seed's against the full run."""
        images = model.decode(latent)
        per_seed = psnr(images, self.full)
        return float(per_seed.mean()), float(psnr(images, self.exact).mean()), [round(float(p), 3) for p in per_seed]


def score_model(
    name: str,
    model,
    cfgs: list[float],
    samplers: list[str],
    budgets: list[int],
    seeds: list[int],
    prior: MixturePrior,
    calibration: dict[float, Trajectory],
    log,
) -> list[Cell]:
    noise, labels = seeds_batch(model, seeds)
    earlier_seeds = [[4 * run + s for s in CALIBRATION_SEEDS] for run in range(EARLIER_RUNS)]
    earlier_batches = [seeds_batch(model, run_seeds) for run_seeds in earlier_seeds]
    cells = []
    for cfg in cfgs:
        denoise = partial(_denoised, model, labels, cfg)
        exact = model.decode(SAMPLERS["heun"](denoise, noise, torch.tensor(flow_sigmas(EXACT_STEPS, SHIFT))))
        for sampler_name in samplers:
            sampler = SAMPLERS[sampler_name]
            sigmas = sampler_sigmas(sampler_name, STEPS)
            grid = torch.tensor(sigmas)
            priced = prior_costs(sigmas, DEFAULT_ESTIMATOR, prior=prior)
            calibrated = Profile("calibration", runs=[calibration[cfg]])
            plan_from = {  # fresh arguments per run: a run adds what it learns to its observations
                "default": lambda: dict(learn=Observations()),  # auto's first run: nothing learned yet
                "prior": partial(dict, costs=priced),
                "calibrated": partial(dict, profile=calibrated),
            }
            full = sampler(denoise, noise, grid)
            refs = References(model.decode(full), exact)
            key = (name, cfg, sampler_name)
            cells.append(Cell(*key, "full", STEPS, STEPS, *refs.score(model, full)))
            for budget in budgets:
                fewer = sampler(denoise, noise, torch.tensor(sampler_sigmas(sampler_name, budget)))
                cells.append(Cell(*key, "fewer steps", budget, budget, *refs.score(model, fewer)))
                for method, source in plan_from.items():
                    cached = cached_denoiser(denoise, sigmas, compute_steps=budget, **source())
                    latent = sampler(cached, noise, grid)
                    cells.append(Cell(*key, method, budget, cached.stats.model_calls, *refs.score(model, latent)))
                learned = Observations()
                for runs_before, (learn_noise, learn_labels) in enumerate(earlier_batches, 1):
                    learn_denoise = partial(_denoised, model, learn_labels, cfg)
                    earlier = cached_denoiser(learn_denoise, sigmas, compute_steps=budget, learn=learned)
                    sampler(earlier, learn_noise, grid)
                    earlier.finish()  # its observations are in
                    if runs_before in LEARNED_AFTER:
                        so_far = Observations.from_dict(learned.to_dict())  # the scored run must not teach the next
                        cached = cached_denoiser(denoise, sigmas, compute_steps=budget, learn=so_far)
                        latent = sampler(cached, noise, grid)
                        method = LEARNED_AFTER[runs_before]
                        cells.append(Cell(*key, method, budget, cached.stats.model_calls, *refs.score(model, latent)))
            log(f"  {name} cfg {cfg:g} {sampler_name}: done")
    return cells


def _denoised(model, labels: torch.Tensor, cfg: float, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return model.denoised(x, sigma, labels, cfg)


def markdown(cells: list[Cell], machine: str, seeds: int) -> str:
    """Per model, cfg and sampler: PSNR against the full run (and the exact solution) for each method and B."""
    budgets = sorted({c.budget for c in cells if c.method != "full"}, reverse=True)
    lines = [
        f"Zoo benchmark of {date.today().isoformat()} on {machine}; N = {STEPS}, {seeds} held-out seeds.",
        "PSNR in dB against the same sampler's full run (against Heun 500 steps in brackets); "
        "default = a model's first run (even costs, for flat curvature below sigma 0.75; nothing "
        "fitted); learned / 4th run = after one / three "
        "earlier runs of the model; "
        "prior = mixture prior refit without the scored model.",
        "",
        "| model | cfg | sampler | method | " + " | ".join(f"B={b}" for b in budgets) + " |",
        "|---|---|---|---|" + "---|" * len(budgets),
    ]
    index = {(c.model, c.cfg, c.sampler, c.method, c.budget): c for c in cells}
    keys = list(dict.fromkeys((c.model, c.cfg, c.sampler) for c in cells))
    for model, cfg, sampler in keys:
        for method in ("fewer steps", "default", *LEARNED_AFTER.values(), "prior", "calibrated"):
            row = []
            for b in budgets:
                c = index.get((model, cfg, sampler, method, b))
                row.append("n/a" if c is None else f"{c.psnr_full:.1f} ({c.psnr_exact:.1f})")
            lines.append(f"| {model} | {cfg:g} | {sampler} | {method} | " + " | ".join(row) + " |")
    lines += ["", *targets(cells)]
    return "\n".join(lines)


def targets(cells: list[Cell]) -> list[str]:
    """Per uncalibrated method: its margin over fewer steps (and the mean at B=20), quality rising as B falls,
    and the gap to calibrated.

    Each count of cells that miss a target also says how many of them miss it
    by less than two standard errors of the seed-paired difference
    (:func:`paired`): misses the evaluation seeds cannot tell from a hit.
    """
    index = {(c.model, c.cfg, c.sampler, c.method, c.budget): c for c in cells}
    lines = []
    for name in ("default", *LEARNED_AFTER.values()):
        margins, gaps, rises = [], [], []
        for (model, cfg, sampler, method, b), c in index.items():
            if method != name:
                continue
            margins.append((*paired(c, index[(model, cfg, sampler, "fewer steps", b)]), b))
            gaps.append(paired(index[(model, cfg, sampler, "calibrated", b)], c))
            smaller = [paired(index[k], c) for k in index if k[:4] == (model, cfg, sampler, name) and k[4] < b]
            rises.append(smaller)
        if not margins:
            continue
        at_20 = [m for m, _, b in margins if b == 20]
        short = [(m, se) for m, se, _ in margins if m < 3]
        lines += [
            f"{name} - fewer steps: min {min(m for m, _, _ in margins):+.1f} dB over {len(margins)} cells, "
            f"{len(margins) - len(short)} cells >= +3 dB"
            + (f"; mean at B=20 {statistics.mean(at_20):+.1f} dB" if at_20 else "")
            + f"; of the {len(short)} short of +3 dB, {sum(m + 2 * se >= 3 for m, se in short)} within 2 standard "
            "errors of it (seed-paired)",
            f"calibrated - {name}: mean {statistics.mean(g for g, _ in gaps):+.1f} dB, max "
            f"{max(g for g, _ in gaps):+.1f} dB; within 3 dB in {_within(gaps, 3)}, "
            f"within 1.5 dB in {_within(gaps, 1.5)}",
            f"cells where {name} gets better with fewer calls (> 0.5 dB): "
            f"{sum(any(r > 0.5 for r, _ in cell) for cell in rises)}, by more than 0.5 dB plus 2 standard errors: "
            f"{sum(any(r - 2 * se > 0.5 for r, se in cell) for cell in rises)}",
        ]
    return lines


def _within(gaps: list[tuple[float, float]], limit: float) -> str:
    """How many gaps are at most ``limit``, and how many more are within two standard errors of it."""
    hits = sum(g <= limit for g, _ in gaps)
    near = sum(g > limit and g - 2 * se <= limit for g, se in gaps)
    return f"{hits} of {len(gaps)} cells (+{near} within 2 standard errors)"


def run(args: argparse.Namespace) -> int:
    from .flowmodel.zoo import ZOO_MODELS, load_zoo_model

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(args.models or ZOO_MODELS)
    cfgs = [4.0] if args.quick else [1.0, 4.0]
    samplers = args.samplers or (["euler", "dpmpp_2m"] if args.quick else list(ZOO_SAMPLERS))
    budgets = [20] if args.quick else list(BUDGETS)
    seeds = list(range(EVAL_SEED_BASE, EVAL_SEED_BASE + args.seeds))
    started = time.perf_counter()
    models = {name: load_zoo_model(name) for name in (names if args.quick else ZOO_MODELS)}
    runs = {name: calibration_runs(model, cfgs) for name, model in models.items()}
    cells = []
    for name in names:
        prior = MixturePrior() if args.quick else leave_one_out_prior(name, runs)
        print(f"{name}: prior {'(shipped, not refit: --quick)' if args.quick else 'refit without it'}: {prior}")
        cells += score_model(name, models[name], cfgs, samplers, budgets, seeds, prior, runs[name], print)
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    (out / "zoo.json").write_text(json.dumps({"machine": machine, "cells": [asdict(c) for c in cells]}, indent=1))
    table = markdown(cells, machine, len(seeds))
    (out / "zoo.md").write_text(table)
    print(table)
    print(f"wrote {out / 'zoo.md'} and {out / 'zoo.json'} in {time.perf_counter() - started:.0f} s")
    return 0
