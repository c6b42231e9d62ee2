"""The published MeanCache Z-Image schedules (``official-zimage-50``), carried as fixed plans.

The official scripts ship compute lists for 50 steps and budgets 25, 20, 17,
15 and 13, with a span per skipped edge. They were derived on diffusers'
grid for Z-Image: static shift 6 over ``linspace(1, 0, 50)``, so step 49 runs
at sigma 0. ComfyUI samples Z-Image at shift 3, so these plans are moved onto
the run's sigmas by sigma position (:meth:`Schedule.remap`), never by index;
plans calibrated on the model itself do better (see the README's benchmark).
"""

from __future__ import annotations

import torch

from .schedule import PlannerSettings, Schedule
from .sigmas import time_snr_shift

OFFICIAL_SOURCE = "official-zimage-50"
OFFICIAL_STEPS = 50
OFFICIAL_SHIFT = 6.0

# budget -> (computed steps, {edge start: span}); edges not listed are k=1 (pure reuse)
OFFICIAL_ZIMAGE_50: dict[int, tuple[tuple[int, ...], dict[int, int]]] = {
    25: (
        (0, 1, 2, 3, 4, 5, 6, 8, 10, 11, 12, 13, 15, 16, 17, 18, 20, 22, 29, 37, 42, 45, 47, 48, 49),
        {6: 2, 8: 2, 13: 2, 18: 5, 20: 5, 42: 5, 45: 5},
    ),
    20: (
        (0, 1, 2, 3, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 30, 38, 43, 46, 48, 49),
        {4: 2, 6: 2, 8: 2, 10: 2, 12: 2, 14: 5, 16: 4, 18: 5, 20: 5, 43: 5, 46: 2},
    ),
    17: (
        (0, 1, 2, 3, 4, 6, 8, 10, 12, 14, 19, 27, 35, 43, 46, 48, 49),
        {4: 2, 6: 2, 8: 2, 10: 2, 12: 2, 43: 5, 46: 2},
    ),
    15: (
        (0, 1, 2, 3, 5, 7, 10, 12, 17, 25, 33, 41, 45, 48, 49),
        {3: 2, 5: 2, 7: 2, 10: 2, 41: 5, 45: 4},
    ),
    13: (
        (0, 1, 2, 3, 5, 9, 15, 22, 29, 36, 43, 47, 49),
        {3: 2, 43: 5, 47: 2},
    ),
}


def official_sigmas() -> list[float]:
    """diffusers' Z-Image grid the lists were made on: shift 6 over linspace(1, 0, 50), then 0."""
    t = torch.linspace(1, 0, OFFICIAL_STEPS, dtype=torch.float64)
    return [float(s) for s in time_snr_shift(OFFICIAL_SHIFT, t)] + [0.0]


def official_schedule(budget: int) -> Schedule:
    """The published plan for ``budget`` model calls on its own 50-step grid."""
    if budget not in OFFICIAL_ZIMAGE_50:
        raise ValueError(f"official Z-Image lists exist for {sorted(OFFICIAL_ZIMAGE_50)} calls, not {budget}")
    computed, spans = OFFICIAL_ZIMAGE_50[budget]
    compute = [i in computed for i in range(OFFICIAL_STEPS)]
    span, current = [], 1
    for i, c in enumerate(compute):
        if c:
            current = spans.get(i, 1)
        span.append(0 if c else current)
    return Schedule(
        official_sigmas(),
        compute,
        span,
        "meancache",
        budget,
        PlannerSettings(warmup=0, max_gap=8, max_span=5, cost_source=OFFICIAL_SOURCE, cost_key=OFFICIAL_SOURCE),
        notes=(f"official Z-Image list B={budget} (derived on diffusers' shift-6 grid)",),
    )


def official_plan(sigmas: list[float], budget: int) -> Schedule:
    """The official list whose speedup is nearest ``steps / budget``, remapped onto ``sigmas`` by sigma."""
    n = len(sigmas) - 1
    target = OFFICIAL_STEPS * budget / n
    nearest = min(OFFICIAL_ZIMAGE_50, key=lambda b: (abs(b - target), b))
    return official_schedule(nearest).remap(sigmas)
