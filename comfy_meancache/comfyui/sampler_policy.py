"""Which ComfyUI samplers can be cached, and how their evaluations map to steps.

A skipped step returns an estimated velocity for the sampler's state at that
step's sigma. That is exact bookkeeping for samplers that walk the probability
-flow ODE with one evaluation per step at the step's sigma (UniPC evaluates at
its predictor's state and corrects with that evaluation; the skip's estimate
takes its place the same way, and its last step, to the 0.001 it writes over
sigma 0, evaluates nothing). Two deterministic
multi-evaluation families also work: midpoint samplers evaluate at sigmas off
the grid (never matched, so computed normally), and Heun-type samplers run
their corrector at the *next* step's sigma before that step's own evaluation,
so the first evaluation at each later sigma is the corrector. Samplers that
inject noise, read the unconditional prediction (``cfg_pp``) or pick their own
sigmas run uncached with one warning line.
"""

from __future__ import annotations

from dataclasses import dataclass

ONE_EVALUATION = {
    "sample_euler": "euler",
    "sample_dpmpp_2m": "dpmpp_2m",
    "sample_lms": "lms",
    "sample_ipndm": "ipndm",
    "sample_ipndm_v": "ipndm_v",
    "sample_deis": "deis",
    "sample_res_multistep": "res_multistep",
    "sample_gradient_estimation": "gradient_estimation",
    "sample_unipc": "uni_pc",
    "sample_unipc_bh2": "uni_pc_bh2",
}
MIDPOINT = {"sample_dpm_2": "dpm_2"}
CORRECTOR_AT_NEXT_SIGMA = {"sample_heun": "heun"}

SUPPORTED = sorted({*ONE_EVALUATION.values(), *MIDPOINT.values(), *CORRECTOR_AT_NEXT_SIGMA.values(), "ddim"})


@dataclass(frozen=True)
class SamplerPolicy:
    """How the hook treats one sampler."""

    name: str
    cached: bool
    corrector_first: bool = False
    reason: str = ""


def sampler_policy(sampler: object) -> SamplerPolicy:
    """Classify a ComfyUI sampler object (``KSAMPLER`` carries its k-diffusion function)."""
    function = getattr(sampler, "sampler_function", None)
    key = getattr(function, "__name__", type(sampler).__name__)
    extra = getattr(sampler, "extra_options", None) or {}
    if key in CORRECTOR_AT_NEXT_SIGMA:
        return SamplerPolicy(CORRECTOR_AT_NEXT_SIGMA[key], True, corrector_first=True)
    if key in ONE_EVALUATION or key in MIDPOINT:
        name = ONE_EVALUATION.get(key) or MIDPOINT[key]
        if extra.get("s_churn", 0) > 0:
            return SamplerPolicy(name, False, reason=f"{name} with s_churn > 0 adds noise between steps")
        return SamplerPolicy(name, True)
    name = key.removeprefix("sample_")
    return SamplerPolicy(
        name,
        False,
        reason=f"sampler {name!r} is not one MeanCache can cache (it adds noise, reads the unconditional "
        f"prediction or picks its own sigmas); supported: {', '.join(SUPPORTED)}",
    )
