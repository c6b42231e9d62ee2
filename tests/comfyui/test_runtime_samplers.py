"""The benchmark's samplers equal ComfyUI's, and the core entry point runs under ComfyUI's own samplers."""

from __future__ import annotations

import comfy.k_diffusion.sampling as kd
import pytest
import torch
from comfy.extra_samplers import uni_pc

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
    "deis": kd.sample_deis,
    # ComfyUI's UniPC writes sigma 0.001 into the sigmas it gets and runs in float32 only
    "uni_pc": lambda model, x, sigmas, **kw: uni_pc.sample_unipc(model, x, sigmas.clone(), extra_args={}, **kw),
    "uni_pc_bh2": lambda model, x, sigmas, **kw: uni_pc.sample_unipc_bh2(model, x, sigmas.clone(), extra_args={}, **kw),
}
FLOAT32_ONLY = {"uni_pc", "uni_pc_bh2"}
# ComfyUI computes DEIS's quadrature on a float32 grid and UniPC's coefficients in float32 (its
# lambda at sigma 0.001 keeps few digits there); every other sampler agrees to float64 rounding
TOLERANCE = {"deis": 1e-6, "uni_pc": 2e-4, "uni_pc_bh2": 2e-4}


def field():
    gen = torch.Generator().manual_seed(PRIOR.seed)
    means = torch.randn(PRIOR.components, PRIOR.dim, generator=gen, dtype=torch.float64)
    return lambda x, sigma, **_: x - float(sigma[0]) * mixture_velocity(x, float(sigma[0]), means, PRIOR.spread)


def noise():
    return torch.randn(PRIOR.trajectories, PRIOR.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def setup(name: str):
    """The field, noise and sigmas a sampler runs on: float64, or float32 where ComfyUI's needs it."""
    dtype = torch.float32 if name in FLOAT32_ONLY else torch.float64
    exact = field()
    return (lambda x, sigma, **_: exact(x.double(), sigma.double()).to(dtype)), noise().to(dtype), SIGMAS.to(dtype)


@pytest.mark.parametrize("name", sorted(COMFY_SAMPLERS))
def test_samplers_reproduce_comfyui(name):
    denoise, x, sigmas = setup(name)
    ours = SAMPLERS[name](denoise, x.double(), sigmas.double())
    theirs = COMFY_SAMPLERS[name](denoise, x, sigmas, disable=True)
    tolerance = TOLERANCE.get(name, 1e-12)
    torch.testing.assert_close(ours, theirs.double(), rtol=tolerance, atol=tolerance)


def test_uni_pc_variants_differ_by_far_more_than_the_tolerance():
    """So the UniPC tolerance cannot hide a wrong B(h) or a wrong order."""
    denoise, x, sigmas = setup("uni_pc")
    bh1, bh2 = (SAMPLERS[name](denoise, x.double(), sigmas.double()) for name in ("uni_pc", "uni_pc_bh2"))
    assert (bh1 - bh2).abs().max() > 20 * TOLERANCE["uni_pc"]


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "res_multistep", "ipndm", "deis", "uni_pc", "uni_pc_bh2"])
def test_cached_denoiser_under_comfyui_samplers(name):
    calls = []
    denoise, x, sigmas = setup(name)

    def counted(x, sigma):
        calls.append(float(sigma[0]))
        return denoise(x, sigma)

    cached = cached_denoiser(counted, sigmas, preset="balanced")
    out = COMFY_SAMPLERS[name](lambda x, s, **_: cached(x, s), x, sigmas, disable=True)
    assert len(calls) == cached.stats.model_calls == cached.schedule.model_calls == 8
    assert torch.isfinite(out).all()
