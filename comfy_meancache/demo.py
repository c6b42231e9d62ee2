"""``python -m comfy_meancache demo``: see the speed/quality trade-off on a laptop in under a minute.

Plans the default preset for the embedded flow model, samples a few seeds
with every step and with MeanCache, prints model calls, wall-clock speedup
and PSNR against the full run, and writes a PNG with both image grids and
the step chart of the cached run.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .bench import SHIFT, full_runs, seeds_noise
from .core.chart import run_chart
from .core.costs import even_costs
from .core.euler import sample_euler
from .core.planner import plan
from .core.presets import DEFAULT_PRESET, PRESETS
from .core.profile import Profile
from .core.sigmas import flow_sigmas
from .core.stepper import Stepper
from .flowmodel import decode, load_embedded_model
from .metrics import psnr

DEMO_SEEDS = tuple(range(100, 108))


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = load_embedded_model()
    preset = PRESETS[args.preset]
    sigmas = flow_sigmas(args.steps, SHIFT, "simple")
    noise, labels = seeds_noise(list(DEMO_SEEDS), model.latent_shape)
    settings = replace(preset.settings, preset=args.preset)
    costs = even_costs(args.steps, preset.estimator, settings.max_span, settings.max_gap)  # what the Planner uses
    if args.calibrate:
        cal_noise, cal_labels = seeds_noise([0, 1, 2, 3], model.latent_shape)
        calibration = Profile("demo", runs=[full_runs(model, sigmas, cal_noise, cal_labels, args.cfg)])
        costs = calibration.costs(sigmas, preset.estimator, settings.max_span, settings.max_gap)
        settings = settings.for_measured_costs()
    schedule = plan(sigmas, speedup=preset.speedup, estimator=preset.estimator, settings=settings, costs=costs)

    def velocity(x, sigma):
        return model.velocity(x, sigma, labels, args.cfg)

    velocity(noise, sigmas[0])  # warm up, so no timed run pays one-off costs
    (full, _), t_full = _best_of(2, lambda: sample_euler(velocity, noise, sigmas))
    (cached, stats), t_cached = _best_of(2, lambda: sample_euler(velocity, noise, sigmas, Stepper(schedule)))
    quality = psnr(decode(cached), decode(full))
    print(f"plan ({args.preset}, {schedule.settings.cost_source} costs): {schedule.summary()}")
    print(f"run: {stats.summary()}")
    print(
        f"model calls {stats.model_calls} vs {args.steps}; wall clock {t_full:.2f} s -> {t_cached:.2f} s "
        f"({t_full / t_cached:.2f}x); PSNR vs full run {float(quality.mean()):.1f} dB "
        f"(min {float(quality.min()):.1f}) over {len(DEMO_SEEDS)} seeds, cfg {args.cfg:g}"
    )
    out = Path(args.out)
    write_png(out, decode(full), decode(cached), run_chart(schedule, stats), quality)
    print(f"wrote {out} in {time.perf_counter() - started:.1f} s")
    return 0


def _best_of(repeats: int, run):
    """The result of ``run()`` and its fastest wall time over ``repeats`` runs (timings on a laptop are noisy)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return result, best


def write_png(path: Path, full: torch.Tensor, cached: torch.Tensor, chart: torch.Tensor, quality: torch.Tensor) -> None:
    """Two rows of images (full, cached) above the step chart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = full.shape[0]
    fig = Figure(figsize=(12, 11), dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    for row, (title, images) in enumerate((("every step", full), ("MeanCache", cached))):
        for k in range(n):
            ax = fig.add_axes((0.02 + k * 0.96 / n, 0.80 - row * 0.17, 0.96 / n - 0.01, 0.15))
            ax.imshow(images[k, 0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_ylabel(title, fontsize=11)
            if row == 1:
                ax.set_xlabel(f"{float(quality[k]):.1f} dB", fontsize=9)
    chart_ax = fig.add_axes((0.0, 0.0, 1.0, 0.60))
    chart_ax.imshow(chart[0].numpy())
    chart_ax.axis("off")
    fig.savefig(path)


def register(commands) -> None:
    parser = commands.add_parser("demo", help="sample the embedded model full and with MeanCache, write a PNG")
    parser.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--calibrate", action="store_true", help="plan from 4 calibration seeds instead of the prior")
    parser.add_argument("--out", default="demo-out/meancache_demo.png")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.set_defaults(run=run)
