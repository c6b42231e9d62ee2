"""The preset table: one source for the Planner node (server side) and the frontend.

Each preset is a target model-call speedup plus the estimator and planner
settings it runs with, chosen from the benchmark on the embedded model with
the built-in prior costs (README, "Benchmark"): ``meancache2`` leads up to
about 2.5x at 20-50 steps (by 2-13 dB over the official update), while from
3.3x on at 20-28 steps its linear extrapolation over long gaps loses to the
damped official update (``meancache``), which never fell below plain fewer
steps; so the faster presets use the official update.
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
    "speed": Preset(3.3, estimator="meancache"),
    "turbo": Preset(4.0, estimator="meancache"),
}
CUSTOM = "custom"
PRESET_NAMES = (*PRESETS, CUSTOM)
DEFAULT_PRESET = "balanced"
