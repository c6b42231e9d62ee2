"""Sigma grids of ComfyUI's discrete-flow sampling, reproduced without ComfyUI.

Inside ComfyUI the planner asks ComfyUI itself for the sigmas; this module lets
the CLI, the demo and the tests plan on the same grids. It follows
``ModelSamplingDiscreteFlow`` (a 1000-entry float32 table of shifted times) and
the ``simple``, ``normal`` and ``sgm_uniform`` schedulers, plus KSampler's
``denoise`` rule (plan ``int(steps / denoise)`` steps and keep the tail).
"""

from __future__ import annotations

import torch

SCHEDULERS = ("simple", "normal", "sgm_uniform")
TABLE_SIZE = 1000


def time_snr_shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    """Map time ``t`` in [0, 1] to sigma for a flow model sampled with ``shift``."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def _sigma_table(shift: float, multiplier: float) -> torch.Tensor:
    timesteps = torch.arange(1, TABLE_SIZE + 1, 1) / TABLE_SIZE * multiplier
    return time_snr_shift(shift, timesteps / multiplier)


def _simple(table: torch.Tensor, steps: int) -> list[float]:
    stride = len(table) / steps
    return [float(table[-(1 + int(x * stride))]) for x in range(steps)] + [0.0]


def _normal(table: torch.Tensor, steps: int, shift: float, multiplier: float, sgm: bool) -> list[float]:
    start, end = float(table[-1]) * multiplier, float(table[0]) * multiplier
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        timesteps = torch.linspace(start, end, steps)
    sigmas = [float(time_snr_shift(shift, t / multiplier)) for t in timesteps]
    return sigmas + [0.0]


def flow_sigmas(
    steps: int,
    shift: float = 3.0,
    scheduler: str = "simple",
    denoise: float = 1.0,
    multiplier: float = 1.0,
) -> list[float]:
    """The ``steps + 1`` sigmas KSampler uses for a discrete-flow model (last one 0)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    if shift <= 0.0:
        raise ValueError(f"shift must be > 0, got {shift}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    total = steps if denoise > 0.9999 else int(steps / denoise)
    table = _sigma_table(shift, multiplier)
    if scheduler == "simple":
        sigmas = _simple(table, total)
    else:
        sigmas = _normal(table, total, shift, multiplier, sgm=scheduler == "sgm_uniform")
    return sigmas[-(steps + 1) :]
