"""``python -m comfy_meancache bench --methods``: speed and quality of every method at equal model calls.

Everything runs on the embedded flow model (``comfy_meancache.flowmodel``)
with ComfyUI's Z-Image sigmas (shift 3, ``simple``). For each step count N,
CFG scale and model-call budget B, every method is scored against the full
N-step Euler run of the same seeds: PSNR and SSIM of the decoded images and
the relative L2 of the latent (mean and std over held-out seeds), plus the
model calls made and the wall time. Calibrated plans use seeds disjoint from
the evaluation seeds. ``bench --overhead`` times the bookkeeping per step
alone; plain ``bench`` is the zoo benchmark (:mod:`.bench_zoo`).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .core.costs import EdgeCosts
from .core.euler import sample_euler
from .core.learning import Observations, save_learned
from .core.official import official_plan
from .core.planner import fewest_calls, plan
from .core.profile import Profile, Trajectory
from .core.runtime import CachedDenoiser, cached_denoiser
from .core.schedule import PlannerSettings, Schedule
from .core.sigmas import flow_sigmas
from .core.stepper import Stepper
from .flowmodel import decode, load_embedded_model, sample_noise
from .metrics import psnr, relative_l2, ssim
from .samplers import ONE_EVALUATION

SHIFT = 3.0
BUDGETS_OF_50 = (25, 20, 15, 13, 10)
CALIBRATION_SEEDS = tuple(range(4))
EVAL_SEED_BASE = 1000


@dataclass
class Setup:
    """One (steps, cfg) case: seeds, reference runs and calibration profiles."""

    steps: int
    cfg: float
    sigmas: list[float]
    noise: torch.Tensor
    labels: torch.Tensor
    reference: torch.Tensor
    eval_profile: Profile
    calibration: Profile
    transfer: Profile | None = None  # recorded at 50 steps, for other step counts


@dataclass
class Row:
    method: str
    budget: int
    calls: int = 0
    psnr: tuple[float, float] = (float("nan"), float("nan"))
    ssim: tuple[float, float] = (float("nan"), float("nan"))
    rel_l2: tuple[float, float] = (float("nan"), float("nan"))
    wall_s: float = 0.0
    note: str = ""
    extra: dict = field(default_factory=dict)


def seeds_noise(seeds: list[int], shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and class label (seed mod 10) per seed, independent of batch composition."""
    noise = torch.cat([sample_noise(1, s, shape) for s in seeds])
    return noise, torch.tensor([s % 10 for s in seeds])


def velocity_fn(model, labels: torch.Tensor, cfg: float):
    return lambda x, sigma: model.velocity(x, sigma, labels, cfg)


def full_runs(model, sigmas: list[float], noise: torch.Tensor, labels: torch.Tensor, cfg: float) -> Trajectory:
    """A full-step Euler run, kept as a calibration trajectory (velocities and states)."""
    velocities, states, x = [], [noise], noise
    for i in range(len(sigmas) - 1):
        v = model.velocity(x, sigmas[i], labels, cfg)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
        velocities.append(v)
        states.append(x)
    return Trajectory(sigmas, torch.stack(velocities), torch.stack(states))


def make_setup(model, steps: int, cfg: float, eval_seeds: list[int], transfer: Profile | None) -> Setup:
    sigmas = flow_sigmas(steps, SHIFT, "simple")
    noise, labels = seeds_noise(eval_seeds, model.latent_shape)
    reference_run = full_runs(model, sigmas, noise, labels, cfg)
    cal_noise, cal_labels = seeds_noise(list(CALIBRATION_SEEDS), model.latent_shape)
    calibration = Profile(
        "calibration", {"seeds": list(CALIBRATION_SEEDS)}, [full_runs(model, sigmas, cal_noise, cal_labels, cfg)]
    )
    return Setup(
        steps,
        cfg,
        sigmas,
        noise,
        labels,
        reference_run.states[-1],
        Profile("eval-seeds", runs=[reference_run]),
        calibration,
        transfer,
    )


def score(setup: Setup, latent: torch.Tensor) -> dict:
    images, reference = decode(latent), decode(setup.reference)
    values = {
        "psnr": psnr(images, reference),
        "ssim": ssim(images, reference),
        "rel_l2": relative_l2(latent, setup.reference),
    }
    return {k: (float(v.mean()), float(v.std())) for k, v in values.items()}


def run_schedule(model, setup: Setup, schedule: Schedule, method: str, budget: int) -> Row:
    calls = 0

    def counted(x, sigma):
        nonlocal calls
        calls += 1
        return model.velocity(x, sigma, setup.labels, setup.cfg)

    start = time.perf_counter()
    latent, stats = sample_euler(counted, setup.noise, setup.sigmas, Stepper(schedule))
    wall = time.perf_counter() - start
    row = Row(method, budget, calls, wall_s=wall, **score(setup, latent))
    row.extra = {"computed": list(schedule.computed_steps), "fallbacks": len(stats.fallbacks)}
    return row


def run_fewer_steps(model, setup: Setup, budget: int) -> Row:
    sigmas = flow_sigmas(budget, SHIFT, "simple")
    start = time.perf_counter()
    latent, _ = sample_euler(velocity_fn(model, setup.labels, setup.cfg), setup.noise, sigmas)
    return Row(
        "fewer steps (plain Euler, B steps)", budget, budget, wall_s=time.perf_counter() - start, **score(setup, latent)
    )


def uniform_reuse(sigmas: list[float], budget: int) -> Schedule:
    """Reuse on evenly spaced model calls (first and last included): the FORA-style baseline."""
    n = len(sigmas) - 1
    nodes = sorted({round(k * (n - 1) / (budget - 1)) for k in range(budget)})
    compute = [i in nodes for i in range(n)]
    return Schedule(sigmas, compute, [0 if c else 1 for c in compute], "reuse", budget)


def methods(setup: Setup, budget: int, settings: PlannerSettings) -> list[tuple[str, object]]:
    """(name, schedule factory or None where the budget is infeasible) for every cached method."""
    sig = setup.sigmas

    def pssp(estimator: str, costs: EdgeCosts | None):
        if budget < fewest_calls(setup.steps, settings):
            return None  # the warm-up and max gap need more calls than this budget
        return lambda: plan(sig, compute_steps=budget, estimator=estimator, settings=settings, costs=costs)

    def profile_costs(profile: Profile, estimator: str):
        return profile.costs(sig, estimator, settings.max_span, settings.max_gap)

    entries = [
        ("reuse, uniform grid", lambda: uniform_reuse(sig, budget)),
        ("reuse, PSSP calibrated", pssp("reuse", profile_costs(setup.calibration, "reuse"))),
        (
            "meancache (official update), PSSP calibrated",
            pssp("meancache", profile_costs(setup.calibration, "meancache")),
        ),
        ("meancache2, PSSP calibrated", pssp("meancache2", profile_costs(setup.calibration, "meancache2"))),
        ("meancache, PSSP prior", pssp("meancache", None)),
        ("meancache2, PSSP prior", pssp("meancache2", None)),
        ("official-zimage-50 lists, remapped", lambda: official_plan(sig, budget)),
        (
            "meancache2, PSSP on the eval seeds (oracle)",
            pssp("meancache2", profile_costs(setup.eval_profile, "meancache2")),
        ),
    ]
    if setup.transfer is not None:
        entries.append(
            ("meancache2, PSSP 50-step profile", pssp("meancache2", profile_costs(setup.transfer, "meancache2")))
        )
    return entries


def bench_case(model, setup: Setup, budgets: list[int], settings: PlannerSettings, log) -> list[Row]:
    rows = []
    for budget in budgets:
        rows.append(run_fewer_steps(model, setup, budget))
        for name, factory in methods(setup, budget, settings):
            if factory is None:
                rows.append(Row(name, budget, note=f"B={budget} below the warm-up/max-gap minimum"))
                continue
            rows.append(run_schedule(model, setup, factory(), name, budget))
        log(f"  N={setup.steps} cfg={setup.cfg:g} B={budget}: done")
    return rows


def budgets_for(steps: int) -> list[int]:
    return sorted({max(2, round(steps * b / 50)) for b in BUDGETS_OF_50}, reverse=True)


AUTO_CASES = {"learned": " (auto: learning, learned plan)", "first": " (auto: first run, learning)"}
OVERHEAD_CASES = (("meancache2", None), ("meancache", None), ("meancache2", "learned"), ("meancache2", "first"))
OVERHEAD_REPEATS = 7  # runs per case; the median run is reported
LEARNED_RUNS = 10  # the auto case plans from a profile that ten earlier 50-step runs filled


def measure_overhead(model) -> list[dict]:
    """Bookkeeping per step of one cached 50-step run at Z-Image latent sizes, as the hook runs it.

    Every evaluation goes through :class:`CachedDenoiser` (step matching,
    decisions, history, estimates) with the model call replaced by a ready
    tensor. The ``auto`` cases also do what the ``auto`` source adds: they
    observe curvature and slope at every computed step and save the learned
    profile at the end; a later run plans from learned costs first, a first
    run plans as one (:func:`~.core.learning.first_run_plan`). That is
    divided over the run's steps.
    """
    sigmas = flow_sigmas(50, SHIFT)
    noise, labels = seeds_noise([0], model.latent_shape)
    forward = _median_time(lambda: model.velocity(noise, 0.5, labels, 4.0), 20)
    earlier = Observations()
    for _ in range(LEARNED_RUNS):
        for s in sigmas[2:-1:2]:
            earlier.add(s, 1.0 + s, 0.5 + s)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for shape in ((1, 16, 128, 128), (2, 16, 128, 128)):
            for dtype in (torch.float32, torch.bfloat16):
                x = torch.randn(shape).to(dtype)
                denoised = torch.randn_like(x)
                steps = [torch.full((shape[0],), s, dtype=dtype) for s in sigmas[:-1]]
                for estimator, auto in OVERHEAD_CASES:
                    run_s = []
                    for _ in range(OVERHEAD_REPEATS):
                        start = time.perf_counter()
                        if auto:
                            learned = Observations.from_dict(earlier.to_dict()) if auto == "learned" else Observations()
                            cached = cached_denoiser(None, sigmas, compute_steps=20, learn=learned)
                        else:
                            cached = CachedDenoiser(None, plan(sigmas, compute_steps=20, estimator=estimator))
                            start = time.perf_counter()  # the Planner node plans before sampling
                        for sigma in steps:
                            cached.evaluate(x, sigma, lambda ready=denoised: ready)
                        cached.finish()
                        if auto:
                            save_learned(Path(folder) / "auto.json", learned, {"runs": LEARNED_RUNS + 1})
                        run_s.append(time.perf_counter() - start)
                    mean_us = 1e6 * statistics.median(run_s) / len(steps)
                    results.append(
                        {
                            "shape": list(shape),
                            "dtype": str(dtype).removeprefix("torch."),
                            "estimator": estimator + AUTO_CASES.get(auto, ""),
                            "mean_us_per_step": round(mean_us, 1),
                            "fraction_of_forward": round(mean_us / (1e6 * forward), 3),
                            "embedded_forward_us": round(1e6 * forward, 1),
                        }
                    )
    return results


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def markdown(cases: list[dict], machine: str) -> str:
    lines = [
        f"Benchmark of {date.today().isoformat()} on {machine}.",
        "PSNR in dB (mean +- std) against the full run of the same seeds; SSIM in brackets.",
        "",
    ]
    for case in cases:
        rows = [Row(**r) for r in case["rows"]]
        budgets = sorted({r.budget for r in rows}, reverse=True)
        names = list(dict.fromkeys(r.method for r in rows))
        lines.append(f"### N = {case['steps']}, cfg {case['cfg']:g} ({case['seeds']} held-out seeds)")
        lines.append("")
        lines.append("| method | " + " | ".join(f"B={b} ({case['steps'] / b:.1f}x)" for b in budgets) + " |")
        lines.append("|---|" + "---|" * len(budgets))
        for name in names:
            cells = []
            for b in budgets:
                r = next((r for r in rows if r.method == name and r.budget == b), None)
                if r is None or r.note:
                    cells.append("n/a")
                else:
                    calls = f", {r.calls} calls" if r.calls != b else ""
                    cells.append(f"{r.psnr[0]:.1f} +- {r.psnr[1]:.1f} ({r.ssim[0]:.3f}{calls})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(cases: list[dict], path: Path) -> None:
    """PSNR against model-call speedup, one panel per case."""
    fig = Figure(figsize=(6 * len(cases), 4.5), dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    for k, case in enumerate(cases):
        ax = fig.add_subplot(1, len(cases), k + 1)
        rows = [Row(**r) for r in case["rows"] if not r["note"]]
        for name in dict.fromkeys(r.method for r in rows):
            points = sorted((case["steps"] / r.budget, r.psnr[0]) for r in rows if r.method == name)
            ax.plot(*zip(*points), marker="o", label=name)
        ax.set_title(f"N={case['steps']}, cfg {case['cfg']:g}")
        ax.set_xlabel("model-call speedup")
        ax.set_ylabel("PSNR vs full run (dB)")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_embedded_model()
    settings = PlannerSettings()
    steps_list = [50] if args.quick else [50, 28, 20]
    cfgs = [4.0] if args.quick else [1.0, 4.0]
    seeds = list(range(EVAL_SEED_BASE, EVAL_SEED_BASE + (16 if args.quick else args.seeds)))
    log = print
    cases, transfer = [], {}
    started = time.perf_counter()
    for cfg in cfgs:
        for steps in steps_list:
            log(f"N={steps} cfg={cfg:g}: reference and calibration runs")
            setup = make_setup(model, steps, cfg, seeds, transfer.get(cfg))
            if steps == 50:
                transfer[cfg] = Profile("50-step", runs=setup.calibration.runs)
            budgets = [20, 10] if args.quick else budgets_for(steps)
            rows = bench_case(model, setup, budgets, settings, log)
            cases.append({"steps": steps, "cfg": cfg, "seeds": len(seeds), "rows": [r.__dict__ for r in rows]})
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    (out / "bench.json").write_text(
        json.dumps({"date": date.today().isoformat(), "machine": machine, "cases": cases}, indent=1)
    )
    table = markdown(cases, machine)
    (out / "bench.md").write_text(table)
    plot(cases, out / "bench.png")
    print(table)
    print(
        f"wrote {out / 'bench.md'}, {out / 'bench.json'}, {out / 'bench.png'} in {time.perf_counter() - started:.0f} s"
    )
    return 0


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse, as PyTorch's GPU caching allocator does; False if not glibc.

    Otherwise every fresh 4 MB CPU tensor is new pages from the kernel, and
    their page faults add up to 1 ms of noise per step on a small VM: the
    operating system's cost, not MeanCache's.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def run_overhead(args: argparse.Namespace) -> int:
    """``bench --overhead``: the bookkeeping table alone (with freed memory kept, see :func:`keep_freed_memory`)."""
    kept = keep_freed_memory()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overhead = measure_overhead(load_embedded_model())
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    lines = [
        f"Bookkeeping per step on {machine}, {date.today().isoformat()}: mean over a 50-step run with 20 model "
        f"calls (median of {OVERHEAD_REPEATS} runs), against one forward of the embedded model; freed memory "
        + ("kept by glibc for reuse." if kept else "returned to the system (not glibc): page faults included."),
        "",
    ]
    lines += overhead_table(overhead)
    (out / "overhead.json").write_text(json.dumps({"machine": machine, "overhead": overhead}, indent=1))
    (out / "overhead.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def overhead_table(overhead: list[dict]) -> list[str]:
    lines = ["| latent | dtype | estimator | us / step | x embedded forward |", "|---|---|---|---|---|"]
    for o in overhead:
        cells = (o["shape"], o["dtype"], o["estimator"], o["mean_us_per_step"], o["fraction_of_forward"])
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def register(commands) -> None:
    parser = commands.add_parser(
        "bench",
        help="the default against fewer steps on the model zoo, leave-one-out (--methods: every method on the "
        "embedded model)",
    )
    parser.add_argument("--methods", action="store_true", help="every cached method at equal calls, embedded model")
    parser.add_argument(
        "--overhead", action="store_true", help="bookkeeping per step of a cached run at Z-Image latent sizes"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: cfg 4, B=20 (and 10), fewer seeds")
    parser.add_argument("--seeds", type=int, default=None, help="held-out evaluation seeds (default 64; zoo 16)")
    parser.add_argument("--models", nargs="*", help="zoo models to score (default: all)")
    parser.add_argument(
        "--samplers", nargs="*", choices=ONE_EVALUATION, help="zoo samplers (default: euler dpmpp_2m res_multistep)"
    )
    parser.add_argument("--out", default="bench-out", help="output folder")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.set_defaults(run=_dispatch)


def _dispatch(args: argparse.Namespace) -> int:
    if args.overhead:
        return run_overhead(args)
    if args.methods:
        args.seeds = args.seeds or 64
        return run(args)
    from . import bench_zoo

    args.seeds = args.seeds or (8 if args.quick else 16)
    return bench_zoo.run(args)
