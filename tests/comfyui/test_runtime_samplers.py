"""The benchmark's samplers equal ComfyUI's, and the core entry point runs under ComfyUI's own samplers."""

from __future__ import annotations

import comfy.k_diffusion.sampling as kd
import pytest
import torch

from comfy_meancache.core.prior import MixturePrior, mixture_velocity
from comfy_meancache.core.runtime import cached_denoiser
from comfy_meancache.core.sigmas import flow_sigmas
from comfy_meancache.samplers import SAMPLERS

PRIOR = MixturePrior(trajectories=8, dim=6)
SIGMAS = torch.tensor(flow_sigmas(20), dtype=torch.float64)
COMFY_SAMPLERS = {
    "euler": kd.sample_euler,
    "dpmpp_2m": kd.sample_dpmpp_2m,
    "res_multistep": kd.sample_res_multistep,
    "heun": kd.sample_heun,
    "ipndm": kd.sample_ipndm,
}


def field():
    gen = torch.Generator().manual_seed(PRIOR.seed)
    means = torch.randn(PRIOR.components, PRIOR.dim, generator=gen, dtype=torch.float64)
    return lambda x, sigma, **_: x - float(sigma[0]) * mixture_velocity(x, float(sigma[0]), means, PRIOR.spread)


def noise():
    return torch.randn(PRIOR.trajectories, PRIOR.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(COMFY_SAMPLERS))
def test_samplers_reproduce_comfyui(name):
    ours = SAMPLERS[name](field(), noise(), SIGMAS)
    theirs = COMFY_SAMPLERS[name](field(), noise(), SIGMAS, disable=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "res_multistep", "ipndm"])
def test_cached_denoiser_under_comfyui_samplers(name):
    calls = []
    denoise = field()

    def counted(x, sigma):
        calls.append(float(sigma[0]))
        return denoise(x, sigma)

    cached = cached_denoiser(counted, SIGMAS, preset="balanced")
    out = COMFY_SAMPLERS[name](lambda x, s, **_: cached(x, s), noise(), SIGMAS, disable=True)
    assert len(calls) == cached.stats.model_calls == cached.schedule.model_calls == 8
    assert torch.isfinite(out).all()
