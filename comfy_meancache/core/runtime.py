"""One sampling run under MeanCache, for any k-diffusion-style sampler.

A k-diffusion sampler calls ``denoise(x, sigma) -> denoised`` once or more per
step. :func:`cached_denoiser` wraps such a function so that the planned skip
steps never call it: their velocity comes from the cached history, and the
sampler still gets a denoised prediction ``x - sigma * v_hat`` (flow
convention: ``v = (x - denoised) / sigma``). The ComfyUI hook serves each
sampling call through the same :class:`CachedDenoiser`; the benchmark and
anyone outside ComfyUI use it directly::

    cached = cached_denoiser(model, sigmas, preset="balanced")
    x0 = sample_dpmpp_2m(cached, noise * sigmas[0], torch.tensor(sigmas))
    print(cached.stats.summary())

Evaluations are matched to steps by sigma, in order, never by counting calls:
an evaluation whose sigma is not the next step's (a midpoint, an extra at
sigma 0) is computed and kept out of the history; for Heun-type samplers,
whose corrector runs at the next step's sigma before that step's own
evaluation, ``corrector_first`` says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from .costs import EdgeCosts, even_costs
from .learning import LEARNED_ESTIMATOR, Observations, learned_costs, one_step_errors, sample_blocks
from .planner import plan, replan_rest
from .presets import PRESETS
from .profile import Profile
from .schedule import PlannerSettings, Schedule
from .stepper import Action, RunStats, Stepper

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SIGMA_RTOL = 1e-5
REPLAN_BELOW_SIGMA = 0.75  # a first run re-plans its steps at or below this noise level


def first_run_replan_from(schedule: Schedule) -> int | None:
    """The step from which a run that knows nothing of its model re-plans the rest (None: it does not).

    Such a run (``auto`` with nothing learned) plans evenly. Once sigma is at
    most :data:`REPLAN_BELOW_SIGMA`, after every computed step, it plans the
    remaining calls again from the curvature its own computed steps have
    shown, taken as flat beyond the last one seen: that moves calls to where
    the sigma steps grow and the curvature still costs. Re-planning at higher
    noise moved calls out of the steps where an error grows most (on the zoo's
    photo UNet it can flip a sample to another image) and lost more than it
    won; the threshold was chosen leave-one-out over the zoo (README,
    "Learning your model").
    """
    skips = schedule.model_calls < schedule.steps
    if schedule.estimator != LEARNED_ESTIMATOR or schedule.part_of is not None or not skips:
        return None
    return next((i for i, s in enumerate(schedule.sigmas[:-1]) if s <= REPLAN_BELOW_SIGMA), None)


class StepMatcher:
    """Which sampler evaluation is which step's first: by sigma, in order."""

    def __init__(self, sigmas: Sequence[float], corrector_first: bool = False) -> None:
        self.sigmas = [float(s) for s in sigmas]
        self.corrector_first = corrector_first
        self.last_step = -1
        self.extra_evaluations = 0
        self._correctors_seen: set[int] = set()

    def step_of(self, sigma: float, rtol: float = SIGMA_RTOL) -> int | None:
        """The step whose first evaluation this is, or None for any other evaluation.

        Steps are matched in order: the earliest step after the last one seen
        whose sigma equals ``sigma`` within ``rtol``. Half-precision latents
        carry their sigma rounded to the latent's dtype, where neighbouring
        grid sigmas can round alike, so order decides between them.
        """
        tolerance = rtol * max(abs(sigma), 1e-3)
        sigmas = self.sigmas
        step = next(
            (i for i in range(self.last_step + 1, len(sigmas) - 1) if abs(sigmas[i] - sigma) <= tolerance), None
        )
        if step is None or sigmas[step] == 0.0:
            self.extra_evaluations += 1
            return None
        if self.corrector_first and step >= 1 and step not in self._correctors_seen:
            self._correctors_seen.add(step)
            self.extra_evaluations += 1
            return None
        self.last_step = step
        return step


class CachedDenoiser:
    """``denoise(x, sigma) -> denoised`` that skips the planned steps of one run over ``schedule.sigmas``.

    Serve one sampling run, then read :attr:`stats` (which frees the
    history). ``on_compute(step, x, velocity)`` sees every computed step's
    velocity (calibration records runs through it). With ``learn``, every
    computed step after two others adds what it shows of the model's
    curvature and slope to those observations when the run ends (one device
    read per run, none per step). With ``replan_from``, every computed step
    from that one on re-plans the rest of the run from what this run's
    computed steps have shown (:func:`first_run_replan_from`; one device read
    per re-plan), keeping the model-call budget.
    """

    def __init__(
        self,
        denoise: Denoise | None,
        schedule: Schedule,
        *,
        corrector_first: bool = False,
        cache_device: torch.device | str | None = None,
        debug: bool = False,
        on_compute: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
        learn: Observations | None = None,
        replan_from: int | None = None,
    ) -> None:
        self.denoise = denoise
        self.schedule = schedule
        self.matcher = StepMatcher(schedule.sigmas, corrector_first)
        self.stepper = Stepper(schedule, debug=debug, cache_device=cache_device)
        self.on_compute = on_compute
        self.learn = learn
        self._seen: list[tuple[int, torch.Tensor]] = []  # (step, [curvature, slope]) until the run ends
        self._stats: RunStats | None = None
        self.replan_from = replan_from
        self._own = Observations()  # this run's observations on the host, for re-planning
        self._read = 0  # of self._seen, into self._own
        self._replans = 0  # re-plans that changed the plan

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.denoise is None:
            raise TypeError("this CachedDenoiser has no denoise function; call evaluate() with one")
        return self.evaluate(x, sigma, lambda: self.denoise(x, sigma))

    def evaluate(self, x: torch.Tensor, sigma: torch.Tensor, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The denoised prediction at ``(x, sigma)``: ``compute()`` on computed steps, the estimate on skips."""
        if self._stats is not None:
            raise RuntimeError("this run is finished; make a new cached denoiser for the next run")
        rtol = max(SIGMA_RTOL, torch.finfo(sigma.dtype).eps) if sigma.is_floating_point() else SIGMA_RTOL
        step = self.matcher.step_of(float(sigma.flatten()[0]), rtol)
        if step is None:
            return compute()
        s = self.matcher.sigmas[step]
        if self.stepper.decide(step, x) is Action.COMPUTE:
            denoised = compute()
            velocity = torch.sub(x, denoised).div_(s)
            if self.learn is not None or self.replan_from is not None:
                self._observe(step, velocity)
            self.stepper.record(step, velocity)
            if self.replan_from is not None and step >= self.replan_from:
                self._replan()
            if self.on_compute is not None:
                self.on_compute(step, x, velocity)
            return denoised
        return torch.sub(x, self.stepper.estimate(step), alpha=s)

    def _observe(self, step: int, velocity: torch.Tensor) -> None:
        history = self.stepper.last_computed()
        sigmas = self.matcher.sigmas
        if len(history) == 2 and len({sigmas[history[0][0]], sigmas[history[1][0]], sigmas[step]}) == 3:
            (r, v_r), (a, v_a) = history  # three distinct sigmas (a grid may repeat one): else nothing to see
            v_r, v_a, v_b = (sample_blocks(v) for v in (v_r, v_a, velocity.to(v_a.device)))
            errors = one_step_errors(sigmas, r, a, step, v_r, v_a, v_b)
            self._seen.append((step, errors))

    def _replan(self) -> None:
        """Plan the rest of the run again from this run's observations so far (flat beyond the last)."""
        for step, errors in self._seen[self._read :]:
            self._own.add(self.matcher.sigmas[step], *errors.tolist())
        self._read = len(self._seen)
        if not len(self._own):
            return
        schedule = self.stepper.schedule
        computed = [r.step for r in self.stepper.stats.records if r.action is Action.COMPUTE]
        costs = learned_costs(schedule.sigmas, self._own, schedule.settings.max_gap)
        replanned = replan_rest(schedule, costs, computed)
        if replanned is None or replanned is schedule:
            return
        self._replans += 1
        note = (
            f"re-planned the rest after each computed step from step {self.replan_from} on, from this run's "
            f"curvature: the plan changed {self._replans} time(s), last at step {computed[-1]}"
        )
        notes = (*self.schedule.notes, note)  # the plan's own notes, then this one (replacing the last re-plan's)
        source = f"{self.schedule.settings.cost_source}, re-planned from this run's curvature"
        replanned = replace(replanned, notes=notes, settings=replace(replanned.settings, cost_source=source))
        self.stepper.schedule = self.stepper.stats.schedule = replanned

    @property
    def stats(self) -> RunStats:
        """The run's statistics; the first access ends the run (:meth:`finish`)."""
        return self.finish()

    def finish(self) -> RunStats:
        """End the run: free its tensors, add what it learned, return its statistics (again on later calls)."""
        if self._stats is None:
            self._stats = self.stepper.finish()
            self._stats.extra_evaluations = self.matcher.extra_evaluations
            if self._seen:
                values = torch.stack([errors for _, errors in self._seen]).cpu().tolist()
                for (step, _), (curvature, slope) in zip(self._seen, values):
                    self.learn.add(self.matcher.sigmas[step], curvature, slope)
                self._seen.clear()
        return self._stats


def cached_denoiser(
    denoise: Denoise,
    sigmas: Sequence[float] | torch.Tensor,
    *,
    compute_steps: int | None = None,
    speedup: float | None = None,
    preset: str | None = None,
    profile: Profile | None = None,
    costs: EdgeCosts | None = None,
    estimator: str | None = None,
    settings: PlannerSettings | None = None,
    corrector_first: bool = False,
    cache_device: torch.device | str | None = None,
    learn: Observations | None = None,
) -> CachedDenoiser:
    """Plan ``sigmas`` and wrap ``denoise`` to follow the plan for one sampling run.

    The budget is ``compute_steps`` model calls, a target ``speedup`` or a
    named ``preset`` (default ``balanced``). Costs come from ``costs``, from a
    calibration ``profile`` measured on this model, or else are even (calls
    spread evenly over the steps: the most robust on a model never measured).
    With ``learn`` (observations of this model, kept by the caller across
    runs) the plan comes from what earlier runs showed
    (:func:`~.learning.learned_costs`, ``meancache2``) once there is any, and
    this run adds its own; with nothing learned yet, the run plans evenly and
    re-plans its steps below sigma 0.75 from what it has shown by then
    (:func:`first_run_replan_from`). Costs measured on the model (a profile,
    learned costs) price its first steps, so without ``settings`` such a plan
    computes only step 0 of the warm-up.
    """
    grid = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    if sum(x is not None for x in (compute_steps, speedup, preset)) > 1:
        raise ValueError("give at most one of compute_steps, speedup and preset")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    chosen = PRESETS[preset or "balanced"] if compute_steps is None and speedup is None else None
    estimator = estimator or (chosen.estimator if chosen else PRESETS["balanced"].estimator)
    settings_given = settings is not None
    settings = settings or (replace(chosen.settings, preset=preset or "balanced") if chosen else PlannerSettings())
    measured = None  # costs measured on this model
    knows_nothing = learn is not None and not len(learn) and costs is None and profile is None
    if profile is not None:
        if costs is not None:
            raise ValueError("give costs or a profile, not both")
        measured = profile.costs(grid, estimator, settings.max_span, settings.max_gap)
    elif learn is not None and len(learn) and costs is None:
        if estimator != "meancache2":
            raise ValueError(f"learned costs are for meancache2, not {estimator!r}")
        measured = learned_costs(grid, learn, settings.max_gap)
    if measured is not None:
        costs, settings = measured, settings if settings_given else settings.for_measured_costs()
    if costs is None:
        costs = even_costs(len(grid) - 1, estimator, settings.max_span, settings.max_gap)
    budget = dict(speedup=chosen.speedup) if chosen else dict(compute_steps=compute_steps, speedup=speedup)
    schedule = plan(grid, estimator=estimator, settings=settings, costs=costs, **budget)
    return CachedDenoiser(
        denoise,
        schedule,
        corrector_first=corrector_first,
        cache_device=cache_device,
        learn=learn,
        replan_from=first_run_replan_from(schedule) if knows_nothing else None,
    )
