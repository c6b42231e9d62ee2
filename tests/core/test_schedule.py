"""Schedule data: validation, JSON round trip, summary, remap."""

import json

import numpy as np
import pytest
from dense_costs import from_dense
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from comfy_meancache.core.planner import plan
from comfy_meancache.core.schedule import Schedule, fewest_calls
from comfy_meancache.core.sigmas import flow_sigmas


def gap_costs(n, estimator):
    """Cheap stand-in costs that grow with the edge length (so remap tests need no prior)."""
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    layers = n + 1 if estimator == "meancache2" else 3
    table = np.broadcast_to(np.where(j > i, (j - i) ** 2.0, np.inf), (layers, n, n)).copy()
    return from_dense(estimator, table, "test")


def simple_schedule(n=10):
    compute = [i in (0, 1, 4, 9) for i in range(n)]
    span = [0 if c else 2 for c in compute]
    return Schedule(flow_sigmas(n), compute, span, "meancache", budget=4)


def test_json_round_trip():
    schedule = plan(flow_sigmas(50), compute_steps=20, estimator="meancache")
    text = schedule.to_json()
    data = json.loads(text)
    for key in ("sigmas", "compute", "span", "estimator", "budget", "version"):
        assert key in data
    assert Schedule.from_json(text) == schedule


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(compute=[True] * 9), "10 sigmas"),
        (dict(estimator="magic"), "unknown estimator"),
        (dict(compute=[False] + [True] * 9, span=[1] + [0] * 9), "first step must be computed"),
        (dict(budget=3), "compute steps 4 > budget 3"),
        (dict(budget=11), "compute steps 11 > steps 10"),
        (dict(span=[0, 0, 0, 2, 0, 2, 2, 2, 2, 0]), "skipped step 2 needs a span"),
        (dict(span=[0, 1, 2, 2, 0, 2, 2, 2, 2, 0]), "computed step 1 has span 1"),
        (dict(sigmas=[1.0] + [0.5, 0.9] + [0.1] * 8), "must not increase"),
        (dict(sigmas=[float("nan")] * 11), "finite"),
        (dict(compute=[True] * 9 + [False], span=[0] * 9 + [1], budget=9), "last step must be computed"),
        (dict(part_of=[5, 12]), r"fragment \(5, 12\) does not hold 10 steps"),
    ],
)
def test_validation_messages(change, message):
    base = simple_schedule().to_dict()
    base.update(change)
    with pytest.raises(ValueError, match=message):
        Schedule.from_dict(base)


def test_foreign_or_future_json_is_refused():
    with pytest.raises(ValueError, match="not a MeanCache schedule"):
        Schedule.from_dict({"sigmas": []})
    data = simple_schedule().to_dict() | {"version": 99}
    with pytest.raises(ValueError, match="version 99"):
        Schedule.from_dict(data)
    data = simple_schedule().to_dict()
    del data["compute"]
    with pytest.raises(ValueError, match="malformed"):
        Schedule.from_dict(data)


def test_summary():
    assert simple_schedule().summary() == "10 steps -> 4 model calls (2.50x), skips 6, spans K=2"


@hsettings(max_examples=40, deadline=None)
@given(
    steps=st.integers(10, 60),
    ratio=st.floats(0.3, 0.8),
    new_steps=st.integers(2, 80),
    denoise=st.sampled_from([1.0, 0.8, 0.5]),
    estimator=st.sampled_from(["meancache", "meancache2", "reuse"]),
)
def test_remap_keeps_the_speedup_within_one_step(steps, ratio, new_steps, denoise, estimator):
    schedule = plan(
        flow_sigmas(steps),
        compute_steps=max(9, round(steps * ratio)),
        estimator=estimator,
        costs=gap_costs(steps, estimator),
    )
    new_sigmas = flow_sigmas(new_steps, denoise=denoise)
    moved = schedule.remap(new_sigmas)
    assert moved.sigmas == tuple(new_sigmas)
    assert moved.compute[-1] and all(moved.compute[: schedule.settings.warmup])
    nodes = moved.computed_steps
    assert max((b - a for a, b in zip(nodes, nodes[1:])), default=1) <= schedule.settings.max_gap
    if new_steps > schedule.settings.warmup:
        least = max(fewest_calls(new_steps, schedule.settings), schedule.model_calls * new_steps / steps)
        assert least - 1 <= moved.model_calls <= least + 1
    else:
        assert all(moved.compute)
    assert any("remapped" in n or "every step computed" in n for n in moved.notes)


def test_remap_follows_sigma_not_index():
    """A plan that computes densely at high sigma keeps doing so on a grid with other spacing."""
    sigmas = flow_sigmas(50)
    schedule = plan(sigmas, compute_steps=25, estimator="meancache")
    same = schedule.remap(sigmas)
    assert same.computed_steps == schedule.computed_steps
    for i, c in enumerate(schedule.compute):
        if not c:
            assert same.span[i] == schedule.span[i]


def test_remap_keeps_the_planners_limits():
    """A 4x plan for 50 steps moved to 20 steps gave 5 calls with an 11-step gap, a plan the planner refuses."""
    schedule = plan(flow_sigmas(50), speedup=4)
    moved = schedule.remap(flow_sigmas(20))
    nodes = moved.computed_steps
    assert max(b - a for a, b in zip(nodes, nodes[1:])) <= schedule.settings.max_gap
    assert moved.model_calls == max(fewest_calls(20, schedule.settings), round(schedule.model_calls * 20 / 50)) == 6
    assert nodes[: schedule.settings.warmup] == (0, 1, 2) and nodes[-1] == 19


def test_fragments_follow_their_slice_of_the_plan():
    sigmas = flow_sigmas(30)
    schedule = plan(sigmas, compute_steps=12)
    k = next(i for i in range(10, 30) if not schedule.compute[i])  # split where the plan skips
    high, low = sigmas[: k + 1], sigmas[k:]
    assert schedule.fragment_start(high) == 0 and schedule.fragment_start(low) == k
    assert schedule.fragment_start([*sigmas[5:12], 0.0]) == 5  # forced full denoise at the end
    assert schedule.fragment_start(flow_sigmas(29)) is None
    first, second = schedule.fragment(0, high), schedule.fragment(k, low)
    assert first.compute == schedule.compute[:k] and first.part_of == (0, 30)
    assert second.compute == (True, *schedule.compute[k + 1 :]) and second.part_of == (k, 30)
    assert first.model_calls + second.model_calls == schedule.model_calls + 1
    assert any(f"step {k} computed although planned to skip" in n for n in second.notes)
    assert all(second.edges) and {(e.start + k, e.end + k) for e in second.edges} <= {
        (e.start, e.end) for e in schedule.edges
    }
    assert Schedule.from_json(second.to_json()) == second
    nested = second.fragment(2, low[2:])
    assert nested.part_of == (k + 2, 30)
