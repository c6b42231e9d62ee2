"""The frontend's preset table (js/presets.js) is generated from comfy_meancache.core.presets and never drifts."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

from comfy_meancache.core.presets import CUSTOM, DEFAULT_PRESET, PRESETS

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "js"
PREFIX = "export const MEANCACHE_PRESETS = Object.freeze("


def _generator():
    spec = importlib.util.spec_from_file_location("browser_gen_presets", ROOT / "scripts" / "browser_gen_presets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shipped_table() -> dict:
    text = (JS / "presets.js").read_text(encoding="utf-8")
    start = text.index(PREFIX) + len(PREFIX)
    return json.loads(text[start : text.rindex(");")])


def test_shipped_presets_js_is_what_the_generator_writes_now():
    expected = _generator().render()
    actual = (JS / "presets.js").read_text(encoding="utf-8")
    assert actual == expected, "js/presets.js is stale: run python scripts/browser_gen_presets.py"


def test_shipped_table_matches_the_server_table():
    table = _shipped_table()
    assert table["custom"] == CUSTOM
    assert table["default"] == DEFAULT_PRESET
    assert list(table["presets"]) == list(PRESETS)
    for name, preset in PRESETS.items():
        values = table["presets"][name]
        assert values["compute_steps"] == 0  # the server refuses compute_steps under a preset
        assert values["speedup"] == preset.speedup
        assert values["estimator"] == preset.estimator
        assert values["gamma"] == preset.settings.gamma
        assert values["warmup"] == preset.settings.warmup
        assert values["max_gap"] == preset.settings.max_gap
        assert set(values) == set(table["custom_widgets"])


def _planner_input_names() -> list[str]:
    """Input ids of MeanCachePlanner, read from nodes.py without importing ComfyUI."""
    tree = ast.parse((ROOT / "comfy_meancache" / "comfyui" / "nodes.py").read_text(encoding="utf-8"))
    planner = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MeanCachePlanner")
    names = []
    for call in ast.walk(planner):
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr == "Input"
            and call.args
            and isinstance(call.args[0], ast.Constant)
        ):
            names.append(call.args[0].value)
    return names


def test_the_widgets_the_js_drives_exist_on_the_planner():
    names = _planner_input_names()
    assert "preset" in names
    for widget in _shipped_table()["custom_widgets"]:
        assert widget in names, f"MeanCachePlanner has no input {widget!r}"


def test_js_folder_holds_only_side_effect_free_modules_and_relative_core_imports():
    # ComfyUI's GET /extensions lists every .js under js/ and the frontend imports each one.
    files = [p for p in JS.rglob("*") if p.is_file()]
    assert not any("node_modules" in p.parts for p in files)
    assert not any(p.name.endswith((".test.js", ".spec.js")) for p in files)
    presets = (JS / "presets.js").read_text(encoding="utf-8")
    assert "import " not in presets
    main = (JS / "meancache.js").read_text(encoding="utf-8")
    assert 'from "../../scripts/app.js"' in main  # relative: the pack folder name differs between installs
    assert '"/scripts/' not in main and "'/scripts/" not in main
