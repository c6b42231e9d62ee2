"""Hard cases inside real ComfyUI: partial sigma lists, second passes, batches, NaN, other model types."""

from __future__ import annotations

import logging

import comfy.patcher_extension
import harness
import pytest
import torch

from comfy_meancache.comfyui import hook
from comfy_meancache.comfyui.nodes import MeanCacheApply, MeanCachePlanner
from comfy_meancache.core import runtime
from comfy_meancache.core.planner import plan
from comfy_meancache.core.schedule import PlannerSettings, Schedule, fewest_calls

STEPS = 30


@pytest.fixture(scope="module")
def zimage():
    return harness.tiny_zimage()


def patched_with(model, schedule: Schedule, **options):
    out = harness.execute_node(MeanCacheApply, model=model, schedule=schedule, **options)
    return out[0], out[1]


def zimage_plan(model, steps=STEPS, calls=12, estimator="meancache2"):
    return plan(harness.ksampler_sigmas(model, steps).tolist(), compute_steps=calls, estimator=estimator)


def counted(model, **kwargs):
    counter = harness.DiffusionModelCallCounter(model)
    return harness.sample(counter.model, **kwargs), counter


def test_ksampler_advanced_fragment_follows_its_slice_of_the_plan(zimage):
    schedule = zimage_plan(zimage)
    patched, holder = patched_with(zimage, schedule)
    latent, counter = counted(patched, seed=1, steps=STEPS, cfg=1.0, start_step=10, last_step=STEPS)
    stats = holder.latest
    assert stats.steps_run == 20 and counter.count == stats.model_calls
    assert stats.schedule.compute == (True, *schedule.compute[11:]) and stats.schedule.part_of == (10, STEPS)
    assert counter.count == sum(schedule.compute[10:]) + (not schedule.compute[10])
    assert any("fragment: steps 10..29 of the 30-step plan" in note for note in stats.schedule.notes)
    assert torch.isfinite(latent).all()


def test_a_grid_that_cannot_be_re_planned_runs_the_remapped_plan_and_says_why_once(zimage, monkeypatch, caplog):
    def refuse(*_args):
        raise ValueError("no plan fits")

    monkeypatch.setattr(hook, "replan", refuse)
    schedule = zimage_plan(zimage)
    patched, holder = patched_with(zimage, schedule)
    with caplog.at_level(logging.INFO):
        latent, counter = counted(patched, seed=1, steps=20, cfg=1.0)
    ran = holder.latest.schedule
    assert ran.steps == 20 and counter.count == ran.model_calls < 20 and torch.isfinite(latent).all()
    why = "could not re-plan on the sampler's sigmas: no plan fits"
    assert why in ran.notes and ran.notes[-1].startswith("remapped") and why not in holder.latest.notes
    assert sum(why in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("source", ["prior", "official-zimage-50"])
def test_other_step_counts_are_planned_again_from_the_same_source(zimage, source):
    """A 30-step plan sampled at 20 steps runs the plan the Planner makes for 20 steps, within every limit."""
    planner = harness.PLANNER_INPUTS | {"cost_source": source}
    planned = harness.execute_node(MeanCachePlanner, model=zimage, **(planner | {"steps": STEPS}))[0]
    direct = harness.execute_node(MeanCachePlanner, model=zimage, **(planner | {"steps": 20}))[0]
    patched, holder = patched_with(zimage, planned)
    _, counter = counted(patched, seed=8, steps=20, cfg=1.0)
    ran = holder.latest.schedule
    assert ran.compute == direct.compute and ran.span == direct.span and counter.count == direct.model_calls
    assert any("re-planned for the sampler's 20 steps" in note for note in holder.latest.schedule.notes)
    nodes = ran.computed_steps
    assert max(b - a for a, b in zip(nodes, nodes[1:])) <= ran.settings.max_gap


def test_split_sigmas_halves_and_a_double_zero_tail(zimage):
    patched, holder = patched_with(zimage, zimage_plan(zimage))
    sigmas = harness.ksampler_sigmas(zimage, STEPS)
    high, low = harness.split_sigmas(sigmas, 12)
    first = harness.sample_custom(patched, sigmas=high, seed=2, return_dict=True)
    second = harness.sample_custom(patched, sigmas=low, seed=2, latent=first, add_noise=False)
    assert [r.steps_run for r in holder.runs] == [12, 18] and torch.isfinite(second).all()
    # [.., 0, 0]: a zero-length last step. The hook never divides by that zero sigma; ComfyUI's own
    # samplers do (to_d at sigma 0), so the result is NaN with or without MeanCache.
    tail = torch.cat([sigmas, torch.zeros(1)])
    counter = harness.DiffusionModelCallCounter(patched)
    out = harness.sample_custom(counter.model, sigmas=tail, seed=2, cfg=1.0)
    assert counter.count == holder.latest.model_calls + 1  # the sigma-0 evaluation passes through
    assert holder.latest.steps_run == STEPS and not holder.latest.fallbacks
    assert torch.isfinite(out).all() == torch.isfinite(harness.sample_custom(zimage, sigmas=tail, seed=2)).all()
    harness.sample_custom(patched, sigmas=torch.zeros(2), seed=2)  # a second sampler left with [0, 0]
    assert holder.latest.steps_run == 0 and holder.latest.model_calls == 0


def test_hires_fix_second_pass_on_an_upscaled_latent(zimage):
    patched, holder = patched_with(zimage, zimage_plan(zimage))
    first = harness.sample(patched, seed=3, steps=STEPS, cfg=4.0)
    upscaled = torch.nn.functional.interpolate(first, scale_factor=1.5, mode="nearest")
    second, counter = counted(patched, seed=3, steps=STEPS, cfg=4.0, denoise=0.5, latent={"samples": upscaled})
    stats = holder.latest
    assert second.shape == upscaled.shape and torch.isfinite(second).all()
    assert counter.count == 2 * stats.model_calls and stats.steps_run == STEPS
    assert any("re-planned" in note for note in stats.schedule.notes)  # denoise 0.5 samples other sigmas


def test_batch_four_at_cfg_five(zimage):
    schedule = zimage_plan(zimage)
    patched, holder = patched_with(zimage, schedule)
    pos, neg = harness.make_cond_pair(zimage, pos_tokens=9, neg_tokens=9)
    out, counter = counted(patched, seed=4, steps=STEPS, cfg=5.0, batch=4, positive=pos, negative=neg)
    assert counter.count == schedule.model_calls and set(counter.batch_sizes) == {8}
    base = harness.sample(zimage, seed=4, steps=STEPS, cfg=5.0, batch=4, positive=pos, negative=neg)
    errors = [float((out[i] - base[i]).norm() / base[i].norm()) for i in range(4)]
    assert max(errors) < 0.6 and len(set(round(e, 6) for e in errors)) == 4  # every item sampled on its own


@pytest.mark.parametrize("steps", [20, 8, 3])
def test_a_50_step_plan_on_fewer_steps(zimage, steps):
    patched, holder = patched_with(zimage, zimage_plan(zimage, steps=50, calls=20))
    _, counter = counted(patched, seed=5, steps=steps, cfg=1.0)
    stats = holder.latest
    assert counter.count == stats.model_calls and stats.steps_run == steps
    calls = min(steps, max(fewest_calls(steps, PlannerSettings()), round(20 * steps / 50)))
    direct = plan(harness.ksampler_sigmas(zimage, steps).tolist(), compute_steps=calls)
    assert stats.schedule.compute == direct.compute  # planned again for the steps sampled
    if steps <= stats.schedule.settings.warmup:
        assert stats.skipped == 0


def test_nan_from_the_model_is_not_propagated_by_a_skip(zimage):
    schedule = zimage_plan(zimage, estimator="meancache")
    patched, holder = patched_with(zimage, schedule)
    poisoned_sigma = schedule.sigmas[schedule.computed_steps[4]]

    def poison(executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        sigma = float(kwargs["transformer_options"]["sigmas"].flatten()[0])
        return out * float("nan") if abs(sigma - poisoned_sigma) < 1e-6 else out

    broken = patched.clone()
    broken.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "poison", poison)
    harness.sample(broken, seed=6, steps=STEPS, cfg=1.0)
    stats = holder.latest
    step = schedule.computed_steps[4]
    records = {r.step: r for r in stats.records}
    assert records[step].nonfinite
    assert records[step + 1].fallback and "NaN or inf" in records[step + 1].reason


def test_cache_on_the_cpu_gives_the_same_latent(zimage):
    schedule = zimage_plan(zimage)
    on_model = harness.sample(patched_with(zimage, schedule)[0], seed=7, steps=STEPS, cfg=4.0)
    on_cpu = harness.sample(patched_with(zimage, schedule, cache_device="cpu")[0], seed=7, steps=STEPS, cfg=4.0)
    torch.testing.assert_close(on_cpu, on_model, rtol=1e-5, atol=1e-5)


def test_epsilon_prediction_model_through_the_same_hook():
    sd = harness.tiny_sd_eps()
    sigmas = harness.ksampler_sigmas(sd, 20, "karras").tolist()
    assert max(sigmas) > 1.0  # an epsilon model's sigmas, not a flow model's
    schedule = plan(sigmas, compute_steps=9)
    patched, holder = patched_with(sd, schedule)
    out, counter = counted(patched, seed=8, steps=20, cfg=7.0, scheduler="karras")
    assert counter.count == 9 and torch.isfinite(out).all()
    everything = Schedule(sigmas, [True] * 20, [0] * 20, "meancache2", budget=20)
    full = harness.sample(sd, seed=8, steps=20, cfg=7.0, scheduler="karras")
    assert torch.equal(
        harness.sample(patched_with(sd, everything)[0], seed=8, steps=20, cfg=7.0, scheduler="karras"), full
    )


@pytest.mark.parametrize(
    "inputs,message",
    [
        (dict(preset="custom", steps=30, compute_steps=40), "compute_steps: 40 > steps 30"),
        (dict(preset="balanced", steps=30, compute_steps=12), "only used by preset 'custom'"),
        (dict(preset="fastest", steps=30, compute_steps=0), "preset: 'fastest'"),
        (dict(preset="custom", steps=0, compute_steps=0), "steps: must be 1..1000"),
        (dict(preset="custom", steps=5000, compute_steps=0), "MeanCache plans at most 1000 steps), got 5000"),
    ],
)
def test_planner_validation_names_the_input(inputs, message):
    result = MeanCachePlanner.validate_inputs(**({"cost_source": "prior"} | inputs))
    assert isinstance(result, str) and message in result
    assert MeanCachePlanner.validate_inputs(preset="custom", steps=30, compute_steps=12, cost_source="prior") is True
    linked = dict(preset=None, steps=None, compute_steps=12, cost_source=None)
    assert MeanCachePlanner.validate_inputs(**linked) is True


def test_a_schedule_from_another_socket_is_refused(zimage):
    with pytest.raises(ValueError, match="schedule: expected a MeanCache schedule, got dict"):
        harness.execute_node(MeanCacheApply, model=zimage, schedule={"steps": [1, 2]})
    with pytest.raises(ValueError, match="cache_device"):
        harness.execute_node(MeanCacheApply, model=zimage, schedule=zimage_plan(zimage), cache_device="tpu")


def test_sigmas_no_schedule_can_follow_run_uncached_with_a_warning(zimage, caplog):
    patched, holder = patched_with(zimage, zimage_plan(zimage))
    rising = torch.linspace(0.1, 0.9, 9)  # "unsampling" workflows walk sigma upwards
    with caplog.at_level("WARNING"):
        counter = harness.DiffusionModelCallCounter(patched)
        out = harness.sample_custom(counter.model, sigmas=rising, seed=1, add_noise=False)
    assert counter.count == 8 and torch.isfinite(out).all() and not holder.runs
    assert any("running this sampler uncached" in r.getMessage() for r in caplog.records)


def test_bfloat16_latents_follow_the_plan(zimage):
    """A bf16 latent makes the sampler carry sigma in bf16, where neighbouring grid sigmas can round alike;
    steps must still be found in order and the skips must cost no more than they do in fp32."""
    schedule = zimage_plan(zimage, steps=20, calls=8)
    patched, holder = patched_with(zimage, schedule)
    latent = {"samples": torch.zeros(1, 16, 16, 16, dtype=torch.bfloat16)}
    cached, counter = counted(patched, seed=1, steps=20, cfg=1.0, latent=latent)
    stats = holder.latest
    assert stats.steps_run == 20 and counter.count == stats.model_calls == 8 and not stats.fallbacks
    full = harness.sample(zimage, seed=1, steps=20, cfg=1.0, latent=latent)
    full32 = harness.sample(zimage, seed=1, steps=20, cfg=1.0)
    cached32 = harness.sample(patched_with(zimage, schedule)[0], seed=1, steps=20, cfg=1.0)
    error = float((cached.float() - full.float()).norm() / full.float().norm())
    error32 = float((cached32 - full32).norm() / full32.norm())
    assert error < 2 * error32 + 0.01


def test_heun_decides_each_step_on_its_own_evaluation_not_the_corrector(zimage, monkeypatch):
    """Heun evaluates sigma[i] twice for i >= 1: the corrector of step i-1 (at a predicted x), then step i itself.

    The stepper must decide and record step i on the second one; the corrector is always computed.
    """
    evaluations: list[torch.Tensor] = []  # x of every evaluation, seen outside MeanCache
    decided: dict[int, torch.Tensor] = {}

    def record_x(executor, *args, **kwargs):
        evaluations.append(args[0].clone())
        return executor(*args, **kwargs)

    class SpyStepper(runtime.Stepper):
        def decide(self, step, x):
            decided[step] = x.clone()
            return super().decide(step, x)

    monkeypatch.setattr(runtime, "Stepper", SpyStepper)
    outer = zimage.clone()
    outer.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, "record_x", record_x)
    patched, holder = patched_with(outer, zimage_plan(zimage))
    harness.sample(patched, seed=9, steps=STEPS, cfg=1.0, sampler_name="heun")
    assert len(evaluations) == 2 * STEPS - 1 and sorted(decided) == list(range(STEPS))
    assert torch.equal(decided[0], evaluations[0])
    for step in range(1, STEPS):
        assert torch.equal(decided[step], evaluations[2 * step])  # the step's own evaluation
        assert not torch.equal(decided[step], evaluations[2 * step - 1])  # not the corrector before it
