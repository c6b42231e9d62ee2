"""Draw the same-stem .jpg thumbnail ComfyUI shows for each example workflow (Workflow > Browse Templates).

Each thumbnail has the workflow's title, its node chain as boxes, and a strip
of the MeanCache plan for 40 steps (Z-Image shift 3, simple): which steps call
the model and which are estimated. Needs matplotlib and Pillow (for JPEG);
uses a ``Figure`` with the Agg canvas, never pyplot::

    python scripts/make_thumbnails.py              # all workflows/*.json that have a recipe below
    python scripts/make_thumbnails.py --check      # exit 1 if a thumbnail is missing or too big
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from comfy_meancache.core.costs import even_costs  # noqa: E402
from comfy_meancache.core.estimators import DEFAULT_ESTIMATOR  # noqa: E402
from comfy_meancache.core.planner import plan  # noqa: E402
from comfy_meancache.core.sigmas import flow_sigmas  # noqa: E402

WORKFLOWS = ROOT / "workflows"
WIDTH_PX, HEIGHT_PX, DPI = 512, 384, 100
MAX_BYTES = 100_000
STEPS, SPEEDUP = 40, 2.5

CORE, PACK = "#3b4252", "#5e81ac"  # box colours: ComfyUI nodes, MeanCache nodes
COMPUTED, SKIPPED = "#5e81ac", "#d8dee9"

# stem -> (title, subtitle, node chain, strip caption, every step computed?);
# {steps}, {calls} and {speedup} in the texts are filled from the plan.
RECIPES: dict[str, tuple[str, str, list[str], str, bool]] = {
    "zimage_t2i_meancache": (
        "Z-Image text to image",
        "MeanCache balanced: {steps} steps, {calls} model calls",
        ["Load\nZ-Image", "MeanCache\nPlanner", "MeanCache\nApply", "KSampler", "Save +\nReport"],
        "plan: {calls} of {steps} steps call the model ({speedup:.1f}x)",
        False,
    ),
    "zimage_calibrate": (
        "Calibrate MeanCache for Z-Image",
        "record full-step runs into a profile",
        ["Load\nZ-Image", "MeanCache\nCalibrate", "KSampler", "Report:\nprofile"],
        "calibration run: every step calls the model",
        True,
    ),
    "zimage_custom_sampler_meancache": (
        "Z-Image custom sampling",
        "BasicScheduler sigmas -> MeanCache Planner",
        ["Basic\nScheduler", "MeanCache\nPlanner", "MeanCache\nApply", "CFG\nGuider", "Sampler\nCustom\nAdvanced"],
        "plan on the scheduler's sigmas: {calls} of {steps} steps ({speedup:.1f}x)",
        False,
    ),
    "flux_dev_t2i_meancache": (
        "Flux dev text to image",
        "MeanCache balanced: {steps} steps, {calls} model calls, cfg 1",
        ["Load\nFlux dev", "MeanCache\nPlanner", "MeanCache\nApply", "KSampler", "Save +\nReport"],
        "plan: {calls} of {steps} steps call the model ({speedup:.1f}x)",
        False,
    ),
    "qwen_image_t2i_meancache": (
        "Qwen-Image text to image",
        "MeanCache balanced: {steps} steps, {calls} model calls",
        ["Load\nQwen-Image", "MeanCache\nPlanner", "MeanCache\nApply", "KSampler", "Save +\nReport"],
        "plan: {calls} of {steps} steps call the model ({speedup:.1f}x)",
        False,
    ),
    "wan22_t2v_meancache": (
        "Wan 2.2 14B text to video",
        "one plan for both experts: {steps} steps, {calls} model calls",
        [
            "Planner\n(whole run)",
            "Apply\nhigh noise",
            "KSampler\nAdv. 0-10",
            "Apply\nlow noise",
            "KSampler\nAdv. 10-20",
        ],
        "plan: {calls} of {steps} steps call the model ({speedup:.1f}x), split at step 10",
        False,
    ),
}
#: Steps of the workflows that do not sample 40.
RECIPE_STEPS = {"flux_dev_t2i_meancache": 30, "qwen_image_t2i_meancache": 30, "wan22_t2v_meancache": 20}


def plan_mask(every_step: bool, steps: int = STEPS) -> list[bool]:
    """Which of the ``steps`` steps call the model under the balanced plan of a first run (or all of them)."""
    if every_step:
        return [True] * steps
    return list(plan(flow_sigmas(steps), speedup=SPEEDUP, costs=even_costs(steps, DEFAULT_ESTIMATOR)).compute)


def draw(title: str, subtitle: str, chain: list[str], caption: str, mask: list[bool]) -> Figure:
    fig = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, facecolor="#eceff4")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH_PX)
    ax.set_ylim(HEIGHT_PX, 0)  # y grows downwards, like the canvas
    ax.axis("off")
    ax.text(24, 42, title, fontsize=17, weight="bold", color="#2e3440", va="center")
    ax.text(24, 74, subtitle, fontsize=11, color="#4c566a", va="center")

    # Node chain: one row of boxes joined by arrows, MeanCache nodes in blue.
    gap, height, top = 16, 64, 118
    width = (WIDTH_PX - 48 - gap * (len(chain) - 1)) / len(chain)
    for i, label in enumerate(chain):
        x = 24 + i * (width + gap)
        colour = PACK if "MeanCache" in label else CORE
        ax.add_patch(
            FancyBboxPatch((x, top), width, height, boxstyle="round,pad=0,rounding_size=8", fc=colour, ec="none")
        )
        longest = max(len(line) for line in label.splitlines())
        ax.text(
            x + width / 2,
            top + height / 2,
            label,
            fontsize=8 if longest <= 11 else 7,
            color="white",
            ha="center",
            va="center",
            weight="bold",
            linespacing=1.3,
        )
        if i:
            ax.add_patch(
                FancyArrowPatch(
                    (x - gap, top + height / 2),
                    (x, top + height / 2),
                    arrowstyle="-|>",
                    mutation_scale=10,
                    color="#4c566a",
                    lw=1.2,
                    shrinkA=0,
                    shrinkB=0,
                )
            )

    # Plan strip: one cell per step.
    top, cell_h = 262, 40
    cell_w = (WIDTH_PX - 48) / len(mask)
    for i, computed in enumerate(mask):
        ax.add_patch(
            FancyBboxPatch(
                (24 + i * cell_w + 1, top),
                cell_w - 2,
                cell_h,
                boxstyle="square,pad=0",
                fc=COMPUTED if computed else SKIPPED,
                ec="none",
            )
        )
    ax.text(24, top - 12, caption, fontsize=9.5, color="#2e3440", va="center")
    ax.text(24, top + cell_h + 16, "step 0", fontsize=8, color="#4c566a", va="center")
    ax.text(
        WIDTH_PX - 24, top + cell_h + 16, f"step {len(mask) - 1}", fontsize=8, color="#4c566a", va="center", ha="right"
    )
    ax.text(
        WIDTH_PX / 2,
        top + cell_h + 16,
        "blue: model call   grey: estimated",
        fontsize=8,
        color="#4c566a",
        va="center",
        ha="center",
    )
    ax.text(
        WIDTH_PX - 24,
        HEIGHT_PX - 18,
        "comfy-meancache",
        fontsize=8,
        color="#81a1c1",
        ha="right",
        va="center",
        style="italic",
    )
    return fig


def to_jpeg(fig: Figure) -> bytes:
    canvas = FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    canvas.print_figure(
        buffer, format="jpg", dpi=DPI, facecolor=fig.get_facecolor(), pil_kwargs={"quality": 85, "optimize": True}
    )
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that every thumbnail exists and is small")
    args = parser.parse_args(argv)
    problems = []
    for path in sorted(WORKFLOWS.glob("*.json")):
        target = path.with_suffix(".jpg")
        if args.check:
            if not target.exists() or target.stat().st_size > MAX_BYTES:
                problems.append(f"{target.name}: missing or over {MAX_BYTES} bytes")
            continue
        if path.stem not in RECIPES:
            problems.append(f"{path.name}: no thumbnail recipe in {Path(__file__).name}")
            continue
        title, subtitle, chain, caption, every_step = RECIPES[path.stem]
        mask = plan_mask(every_step, RECIPE_STEPS.get(path.stem, STEPS))
        facts = dict(steps=len(mask), calls=sum(mask), speedup=len(mask) / sum(mask))
        subtitle, caption = subtitle.format(**facts), caption.format(**facts)
        data = to_jpeg(draw(title, subtitle, chain, caption, mask))
        target.write_bytes(data)
        print(f"wrote {target.relative_to(ROOT)} ({len(data) // 1024} KB)")
        if len(data) > MAX_BYTES:
            problems.append(f"{target.name}: {len(data)} bytes > {MAX_BYTES}")
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
