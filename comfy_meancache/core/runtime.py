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
from .learning import Observations, first_run_plan, learned_costs, one_step_errors, sample_blocks
from .planner import plan
from .presets import PRESETS
from .profile import Profile
from .schedule import PlannerSettings, Schedule
from .stepper import Action, RunStats, Stepper

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SIGMA_RTOL = 1e-5


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
    read per run, none per step).
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
    ) -> None:
        self.denoise = denoise
        self.schedule = schedule
        self.matcher = StepMatcher(schedule.sigmas, corrector_first)
        self.stepper = Stepper(schedule, debug=debug, cache_device=cache_device)
        self.on_compute = on_compute
        self.learn = learn
        self._seen: list[tuple[int, torch.Tensor]] = []  # (step, [curvature, slope]) until the run ends
        self._stats: RunStats | None = None

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
            if self.learn is not None:
                self._observe(step, velocity)
            self.stepper.record(step, velocity)
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
    this run adds its own; with nothing learned yet, it plans as a first run
    (:func:`~.learning.first_run_plan`: even at high noise, then for flat
    curvature). Costs measured on the model (a profile,
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
    if knows_nothing:
        schedule = first_run_plan(schedule)
    return CachedDenoiser(denoise, schedule, corrector_first=corrector_first, cache_device=cache_device, learn=learn)
