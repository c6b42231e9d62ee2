"""Planning from a named cost source, for the Planner node and for runs on other sigmas.

A cost source is ``auto`` (the default: a model's first run evenly at high
noise and for flat curvature below sigma 0.75, then
from the costs its own earlier runs showed, resolved by the hook when it
knows the model and sampler), ``even`` (calls spread evenly over the
sampler's steps, nothing assumed about the model), ``prior`` (the built-in
Gaussian-mixture prior), ``official-zimage-50`` (the published lists) or the
name of a saved calibration profile. A schedule remembers its
source (``settings.cost_key``), so the hook can plan again, the same way, for
sigmas the sampler really uses.
"""

from __future__ import annotations

from dataclasses import replace

from ..core.costs import even_costs
from ..core.learning import LEARNED_ESTIMATOR, Observations, first_run_plan, learned_costs
from ..core.official import OFFICIAL_SOURCE, official_plan
from ..core.planner import fewest_calls, plan
from ..core.presets import CUSTOM
from ..core.schedule import PlannerSettings, Schedule
from .calibration import load_profile, saved_profiles

AUTO, EVEN, PRIOR, OFFICIAL = "auto", "even", "prior", OFFICIAL_SOURCE
BUILT_IN_SOURCES = (AUTO, EVEN, PRIOR, OFFICIAL)


def plan_from_source(grid: list[float], source: str, estimator: str, settings: PlannerSettings, budget: dict):
    """Plan ``grid`` from the chosen cost source; ``budget`` is ``compute_steps=`` or ``speedup=``."""
    settings = replace(settings, cost_key=source)
    if source == OFFICIAL:
        n = len(grid) - 1
        calls = budget.get("compute_steps") or max(fewest_calls(n, settings), round(n / budget["speedup"]))
        return official_plan(grid, calls)
    costs = None
    if source in (AUTO, EVEN):
        costs = even_costs(len(grid) - 1, estimator, settings.max_span, settings.max_gap)
    elif source != PRIOR:
        if source not in saved_profiles():
            raise ValueError(
                f"cost_source: no profile named {source!r} (saved: {', '.join(saved_profiles()) or 'none'})"
            )
        costs = load_profile(source).costs(grid, estimator, settings.max_span, settings.max_gap)
        settings = for_measured_costs(settings)
    planned = plan(grid, estimator=estimator, settings=settings, costs=costs, **budget)
    if source == AUTO:
        return planned.with_notes("auto: planned evenly here; each sampling run re-plans from what this model learned")
    return planned


def for_measured_costs(settings: PlannerSettings) -> PlannerSettings:
    """A preset's settings for costs measured on the model (only step 0 of the warm-up); custom ones as set."""
    return settings if settings.preset == CUSTOM else settings.for_measured_costs()


def replan(schedule: Schedule, sigmas: list[float], learned: Observations | None = None) -> Schedule:
    """``schedule``'s request planned again on ``sigmas``: same cost source, settings, estimator and call ratio.

    ``learned``: the model's observations, for the ``auto`` source.
    """
    n = len(sigmas) - 1
    calls = min(n, max(fewest_calls(n, schedule.settings), round(schedule.budget * n / schedule.steps)))
    planned = plan_from_source(
        sigmas, schedule.settings.cost_key, schedule.estimator, schedule.settings, {"compute_steps": calls}
    )
    if learned is not None and schedule.settings.cost_key == AUTO:
        planned = learned_plan(planned, learned)
    return planned.with_notes(
        f"re-planned for the sampler's {n} steps ({schedule.summary()} was planned for other sigmas)"
    )


def learned_plan(schedule: Schedule, observations: Observations) -> Schedule:
    """``schedule`` planned again from what earlier runs of this model learned, with the same model calls.

    A preset's warm-up drops to step 0 (:func:`for_measured_costs`). Without
    observations it becomes a first run's plan (:func:`first_run_plan`); for
    an estimator other than the one learned costs price, the schedule stays
    as it is; a note says which.
    """
    if not len(observations):
        return first_run_plan(schedule).with_notes(
            "auto: this model's first run here plans evenly at high noise, then for flat curvature; "
            "later runs plan from it"
        )
    if schedule.estimator != LEARNED_ESTIMATOR:
        return schedule.with_notes(f"auto: learned costs price {LEARNED_ESTIMATOR}, not {schedule.estimator}; even")
    costs = learned_costs(schedule.sigmas, observations, schedule.settings.max_gap)
    settings = for_measured_costs(schedule.settings)
    try:
        learned = plan(
            schedule.sigmas,
            compute_steps=schedule.model_calls,
            estimator=schedule.estimator,
            settings=settings,
            costs=costs,
        )
    except ValueError as exc:  # the call count of a fragment's slice that the settings cannot plan
        return schedule.with_notes(f"auto: kept the even plan ({exc})")
    return learned.with_notes(f"auto: planned from this model's learned costs ({len(observations)} observations)")
