"""MeanCache under ComfyUI's output cache: re-queued prompts through the real PromptExecutor.

Why: ComfyUI reuses a cached node's outputs as the same Python objects, so
MeanCache Apply's holder (and the patched MODEL) survive from one queue item
to the next while only the sampler re-runs. Each sampling run must still
start from a fresh run state, report its own statistics, and leave nothing
behind; with ``--cache-none`` every node re-runs and all of that must hold
too. Runs the t2i example workflow on the tiny Z-Image model.
"""

from __future__ import annotations

import json
from pathlib import Path

import executor as ex
import harness
import pytest
import torch

from comfy_meancache.comfyui.nodes import MeanCacheCalibrate

WORKFLOW = harness.PROJECT_ROOT / "workflows" / "zimage_t2i_meancache.json"
STEPS = 24  # fewer than the workflow's 40 to keep the file fast; Planner and KSampler still share them
CACHING = ["classic", "lru", "none"]  # ComfyUI's default, --cache-lru N, --cache-none


@pytest.fixture(scope="module")
def shipped() -> dict:
    """The workflow as shipped (cost source ``auto``), on the tiny model."""
    api = ex.ui_to_api(json.loads(WORKFLOW.read_text(encoding="utf-8")))
    return ex.swap_to_tiny(api, steps=STEPS)


@pytest.fixture(scope="module")
def prompt(shipped) -> dict:
    """The workflow on ``even`` costs: these tests need the same seed to give the same latent on every queue."""
    changed = json.loads(json.dumps(shipped))
    changed[ex.one(changed, "MeanCachePlanner")]["inputs"]["cost_source"] = "even"
    return changed


@pytest.fixture(scope="module")
def ids(prompt) -> dict[str, str]:
    names = ("MeanCachePlanner", "MeanCacheApply", "KSampler", "MeanCacheReport", "SaveImage")
    return {name: ex.one(prompt, name) for name in names} | {"loader": ex.one(prompt, ex.TINY_LOADER)}


@pytest.fixture(params=CACHING)
def engine(request, tmp_path):
    with ex.test_nodes_installed(), ex.comfy_dirs(tmp_path):
        yield ex.ComfyExecutor(request.param)


def with_seed(prompt: dict, seed: int) -> dict:
    changed = json.loads(json.dumps(prompt))
    changed[ex.one(changed, "KSampler")]["inputs"]["seed"] = seed
    return changed


def run_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("run: "))


def check_run(result: ex.RunResult, ids: dict, schedule) -> None:
    """One sampling run: planned forwards, one holder, one run state, freed afterwards."""
    assert len(result.calls) == schedule.model_calls < STEPS
    assert len({c.holder for c in result.calls}) == 1 and None not in {c.holder for c in result.calls}
    assert len({c.run for c in result.calls}) == 1 and None not in {c.run for c in result.calls}
    model = result.output(ids["MeanCacheApply"], 0)
    assert ex.RUN_KEY not in model.model_options["transformer_options"]
    assert not ex.PROBE.run_state_alive(), "the run state outlived its sampling run"


def test_new_seed_keeps_the_cached_holder_but_starts_a_fresh_run(engine, prompt, ids):
    first = engine.run(with_seed(prompt, 1)).raise_for_error()
    second = engine.run(with_seed(prompt, 2)).raise_for_error()
    third = engine.run(with_seed(prompt, 1)).raise_for_error()  # back to the first seed
    schedule = first.output(ids["MeanCachePlanner"])
    latents = [r.output(ids["KSampler"])["samples"] for r in (first, second, third)]
    holders = [r.output(ids["MeanCacheApply"], 1) for r in (first, second, third)]
    for result in (first, second, third):
        check_run(result, ids, schedule)
        assert ids["KSampler"] in result.executed and ids["MeanCacheReport"] in result.executed
    runs = [r.calls[0].run for r in (first, second, third)]
    assert len(set(runs)) == 3  # a new run state each time
    # Stale state would change the result: the first seed again gives the first latent exactly.
    assert torch.equal(latents[0], latents[2]) and not torch.equal(latents[0], latents[1])

    if engine.cache == "none":
        assert not second.cached and ids["MeanCacheApply"] in second.executed
        assert len({id(h) for h in holders}) == 3 and all(len(h.runs) == 1 for h in holders)
        assert len({r.calls[0].holder for r in (first, second, third)}) == 3
    else:
        for result in (second, third):
            assert {ids["loader"], ids["MeanCachePlanner"], ids["MeanCacheApply"]} <= set(result.cached)
            assert ids["MeanCacheApply"] not in result.executed and ids["MeanCachePlanner"] not in result.executed
        assert holders[0] is holders[1] is holders[2]  # ComfyUI served Apply's outputs from its cache
        assert len({r.calls[0].holder for r in (first, second, third)}) == 1
        assert len(holders[0].runs) == 3  # one RunStats per sampling run, in order
        assert all(run.matches(latent) for run, latent in zip(holders[0].runs, latents))
        assert not holders[0].runs[1].matches(latents[2])
    # The Report of the last queue item shows the newest run, the one that made its latent.
    newest = holders[2].runs[-1]
    assert newest.matches(latents[2]) and newest.model_calls == schedule.model_calls
    assert run_line(third.text(ids["MeanCacheReport"])) == f"run: {newest.summary()}"


def test_requeued_unchanged_prompt(engine, prompt, ids):
    first = engine.run(prompt).raise_for_error()
    again = engine.run(prompt).raise_for_error()
    schedule = first.output(ids["MeanCachePlanner"])
    holder = again.output(ids["MeanCacheApply"], 1)
    if engine.cache == "none":
        # Everything runs again, and samples the same latent under a new holder.
        assert ids["KSampler"] in again.executed and ids["MeanCacheReport"] in again.executed
        check_run(again, ids, schedule)
        assert holder is not first.output(ids["MeanCacheApply"], 1) and len(holder.runs) == 1
        assert torch.equal(first.output(ids["KSampler"])["samples"], again.output(ids["KSampler"])["samples"])
    else:
        assert again.executed == [] and again.calls == []
        assert {ids["KSampler"], ids["MeanCacheReport"], ids["SaveImage"]} <= set(again.cached)
        assert holder is first.output(ids["MeanCacheApply"], 1) and len(holder.runs) == 1  # no new run appended
        assert again.ui[ids["MeanCacheReport"]] == first.ui[ids["MeanCacheReport"]]  # cached ui re-sent
        assert ids["MeanCacheReport"] not in again.texts  # the text preview is transient


def test_the_shipped_auto_source_learns_on_the_first_queue_and_plans_from_it_on_the_next(engine, shipped, ids):
    first = engine.run(with_seed(shipped, 1)).raise_for_error()
    runs = [first.output(ids["MeanCacheApply"], 1).latest]  # read now: the history may be served from the cache
    second = engine.run(with_seed(shipped, 2)).raise_for_error()
    runs.append(second.output(ids["MeanCacheApply"], 1).latest)
    schedule = first.output(ids["MeanCachePlanner"])
    [path] = list((engine_user_dir() / "meancache" / "auto").glob("*.json"))
    assert runs[0].schedule.settings.cost_source.startswith("even")
    assert runs[1].schedule.settings.cost_source.startswith("learned")
    for result, run in zip((first, second), runs):
        assert len(result.calls) == run.model_calls == schedule.model_calls
    report = second.text(ids["MeanCacheReport"])
    assert "planned from this model's learned costs" in report and f"{path.name}: " in report


def engine_user_dir() -> Path:
    import folder_paths

    return Path(folder_paths.get_user_directory())


def test_changing_the_preset_replans_and_patches_again(engine, prompt, ids):
    first = engine.run(prompt).raise_for_error()
    faster = json.loads(json.dumps(prompt))
    faster[ids["MeanCachePlanner"]]["inputs"]["preset"] = "turbo"
    second = engine.run(faster).raise_for_error()
    for node in ("MeanCachePlanner", "MeanCacheApply", "KSampler", "MeanCacheReport"):
        assert ids[node] in second.executed, node
    turbo = second.output(ids["MeanCachePlanner"])
    assert turbo.model_calls < first.output(ids["MeanCachePlanner"]).model_calls
    check_run(second, ids, turbo)
    assert second.output(ids["MeanCacheApply"], 1) is not first.output(ids["MeanCacheApply"], 1)


def test_a_new_calibration_run_replans_on_requeue(engine, prompt, ids):
    """The Planner's inputs stay the same when a profile gains runs; its fingerprint follows the files."""
    calibrating = harness.execute_node(MeanCacheCalibrate, model=harness.tiny_zimage(), profile_name="fresh")[0]
    harness.sample(calibrating, seed=1, steps=STEPS, cfg=4.0)
    from_profile = json.loads(json.dumps(prompt))
    from_profile[ids["MeanCachePlanner"]]["inputs"]["cost_source"] = "fresh"
    first = engine.run(from_profile).raise_for_error()
    harness.sample(calibrating, seed=2, steps=STEPS, cfg=4.0)
    second = engine.run(from_profile).raise_for_error()
    third = engine.run(from_profile).raise_for_error()
    sources = [r.output(ids["MeanCachePlanner"]).settings.cost_source for r in (first, second)]
    assert sources == ["profile fresh (1 runs)", "profile fresh (2 runs)"]
    assert ids["MeanCachePlanner"] in second.executed and ids["KSampler"] in second.executed
    assert (ids["MeanCachePlanner"] in third.executed) == (engine.cache == "none")
