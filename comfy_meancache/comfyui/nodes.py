"""The V3 nodes: MeanCache Planner -> MeanCache Apply -> MeanCache Report.

Node ids and the order of widget inputs are permanent: saved workflows refer
to them by id and store widget values by position. Append, never reorder; the
frontend also saves the node's text box as one extra trailing value, so a new
widget appended later must tolerate reading that text from old workflows.
"""

from __future__ import annotations

import weakref
from dataclasses import replace

import torch
from comfy_api.latest import ComfyExtension, io, ui

from ..core.chart import cost_heatmap, fragments_summary, plan_chart, run_chart, summary_text
from ..core.estimators import DEFAULT_ESTIMATOR, ESTIMATORS
from ..core.planner import MAX_STEPS
from ..core.presets import CUSTOM, DEFAULT_PRESET, PRESET_NAMES, PRESETS
from ..core.schedule import PlannerSettings, Schedule
from ..core.stepper import RunStats
from .calibration import Calibration, load_profile, profile_stamp, saved_profiles
from .hook import MeanCacheHolder, RunHistory, attach
from .planning import AUTO, BUILT_IN_SOURCES, plan_from_source

CATEGORY = "sampling/meancache"
ScheduleType = io.Custom("MEANCACHE_SCHEDULE")
StatsType = io.Custom("MEANCACHE_STATS")  # carries a RunHistory; the type name is kept for saved workflows
MODEL_DEVICE = "model device"
_DEFAULTS = PlannerSettings()
#: Live Apply run histories, so the Report can join the fragments of one plan sampled by several models (Wan 2.2).
_APPLIED: weakref.WeakSet[RunHistory] = weakref.WeakSet()


class MeanCachePlanner(io.ComfyNode):
    """Plans which steps call the model (PSSP) for the sigmas the sampler will use."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        import comfy.samplers

        return io.Schema(
            node_id="MeanCachePlanner",
            display_name="MeanCache Planner",
            category=CATEGORY,
            description="Plans which sampling steps call the model and which are estimated from the cached "
            "velocity history (MeanCache). Connect the schedule to MeanCache Apply.",
            inputs=[
                io.Model.Input("model", tooltip="The model you will sample; its model sampling gives the sigmas."),
                io.Combo.Input(
                    "preset",
                    options=list(PRESET_NAMES),
                    default=DEFAULT_PRESET,
                    tooltip="Target model-call speedup: "
                    + ", ".join(f"{name} {p.speedup:g}x" for name, p in PRESETS.items())
                    + ". "
                    "custom uses the settings below.",
                ),
                io.Int.Input("steps", default=40, min=1, max=MAX_STEPS, tooltip="Same steps as your KSampler."),
                io.Combo.Input(
                    "scheduler",
                    options=list(comfy.samplers.SCHEDULER_NAMES),
                    default="simple",
                    tooltip="Same scheduler as your KSampler.",
                ),
                io.Float.Input(
                    "denoise", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="Same denoise as your KSampler."
                ),
                io.Int.Input(
                    "compute_steps",
                    default=0,
                    min=0,
                    max=10000,
                    tooltip="custom: model calls to spend; 0 = use the speedup below.",
                ),
                io.Float.Input(
                    "speedup", default=2.5, min=1.0, max=20.0, step=0.05, tooltip="custom: target model-call speedup."
                ),
                io.Float.Input(
                    "gamma",
                    default=_DEFAULTS.gamma,
                    min=0.1,
                    max=8.0,
                    step=0.1,
                    tooltip="custom: peak suppression. Higher spreads the error over many small skips instead of "
                    "one large one.",
                ),
                io.Int.Input(
                    "warmup",
                    default=_DEFAULTS.warmup,
                    min=0,
                    max=1000,
                    tooltip="custom: leading steps always computed, whatever the cost source (presets compute 3 "
                    "when nothing was measured on the model, only step 0 with learned costs or a profile).",
                ),
                io.Int.Input(
                    "max_gap",
                    default=_DEFAULTS.max_gap,
                    min=1,
                    max=1000,
                    tooltip="custom: the most steps between two model calls.",
                ),
                io.Combo.Input(
                    "estimator",
                    options=list(ESTIMATORS),
                    default=DEFAULT_ESTIMATOR,
                    tooltip="custom: how skipped steps get their velocity. meancache2: JVP between the last two "
                    "computed steps; meancache: the official update; reuse: the last computed velocity.",
                ),
                io.Combo.Input(
                    "cost_source",
                    options=[*BUILT_IN_SOURCES, *saved_profiles()],
                    default=AUTO,
                    tooltip="Where edge costs come from. auto (default): a model's first run plans evenly while "
                    "sigma is above 0.75 and for flat curvature below; every cached run teaches this "
                    "model's costs (at no extra model call) to a small profile in "
                    "user/meancache/auto, keyed by model, LoRAs, sampler and cfg, and later runs plan from it. "
                    "even: model calls spread evenly over your sampler's steps, nothing assumed or learned. "
                    "prior: a built-in synthetic flow (fitted to a digits model; can misplace calls on others). "
                    "official-zimage-50: the published Z-Image lists (made on diffusers' shift-6 grid), moved onto "
                    "your sigmas. Other entries: profiles saved by MeanCache Calibrate.",
                ),
                io.Sigmas.Input(
                    "sigmas",
                    optional=True,
                    tooltip="Optional: plan exactly these sigmas (SamplerCustomAdvanced); overrides steps, scheduler "
                    "and denoise.",
                ),
            ],
            outputs=[
                ScheduleType.Output(display_name="schedule", tooltip="Connect to MeanCache Apply and Report."),
                io.Image.Output(display_name="plan_chart", tooltip="The plan as a step chart."),
                io.String.Output(display_name="summary", tooltip="One-line summary of the plan."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(
        cls, preset: str | None, steps: int | None, compute_steps: int | None, cost_source: str | None
    ) -> bool | str:
        """Refuse contradictory settings before anything runs (linked inputs arrive as None).

        Naming inputs here turns off ComfyUI's own checks for them, so their
        ranges are checked here too.
        """
        if preset is not None and preset not in PRESET_NAMES:
            return f"preset: {preset!r} is not one of {', '.join(PRESET_NAMES)}"
        if steps is not None and not 1 <= steps <= MAX_STEPS:
            return f"steps: must be 1..{MAX_STEPS} (MeanCache plans at most {MAX_STEPS} steps), got {steps}"
        if compute_steps is not None and compute_steps < 0:
            return f"compute_steps: must be >= 0, got {compute_steps}"
        if compute_steps and preset is not None and preset != CUSTOM:
            return (
                f"compute_steps: {compute_steps} is only used by preset 'custom' (preset is {preset!r}); "
                "set preset to custom, or compute_steps to 0"
            )
        if compute_steps and steps is not None and compute_steps > steps:
            return f"compute_steps: {compute_steps} > steps {steps}"
        if cost_source is not None and cost_source not in (*BUILT_IN_SOURCES, *saved_profiles()):
            return (
                f"cost_source: no calibration profile named {cost_source!r} on this machine; run MeanCache "
                "Calibrate with that profile name first, or choose prior"
            )
        return True

    @classmethod
    def fingerprint_inputs(cls, cost_source: str | None = None, **kwargs) -> tuple:
        """Re-plan when the chosen profile changes on disk (a new calibration run), though no input changed.

        Built-in sources never change, so they give a constant and the Planner stays cached.
        """
        if cost_source is None or cost_source in BUILT_IN_SOURCES:
            return ()
        return profile_stamp(cost_source)

    @classmethod
    def execute(
        cls,
        model,
        preset: str,
        steps: int,
        scheduler: str,
        denoise: float,
        compute_steps: int,
        speedup: float,
        gamma: float,
        warmup: int,
        max_gap: int,
        estimator: str,
        cost_source: str,
        sigmas: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        grid = _planning_sigmas(model, steps, scheduler, denoise, sigmas)
        if preset in PRESETS:
            chosen = PRESETS[preset]
            settings, budget = replace(chosen.settings, preset=preset), dict(speedup=chosen.speedup)
            estimator = chosen.estimator
        elif preset == CUSTOM:
            settings = replace(_DEFAULTS, gamma=gamma, warmup=warmup, max_gap=max_gap, preset=CUSTOM)
            budget = dict(compute_steps=compute_steps) if compute_steps > 0 else dict(speedup=speedup)
        else:
            raise ValueError(f"preset: unknown preset {preset!r}; choose one of {', '.join(PRESET_NAMES)}")
        try:
            schedule = plan_from_source(grid, cost_source, estimator, settings, budget)
        except ValueError as exc:
            raise ValueError(f"MeanCache Planner: {exc}") from exc
        chart = plan_chart(schedule)
        _show_text(cls, schedule.summary())
        return io.NodeOutput(schedule, chart, schedule.summary(), ui=_preview(chart, cls, schedule.summary()))


class MeanCacheApply(io.ComfyNode):
    """Patches a model so sampling follows a MeanCache schedule."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MeanCacheApply",
            display_name="MeanCache Apply",
            category=CATEGORY,
            description="Samples with the planned schedule: skipped steps do not call the model; their velocity is "
            "estimated from the cached history.",
            inputs=[
                io.Model.Input("model", tooltip="The model to speed up (it is cloned, never changed)."),
                ScheduleType.Input("schedule", tooltip="From MeanCache Planner."),
                io.Boolean.Input("debug", default=False, tooltip="Log every step's decision."),
                io.Combo.Input(
                    "cache_device",
                    options=[MODEL_DEVICE, "cpu"],
                    default=MODEL_DEVICE,
                    tooltip="Where the velocity history lives. cpu spares VRAM (a few latents) at the cost of "
                    "copies each step.",
                ),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The patched model: connect to your sampler."),
                StatsType.Output(display_name="stats", tooltip="What really ran: connect to MeanCache Report."),
            ],
        )

    @classmethod
    def execute(cls, model, schedule: Schedule, debug: bool = False, cache_device: str = MODEL_DEVICE):
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule: expected a MeanCache schedule, got {type(schedule).__name__}")
        if cache_device not in (MODEL_DEVICE, "cpu"):
            raise ValueError(f"cache_device: {cache_device!r} is not one of {MODEL_DEVICE!r}, 'cpu'")
        device = None if cache_device == MODEL_DEVICE else cache_device
        holder = MeanCacheHolder(schedule, schedule.settings.preset, debug, cache_device=device)
        _APPLIED.add(holder.history)
        return io.NodeOutput(attach(model, holder), holder.history)


class MeanCacheCalibrate(io.ComfyNode):
    """Records full-step runs of this model into a named profile the Planner can plan from."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MeanCacheCalibrate",
            display_name="MeanCache Calibrate",
            category=CATEGORY,
            description="Samples every step and adds each run to a calibration profile (user/meancache/<name>). "
            "Run a few prompts and seeds with the sampler settings you use, then pick the profile as the "
            "Planner's cost source.",
            inputs=[
                io.Model.Input("model", tooltip="The model (with its LoRAs) to calibrate; it is cloned."),
                io.String.Input(
                    "profile_name",
                    default="zimage",
                    tooltip="Profile to create or add to: letters, digits, '_', '-', '.'. More runs average in.",
                ),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="Sample with this model to record a run."),
                StatsType.Output(display_name="stats", tooltip="Connect to MeanCache Report to see the profile."),
            ],
        )

    @classmethod
    def execute(cls, model, profile_name: str) -> io.NodeOutput:
        if profile_name.strip() in BUILT_IN_SOURCES:
            raise ValueError(f"profile_name: {profile_name.strip()!r} names a built-in cost source; choose another")
        try:
            calibration = Calibration(profile_name.strip())
        except ValueError as exc:
            raise ValueError(f"profile_name: {exc}") from exc
        holder = MeanCacheHolder(None, f"calibrate {calibration.name}", calibration=calibration)
        return io.NodeOutput(attach(model, holder), holder.history)


class MeanCacheReport(io.ComfyNode):
    """Renders the plan and what really happened as a step chart."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MeanCacheReport",
            display_name="MeanCache Report",
            category=CATEGORY,
            description="Step chart of the plan and of the last sampling run: computed, skipped and fallback steps, "
            "spans, sigmas, predicted costs and step times.",
            inputs=[
                io.Latent.Input("latent", tooltip="The sampler's output latent, so the report runs after sampling."),
                StatsType.Input(
                    "stats",
                    optional=True,
                    tooltip="From MeanCache Apply (or Calibrate). Optional so that bypassing Apply to compare "
                    "with an uncached run keeps the graph valid.",
                ),
                io.Image.Input(
                    "images", optional=True, tooltip="Optional decoded images (also orders it after sampling)."
                ),
                ScheduleType.Input(
                    "schedule", optional=True, tooltip="Optional: the plan, shown before any run has used it."
                ),
            ],
            outputs=[
                io.Image.Output(display_name="chart", tooltip="The step chart."),
                io.String.Output(display_name="summary", tooltip="Text summary of plan and run."),
            ],
            is_output_node=True,
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, latent: dict, stats: RunHistory | None = None, images=None, schedule: Schedule | None = None):
        if stats is not None and not isinstance(stats, RunHistory):
            raise ValueError(f"stats: expected MeanCache stats from MeanCache Apply, got {type(stats).__name__}")
        if stats is None:
            text = "No MeanCache stats connected (MeanCache Apply bypassed?): the sampler ran uncached."
            chart = plan_chart(schedule) if schedule is not None else plan_chart(_placeholder())
        elif stats.calibration_name is not None:
            chart, text = _calibration_report(stats, _run_for(stats, latent))
        else:
            chart, text = _run_report(stats, latent, schedule)
        _show_text(cls, text)
        return io.NodeOutput(chart, text, ui=_preview(chart, cls, text))


def _run_report(history: RunHistory, latent: dict, schedule: Schedule | None) -> tuple[torch.Tensor, str]:
    matched = _matching_run(history, latent)
    run = matched or history.latest
    shown = run.schedule if run is not None else schedule or history.plan
    text = summary_text(shown, run)
    if run is None:
        return run_chart(shown, None), f"{_unused(history)}\n{text}"
    where = f"run {list(history.runs).index(run) + 1} of the {len(history.runs)} kept for this {history.node}"
    if matched is None:
        where += " (the latent matched none of them; showing the newest)"
    siblings = [h for h in _APPLIED if h is not history and h.plan is history.plan]
    plan_runs = [r for h in [*siblings, history] for r in h.runs]
    fragments = fragments_summary(history.plan, run, plan_runs)
    return run_chart(shown, run), "\n".join(line for line in (where, fragments, text) if line)


def _calibration_report(history: RunHistory, run: RunStats | None) -> tuple[torch.Tensor, str]:
    """Heat map of the profile's edge costs on the last run's sigmas, and what the profile holds."""
    name = history.calibration_name
    unused = "" if run else f"{_unused(history)}\n"
    try:
        profile = load_profile(name)
    except ValueError as exc:
        text = f"{unused}Calibration profile {name!r}: nothing recorded yet ({exc})"
        return run_chart(run.schedule, run) if run else plan_chart(_placeholder()), text
    sigmas = list(profile.runs[-1].sigmas)
    costs = profile.costs(sigmas, DEFAULT_ESTIMATOR)
    title = f"Profile {name}: {len(profile.runs)} runs, {len(sigmas) - 1} steps ({DEFAULT_ESTIMATOR} costs)"
    meta = ", ".join(f"{k} {v}" for k, v in profile.metadata.items() if k not in ("per_run",))
    notes = "\n".join(run.notes) if run else ""
    return cost_heatmap(costs, _DEFAULTS.max_span, title), f"{unused}{title}\n{meta}\n{notes}".strip()


def _unused(history: RunHistory) -> str:
    """Why a Report has no run to show: nothing sampled yet, or a later MeanCache patch replaced this one."""
    if history.replaced_by:
        return (
            f"No sampling run has used this {history.node}: a later {history.replaced_by} replaced it on the model, "
            "so the runs are in that node's Report."
        )
    return f"No sampling run has used this {history.node} yet."


def _placeholder() -> Schedule:
    return Schedule([1.0, 0.0], [True], [0], DEFAULT_ESTIMATOR, 1)


def _planning_sigmas(model, steps: int, scheduler: str, denoise: float, sigmas: torch.Tensor | None) -> list[float]:
    """The sigmas KSampler would use (its ``set_steps`` rule), or the given SIGMAS."""
    if sigmas is not None:
        grid = [float(s) for s in sigmas.flatten().tolist()]
        if len(grid) < 2:
            raise ValueError("sigmas: need at least 2 sigmas to plan")
        return grid
    if denoise <= 0.0:
        raise ValueError("denoise: must be > 0 to sample anything")
    import comfy.samplers

    model_sampling = model.get_model_object("model_sampling")
    total = steps if denoise > 0.9999 else int(steps / denoise)
    grid = comfy.samplers.calculate_sigmas(model_sampling, scheduler, total)
    return [float(s) for s in grid[-(steps + 1) :].tolist()]


def _run_for(history: RunHistory, latent: dict) -> RunStats | None:
    """The run whose output is ``latent`` (newest first), else the newest run."""
    return _matching_run(history, latent) or history.latest


def _matching_run(history: RunHistory, latent: dict) -> RunStats | None:
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor):
        return None
    return next((run for run in reversed(history.runs) if run.matches(samples)), None)


def _preview(image: torch.Tensor, cls, text: str) -> dict:
    """The chart on the node, plus the text for the pack's frontend (every ui value must be a list)."""
    return {**ui.PreviewImage(image, cls=cls).as_dict(), "text": [text]}


def _show_text(cls, text: str) -> None:
    """Show ``text`` on the node (no JS needed); skipped outside a running server."""
    unique_id = getattr(cls.hidden, "unique_id", None) if cls.hidden is not None else None
    if unique_id is None:
        return
    from server import PromptServer

    server = getattr(PromptServer, "instance", None)  # absent until a server exists (tests, scripts)
    if server is not None:
        server.send_progress_text(text, unique_id)


class MeanCacheExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [MeanCachePlanner, MeanCacheApply, MeanCacheReport, MeanCacheCalibrate]


async def comfy_entrypoint() -> MeanCacheExtension:
    return MeanCacheExtension()
