"""Dense ``[L, N, N]`` edge-cost tables for small test grids, converted to and from :class:`EdgeCosts` bands.

The pair-state dense layout indexes layers by the previous computed step
``r`` as ``r + 1`` (``0``: none), as the brute-force planner tests write it.
"""

import numpy as np

from comfy_meancache.core.costs import PAIR_STATE_ESTIMATORS, EdgeCosts


def from_dense(estimator: str, table: np.ndarray, source: str) -> EdgeCosts:
    """Costs given as a full ``[L, N, N]`` table (``table[layer, i, j]``), every gap kept."""
    layers, n = table.shape[0], table.shape[1]
    pair = estimator in PAIR_STATE_ESTIMATORS
    band = np.full((n if pair else layers, n, n), np.inf)
    for i in range(n):
        for d in range(1, n - i):
            if not pair:
                band[:, i, d] = table[:, i, i + d]
                continue
            band[0, i, d] = table[0, i, i + d]
            for back in range(1, i + 1):
                band[back, i, d] = table[i - back + 1, i, i + d]
    return EdgeCosts(estimator, band, source)


def dense(costs: EdgeCosts) -> np.ndarray:
    """The full table in :func:`from_dense`'s layout."""
    n = costs.steps
    out = np.full((n + 1 if costs.pair_state else costs.band.shape[0], n, n), np.inf)
    for i in range(n):
        for d in range(1, min(costs.max_gap, n - 1 - i) + 1):
            if not costs.pair_state:
                out[:, i, i + d] = costs.band[:, i, d]
                continue
            out[0, i, i + d] = costs.band[0, i, d]
            for back in range(1, min(i, costs.band.shape[0] - 1) + 1):
                out[i - back + 1, i, i + d] = costs.band[back, i, d]
    return out
