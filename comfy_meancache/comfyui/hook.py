"""The model hook: runs a MeanCache schedule inside ComfyUI's sampler.

Two wrappers, registered with ``ModelPatcher.add_wrapper_with_key``:

* OUTER_SAMPLE, once per sampling call: reads the run's sigmas, follows the
  plan on them (its slice of the plan for a fragment of the planned grid, a
  new plan from the same cost source for other sigmas), starts a fresh
  :class:`RunState` and, in ``finally``, frees it and publishes the run's
  statistics, so interrupts and errors leave nothing behind.
* PREDICT_NOISE, once per sampler evaluation: the guided prediction, covering
  cond and uncond however they are batched. It sees the CFG-combined denoised
  ``x0``, so the velocity is ``v = (x - x0) / sigma`` and a skipped step returns
  ``x - sigma * v_hat`` without calling the model.

The step is found by matching sigma against the run's ``sample_sigmas``, never
by counting calls; evaluations that are not a step's first (midpoints, Heun
correctors, repeats) are computed normally and stay out of the history.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import replace

import torch

from ..core.estimators import DEFAULT_ESTIMATOR
from ..core.profile import TrajectoryRecorder
from ..core.schedule import Schedule
from ..core.stepper import Action, RunStats, Stepper, fingerprint
from .calibration import Calibration
from .planning import replan
from .sampler_policy import SamplerPolicy, sampler_policy

log = logging.getLogger("comfy_meancache")

WRAPPER_KEY = "meancache"
HOLDER_KEY = "meancache"
RUN_KEY = "meancache_run"
SIGMA_RTOL = 1e-5
KEPT_RUNS = 16


class MeanCacheHolder:
    """What MeanCache Apply (or Calibrate) attaches to a model: plan, options and finished runs.

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
        self.label = label
        self.debug = debug
        self.calibration = calibration
        self.cache_device = cache_device
        self.runs: deque[RunStats] = deque(maxlen=KEPT_RUNS)

    def __deepcopy__(self, memo: dict) -> MeanCacheHolder:
        return self

    @property
    def latest(self) -> RunStats | None:
        return self.runs[-1] if self.runs else None


class RunState:
    """Per-sampling-call state: the stepper plus the evaluation-to-step bookkeeping."""

    def __init__(self, holder: MeanCacheHolder, sigmas: list[float], policy: SamplerPolicy) -> None:
        if holder.schedule is None:
            schedule, notes = _every_step(sigmas, DEFAULT_ESTIMATOR), []
        else:
            schedule, notes = _schedule_for(holder.schedule, sigmas)
        if not policy.cached and schedule.model_calls < schedule.steps:
            schedule = _every_step(sigmas, schedule.estimator)
            notes.append(f"ran uncached: {policy.reason}")
        self.recorder = None
        if holder.calibration is not None:
            if policy.cached:
                self.recorder = TrajectoryRecorder()
            else:
                notes.append(f"not recorded for calibration: {policy.reason}")
        self.sigmas = sigmas
        self.policy = policy
        self.stepper = Stepper(schedule, debug=holder.debug, cache_device=holder.cache_device)
        self.stepper.stats.notes.extend(notes)
        self.last_step = -1
        self.extra_evaluations = 0
        self._correctors_seen: set[int] = set()

    def first_evaluation_step(self, sigma: float, rtol: float = SIGMA_RTOL) -> int | None:
        """The step whose first evaluation this is, or None for any other evaluation.

        Steps are matched in order: the earliest step after the last one seen
        whose sigma equals ``sigma`` within ``rtol``. Half-precision latents
        carry their sigma rounded to the latent's dtype, where neighbouring
        grid sigmas can round alike, so order decides between them.
        """
        step = _match(self.sigmas, sigma, self.last_step + 1, rtol)
        if step is None or self.sigmas[step] == 0.0:
            self.extra_evaluations += 1
            return None
        if self.policy.corrector_first and step >= 1 and step not in self._correctors_seen:
            self._correctors_seen.add(step)
            self.extra_evaluations += 1
            return None
        self.last_step = step
        return step

    def finish(self) -> RunStats:
        stats = self.stepper.finish()
        if self.extra_evaluations:
            stats.notes.append(f"{self.extra_evaluations} extra sampler evaluations computed ({self.policy.name})")
        return stats


def _every_step(sigmas: list[float], estimator: str) -> Schedule:
    n = len(sigmas) - 1
    return Schedule(sigmas, [True] * n, [0] * n, estimator, n)


def _match(sigmas: list[float], sigma: float, start: int, rtol: float) -> int | None:
    """The first step from ``start`` on whose sigma equals ``sigma`` within ``rtol``, if any."""
    tolerance = rtol * max(abs(sigma), 1e-3)
    return next((i for i in range(start, len(sigmas) - 1) if abs(sigmas[i] - sigma) <= tolerance), None)


def _schedule_for(schedule: Schedule, sigmas: list[float]) -> tuple[Schedule, list[str]]:
    """The plan on this run's sigmas, with notes saying how it was derived.

    The planned grid runs as planned; a contiguous part of it (KSamplerAdvanced
    start/end, SplitSigmas, a two-model split) runs its slice of the plan;
    any other grid (another step count, denoise, scheduler) is planned again
    from the same cost source. Only if that fails is the plan remapped by sigma.
    """
    start = schedule.fragment_start(sigmas, SIGMA_RTOL)
    if start is not None and len(sigmas) == len(schedule.sigmas):
        return (schedule if sigmas[-1] == schedule.sigmas[-1] else replace(schedule, sigmas=sigmas)), []
    if start is not None:
        part = schedule.fragment(start, sigmas)
        return part, list(part.notes[len(schedule.notes) :])
    try:
        planned = replan(schedule, sigmas)
    except (OSError, ValueError) as exc:
        remapped = schedule.remap(sigmas)
        return remapped, [f"could not re-plan ({exc}); {remapped.notes[-1]}"]
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
        try:
            run = RunState(holder, [float(s) for s in sigmas.tolist()], sampler_policy(sampler))
        except ValueError as exc:  # sigmas no schedule can follow (rising, a single one): sample plainly
            log.warning("[MeanCache] %s: running this sampler uncached: %s", holder.label, exc)
            return executor(*args, **kwargs)
        guider.model_options["transformer_options"][RUN_KEY] = run
        for note in run.stepper.stats.notes:
            log.info("[MeanCache] %s", note)
        output = executor(*args, **kwargs)
        return output
    finally:
        guider.model_options = original_options
        if run is not None:
            stats = run.finish()
            if output is not None:
                stats.output_fingerprint = fingerprint(output)
            else:
                stats.notes.append("the run stopped early (interrupted or failed)")
            if output is not None and run.recorder is not None:
                _calibrate(holder.calibration, run, stats, guider)
            holder.runs.append(stats)
            _log_run(holder, stats)


def predict_noise_wrapper(executor, *args, **kwargs):
    """Compute or skip this evaluation as the schedule says."""
    x, timestep, model_options = args[0], args[1], args[2]
    run: RunState | None = model_options.get("transformer_options", {}).get(RUN_KEY)
    if run is None:
        return executor(*args, **kwargs)
    rtol = max(SIGMA_RTOL, torch.finfo(timestep.dtype).eps) if timestep.is_floating_point() else SIGMA_RTOL
    step = run.first_evaluation_step(float(timestep.flatten()[0]), rtol)
    if step is None:
        return executor(*args, **kwargs)
    sigma = run.sigmas[step]
    if run.stepper.decide(step, x) is Action.COMPUTE:
        denoised = executor(*args, **kwargs)
        velocity = (x - denoised) / sigma
        run.stepper.record(step, velocity)
        if run.recorder is not None:
            run.recorder.observe(step, x, velocity)
        return denoised
    return x - sigma * run.stepper.estimate(step)


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
    log.info("[MeanCache] %s: %s", holder.label, stats.summary())
    for record in stats.fallbacks:
        log.info("[MeanCache] step %d computed although planned to skip: %s", record.step, record.reason)
    if holder.debug:
        for record in stats.records:
            log.info(
                "[MeanCache] step %d sigma %.4f: %s (K=%d)", record.step, record.sigma, record.action.value, record.span
            )


def attach(model, holder: MeanCacheHolder):
    """A clone of ``model`` (a ModelPatcher) that samples under ``holder``."""
    import comfy.patcher_extension

    patched = model.clone()
    patched.model_options.setdefault("transformer_options", {})[HOLDER_KEY] = holder
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, outer_sample_wrapper)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, WRAPPER_KEY, predict_noise_wrapper)
    return patched
