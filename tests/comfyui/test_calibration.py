"""MeanCache Calibrate inside real ComfyUI: record runs, save a profile, plan from it."""

from __future__ import annotations

import json

import harness
import pytest
import torch

from comfy_meancache.comfyui.nodes import MeanCacheApply, MeanCacheCalibrate, MeanCachePlanner, MeanCacheReport
from comfy_meancache.core.schedule import MEASURED_WARMUP

STEPS = 20
PLANNER = {k: v for k, v in harness.PLANNER_INPUTS.items() if k != "cost_source"} | dict(
    preset="custom", steps=STEPS, compute_steps=8
)  # each test names its cost source


@pytest.fixture(scope="module")
def zimage():
    return harness.tiny_zimage()


def calibrate(model, name, seeds, cfg=4.0):
    out = harness.execute_node(MeanCacheCalibrate, model=model, profile_name=name)
    patched, holder = out[0], out[1]
    counter = harness.DiffusionModelCallCounter(patched)
    latents = [harness.sample(counter.model, seed=seed, steps=STEPS, cfg=cfg) for seed in seeds]
    return holder, counter, latents


def test_calibrate_twice_then_plan_from_the_profile(zimage, user_dir):
    holder, counter, latents = calibrate(zimage, "tiny-zimage", [1, 2])
    assert counter.count == 2 * STEPS * 2  # every step, cond and uncond apart (unequal prompts)
    assert torch.equal(latents[0], harness.sample(zimage, seed=1, steps=STEPS, cfg=4.0))  # calibrating changes nothing
    document = json.loads((user_dir / "meancache" / "tiny-zimage.json").read_text())
    assert document["metadata"]["runs"] == 2 and document["metadata"]["cfg"] == 4.0
    assert document["metadata"]["model"] == "Lumina2" and document["metadata"]["steps"] == STEPS
    assert (user_dir / "meancache" / "tiny-zimage.safetensors").exists()
    assert "now holds 2 calibration runs" in " ".join(holder.latest.notes)

    sources = harness.node_info(MeanCachePlanner)["input"]["required"]["cost_source"][1]["options"]
    assert sources[:4] == ["auto", "even", "prior", "official-zimage-50"] and "tiny-zimage" in sources
    from_profile = harness.execute_node(MeanCachePlanner, model=zimage, cost_source="tiny-zimage", **PLANNER)[0]
    from_prior = harness.execute_node(MeanCachePlanner, model=zimage, cost_source="prior", **PLANNER)[0]
    assert from_profile.settings.cost_source == "profile tiny-zimage (2 runs)"
    assert from_profile.computed_steps != from_prior.computed_steps
    assert from_profile.settings.warmup == from_prior.settings.warmup == 3  # custom: the warm-up as set
    balanced = dict(PLANNER, preset="balanced", compute_steps=0)
    preset_plan = harness.execute_node(MeanCachePlanner, model=zimage, cost_source="tiny-zimage", **balanced)[0]
    assert preset_plan.settings.warmup == MEASURED_WARMUP and preset_plan.model_calls == 8  # measured: step 0 only
    patched, stats = harness.execute_node(MeanCacheApply, model=zimage, schedule=from_profile).result
    calls = harness.DiffusionModelCallCounter(patched)
    harness.sample(calls.model, seed=9, steps=STEPS, cfg=1.0)
    assert calls.count == from_profile.model_calls == 8

    report = harness.execute_node(MeanCacheReport, stats=holder, latent={"samples": latents[1]})
    assert report[0].shape == (1, 720, 1200, 3) and "Profile tiny-zimage: 2 runs" in report[1]


def test_profile_for_other_steps_is_interpolated(zimage, user_dir):
    calibrate(zimage, "tiny", [3])
    schedule = harness.execute_node(MeanCachePlanner, model=zimage, cost_source="tiny", **(PLANNER | {"steps": 12}))[0]
    assert "interpolated in sigma" in schedule.settings.cost_source and schedule.steps == 12


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/b", "", "..", "x" * 80])
def test_bad_profile_names_are_refused_at_the_node(zimage, user_dir, name):
    with pytest.raises(ValueError, match="profile_name: profile name .* is not allowed"):
        harness.execute_node(MeanCacheCalibrate, model=zimage, profile_name=name)


def test_a_corrupt_profile_gives_a_clear_error_and_keeps_the_node_list(zimage, user_dir):
    folder = user_dir / "meancache"
    folder.mkdir()
    (folder / "broken.json").write_text("{ this is not json")
    sources = harness.node_info(MeanCachePlanner)["input"]["required"]["cost_source"][1]["options"]
    assert "broken" in sources  # listing never parses files, so a bad one cannot break the node list
    with pytest.raises(ValueError, match=r"broken\.json"):
        harness.execute_node(MeanCachePlanner, model=zimage, cost_source="broken", **PLANNER)


def test_official_lists_are_remapped_by_sigma(zimage):
    schedule = harness.execute_node(
        MeanCachePlanner,
        model=zimage,
        cost_source="official-zimage-50",
        **(PLANNER | {"steps": 50, "compute_steps": 20}),
    )[0]
    assert schedule.model_calls == 20 and schedule.estimator == "meancache"
    assert any("shift-6" in note for note in schedule.notes) and any("remapped" in n for n in schedule.notes)


def test_no_network_and_writes_only_to_the_profile_folder(zimage, user_dir, monkeypatch, tmp_path_factory):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("the pack opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    holder, _, latents = calibrate(zimage, "offline", [5])
    schedule = harness.execute_node(MeanCachePlanner, model=zimage, cost_source="offline", **PLANNER)[0]
    harness.execute_node(MeanCacheReport, stats=holder, latent={"samples": latents[0]}, schedule=schedule)
    written = sorted(p.relative_to(user_dir).as_posix() for p in user_dir.rglob("*") if p.is_file())
    assert written == ["meancache/offline.json", "meancache/offline.safetensors"]
