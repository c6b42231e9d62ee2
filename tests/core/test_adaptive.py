"""Per-edge estimator choice (``adaptive``): the planner picks, per edge, the estimator the costs price lowest."""

import numpy as np
import pytest
import torch
from exact_flow import Field, noise

from comfy_meancache.core.costs import EdgeCosts, cheapest_per_edge
from comfy_meancache.core.planner import plan
from comfy_meancache.core.prior import prior_costs
from comfy_meancache.core.runtime import CachedDenoiser
from comfy_meancache.core.schedule import PlannerSettings, Schedule
from comfy_meancache.core.sigmas import flow_sigmas
from comfy_meancache.samplers import sample_dpmpp_2m

SIGMAS = flow_sigmas(30)


def path_cost(schedule: Schedule, gamma: float) -> float:
    return sum(e.cost**gamma for e in schedule.edges)


@pytest.mark.parametrize("budget", [14, 11, 8])
def test_adaptive_never_plans_worse_than_any_single_estimator(budget):
    settings = PlannerSettings()
    adaptive = plan(SIGMAS, compute_steps=budget, estimator="adaptive")
    best_single = min(
        path_cost(plan(SIGMAS, compute_steps=budget, estimator=e), settings.gamma)
        for e in ("meancache", "meancache2", "reuse")
    )
    assert path_cost(adaptive, settings.gamma) <= best_single * (1 + 1e-9)
    for edge in adaptive.edges:
        assert all(adaptive.estimator_at(i) == edge.estimator for i in range(edge.start + 1, edge.end))


def test_the_cheapest_option_is_chosen_per_edge():
    n = 6
    reuse = np.full((1, n, 3), np.inf)
    reuse[0, :, 2] = [0.5, 0.1, 0.5, 0.5, np.inf, np.inf]
    meancache2 = np.full((3, n, 3), np.inf)
    meancache2[:, :, 2] = 0.2
    combined = cheapest_per_edge([EdgeCosts("reuse", reuse, "t"), EdgeCosts("meancache2", meancache2, "t")])
    assert combined.options == (("reuse", 1), ("meancache2", 0))
    assert combined.band[1, 1, 2] == 0.1 and combined.options[combined.choice[1, 1, 2]] == ("reuse", 1)
    assert combined.band[1, 2, 2] == 0.2 and combined.options[combined.choice[1, 2, 2]] == ("meancache2", 0)
    with pytest.raises(ValueError, match="base-estimator costs"):
        cheapest_per_edge([combined])


def test_the_stepper_runs_each_edges_own_estimator():
    """An adaptive plan whose edges all chose one estimator samples exactly like that estimator's plan."""
    base = plan(SIGMAS, compute_steps=12, estimator="meancache2")
    used = ["" if c else "meancache2" for c in base.compute]
    adaptive = Schedule(base.sigmas, base.compute, base.span, "adaptive", base.budget, step_estimators=used)
    run = [sample_dpmpp_2m(CachedDenoiser(Field(), s), noise(), torch.tensor(SIGMAS)) for s in (base, adaptive)]
    assert torch.equal(run[0], run[1])


def test_adaptive_plans_round_trip_move_and_split():
    schedule = plan(SIGMAS, compute_steps=12, estimator="adaptive")
    assert Schedule.from_json(schedule.to_json()) == schedule
    assert "(" in schedule.summary() and " x" in schedule.summary()
    moved = schedule.remap(flow_sigmas(20))
    assert all(moved.estimator_at(i) in ("meancache", "meancache2", "reuse") for i in range(20) if not moved.compute[i])
    part = schedule.fragment(10, SIGMAS[10:])
    assert part.step_estimators == tuple(
        "" if i == 0 and not schedule.compute[10] else e for i, e in enumerate(schedule.step_estimators[10:])
    )
    with pytest.raises(ValueError, match="per-step estimators are for adaptive plans"):
        Schedule(SIGMAS, schedule.compute, schedule.span, "reuse", 12, step_estimators=schedule.step_estimators)


def test_prior_costs_for_adaptive_combine_the_three():
    costs = prior_costs(SIGMAS, "adaptive")
    parts = [prior_costs(SIGMAS, e) for e in ("meancache", "meancache2", "reuse")]
    assert costs.pair_state and costs.band.shape == parts[1].band.shape
    assert np.array_equal(costs.band, cheapest_per_edge(parts).band)
