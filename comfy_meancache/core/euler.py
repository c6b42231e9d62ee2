"""A plain Euler sampling loop that can run under a :class:`Stepper`.

The demo, the benchmark and the tests sample through this loop; inside
ComfyUI the sampler is ComfyUI's own and the hook drives the stepper instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .stepper import Action, RunStats, Stepper

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]


def sample_euler(
    velocity: VelocityFn, x: torch.Tensor, sigmas: Sequence[float], stepper: Stepper | None = None
) -> tuple[torch.Tensor, RunStats | None]:
    """Euler-integrate ``dx/dsigma = velocity(x, sigma)`` over ``sigmas``; skipped steps use the stepper."""
    for i in range(len(sigmas) - 1):
        if stepper is None or stepper.decide(i, x) is Action.COMPUTE:
            v = velocity(x, sigmas[i])
            if stepper is not None:
                stepper.record(i, v)
        else:
            v = stepper.estimate(i)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x, stepper.finish() if stepper is not None else None
