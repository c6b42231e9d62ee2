"""An exact Gaussian-mixture flow as a counted k-diffusion ``denoise(x, sigma)``, shared by the runtime tests."""

import torch

from comfy_meancache.core.prior import MixturePrior, mixture_velocity

PRIOR = MixturePrior(trajectories=8, dim=6)


class Field:
    """An exact mixture flow as a counted ``denoise(x, sigma)``."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(PRIOR.seed)
        self.means = torch.randn(PRIOR.components, PRIOR.dim, generator=gen, dtype=torch.float64)
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        s = float(sigma[0])
        return x - s * mixture_velocity(x, s, self.means, PRIOR.spread)


def noise() -> torch.Tensor:
    return torch.randn(PRIOR.trajectories, PRIOR.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
