"""The core entry point: one cached sampling run under any k-diffusion-style sampler."""

import pytest
import torch
from exact_flow import Field, noise

from comfy_meancache.core.planner import plan
from comfy_meancache.core.runtime import CachedDenoiser, StepMatcher, cached_denoiser
from comfy_meancache.core.sigmas import flow_sigmas
from comfy_meancache.samplers import SAMPLERS, sample_euler, sample_heun

STEPS = 24
SIGMAS = flow_sigmas(STEPS)


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "res_multistep", "ipndm", "deis", "uni_pc", "uni_pc_bh2"])
def test_every_step_plan_is_bit_identical_and_skips_save_calls(name):
    sampler, field = SAMPLERS[name], Field()
    plain = sampler(field, noise(), torch.tensor(SIGMAS, dtype=torch.float64))
    everything = cached_denoiser(Field(), SIGMAS, compute_steps=STEPS)
    assert torch.equal(sampler(everything, noise(), torch.tensor(SIGMAS, dtype=torch.float64)), plain)
    field = Field()
    cached = cached_denoiser(field, SIGMAS, preset="balanced")
    out = sampler(cached, noise(), torch.tensor(SIGMAS, dtype=torch.float64))
    assert field.calls == cached.schedule.model_calls == cached.stats.model_calls == round(STEPS / 2.5)
    assert cached.stats.steps_run == STEPS and torch.isfinite(out).all()


def test_reuse_under_euler_is_euler_on_the_computed_sigmas():
    schedule = plan(SIGMAS, compute_steps=9, estimator="reuse")
    cached = CachedDenoiser(Field(), schedule)
    out = sample_euler(cached, noise(), torch.tensor(SIGMAS, dtype=torch.float64))
    coarse = torch.tensor([SIGMAS[i] for i in schedule.computed_steps] + [0.0], dtype=torch.float64)
    torch.testing.assert_close(out, sample_euler(Field(), noise(), coarse), rtol=1e-12, atol=1e-12)


def test_heun_correctors_are_computed_and_counted():
    field = Field()
    cached = cached_denoiser(field, SIGMAS, compute_steps=10, corrector_first=True)
    sample_heun(cached, noise(), torch.tensor(SIGMAS, dtype=torch.float64))
    stats = cached.stats
    assert field.calls == 10 + (STEPS - 1) and stats.model_calls == 10 and stats.steps_run == STEPS
    assert (stats.extra_evaluations, stats.evaluations, stats.uncached_evaluations) == (
        STEPS - 1,
        field.calls,
        2 * STEPS - 1,
    )


def test_steps_are_matched_in_order_by_sigma():
    matcher = StepMatcher([1.0, 0.5, 0.5, 0.0])  # a repeated sigma: order decides
    assert [matcher.step_of(s) for s in (1.0, 0.75, 0.5, 0.5, 0.0)] == [0, None, 1, 2, None]
    assert matcher.extra_evaluations == 2


def test_a_finished_run_refuses_more_and_holds_no_tensors():
    cached = cached_denoiser(Field(), SIGMAS, speedup=2.0)
    sample_euler(cached, noise(), torch.tensor(SIGMAS, dtype=torch.float64))
    assert cached.stats.model_calls == STEPS // 2 and not cached.stepper._velocities
    with pytest.raises(RuntimeError, match="finished"):
        cached(noise(), torch.tensor([0.5]))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(compute_steps=10, speedup=2.0), "at most one of"),
        (dict(preset="warp"), "unknown preset 'warp'"),
        (dict(compute_steps=STEPS + 1), f"compute steps {STEPS + 1} > steps {STEPS}"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cached_denoiser(Field(), SIGMAS, **kwargs)
