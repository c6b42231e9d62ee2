"""Soak test: the t2i example workflow many times in one process through ComfyUI's PromptExecutor.

Why: a step cache that leaks (a run state, a velocity tensor, a growing list)
shows only after many queue items in one long-lived ComfyUI process. This
queues the tiny-model version of workflows/zimage_t2i_meancache.json N times
with random seeds, step counts and cfg, and after each run checks:

* the run succeeded and made exactly the planned number of model forwards;
* nothing of the run is left: no ``meancache_run`` key on the patched model,
  the run state object is freed, and no tensor and no run state is reachable
  from the MeanCache holder (its RunStats keep plain numbers only);
* resident memory and the number of live torch tensors stay flat (the first
  and the last quartile of the runs after a warm-up are compared).

Needs a ComfyUI checkout (``COMFYUI_PATH`` or ~/comfy/ComfyUI) and its venv::

    PYTHONPATH=. ~/comfy/venv/bin/python scripts/soak.py --runs 200
    PYTHONPATH=. ~/comfy/venv/bin/python scripts/soak.py --runs 100 --cache none

Prints a summary table; exits 1 on any violation, 2 if ComfyUI is unusable.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests" / "comfyui"
for path in (str(ROOT), str(TESTS)):
    if path not in sys.path:
        sys.path.insert(0, path)

import comfyui_bootstrap  # noqa: E402  (stdlib only)

# A leak of one object per run would grow by (runs / 2) between the quartiles;
# these bounds sit well below that and above run-to-run noise.
RSS_GROWTH_MB = 48.0
TENSOR_GROWTH = 4.0


@dataclass
class Sample:
    run: int
    steps: int
    cfg: float
    planned: int
    calls: int
    apply_cached: bool
    rss_mb: float
    tensors: int
    seconds: float


def rss_mb() -> float:
    """Resident set size of this process in MiB (/proc/self/statm; psutil elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def live_tensors(torch) -> int:
    gc.collect()
    # type() rather than isinstance: some torch objects warn when asked for __class__
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


def reachable(root, torch, limit: int = 50_000) -> tuple[int, list[str]]:
    """How many tensors, and which run-state objects, can be reached from ``root`` by references."""
    import types

    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    seen, stack, tensors, states = {id(root)}, [root], 0, []
    while stack and len(seen) < limit:
        obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            tensors += 1
            continue
        if type(obj).__name__ == "RunState":
            states.append(repr(obj))
        for ref in gc.get_referents(obj):
            if id(ref) not in seen and not isinstance(ref, skip):
                seen.add(id(ref))
                stack.append(ref)
    return tensors, states


def quartiles(samples: list[Sample]) -> list[list[Sample]]:
    n = len(samples)
    return [samples[i * n // 4 : (i + 1) * n // 4] for i in range(4)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10, help="first runs left out of the flatness comparison")
    parser.add_argument("--cache", choices=["classic", "lru", "none"], default="classic")
    parser.add_argument("--seed", type=int, default=20260107, help="seed for the random run parameters")
    parser.add_argument("--min-steps", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=40)
    args = parser.parse_args(argv)

    reason = comfyui_bootstrap.bootstrap()
    if reason is not None:
        print(f"ComfyUI unusable: {reason}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(int(os.environ.get("COMFYUI_TEST_TORCH_THREADS", "1")))
    # Quiet ComfyUI's import chatter (optional comfy_extras missing, debug lines) on the console
    # handlers only: the harness still sees every record to tell whether the pack loaded.
    console = [(h, h.level) for h in logging.getLogger().handlers]
    for handler, _ in console:
        handler.setLevel(logging.ERROR)
    try:
        import executor as ex

        ex.ensure_loaded()
    finally:
        for handler, level in console:
            handler.setLevel(level)
    logging.getLogger().setLevel(logging.WARNING)  # no per-run INFO lines; errors still show

    workflow = json.loads((ROOT / "workflows" / "zimage_t2i_meancache.json").read_text(encoding="utf-8"))
    prompt = ex.swap_to_tiny(ex.ui_to_api(workflow))
    ids = {name: ex.one(prompt, name) for name in ("MeanCachePlanner", "MeanCacheApply", "KSampler")}
    rng = random.Random(args.seed)
    samples: list[Sample] = []
    violations: list[str] = []
    most_runs_held, block_left, steps = 0, 0, args.min_steps

    with (
        ex.test_nodes_installed(),
        tempfile.TemporaryDirectory(prefix="meancache-soak-") as tmp,
        ex.comfy_dirs(Path(tmp)),
    ):
        engine = ex.ComfyExecutor(args.cache)
        started = time.perf_counter()
        for run in range(args.runs):
            if block_left == 0:  # steps stay for a block of 1-24 runs: Planner and Apply then come from the cache
                steps, block_left = rng.randint(args.min_steps, args.max_steps), rng.randint(1, 24)
            block_left -= 1
            cfg = round(rng.uniform(1.0, 6.0), 1)
            ex.set_literal(prompt, ids["KSampler"], "steps", steps)
            prompt[ids["KSampler"]]["inputs"].update(seed=rng.randrange(2**32), cfg=cfg)
            t0 = time.perf_counter()
            result = engine.run(prompt)
            seconds = time.perf_counter() - t0
            where = f"run {run} (steps {steps}, cfg {cfg})"
            if not result.success:
                violations.append(f"{where}: failed: {(result.error or {}).get('exception_message')}")
                break
            schedule = result.output(ids["MeanCachePlanner"])
            model, holder = result.outputs[ids["MeanCacheApply"]][0][0], result.outputs[ids["MeanCacheApply"]][1][0]
            calls, planned = len(result.calls), schedule.model_calls
            if not (calls == schedule.model_calls == holder.runs[-1].model_calls):
                violations.append(f"{where}: {calls} forwards, planned {schedule.model_calls}")
            if ex.RUN_KEY in model.model_options["transformer_options"]:
                violations.append(f"{where}: {ex.RUN_KEY!r} left on the patched model")
            tensors_held, states = reachable(holder, torch)
            if tensors_held or states:
                violations.append(f"{where}: holder reaches {tensors_held} tensors, run states {states}")
            if ex.PROBE.run_state_alive():
                violations.append(f"{where}: the run state is still referenced after the run")
            kept = sys.modules[type(holder).__module__].KEPT_RUNS
            if len(holder.runs) > kept:
                violations.append(f"{where}: the holder keeps {len(holder.runs)} runs (limit {kept})")
            apply_cached = ids["MeanCacheApply"] in result.cached
            most_runs_held = max(most_runs_held, len(holder.runs))
            del result, model, holder, schedule
            ex.PROBE.calls.clear()
            samples.append(
                Sample(run, steps, cfg, planned, calls, apply_cached, rss_mb(), live_tensors(torch), seconds)
            )
        total = time.perf_counter() - started

    measured = samples[args.warmup :] if len(samples) > args.warmup + 8 else samples
    parts = quartiles(measured)
    print(f"\nMeanCache soak: {len(samples)} runs of the tiny t2i workflow, cache {args.cache}, {total:.0f} s")
    print(
        f"steps {args.min_steps}-{args.max_steps}, cfg 1-6; MeanCache Apply served from ComfyUI's cache in "
        f"{sum(s.apply_cached for s in samples)} runs, executed in {sum(not s.apply_cached for s in samples)}; "
        f"most runs kept by one holder: {most_runs_held}"
    )
    print(
        f"every run's forwards equal its plan: {all(s.calls == s.planned for s in samples)} "
        f"(total {sum(s.calls for s in samples)} forwards)"
    )
    header = f"{'quartile':>9} {'runs':>9} {'steps':>6} {'forwards':>9} {'RSS MiB':>16} {'tensors':>14} {'s/run':>6}"
    print("\n" + header + "\n" + "-" * len(header))
    for k, part in enumerate(parts, 1):
        if not part:
            continue
        rss = [s.rss_mb for s in part]
        ten = [s.tensors for s in part]
        print(
            f"{'Q' + str(k):>9} {f'{part[0].run}-{part[-1].run}':>9} {statistics.mean(s.steps for s in part):6.1f} "
            f"{statistics.mean(s.calls for s in part):9.1f} "
            f"{statistics.mean(rss):8.1f} ({max(rss):6.1f}) {statistics.mean(ten):7.1f} ({max(ten):4d}) "
            f"{statistics.mean(s.seconds for s in part):6.2f}"
        )
    if parts[0] and parts[-1]:
        rss_growth = statistics.mean(s.rss_mb for s in parts[-1]) - statistics.mean(s.rss_mb for s in parts[0])
        tensor_growth = statistics.mean(s.tensors for s in parts[-1]) - statistics.mean(s.tensors for s in parts[0])
        print(
            f"\nlast vs first quartile: RSS {rss_growth:+.1f} MiB (limit {RSS_GROWTH_MB}), "
            f"live tensors {tensor_growth:+.1f} (limit {TENSOR_GROWTH}); "
            f"warm-up runs left out: {len(samples) - len(measured)}"
        )
        if rss_growth > RSS_GROWTH_MB:
            violations.append(f"resident memory grew by {rss_growth:.1f} MiB")
        if tensor_growth > TENSOR_GROWTH:
            violations.append(f"live tensors grew by {tensor_growth:.1f}")
    if violations:
        print(f"\n{len(violations)} VIOLATIONS:")
        for line in violations[:50]:
            print(f"  {line}")
        return 1
    print("\nOK: no violations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
