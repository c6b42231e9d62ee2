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
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "workflows"
FRONTEND_VERSION = "1.35.9"
CORE_VERSION = "0.8.0"
PACK_ID, PACK_VERSION = "comfy-meancache", "0.1.0"

# Socket inputs (name, type, optional) and outputs (name, type) of each node type used.
# Widgets are not listed: their values are given positionally per node.
SPECS: dict[str, tuple[list[tuple[str, str, bool]], list[tuple[str, str]]]] = {
    "UNETLoader": ([], [("MODEL", "MODEL")]),
    "CLIPLoader": ([], [("CLIP", "CLIP")]),
    "VAELoader": ([], [("VAE", "VAE")]),
    "ModelSamplingAuraFlow": ([("model", "MODEL", False)], [("MODEL", "MODEL")]),
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
PLANNER_BALANCED = ["balanced", STEPS, "simple", 1.0, 0, 2.5, 2.0, 3, 8, "meancache2", "prior"]
KSAMPLER = [SEED, "randomize", STEPS, CFG, "euler", "simple", 1.0]
NOTE_COLORS = {"color": "#432", "bgcolor": "#653"}
POSITIVE_COLORS = {"color": "#232", "bgcolor": "#353"}
NEGATIVE_COLORS = {"color": "#322", "bgcolor": "#533"}

MODEL_FILES = f"""## Model files

The same files as ComfyUI's Z-Image templates (the text encoder and VAE are shared with Z-Image Turbo):

| file | put it in |
| --- | --- |
| [z_image_bf16.safetensors]({MODELS["UNETLoader"][1]}) | `ComfyUI/models/diffusion_models/` |
| [qwen_3_4b.safetensors]({MODELS["CLIPLoader"][1]}) | `ComfyUI/models/text_encoders/` |
| [ae.safetensors]({MODELS["VAELoader"][1]}) | `ComfyUI/models/vae/` |

```
ComfyUI/
└── models/
    ├── diffusion_models/  z_image_bf16.safetensors
    ├── text_encoders/     qwen_3_4b.safetensors
    └── vae/               ae.safetensors
```
"""

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

Samplers: euler, ddim, dpmpp_2m, res_multistep and the other one-evaluation samplers are cached;
heun / dpm_2 always compute their extra evaluations; ancestral and SDE samplers run uncached (one
warning in the log). For even better plans, calibrate your model once (zimage_calibrate workflow).
Z-Image Turbo samples in about 8 steps, which leaves little to skip: MeanCache is meant for the base
model's 30 to 50 steps.
"""

CALIBRATE_NOTE = f"""# MeanCache: calibrate Z-Image

**MeanCache Calibrate** samples every step (nothing is skipped) and adds each finished run to a named
profile in `ComfyUI/user/meancache/` (`zimage-base.json` + `.safetensors`). The Planner can then price its
skips with measurements from *your* model instead of the built-in prior.

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

    def as_json(self, order: int) -> dict:
        core = not self.type.startswith("MeanCache")
        properties = {}
        if self.type != "MarkdownNote":
            properties = {
                "Node name for S&R": self.type,
                "cnr_id": "comfy-core" if core else PACK_ID,
                "ver": CORE_VERSION if core else PACK_VERSION,
            }
        if self.type in MODELS:
            name, url, directory = MODELS[self.type]
            properties["models"] = [{"name": name, "url": url, "directory": directory}]
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

    def add(self, type_: str, pos, size, widgets=(), *, title=None, mode=0, colors=None) -> Node:
        sockets, outputs = SPECS[type_]
        node = Node(len(self.nodes) + 1, type_, tuple(pos), tuple(size), list(widgets), title, mode, colors or {})
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
    unet = g.add("UNETLoader", (x, 80), (320, 82), [MODELS["UNETLoader"][0], "default"])
    clip = g.add("CLIPLoader", (x, 210), (320, 106), [MODELS["CLIPLoader"][0], "lumina2", "default"])
    vae = g.add("VAELoader", (x, 360), (320, 58), [MODELS["VAELoader"][0]])
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
):
    """KSampler -> VAEDecode -> SaveImage, and a Report fed by the latent and the images."""
    sampler = g.add("KSampler", (x, y), (320, 262), KSAMPLER, mode=mode)
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


WORKFLOWS = {
    "zimage_t2i_meancache": t2i,
    "zimage_calibrate": calibrate,
    "zimage_custom_sampler_meancache": custom_sampler,
}


def main() -> None:
    for stem, build in WORKFLOWS.items():
        path = HERE / f"{stem}.json"
        path.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
