"""Calibration edge costs: definitions checked on fields with known answers."""

import numpy as np
import pytest
import torch
from dense_costs import dense

from comfy_meancache.core.costs import euler_states, even_costs, trajectory_costs
from comfy_meancache.core.planner import plan_pssp
from comfy_meancache.core.prior import MixturePrior, fit_prior, mixture_trajectories, mixture_velocity, prior_costs
from comfy_meancache.core.schedule import PlannerSettings, Schedule
from comfy_meancache.core.sigmas import flow_sigmas
from comfy_meancache.core.stepper import Action, Stepper


def linear_field_run(sigmas, a, b):
    velocities = torch.stack([a + b * s for s in sigmas[:-1]])
    return velocities, euler_states(sigmas, torch.zeros_like(a), velocities)


def test_reuse_cost_by_hand():
    sigmas = [1.0, 0.75, 0.5, 0.25, 0.0]
    a, b = torch.tensor([1.0, -2.0]), torch.tensor([4.0, 2.0])
    v, x = linear_field_run(sigmas, a, b)
    costs = trajectory_costs(sigmas, v, x, "reuse", max_gap=4)
    # edge 0 -> 2 reuses v0 over step 1: x_hat_2 - x_2 = h1 (v0 - v1) = -0.25 * 0.25 b
    assert dense(costs)[0, 0, 2] == pytest.approx(float((0.25 * 0.25 * b).abs().mean()))
    assert dense(costs)[0, 0, 1] == 0.0
    assert np.isinf(dense(costs)[0, 2, 1])


def test_meancache2_edges_are_free_on_a_linear_field():
    sigmas = flow_sigmas(12)
    v, x = linear_field_run(sigmas, torch.tensor([0.2, 1.0]), torch.tensor([-1.0, 3.0]))
    costs = trajectory_costs(sigmas, v.double(), x.double(), "meancache2", max_gap=5)
    with_previous = dense(costs)[1:]
    assert np.nanmax(np.where(np.isfinite(with_previous), with_previous, 0)) < 1e-6
    assert dense(costs)[0, 0, 3] > 1e-3  # no previous step: plain reuse pays


def test_cost_equals_the_deviation_of_running_that_edge():
    """C[K, i, j] is exactly the state error a stepper run through that single edge produces."""
    prior = MixturePrior(trajectories=4, dim=8)
    sigmas = flow_sigmas(16)
    v, x = mixture_trajectories(sigmas, prior)
    costs = trajectory_costs(sigmas, v, x, "meancache", max_span=3, max_gap=6)
    gen = torch.Generator().manual_seed(prior.seed)
    means = torch.randn(prior.components, prior.dim, generator=gen, dtype=torch.float64)
    for i, j, k in [(3, 7, 2), (5, 9, 3), (2, 4, 1)]:
        compute = [m <= i or m >= j for m in range(16)]
        schedule = Schedule(sigmas, compute, [0 if c else k for c in compute], "meancache", budget=16)
        stepper, y = Stepper(schedule), x[0]
        for m in range(j):  # drive the stepper by hand up to the edge's end
            if stepper.decide(m, y) is Action.COMPUTE:
                velocity = mixture_velocity(y, sigmas[m], means, prior.spread)
                stepper.record(m, velocity)
            else:
                velocity = stepper.estimate(m)
            y = y + (sigmas[m + 1] - sigmas[m]) * velocity
        assert dense(costs)[k - 1, i, j] == pytest.approx(float((y - x[j]).abs().mean()), rel=1e-9)


def test_avg_velocity_metric_divides_by_the_edge_length():
    sigmas = flow_sigmas(10)
    v, x = mixture_trajectories(sigmas, MixturePrior(trajectories=4, dim=8))
    state = trajectory_costs(sigmas, v, x, "reuse", max_gap=4)
    avg = trajectory_costs(sigmas, v, x, "reuse", max_gap=4, metric="avg_velocity")
    assert dense(avg)[0, 2, 5] == pytest.approx(dense(state)[0, 2, 5] / abs(sigmas[5] - sigmas[2]))
    with pytest.raises(ValueError, match="unknown cost metric"):
        trajectory_costs(sigmas, v, x, "reuse", metric="psnr")


def test_runs_average():
    sigmas = flow_sigmas(8)
    v, x = mixture_trajectories(sigmas, MixturePrior(trajectories=6, dim=4))
    both = dense(trajectory_costs(sigmas, v, x, "meancache", max_span=2, max_gap=4))
    first = dense(trajectory_costs(sigmas, v[:, :3], x[:, :3], "meancache", max_span=2, max_gap=4))
    second = dense(trajectory_costs(sigmas, v[:, 3:], x[:, 3:], "meancache", max_span=2, max_gap=4))
    np.testing.assert_allclose(both, (first + second) / 2, rtol=1e-9)


def test_prior_plans_need_no_model():
    sigmas = flow_sigmas(30)
    for estimator in ("meancache", "meancache2", "reuse"):
        costs = prior_costs(sigmas, estimator)
        assert costs.source == "prior" and costs.steps == 30
        schedule = plan_pssp(sigmas, costs, 12, PlannerSettings())
        assert schedule.model_calls == 12
        assert all(e.cost is not None and e.cost > 0 for e in schedule.edges)


def test_fit_prior_recovers_the_mixture_that_made_the_runs():
    sigmas = flow_sigmas(12)
    truth = MixturePrior(components=32, dim=16, spread=0.3)
    v, x = mixture_trajectories(sigmas, truth)
    ranked = fit_prior([(sigmas, v, x)], {"components": (4, 32), "dim": (2, 16), "spread": (0.3, 0.8)})
    assert ranked[0] == (pytest.approx(1.0), truth)
    assert len(ranked) == 8 and ranked[1][0] < 1.0


def test_even_costs_spread_the_calls_evenly_after_the_warm_up():
    schedule = plan_pssp(flow_sigmas(50), even_costs(50, "meancache2"), 20, PlannerSettings())
    assert schedule.computed_steps == (0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35, 38, 41, 43, 45, 47, 49)
    adaptive = plan_pssp(flow_sigmas(50), even_costs(50, "adaptive"), 20, PlannerSettings())
    assert adaptive.computed_steps == schedule.computed_steps
    assert {adaptive.estimator_at(i) for i in range(50) if not adaptive.compute[i]} == {"meancache2"}
    assert even_costs(50, "meancache").band.shape == (6, 50, 9) and even_costs(4, "reuse").max_gap == 3
