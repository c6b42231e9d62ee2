"""Edge costs measured on full-step trajectories (calibration).

Given the velocities ``v_i`` (and states ``x_i``) of runs that computed every
step, the cost of edge ``i -> j`` is how far the sampler state at ``j`` lands
from the true ``x_j`` when the model is called at ``i`` and the estimator fills
in steps ``i+1 .. j-1`` (true history up to ``i``, its own estimates after):

* ``state`` (default): ``mean |x_hat_j - x_j|``;
* ``avg_velocity``: the same divided by ``|sigma_j - sigma_i|``, the deviation of
  the average velocity over the edge. Offered for study, not as the default: it
  rewards one long final skip, and on a trained model at CFG 4 it lost to plain
  fewer steps at 5x where the state deviation won by about 9 dB.

Chain edges (``j = i + 1``) cost 0. Costs are means over every element of every
run, so adding runs averages them. Only edges up to the max gap exist, so a
table is a band of ``N * (G + 1)`` entries per layer, never ``N * N``: planning
1000 steps stays in megabytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .estimators import ADAPTIVE, BASE_ESTIMATORS, estimator_weights

COST_METRICS = ("state", "avg_velocity")
PAIR_STATE_ESTIMATORS = ("meancache2", ADAPTIVE)
_ROWS_PER_BLOCK = 256  # edge starts swept together: bounds memory on long grids


@dataclass(frozen=True)
class EdgeCosts:
    """Predicted edge costs of one estimator on one sigma grid, stored as a band.

    ``band`` has shape ``[L, N, G + 1]`` and ``band[layer, i, d]`` is the cost
    of edge ``i -> i + d`` (``d = 0`` unused). For single-state estimators the
    layer is the span minus one. For pair-state estimators it is the distance
    back from ``i`` to the computed step before it (``0``: none, only at step
    0). Chain edges cost nothing whatever the band says; undefined edges are
    ``inf``. ``adaptive`` costs are pair-state; ``choice`` then holds, per
    band cell, the index into ``options`` of the ``(estimator, span)`` that
    achieves that cost.
    """

    estimator: str
    band: np.ndarray
    source: str
    choice: np.ndarray | None = None
    options: tuple[tuple[str, int], ...] = ()

    @property
    def steps(self) -> int:
        return self.band.shape[1]

    @property
    def max_gap(self) -> int:
        return self.band.shape[2] - 1

    @property
    def pair_state(self) -> bool:
        return self.estimator in PAIR_STATE_ESTIMATORS

    def best_per_edge(self) -> np.ndarray:
        """``[N, N]`` cheapest cost of each edge over all layers (``inf`` where undefined), for display."""
        n = self.steps
        best = np.full((n, n), np.inf)
        lowest = np.where(np.isnan(self.band), np.inf, self.band).min(axis=0)
        for d in range(1, self.max_gap + 1):
            best[np.arange(n - d), np.arange(d, n)] = lowest[: n - d, d]
        return best


def euler_states(sigmas: Sequence[float], x0: torch.Tensor, velocities: torch.Tensor) -> torch.Tensor:
    """States ``x_0 .. x_N`` of an Euler run that used ``velocities[i]`` at step ``i``."""
    states = [x0]
    for i, v in enumerate(velocities):
        states.append(states[-1] + (sigmas[i + 1] - sigmas[i]) * v)
    return torch.stack(states)


def trajectory_costs(
    sigmas: Sequence[float],
    velocities: torch.Tensor,
    states: torch.Tensor,
    estimator: str,
    max_span: int = 6,
    max_gap: int = 8,
    metric: str = "state",
    source: str = "calibration",
) -> EdgeCosts:
    """Edge costs of ``estimator`` from full-step runs.

    ``velocities`` is ``[N, ...]`` (the velocity used at each step) and
    ``states`` ``[N + 1, ...]`` (the state before each step, then the final
    one); any trailing shape works, e.g. ``[runs, C, H, W]``.
    """
    sigmas = [float(s) for s in sigmas]
    n = len(sigmas) - 1
    if velocities.shape[0] != n or states.shape[0] != n + 1:
        raise ValueError(
            f"{n} steps need {n} velocities and {n + 1} states, got {velocities.shape[0]} and {states.shape[0]}"
        )
    if metric not in COST_METRICS:
        raise ValueError(f"unknown cost metric {metric!r}; choose one of {', '.join(COST_METRICS)}")
    if estimator == ADAPTIVE:
        args = (max_span, max_gap, metric, source)
        return cheapest_per_edge([trajectory_costs(sigmas, velocities, states, e, *args) for e in BASE_ESTIMATORS])
    gap = max(1, min(max_gap, n - 1))
    if estimator in PAIR_STATE_ESTIMATORS:
        layers = [(back, 1) for back in range(gap + 1)]  # (distance to the previous computed step, span)
    else:
        layers = [(None, k) for k in range(1, (max_span if estimator == "meancache" else 1) + 1)]
    band = np.full((len(layers), n, gap + 1), np.inf)
    for layer, (back, span) in enumerate(layers):
        if back == 0:
            starts = [0]
        else:
            starts = list(range(back or 0, n - 1))
        for block in range(0, len(starts), _ROWS_PER_BLOCK):
            rows = starts[block : block + _ROWS_PER_BLOCK]
            band[layer, rows] = _sweep(sigmas, velocities, states, estimator, rows, span, back, gap, metric)
    return EdgeCosts(estimator=estimator, band=band, source=source)


def _sweep(
    sigmas: list[float],
    velocities: torch.Tensor,
    states: torch.Tensor,
    estimator: str,
    starts: list[int],
    span: int,
    back: int | None,
    gap: int,
    metric: str,
) -> np.ndarray:
    """Costs ``[len(starts), gap + 1]`` of the edges from ``starts``, estimating their steps together.

    Each start ``i`` runs the estimator over ``i+1, i+2, ...`` on its own history
    (true velocities up to ``i``, its own estimates after); the estimates are
    combined for all starts at once with per-start weights over step offsets.
    """
    n = len(sigmas) - 1
    lookback = max(span, back or 0)
    start = torch.tensor(starts)
    trail = (1,) * (velocities.dim() - 1)
    used = [velocities[(start + off).clamp(0, n - 1)] for off in range(-lookback, 1)]  # offsets -lookback..0
    step = torch.tensor([sigmas[i + 1] - sigmas[i] for i in range(n)], dtype=velocities.dtype)
    x = states[start] + step[start].view(-1, *trail) * used[-1]
    out = np.full((len(starts), gap + 1), np.inf)
    out[:, 1] = 0.0
    for k in range(1, gap):
        m = start + k  # the step estimated now; its end state is compared
        live = [r for r, i in enumerate(starts) if i + k < n - 1]
        if not live:
            break
        weights = np.zeros((len(starts), lookback + k))
        for r in live:
            i = starts[r]
            computed = [i] if back is None or back == 0 else [i - back, i]
            for absolute, w in estimator_weights(estimator, sigmas, i + k, span, computed).items():
                weights[r, absolute - i + lookback] += w
        w = torch.from_numpy(weights).to(velocities.dtype)
        estimate = sum(w[:, o].view(-1, *trail) * used[o] for o in range(lookback + k) if weights[:, o].any())
        used.append(estimate)
        x = x + step[m.clamp(max=n - 1)].view(-1, *trail) * estimate
        deviation = (x - states[(m + 1).clamp(max=n)]).abs().flatten(1).mean(1).double().numpy()
        if metric == "avg_velocity":
            length = np.abs([sigmas[min(i + k + 1, n)] - sigmas[i] for i in starts])
            deviation = deviation / np.where(length > 0, length, 1.0)
        out[live, k + 1] = deviation[live]
    return out


def cheapest_per_edge(parts: list[EdgeCosts]) -> EdgeCosts:
    """``adaptive`` costs: for every edge (and computed step before it), the cheapest estimator and span.

    ``parts`` are costs of base estimators on one grid. A pair-state part is
    one option (its span follows the computed steps); each span of a
    single-state part is another, and as it does not depend on the step
    before the edge it applies under every layer.
    """
    steps, width = parts[0].steps, parts[0].band.shape[2]
    back = width  # layers of a pair-state band: distance 0..max gap to the step before the edge
    options, costs = [], []
    for part in parts:
        if part.steps != steps or part.band.shape[2] != width or part.estimator == ADAPTIVE:
            raise ValueError("only base-estimator costs of one grid and one max gap can be combined")
        if part.pair_state:
            options.append((part.estimator, 0))
            costs.append(part.band[:back])
        else:
            options += [(part.estimator, k + 1) for k in range(part.band.shape[0])]
            costs += [np.broadcast_to(layer, (back, steps, width)) for layer in part.band]
    stacked = np.where(np.isnan(np.stack(costs)), np.inf, np.stack(costs))
    choice = np.argmin(stacked, axis=0)
    band = np.take_along_axis(stacked, choice[None], axis=0)[0]
    return EdgeCosts(ADAPTIVE, band, parts[0].source, choice, tuple(options))


def even_costs(steps: int, estimator: str, max_span: int = 6, max_gap: int = 8) -> EdgeCosts:
    """Costs that assume nothing about the model: an edge costs the square of its length in steps.

    Any cost convex in the length makes PSSP spread the calls evenly over the
    sampler's own steps, which already follow the noise schedule the model
    was trained for; warm-up and max gap still apply. For ``adaptive`` there
    is nothing to choose between, so every skip uses ``meancache2``.
    """
    gap = max(1, min(max_gap, steps - 1))
    lengths = np.arange(gap + 1, dtype=np.float64) ** 2
    pair = estimator in PAIR_STATE_ESTIMATORS
    layers = gap + 1 if pair else (max_span if estimator == "meancache" else 1)
    band = np.broadcast_to(lengths, (layers, steps, gap + 1)).copy()
    if estimator == ADAPTIVE:
        return cheapest_per_edge([EdgeCosts("meancache2", band, "even")])
    return EdgeCosts(estimator, band, "even")
