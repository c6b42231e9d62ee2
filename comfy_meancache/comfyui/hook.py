"""The model hook: runs a MeanCache schedule inside ComfyUI's sampler.

Two wrappers, registered with ``ModelPatcher.add_wrapper_with_key``:

* OUTER_SAMPLE, once per sampling call: reads the run's sigmas, follows the
  plan on them (its slice of the plan for a fragment of the planned grid, a
  new plan from the same cost source for other sigmas), starts a fresh
  :class:`RunState` and, in ``finally``, frees it and publishes the run's
  statistics, so interrupts and errors leave nothing behind. Under the
  ``auto`` cost source it plans from the model's learned profile
  (:mod:`.auto_profile`), or as a first run when nothing is learned yet
  (:func:`~..core.learning.first_run_plan`), and a completed run adds what
  it observed to it.
* PREDICT_NOISE, once per sampler evaluation: the guided prediction, covering
  cond and uncond however they are batched. It sees the CFG-combined denoised
  ``x0``, so the velocity is ``v = (x - x0) / sigma`` and a skipped step returns
  ``x - sigma * v_hat`` without calling the model.

Each sampling call is served by the core's :class:`~..core.runtime.CachedDenoiser`,
the same entry point the benchmark and scripts outside ComfyUI use: it finds
the step by matching sigma against the run's ``sample_sigmas``, never by
counting calls; evaluations that are not a step's first (midpoints, Heun
correctors, repeats) are computed normally and stay out of the history.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import replace

from ..core.estimators import DEFAULT_ESTIMATOR
from ..core.learning import Observations
from ..core.profile import TrajectoryRecorder
from ..core.runtime import SIGMA_RTOL, CachedDenoiser
from ..core.schedule import Schedule
from ..core.stepper import RunStats, fingerprint
from .auto_profile import AutoProfile, architecture_key, profile_path
from .calibration import Calibration
from .planning import AUTO, learned_plan, replan
from .sampler_policy import SamplerPolicy, sampler_policy

log = logging.getLogger("comfy_meancache")

WRAPPER_KEY = "meancache"
HOLDER_KEY = "meancache"
RUN_KEY = "meancache_run"
KEPT_RUNS = 16


class RunHistory:
    """What the MEANCACHE_STATS socket carries: the finished runs of one MeanCache patch.

    Owned by that patch's :class:`MeanCacheHolder`; MeanCache Report reads
    only this. ``node`` and ``label`` name the patch in the Report and the log;
    ``calibration_name`` is the profile a Calibrate patch adds runs to.
    ``replaced_by`` is set when a later MeanCache node patched a model that
    carried this patch: sampling that model runs only the newer patch.
    """

    def __init__(
        self, node: str, label: str, plan: Schedule | None = None, calibration_name: str | None = None
    ) -> None:
        self.node = node
        self.label = label
        self.plan = plan
        self.calibration_name = calibration_name
        self.runs: deque[RunStats] = deque(maxlen=KEPT_RUNS)
        self.replaced_by: str | None = None

    @property
    def latest(self) -> RunStats | None:
        return self.runs[-1] if self.runs else None


class MeanCacheHolder:
    """What MeanCache Apply (or Calibrate) attaches to a model: plan, options and the run history.

    It survives ``ModelPatcher.clone()`` deep copies by later nodes (LoRA
    loaders, model-sampling patches) by being its own deep copy, so the stats
    of every run reach the Report node. Without a schedule every step is
    computed; with a ``calibration`` each completed run is added to a profile.
    """

    def __init__(
        self,
        schedule: Schedule | None,
        label: str = "custom",
        debug: bool = False,
        calibration: Calibration | None = None,
        cache_device: str | None = None,
    ) -> None:
        self.schedule = schedule
        self.debug = debug
        self.calibration = calibration
        self.cache_device = cache_device
        node = "MeanCache Apply" if calibration is None else "MeanCache Calibrate"
        self.history = RunHistory(node, label, schedule, calibration.name if calibration is not None else None)

    def __deepcopy__(self, memo: dict) -> MeanCacheHolder:
        return self


class RunState:
    """Per-sampling-call state: the core run (:class:`CachedDenoiser`) under ComfyUI's sampler and calibration."""

    def __init__(
        self, holder: MeanCacheHolder, sigmas: list[float], policy: SamplerPolicy, auto: AutoProfile | None = None
    ) -> None:
        notes: list[str] = []
        if holder.schedule is None:
            schedule, derived = _every_step(sigmas, DEFAULT_ESTIMATOR), []
        else:
            schedule, derived = _schedule_for(holder.schedule, sigmas, auto.for_planning if auto else None)
            if auto is not None and auto.for_planning is not auto.observations:
                notes.append(f"auto: nothing learned for this setup yet; planned from {auto.borrowed[1]}")
        if not policy.cached and schedule.model_calls < schedule.steps:
            schedule = _every_step(sigmas, schedule.estimator)
            notes.append(f"ran uncached: {policy.reason}")
        self.auto = auto
        self.recorder = None
        if holder.calibration is not None:
            if policy.cached:
                self.recorder = TrajectoryRecorder()
            else:
                notes.append(f"not recorded for calibration: {policy.reason}")
        self.sigmas = sigmas
        self.policy = policy
        self.denoiser = CachedDenoiser(
            None,
            schedule,
            corrector_first=policy.corrector_first,
            cache_device=holder.cache_device,
            debug=holder.debug,
            on_compute=self.recorder.observe if self.recorder is not None else None,
            learn=auto.observations if auto is not None else None,
        )
        self.notes = notes  # this run's own; how its plan was derived is in the plan's notes
        self.log_lines = [*derived, *notes]

    def finish(self, completed: bool) -> RunStats:
        """The run's statistics; a completed run under ``auto`` saves what it learned."""
        stats = self.denoiser.stats
        stats.notes[:0] = self.notes
        if self.auto is not None:
            if completed:
                self.auto.save()
            stats.notes += self.auto.notes
        return stats


def _every_step(sigmas: list[float], estimator: str) -> Schedule:
    n = len(sigmas) - 1
    return Schedule(sigmas, [True] * n, [0] * n, estimator, n)


def _schedule_for(
    schedule: Schedule, sigmas: list[float], learned: Observations | None = None
) -> tuple[Schedule, list[str]]:
    """The plan on this run's sigmas, and the notes it gained saying how it was derived (to log).

    The planned grid runs as planned; a contiguous part of it (KSamplerAdvanced
    start/end, SplitSigmas, a two-model split) runs its slice of the plan;
    any other grid (another step count, denoise, scheduler) is planned again
    from the same cost source. Only if that fails is the plan remapped by sigma.
    With ``learned`` (the ``auto`` source) the plan is made from this model's
    learned costs first: on the planned grid, then sliced, or on the new grid.
    """
    start = schedule.fragment_start(sigmas, SIGMA_RTOL)
    if learned is not None and start is not None:
        schedule = learned_plan(schedule, learned)
    if start is not None and len(sigmas) == len(schedule.sigmas):
        return (schedule if tuple(sigmas) == schedule.sigmas else replace(schedule, sigmas=sigmas)), []
    if start is not None:
        part = schedule.fragment(start, sigmas)
        return part, list(part.notes[len(schedule.notes) :])
    try:
        planned = replan(schedule, sigmas, learned)
    except (OSError, ValueError) as exc:
        remapped = schedule.with_notes(f"could not re-plan on the sampler's sigmas: {exc}").remap(sigmas)
        return remapped, list(remapped.notes[len(schedule.notes) :])
    return planned, [planned.notes[-1]]


def outer_sample_wrapper(executor, *args, **kwargs):
    """Fresh run state for each sampling call; freed and reported in ``finally``."""
    guider = executor.class_obj
    original_options = guider.model_options
    holder: MeanCacheHolder = original_options["transformer_options"][HOLDER_KEY]
    sampler, sigmas = args[2], args[3]
    run = output = None
    try:
        guider.model_options = _clone_options(original_options)
        policy = sampler_policy(sampler)
        try:
            grid = [float(s) for s in sigmas.tolist()]
            run = RunState(holder, grid, policy, _auto_profile(holder, guider, policy, grid))
        except ValueError as exc:  # sigmas no schedule can follow (rising, a single one): sample plainly
            log.warning("[MeanCache] %s: running this sampler uncached: %s", holder.history.label, exc)
            return executor(*args, **kwargs)
        guider.model_options["transformer_options"][RUN_KEY] = run
        for line in run.log_lines:
            log.info("[MeanCache] %s", line)
        output = executor(*args, **kwargs)
        return output
    finally:
        guider.model_options = original_options
        if run is not None:
            stats = run.finish(completed=output is not None)
            if output is not None:
                stats.output_fingerprint = fingerprint(output)
            else:
                stats.notes.append("the run stopped early (interrupted or failed)")
            if output is not None and run.recorder is not None:
                _calibrate(holder.calibration, run, stats, guider)
            holder.history.runs.append(stats)
            _log_run(holder, stats)


def _auto_profile(holder: MeanCacheHolder, guider, policy: SamplerPolicy, sigmas: list[float]) -> AutoProfile | None:
    """The learned profile of this model and sampler setup, for a plan whose cost source is ``auto``."""
    if holder.schedule is None or holder.schedule.settings.cost_key != AUTO or not policy.cached:
        return None
    cfg = getattr(guider, "cfg", None)
    cfg = float(cfg) if isinstance(cfg, (int, float)) else None
    try:
        path, prefix = profile_path(guider.model_patcher, policy.name, cfg)
        architecture = architecture_key(guider.model_patcher)
    except (AttributeError, RuntimeError, TypeError, ValueError, OSError) as exc:
        log.warning("[MeanCache] auto: could not identify the model (%s); this run plans evenly", exc)
        return None
    model = type(guider.model_patcher.model).__name__
    metadata = {"model": model, "architecture": architecture, "sampler": policy.name, "cfg": cfg}
    return AutoProfile.open(path, prefix, metadata, sigmas)


def predict_noise_wrapper(executor, *args, **kwargs):
    """Compute or skip this evaluation as the schedule says (the core run decides)."""
    x, timestep, model_options = args[0], args[1], args[2]
    run: RunState | None = model_options.get("transformer_options", {}).get(RUN_KEY)
    if run is None:
        return executor(*args, **kwargs)
    return run.denoiser.evaluate(x, timestep, lambda: executor(*args, **kwargs))


def _calibrate(calibration: Calibration, run: RunState, stats: RunStats, guider) -> None:
    """Add the finished run to the profile; a failure is logged, never raised after sampling."""
    try:
        trajectory = run.recorder.trajectory(run.sigmas)
        runs = calibration.add(trajectory, _run_metadata(guider, run))
    except (OSError, ValueError) as exc:
        stats.notes.append(f"calibration run not saved: {exc}")
        log.warning("[MeanCache] calibration run not saved: %s", exc)
        return
    stats.notes.append(f"profile {calibration.name!r} now holds {runs} calibration runs")


def _run_metadata(guider, run: RunState) -> dict:
    model_sampling = guider.model_patcher.get_model_object("model_sampling")
    return {
        "model": type(guider.model_patcher.model).__name__,
        "shift": float(getattr(model_sampling, "shift", float("nan"))),
        "sampler": run.policy.name,
        "steps": len(run.sigmas) - 1,
        "cfg": float(getattr(guider, "cfg", float("nan"))),
    }


def _clone_options(model_options: dict) -> dict:
    import comfy.model_patcher

    return comfy.model_patcher.create_model_options_clone(model_options)


def _log_run(holder: MeanCacheHolder, stats: RunStats) -> None:
    log.info("[MeanCache] %s: %s", holder.history.label, stats.summary())
    for record in stats.fallbacks:
        log.info("[MeanCache] step %d computed although planned to skip: %s", record.step, record.reason)
    if holder.debug:
        for record in stats.records:
            log.info(
                "[MeanCache] step %d sigma %.4f: %s (K=%d)", record.step, record.sigma, record.action.value, record.span
            )


def attach(model, holder: MeanCacheHolder):
    """A clone of ``model`` (a ModelPatcher) that samples under ``holder``.

    A MeanCache patch already on ``model`` (Apply -> Apply, Calibrate -> Apply,
    ...) is replaced, with one warning: stacked wrappers under one key would
    each start a run and the Report would show the empty one, or calibration
    would silently record nothing. The earlier holder's history is told, so
    its Report says why it has no run instead of showing none.
    """
    from comfy.patcher_extension import WrappersMP

    patched = model.clone()
    options = patched.model_options.setdefault("transformer_options", {})
    earlier = options.get(HOLDER_KEY)
    if earlier is not None:
        earlier.history.replaced_by = holder.history.node
        log.warning(
            "[MeanCache] %s replaces the earlier %s patch on this model; only the newer runs",
            holder.history.node,
            earlier.history.node,
        )
    options[HOLDER_KEY] = holder
    for wrapper_type, wrapper in (
        (WrappersMP.OUTER_SAMPLE, outer_sample_wrapper),
        (WrappersMP.PREDICT_NOISE, predict_noise_wrapper),
    ):
        patched.remove_wrappers_with_key(wrapper_type, WRAPPER_KEY)  # the clone's own list: ``model`` keeps its patch
        patched.add_wrapper_with_key(wrapper_type, WRAPPER_KEY, wrapper)
    return patched
