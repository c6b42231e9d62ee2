"""Run prompts through ComfyUI's real execution engine, in-process, on the tiny test models.

Why: the node-level tests call ``execute`` directly; only ``execution.PromptExecutor``
shows what a user's queue does: validation, the output cache (classic, LRU or
``--cache-none``), ``fingerprint_inputs``, hidden inputs, ui messages, and the
order in which output nodes run. This module gives the tests that engine
without starting a server:

* :class:`StubServer`: the few things ``PromptExecutor`` and the nodes use from
  ``server.PromptServer`` (``client_id``, ``last_node_id``, ``send_sync``,
  ``send_progress_text``, ``sockets_metadata``); it records every message.
* :class:`ComfyExecutor`: one ``PromptExecutor`` (one cache) plus validation;
  ``run(prompt)`` returns a :class:`RunResult` with the nodes that ran or came
  from the cache, their outputs, ui, progress texts and the model forwards.
* :func:`ui_to_api`: a UI-format (0.4) workflow to an API-format prompt, with
  ``widgets_values`` named by the real node definitions.
* :func:`swap_to_tiny`: rewrites a prompt of one family (Z-Image, Flux, Qwen-Image,
  Wan) to the test-only nodes (the family's tiny random model, stand-in text
  encoder and decoder), which are
  in ``nodes.NODE_CLASS_MAPPINGS`` only inside :func:`test_nodes_installed`.
* :data:`PROBE`: a DIFFUSION_MODEL wrapper on the tiny model counting real
  forwards and which MeanCache holder / run state each one saw.

Importing this module imports ComfyUI (via ``harness``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import uuid
import weakref
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import comfyui_bootstrap

comfyui_bootstrap.require()  # ComfyUI on sys.path and imported in CPU mode before the imports below

import execution  # noqa: E402
import folder_paths  # noqa: E402
import harness  # noqa: E402
import nodes  # noqa: E402
import torch  # noqa: E402
from comfy.patcher_extension import WrappersMP  # noqa: E402

# The holder/run keys MeanCache puts into transformer_options (plain strings,
# the same in the loaded pack and in a direct import).
from comfy_meancache.comfyui.hook import HOLDER_KEY, RUN_KEY  # noqa: E402

PACK_NAME = "comfy-meancache"
#: Frontend-only node types: never in NODE_CLASS_MAPPINGS, dropped from API prompts.
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
#: What the frontend's value-control widget may hold (the extra widgets_values entry).
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
#: Input types the frontend draws as widgets (with a value in widgets_values); the rest are sockets only.
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
MODE_NORMAL, MODE_MUTED, MODE_BYPASSED = 0, 2, 4

TINY_LOADER = "TinyZImageTestLoader"
TINY_TEXT = "TinyZImageTestTextEncode"
TINY_DECODE = "TinyTestImageDecode"
TEST_NODE_IDS = (TINY_LOADER, TINY_TEXT, TINY_DECODE)
TEST_MODULE = "custom_nodes.meancache-test-only"

_STATE: dict[str, Any] = {}


# --------------------------------------------------------------------------
# Loading ComfyUI's nodes and this pack
# --------------------------------------------------------------------------


def ensure_loaded() -> harness.CustomNodeLoad | None:
    """comfy_extras nodes and this pack (as ``custom_nodes/comfy-meancache``), once per process.

    Loading the pack again would re-execute it and replace the classes other
    tests already hold, so it is loaded only when its nodes are not there yet.
    """
    harness.load_builtin_extra_nodes()
    if "pack" not in _STATE or "MeanCacheApply" not in nodes.NODE_CLASS_MAPPINGS:
        load = harness.load_custom_node_pack(harness.PROJECT_ROOT, as_name=PACK_NAME)
        load.assert_ok()
        _STATE["pack"] = load
    return _STATE["pack"]


def pack_module(attr: str):
    """``attr`` from the pack's nodes module as ComfyUI loaded it (not ``comfy_meancache.*``).

    The loaded pack is a separate module tree, so ``isinstance`` against a
    directly imported ``MeanCacheHolder`` would be False; use these instead.
    """
    import sys

    cls = nodes.NODE_CLASS_MAPPINGS["MeanCacheApply"]
    return getattr(sys.modules[cls.__module__], attr)


# --------------------------------------------------------------------------
# Probe: real diffusion-model forwards, and the MeanCache objects they saw
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeCall:
    """One diffusion-model forward."""

    sigma: float
    batch: int
    holder: int | None  # serial of the MeanCacheHolder in transformer_options (None: no MeanCache)
    run: int | None  # serial of the per-run state object (None: outside a MeanCache run)


class ModelCallProbe:
    """DIFFUSION_MODEL wrapper counting forwards; holds no strong reference to what it sees.

    Objects get serial numbers through a WeakKeyDictionary, so a serial is
    never reused for a new object even when CPython reuses an ``id``.
    """

    KEY = "test_executor_probe"

    def __init__(self) -> None:
        self.calls: list[ProbeCall] = []
        self._serials: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._next = 0
        self.last_run: weakref.ref | None = None
        self.last_holder: weakref.ref | None = None

    def serial(self, obj) -> int | None:
        if obj is None:
            return None
        number = self._serials.get(obj)
        if number is None:
            self._next += 1
            number = self._serials[obj] = self._next
        return number

    def attach(self, model):
        """A clone of ``model`` with the probe registered (clones of it keep it)."""
        probed = model.clone()
        probed.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, self.KEY, self._wrapper)
        return probed

    def _wrapper(self, executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        options = kwargs.get("transformer_options")
        if not isinstance(options, dict):
            options = next((a for a in args if isinstance(a, dict) and "sigmas" in a), {})
        holder, run = options.get(HOLDER_KEY), options.get(RUN_KEY)
        if run is not None:
            self.last_run = weakref.ref(run)
        if holder is not None:
            self.last_holder = weakref.ref(holder)
        sigmas = options.get("sigmas")
        self.calls.append(
            ProbeCall(
                sigma=float(sigmas.flatten()[0]) if isinstance(sigmas, torch.Tensor) else float("nan"),
                batch=int(args[0].shape[0]) if args and isinstance(args[0], torch.Tensor) else -1,
                holder=self.serial(holder),
                run=self.serial(run),
            )
        )
        return out

    def run_state_alive(self) -> bool:
        """Whether the last MeanCache run state seen is still referenced by anything (after gc)."""
        gc.collect()
        return self.last_run is not None and self.last_run() is not None


PROBE = ModelCallProbe()


# --------------------------------------------------------------------------
# Test-only nodes standing in for the Z-Image loaders, text encoder and VAE
# --------------------------------------------------------------------------


#: Tiny builders per family, for the test loader (Wan 2.2's experts are Wan 2.1-architecture models).
TINY_BUILDERS = {
    "zimage": harness.tiny_zimage,
    "flux": harness.tiny_flux,
    "qwen_image": harness.tiny_qwen_image,
    "wan21": harness.tiny_wan21,
}


def tiny_model(family: str = "zimage", unet_name: str = ""):
    """The process-wide tiny model of ``family`` for one file name, probed (built once: same weights every run).

    Seed 0, except seed 1 for a file named ``*low_noise*`` (Wan 2.2's second expert), so two loaders of one
    family give two different models as in the real workflow.
    """
    key = ("model", family, "low_noise" in unet_name)
    if key not in _STATE:
        _STATE[key] = PROBE.attach(TINY_BUILDERS[family](seed=int(key[2])))
    return _STATE[key]


class TinyZImageTestLoader:
    """UNETLoader stand-in: the tiny random model of ``family`` (the file name only picks Wan 2.2's expert)."""

    RELATIVE_PYTHON_MODULE = TEST_MODULE
    CATEGORY = "_for_testing"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"unet_name": ("STRING", {"default": ""}), "weight_dtype": ("STRING", {"default": ""})},
            "optional": {"family": (list(TINY_BUILDERS), {"default": "zimage"})},
        }

    def load(self, unet_name: str, weight_dtype: str, family: str = "zimage"):
        return (tiny_model(family, unet_name),)


class TinyZImageTestTextEncode:
    """CLIPTextEncode stand-in: random conditioning of ``family``'s shape, seeded by the text.

    All prompts get the same token count (``tokens``), so cond and uncond batch
    into one forward per step at cfg != 1 and forwards == planned model calls.
    """

    RELATIVE_PYTHON_MODULE = TEST_MODULE
    CATEGORY = "_for_testing"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": ("STRING", {"multiline": True}),
                "tokens": ("INT", {"default": 8, "min": 1, "max": 512}),
            },
            "optional": {"family": (list(TINY_BUILDERS), {"default": "zimage"})},
        }

    def encode(self, text: str, tokens: int, family: str = "zimage"):
        seed = zlib.crc32(text.encode("utf-8")) & 0x7FFFFFFF
        return (harness.make_conditioning(tiny_model(family), tokens=tokens, seed=seed),)


class TinyTestImageDecode:
    """VAEDecode stand-in: the first three latent channels through a sigmoid, as a ``[B,H,W,3]`` IMAGE.

    A 5-D video latent ``[B,C,T,H,W]`` gives its ``B*T`` frames, as a video VAE's decode does.
    """

    RELATIVE_PYTHON_MODULE = TEST_MODULE
    CATEGORY = "_for_testing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    def decode(self, samples: dict):
        latent = samples["samples"].float()
        if latent.ndim == 5:
            latent = latent.movedim(2, 1).flatten(0, 1)
        return (torch.sigmoid(latent[:, :3]).permute(0, 2, 3, 1).contiguous(),)


_TEST_NODES = {TINY_LOADER: TinyZImageTestLoader, TINY_TEXT: TinyZImageTestTextEncode, TINY_DECODE: TinyTestImageDecode}


@contextlib.contextmanager
def test_nodes_installed() -> Iterator[None]:
    """The test-only nodes in ``nodes.NODE_CLASS_MAPPINGS`` for the duration (removed afterwards)."""
    added = [k for k in _TEST_NODES if k not in nodes.NODE_CLASS_MAPPINGS]
    nodes.NODE_CLASS_MAPPINGS.update({k: _TEST_NODES[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            nodes.NODE_CLASS_MAPPINGS.pop(k, None)


# --------------------------------------------------------------------------
# Node definitions: widgets in the order the frontend stores them
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Widget:
    """One widget of a node, as the frontend (1.35.9) creates it from ``/object_info``."""

    name: str
    type: str  # INT, FLOAT, STRING, BOOLEAN or COMBO
    options: dict
    optional: bool
    control_after_generate: bool  # followed by one extra widgets_values entry ("fixed", "randomize", ...)

    @property
    def combo_values(self) -> list:
        return list(self.options.get("options", [])) if self.type == "COMBO" else []


@dataclass(frozen=True)
class Socket:
    name: str
    type: str
    optional: bool


def _spec_type(spec) -> tuple[str, dict]:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if isinstance(kind, list):  # V1 combo: the options list itself
        return "COMBO", {**opts, "options": kind}
    return kind, opts


def node_inputs(node_type: str) -> list[tuple[str, str, dict, bool]]:
    """``(name, type, options, optional)`` for every input, required then optional, in definition order."""
    ensure_loaded()
    info = harness.node_info(node_type)
    result = []
    for section in ("required", "optional"):
        for name in info.get("input_order", {}).get(section, []):
            kind, opts = _spec_type(info["input"][section][name])
            result.append((name, kind, opts, section == "optional"))
    return result


def widgets(node_type: str) -> list[Widget]:
    """The node's widgets in ``widgets_values`` order.

    Mirrors the frontend rules: a widget per INT/FLOAT/STRING/BOOLEAN/COMBO
    input unless ``forceInput``; an INT gets the value-control widget when
    ``control_after_generate`` says so, or (unset) when it is named seed or
    noise_seed; FLOAT and COMBO only when the flag is set.
    """
    found = []
    for name, kind, opts, optional in node_inputs(node_type):
        if kind not in WIDGET_TYPES or opts.get("forceInput"):
            continue
        flag = opts.get("control_after_generate")
        if kind == "INT" and flag is None:
            flag = name in ("seed", "noise_seed")
        found.append(Widget(name, kind, opts, optional, bool(flag)))
    return found


def sockets(node_type: str) -> list[Socket]:
    """Inputs that are links only (MODEL, LATENT, ...), in definition order."""
    return [
        Socket(name, kind, optional)
        for name, kind, opts, optional in node_inputs(node_type)
        if kind not in WIDGET_TYPES or opts.get("forceInput")
    ]


def input_type(node_type: str, name: str) -> str:
    for n, kind, _, _ in node_inputs(node_type):
        if n == name:
            return kind
    raise KeyError(f"{node_type} has no input {name!r}")


def output_types(node_type: str) -> list[str]:
    ensure_loaded()
    return ["COMBO" if isinstance(t, list) else t for t in harness.node_info(node_type)["output"]]


def named_widget_values(node: dict) -> dict[str, Any]:
    """``{widget name: value}`` from a UI node's ``widgets_values`` (control values dropped).

    Raises ``ValueError`` when the count does not match the definition.
    """
    values = list(node.get("widgets_values") or [])
    named, i = {}, 0
    for widget in widgets(node["type"]):
        if i >= len(values):
            raise ValueError(f"node {node['id']} ({node['type']}): no value for widget {widget.name!r}")
        named[widget.name] = values[i]
        i += 2 if widget.control_after_generate else 1
    if i != len(values):
        raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widgets_values, definition uses {i}")
    return named


# --------------------------------------------------------------------------
# UI format (0.4) -> API format
# --------------------------------------------------------------------------


def ui_to_api(workflow: dict, *, include_muted: bool = False) -> dict[str, dict]:
    """The API-format prompt the frontend would queue for ``workflow``.

    Notes are dropped; muted nodes (mode 2) are dropped unless
    ``include_muted``; a bypassed node (mode 4) passes each output through
    from its input of the same type. Widget values become named inputs
    (control_after_generate entries skipped); a linked widget takes the link.
    """
    by_id = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}

    def active(node: dict) -> bool:
        mode = node.get("mode", MODE_NORMAL)
        return node["type"] not in NOTE_TYPES and (mode == MODE_NORMAL or (include_muted and mode == MODE_MUTED))

    def source(link_id: int) -> list | None:
        """``[origin id, slot]`` of a link, following bypassed nodes; None if the origin is dropped."""
        _, origin, slot, _, _, kind = links[link_id]
        node = by_id[origin]
        if node.get("mode") == MODE_BYPASSED:
            # Like the frontend: the input in the same slot if it has the type, else the first that has.
            candidates = [i for i in node.get("inputs", []) if i["type"] == kind and i.get("link") is not None]
            inputs = node.get("inputs", [])
            if slot < len(inputs) and inputs[slot] in candidates:
                candidates.insert(0, inputs[slot])
            return source(candidates[0]["link"]) if candidates else None
        return [str(origin), slot] if active(node) else None

    prompt: dict[str, dict] = {}
    for node in workflow["nodes"]:
        if not active(node):
            continue
        inputs: dict[str, Any] = {}
        linked = set()
        for slot in node.get("inputs", []):
            if slot.get("link") is None:
                continue
            linked.add(slot["name"])
            origin = source(slot["link"])
            if origin is not None:
                inputs[slot["name"]] = origin
        for name, value in named_widget_values(node).items():
            if name not in linked:
                inputs[name] = value
        title = node.get("title") or harness.node_info(node["type"]).get("display_name") or node["type"]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs, "_meta": {"title": title}}
    return prompt


def node_ids(prompt: dict, class_type: str) -> list[str]:
    """Ids of the prompt's nodes of ``class_type``, in prompt order."""
    return [k for k, v in prompt.items() if v["class_type"] == class_type]


def one(prompt: dict, class_type: str) -> str:
    found = node_ids(prompt, class_type)
    assert len(found) == 1, f"expected one {class_type}, found {found}"
    return found[0]


def literal(prompt: dict, node_id: str, name: str):
    """An input's value, following links to primitive nodes (PrimitiveInt & co.)."""
    value = prompt[node_id]["inputs"][name]
    if isinstance(value, list):
        origin = prompt[value[0]]
        assert origin["class_type"].startswith("Primitive"), f"{name} comes from {origin['class_type']}"
        return origin["inputs"]["value"]
    return value


def set_literal(prompt: dict, node_id: str, name: str, value) -> None:
    """Set an input, or the primitive node it is linked from."""
    current = prompt[node_id]["inputs"][name]
    if isinstance(current, list):
        prompt[current[0]]["inputs"]["value"] = value
    else:
        prompt[node_id]["inputs"][name] = value


_STEP_NODES = ("KSampler", "KSamplerAdvanced", "BasicScheduler", "MeanCachePlanner")


def swap_to_tiny(
    prompt: dict,
    *,
    image_size: int = 128,
    steps: int | None = None,
    tokens: int = 8,
    family: str = "zimage",
    video_length: int = 9,
) -> dict[str, dict]:
    """A copy of a prompt for ``family`` (a :data:`TINY_BUILDERS` key) that runs on the test-only tiny nodes.

    UNETLoader -> :class:`TinyZImageTestLoader` of ``family``; CLIPTextEncode ->
    :class:`TinyZImageTestTextEncode` (``tokens`` tokens each); VAEDecode ->
    :class:`TinyTestImageDecode`; CLIPLoader, DualCLIPLoader and VAELoader go
    (nothing else may use them); EmptySD3LatentImage and EmptyHunyuanLatentVideo
    make ``image_size`` pixel images (128 -> a 16x16 latent), the video one
    ``video_length`` frames (9 -> 3 latent frames). ``steps`` overrides the steps
    of every sampler, scheduler and planner (and their shared primitive) alike.
    """
    api = copy.deepcopy(prompt)
    dropped = set(node_ids(api, "CLIPLoader") + node_ids(api, "DualCLIPLoader") + node_ids(api, "VAELoader"))
    for node in api.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "UNETLoader":
            node["class_type"] = TINY_LOADER
            inputs["family"] = family
        elif kind == "CLIPTextEncode":
            node["class_type"], node["inputs"] = TINY_TEXT, {"text": inputs["text"], "tokens": tokens, "family": family}
        elif kind == "VAEDecode":
            node["class_type"], node["inputs"] = TINY_DECODE, {"samples": inputs["samples"]}
        elif kind == "EmptySD3LatentImage":
            inputs.update(width=image_size, height=image_size)
        elif kind == "EmptyHunyuanLatentVideo":
            inputs.update(width=image_size, height=image_size, length=video_length)
    for node_id in dropped:
        del api[node_id]
    for node_id, node in api.items():
        for name, value in node["inputs"].items():
            assert not (isinstance(value, list) and value[0] in dropped), f"{node_id}.{name} still uses {value[0]}"
    if steps is not None:
        for node_id, node in api.items():
            if node["class_type"] in _STEP_NODES:
                set_literal(api, node_id, "steps", steps)
    return api


# --------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------


class StubServer:
    """What ``PromptExecutor`` and nodes use of ``server.PromptServer``, recording every message."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict = {}  # no client announced feature flags (binary previews off)
        self.messages: list[tuple[Any, Any]] = []
        self.texts: list[tuple[str, str]] = []  # (node id, text) from send_progress_text

    def send_sync(self, event, data, sid=None) -> None:
        self.messages.append((event, data))

    def send_progress_text(self, text, node_id, sid=None) -> None:
        self.texts.append((str(node_id), text.decode("utf-8") if isinstance(text, bytes) else str(text)))

    def queue_updated(self) -> None:
        pass


class PromptValidationError(AssertionError):
    """``execution.validate_prompt`` refused the prompt (or some of its outputs)."""

    def __init__(self, error: dict | None, node_errors: dict) -> None:
        self.error, self.node_errors = error, node_errors
        super().__init__(f"prompt failed validation: {error}\nnode errors: {node_errors}")


@dataclass
class RunResult:
    """One queued prompt: what ran, what was cached, outputs, ui, texts and model forwards."""

    prompt_id: str
    success: bool
    executed: list[str]  # nodes that ran ("executing" messages)
    cached: list[str]  # nodes served from the output cache ("execution_cached")
    outputs: dict[str, list]  # node id -> outputs (one list per socket); ran or cached (classic/LRU)
    ui: dict[str, dict]  # history outputs: node id -> ui dict
    texts: dict[str, list[str]]  # node id -> progress texts (e.g. MeanCache Report's summary)
    calls: list[ProbeCall]  # diffusion-model forwards during this run
    messages: list[tuple[Any, Any]] = field(repr=False, default_factory=list)

    @property
    def error(self) -> dict | None:
        return next((data for event, data in self.messages if event == "execution_error"), None)

    def output(self, node_id: str, index: int = 0):
        """The first value of output ``index`` of ``node_id``."""
        return self.outputs[node_id][index][0]

    def text(self, node_id: str) -> str:
        return self.texts[node_id][-1]

    def raise_for_error(self) -> RunResult:
        if not self.success:
            err = self.error or {}
            raise AssertionError(
                f"prompt failed at node {err.get('node_id')} ({err.get('node_type')}): "
                f"{err.get('exception_message')}\n{''.join(err.get('traceback', []))}"
            )
        return self


CACHE_TYPES = {
    "classic": execution.CacheType.CLASSIC,
    "lru": execution.CacheType.LRU,
    "none": execution.CacheType.NONE,
}


@contextlib.contextmanager
def comfy_dirs(root: Path) -> Iterator[Path]:
    """ComfyUI's output, temp and user folders under ``root`` for the duration (restored after)."""
    root = Path(root)
    saved = (folder_paths.get_output_directory(), folder_paths.get_temp_directory(), folder_paths.get_user_directory())
    for sub in ("output", "temp", "user"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    folder_paths.set_output_directory(str(root / "output"))
    folder_paths.set_temp_directory(str(root / "temp"))
    folder_paths.set_user_directory(str(root / "user"))
    try:
        yield root
    finally:
        folder_paths.set_output_directory(saved[0])
        folder_paths.set_temp_directory(saved[1])
        folder_paths.set_user_directory(saved[2])


@contextlib.contextmanager
def _as_prompt_server(stub: StubServer) -> Iterator[None]:
    """Make ``server.PromptServer.instance`` the stub while a prompt runs (nodes send texts there)."""
    import server

    missing = object()
    before = getattr(server.PromptServer, "instance", missing)
    server.PromptServer.instance = stub
    try:
        yield
    finally:
        if before is missing:
            del server.PromptServer.instance
        else:
            server.PromptServer.instance = before


class ComfyExecutor:
    """One ComfyUI ``PromptExecutor`` (so one output cache) driven like the prompt worker does.

    ``cache``: ``"classic"`` (ComfyUI's default), ``"lru"`` (``--cache-lru
    lru_size``) or ``"none"`` (``--cache-none``). The test-only nodes must be
    installed (:func:`test_nodes_installed`) to run swapped prompts.
    """

    def __init__(self, cache: str = "classic", *, lru_size: int = 10, client_id: str = "meancache-tests") -> None:
        ensure_loaded()
        self.cache = cache
        self.server = StubServer()
        self.client_id = client_id
        self.executor = execution.PromptExecutor(
            self.server, cache_type=CACHE_TYPES[cache], cache_args={"lru": lru_size, "ram": 0.0}
        )
        self._captured: dict[str, list] = {}

    def _capture_outputs(self) -> None:
        """Record every node's outputs as the engine stores them (also with ``--cache-none``).

        ``execute`` hands each result to ``caches.outputs.set``; wrapping that
        method on this executor's cache object sees results in every cache
        mode without touching ComfyUI's module code.
        """
        cache = self.executor.caches.outputs
        if getattr(cache, "_meancache_test_capture", None) is self._captured:
            return
        original = cache.set

        def recording_set(node_id, value):
            self._captured[str(node_id)] = value.outputs
            return original(node_id, value)

        cache.set = recording_set
        cache._meancache_test_capture = self._captured

    def validate(self, prompt: dict, prompt_id: str = "validate") -> list[str]:
        """Run ComfyUI's ``validate_prompt``; returns the output node ids, raises on any error."""
        ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not ok or node_errors:
            raise PromptValidationError(error, node_errors)
        return list(outputs)

    def run(self, prompt: dict, *, validate: bool = True, keep_outputs: bool = True) -> RunResult:
        """Validate and execute ``prompt`` (API format) as one queue item."""
        # The server parses each queued prompt afresh; the executor writes into it (each node's
        # fingerprint_inputs result), so re-running one dict would reuse stale fingerprints.
        prompt = copy.deepcopy(prompt)
        prompt_id = uuid.uuid4().hex
        outputs = (
            self.validate(prompt, prompt_id)
            if validate
            else [k for k, v in prompt.items() if getattr(nodes.NODE_CLASS_MAPPINGS[v["class_type"]], "OUTPUT_NODE", 0)]
        )
        self.server.messages.clear()
        self.server.texts.clear()
        self._captured.clear()
        self._capture_outputs()
        first_call = len(PROBE.calls)
        with _as_prompt_server(self.server):
            self.executor.execute(prompt, prompt_id, {"client_id": self.client_id}, outputs)
        messages = list(self.server.messages)
        executed = [d["node"] for e, d in messages if e == "executing" and d.get("node") is not None]
        cached = next((list(d["nodes"]) for e, d in messages if e == "execution_cached"), [])
        texts: dict[str, list[str]] = {}
        for node_id, text in self.server.texts:
            texts.setdefault(node_id, []).append(text)
        results: dict[str, list] = {}
        if keep_outputs:
            results = dict(self._captured)
            for node_id in prompt:
                entry = self.executor.caches.outputs.get(node_id) if node_id not in results else None
                if entry is not None:
                    results[node_id] = entry.outputs
        self._captured.clear()
        return RunResult(
            prompt_id=prompt_id,
            success=self.executor.success,
            executed=executed,
            cached=cached,
            outputs=results,
            ui=dict(self.executor.history_result.get("outputs", {})),
            texts=texts,
            calls=PROBE.calls[first_call:],
            messages=messages,
        )
