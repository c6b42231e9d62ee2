"""PSSP planner: exact optimality against brute force, constraints, monotonicity."""

import subprocess
import sys
from itertools import combinations

import numpy as np
import pytest
from dense_costs import from_dense
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from comfy_meancache.core.planner import MAX_STEPS, fewest_calls, plan, plan_pssp, replan_rest
from comfy_meancache.core.schedule import PlannerSettings
from comfy_meancache.core.sigmas import flow_sigmas


def random_table(rng, layers, n):
    table = rng.uniform(0.01, 1.0, size=(layers, n, n))
    table[rng.uniform(size=table.shape) < 0.05] = np.inf  # some undefined edges
    return table


def path_cost(nodes, table, pair_state, settings):
    """Sum of C(e)^gamma along ``nodes``, straight from the definition (inf if a rule is broken)."""
    if any(i not in nodes for i in range(min(settings.warmup, len(nodes)))):
        return np.inf
    total = 0.0
    for k, (a, b) in enumerate(zip(nodes, nodes[1:])):
        if b - a > settings.max_gap:
            return np.inf
        if b - a == 1:
            continue
        if pair_state:
            cost = table[nodes[k - 1] + 1 if k else 0, a, b]
        else:
            cost = table[: settings.max_span, a, b].min()
        total += cost**settings.gamma
    return total


def brute_force(n, budget, table, pair_state, settings):
    best = np.inf
    for size in range(2, budget + 1):
        for inner in combinations(range(1, n - 1), size - 2):
            nodes = [0, *inner, n - 1]
            best = min(best, path_cost(nodes, table, pair_state, settings))
    return best


CASES = [
    (n, budget, gamma, warmup, max_gap, seed)
    for seed, (n, budget, gamma, warmup, max_gap) in enumerate(
        [
            (6, 3, 1.0, 1, 5),
            (8, 4, 2.0, 2, 4),
            (9, 5, 3.0, 1, 8),
            (10, 4, 0.5, 3, 6),
            (11, 6, 4.0, 2, 3),
            (12, 5, 2.0, 3, 5),
            (12, 8, 1.5, 1, 11),
            (12, 3, 2.0, 1, 11),
        ]
    )
]


@pytest.mark.parametrize("n,budget,gamma,warmup,max_gap,seed", CASES)
@pytest.mark.parametrize("estimator", ["meancache", "meancache2"])
def test_dp_matches_brute_force(n, budget, gamma, warmup, max_gap, seed, estimator):
    rng = np.random.default_rng(seed)
    pair_state = estimator == "meancache2"
    table = random_table(rng, n + 1 if pair_state else 4, n)
    settings = PlannerSettings(gamma=gamma, warmup=warmup, max_gap=max_gap, max_span=3)
    costs = from_dense(estimator, table, "test")
    sigmas = list(np.linspace(1, 0, n + 1))
    if budget < fewest_calls(n, settings):
        with pytest.raises(ValueError, match="compute steps"):
            plan_pssp(sigmas, costs, budget, settings)
        return
    schedule = plan_pssp(sigmas, costs, budget, settings)
    nodes = list(schedule.computed_steps)
    expected = brute_force(n, budget, table, pair_state, settings)
    got = path_cost(nodes, table, pair_state, settings)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert schedule.model_calls <= budget
    assert all(schedule.compute[:warmup]) and schedule.compute[-1]
    assert max(b - a for a, b in zip(nodes, nodes[1:])) <= max_gap
    if not pair_state:
        for e in schedule.edges:  # each edge uses its cheapest span
            assert e.cost == table[: settings.max_span, e.start, e.end].min()
            assert schedule.span[e.start + 1] == 1 + int(np.argmin(table[: settings.max_span, e.start, e.end]))


@pytest.mark.parametrize("estimator", ["meancache", "meancache2"])
def test_larger_budget_never_costs_more(estimator):
    rng = np.random.default_rng(7)
    n = 12
    pair_state = estimator == "meancache2"
    table = random_table(rng, n + 1 if pair_state else 3, n)
    settings = PlannerSettings(gamma=2.0, warmup=2, max_gap=6, max_span=3)
    costs = from_dense(estimator, table, "test")
    sigmas = list(np.linspace(1, 0, n + 1))
    optima = []
    for budget in range(fewest_calls(n, settings), n + 1):
        nodes = list(plan_pssp(sigmas, costs, budget, settings).computed_steps)
        optima.append(path_cost(nodes, table, pair_state, settings))
    assert all(b <= a + 1e-12 for a, b in zip(optima, optima[1:]))
    assert optima[-1] == 0.0


def test_budget_errors_name_the_problem():
    sigmas = flow_sigmas(50)
    with pytest.raises(ValueError, match="compute steps 60 > steps 50"):
        plan(sigmas, compute_steps=60)
    with pytest.raises(ValueError, match="compute steps 3 < 9"):
        plan(sigmas, compute_steps=3, settings=PlannerSettings(warmup=3, max_gap=8))
    with pytest.raises(ValueError, match="exactly one"):
        plan(sigmas)
    with pytest.raises(ValueError, match="gamma"):
        plan(sigmas, compute_steps=20, settings=PlannerSettings(gamma=0))
    with pytest.raises(ValueError, match="unknown estimator"):
        plan(sigmas, compute_steps=20, estimator="teacache")


def test_speedup_is_clamped_with_a_note():
    schedule = plan(flow_sigmas(8), speedup=4.0)
    assert schedule.model_calls == fewest_calls(8, PlannerSettings())
    assert any("asks for 2 model calls" in note for note in schedule.notes)


def test_prior_plan_for_50_steps():
    schedule = plan(flow_sigmas(50), compute_steps=20, estimator="meancache")
    assert schedule.model_calls == 20
    assert schedule.settings.cost_source == "prior"
    assert schedule.summary().startswith("50 steps -> 20 model calls (2.50x), skips 30, spans K=")


@hsettings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 14),
    data=st.data(),
    estimator=st.sampled_from(["meancache", "meancache2", "reuse"]),
)
def test_planner_never_crashes(n, data, estimator):
    """Arbitrary grids, budgets and costs: a valid schedule or a ValueError with a message."""
    sigmas = sorted(data.draw(st.lists(st.floats(0, 1), min_size=n + 1, max_size=n + 1)), reverse=True)
    layers = n + 1 if estimator == "meancache2" else 3
    values = st.one_of(st.floats(0, 1e6), st.just(np.inf), st.just(np.nan))
    table = np.array(data.draw(st.lists(values, min_size=layers * n * n, max_size=layers * n * n))).reshape(
        layers, n, n
    )
    settings = PlannerSettings(
        gamma=data.draw(st.floats(0.1, 8)),
        warmup=data.draw(st.integers(0, n + 1)),
        max_gap=data.draw(st.integers(1, n + 1)),
        max_span=3,
    )
    budget = data.draw(st.integers(-1, n + 2))
    try:
        schedule = plan(
            sigmas,
            compute_steps=budget,
            estimator=estimator,
            settings=settings,
            costs=from_dense(estimator, table, "fuzz"),
        )
    except ValueError as exc:
        assert str(exc)
        return
    assert schedule.model_calls <= budget
    assert schedule.compute[0] and schedule.compute[-1]


def test_a_1000_step_plan_stays_small():
    """Costs are stored as a band within the max gap: 1000 steps took 4 GB as a full [N+1, N, N] table."""
    script = (
        "import resource; from comfy_meancache.core.planner import plan; "
        "from comfy_meancache.core.sigmas import flow_sigmas; "
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        f"schedule = plan(flow_sigmas({MAX_STEPS}), speedup=2.5); "
        "print(schedule.model_calls, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    calls, grown_mb = int(out[0]), int(out[1])
    assert calls == 400
    assert grown_mb < 200  # measured: 55 MB on top of the imports
    with pytest.raises(ValueError, match="at most 1000 steps"):
        plan(flow_sigmas(MAX_STEPS + 1), speedup=2.5)


@pytest.mark.parametrize(
    "prefix,budget,max_gap,seed", [([0, 1, 2, 5], 7, 4, 0), ([0, 3, 4], 6, 5, 1), ([0, 2], 4, 8, 2)]
)
def test_replanning_the_rest_keeps_the_run_and_finds_the_best_rest(prefix, budget, max_gap, seed):
    n, rng = 12, np.random.default_rng(seed)
    table = random_table(rng, n + 1, n)
    settings = PlannerSettings(gamma=2.0, warmup=1, max_gap=max_gap)
    costs = from_dense("meancache2", table, "test")
    sigmas = list(np.linspace(1, 0, n + 1))
    schedule = plan_pssp(sigmas, costs, budget, settings).with_notes("kept")
    replanned = replan_rest(schedule, costs, prefix)
    nodes = list(replanned.computed_steps)
    assert nodes[: len(prefix)] == prefix and replanned.model_calls <= budget and replanned.notes == schedule.notes
    completions = [
        [*prefix, *inner, n - 1]
        for size in range(budget - len(prefix))
        for inner in combinations(range(prefix[-1] + 1, n - 1), size)
    ]
    best = min(path_cost(c, table, True, settings) for c in completions)
    assert path_cost(nodes, table, True, settings) == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_replanning_the_rest_declines_what_it_cannot_plan():
    n = 12
    table = random_table(np.random.default_rng(5), n + 1, n)
    settings = PlannerSettings(gamma=2.0, warmup=1, max_gap=3)
    costs = from_dense("meancache2", table, "test")
    schedule = plan_pssp(list(np.linspace(1, 0, n + 1)), costs, 6, settings)
    assert replan_rest(schedule, costs, [0, 1, 2, 3, 4, 5]) is None  # no call left
    assert replan_rest(schedule, costs, [0, 1, 2, 3, 4]) is None  # 1 call cannot cross 7 steps with gaps of 3
    single = from_dense("meancache", table[:3], "test")
    assert replan_rest(plan_pssp(list(np.linspace(1, 0, n + 1)), single, 6, settings), single, [0, 3]) is None
