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

from collections.abc import Callable

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


SAMPLERS: dict[str, Sampler] = {
    "euler": sample_euler,
    "dpmpp_2m": sample_dpmpp_2m,
    "res_multistep": sample_res_multistep,
    "heun": sample_heun,
    "ipndm": sample_ipndm,
}
ONE_EVALUATION = ("euler", "dpmpp_2m", "res_multistep", "ipndm")  # one model evaluation per step
