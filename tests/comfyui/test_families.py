"""MeanCache on every model family it claims, on tiny random-weight models built from ComfyUI's classes.

Per family: real diffusion-model forwards equal the plan's model calls (times
the forwards per evaluation: cond and uncond run as two when their token
counts differ), an every-step schedule gives the unpatched latent bit for bit,
and batches work. Then the two-model splits: Wan 2.2's high-noise and
low-noise experts under KSamplerAdvanced, and a SplitSigmas refiner.
"""

from __future__ import annotations

import harness
import pytest
import torch

from comfy_meancache.comfyui.nodes import MeanCacheApply, MeanCachePlanner, MeanCacheReport
from comfy_meancache.core.schedule import Schedule

STEPS = 20
FAMILIES = {
    "zimage": harness.tiny_zimage,
    "flux": harness.tiny_flux,
    "qwen_image": harness.tiny_qwen_image,
    "hunyuan_video": harness.tiny_hunyuan_video,
    "wan21": harness.tiny_wan21,
}
PLANNER = harness.PLANNER_INPUTS | {"steps": STEPS}


@pytest.fixture(scope="module", params=list(FAMILIES))
def model(request):
    return FAMILIES[request.param]()


def planned(model, **overrides) -> Schedule:
    return harness.execute_node(MeanCachePlanner, model=model, **(PLANNER | overrides))[0]


def applied(model, schedule: Schedule):
    out = harness.execute_node(MeanCacheApply, model=model, schedule=schedule, debug=False)
    return out[0], out[1]


def test_families_are_what_they_say(model, request):
    family = harness.model_family(model)
    assert family == request.node.callspec.params["model"]
    latent = harness.empty_latent(model)["samples"]
    assert latent.shape == ((1, 16, 3, 16, 16) if family in harness.VIDEO_FAMILIES else (1, 16, 16, 16))


@pytest.mark.parametrize(
    "cfg,batch,tokens,forwards,forward_batch",
    [
        (1.0, 1, (12, 7), 1, 1),  # uncond skipped at cfg 1
        (5.0, 1, (12, 7), 2, 1),  # unequal token counts: cond and uncond as two forwards
        (5.0, 2, (9, 9), 1, 4),  # equal: one forward of latent batch x 2
    ],
)
def test_model_calls_equal_the_plan(model, cfg, batch, tokens, forwards, forward_batch):
    schedule = planned(model)
    patched, holder = applied(model, schedule)
    pos, neg = harness.make_cond_pair(model, pos_tokens=tokens[0], neg_tokens=tokens[1])
    counter = harness.DiffusionModelCallCounter(patched)
    out = harness.sample(counter.model, seed=3, steps=STEPS, cfg=cfg, batch=batch, positive=pos, negative=neg)
    assert schedule.model_calls == round(STEPS / 2.5)
    assert counter.count == schedule.model_calls * forwards and set(counter.batch_sizes) == {forward_batch}
    stats = holder.latest
    assert (stats.steps_run, stats.model_calls, stats.fallbacks) == (STEPS, schedule.model_calls, [])
    assert out.shape[0] == batch and torch.isfinite(out).all()


@pytest.mark.parametrize("cfg,batch", [(1.0, 1), (5.0, 1), (5.0, 2)])
def test_every_step_schedule_is_bit_identical(model, cfg, batch):
    schedule = planned(model, preset="custom", compute_steps=STEPS)
    assert schedule.model_calls == STEPS
    patched, holder = applied(model, schedule)
    base = harness.sample(model, seed=5, steps=STEPS, cfg=cfg, batch=batch)
    assert torch.equal(harness.sample(patched, seed=5, steps=STEPS, cfg=cfg, batch=batch), base)
    assert holder.latest.skipped == 0


def test_history_bytes_of_a_video_run():
    """meancache2 keeps two computed velocities and the current estimate: three latents of [1,16,3,16,16] fp32."""
    wan = harness.tiny_wan21()
    patched, holder = applied(wan, planned(wan))
    harness.sample(patched, seed=1, steps=STEPS, cfg=1.0)
    assert holder.latest.history_bytes == 3 * 16 * 3 * 16 * 16 * 4
    assert "history 144.0 KiB peak" in holder.latest.summary()


# --------------------------------------------------------------------------
# Two models, one plan: Wan 2.2 A14B (KSamplerAdvanced) and a SplitSigmas refiner
# --------------------------------------------------------------------------


def boundary(schedule: Schedule, computed: bool) -> int:
    """A hand-over step past the warm-up that the plan computes (or skips)."""
    return next(i for i in range(schedule.settings.warmup + 1, schedule.steps - 1) if schedule.compute[i] == computed)


def expected_calls(schedule: Schedule, k: int) -> tuple[int, int]:
    """Each fragment runs its slice of the plan; the second computes its first step even if the plan skips
    it, since its history (the first model's velocities) is in another run."""
    return sum(schedule.compute[:k]), sum(schedule.compute[k:]) + (not schedule.compute[k])


def wan22(k_computed: bool):
    """Wan 2.2 t2v: one Planner for the whole run, one MeanCache Apply per expert, two KSamplerAdvanced."""
    high, low = harness.tiny_wan22_pair()
    schedule = planned(high)
    k = boundary(schedule, k_computed)
    (p_high, h_high), (p_low, h_low) = applied(high, schedule), applied(low, schedule)
    c_high, c_low = harness.DiffusionModelCallCounter(p_high), harness.DiffusionModelCallCounter(p_low)
    pos, neg = harness.make_cond_pair(high)
    common = dict(steps=STEPS, cfg=3.5, positive=pos, negative=neg)
    # high noise: add_noise enable, steps 0..k, return_with_leftover_noise enable
    first = harness.sample(c_high.model, seed=7, start_step=0, last_step=k, return_dict=True, **common)
    # low noise: add_noise disable, steps k..end, return_with_leftover_noise disable
    second = harness.sample(
        c_low.model, seed=7, start_step=k, last_step=10000, add_noise=False, latent=first, return_dict=True, **common
    )
    return schedule, k, (c_high, h_high), (c_low, h_low), second


@pytest.mark.parametrize("k_computed", [True, False], ids=["hand-over-computed", "hand-over-skipped"])
def test_wan22_experts_each_run_their_part_of_one_plan(k_computed):
    schedule, k, (c_high, h_high), (c_low, h_low), _ = wan22(k_computed)
    high_calls, low_calls = expected_calls(schedule, k)
    assert (h_high.latest.steps_run, h_low.latest.steps_run) == (k, STEPS - k)
    # unequal prompt lengths at cfg 3.5: two forwards per model call
    assert (c_high.count, c_low.count) == (2 * high_calls, 2 * low_calls)
    assert high_calls + low_calls == schedule.model_calls + (not k_computed)


def test_wan22_report_shows_both_fragments_as_one_run():
    schedule, k, (c_high, h_high), (c_low, h_low), second = wan22(True)
    text = harness.execute_node(MeanCacheReport, stats=h_low, latent=second, schedule=schedule)[1]
    calls = h_high.latest.model_calls + h_low.latest.model_calls
    assert c_high.count + c_low.count == 2 * calls
    assert (
        f"fragment 2 of 2 of a {STEPS}-step plan (steps {k}-{STEPS - 1}); all 2 fragments: "
        f"{STEPS} steps -> {calls} model calls ({STEPS / calls:.2f}x)"
    ) in text


@pytest.mark.parametrize("k_computed", [True, False], ids=["split-computed", "split-skipped"])
def test_split_sigmas_refiner_runs_its_part_of_the_plan(k_computed):
    """SamplerCustomAdvanced: BasicScheduler -> SplitSigmas, base model on the high half, a different model
    (the refiner) on the low half, one Planner fed the full SIGMAS, one Apply per model."""
    base, refiner = harness.tiny_zimage(seed=0), harness.tiny_zimage(seed=1)
    sigmas = harness.scheduler_sigmas(base, STEPS)
    schedule = planned(base, sigmas=sigmas)
    k = boundary(schedule, k_computed)
    high, low = harness.split_sigmas(sigmas, k)
    (p_base, h_base), (p_ref, h_ref) = applied(base, schedule), applied(refiner, schedule)
    c_base, c_ref = harness.DiffusionModelCallCounter(p_base), harness.DiffusionModelCallCounter(p_ref)
    first = harness.sample_custom(c_base.model, sigmas=high, seed=9, return_dict=True)
    harness.sample_custom(c_ref.model, sigmas=low, seed=9, latent=first, add_noise=False)
    assert (c_base.count, c_ref.count) == expected_calls(schedule, k)
    assert (h_base.latest.model_calls, h_ref.latest.model_calls) == (c_base.count, c_ref.count)
