"""Velocity estimators for skipped steps.

Every estimator here is linear in the velocities it reads, so each is written as
a pure function of the sigma grid and step indices that returns exact float64
*weights*: the estimate for step ``i`` is ``v_hat_i = sum_m w[m] * v_m``, where
``v_m`` is the velocity *used* at step ``m`` (computed, or itself estimated).
Scalar weights make each formula testable by hand, let calibration simulate an
estimator cheaply, and leave one small tensor routine (:func:`combine`) on the
sampling hot path.

Conventions (ComfyUI flow models): sigma decreases along a run and the Euler
step is ``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v_i``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

Weights = dict[int, float]

BASE_ESTIMATORS = ("meancache", "meancache2", "reuse")
ADAPTIVE = "adaptive"  # per edge, whichever base estimator the costs price lowest
ESTIMATORS = (*BASE_ESTIMATORS, ADAPTIVE)
DEFAULT_ESTIMATOR = "meancache2"


def reuse_weights(last_computed: int) -> Weights:
    """FORA-style reuse: the last computed velocity, unchanged."""
    return {last_computed: 1.0}


def meancache_weights(sigmas: Sequence[float], step: int, span: int) -> Weights:
    """The official MeanCache update at skipped step ``i`` with span ``K``.

    With ``d = sigma_i - sigma_{i-K}`` and Euler steps ``h_m = sigma_{m+1} - sigma_m``::

        u_bar = sum_{m=i-K}^{i-1} (h_m / d) * v_m      # = (x_i - x_{i-K}) / d for Euler
        J     = (v_{i-K} - u_bar) / d
        v_hat = v_{i-1} - J * h_i

    ``u_bar`` is written through the logged velocities so the estimate does not
    depend on how the sampler moved ``x``. ``K = 1`` is reuse of ``v_{i-1}``.
    The span is clipped to the steps that exist; a zero-length window (repeated
    sigmas) falls back to reuse instead of dividing by zero.
    """
    if step < 1:
        raise ValueError(f"step {step} has no earlier velocity to estimate from")
    if span < 1:
        raise ValueError(f"span must be >= 1, got {span}")
    k = min(span, step)
    window = sigmas[step] - sigmas[step - k]
    if k == 1 or window == 0.0:
        return {step - 1: 1.0}
    c = (sigmas[step + 1] - sigmas[step]) / window
    weights = {m: c * (sigmas[m + 1] - sigmas[m]) / window for m in range(step - k, step)}
    weights[step - 1] += 1.0
    weights[step - k] -= c
    return weights


def meancache2_weights(sigmas: Sequence[float], step: int, computed: Sequence[int]) -> Weights:
    """Average-velocity estimate from the JVP between the last two computed steps.

    The paper's ``u(z_t, t, s) = v(z_t, t) + (s - t) * JVP_{r->t}`` with ``t`` the
    last computed step ``a`` and ``r`` the one before it::

        JVP   = (v_a - v_r) / (sigma_a - sigma_r)
        v_hat = v_a + (sigma_i - sigma_a) * JVP

    Summed over the skipped steps with their Euler lengths this is the average
    velocity of the linearised field over the skipped interval, so a field
    linear in sigma is reproduced exactly. With one computed step (or repeated
    sigmas) it falls back to reuse.
    """
    if not computed:
        raise ValueError(f"step {step} has no computed step to estimate from")
    a = computed[-1]
    if len(computed) < 2 or sigmas[a] == sigmas[computed[-2]]:
        return reuse_weights(a)
    r = computed[-2]
    t = (sigmas[step] - sigmas[a]) / (sigmas[a] - sigmas[r])
    return {r: -t, a: 1.0 + t}


def estimator_weights(
    estimator: str, sigmas: Sequence[float], step: int, span: int, computed: Sequence[int]
) -> Weights:
    """Weights of base ``estimator`` at skipped ``step``; ``computed`` lists earlier computed steps in order."""
    if estimator == "meancache":
        return meancache_weights(sigmas, step, span)
    if estimator == "meancache2":
        return meancache2_weights(sigmas, step, computed)
    if estimator == "reuse":
        if not computed:
            raise ValueError(f"step {step} has no computed step to reuse")
        return reuse_weights(computed[-1])
    raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")


def combine(weights: Weights, velocities: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """``sum_m weights[m] * velocities[m]``, accumulated in fp32 for half-precision inputs."""
    items = iter(weights.items())
    step, w = next(items)
    first = velocities[step]
    if len(weights) == 1 and w == 1.0:
        return first  # plain reuse: no arithmetic, no copy (callers never write into velocities)
    acc_dtype = torch.float32 if first.dtype in (torch.float16, torch.bfloat16) else first.dtype
    out = first.to(acc_dtype) * w
    for step, w in items:
        out.add_(velocities[step].to(acc_dtype), alpha=w)
    return out.to(first.dtype)
