"""The built-in ``prior`` cost source: costs without calibrating a model.

Instead of a formula per estimator, the prior *measures* edge costs on exact
trajectories of a data set whose flow is known in closed form: a mixture of
isotropic Gaussians. For data ``x0 ~ sum_c w_c N(mu_c, tau^2 I)`` and
``x_s = s*eps + (1-s)*x0``, the ideal flow model's denoised estimate is the
posterior mean

    E[x0 | x_s] = sum_c p(c | x_s) * (mu_c + (1-s) tau^2 / var_s * (x_s - (1-s) mu_c)),
    var_s = s^2 + (1-s)^2 tau^2,

and its velocity is ``v = (x_s - E[x0 | x_s]) / s`` (ComfyUI's flow convention).
Grids that exceed sigma 1 belong to epsilon-prediction models
(``x_s = x0 + s*eps``), where the same formulas hold with ``1-s`` replaced by 1.
Trajectories bend where the posterior picks a component, as real ones do, so
the costs reward computing where a real model's velocity turns. Every
estimator and span is then costed by :func:`costs.trajectory_costs`, the very
code that costs calibration runs, on the exact sigma grid being planned.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .costs import EdgeCosts, trajectory_costs


@dataclass(frozen=True)
class MixturePrior:
    """Shape of the synthetic data set.

    The defaults are fitted by :func:`fit_prior` (``scripts/fit_prior.py``): over a grid of
    components, dimension and spread, the mixture whose edge costs rank the
    edges most like costs measured on real full-step runs (mean Spearman rho
    of log costs, edges of gap 2..8, estimators meancache and meancache2).
    Data: the embedded flow model at 50 steps, cfg 1 and 4, and four runs of
    the integration tests' tiny Z-Image at 50 steps, cfg 4. Fitted rho 0.927
    (embedded 0.94-0.99, tiny Z-Image 0.84-0.97); the earlier guess
    (10 components, 64 dimensions, spread 0.3) had 0.846.
    """

    components: int = 10
    dim: int = 4
    spread: float = 0.8
    trajectories: int = 32
    seed: int = 0


def signal_scale(sigma: float, flow: bool) -> float:
    """How much of ``x0`` remains in ``x_sigma``: ``1 - sigma`` for flow models, 1 otherwise."""
    return 1.0 - sigma if flow else 1.0


def mixture_velocity(
    x: torch.Tensor, sigma: float, means: torch.Tensor, spread: float, flow: bool = True
) -> torch.Tensor:
    """Exact ODE velocity ``(x - E[x0 | x]) / sigma`` of the Gaussian mixture at ``x`` ([T, D]), ``sigma`` > 0."""
    keep = signal_scale(sigma, flow)
    var = sigma**2 + keep**2 * spread**2
    offsets = x[:, None, :] - keep * means[None]  # [T, C, D]
    logits = -(offsets**2).sum(-1) / (2 * var)  # [T, C]
    posterior = (logits - logits.amax(1, keepdim=True)).exp()  # torch.softmax is slow on some CPU builds
    posterior = posterior / posterior.sum(1, keepdim=True)
    x0_given_c = means[None] + (keep * spread**2 / var) * offsets
    denoised = (posterior[..., None] * x0_given_c).sum(1)
    return (x - denoised) / sigma


def mixture_trajectories(sigmas: Sequence[float], prior: MixturePrior) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-step Euler runs on ``sigmas``: velocities ``[N, T, D]`` and states ``[N + 1, T, D]``."""
    gen = torch.Generator().manual_seed(prior.seed)
    means = torch.randn(prior.components, prior.dim, generator=gen, dtype=torch.float64)
    labels = torch.randint(prior.components, (prior.trajectories,), generator=gen)
    x0 = means[labels] + prior.spread * torch.randn(prior.trajectories, prior.dim, generator=gen, dtype=torch.float64)
    noise = torch.randn(prior.trajectories, prior.dim, generator=gen, dtype=torch.float64)
    flow = max(sigmas) <= 1.0
    x = sigmas[0] * noise + signal_scale(sigmas[0], flow) * x0
    states, velocities = [x], []
    for i in range(len(sigmas) - 1):
        v = mixture_velocity(x, max(sigmas[i], 1e-6), means, prior.spread, flow)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
        velocities.append(v)
        states.append(x)
    return torch.stack(velocities), torch.stack(states)


@lru_cache(maxsize=32)
def _cached_prior_costs(
    sigmas: tuple[float, ...], estimator: str, max_span: int, max_gap: int, prior: MixturePrior
) -> EdgeCosts:
    velocities, states = mixture_trajectories(sigmas, prior)
    return trajectory_costs(sigmas, velocities, states, estimator, max_span, max_gap, source="prior")


def prior_costs(
    sigmas: Sequence[float],
    estimator: str,
    max_span: int = 6,
    max_gap: int = 8,
    prior: MixturePrior = MixturePrior(),
) -> EdgeCosts:
    """Edge costs of ``estimator`` on ``sigmas`` measured on the Gaussian-mixture flow."""
    return _cached_prior_costs(tuple(float(s) for s in sigmas), estimator, max_span, max_gap, prior)


PRIOR_GRID = {"components": (4, 10, 32), "dim": (2, 4, 16, 64), "spread": (0.2, 0.3, 0.5, 0.8, 1.2, 2.0)}
FIT_ESTIMATORS = ("meancache", "meancache2")


def fit_prior(
    runs: Sequence[tuple[Sequence[float], torch.Tensor, torch.Tensor]], grid: dict = PRIOR_GRID
) -> list[tuple[float, MixturePrior]]:
    """Mixtures of ``grid`` (components, dim, spread) ranked by how well their edge costs rank the measured ones.

    ``runs`` are full-step runs ``(sigmas, velocities, states)``. The score is
    the mean Spearman correlation of log costs over all skipping edges (gap
    >= 2), for each run and each of :data:`FIT_ESTIMATORS`. Returns
    ``(score, prior)`` pairs, best first. The benchmark refits it without the
    model it evaluates (leave-one-out), so the default is never scored on
    what it was fitted to.
    """
    measured = [
        (list(sigmas), estimator, trajectory_costs(sigmas, v, x, estimator).band)
        for sigmas, v, x in runs
        for estimator in FIT_ESTIMATORS
    ]
    ranked = []
    for components, dim, spread in itertools.product(grid["components"], grid["dim"], grid["spread"]):
        prior = MixturePrior(components=components, dim=dim, spread=spread)
        scores = []
        for sigmas, estimator, band in measured:
            v, x = mixture_trajectories(sigmas, prior)
            predicted = trajectory_costs(sigmas, v, x, estimator).band
            mask = _skipping_edges(band) & _skipping_edges(predicted)
            scores.append(_spearman(np.log(predicted[mask]), np.log(band[mask])))
        ranked.append((float(np.mean(scores)), prior))
    return sorted(ranked, key=lambda item: -item[0])


def _skipping_edges(band: np.ndarray) -> np.ndarray:
    """Finite, non-chain edges of a cost band ``[L, N, G + 1]``."""
    return np.isfinite(band) & (band > 0) & (np.arange(band.shape[-1]) >= 2)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(values: np.ndarray) -> np.ndarray:
        out = np.empty(len(values))
        out[np.argsort(values)] = np.arange(len(values))
        return out

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])
