"""Never silently wrong: stacked MeanCache patches, multi-evaluation samplers, profiles of mixed shapes.

Each test pins what a user sees (model forwards, the run line, the Report, the
log, the profile on disk) in a case where the numbers used to be wrong without
a word: a second patch on one model, Heun/dpm_2's extra evaluations, and
calibration runs of other resolutions or batch sizes.
"""

from __future__ import annotations

import copy
import logging

import harness
import numpy as np
import pytest
import torch

from comfy_meancache.comfyui.calibration import load_profile
from comfy_meancache.comfyui.hook import HOLDER_KEY, RunHistory
from comfy_meancache.comfyui.nodes import MeanCacheApply, MeanCacheCalibrate, MeanCacheReport
from comfy_meancache.core import chart
from comfy_meancache.core.costs import trajectory_costs
from comfy_meancache.core.planner import plan

STEPS = 30
REPLACES = "replaces the earlier"


@pytest.fixture(scope="module")
def zimage():
    return harness.tiny_zimage()


def zimage_plan(model, calls: int):
    return plan(harness.ksampler_sigmas(model, STEPS).tolist(), compute_steps=calls)


def apply(model, calls: int):
    return harness.execute_node(MeanCacheApply, model=model, schedule=zimage_plan(model, calls)).result


def calibrate(model, name: str = "stacked"):
    return harness.execute_node(MeanCacheCalibrate, model=model, profile_name=name).result


def replacement_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if REPLACES in r.getMessage()]


def report_text(runs: RunHistory, latent: torch.Tensor) -> str:
    return harness.execute_node(MeanCacheReport, stats=runs, latent={"samples": latent})[1]


def test_apply_then_apply_runs_the_newer_plan(zimage, caplog):
    with caplog.at_level(logging.WARNING):
        first, older = apply(zimage, 12)
        patched, newer = apply(first, 8)
    counter = harness.DiffusionModelCallCounter(patched)
    latent = harness.sample(counter.model, seed=1, steps=STEPS, cfg=1.0)
    assert counter.count == 8 and len(newer.runs) == 1 and not older.runs
    assert newer.latest.summary().startswith(f"{STEPS} steps -> 8 model calls (3.75x), 22 skipped, ")
    assert replacement_lines(caplog) == [
        "[MeanCache] MeanCache Apply replaces the earlier MeanCache Apply patch on this model; only the newer runs"
    ]
    assert patched.model_options["transformer_options"][HOLDER_KEY].history is newer
    assert f"run: {STEPS} steps -> 8 model calls (3.75x)" in report_text(newer, latent)
    assert report_text(older, latent).startswith(
        "No sampling run has used this MeanCache Apply: a later MeanCache Apply replaced it on the model"
    )


def test_calibrate_then_apply_records_nothing_and_says_so(zimage, user_dir, caplog):
    with caplog.at_level(logging.WARNING):
        calibrating, calibration_runs = calibrate(zimage)
        patched, runs = apply(calibrating, 12)
    counter = harness.DiffusionModelCallCounter(patched)
    latent = harness.sample(counter.model, seed=2, steps=STEPS, cfg=1.0)
    assert counter.count == 12 and runs.latest.model_calls == 12 and runs.latest.steps_run == STEPS
    assert not calibration_runs.runs and not (user_dir / "meancache").exists()
    assert replacement_lines(caplog) == [
        "[MeanCache] MeanCache Apply replaces the earlier MeanCache Calibrate patch on this model; only the newer runs"
    ]
    assert report_text(calibration_runs, latent).startswith(
        "No sampling run has used this MeanCache Calibrate: a later MeanCache Apply replaced it on the model"
    )


def test_apply_then_calibrate_records_every_step(zimage, user_dir, caplog):
    with caplog.at_level(logging.WARNING):
        applied, apply_runs = apply(zimage, 12)
        patched, calibration_runs = calibrate(applied)
    counter = harness.DiffusionModelCallCounter(patched)
    latent = harness.sample(counter.model, seed=3, steps=STEPS, cfg=1.0)
    assert counter.count == STEPS and not apply_runs.runs
    run = calibration_runs.latest
    assert (len(calibration_runs.runs), run.model_calls, run.skipped) == (1, STEPS, 0)
    assert "profile 'stacked' now holds 1 calibration runs" in run.notes
    assert len(load_profile("stacked").runs) == 1
    assert replacement_lines(caplog) == [
        "[MeanCache] MeanCache Calibrate replaces the earlier MeanCache Apply patch on this model; only the newer runs"
    ]
    assert report_text(calibration_runs, latent).startswith("Profile stacked: 1 runs")


def test_the_stats_socket_carries_the_run_history_the_holder_owns(zimage, user_dir):
    patched, runs = apply(zimage, 12)
    holder = patched.model_options["transformer_options"][HOLDER_KEY]
    later = patched.clone()  # a LoRA loader after Apply deep-copies model_options
    assert isinstance(runs, RunHistory) and holder.history is runs
    assert copy.deepcopy(holder) is holder and later.model_options["transformer_options"][HOLDER_KEY] is holder
    assert (runs.node, runs.label, runs.calibration_name, runs.plan) == (
        "MeanCache Apply",
        "custom",
        None,
        holder.schedule,
    )
    calibration_runs = calibrate(zimage, "named")[1]
    assert (
        calibration_runs.node,
        calibration_runs.label,
        calibration_runs.calibration_name,
        calibration_runs.plan,
    ) == (
        "MeanCache Calibrate",
        "calibrate named",
        "named",
        None,
    )
    assert [o.io_type for o in MeanCacheApply.GET_SCHEMA().outputs] == ["MODEL", "MEANCACHE_STATS"]


@pytest.mark.parametrize("sampler", ["heun", "dpm_2"])
def test_multi_evaluation_samplers_count_every_model_evaluation(zimage, sampler, caplog):
    """30 steps, 12 computed: Heun's 29 correctors and dpm_2's 29 midpoints always call the model."""
    patched, runs = apply(zimage, 12)
    counter = harness.DiffusionModelCallCounter(patched)
    with caplog.at_level(logging.INFO):
        latent = harness.sample(counter.model, seed=4, steps=STEPS, cfg=1.0, sampler_name=sampler)
    uncached = harness.DiffusionModelCallCounter(zimage)
    harness.sample(uncached.model, seed=4, steps=STEPS, cfg=1.0, sampler_name=sampler)
    stats = runs.latest
    assert (counter.count, uncached.count) == (41, 59)
    assert (stats.evaluations, stats.uncached_evaluations, stats.extra_evaluations) == (41, 59, 29)
    line = f"{STEPS} steps + 29 extra evaluations -> 41 model calls (59 uncached, 1.44x), 18 skipped, "
    assert stats.summary().startswith(line)
    assert any(r.getMessage().startswith(f"[MeanCache] custom: {line}") for r in caplog.records)
    assert f"run: {line}" in report_text(runs, latent)
    head, _ = chart.title_text(stats.schedule, stats)
    assert head == "MeanCache run: 1.44x model-call speedup (41 calls for 30 steps + 29 extra evaluations)"


def test_one_profile_holds_runs_of_any_resolution_and_batch(zimage, user_dir):
    patched, _ = calibrate(zimage, "mixed")
    shapes = [(1, 16, 16), (1, 24, 24), (2, 16, 16)]
    for seed, (batch, height, width) in enumerate(shapes):
        harness.sample(patched, seed=seed, steps=12, cfg=1.0, batch=batch, height=height, width=width)
    profile = load_profile("mixed")
    # 24x24 latents keep every 2nd pixel: at most 4096 elements per batch item
    assert [tuple(run.states.shape[1:]) for run in profile.runs] == [(1, 16, 16, 16), (1, 16, 12, 12), (2, 16, 16, 16)]
    grid = profile.runs[0].sigmas
    per_run = [trajectory_costs(grid, r.velocities, r.states, "meancache2").band for r in profile.runs]
    np.testing.assert_array_equal(profile.costs(grid, "meancache2").band, np.mean(per_run, axis=0))
