"""k-diffusion-style ODE samplers for the benchmark, written from their formulas.

Each is ``sampler(denoise, x, sigmas) -> x`` with ``denoise(x, sigma) -> denoised``
(``sigma`` a ``[batch]`` tensor), the calling convention of ComfyUI's
``comfy.k_diffusion.sampling`` functions, whose results these reproduce (an
integration test compares them on a real ComfyUI). They let the benchmark run
MeanCache under the samplers users run, and score it against the honest
competitor: the same sampler with fewer steps.

Notation: ``t = -log(sigma)``, ``h = t_next - t``; the multistep samplers
fall back to Euler on their first step and on the step to sigma 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Sampler = Callable[[Denoise, torch.Tensor, torch.Tensor], torch.Tensor]


def _sigma_in(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return sigma * x.new_ones([x.shape[0]])


def _euler_step(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor):
    return x + (x - denoised) / sigma * (sigma_next - sigma)


@torch.no_grad()
def sample_euler(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``x_next = x + (sigma_next - sigma) * (x - denoised) / sigma``."""
    for i in range(len(sigmas) - 1):
        x = _euler_step(x, denoise(x, _sigma_in(x, sigmas[i])), sigmas[i], sigmas[i + 1])
    return x


@torch.no_grad()
def sample_heun(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Heun's second-order method (trapezoid on ``d``); its corrector evaluates at ``sigma_next``."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = (x - denoise(x, _sigma_in(x, sigma))) / sigma
        x_euler = x + d * (sigma_next - sigma)
        if sigma_next == 0:
            x = x_euler
            continue
        d_next = (x_euler - denoise(x_euler, _sigma_in(x, sigma_next))) / sigma_next
        x = x + (d + d_next) / 2 * (sigma_next - sigma)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++(2M): ``x_next = (sigma_next / sigma) x - expm1(-h) D`` with
    ``D = (1 + 1/(2r)) denoised - 1/(2r) denoised_prev`` and ``r = h_prev / h``."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, _sigma_in(x, sigma))
        if sigma_next == 0:
            x = denoised
        else:
            h = sigma.log() - sigma_next.log()
            blend = denoised
            if old_denoised is not None:
                r = (sigmas[i - 1].log() - sigma.log()) / h
                blend = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - torch.expm1(-h) * blend
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_res_multistep(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """RES second-order multistep (arXiv 2308.02157), deterministic:
    ``x_next = e^{-h} x + h (b1 denoised + b2 denoised_prev)`` with ``b1 = phi1(-h) - phi2(-h)/c2``,
    ``b2 = phi2(-h)/c2``, ``c2 = (t_prev - t_prev_step) / h``, ``phi1(z) = expm1(z)/z``,
    ``phi2(z) = (phi1(z) - 1)/z``."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, _sigma_in(x, sigma))
        if sigma_next == 0 or old_denoised is None:
            x = _euler_step(x, denoised, sigma, sigma_next)
        else:
            t, t_next = -sigma.log(), -sigma_next.log()
            t_prev = -sigmas[i - 1].log()
            h = t_next - t
            c2 = (t_prev - t) / h  # the previous step ended where this one starts (no noise: sigma_down = sigma)
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1.0) / -h
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            x = torch.exp(-h) * x + h * (b1 * denoised + b2 * old_denoised)
        old_denoised = denoised
    return x


IPNDM_WEIGHTS = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


@torch.no_grad()
def sample_ipndm(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Improved PNDM: Adams-Bashforth on ``d = (x - denoised) / sigma`` of order up to 4
    (``x_next = x + (sigma_next - sigma) * sum_k w_k d_{i-k}``); the step to sigma 0 returns ``denoised``."""
    history: list[torch.Tensor] = []  # newest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoise(x, _sigma_in(x, sigma))
        d = (x - denoised) / sigma
        history = [d, *history][: len(IPNDM_WEIGHTS)]
        if sigma_next == 0:
            x = denoised
        else:
            weights = IPNDM_WEIGHTS[len(history) - 1]
            x = x + (sigma_next - sigma) * sum(w * h for w, h in zip(weights, history))
    return x


DEIS_ORDER = 3
DEIS_QUADRATURE_POINTS = 10_000
# ComfyUI's DEIS integrates in the time of a VP schedule fitted to these EDM limits
EDM_SIGMA_MIN, EDM_SIGMA_MAX, VP_EPSILON = 0.002, 80.0, 1e-3


@torch.no_grad()
def sample_deis(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """DEIS (arXiv 2204.13902, "tab" mode) as ComfyUI runs it: Adams-Bashforth of order up to 3 on
    ``d = (x - denoised) / sigma``, ``x_next = x + sum_j C_j d_{i-j}``, where ``C_j`` integrates the
    Lagrange basis polynomial of the last steps' VP times against ``d sigma`` (see :func:`_deis_weights`);
    the first step and the step to sigma 0 are Euler."""
    times, beta_min, beta_d = _vp_times(sigmas)
    history: list[torch.Tensor] = []  # newest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = (x - denoise(x, _sigma_in(x, sigma))) / sigma
        order = 1 if sigma_next <= 0 else min(DEIS_ORDER, i + 1)
        if order == 1:
            x = x + (sigma_next - sigma) * d
        else:
            weights = _deis_weights(times, i, order, beta_min, beta_d)
            x = x + _weighted(weights, [d, *history])
        history = [d, *history][: DEIS_ORDER - 1]
    return x


def _vp_times(sigmas: torch.Tensor) -> tuple[list[float], float, float]:
    """Each sigma's time under the VP schedule ``alpha(t) = exp(-beta_d t^2 / 2 - beta_min t)`` with
    ``sigma^2 = 1/alpha - 1``, and that schedule's ``beta_min``, ``beta_d``."""
    beta_d = 2 * (math.log(EDM_SIGMA_MIN**2 + 1) / VP_EPSILON - math.log(EDM_SIGMA_MAX**2 + 1)) / (VP_EPSILON - 1)
    beta_min = math.log(EDM_SIGMA_MAX**2 + 1) - 0.5 * beta_d
    times = [(math.sqrt(beta_min**2 + 2 * beta_d * math.log(float(s) ** 2 + 1)) - beta_min) / beta_d for s in sigmas]
    return times, beta_min, beta_d


def _deis_weights(times: list[float], i: int, order: int, beta_min: float, beta_d: float) -> list[float]:
    """``C_j = integral over [t_i, t_{i+1}] of l_j(tau) d sigma(tau)``, ``l_j`` the Lagrange basis on
    ``t_i, ..., t_{i-order+1}``, by ComfyUI's rule: the mean of the integrand at
    :data:`DEIS_QUADRATURE_POINTS` evenly spaced points, ends included, times the interval."""
    start, end = times[i], times[i + 1]
    taus = torch.linspace(start, end, DEIS_QUADRATURE_POINTS, dtype=torch.float64)
    alpha = torch.exp(-0.5 * taus**2 * beta_d - taus * beta_min)
    d_sigma = 0.5 * (taus * beta_d + beta_min) / torch.sqrt(alpha * (1 - alpha))
    nodes = [times[i - k] for k in range(order)]
    weights = []
    for j in range(order):
        basis = d_sigma.clone()
        for k, node in enumerate(nodes):
            if k != j:
                basis *= (taus - node) / (nodes[j] - node)
        weights.append(float(basis.sum()) * (end - start) / DEIS_QUADRATURE_POINTS)
    return weights


UNI_PC_ORDER = 3
UNI_PC_LAST_SIGMA = 0.001  # ComfyUI's uni_pc ends at this sigma instead of 0


@torch.no_grad()
def sample_uni_pc(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, variant: str = "bh1") -> torch.Tensor:
    """UniPC (arXiv 2302.04867) as ComfyUI runs it: multistep, data prediction, order
    ``min(3, steps - 1)`` (lower near the start and the end), with ``lambda = -log(sigma)``.

    Step ``k`` predicts ``x_pred = (s_k/s_{k-1}) x - expm1(-h) m_0 - B(h) sum_i rho^p_i D_i``
    from the last denoised values ``m`` (``D_i = (m_i - m_0)/r_i``, ``r_i`` their lambda
    offsets over ``h``), evaluates ``m_k`` at ``x_pred`` (the step's one evaluation) and
    corrects with ``rho^c`` over ``D_i`` and ``m_k - m_0``; ``rho`` solve
    ``sum_i rho_i r_i^(n-1) = n! (-h) phi_{n+1}(-h) / B(h)`` with ``B = -h`` (bh1) or
    ``expm1(-h)`` (bh2). The last step has no corrector, so no evaluation at the end.
    """
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unknown UniPC variant {variant!r}; choose bh1 or bh2")
    times = sigmas.clone()
    if times[-1] == 0:
        times[-1] = UNI_PC_LAST_SIGMA
    steps = len(times) - 1
    if steps < 2:
        raise ValueError(f"UniPC needs at least 2 steps, got {steps}")
    order = min(UNI_PC_ORDER, steps - 1)
    lam = [-math.log(float(s)) for s in times]
    history = [(0, denoise(x, _sigma_in(x, times[0])))]  # (step, denoised), newest last
    for k in range(1, steps + 1):
        step_order = min(k, order, steps + 1 - k)
        p0, m0 = history[-1]
        h = lam[k] - lam[p0]
        older = history[-step_order:-1][::-1]  # newest first
        ratios = [(lam[p] - lam[p0]) / h for p, _ in older]
        slopes = [(m - m0) / r for (_, m), r in zip(older, ratios)]
        scale = -h if variant == "bh1" else math.expm1(-h)
        predictor, corrector = _uni_pc_rhos([*ratios, 1.0], -h, scale)
        base = (times[k] / times[p0]) * x - math.expm1(-h) * m0
        x_pred = base - scale * _weighted(predictor, slopes) if slopes else base
        if k == steps:
            x = x_pred
            break
        m_k = denoise(x_pred, _sigma_in(x, times[k]))
        x = base - scale * (_weighted(corrector[:-1], slopes) + corrector[-1] * (m_k - m0))
        history = [*history, (k, m_k)][-order:]
    return x


def _uni_pc_rhos(ratios: list[float], hh: float, scale: float) -> tuple[list[float], list[float]]:
    """Predictor and corrector weights of one UniPC step from the lambda ratios (the last is 1),
    ``hh = -h`` and ``scale = B(h)``."""
    order = len(ratios)
    phi = math.expm1(hh) / hh - 1.0
    b, factorial = [], 1
    for n in range(1, order + 1):
        b.append(phi * factorial / scale)
        factorial *= n + 1
        phi = phi / hh - 1.0 / factorial
    rows = [[r ** (n - 1) for r in ratios] for n in range(1, order + 1)]
    corrector = [0.5] if order == 1 else _solve(rows, b)
    predictor = [0.5] if order == 2 else _solve([row[:-1] for row in rows[:-1]], b[:-1]) if order > 2 else []
    return predictor, corrector


def _solve(rows: list[list[float]], rhs: list[float]) -> list[float]:
    return torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64)).tolist()


def _weighted(weights: list[float], values: list[torch.Tensor]) -> torch.Tensor:
    return sum(w * v for w, v in zip(weights, values))


SAMPLERS: dict[str, Sampler] = {
    "euler": sample_euler,
    "dpmpp_2m": sample_dpmpp_2m,
    "res_multistep": sample_res_multistep,
    "heun": sample_heun,
    "ipndm": sample_ipndm,
    "deis": sample_deis,
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": partial(sample_uni_pc, variant="bh2"),
}
# one model evaluation per step
ONE_EVALUATION = ("euler", "dpmpp_2m", "res_multistep", "ipndm", "deis", "uni_pc", "uni_pc_bh2")
# ComfyUI's KSampler gives these a grid of steps + 1 sigmas without its penultimate one
DISCARD_PENULTIMATE_SIGMA = ("uni_pc", "uni_pc_bh2")
