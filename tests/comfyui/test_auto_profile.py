"""The ``auto`` cost source inside real ComfyUI: a model learns its costs from its own cached runs.

The first run plans evenly at high noise and for flat curvature below sigma
0.75, and creates the model's learned profile under ``user/meancache/auto``;
the second plans from it (exactly the plan the saved observations give); a
corrupt file or a folder that cannot be written costs a warning and a run
planned as a first run, never a failed prompt or lost data.
"""

from __future__ import annotations

import logging

import harness
import pytest

from comfy_meancache.comfyui.auto_profile import model_identity
from comfy_meancache.comfyui.nodes import MeanCacheApply, MeanCacheCalibrate, MeanCachePlanner, MeanCacheReport
from comfy_meancache.core.learning import first_run_plan, learned_costs, load_learned
from comfy_meancache.core.planner import plan
from comfy_meancache.core.schedule import MEASURED_WARMUP

STEPS, CALLS, CFG = 20, 8, 4.0
PLANNER = {k: v for k, v in harness.PLANNER_INPUTS.items() if k != "cost_source"} | dict(
    preset="custom", steps=STEPS, compute_steps=CALLS
)


@pytest.fixture(scope="module")
def zimage():
    return harness.tiny_zimage(seed=3)


def auto_model(model, **planner):
    """Planner on ``auto`` -> Apply; returns the Planner's (even) plan, the patched model and its stats."""
    schedule = harness.execute_node(MeanCachePlanner, model=model, cost_source="auto", **(PLANNER | planner))[0]
    patched, history = harness.execute_node(MeanCacheApply, model=model, schedule=schedule).result
    return schedule, patched, history


def learned_files(user_dir):
    folder = user_dir / "meancache" / "auto"
    return sorted(p for p in folder.glob("*.json")) if folder.is_dir() else []


def planned_as_a_first_run(run, schedule) -> bool:
    """``run`` followed the first-run plan of the Planner's even ``schedule`` (nothing learned yet)."""
    expected = first_run_plan(schedule)
    return run.schedule.computed_steps == expected.computed_steps and expected.notes[-1] in run.schedule.notes


def learned_steps(run, observations, calls=CALLS) -> tuple[int, ...]:
    """The computed steps ``run``'s grid gets when planned from ``observations`` with ``calls`` model calls."""
    sigmas, settings = list(run.schedule.sigmas), run.schedule.settings
    costs = learned_costs(sigmas, observations, settings.max_gap)
    return plan(sigmas, compute_steps=calls, settings=settings, costs=costs).computed_steps


def test_auto_is_the_default_cost_source():
    source = harness.node_info(MeanCachePlanner)["input"]["required"]["cost_source"][1]
    assert source["default"] == "auto" and source["options"][:4] == ["auto", "even", "prior", "official-zimage-50"]


def test_first_run_creates_the_profile_and_the_second_plans_from_it(zimage, user_dir):
    schedule, patched, history = auto_model(zimage)
    assert schedule.settings.cost_key == "auto" and schedule.settings.cost_source.startswith("even")
    counter = harness.DiffusionModelCallCounter(patched)

    harness.sample(counter.model, seed=1, steps=STEPS, cfg=CFG)
    first = history.latest
    assert first.model_calls == CALLS and counter.count == 2 * CALLS  # cond and uncond apart
    assert planned_as_a_first_run(first, schedule)  # nothing learned yet
    assert first.schedule.computed_steps != schedule.computed_steps and "flat curvature" in first.schedule.notes[-1]
    [path] = learned_files(user_dir)
    assert path.name.startswith("Lumina2-") and path.name.endswith("-euler-cfg4.json")
    learned, metadata = load_learned(path)
    assert metadata["runs"] == 1 and metadata["sampler"] == "euler" and metadata["cfg"] == CFG
    assert len(learned) == CALLS - 2  # every computed step after two others
    assert any("first run here plans evenly" in n for n in first.schedule.notes)
    assert any(f"{CALLS - 2} observations from 1 run (" in n for n in first.notes)

    counter.reset()
    latent = harness.sample(counter.model, seed=2, steps=STEPS, cfg=CFG)
    second = history.latest
    assert second.schedule.computed_steps == learned_steps(second, learned) and counter.count == 2 * CALLS
    assert second.schedule.settings.cost_source == f"learned ({CALLS - 2} observations)"
    assert second.schedule.settings.warmup == 3  # a custom warm-up is kept
    assert not any(n.startswith("first run:") for n in second.schedule.notes)
    assert load_learned(path)[1]["runs"] == 2 and len(load_learned(path)[0]) > len(learned)
    assert path.stat().st_size < 1 << 20

    chart, text = harness.execute_node(MeanCacheReport, stats=history, latent={"samples": latent}).result
    assert chart.shape[-1] == 3
    assert "costs learned (6 observations)" in text and "planned from this model's learned costs" in text
    assert f"auto profile {path.name}: " in text and "from 2 runs" in text


def test_a_presets_learned_plan_computes_only_step_0_of_the_warm_up(zimage, user_dir):
    """Learned costs price the first edges, so a preset's later runs plan them (the first run keeps 3)."""
    schedule, patched, history = auto_model(zimage, preset="balanced", compute_steps=0)
    harness.sample(patched, seed=1, steps=STEPS, cfg=CFG)
    assert history.latest.schedule.settings.warmup == 3 and schedule.computed_steps[:3] == (0, 1, 2)
    [path] = learned_files(user_dir)
    learned = load_learned(path)[0]
    harness.sample(patched, seed=2, steps=STEPS, cfg=CFG)
    second = history.latest.schedule
    assert second.settings.warmup == MEASURED_WARMUP and second.settings.preset == "balanced"
    costs = learned_costs(list(second.sigmas), learned, second.settings.max_gap)
    expected = plan(
        list(second.sigmas), compute_steps=CALLS, settings=schedule.settings.for_measured_costs(), costs=costs
    )
    assert second.computed_steps == expected.computed_steps and second.model_calls == CALLS


def test_the_profile_is_keyed_by_model_loras_sampler_and_cfg(zimage, user_dir):
    _, patched, _ = auto_model(zimage)
    for sampler, cfg in (("euler", CFG), ("euler", 1.0), ("dpmpp_2m", CFG), ("euler", CFG)):
        harness.sample(patched, seed=1, steps=STEPS, cfg=cfg, sampler_name=sampler)
    assert len(learned_files(user_dir)) == 3  # the repeated setup adds to its own file

    other = harness.tiny_zimage(seed=4)
    assert model_identity(other) != model_identity(zimage) and model_identity(zimage.clone()) == model_identity(zimage)
    with_lora = zimage.clone()
    key = next(k for k in with_lora.model.state_dict() if k.endswith("weight") and "layers.0" in k)
    weight = with_lora.model.state_dict()[key]
    with_lora.add_patches({key: (weight * 0.0 + 0.01,)}, 0.5)  # a "diff" patch, as a LoRA adds
    assert model_identity(with_lora) != model_identity(zimage)
    before = model_identity(with_lora)
    with_lora.patch_model()  # loaded with the patch applied, as between prompts: same identity
    try:
        assert model_identity(with_lora) == before
    finally:
        with_lora.unpatch_model()


def test_a_new_setup_of_a_known_model_plans_from_its_nearest_setup_and_learns_its_own(zimage, user_dir):
    _, patched, history = auto_model(zimage)
    harness.sample(patched, seed=1, steps=STEPS, cfg=CFG)  # euler cfg 4
    harness.sample(patched, seed=1, steps=STEPS, cfg=1.0)  # euler cfg 1: borrows from cfg 4
    assert "planned from this model's euler cfg 4.0" in " ".join(history.latest.notes)
    [cfg1, cfg4] = learned_files(user_dir)
    assert cfg1.name.endswith("-euler-cfg1.json") and load_learned(cfg1)[1]["runs"] == 1
    borrowed = load_learned(cfg4)[0]
    harness.sample(patched, seed=2, steps=STEPS, cfg=CFG, sampler_name="dpmpp_2m")  # nearest: euler cfg 4
    run = history.latest
    assert run.schedule.computed_steps == learned_steps(run, borrowed)
    assert "planned from this model's euler cfg 4.0" in " ".join(run.notes)
    own = next(p for p in learned_files(user_dir) if p.name.endswith("-dpmpp_2m-cfg4.json"))
    assert len(load_learned(own)[0]) == CALLS - 2 and len(load_learned(cfg4)[0]) == len(borrowed)  # untouched


def test_another_model_of_the_architecture_borrows_only_the_same_setup(zimage, user_dir):
    """A fine-tune or another LoRA of the model starts from its profile for the same sampler and cfg."""
    _, patched, history = auto_model(zimage)
    harness.sample(patched, seed=1, steps=STEPS, cfg=CFG)  # euler cfg 4
    [learned_file] = learned_files(user_dir)
    donor = load_learned(learned_file)[0]

    def first_run(model, cfg):
        patched_model, model_history = harness.execute_node(MeanCacheApply, model=model, schedule=history.plan).result
        harness.sample(patched_model, seed=1, steps=STEPS, cfg=cfg)
        return model_history.latest

    fine_tune = first_run(harness.tiny_zimage(seed=4), CFG)
    assert fine_tune.schedule.computed_steps == learned_steps(fine_tune, donor)
    assert f"planned from another model of this architecture ({learned_file.name})" in " ".join(fine_tune.notes)
    assert len(learned_files(user_dir)) == 2 and len(load_learned(learned_file)[0]) == len(donor)  # its own
    other_cfg = first_run(harness.tiny_zimage(seed=5), 1.5)  # no model learned euler cfg 1.5
    other_architecture = first_run(harness.tiny_flow_other(), CFG)
    for run in (other_cfg, other_architecture):
        assert run.schedule.settings.cost_source.startswith("even")
        assert not any("planned from" in n for n in run.notes)


def test_a_corrupt_profile_warns_plans_a_first_run_and_is_kept_aside(zimage, user_dir, caplog):
    schedule, patched, history = auto_model(zimage)
    harness.sample(patched, seed=1, steps=STEPS, cfg=CFG)
    [path] = learned_files(user_dir)
    path.write_text('{"format": "comfy-meancache-learned", "version": 1, "sigma": [')
    with caplog.at_level(logging.WARNING):
        harness.sample(patched, seed=2, steps=STEPS, cfg=CFG)
    run = history.latest
    assert run.model_calls == CALLS and planned_as_a_first_run(run, schedule)
    assert any("auto profile unreadable, planning without it" in r.getMessage() for r in caplog.records)
    kept = [p for p in path.parent.iterdir() if ".unreadable-" in p.name]
    assert len(kept) == 1 and kept[0].read_text().endswith('"sigma": [')  # the user's file, untouched
    assert load_learned(path)[1]["runs"] == 1  # a fresh profile from this run
    assert any("unreadable auto profile was kept as" in n for n in run.notes)


def test_an_unwritable_folder_warns_and_the_session_still_learns(zimage, user_dir, caplog):
    (user_dir / "meancache").mkdir()
    (user_dir / "meancache" / "auto").write_text("a file where the folder should be")
    schedule, patched, history = auto_model(zimage)
    with caplog.at_level(logging.WARNING):
        first = harness.sample(patched, seed=1, steps=STEPS, cfg=CFG)
        harness.sample(patched, seed=2, steps=STEPS, cfg=CFG)
    runs = list(history.runs)
    assert first.isfinite().all() and [r.model_calls for r in runs] == [CALLS, CALLS]
    assert planned_as_a_first_run(runs[0], schedule)
    assert runs[1].schedule.settings.cost_source.startswith("learned")  # from this session's memory
    assert any("auto profile not saved" in r.getMessage() for r in caplog.records)
    assert (user_dir / "meancache" / "auto").read_text() == "a file where the folder should be"


def test_other_cost_sources_and_calibration_learn_nothing(zimage, user_dir):
    schedule = harness.execute_node(MeanCachePlanner, model=zimage, cost_source="even", **PLANNER)[0]
    patched = harness.execute_node(MeanCacheApply, model=zimage, schedule=schedule)[0]
    harness.sample(patched, seed=1, steps=STEPS, cfg=CFG)
    assert learned_files(user_dir) == []


@pytest.mark.parametrize("name", ["auto", "even", "prior"])
def test_a_calibration_profile_cannot_take_a_built_in_sources_name(zimage, name):
    with pytest.raises(ValueError, match="names a built-in cost source"):
        harness.execute_node(MeanCacheCalibrate, model=zimage, profile_name=name)


def test_two_experts_each_learn_their_own_profile_and_run_their_slice_of_it(user_dir):
    """Wan 2.2: one auto Planner, an Apply per expert, two KSamplerAdvanced; queued twice."""
    high, low = harness.tiny_wan22_pair()
    schedule = harness.execute_node(MeanCachePlanner, model=high, cost_source="auto", **PLANNER)[0]
    k = next(i for i in range(schedule.settings.warmup + 1, STEPS - 1) if schedule.compute[i])
    experts = [harness.execute_node(MeanCacheApply, model=m, schedule=schedule).result for m in (high, low)]
    counters = [harness.DiffusionModelCallCounter(patched) for patched, _ in experts]
    pos, neg = harness.make_cond_pair(high)
    common = dict(steps=STEPS, cfg=3.5, positive=pos, negative=neg)
    for seed in (7, 8):
        for counter in counters:
            counter.reset()
        first = harness.sample(counters[0].model, seed=seed, start_step=0, last_step=k, return_dict=True, **common)
        harness.sample(
            counters[1].model, seed=seed, start_step=k, last_step=10000, add_noise=False, latent=first, **common
        )
        runs = [history.latest for _, history in experts]
        assert not any("another model" in note for note in runs[1].notes)  # the high expert saw other sigmas
        assert [r.steps_run for r in runs] == [k, STEPS - k]
        assert [c.count for c in counters] == [2 * r.model_calls for r in runs]  # cond and uncond apart
    assert len(learned_files(user_dir)) == 2  # one profile per expert
    assert [r.schedule.part_of for r in runs] == [(0, STEPS), (k, STEPS)]  # slices of each expert's learned plan
    assert all(r.schedule.settings.cost_source.startswith("learned") for r in runs)


def test_a_run_on_other_sigmas_is_planned_from_the_learned_costs_on_its_own_grid(zimage, user_dir):
    _, patched, history = auto_model(zimage)
    harness.sample(patched, seed=1, steps=STEPS, cfg=CFG)  # learns on the planned 20 steps
    learned = load_learned(learned_files(user_dir)[0])[0]
    harness.sample(patched, seed=2, steps=12, cfg=CFG)
    run = history.latest
    calls = round(CALLS * 12 / STEPS)
    assert run.steps_run == 12 and run.model_calls == calls
    assert run.schedule.computed_steps == learned_steps(run, learned, calls)
    assert "re-planned for the sampler's 12 steps" in " ".join(run.schedule.notes)
