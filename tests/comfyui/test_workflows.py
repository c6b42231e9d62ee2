"""The example workflows in workflows/: valid UI-format files that load and run in ComfyUI 0.8.0.

Why: a saved workflow stores widget values by position and links by slot, so
a mistake there loads silently wrong (values in the wrong widgets) or not at
all, and nothing else in the test suite reads these files. Every check here
uses the real node definitions (core, comfy_extras, and this pack as ComfyUI
loads it); the last tests queue each workflow through ComfyUI's own
PromptExecutor with the loaders swapped for the tiny test model.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import executor as ex
import harness
import pytest
import torch

WORKFLOW_DIR = harness.PROJECT_ROOT / "workflows"
STEMS = [
    "zimage_t2i_meancache",
    "zimage_calibrate",
    "zimage_custom_sampler_meancache",
    "flux_dev_t2i_meancache",
    "qwen_image_t2i_meancache",
    "wan22_t2v_meancache",
]
#: The tiny model family each workflow runs on (executor.TINY_BUILDERS); Wan 2.2's experts are Wan 2.1 models.
FAMILY = {stem: stem.split("_")[0] for stem in STEMS} | {
    "qwen_image_t2i_meancache": "qwen_image",
    "wan22_t2v_meancache": "wan21",
}
TOP_LEVEL = {"id", "revision", "last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"}
NODE_KEYS = {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties", "widgets_values"}
# (loader, widget, file, models folder) of each workflow, as ComfyUI's own templates for the model name them.
ZIMAGE_FILES = [
    ("UNETLoader", "unet_name", "z_image_bf16.safetensors", "diffusion_models"),
    ("CLIPLoader", "clip_name", "qwen_3_4b.safetensors", "text_encoders"),
    ("VAELoader", "vae_name", "ae.safetensors", "vae"),
]
MODEL_FILES = {stem: ZIMAGE_FILES for stem in STEMS if stem.startswith("zimage")} | {
    "flux_dev_t2i_meancache": [
        ("UNETLoader", "unet_name", "flux1-dev.safetensors", "diffusion_models"),
        ("DualCLIPLoader", "clip_name1", "clip_l.safetensors", "text_encoders"),
        ("DualCLIPLoader", "clip_name2", "t5xxl_fp16.safetensors", "text_encoders"),
        ("VAELoader", "vae_name", "ae.safetensors", "vae"),
    ],
    "qwen_image_t2i_meancache": [
        ("UNETLoader", "unet_name", "qwen_image_fp8_e4m3fn.safetensors", "diffusion_models"),
        ("CLIPLoader", "clip_name", "qwen_2.5_vl_7b_fp8_scaled.safetensors", "text_encoders"),
        ("VAELoader", "vae_name", "qwen_image_vae.safetensors", "vae"),
    ],
    "wan22_t2v_meancache": [
        ("UNETLoader", "unet_name", "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "diffusion_models"),
        ("UNETLoader", "unet_name", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "diffusion_models"),
        ("CLIPLoader", "clip_name", "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders"),
        ("VAELoader", "vae_name", "wan_2.1_vae.safetensors", "vae"),
    ],
}
PROFILE = "zimage-base"
# Nodes both steps of the calibration workflow use (outside its two groups).
SHARED_BY_CALIBRATION_STEPS = {
    "UNETLoader",
    "CLIPLoader",
    "VAELoader",
    "EmptySD3LatentImage",
    "ModelSamplingAuraFlow",
    "CLIPTextEncode",
}


@pytest.fixture(scope="module", autouse=True)
def comfy_loaded():
    ex.ensure_loaded()


def load(stem: str) -> dict:
    return json.loads((WORKFLOW_DIR / f"{stem}.json").read_text(encoding="utf-8"))


def real_nodes(workflow: dict) -> list[dict]:
    return [n for n in workflow["nodes"] if n["type"] not in ex.NOTE_TYPES]


def module_of(node_type: str) -> str:
    return harness.node_info(node_type)["python_module"]


@pytest.fixture(params=STEMS)
def stem(request) -> str:
    return request.param


@pytest.fixture
def workflow(stem) -> dict:
    return load(stem)


# --------------------------------------------------------------------------
# File format
# --------------------------------------------------------------------------


def test_all_workflows_are_listed():
    assert sorted(p.stem for p in WORKFLOW_DIR.glob("*.json")) == sorted(STEMS)


def test_ui_format_0_4(workflow):
    assert set(workflow) <= TOP_LEVEL and TOP_LEVEL - {"id", "revision"} <= set(workflow)
    assert workflow["version"] == 0.4 and workflow["config"] == {} and isinstance(workflow["groups"], list)
    assert workflow["extra"]["frontendVersion"] == "1.35.9"
    ids = [n["id"] for n in workflow["nodes"]]
    link_ids = [link[0] for link in workflow["links"]]
    assert len(set(ids)) == len(ids) and len(set(link_ids)) == len(link_ids)
    assert workflow["last_node_id"] >= max(ids) and workflow["last_link_id"] >= max(link_ids)
    for node in workflow["nodes"]:
        assert NODE_KEYS <= set(node), node["id"]
        assert node["mode"] in (ex.MODE_NORMAL, ex.MODE_MUTED, ex.MODE_BYPASSED)
        assert len(node["pos"]) == 2 and len(node["size"]) == 2 and node["size"][0] > 0 and node["size"][1] > 0
        if node["type"] not in ex.NOTE_TYPES:
            assert node["properties"]["Node name for S&R"] == node["type"]
    for group in workflow["groups"]:
        assert len(group["bounding"]) == 4 and group["title"]
    # ``order`` is a topological order of the nodes, as the frontend stores it.
    order = {n["id"]: n["order"] for n in workflow["nodes"]}
    assert sorted(order.values()) == list(range(len(order)))
    for link in workflow["links"]:
        assert len(link) == 6 and order[link[1]] < order[link[3]], link


def test_node_types_exist_in_core_or_this_pack(workflow):
    for node in workflow["nodes"]:
        kind = node["type"]
        if kind in ex.NOTE_TYPES:
            assert node["widgets_values"] and isinstance(node["widgets_values"][0], str)
            continue
        assert kind in ex.nodes.NODE_CLASS_MAPPINGS, f"unknown node type {kind}"
        assert kind not in ex.TEST_NODE_IDS
        module = module_of(kind)
        core = module == "nodes" or module.startswith("comfy_extras.")
        assert core or module == f"custom_nodes.{ex.PACK_NAME}", f"{kind} comes from {module}"
        assert node["properties"]["cnr_id"] == ("comfy-core" if core else ex.PACK_NAME)


def test_links_match_the_node_definitions(workflow):
    by_id = {n["id"]: n for n in workflow["nodes"]}
    for link_id, origin, slot, target, target_slot, kind in workflow["links"]:
        src, dst = by_id[origin], by_id[target]
        assert ex.output_types(src["type"])[slot] == kind, f"link {link_id}: {src['type']} output {slot} is not {kind}"
        assert src["outputs"][slot]["type"] == kind and link_id in src["outputs"][slot]["links"]
        entry = dst["inputs"][target_slot]
        assert entry["link"] == link_id and entry["type"] == kind
        assert ex.input_type(dst["type"], entry["name"]) == kind, f"link {link_id}: {dst['type']}.{entry['name']}"
    links = {link[0] for link in workflow["links"]}
    for node in real_nodes(workflow):
        info = harness.node_info(node["type"])
        assert [(o["name"], o["type"]) for o in node["outputs"]] == list(zip(info["output_name"], info["output"]))
        assert all(set(o["links"]) <= links and o["slot_index"] == i for i, o in enumerate(node["outputs"]))
        sockets = ex.sockets(node["type"])
        # Socket inputs first, in definition order; then widgets driven by a link.
        assert [(i["name"], i["type"]) for i in node["inputs"][: len(sockets)]] == [(s.name, s.type) for s in sockets]
        for socket, entry in zip(sockets, node["inputs"]):
            assert entry.get("shape") == (7 if socket.optional else None), f"{node['type']}.{socket.name} shape"
            if not socket.optional and node["mode"] != ex.MODE_MUTED:
                assert entry["link"] is not None, f"required {node['type']}.{socket.name} is not connected"
        widget_names = {w.name for w in ex.widgets(node["type"])}
        for entry in node["inputs"][len(sockets) :]:
            assert entry["widget"] == {"name": entry["name"]} and entry["name"] in widget_names
            assert entry["link"] in links


def _check_value(node_type: str, widget: ex.Widget, value) -> None:
    where = f"{node_type}.{widget.name} = {value!r}"
    kind = widget.type
    if kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    else:
        assert isinstance(value, str), where
    if kind in ("INT", "FLOAT"):
        low, high = widget.options.get("min", -math.inf), widget.options.get("max", math.inf)
        assert low <= value <= high, f"{where} outside [{low}, {high}]"


def test_widgets_values_follow_the_definitions(stem, workflow):
    """Count and order (incl. the control_after_generate entries), types, ranges and combo options."""
    files = {(loader, widget): set() for loader, widget, _, _ in MODEL_FILES[stem]}
    for loader, widget, name, _ in MODEL_FILES[stem]:
        files[loader, widget].add(name)
    for node in real_nodes(workflow):
        named = ex.named_widget_values(node)  # raises on a count mismatch
        values, i = node["widgets_values"], 0
        for widget in ex.widgets(node["type"]):
            _check_value(node["type"], widget, values[i])
            if widget.control_after_generate:
                assert values[i + 1] in ex.CONTROL_VALUES, f"{node['type']}.{widget.name} control {values[i + 1]!r}"
            i += 2 if widget.control_after_generate else 1
        for widget in ex.widgets(node["type"]):
            if widget.type != "COMBO":
                continue
            value = named[widget.name]
            if (node["type"], widget.name) in files:
                assert value in files[node["type"], widget.name]  # a file list: empty on this machine
            elif node["type"] == "MeanCachePlanner" and widget.name == "cost_source" and value == PROFILE:
                assert node["mode"] == ex.MODE_MUTED  # made by the calibration step; runs once it exists
            else:
                assert value in widget.combo_values, f"{node['type']}.{widget.name} = {value!r}"


def test_meancache_widget_values_are_valid(workflow):
    from comfy_meancache.core.presets import PRESETS

    Calibration = ex.pack_module("Calibration")
    for node in real_nodes(workflow):
        named = ex.named_widget_values(node)
        if node["type"] == "MeanCachePlanner":
            planner = ex.nodes.NODE_CLASS_MAPPINGS["MeanCachePlanner"]
            args = (named["preset"], named["steps"], named["compute_steps"], None)  # cost_source checked below
            assert planner.validate_inputs(*args) is True
            preset = PRESETS[named["preset"]]  # a preset, so the frontend shows these values for it
            assert (named["speedup"], named["gamma"], named["warmup"], named["max_gap"], named["compute_steps"]) == (
                preset.speedup,
                preset.settings.gamma,
                preset.settings.warmup,
                preset.settings.max_gap,
                0,
            )
            assert named["estimator"] == preset.estimator
        elif node["type"] == "MeanCacheCalibrate":
            assert Calibration(named["profile_name"], folder=Path("/nonexistent")).name == PROFILE


def test_same_stem_thumbnail(stem):
    from PIL import Image

    thumb = WORKFLOW_DIR / f"{stem}.jpg"
    assert thumb.exists() and thumb.stat().st_size < 100_000
    with Image.open(thumb) as image:
        assert image.format == "JPEG" and image.size[0] >= 256 and image.size[1] >= 192


def test_note_says_where_the_model_files_go(stem, workflow):
    notes = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in ex.NOTE_TYPES]
    assert len(notes) == 1
    for _, _, name, folder in MODEL_FILES[stem]:
        assert name in notes[0] and f"models/{folder}" in notes[0]
    folders = {name: folder for _, _, name, folder in MODEL_FILES[stem]}
    loaded = []
    for node in real_nodes(workflow):
        named = ex.named_widget_values(node)
        widgets = dict.fromkeys(w for loader, w, _, _ in MODEL_FILES[stem] if loader == node["type"])
        names = [named[w] for w in widgets]
        if names:
            assert [m["name"] for m in node["properties"]["models"]] == names
            assert [m["directory"] for m in node["properties"]["models"]] == [folders[n] for n in names]
            loaded += names
    assert sorted(loaded) == sorted(folders)


# --------------------------------------------------------------------------
# Settings: Z-Image as ComfyUI's templates load it, MeanCache wired to match
# --------------------------------------------------------------------------


# family -> (templates package, file, node types whose widgets must equal one of the template's)
TEMPLATES = {
    "zimage": (
        "comfyui_workflow_templates_media_other",
        "image_z_image_turbo.json",
        ("CLIPLoader", "VAELoader", "ModelSamplingAuraFlow"),
    ),
    "flux": (
        "comfyui_workflow_templates_media_image",
        "flux_dev_full_text_to_image.json",
        ("UNETLoader", "DualCLIPLoader", "VAELoader", "EmptySD3LatentImage"),
    ),
    "qwen_image": (
        "comfyui_workflow_templates_media_image",
        "image_qwen_image.json",
        ("UNETLoader", "CLIPLoader", "VAELoader", "EmptySD3LatentImage", "ModelSamplingAuraFlow"),
    ),
    "wan21": (
        "comfyui_workflow_templates_media_video",
        "video_wan2_2_14B_t2v.json",
        ("UNETLoader", "CLIPLoader", "VAELoader", "EmptyHunyuanLatentVideo", "ModelSamplingSD3"),
    ),
}


def _template_widgets(family: str) -> dict[str, list[list]] | None:
    """Widget values per node type in ComfyUI's installed template for ``family`` (None if not installed)."""
    package, name, types = TEMPLATES[family]
    try:
        pkg = importlib.import_module(package)
    except ImportError:
        return None
    path = Path(pkg.__file__).parent / "templates" / name
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    found: dict[str, list[list]] = {}
    for graph in [data, *data.get("definitions", {}).get("subgraphs", [])]:
        for node in graph["nodes"]:
            if node["type"] in types:
                found.setdefault(node["type"], []).append(node["widgets_values"])
    return found


def _same_widgets(ours: list, theirs: list) -> bool:
    """Equal, with floats compared to 1e-9 (templates store 3.1 as 3.1000000000000005)."""
    return len(ours) == len(theirs) and all(
        a == pytest.approx(b, rel=1e-9) if isinstance(a, float) else a == b for a, b in zip(ours, theirs)
    )


def test_loaders_match_comfyuis_template(stem, workflow):
    template = _template_widgets(FAMILY[stem])
    if template is None:
        pytest.skip(f"comfyui_workflow_templates ({TEMPLATES[FAMILY[stem]][1]}) not installed")
    for node in real_nodes(workflow):
        if node["type"] in TEMPLATES[FAMILY[stem]][2]:
            values = template[node["type"]]
            assert any(_same_widgets(node["widgets_values"], v) for v in values), (node["type"], values)


@pytest.mark.parametrize(
    "name,steps,cfg,model_from",
    [
        ("zimage_t2i_meancache", 40, 4.0, "ModelSamplingAuraFlow"),
        ("flux_dev_t2i_meancache", 30, 1.0, "UNETLoader"),
        ("qwen_image_t2i_meancache", 30, 2.5, "ModelSamplingAuraFlow"),
    ],
)
def test_t2i_planner_matches_the_ksampler(name, steps, cfg, model_from):
    api = ex.ui_to_api(load(name))
    planner, sampler = ex.one(api, "MeanCachePlanner"), ex.one(api, "KSampler")
    assert api[planner]["inputs"]["steps"] == api[sampler]["inputs"]["steps"]  # one shared Steps node
    for field in ("steps", "scheduler", "denoise"):
        assert ex.literal(api, planner, field) == ex.literal(api, sampler, field), field
    assert ex.literal(api, planner, "preset") == "balanced"
    assert (ex.literal(api, sampler, "steps"), ex.literal(api, sampler, "cfg")) == (steps, cfg)
    assert (ex.literal(api, sampler, "sampler_name"), ex.literal(api, sampler, "scheduler")) == ("euler", "simple")
    apply_ = ex.one(api, "MeanCacheApply")
    assert api[sampler]["inputs"]["model"] == [apply_, 0]
    source = ex.one(api, model_from)
    assert api[planner]["inputs"]["model"] == api[apply_]["inputs"]["model"] == [source, 0]
    report = ex.one(api, "MeanCacheReport")
    assert api[report]["inputs"]["latent"] == [sampler, 0] and api[report]["inputs"]["stats"] == [apply_, 1]


def test_flux_dev_reads_its_guidance_from_flux_guidance():
    api = ex.ui_to_api(load("flux_dev_t2i_meancache"))
    sampler, guidance = ex.one(api, "KSampler"), ex.one(api, "FluxGuidance")
    assert api[sampler]["inputs"]["positive"] == [guidance, 0] and ex.literal(api, guidance, "guidance") == 3.5
    assert api[sampler]["inputs"]["negative"] == [ex.one(api, "ConditioningZeroOut"), 0]


def test_wan22_one_plan_two_experts_two_applies():
    """One Planner for the whole run; each expert has its own Apply of that schedule and its own
    KSamplerAdvanced, split at one hand-over step, as ComfyUI's Wan 2.2 template samples."""
    api = ex.ui_to_api(load("wan22_t2v_meancache"))
    planner = ex.one(api, "MeanCachePlanner")
    high, low = ex.node_ids(api, "KSamplerAdvanced")
    assert ex.literal(api, high, "start_at_step") == 0 and ex.literal(api, low, "end_at_step") == 10000
    assert api[high]["inputs"]["end_at_step"] == api[low]["inputs"]["start_at_step"]  # one hand-over node
    assert ex.literal(api, high, "end_at_step") == 10 and ex.literal(api, planner, "steps") == 20
    assert api[planner]["inputs"]["steps"] == api[high]["inputs"]["steps"] == api[low]["inputs"]["steps"]
    expected = {high: ("enable", "enable"), low: ("disable", "disable")}
    for sampler, (add_noise, leftover) in expected.items():
        assert (ex.literal(api, sampler, "add_noise"), ex.literal(api, sampler, "return_with_leftover_noise")) == (
            add_noise,
            leftover,
        )
        assert (ex.literal(api, sampler, "cfg"), ex.literal(api, sampler, "sampler_name")) == (3.5, "euler")
    assert api[low]["inputs"]["latent_image"] == [high, 0]
    applies = [api[s]["inputs"]["model"][0] for s in (high, low)]
    assert sorted(applies) == sorted(ex.node_ids(api, "MeanCacheApply")) and applies[0] != applies[1]
    unets = []
    for apply_ in applies:
        assert api[apply_]["inputs"]["schedule"] == [planner, 0]
        shift = api[apply_]["inputs"]["model"][0]
        assert api[shift]["class_type"] == "ModelSamplingSD3" and ex.literal(api, shift, "shift") == 8.0
        unets.append(ex.literal(api, api[shift]["inputs"]["model"][0], "unet_name"))
    assert ["high_noise" in unets[0], "low_noise" in unets[1]] == [True, True]
    assert api[planner]["inputs"]["model"] == api[applies[0]]["inputs"]["model"]
    report = ex.one(api, "MeanCacheReport")
    assert api[report]["inputs"]["latent"] == [low, 0] and api[report]["inputs"]["stats"] == [applies[1], 1]


def test_custom_sampler_plans_the_sampled_sigmas():
    api = ex.ui_to_api(load("zimage_custom_sampler_meancache"))
    scheduler = ex.one(api, "BasicScheduler")
    planner, sampler = ex.one(api, "MeanCachePlanner"), ex.one(api, "SamplerCustomAdvanced")
    assert api[planner]["inputs"]["sigmas"] == api[sampler]["inputs"]["sigmas"] == [scheduler, 0]
    guider = ex.one(api, "CFGGuider")
    assert api[guider]["inputs"]["model"] == [ex.one(api, "MeanCacheApply"), 0]
    assert api[sampler]["inputs"]["guider"] == [guider, 0]
    assert api[ex.one(api, "KSamplerSelect")]["inputs"]["sampler_name"] == "euler"


def test_calibrate_step_two_is_muted_and_plans_from_the_profile():
    workflow = load("zimage_calibrate")
    api = ex.ui_to_api(workflow)
    assert node_types(api) >= {"MeanCacheCalibrate", "KSampler", "MeanCacheReport"}
    assert "MeanCachePlanner" not in node_types(api)  # muted: not queued until the profile exists
    calibrate = ex.one(api, "MeanCacheCalibrate")
    full = ex.ui_to_api(workflow, include_muted=True)
    planner = ex.one(full, "MeanCachePlanner")
    assert full[planner]["inputs"]["cost_source"] == api[calibrate]["inputs"]["profile_name"] == PROFILE


def node_types(api: dict) -> set[str]:
    return {v["class_type"] for v in api.values()}


# --------------------------------------------------------------------------
# Running them: ComfyUI's PromptExecutor, tiny Z-Image model
# --------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path):
    """A classic-cache executor with the test-only nodes installed and ComfyUI's folders in tmp_path."""
    with ex.test_nodes_installed(), ex.comfy_dirs(tmp_path):
        yield ex.ComfyExecutor("classic")


def _check_report(result: ex.RunResult, report: str) -> None:
    chart = result.output(report)
    assert isinstance(chart, torch.Tensor) and chart.ndim == 4 and chart.shape[-1] == 3
    assert result.ui[report]["images"][0]["type"] == "temp"
    assert result.texts[report]  # the summary went to the node (send_progress_text)


def _saved_pngs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "output").rglob("*.png"))


@pytest.mark.parametrize(
    "name,steps,forward_batch",
    [
        ("zimage_t2i_meancache", 40, 2),  # cfg 4, cond and uncond batch (equal token counts)
        ("zimage_custom_sampler_meancache", 40, 2),
        ("flux_dev_t2i_meancache", 30, 1),  # cfg 1: the zeroed negative is never evaluated
        ("qwen_image_t2i_meancache", 30, 2),  # cfg 2.5
    ],
)
def test_meancache_workflows_run_with_exactly_the_planned_model_calls(engine, tmp_path, name, steps, forward_batch):
    api = ex.swap_to_tiny(ex.ui_to_api(load(name)), family=FAMILY[name])
    result = engine.run(api).raise_for_error()
    schedule = result.output(ex.one(api, "MeanCachePlanner"))
    assert schedule.steps == steps and schedule.model_calls < steps
    # one forward per computed step, all under MeanCache.
    assert len(result.calls) == schedule.model_calls
    assert {c.batch for c in result.calls} == {forward_batch} and len({(c.holder, c.run) for c in result.calls}) == 1
    report = ex.one(api, "MeanCacheReport")
    _check_report(result, report)
    assert f"run: {steps} steps -> {schedule.model_calls} model calls" in result.text(report)
    assert len(_saved_pngs(tmp_path)) == 1
    if name == "zimage_custom_sampler_meancache":
        sigmas = result.output(ex.one(api, "BasicScheduler"))
        assert list(schedule.sigmas) == pytest.approx(sigmas.tolist(), abs=0)


def test_wan22_workflow_runs_both_experts_under_one_plan(engine, tmp_path):
    api = ex.swap_to_tiny(ex.ui_to_api(load("wan22_t2v_meancache")), family="wan21")
    result = engine.run(api).raise_for_error()
    schedule = result.output(ex.one(api, "MeanCachePlanner"))
    high, low = (result.output(node, 1) for node in ex.node_ids(api, "MeanCacheApply"))
    assert schedule.steps == 20 and (high.latest.steps_run, low.latest.steps_run) == (10, 10)
    # two experts, two holders, two runs; cond and uncond batch (cfg 3.5, equal token counts)
    assert len({(c.holder, c.run) for c in result.calls}) == 2 and {c.batch for c in result.calls} == {2}
    # each expert runs its slice of the plan; the low-noise one computes step 10 even if the plan skips it
    assert len(result.calls) == high.latest.model_calls + low.latest.model_calls
    assert len(result.calls) == schedule.model_calls + (not schedule.compute[10])
    report = ex.one(api, "MeanCacheReport")
    _check_report(result, report)
    calls = high.latest.model_calls + low.latest.model_calls
    assert f"fragment 2 of 2 of a 20-step plan (steps 10-19); all 2 fragments: 20 steps -> {calls} model calls" in (
        result.text(report)
    )
    assert len(list((tmp_path / "output").rglob("*.mp4"))) == 1


def test_calibrate_workflow_records_then_step_two_plans_from_the_profile(engine, tmp_path):
    workflow = load("zimage_calibrate")
    api = ex.swap_to_tiny(ex.ui_to_api(workflow))
    sampler, report = ex.one(api, "KSampler"), ex.one(api, "MeanCacheReport")
    for seed in (1, 2):
        api[sampler]["inputs"]["seed"] = seed
        result = engine.run(api).raise_for_error()
        assert len(result.calls) == 40  # calibrating computes every step
        _check_report(result, report)
    assert f"Profile {PROFILE}: 2 runs" in result.text(report)
    profile = json.loads((tmp_path / "user" / "meancache" / f"{PROFILE}.json").read_text())
    assert profile["metadata"]["runs"] == 2 and profile["metadata"]["steps"] == 40

    # Step 2 as the note says: mute step 1, unmute step 2, queue.
    for node in workflow["nodes"]:
        if node["type"] not in ex.NOTE_TYPES and node["type"] not in SHARED_BY_CALIBRATION_STEPS:
            node["mode"] = ex.MODE_NORMAL if node["mode"] == ex.MODE_MUTED else ex.MODE_MUTED
    step2 = ex.swap_to_tiny(ex.ui_to_api(workflow))
    assert "MeanCacheCalibrate" not in node_types(step2)
    result = engine.run(step2).raise_for_error()
    schedule = result.output(ex.one(step2, "MeanCachePlanner"))
    assert schedule.settings.cost_source == f"profile {PROFILE} (2 runs)"
    assert len(result.calls) == schedule.model_calls < 40
    _check_report(result, ex.one(step2, "MeanCacheReport"))


def test_t2i_note_comparison_bypassing_apply_samples_every_step(engine):
    """The note's A/B recipe: Apply bypassed still validates and runs the full steps."""
    workflow = load("zimage_t2i_meancache")
    for node in workflow["nodes"]:
        if node["type"] == "MeanCacheApply":
            node["mode"] = ex.MODE_BYPASSED
    api = ex.swap_to_tiny(ex.ui_to_api(workflow))
    assert api[ex.one(api, "KSampler")]["inputs"]["model"] == [ex.one(api, "ModelSamplingAuraFlow"), 0]
    result = engine.run(api).raise_for_error()
    assert len(result.calls) == 40 and {c.holder for c in result.calls} == {None}
    report = ex.one(api, "MeanCacheReport")
    assert "ran uncached" in result.output(report, 1)
