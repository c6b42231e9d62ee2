"""The preset table: one source for the Planner node (server side) and the frontend.

Each preset is a target model-call speedup plus the estimator and planner
settings it runs with, chosen from the benchmark on the embedded model with
the built-in prior costs, i.e. what a user gets before calibrating (README,
"Benchmark"): ``meancache2`` led the official update in 23 of the 24 cells
from 2x to 5x at 20, 28 and 50 steps, cfg 1 and 4, so every preset uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .estimators import DEFAULT_ESTIMATOR
from .schedule import PlannerSettings


@dataclass(frozen=True)
class Preset:
    speedup: float
    estimator: str = DEFAULT_ESTIMATOR
    settings: PlannerSettings = PlannerSettings()


PRESETS: dict[str, Preset] = {
    "quality": Preset(2.0),
    "balanced": Preset(2.5),
    "speed": Preset(3.3),
    "turbo": Preset(4.0),
}
CUSTOM = "custom"
PRESET_NAMES = (*PRESETS, CUSTOM)
DEFAULT_PRESET = "balanced"
