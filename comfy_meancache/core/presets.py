"""The preset table: one source for the Planner node (server side) and the frontend.

Each preset is a target model-call speedup plus the planner settings it runs
with. The speedups are provisional until the benchmark on the embedded model
settles them (see README, "Presets").
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
