"""Does a model's learned profile from one sampler or cfg plan a first run at another as well as its own?

Why: under the ``auto`` cost source a new sampler or cfg of a model that was
already learned plans its first run from the model's nearest other setup
(comfyui/auto_profile.py). This measures that choice on the zoo: for every
model, budget B of 50 steps and setup (euler, dpmpp_2m, res_multistep at cfg 1
and 4), three cached learning runs (4 seeds each) fill a profile per setup;
every setup is then sampled on held-out seeds as a first run with nothing
learned (even, then flat curvature below sigma 0.75), from its own
profile and from each other setup's, and scored by PSNR against its full run::

    python scripts/auto_transfer.py --seeds 6

Prints the mean and worst difference to that first run per profile kind.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from comfy_meancache.bench_zoo import BUDGETS, CALIBRATION_SEEDS, EARLIER_RUNS, SHIFT, STEPS, seeds_batch
from comfy_meancache.core.learning import Observations
from comfy_meancache.core.runtime import cached_denoiser
from comfy_meancache.core.sigmas import flow_sigmas
from comfy_meancache.flowmodel.zoo import ZOO_MODELS, load_zoo_model
from comfy_meancache.metrics import psnr
from comfy_meancache.samplers import SAMPLERS

SETUPS = [(sampler, cfg) for sampler in ("euler", "dpmpp_2m", "res_multistep") for cfg in (1.0, 4.0)]


def learned_profiles(model, sigmas, budget: int, runs: int = EARLIER_RUNS) -> dict[tuple[str, float], Observations]:
    """Per setup, what ``runs`` cached runs (each on its own seeds) taught."""
    grid = torch.tensor(sigmas)
    batches = [seeds_batch(model, [4 * run + s for s in CALIBRATION_SEEDS]) for run in range(runs)]
    profiles = {}
    for sampler, cfg in SETUPS:
        learned = Observations()
        for noise, labels in batches:
            run = cached_denoiser(
                partial(model.denoised, labels=labels, cfg=cfg), sigmas, compute_steps=budget, learn=learned
            )
            SAMPLERS[sampler](run, noise, grid)
            run.finish()
        profiles[(sampler, cfg)] = learned
    return profiles


def kind(setup: tuple[str, float], other: tuple[str, float]) -> str:
    if other == setup:
        return "own"
    return "other cfg" if other[0] == setup[0] else "other sampler" if other[1] == setup[1] else "other both"


def gains_over_first_run(model, setup, sigmas, budget: int, noise, labels, profiles: dict) -> dict:
    """PSNR gain over a first run of ``setup`` with nothing learned, planned from each profile, by its key."""
    grid = torch.tensor(sigmas)
    sampler, denoise = SAMPLERS[setup[0]], partial(model.denoised, labels=labels, cfg=setup[1])
    full = model.decode(sampler(denoise, noise, grid))

    def score(learn: Observations) -> float:
        run = cached_denoiser(denoise, sigmas, compute_steps=budget, learn=learn)
        return float(psnr(model.decode(sampler(run, noise, grid)), full).mean())

    first = score(Observations())
    return {key: score(Observations.from_dict(learned.to_dict())) - first for key, learned in profiles.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6, help="held-out seeds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    sigmas = flow_sigmas(STEPS, SHIFT)
    gains: dict[str, list[float]] = {}
    for name in ZOO_MODELS:
        model = load_zoo_model(name)
        noise, labels = seeds_batch(model, list(range(1000, 1000 + args.seeds)))
        for budget in BUDGETS:
            profiles = learned_profiles(model, sigmas, budget)
            for setup in SETUPS:
                for other, gain in gains_over_first_run(model, setup, sigmas, budget, noise, labels, profiles).items():
                    gains.setdefault(kind(setup, other), []).append(gain)
        print(f"{name}: done", flush=True)
    for label, values in gains.items():
        mean, worst = statistics.mean(values), min(values)
        print(f"{label:14s} - first run: mean {mean:+.2f} dB, worst {worst:+.2f} dB ({len(values)} cells)")
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
