"""Plan and run charts as ComfyUI IMAGE tensors, plus a matching text summary.

The chart answers "what did the cache plan, and what happened?" at a glance:
per sampler step the planned and the actual compute/skip decision (with
fallbacks, planned skips that had to be computed), the estimator span ``K`` of
each skip, the sigma curve, the planner's predicted edge costs and the wall
time of every model call.

Rendering uses ``matplotlib.figure.Figure`` with an explicit Agg canvas and
never ``pyplot``: ComfyUI runs nodes in a worker thread, and pyplot's global
figure manager (and any ``matplotlib.use`` call) is neither thread-safe nor
ours to change. Font sizes are passed explicitly for the same reason (no global
``rcParams`` edits). The figure has a fixed size and dpi, so every chart is the
same ``[1, H, W, 3]`` image whatever the step count, and batches of charts can
be concatenated.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator, NullLocator

from .costs import EdgeCosts
from .schedule import Schedule
from .stepper import Action, RunStats, StepRecord

# Fixed output size: 1200 x 720 px.
WIDTH_IN, HEIGHT_IN, DPI = 12.0, 7.2, 100
WIDTH_PX, HEIGHT_PX = int(WIDTH_IN * DPI), int(HEIGHT_IN * DPI)

# Okabe-Ito colours (colour-blind safe); compute vs skip also differ in lightness,
# fallbacks are hatched as well, so the chart survives greyscale printing.
COMPUTE = "#0072B2"
SKIP = "#56B4E9"
FALLBACK = "#D55E00"
NOT_RUN = "#DDDDDD"
COST = "#009E73"
COST_NA = "#BBBBBB"
SIGMA = "#222222"
TEXT = "#222222"

# Plot area in figure fractions; the rest holds the title, legend and notes.
_LEFT, _RIGHT, _TOP, _BOTTOM = 0.075, 0.935, 0.835, 0.215
_AXES_PX = WIDTH_PX * (_RIGHT - _LEFT)
_NOTE_LINES = 5
_NOTE_CHARS = 150  # ~7 px per monospace char at 8.5 pt: fits right of _LEFT

_PLAN_ROW, _RUN_ROW = 1.0, 0.0


def plan_chart(schedule: Schedule) -> torch.Tensor:
    """The schedule alone (no run yet) as a ``[1, H, W, 3]`` float32 image in 0..1."""
    return run_chart(schedule, None)


def run_chart(schedule: Schedule, stats: RunStats | None) -> torch.Tensor:
    """Plan and run side by side as a ``[1, H, W, 3]`` float32 image; ``stats=None`` is the plan chart."""
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, facecolor="white")
    _draw(fig, schedule, stats)
    return _to_image(fig)


def cost_heatmap(costs: EdgeCosts, max_span: int, title: str) -> torch.Tensor:
    """Edge costs ``C[i, j]`` (best span, log colour scale) as an image: where skipping is cheap."""
    shown_costs = costs if costs.pair_state else replace(costs, band=costs.band[:max_span])
    best = shown_costs.best_per_edge()
    best[~np.isfinite(best) | (best <= 0)] = np.nan  # undefined edges; chains cost nothing
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, facecolor="white")
    ax = fig.add_axes((0.08, 0.1, 0.7, 0.78))
    shown = np.log10(best)
    mesh = ax.imshow(shown.T, origin="lower", cmap="viridis", aspect="auto", interpolation="nearest")
    ax.set_xlabel("edge start i (model call)", fontsize=10)
    ax.set_ylabel("edge end j (next model call)", fontsize=10)
    ax.tick_params(labelsize=9)
    bar = fig.colorbar(mesh, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label("log10 predicted state deviation", fontsize=9)
    fig.text(0.08, 0.93, title, fontsize=13, fontweight="bold", color=TEXT)
    fig.text(
        0.80,
        0.5,
        "Dark cells: skipping from i to j\nis cheap. The planner picks\nthe path with the lowest\nsum of cost^gamma.",
        fontsize=10,
        color=TEXT,
        va="center",
    )
    return _to_image(fig)


def _to_image(fig: Figure) -> torch.Tensor:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    image = rgba[..., :3].astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0)


def summary_text(schedule: Schedule, stats: RunStats | None) -> str:
    """Multi-line text for a STRING output or the console: summaries, fallbacks, notes, computed steps."""
    lines = [f"plan: {schedule.summary()}; {_plan_details(schedule)}"]
    if stats is None:
        lines.append("run: none (plan only)")
    else:
        lines.append(f"run: {stats.summary()}")
        if stats.steps_run < schedule.steps:
            lines.append(f"run covered {stats.steps_run} of {schedule.steps} planned steps")
        fallbacks = stats.fallbacks
        lines.append(f"fallbacks (planned skip computed): {len(fallbacks) or 'none'}")
        lines += [f"  step {r.step}: {r.reason or 'no reason given'}" for r in fallbacks]
    notes = _all_notes(schedule, stats)
    if notes:
        lines.append("notes:")
        lines += [f"  {n}" for n in _truncate_list(notes, 20)]
    edges = [_edge_label(e.start, e.end, e.span, e.cost, e.estimator) for e in schedule.edges]
    lines += _wrapped("edges (predicted cost): ", _truncate_list(edges, 24))
    lines += _wrapped("computed steps (plan): ", [str(i) for i in schedule.computed_steps])
    if stats is not None:
        ran = [str(r.step) for r in stats.records if r.action is Action.COMPUTE]
        lines += _wrapped("computed steps (run): ", ran)
    return "\n".join(lines)


def fragments_summary(plan: Schedule, run: RunStats, candidates: Sequence[RunStats]) -> str:
    """One line when ``run`` sampled a slice of ``plan``'s grid (KSamplerAdvanced start/end, SplitSigmas).

    The fragments before it are the ``candidates`` (newest last) that end
    where the next one starts, back to step 0 when they reach it, e.g.
    ``fragment 2 of 2 of a 30-step plan (steps 12-29); all 2 fragments: 30
    steps -> 13 model calls (2.31x)``. Empty when ``run`` is the whole plan or
    not a slice of it.
    """
    start = plan.fragment_start(run.schedule.sigmas)
    if start is None or (start == 0 and run.schedule.steps == plan.steps):
        return ""
    chain, first = [run], start
    while first > 0:
        before = next(
            (c for c in reversed(candidates) if plan.fragment_start(c.schedule.sigmas) == first - c.schedule.steps),
            None,
        )
        if before is None:
            break
        chain.insert(0, before)
        first -= before.schedule.steps
    end = start + run.schedule.steps
    where = f"steps {start}-{end - 1}"
    if first == 0 and end == plan.steps:
        where = f"fragment {len(chain)} of {len(chain)} of a {plan.steps}-step plan ({where})"
    else:
        where = f"a fragment of a {plan.steps}-step plan ({where}; earlier fragments from step {first})"
    steps, calls = sum(c.steps_run for c in chain), sum(c.model_calls for c in chain)
    return (
        f"{where}; all {_plural(len(chain), 'fragment')}: {steps} steps -> {calls} model calls "
        f"({steps / calls if calls else 1.0:.2f}x)"
    )


# --- layout -------------------------------------------------------------------------------------------


def _draw(fig: Figure, schedule: Schedule, stats: RunStats | None) -> None:
    """Title, legend, four step-aligned panels and the notes block."""
    n = schedule.steps
    records = _records_by_step(schedule, stats)
    grid = fig.add_gridspec(
        4, 1, left=_LEFT, right=_RIGHT, top=_TOP, bottom=_BOTTOM, hspace=0.22, height_ratios=[0.9, 1.1, 1.1, 1.0]
    )
    cells, spans, costs, wall = (fig.add_subplot(grid[k]) for k in range(4))
    # Same x range everywhere instead of sharex: the upper panels then need no x ticks at
    # all, and tick creation is most of the render time.
    for ax in (cells, spans, costs, wall):
        ax.set_xlim(-0.5, n - 0.5)
    for ax in (cells, spans, costs):
        ax.xaxis.set_major_locator(NullLocator())
    _draw_cells(cells, schedule, records, stats is not None)
    _draw_spans(spans, schedule, records)
    _draw_costs(costs, schedule)
    _draw_wall(wall, records, stats is not None)
    _step_axis(wall, n)
    _title(fig, schedule, stats)
    _legend(fig)
    _notes(fig, schedule, stats)


def _step_axis(ax: Axes, n: int) -> None:
    """Integer step ticks, thinned to at most ~20 labels so 200 steps never overlap."""
    ax.xaxis.set_major_locator(MaxNLocator(nbins=min(n, 20), integer=True, min_n_ticks=1))
    ax.set_xlabel("sampler step", fontsize=11)
    ax.tick_params(axis="x", labelsize=10)


def _style(ax: Axes, ylabel: str) -> None:
    ax.set_ylabel(ylabel, fontsize=10.5)
    ax.tick_params(axis="y", labelsize=9.5)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _px_per_step(n: int) -> float:
    return _AXES_PX / max(n, 1)


# --- panels -------------------------------------------------------------------------------------------


def _draw_cells(ax: Axes, schedule: Schedule, records: dict[int, StepRecord], has_run: bool) -> None:
    """Two rows of cells: the plan, and what ran (compute / skip / fallback / not run)."""
    n = schedule.steps
    steps = np.arange(n)
    edge_lw = 0.8 if n <= 100 else 0.3
    plan_colours = [COMPUTE if c else SKIP for c in schedule.compute]
    _bars(ax, steps, 0.8, 1.0, plan_colours, bottom=_PLAN_ROW - 0.4, edgecolor="white", linewidth=edge_lw)
    run_colours = [_run_colour(records.get(i)) for i in range(n)]
    _bars(ax, steps, 0.8, 1.0, run_colours, bottom=_RUN_ROW - 0.4, edgecolor="white", linewidth=edge_lw)
    fallbacks = [i for i, r in records.items() if r.fallback]
    if fallbacks:  # hatch as well as colour, so fallbacks stand out without colour vision
        _bars(ax, fallbacks, 0.8, 1.0, "none", bottom=_RUN_ROW - 0.4, edgecolor="white", hatch="///")
    if _px_per_step(n) >= 14:  # room for the span K inside each skipped plan cell
        for i in steps:
            if not schedule.compute[i]:
                ax.text(i, _PLAN_ROW, str(schedule.span[i]), ha="center", va="center", fontsize=8, color=TEXT)
    if not has_run:
        ax.text(
            (n - 1) / 2,
            _RUN_ROW,
            "no run yet (plan only)",
            ha="center",
            va="center",
            fontsize=10,
            color=TEXT,
            bbox=dict(boxstyle="round,pad=0.25", facecolor="white", edgecolor=NOT_RUN),
        )
    ax.set_ylim(-0.6, 1.6)
    ax.set_yticks([_PLAN_ROW, _RUN_ROW], ["plan", "ran"], fontsize=10.5)
    ax.tick_params(axis="y", length=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def _run_colour(record: StepRecord | None) -> str:
    if record is None:
        return NOT_RUN
    if record.fallback:
        return FALLBACK
    return COMPUTE if record.action is Action.COMPUTE else SKIP


def _draw_spans(ax: Axes, schedule: Schedule, records: dict[int, StepRecord]) -> None:
    """Span K of each planned skip as bar height, with sigma on a secondary axis."""
    skipped = [i for i, c in enumerate(schedule.compute) if not c]
    colours = [FALLBACK if i in records and records[i].fallback else SKIP for i in skipped]
    _bars(
        ax,
        skipped,
        [schedule.span[i] for i in skipped],
        0.8,
        colours,
        edgecolor=COMPUTE,
        linewidth=0.4 if schedule.steps <= 100 else 0.0,
    )
    top = max((schedule.span[i] for i in skipped), default=1)
    ax.set_ylim(0, top + 0.5)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    _style(ax, "skip span K")
    if not skipped:
        ax.set_yticks([])
    # Step i runs from sigma_i to sigma_{i+1}: place sigma_i on the left edge of cell i.
    sig = ax.twinx()
    sig.plot(np.arange(schedule.steps + 1) - 0.5, schedule.sigmas, color=SIGMA, linewidth=1.6)
    sig.set_ylim(0, max(max(schedule.sigmas), 1e-6) * 1.08)
    sig.yaxis.set_major_locator(MaxNLocator(nbins=4))
    sig.set_ylabel("sigma", fontsize=10.5, color=SIGMA)
    sig.tick_params(axis="y", labelsize=9.5)
    sig.spines["top"].set_visible(False)
    if not skipped:  # on the twin axes, which is drawn above the sigma line's host
        sig.text(
            0.5,
            0.5,
            "every step computed",
            transform=sig.transAxes,
            ha="center",
            va="center",
            fontsize=10,
            bbox=dict(boxstyle="round,pad=0.25", facecolor="white", edgecolor="none"),
        )


def _draw_costs(ax: Axes, schedule: Schedule) -> None:
    """Each edge a->b as a bar over its skipped steps, height = predicted cost ('n/a' when unknown)."""
    _style(ax, "predicted\nedge cost")
    edges = schedule.edges
    known = [e.cost for e in edges if _finite(e.cost)]
    top = max((c for c in known if c > 0), default=1.0)
    px = _px_per_step(schedule.steps)
    # An edge's bar covers its skipped steps, start + 1 .. end - 1.
    centres = [(e.start + e.end) / 2 for e in edges]
    widths = [e.end - e.start - 1 for e in edges]
    heights = [e.cost if _finite(e.cost) else top * 0.35 for e in edges]
    known_at = [k for k, e in enumerate(edges) if _finite(e.cost)]
    unknown_at = [k for k, e in enumerate(edges) if not _finite(e.cost)]
    for picked, face, edge, hatch in ((known_at, COST, COST, None), (unknown_at, "white", COST_NA, "xx")):
        if picked:
            _bars(
                ax,
                [centres[k] for k in picked],
                [heights[k] for k in picked],
                [widths[k] for k in picked],
                face,
                edgecolor=edge,
                linewidth=0.8,
                hatch=hatch,
                alpha=0.85,
            )
    for e, x, w, h in zip(edges, centres, widths, heights):
        if w * px >= 36:  # label only edges wide enough to hold it
            ax.text(
                x, h, _fmt_cost(e.cost if _finite(e.cost) else None), ha="center", va="bottom", fontsize=8, color=TEXT
            )
    ax.set_ylim(0, top * 1.3)
    if not edges:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no skipped edges", transform=ax.transAxes, ha="center", va="center", fontsize=10)
    elif not known:
        ax.set_yticks([])
        ax.text(
            0.5,
            0.9,
            "costs n/a (remapped schedule: predictions do not carry over)",
            transform=ax.transAxes,
            ha="center",
            va="top",
            fontsize=9.5,
            color=TEXT,
            bbox=dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor=COST_NA),
        )
    else:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=3))
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3), useMathText=True)
        ax.yaxis.get_offset_text().set_fontsize(9)


def _draw_wall(ax: Axes, records: dict[int, StepRecord], has_run: bool) -> None:
    """Wall time of each model call (fallbacks in their own colour)."""
    timed = sorted((i, r) for i, r in records.items() if r.action is Action.COMPUTE and r.wall_s is not None)
    if not timed:
        ax.set_yticks([])
        _style(ax, "model call\nwall time")
        message = "no wall times recorded" if has_run else "no run yet (plan only)"
        ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", fontsize=10)
        return
    seconds = np.array([r.wall_s for _, r in timed])
    scale, unit = (1e3, "ms") if seconds.max() < 1.0 else (1.0, "s")
    colours = [FALLBACK if r.fallback else COMPUTE for _, r in timed]
    _bars(ax, [i for i, _ in timed], seconds * scale, 0.8, colours)
    ax.set_ylim(0, max(seconds.max() * scale, 1e-9) * 1.15)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=3))
    _style(ax, f"model call\nwall time ({unit})")


def _bars(
    ax: Axes,
    centres: Sequence[float],
    heights: float | Sequence[float],
    widths: float | Sequence[float],
    colours: str | Sequence[str],
    bottom: float = 0.0,
    edgecolor: str = "none",
    linewidth: float = 0.0,
    hatch: str | None = None,
    alpha: float | None = None,
) -> None:
    """Bars as one PolyCollection: ``Axes.bar`` makes one patch per bar, several times slower at 200 steps.

    Axis limits are not updated; every panel sets its own.
    """
    x = np.asarray(centres, dtype=float)
    h = np.broadcast_to(np.asarray(heights, dtype=float), x.shape)
    w = np.broadcast_to(np.asarray(widths, dtype=float), x.shape)
    left, right, base, top = x - w / 2, x + w / 2, np.full_like(x, bottom), bottom + h
    xs = np.stack([left, right, right, left], axis=1)
    ys = np.stack([base, base, top, top], axis=1)
    verts = np.stack([xs, ys], axis=2)  # [bars, 4 corners, (x, y)]
    bars = PolyCollection(
        verts, facecolors=colours, edgecolors=edgecolor, linewidths=linewidth, hatch=hatch, alpha=alpha
    )
    ax.add_collection(bars, autolim=False)


# --- text ---------------------------------------------------------------------------------------------


def title_text(schedule: Schedule, stats: RunStats | None) -> tuple[str, str]:
    """Headline and sub-line: the achieved (or planned) call reduction; estimator, cost source, run facts.

    The run's speedup counts every model evaluation, so a sampler's extra
    evaluations (Heun correctors, dpm_2 midpoints) are in it and named.
    """
    if stats is None:
        head = (
            f"MeanCache plan: {_plural(schedule.steps, 'step')} -> "
            f"{_plural(schedule.model_calls, 'model call')} ({schedule.speedup:.2f}x speedup)"
        )
        return head, _plan_details(schedule)
    ran = _plural(stats.steps_run, "step")
    if stats.steps_run < schedule.steps:  # a partial run: say how much of the plan it covered
        ran = f"{stats.steps_run} of {_plural(schedule.steps, 'step')}"
    if stats.extra_evaluations:
        ran += f" + {stats.extra_evaluations} extra evaluations"
    head = f"MeanCache run: {stats.speedup:.2f}x model-call speedup ({_plural(stats.evaluations, 'call')} for {ran})"
    sub = (
        f"planned {_plural(schedule.model_calls, 'call')} for {_plural(schedule.steps, 'step')} "
        f"({schedule.speedup:.2f}x); estimator {schedule.estimator}; costs {schedule.settings.cost_source}; "
        f"wall {_fmt_seconds(stats.wall_s)}"
    )
    count = len(stats.fallbacks)
    return head, sub + (f"; {_plural(count, 'fallback')}" if count else "; no fallbacks")


def _title(fig: Figure, schedule: Schedule, stats: RunStats | None) -> None:
    head, sub = title_text(schedule, stats)
    fig.text(_LEFT, 0.972, _clip(head, 95), fontsize=15, fontweight="bold", color=TEXT, va="top")
    fig.text(_LEFT, 0.925, _clip(sub, 150), fontsize=10.5, color=TEXT, va="top")


def _legend(fig: Figure) -> None:
    handles = [
        Patch(facecolor=COMPUTE, label="model call"),
        Patch(facecolor=SKIP, label="skip (estimated)"),
        Patch(facecolor=FALLBACK, hatch="///", edgecolor="white", label="fallback (planned skip computed)"),
        Patch(facecolor=NOT_RUN, label="not run"),
        Patch(facecolor=COST, label="predicted edge cost"),
        Line2D([], [], color=SIGMA, linewidth=1.6, label="sigma"),
    ]
    fig.legend(
        handles=handles,
        loc="center",
        bbox_to_anchor=(0.5, 0.867),
        ncol=len(handles),
        fontsize=9.5,
        frameon=False,
        handlelength=1.6,
        columnspacing=1.4,
    )


def _notes(fig: Figure, schedule: Schedule, stats: RunStats | None) -> None:
    """Fallback reasons and notes under the plot, cut to a few lines so they never overlap it."""
    lines = []
    if stats is not None and stats.fallbacks:
        reasons = "; ".join(f"step {r.step}: {r.reason or 'no reason given'}" for r in stats.fallbacks)
        lines.append("fallbacks: " + reasons)
    notes = _all_notes(schedule, stats)
    lines += [f"note: {n}" for n in _truncate_list(notes, _NOTE_LINES - len(lines[:1]))]
    lines = [_clip(line, _NOTE_CHARS) for line in lines[:_NOTE_LINES]]
    if lines:
        fig.text(
            _LEFT, 0.118, "\n".join(lines), fontsize=8.5, color=TEXT, va="top", family="monospace", linespacing=1.35
        )


def _plan_details(schedule: Schedule) -> str:
    s = schedule.settings
    return (
        f"estimator {schedule.estimator}, costs {s.cost_source}, budget {schedule.budget}, "
        f"gamma {s.gamma:g}, warm-up {s.warmup}, max gap {s.max_gap}"
    )


def _all_notes(schedule: Schedule, stats: RunStats | None) -> list[str]:
    return list(schedule.notes) + (list(stats.notes) if stats is not None else [])


def _truncate_list(items: Sequence[str], limit: int) -> list[str]:
    """At most ``limit`` entries, the last one saying how many were left out."""
    items = list(items)
    if limit <= 0:
        return []
    if len(items) <= limit:
        return items
    return items[: limit - 1] + [f"... and {len(items) - limit + 1} more"]


def _wrapped(prefix: str, items: Sequence[str], width: int = 110) -> list[str]:
    text = prefix + (", ".join(items) if items else "none")
    return textwrap.wrap(text, width=width, subsequent_indent="  ", break_on_hyphens=False)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _edge_label(start: int, end: int, span: int, cost: float | None, estimator: str = "") -> str:
    used = f" {estimator}" if estimator else ""
    return f"{start}->{end}{used} K={span} {_fmt_cost(cost if _finite(cost) else None)}"


def _fmt_cost(cost: float | None) -> str:
    """Compact cost text (2 significant digits, short exponent), 'n/a' when unknown."""
    if cost is None:
        return "n/a"
    if cost == 0 or 0.01 <= abs(cost) < 1000:
        return f"{cost:.2g}"
    mantissa, exponent = f"{cost:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1.0 else f"{seconds * 1e3:.3g} ms"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _finite(value: float | None) -> bool:
    return value is not None and bool(np.isfinite(value))


def _records_by_step(schedule: Schedule, stats: RunStats | None) -> dict[int, StepRecord]:
    """The run's record per step within the schedule (a partial run simply has fewer)."""
    if stats is None:
        return {}
    return {r.step: r for r in stats.records if 0 <= r.step < schedule.steps}
