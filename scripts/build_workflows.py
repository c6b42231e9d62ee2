"""Writes the example workflows in workflows/ (UI format 0.4, as ComfyUI frontend 1.35.9 saves them).

Why a generator: links, slots, node order and ids stay consistent by
construction; the JSON it writes is committed and is what ComfyUI serves
under Workflow > Browse Templates. Standard library only::

    python scripts/build_workflows.py              # rewrite the JSON files
    python scripts/make_thumbnails.py              # then the same-stem .jpg thumbnails

``tests/comfyui/test_workflows.py`` checks every node, link and widget value
against the real node definitions and runs each workflow on a tiny model.
Model file names and loader settings follow ComfyUI's own Z-Image templates
(comfyui_workflow_templates: text encoder qwen_3_4b.safetensors as lumina2,
VAE ae.safetensors, ModelSamplingAuraFlow shift 3); the diffusion model is
the Z-Image base checkpoint, which is what 40-step, cfg 4 sampling is for.
The Flux dev, Qwen-Image and Wan 2.2 workflows take their model files,
loader types, shifts and sampler settings from ComfyUI's own templates for
those models (flux_dev_full_text_to_image, image_qwen_image,
video_wan2_2_14B_t2v without the 4-step LoRAs).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from comfy_meancache.core.presets import DEFAULT_PRESET, PRESETS  # noqa: E402

HERE = ROOT / "workflows"
FRONTEND_VERSION = "1.35.9"
CORE_VERSION = "0.8.0"
PACK_ID, PACK_VERSION = "comfy-meancache", "0.1.0"

# Socket inputs (name, type, optional) and outputs (name, type) of each node type used.
# Widgets are not listed: their values are given positionally per node.
SPECS: dict[str, tuple[list[tuple[str, str, bool]], list[tuple[str, str]]]] = {
    "UNETLoader": ([], [("MODEL", "MODEL")]),
    "CLIPLoader": ([], [("CLIP", "CLIP")]),
    "DualCLIPLoader": ([], [("CLIP", "CLIP")]),
    "VAELoader": ([], [("VAE", "VAE")]),
    "ModelSamplingAuraFlow": ([("model", "MODEL", False)], [("MODEL", "MODEL")]),
    "ModelSamplingSD3": ([("model", "MODEL", False)], [("MODEL", "MODEL")]),
    "FluxGuidance": ([("conditioning", "CONDITIONING", False)], [("CONDITIONING", "CONDITIONING")]),
    "ConditioningZeroOut": ([("conditioning", "CONDITIONING", False)], [("CONDITIONING", "CONDITIONING")]),
    "EmptyHunyuanLatentVideo": ([], [("LATENT", "LATENT")]),
    "KSamplerAdvanced": (
        [
            ("model", "MODEL", False),
            ("positive", "CONDITIONING", False),
            ("negative", "CONDITIONING", False),
            ("latent_image", "LATENT", False),
        ],
        [("LATENT", "LATENT")],
    ),
    "CreateVideo": ([("images", "IMAGE", False), ("audio", "AUDIO", True)], [("VIDEO", "VIDEO")]),
    "SaveVideo": ([("video", "VIDEO", False)], []),
    "CLIPTextEncode": ([("clip", "CLIP", False)], [("CONDITIONING", "CONDITIONING")]),
    "EmptySD3LatentImage": ([], [("LATENT", "LATENT")]),
    "PrimitiveInt": ([], [("INT", "INT")]),
    "KSampler": (
        [
            ("model", "MODEL", False),
            ("positive", "CONDITIONING", False),
            ("negative", "CONDITIONING", False),
            ("latent_image", "LATENT", False),
        ],
        [("LATENT", "LATENT")],
    ),
    "VAEDecode": ([("samples", "LATENT", False), ("vae", "VAE", False)], [("IMAGE", "IMAGE")]),
    "SaveImage": ([("images", "IMAGE", False)], []),
    "BasicScheduler": ([("model", "MODEL", False)], [("SIGMAS", "SIGMAS")]),
    "KSamplerSelect": ([], [("SAMPLER", "SAMPLER")]),
    "RandomNoise": ([], [("NOISE", "NOISE")]),
    "CFGGuider": (
        [("model", "MODEL", False), ("positive", "CONDITIONING", False), ("negative", "CONDITIONING", False)],
        [("GUIDER", "GUIDER")],
    ),
    "SamplerCustomAdvanced": (
        [
            ("noise", "NOISE", False),
            ("guider", "GUIDER", False),
            ("sampler", "SAMPLER", False),
            ("sigmas", "SIGMAS", False),
            ("latent_image", "LATENT", False),
        ],
        [("output", "LATENT"), ("denoised_output", "LATENT")],
    ),
    "MeanCachePlanner": (
        [("model", "MODEL", False), ("sigmas", "SIGMAS", True)],
        [("schedule", "MEANCACHE_SCHEDULE"), ("plan_chart", "IMAGE"), ("summary", "STRING")],
    ),
    "MeanCacheApply": (
        [("model", "MODEL", False), ("schedule", "MEANCACHE_SCHEDULE", False)],
        [("model", "MODEL"), ("stats", "MEANCACHE_STATS")],
    ),
    "MeanCacheCalibrate": ([("model", "MODEL", False)], [("model", "MODEL"), ("stats", "MEANCACHE_STATS")]),
    "MeanCacheReport": (
        [
            ("latent", "LATENT", False),
            ("stats", "MEANCACHE_STATS", True),
            ("images", "IMAGE", True),
            ("schedule", "MEANCACHE_SCHEDULE", True),
        ],
        [("chart", "IMAGE"), ("summary", "STRING")],
    ),
    "MarkdownNote": ([], []),
}

HF = "https://huggingface.co/Comfy-Org"
MODELS = {
    "UNETLoader": (
        "z_image_bf16.safetensors",
        f"{HF}/z_image/resolve/main/split_files/diffusion_models/z_image_bf16.safetensors",
        "diffusion_models",
    ),
    "CLIPLoader": (
        "qwen_3_4b.safetensors",
        f"{HF}/z_image_turbo/resolve/main/split_files/text_encoders/qwen_3_4b.safetensors",
        "text_encoders",
    ),
    "VAELoader": ("ae.safetensors", f"{HF}/z_image_turbo/resolve/main/split_files/vae/ae.safetensors", "vae"),
}

STEPS, CFG, SEED = 40, 4.0, 42
POSITIVE = (
    "A cozy reading nook by a rain-streaked window at dusk, warm lamp light, a ginger cat asleep on a stack "
    "of old books, steam rising from a mug of tea, soft film grain, 35mm photograph, shallow depth of field."
)
NEGATIVE = "blurry, low quality, jpeg artifacts, distorted, deformed, watermark, text, signature"
_DEFAULT = PRESETS[DEFAULT_PRESET]  # the Planner's widgets show the preset's own values, so they never drift
PLANNER_BALANCED = [
    DEFAULT_PRESET,
    STEPS,
    "simple",
    1.0,
    0,
    _DEFAULT.speedup,
    _DEFAULT.settings.gamma,
    _DEFAULT.settings.warmup,
    _DEFAULT.settings.max_gap,
    _DEFAULT.estimator,
    "auto",
]
KSAMPLER = [SEED, "randomize", STEPS, CFG, "euler", "simple", 1.0]
NOTE_COLORS = {"color": "#432", "bgcolor": "#653"}
POSITIVE_COLORS = {"color": "#232", "bgcolor": "#353"}
NEGATIVE_COLORS = {"color": "#322", "bgcolor": "#533"}


def model_files_section(intro: str, files: list[tuple[str, str, str]]) -> str:
    """The note's "Model files" part: a download table and the folder tree, from (name, url, folder) triples."""
    rows = "\n".join(f"| [{name}]({url}) | `ComfyUI/models/{folder}/` |" for name, url, folder in files)
    folders: dict[str, list[str]] = {}
    for name, _, folder in files:
        folders.setdefault(folder, []).append(name)
    tree = [
        f"    {'└──' if i == len(folders) - 1 else '├──'} {(folder + '/').ljust(19)}{', '.join(names)}"
        for i, (folder, names) in enumerate(folders.items())
    ]
    tree_text = "\n".join(tree)
    return f"""## Model files

{intro}

| file | put it in |
| --- | --- |
{rows}

```
ComfyUI/
└── models/
{tree_text}
```
"""


MODEL_FILES = model_files_section(
    "The same files as ComfyUI's Z-Image templates (the text encoder and VAE are shared with Z-Image Turbo):",
    [MODELS["UNETLoader"], MODELS["CLIPLoader"], MODELS["VAELoader"]],
)

T2I_NOTE = f"""# MeanCache: Z-Image text to image

MeanCache skips whole sampling steps: the **Planner** picks which of the {STEPS} steps call the model, and
**Apply** patches the model so that the other steps estimate their velocity from the cached history
instead. Preset *balanced* makes {STEPS} steps cost about {round(STEPS / 2.5)} model calls (2.5x).

{MODEL_FILES}
## How to use

1. **Steps** feeds the Planner and the KSampler, so they always agree. If you change the KSampler's
   scheduler or denoise, set the same on the Planner.
2. Pick a **preset**: quality 2x, balanced 2.5x, speed 3.3x, turbo 4x (fewer model calls, more drift).
   *custom* unlocks compute steps / speedup, gamma, warm-up, maximum gap and the estimator.
3. Queue. The console prints one line per run, e.g.
   `[MeanCache] balanced: {STEPS} steps -> {round(STEPS / 2.5)} model calls (2.50x) ...`, and
   **MeanCache Report** charts which steps were computed, skipped or fell back.
4. Compare with plain sampling: set the KSampler's *control after generate* to **fixed**, queue, then
   select **MeanCache Apply**, bypass it (Ctrl+B) and queue again: the second image is the full
   {STEPS}-step result for the same seed, and the Report says the run was uncached.

Samplers: euler, ddim, dpmpp_2m, res_multistep, uni_pc and the other one-evaluation samplers are cached;
heun / dpm_2 always compute their extra evaluations; ancestral and SDE samplers run uncached (one
warning in the log). The Planner's cost source *auto* learns your model as you sample: the first run
spreads the calls evenly at high noise and plans its low-noise half for flat curvature, every cached
run records how the model's velocity bends (no extra model call) in `ComfyUI/user/meancache/auto/`,
and later runs plan from it. To measure instead, calibrate once (zimage_calibrate workflow).
Z-Image Turbo samples in about 8 steps, which leaves little to skip: MeanCache is meant for the base
model's 30 to 50 steps.
"""

CALIBRATE_NOTE = f"""# MeanCache: calibrate Z-Image

**MeanCache Calibrate** samples every step (nothing is skipped) and adds each finished run to a named
profile in `ComfyUI/user/meancache/` (`zimage-base.json` + `.safetensors`). The Planner can then price its
skips with measurements from *your* model instead of spreading the calls evenly.

{MODEL_FILES}
## Step 1: record runs (this group)

1. Set the KSampler as you normally sample ({STEPS} steps, cfg {CFG:g}, euler, simple here).
2. Queue **3 to 5 times** with different prompts; the seed is randomized after each run.
   More runs average into the same profile. The Report shows the profile's measured costs.

## Step 2: plan from the profile (the muted group below)

1. Press **R** (refresh node definitions) so the new profile appears in the Planner's *cost_source* list.
2. Mute Step 1's nodes and unmute Step 2's (select them, **Ctrl+M**), then queue.
   In any workflow, choose `zimage-base` as the MeanCache Planner's **cost_source**.

A profile is made on one sigma grid but plans any steps / scheduler / denoise (interpolated in sigma);
it is best for the model, shift and cfg it was recorded with.
"""

CUSTOM_NOTE = f"""# MeanCache: SamplerCustomAdvanced

The custom-sampling route: **BasicScheduler**'s SIGMAS go to both the sampler and the MeanCache
**Planner** (its optional `sigmas` input), so the plan is made on exactly the sigmas that are
sampled; the Planner's steps / scheduler / denoise widgets are then ignored. **MeanCache Apply**
patches the model before **CFGGuider**. Anything that produces SIGMAS works the same way (other
schedulers, SplitSigmas halves: plan each half you sample with its own Planner).

{MODEL_FILES}
The Report shows the plan, what ran, and any planned skips that had to be computed.
"""


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[float, float]
    size: tuple[float, float]
    widgets_values: list
    title: str | None = None
    mode: int = 0
    colors: dict = field(default_factory=dict)
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    models: tuple[tuple[str, str, str], ...] = ()  # (name, url, folder) of the files a loader loads

    def as_json(self, order: int) -> dict:
        core = not self.type.startswith("MeanCache")
        properties = {}
        if self.type != "MarkdownNote":
            properties = {
                "Node name for S&R": self.type,
                "cnr_id": "comfy-core" if core else PACK_ID,
                "ver": CORE_VERSION if core else PACK_VERSION,
            }
        if self.models:
            properties["models"] = [{"name": n, "url": u, "directory": d} for n, u, d in self.models]
        data = {
            "id": self.id,
            "type": self.type,
            "pos": list(self.pos),
            "size": list(self.size),
            "flags": {},
            "order": order,
            "mode": self.mode,
            "inputs": self.inputs,
            "outputs": self.outputs,
        }
        if self.title:
            data["title"] = self.title
        data["properties"] = properties
        data["widgets_values"] = self.widgets_values
        data.update(self.colors)
        return data


class Graph:
    """Nodes, links and groups of one workflow, serialised as frontend 1.35.9 does."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.links: list[list] = []
        self.groups: list[dict] = []

    def add(self, type_: str, pos, size, widgets=(), *, title=None, mode=0, colors=None, models=()) -> Node:
        sockets, outputs = SPECS[type_]
        node = Node(len(self.nodes) + 1, type_, tuple(pos), tuple(size), list(widgets), title, mode, colors or {})
        node.models = tuple(models)
        for name, kind, optional in sockets:
            entry = {"name": name, "type": kind, "link": None}
            if optional:
                entry["shape"] = 7  # how the frontend marks an optional socket
            node.inputs.append(entry)
        node.outputs = [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)]
        self.nodes.append(node)
        return node

    def link(self, origin: Node, slot: int, target: Node, name: str) -> None:
        """Connect ``origin`` output ``slot`` to ``target`` input ``name`` (a socket, or a widget it converts)."""
        kind = origin.outputs[slot]["type"]
        entry = next((i for i in target.inputs if i["name"] == name), None)
        if entry is None:  # a widget driven by a link: the frontend adds it with widget.name
            entry = {"name": name, "type": kind, "widget": {"name": name}, "link": None}
            target.inputs.append(entry)
        assert entry["link"] is None, f"{target.type}.{name} already linked"
        link_id = len(self.links) + 1
        entry["link"] = link_id
        origin.outputs[slot]["links"].append(link_id)
        self.links.append([link_id, origin.id, slot, target.id, target.inputs.index(entry), kind])

    def group(self, title: str, members: list[Node], color: str = "#3f789e") -> None:
        x0 = min(n.pos[0] for n in members) - 20
        y0 = min(n.pos[1] for n in members) - 60
        x1 = max(n.pos[0] + n.size[0] for n in members) + 20
        y1 = max(n.pos[1] + n.size[1] for n in members) + 20
        self.groups.append(
            {
                "id": len(self.groups) + 1,
                "title": title,
                "bounding": [x0, y0, x1 - x0, y1 - y0],
                "color": color,
                "font_size": 24,
                "flags": {},
            }
        )

    def _order(self) -> dict[int, int]:
        """Execution order the frontend stores: a topological order, unlinked nodes first."""
        indegree = {n.id: 0 for n in self.nodes}
        for link in self.links:
            indegree[link[3]] += 1
        ready = sorted(i for i, d in indegree.items() if d == 0)
        order = []
        while ready:
            current = ready.pop(0)
            order.append(current)
            for link in self.links:
                if link[1] == current:
                    indegree[link[3]] -= 1
                    if indegree[link[3]] == 0:
                        ready.append(link[3])
        assert len(order) == len(self.nodes), "cycle in the graph"
        return {node_id: i for i, node_id in enumerate(order)}

    def as_json(self, workflow_id: str) -> dict:
        order = self._order()
        return {
            "id": workflow_id,
            "revision": 0,
            "last_node_id": max(n.id for n in self.nodes),
            "last_link_id": len(self.links),
            "nodes": [n.as_json(order[n.id]) for n in self.nodes],
            "links": self.links,
            "groups": self.groups,
            "config": {},
            "extra": {"ds": {"scale": 0.6, "offset": [480, 120]}, "frontendVersion": FRONTEND_VERSION},
            "version": 0.4,
        }


def _inputs_block(g: Graph, x: float = 40, with_steps: bool = False):
    """Loaders, latent, shift and the two prompts every workflow here shares."""
    unet = g.add("UNETLoader", (x, 80), (320, 82), [MODELS["UNETLoader"][0], "default"], models=[MODELS["UNETLoader"]])
    clip = g.add(
        "CLIPLoader",
        (x, 210),
        (320, 106),
        [MODELS["CLIPLoader"][0], "lumina2", "default"],
        models=[MODELS["CLIPLoader"]],
    )
    vae = g.add("VAELoader", (x, 360), (320, 58), [MODELS["VAELoader"][0]], models=[MODELS["VAELoader"]])
    latent = g.add("EmptySD3LatentImage", (x, 470), (320, 106), [1024, 1024, 1])
    steps = None
    if with_steps:
        steps = g.add("PrimitiveInt", (x, 630), (320, 82), [STEPS, "fixed"], title="Steps (Planner + KSampler)")
    shift = g.add("ModelSamplingAuraFlow", (x + 400, 80), (320, 58), [3])
    positive = g.add(
        "CLIPTextEncode", (x + 400, 190), (420, 210), [POSITIVE], title="Positive prompt", colors=POSITIVE_COLORS
    )
    negative = g.add(
        "CLIPTextEncode", (x + 400, 440), (420, 150), [NEGATIVE], title="Negative prompt", colors=NEGATIVE_COLORS
    )
    g.link(unet, 0, shift, "model")
    g.link(clip, 0, positive, "clip")
    g.link(clip, 0, negative, "clip")
    g.group("Models and image size", [unet, clip, vae, latent] + ([steps] if steps else []))
    g.group("Model shift and prompts", [shift, positive, negative])
    return unet, clip, vae, latent, steps, shift, positive, negative


def _sample_and_report(
    g,
    x,
    y,
    model,
    positive,
    negative,
    latent,
    vae,
    stats,
    schedule=None,
    *,
    mode=0,
    prefix="z-image-meancache",
    steps_node=None,
    ksampler=KSAMPLER,
):
    """KSampler -> VAEDecode -> SaveImage, and a Report fed by the latent and the images."""
    sampler = g.add("KSampler", (x, y), (320, 262), ksampler, mode=mode)
    decode = g.add("VAEDecode", (x, y + 310), (210, 46), mode=mode)
    save = g.add("SaveImage", (x + 380, y), (520, 560), [prefix], mode=mode)
    report = g.add("MeanCacheReport", (x, y + 610), (900, 600), mode=mode)
    g.link(model, 0, sampler, "model")
    g.link(positive, 0, sampler, "positive")
    g.link(negative, 0, sampler, "negative")
    g.link(latent, 0, sampler, "latent_image")
    if steps_node is not None:
        g.link(steps_node, 0, sampler, "steps")
    g.link(sampler, 0, decode, "samples")
    g.link(vae, 0, decode, "vae")
    g.link(decode, 0, save, "images")
    g.link(stats[0], stats[1], report, "stats")
    g.link(sampler, 0, report, "latent")
    g.link(decode, 0, report, "images")
    if schedule is not None:
        g.link(schedule, 0, report, "schedule")
    return sampler, decode, save, report


def t2i() -> dict:
    g = Graph()
    note = g.add(
        "MarkdownNote", (-500, 60), (480, 900), [T2I_NOTE], title="Read me: MeanCache for Z-Image", colors=NOTE_COLORS
    )
    _, _, vae, latent, steps, shift, positive, negative = _inputs_block(g, with_steps=True)
    planner = g.add("MeanCachePlanner", (900, 80), (340, 430), PLANNER_BALANCED)
    apply_ = g.add("MeanCacheApply", (900, 560), (340, 102), [False, "model device"])
    g.link(shift, 0, planner, "model")
    g.link(steps, 0, planner, "steps")
    g.link(shift, 0, apply_, "model")
    g.link(planner, 0, apply_, "schedule")
    g.group("MeanCache", [planner, apply_])
    nodes = _sample_and_report(
        g, 1300, 80, apply_, positive, negative, latent, vae, (apply_, 1), planner, steps_node=steps
    )
    g.group("Sample, save and report", list(nodes))
    assert note.id == 1
    return g.as_json("7d0f3c52-8a41-4e55-9b6b-2b0c3a9e6a01")


def calibrate() -> dict:
    g = Graph()
    g.add(
        "MarkdownNote",
        (-500, 60),
        (480, 1000),
        [CALIBRATE_NOTE],
        title="Read me: calibrate MeanCache",
        colors=NOTE_COLORS,
    )
    _, _, vae, latent, _, shift, positive, negative = _inputs_block(g)
    calib = g.add("MeanCacheCalibrate", (900, 80), (340, 82), ["zimage-base"])
    g.link(shift, 0, calib, "model")
    step1 = _sample_and_report(
        g, 1300, 80, calib, positive, negative, latent, vae, (calib, 1), prefix="z-image-calibration"
    )
    g.group("Step 1: record full-step runs into the profile (queue 3-5 times)", [calib, *step1], color="#8A8")

    # Step 2, muted: the same sampling, planned from the profile.
    y = 1400
    planner = g.add("MeanCachePlanner", (900, y), (340, 430), PLANNER_BALANCED[:-1] + ["zimage-base"], mode=2)
    apply_ = g.add("MeanCacheApply", (900, y + 480), (340, 102), [False, "model device"], mode=2)
    g.link(shift, 0, planner, "model")
    g.link(shift, 0, apply_, "model")
    g.link(planner, 0, apply_, "schedule")
    step2 = _sample_and_report(g, 1300, y, apply_, positive, negative, latent, vae, (apply_, 1), planner, mode=2)
    g.group(
        "Step 2 (muted, Ctrl+M to enable): sample with a plan from the profile", [planner, apply_, *step2], color="#88A"
    )
    return g.as_json("3c1b9e07-5d2f-4c8e-a7a4-6f1e2d9b8c02")


def custom_sampler() -> dict:
    g = Graph()
    g.add(
        "MarkdownNote",
        (-500, 60),
        (480, 760),
        [CUSTOM_NOTE],
        title="Read me: MeanCache with custom sampling",
        colors=NOTE_COLORS,
    )
    _, _, vae, latent, _, shift, positive, negative = _inputs_block(g)
    scheduler = g.add("BasicScheduler", (900, 80), (340, 106), ["simple", STEPS, 1.0])
    planner = g.add("MeanCachePlanner", (900, 240), (340, 450), PLANNER_BALANCED)
    apply_ = g.add("MeanCacheApply", (900, 740), (340, 102), [False, "model device"])
    g.link(shift, 0, scheduler, "model")
    g.link(shift, 0, planner, "model")
    g.link(scheduler, 0, planner, "sigmas")
    g.link(shift, 0, apply_, "model")
    g.link(planner, 0, apply_, "schedule")
    g.group("Sigmas and MeanCache", [scheduler, planner, apply_])

    x = 1300
    noise = g.add("RandomNoise", (x, 80), (320, 82), [SEED, "randomize"])
    select = g.add("KSamplerSelect", (x, 200), (320, 58), ["euler"])
    guider = g.add("CFGGuider", (x, 300), (320, 98), [CFG])
    sampler = g.add("SamplerCustomAdvanced", (x, 440), (320, 106))
    decode = g.add("VAEDecode", (x, 600), (210, 46))
    save = g.add("SaveImage", (x + 380, 80), (520, 560), ["z-image-meancache-custom"])
    report = g.add("MeanCacheReport", (x, 700), (900, 600))
    g.link(apply_, 0, guider, "model")
    g.link(positive, 0, guider, "positive")
    g.link(negative, 0, guider, "negative")
    g.link(noise, 0, sampler, "noise")
    g.link(guider, 0, sampler, "guider")
    g.link(select, 0, sampler, "sampler")
    g.link(scheduler, 0, sampler, "sigmas")
    g.link(latent, 0, sampler, "latent_image")
    g.link(sampler, 0, decode, "samples")
    g.link(vae, 0, decode, "vae")
    g.link(decode, 0, save, "images")
    g.link(apply_, 1, report, "stats")
    g.link(sampler, 0, report, "latent")
    g.link(decode, 0, report, "images")
    g.link(planner, 0, report, "schedule")
    g.group("Sample, save and report", [noise, select, guider, sampler, decode, save, report])
    return g.as_json("b5e4a0d1-2c6f-4f0b-8d3e-9a7c1f2e4b03")


# --------------------------------------------------------------------------
# Other families: files and settings of ComfyUI's own templates for them
# --------------------------------------------------------------------------

HF_FLUX, HF_QWEN = f"{HF}/flux1-dev/resolve/main", f"{HF}/Qwen-Image_ComfyUI/resolve/main/split_files"
HF_WAN22 = f"{HF}/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
FLUX_FILES = {
    "unet": ("flux1-dev.safetensors", f"{HF_FLUX}/flux1-dev.safetensors", "diffusion_models"),
    "clip_l": (
        "clip_l.safetensors",
        "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
        "text_encoders",
    ),
    "t5": (
        "t5xxl_fp16.safetensors",
        "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
        "text_encoders",
    ),
    "vae": MODELS["VAELoader"],
}
QWEN_FILES = {
    "unet": (
        "qwen_image_fp8_e4m3fn.safetensors",
        f"{HF_QWEN}/diffusion_models/qwen_image_fp8_e4m3fn.safetensors",
        "diffusion_models",
    ),
    "clip": (
        "qwen_2.5_vl_7b_fp8_scaled.safetensors",
        f"{HF_QWEN}/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors",
        "text_encoders",
    ),
    "vae": ("qwen_image_vae.safetensors", f"{HF_QWEN}/vae/qwen_image_vae.safetensors", "vae"),
}
WAN22_FILES = {
    "high": (
        "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
        f"{HF_WAN22}/diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors",
        "diffusion_models",
    ),
    "low": (
        "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
        f"{HF_WAN22}/diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
        "diffusion_models",
    ),
    "clip": (
        "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        f"{HF}/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        "text_encoders",
    ),
    "vae": ("wan_2.1_vae.safetensors", f"{HF_WAN22}/vae/wan_2.1_vae.safetensors", "vae"),
}
FLUX_STEPS, QWEN_STEPS, QWEN_CFG = 30, 30, 2.5
WAN_STEPS, WAN_HANDOVER, WAN_CFG = 20, 10, 3.5
VIDEO_PROMPT = (
    "A red fox trotting through fresh snow in a birch forest at sunrise, breath visible in the cold air, "
    "snow falling from branches, slow tracking shot, cinematic, shallow depth of field."
)
VIDEO_NEGATIVE = "static, blurry, low quality, jpeg artifacts, distorted, deformed, extra limbs, watermark, text"

FLUX_NOTE = f"""# MeanCache: Flux dev text to image

The same chain as the Z-Image workflow: the **Planner** picks which of the {FLUX_STEPS} steps call the
model, **Apply** patches it, the KSampler samples, **MeanCache Report** shows what ran. Preset
*balanced*: about {round(FLUX_STEPS / 2.5)} model calls (2.5x).

Flux dev is guidance-distilled: **FluxGuidance** (3.5) sets the guidance the model reads, and the
KSampler runs at **cfg 1** (one model call per computed step; the zeroed negative is never evaluated).

{model_files_section("The same files as ComfyUI's Flux dev template:", list(FLUX_FILES.values()))}
Verified on a tiny random-weight Flux dev (call counts, every-step bit identity); quality on the real
model was not measured for this pack: compare with Apply bypassed (Ctrl+B) on a fixed seed.
"""

QWEN_NOTE = f"""# MeanCache: Qwen-Image text to image

The **Planner** picks which of the {QWEN_STEPS} steps call the model, **Apply** patches it, the KSampler
samples (cfg {QWEN_CFG:g}, shift 3.1 as in ComfyUI's Qwen-Image template), **MeanCache Report** shows
what ran. Preset *balanced*: about {round(QWEN_STEPS / 2.5)} model calls (2.5x).

{model_files_section("The same files as ComfyUI's Qwen-Image template:", list(QWEN_FILES.values()))}
Steps feed the Planner and the KSampler from one node. With the 8-step Lightning LoRA there is little
left to skip; MeanCache is for the base model's 20-50 steps. Verified on a tiny random-weight
Qwen-Image (call counts, bit identity); quality on the real model was not measured for this pack.
"""

WAN22_NOTE = f"""# MeanCache: Wan 2.2 14B text to video

Wan 2.2 A14B samples with two experts: the **high-noise** model runs steps 0-{WAN_HANDOVER} and
hands its noisy latent to the **low-noise** model for steps {WAN_HANDOVER}-{WAN_STEPS}, with two
KSamplerAdvanced as in ComfyUI's template. **One Planner** plans the whole {WAN_STEPS}-step run;
each expert gets its **own MeanCache Apply** of that plan, and each sampler runs its part of it.
**MeanCache Report** (fed by the low-noise sampler and its Apply) shows both parts as one run:
"fragment 2 of 2 of a {WAN_STEPS}-step plan ... all 2 fragments: ... model calls".

{model_files_section("The same files as ComfyUI's Wan 2.2 14B text-to-video template:", list(WAN22_FILES.values()))}
## How to use

1. **Steps** and **Hand-over step** feed the Planner and both samplers, so they always agree.
2. Video latents are large: the cached velocity history is three latents (about 55 MiB fp32 at 720p,
   81 frames; the log line and the Report give the measured peak). Set **cache_device** to `cpu` on
   both Apply nodes to keep it off the GPU.
3. Verified on tiny random-weight Wan models (call counts, bit identity, the split); quality on the
   real model was not measured for this pack: compare with both Apply nodes bypassed on a fixed seed.
"""


def _planner_and_apply(g: Graph, x: float, y: float, model: Node, steps: Node, preset: list) -> tuple[Node, Node]:
    planner = g.add("MeanCachePlanner", (x, y), (340, 430), preset)
    apply_ = g.add("MeanCacheApply", (x, y + 480), (340, 102), [False, "model device"])
    g.link(model, 0, planner, "model")
    g.link(steps, 0, planner, "steps")
    g.link(model, 0, apply_, "model")
    g.link(planner, 0, apply_, "schedule")
    g.group("MeanCache", [planner, apply_])
    return planner, apply_


def flux_t2i() -> dict:
    g = Graph()
    g.add(
        "MarkdownNote", (-500, 60), (480, 900), [FLUX_NOTE], title="Read me: MeanCache for Flux dev", colors=NOTE_COLORS
    )
    x = 40
    files = FLUX_FILES
    unet = g.add("UNETLoader", (x, 80), (320, 82), [files["unet"][0], "default"], models=[files["unet"]])
    clip = g.add(
        "DualCLIPLoader",
        (x, 210),
        (320, 130),
        [files["clip_l"][0], files["t5"][0], "flux", "default"],
        models=[files["clip_l"], files["t5"]],
    )
    vae = g.add("VAELoader", (x, 380), (320, 58), [files["vae"][0]], models=[files["vae"]])
    latent = g.add("EmptySD3LatentImage", (x, 490), (320, 106), [1024, 1024, 1])
    steps = g.add("PrimitiveInt", (x, 650), (320, 82), [FLUX_STEPS, "fixed"], title="Steps (Planner + KSampler)")
    positive = g.add(
        "CLIPTextEncode", (x + 400, 80), (420, 210), [POSITIVE], title="Positive prompt", colors=POSITIVE_COLORS
    )
    guidance = g.add("FluxGuidance", (x + 400, 330), (420, 58), [3.5])
    negative = g.add("ConditioningZeroOut", (x + 400, 440), (420, 26), title="Negative (unused at cfg 1)")
    g.link(clip, 0, positive, "clip")
    g.link(positive, 0, guidance, "conditioning")
    g.link(positive, 0, negative, "conditioning")
    g.group("Models and image size", [unet, clip, vae, latent, steps])
    g.group("Prompt and guidance", [positive, guidance, negative])
    planner, apply_ = _planner_and_apply(
        g, 900, 80, unet, steps, PLANNER_BALANCED[:1] + [FLUX_STEPS] + PLANNER_BALANCED[2:]
    )
    ksampler = [SEED, "randomize", FLUX_STEPS, 1.0, "euler", "simple", 1.0]
    nodes = _sample_and_report(
        g,
        1300,
        80,
        apply_,
        guidance,
        negative,
        latent,
        vae,
        (apply_, 1),
        planner,
        prefix="flux-dev-meancache",
        steps_node=steps,
        ksampler=ksampler,
    )
    g.group("Sample, save and report", list(nodes))
    return g.as_json("5a2c7e19-0f43-4d8b-b1e6-4c9d2a7f3e04")


def qwen_t2i() -> dict:
    g = Graph()
    g.add(
        "MarkdownNote",
        (-500, 60),
        (480, 900),
        [QWEN_NOTE],
        title="Read me: MeanCache for Qwen-Image",
        colors=NOTE_COLORS,
    )
    x = 40
    files = QWEN_FILES
    unet = g.add("UNETLoader", (x, 80), (320, 82), [files["unet"][0], "default"], models=[files["unet"]])
    clip = g.add(
        "CLIPLoader", (x, 210), (320, 106), [files["clip"][0], "qwen_image", "default"], models=[files["clip"]]
    )
    vae = g.add("VAELoader", (x, 360), (320, 58), [files["vae"][0]], models=[files["vae"]])
    latent = g.add("EmptySD3LatentImage", (x, 470), (320, 106), [1328, 1328, 1])
    steps = g.add("PrimitiveInt", (x, 630), (320, 82), [QWEN_STEPS, "fixed"], title="Steps (Planner + KSampler)")
    shift = g.add("ModelSamplingAuraFlow", (x + 400, 80), (320, 58), [3.1])
    positive = g.add(
        "CLIPTextEncode", (x + 400, 190), (420, 210), [POSITIVE], title="Positive prompt", colors=POSITIVE_COLORS
    )
    negative = g.add(
        "CLIPTextEncode", (x + 400, 440), (420, 150), [NEGATIVE], title="Negative prompt", colors=NEGATIVE_COLORS
    )
    g.link(unet, 0, shift, "model")
    g.link(clip, 0, positive, "clip")
    g.link(clip, 0, negative, "clip")
    g.group("Models and image size", [unet, clip, vae, latent, steps])
    g.group("Model shift and prompts", [shift, positive, negative])
    planner, apply_ = _planner_and_apply(
        g, 900, 80, shift, steps, PLANNER_BALANCED[:1] + [QWEN_STEPS] + PLANNER_BALANCED[2:]
    )
    ksampler = [SEED, "randomize", QWEN_STEPS, QWEN_CFG, "euler", "simple", 1.0]
    nodes = _sample_and_report(
        g,
        1300,
        80,
        apply_,
        positive,
        negative,
        latent,
        vae,
        (apply_, 1),
        planner,
        prefix="qwen-image-meancache",
        steps_node=steps,
        ksampler=ksampler,
    )
    g.group("Sample, save and report", list(nodes))
    return g.as_json("8e1f4b27-6c35-4a90-9d2e-7b5a3c1d9f05")


def wan22_t2v() -> dict:
    g = Graph()
    g.add(
        "MarkdownNote",
        (-500, 60),
        (480, 1000),
        [WAN22_NOTE],
        title="Read me: MeanCache for Wan 2.2",
        colors=NOTE_COLORS,
    )
    x = 40
    files = WAN22_FILES
    high = g.add(
        "UNETLoader",
        (x, 80),
        (320, 82),
        [files["high"][0], "default"],
        title="High-noise model",
        models=[files["high"]],
    )
    low = g.add(
        "UNETLoader", (x, 210), (320, 82), [files["low"][0], "default"], title="Low-noise model", models=[files["low"]]
    )
    clip = g.add("CLIPLoader", (x, 340), (320, 106), [files["clip"][0], "wan", "default"], models=[files["clip"]])
    vae = g.add("VAELoader", (x, 490), (320, 58), [files["vae"][0]], models=[files["vae"]])
    latent = g.add("EmptyHunyuanLatentVideo", (x, 600), (320, 130), [640, 640, 81, 1])
    steps = g.add("PrimitiveInt", (x, 780), (320, 82), [WAN_STEPS, "fixed"], title="Steps (Planner + both samplers)")
    handover = g.add("PrimitiveInt", (x, 900), (320, 82), [WAN_HANDOVER, "fixed"], title="Hand-over step")
    shift_high = g.add("ModelSamplingSD3", (x + 400, 80), (320, 58), [8.0], title="Shift (high noise)")
    shift_low = g.add("ModelSamplingSD3", (x + 400, 180), (320, 58), [8.0], title="Shift (low noise)")
    positive = g.add(
        "CLIPTextEncode", (x + 400, 290), (420, 210), [VIDEO_PROMPT], title="Positive prompt", colors=POSITIVE_COLORS
    )
    negative = g.add(
        "CLIPTextEncode", (x + 400, 540), (420, 150), [VIDEO_NEGATIVE], title="Negative prompt", colors=NEGATIVE_COLORS
    )
    g.link(high, 0, shift_high, "model")
    g.link(low, 0, shift_low, "model")
    g.link(clip, 0, positive, "clip")
    g.link(clip, 0, negative, "clip")
    g.group("Models and video size", [high, low, clip, vae, latent, steps, handover])
    g.group("Model shift and prompts", [shift_high, shift_low, positive, negative])

    preset = PLANNER_BALANCED[:1] + [WAN_STEPS] + PLANNER_BALANCED[2:]
    planner = g.add("MeanCachePlanner", (900, 80), (340, 430), preset, title="MeanCache Planner (whole run)")
    apply_high = g.add(
        "MeanCacheApply", (900, 560), (340, 102), [False, "model device"], title="MeanCache Apply (high)"
    )
    apply_low = g.add("MeanCacheApply", (900, 700), (340, 102), [False, "model device"], title="MeanCache Apply (low)")
    g.link(shift_high, 0, planner, "model")
    g.link(steps, 0, planner, "steps")
    for shift, apply_ in ((shift_high, apply_high), (shift_low, apply_low)):
        g.link(shift, 0, apply_, "model")
        g.link(planner, 0, apply_, "schedule")
    g.group("MeanCache: one plan, one Apply per expert", [planner, apply_high, apply_low])

    x = 1300
    first = g.add(
        "KSamplerAdvanced",
        (x, 80),
        (320, 334),
        ["enable", SEED, "randomize", WAN_STEPS, WAN_CFG, "euler", "simple", 0, WAN_HANDOVER, "enable"],
        title="KSamplerAdvanced (high noise)",
    )
    second = g.add(
        "KSamplerAdvanced",
        (x, 460),
        (320, 334),
        ["disable", 0, "fixed", WAN_STEPS, WAN_CFG, "euler", "simple", WAN_HANDOVER, 10000, "disable"],
        title="KSamplerAdvanced (low noise)",
    )
    decode = g.add("VAEDecode", (x, 840), (210, 46))
    video = g.add("CreateVideo", (x, 930), (270, 78), [16])
    save = g.add("SaveVideo", (x + 380, 80), (520, 560), ["video/wan22-meancache", "auto", "auto"])
    report = g.add("MeanCacheReport", (x + 380, 700), (900, 600))
    for sampler, apply_ in ((first, apply_high), (second, apply_low)):
        g.link(apply_, 0, sampler, "model")
        g.link(positive, 0, sampler, "positive")
        g.link(negative, 0, sampler, "negative")
        g.link(steps, 0, sampler, "steps")
    g.link(latent, 0, first, "latent_image")
    g.link(first, 0, second, "latent_image")
    g.link(handover, 0, first, "end_at_step")
    g.link(handover, 0, second, "start_at_step")
    g.link(second, 0, decode, "samples")
    g.link(vae, 0, decode, "vae")
    g.link(decode, 0, video, "images")
    g.link(video, 0, save, "video")
    g.link(apply_low, 1, report, "stats")
    g.link(second, 0, report, "latent")
    g.link(decode, 0, report, "images")
    g.link(planner, 0, report, "schedule")
    g.group("Sample (two experts), save and report", [first, second, decode, video, save, report])
    return g.as_json("c7d3a9e2-4b18-4f6c-a5d0-2e8f6b4c1a06")


WORKFLOWS = {
    "zimage_t2i_meancache": t2i,
    "zimage_calibrate": calibrate,
    "zimage_custom_sampler_meancache": custom_sampler,
    "flux_dev_t2i_meancache": flux_t2i,
    "qwen_image_t2i_meancache": qwen_t2i,
    "wan22_t2v_meancache": wan22_t2v,
}


def main() -> None:
    for stem, build in WORKFLOWS.items():
        path = HERE / f"{stem}.json"
        path.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
