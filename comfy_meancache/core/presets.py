"""The preset table: one source for the Planner node (server side) and the frontend.

Each preset is a target model-call speedup plus the estimator and planner
settings it runs with. Uncalibrated, the Planner prices edges with even
costs (calls spread over the sampler's steps), which fit no model; on the
zoo benchmark (README, "Zoo benchmark") ``meancache2`` on even costs beat the
same sampler with fewer steps in 92 of 96 cells on four models (by 3 dB or
more in 88), so every preset uses it.
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
