"""PSSP: the Peak-Suppressed Shortest Path planner.

Steps ``0..N-1`` are nodes. An edge ``i -> j`` means "call the model at ``i``
and ``j`` and estimate the steps between"; its cost ``C(e)`` is the predicted
deviation of the sampler state at ``j``. The plan is the path from the first
to the last step with at most ``B`` nodes that minimises ``sum C(e) ** gamma``:
``gamma > 1`` makes one large deviation cost more than several small ones
(the "peak suppression"). Dynamic programming over (nodes used, last node)
solves it exactly; estimators whose edge cost also depends on the computed
step before the edge (``meancache2``) use the pair-state variant over
(nodes used, last two nodes).

Constraints: the first ``warmup`` steps and the last step are computed, and
no edge is longer than ``max_gap`` steps.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .costs import EdgeCosts
from .estimators import DEFAULT_ESTIMATOR, ESTIMATORS
from .prior import prior_costs
from .schedule import Edge, PlannerSettings, Schedule, fewest_calls, meancache2_spans

MAX_STEPS = 1000  # costs and the DP grow as N * G^2; beyond this a plan is refused, never an OOM


def plan(
    sigmas: list[float],
    *,
    compute_steps: int | None = None,
    speedup: float | None = None,
    estimator: str = DEFAULT_ESTIMATOR,
    settings: PlannerSettings = PlannerSettings(),
    costs: EdgeCosts | None = None,
) -> Schedule:
    """Plan ``sigmas`` for a model-call budget given as ``compute_steps`` or a target ``speedup``.

    Without ``costs`` the built-in prior prices the edges. A speedup the
    warm-up and gap limits cannot reach is clamped, with a note saying so; an
    explicit ``compute_steps`` that cannot be met is an error.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    n = len(sigmas) - 1
    if n < 1:
        raise ValueError("a schedule needs at least 2 sigmas")
    if n > MAX_STEPS:
        raise ValueError(f"{n} steps: MeanCache plans at most {MAX_STEPS} steps; sample fewer steps")
    notes: list[str] = []
    if (compute_steps is None) == (speedup is None):
        raise ValueError("give exactly one of compute steps or speedup")
    if speedup is not None:
        if not speedup >= 1.0:
            raise ValueError(f"speedup must be >= 1, got {speedup}")
        budget = max(1, min(n, round(n / speedup)))
        fewest = fewest_calls(n, settings)
        if budget < fewest:
            notes.append(
                f"{speedup:g}x asks for {budget} model calls of {n} steps; warm-up {settings.warmup}, "
                f"max gap {settings.max_gap} and the last step need {fewest}"
            )
            budget = fewest
    else:
        budget = int(compute_steps)
        if budget < 1:
            raise ValueError(f"compute steps must be >= 1, got {budget}")
    if costs is None:
        costs = prior_costs(sigmas, estimator, settings.max_span, settings.max_gap)
    elif costs.estimator != estimator:
        raise ValueError(f"costs were measured for {costs.estimator!r}, not {estimator!r}")
    schedule = plan_pssp(sigmas, costs, budget, replace(settings, cost_source=costs.source))
    return schedule.with_notes(*notes)


def plan_pssp(sigmas: list[float], costs: EdgeCosts, budget: int, settings: PlannerSettings) -> Schedule:
    """The optimal schedule for ``budget`` model calls under ``costs``."""
    n = len(sigmas) - 1
    if costs.steps != n:
        raise ValueError(f"edge costs cover {costs.steps} steps but the sigmas have {n}")
    _check_budget(n, budget, settings)
    if budget >= n:
        nodes = list(range(n))
    elif costs.pair_state:
        nodes = _pair_state_path(_pair_transitions(costs.band, settings), n, budget)
    else:
        nodes = _single_state_path(_edge_band(costs.band, settings)[0], n, budget)
    return _schedule_from_path(sigmas, nodes, costs, budget, settings)


def _check_budget(n: int, budget: int, settings: PlannerSettings) -> None:
    if settings.gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {settings.gamma}")
    if settings.max_gap < 1:
        raise ValueError(f"max gap must be >= 1, got {settings.max_gap}")
    if settings.max_span < 1:
        raise ValueError(f"max span must be >= 1, got {settings.max_span}")
    if budget > n:
        raise ValueError(f"compute steps {budget} > steps {n}")
    needed = fewest_calls(n, settings)
    if budget < needed:
        raise ValueError(
            f"compute steps {budget} < {needed}, the fewest that {n} steps allow with warm-up "
            f"{settings.warmup} and max gap {settings.max_gap}; raise compute steps or max gap, or lower warm-up"
        )


def _powered(band: np.ndarray, settings: PlannerSettings) -> np.ndarray:
    """``(C / max C) ** gamma`` on valid edges, 0 on chains, inf elsewhere.

    ``band`` is ``[L, N, G + 1]`` (see :class:`EdgeCosts`). Valid edges stay
    within the max gap and skip no warm-up step. Dividing by the largest finite
    cost keeps the argmin and keeps large ``gamma`` clear of under- and overflow.
    """
    n, width = band.shape[1], band.shape[2]
    i, d = np.arange(n)[:, None], np.arange(width)[None, :]
    inside = (d >= 1) & (i + d < n)
    valid = inside & (d <= settings.max_gap) & ((d == 1) | (i >= settings.warmup - 1))
    chain = inside & (d == 1)
    out = np.where(valid & ~chain & ~np.isnan(band), np.maximum(band, 0.0), np.inf)
    finite = out[np.isfinite(out)]
    scale = finite.max() if finite.size and finite.max() > 0 else 1.0
    return np.where(chain, 0.0, (out / scale) ** settings.gamma)


def _edge_band(band: np.ndarray, settings: PlannerSettings) -> tuple[np.ndarray, np.ndarray]:
    """Best-span powered cost ``[N, G + 1]`` and that span, for single-state estimators."""
    powered = _powered(band[: settings.max_span], settings)
    best = np.argmin(powered, axis=0)
    return np.take_along_axis(powered, best[None], axis=0)[0], best + 1


def _single_state_path(cost: np.ndarray, n: int, budget: int) -> list[int]:
    """Exact DP: ``f[m, j]`` = cheapest path ``0 -> j`` through ``m + 1`` nodes."""
    f = np.full((budget, n), np.inf)
    parent = np.zeros((budget, n), dtype=np.int16)
    f[0, 0] = 0.0
    reach = max(d for d in range(1, cost.shape[1]) if np.isfinite(cost[: n - d, d]).any())
    for m in range(1, budget):
        for d in range(1, reach + 1):
            cand = f[m - 1, : n - d] + cost[: n - d, d]
            better = cand < f[m, d:]
            f[m, d:][better] = cand[better]
            parent[m, d:][better] = d
    m = _fewest_nodes_at_min(f[:, n - 1])
    nodes, j = [n - 1], n - 1
    while m > 0:
        j -= int(parent[m, j])
        m -= 1
        nodes.append(j)
    return nodes[::-1]


def _fewest_nodes_at_min(final: np.ndarray) -> int:
    if not np.isfinite(final).any():
        raise ValueError("no schedule satisfies the constraints; raise compute steps or max gap")
    return int(np.flatnonzero(final == final.min())[0])


def _pair_transitions(band: np.ndarray, settings: PlannerSettings) -> np.ndarray:
    """Powered cost ``T[b, d1, d2]`` of edge ``b -> b + d2`` after ``b - d1 -> b`` (``d1 = 0``: none)."""
    n = band.shape[1]
    trans = _powered(band, settings).transpose(1, 0, 2)  # [b, d1, d2]
    b = np.arange(n)[:, None, None]
    d1 = np.arange(band.shape[0])[None, :, None]
    ok = np.where(d1 > 0, b - d1 >= 0, b == 0)
    return np.where(ok, trans, np.inf)


def _pair_state_path(trans: np.ndarray, n: int, budget: int, back: int = 0) -> list[int]:
    """Exact DP over (nodes used, last node, distance to the node before), from node 0 to node ``n - 1``.

    Node 0 was reached ``back`` steps after the node before it (0: none);
    the path has at most ``budget`` nodes, node 0 included.
    """
    back_layers, gaps = trans.shape[1], trans.shape[2]
    g = np.full((budget, n, gaps), np.inf)
    parent = np.zeros((budget, n, gaps), dtype=np.int16)
    g[0, 0, back] = 0.0
    d2 = np.arange(1, gaps)[None, :]
    b, k = np.nonzero(np.arange(n)[:, None] + d2 < n)  # edges b -> b + d2 inside the grid
    d2 = d2[0, k]
    for m in range(1, budget):
        cand = g[m - 1][:, :back_layers, None] + trans  # [b, d1, d2]
        best_d1 = np.argmin(cand, axis=1)  # [b, d2]
        best = np.take_along_axis(cand, best_d1[:, None, :], axis=1)[:, 0, :]
        g[m, b + d2, d2] = best[b, d2]
        parent[m, b + d2, d2] = best_d1[b, d2]
    final = g[:, n - 1, :].min(axis=1)
    m = _fewest_nodes_at_min(final)
    d = int(np.argmin(g[m, n - 1]))
    nodes, j = [n - 1], n - 1
    while m > 0:
        prev_d = int(parent[m, j, d])
        j -= d
        nodes.append(j)
        d, m = prev_d, m - 1
    return nodes[::-1]


def replan_rest(schedule: Schedule, costs: EdgeCosts, computed: list[int]) -> Schedule | None:
    """``schedule`` with the steps after ``computed[-1]`` planned again under ``costs``; None if none fits.

    ``computed`` are the steps to keep, in order (a plan's first calls); the
    rest gets the model calls left of the schedule's budget (PSSP from the
    last of them: the pair-state DP started there). For pair-state costs
    (``meancache2``) only. A plan that does not change is returned as it is.
    """
    n, settings = schedule.steps, schedule.settings
    last = computed[-1]
    back = last - computed[-2] if len(computed) > 1 else 0
    left = schedule.budget - len(computed)
    if not costs.pair_state or costs.steps != n or left < 1 or last >= n - 1 or back >= costs.band.shape[0]:
        return None
    ahead = _pair_transitions(costs.band, settings)[last:]  # the DP over the steps ahead only
    try:
        rest = _pair_state_path(ahead, n - last, left + 1, back)
    except ValueError:  # the calls left cannot reach the last step within the max gap
        return None
    nodes = [*computed, *(last + j for j in rest[1:])]
    if tuple(nodes) == schedule.computed_steps:
        return schedule
    replanned = _schedule_from_path(schedule.sigmas, nodes, costs, schedule.budget, settings)
    return replace(replanned, notes=schedule.notes)


def _schedule_from_path(
    sigmas: list[float], nodes: list[int], costs: EdgeCosts, budget: int, settings: PlannerSettings
) -> Schedule:
    n = len(sigmas) - 1
    nodes = [int(i) for i in nodes]
    compute = [i in set(nodes) for i in range(n)]
    span = meancache2_spans(compute) if costs.pair_state else [0] * n
    used = [""] * n if costs.choice is not None else []
    spans_of = None if costs.pair_state else _edge_band(costs.band, settings)[1]
    edges = []
    for k, (a, b) in enumerate(zip(nodes, nodes[1:])):
        if b - a < 2:
            continue
        back = a - nodes[k - 1] if k > 0 else 0
        layer = back if costs.pair_state else int(spans_of[a, b - a]) - 1
        estimator, k_span = costs.estimator, layer + 1
        if costs.choice is not None:
            estimator, k_span = costs.options[int(costs.choice[layer, a, b - a])]
            k_span = k_span or span[a + 1]  # meancache2's span is the distance its JVP looks back
        elif costs.pair_state:
            k_span = span[a + 1]
        for i in range(a + 1, b):
            span[i] = k_span
            if used:
                used[i] = estimator
        edges.append(Edge(a, b, k_span, float(costs.band[layer, a, b - a]), estimator))
    return Schedule(
        sigmas=sigmas,
        compute=compute,
        span=span,
        estimator=costs.estimator,
        budget=budget,
        settings=settings,
        edges=tuple(edges),
        notes=(f"planned by PSSP from {costs.source} costs",),
        step_estimators=used,
    )
