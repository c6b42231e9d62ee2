"""Run-time state machine: one sampling run under a :class:`Schedule`.

The caller (the ComfyUI hook, or :func:`euler.sample_euler`) feeds each
sampler step once, in order::

    if stepper.decide(i, x) is Action.COMPUTE:
        v = model(x, sigma_i)
        stepper.record(i, v)
    else:
        v = stepper.estimate(i)

The stepper keeps only the velocities its estimator can still read, never
synchronises with the device (no ``.item()``), and frees everything in
:meth:`finish`, which returns the run's statistics.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from .estimators import combine, estimator_weights
from .schedule import Schedule


class Action(enum.Enum):
    COMPUTE = "compute"
    SKIP = "skip"


@dataclass
class StepRecord:
    """What happened at one step; ``reason`` says why a planned skip was computed."""

    step: int
    sigma: float
    planned: Action
    action: Action
    span: int
    reason: str = ""
    started: float = 0.0
    wall_s: float | None = None
    nonfinite: bool = False

    @property
    def fallback(self) -> bool:
        return self.planned is Action.SKIP and self.action is Action.COMPUTE


@dataclass
class RunStats:
    """Per-step record of one run, for the log line and the report.

    ``extra_evaluations`` counts the sampler's evaluations that are not a
    step's first (Heun correctors, dpm_2 midpoints, a sigma-0 evaluation):
    they call the model with or without MeanCache, so the speedup counts them
    on both sides instead of claiming the step ratio.
    """

    schedule: Schedule
    records: list[StepRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    output_fingerprint: tuple[float, ...] | None = None
    extra_evaluations: int = 0
    #: Peak bytes of the velocity history kept between steps (what the cache costs in memory).
    history_bytes: int = 0

    def matches(self, latent: torch.Tensor) -> bool:
        """Whether ``latent`` is this run's output (compared by :func:`fingerprint`)."""
        if self.output_fingerprint is None:
            return False
        other = fingerprint(latent)
        return len(other) == len(self.output_fingerprint) and all(
            abs(a - b) <= 1e-4 * (1 + abs(b)) for a, b in zip(other, self.output_fingerprint)
        )

    @property
    def steps_run(self) -> int:
        return len(self.records)

    @property
    def model_calls(self) -> int:
        """Steps whose evaluation called the model (the plan's unit; see :attr:`evaluations`)."""
        return sum(r.action is Action.COMPUTE for r in self.records)

    @property
    def evaluations(self) -> int:
        """Every model evaluation of the run: computed steps plus the extra evaluations."""
        return self.model_calls + self.extra_evaluations

    @property
    def uncached_evaluations(self) -> int:
        """The evaluations the same sampler makes without MeanCache over the steps it ran."""
        return self.steps_run + self.extra_evaluations

    @property
    def skipped(self) -> int:
        return sum(r.action is Action.SKIP for r in self.records)

    @property
    def fallbacks(self) -> list[StepRecord]:
        return [r for r in self.records if r.fallback]

    @property
    def speedup(self) -> float:
        return self.uncached_evaluations / self.evaluations if self.evaluations else 1.0

    def summary(self) -> str:
        """``50 steps -> 20 model calls (2.50x), 30 skipped, 38.4 s, history 3.0 MiB peak``; with extra
        evaluations ``30 steps + 29 extra evaluations -> 41 model calls (59 uncached, 1.44x), 18 skipped, ...``."""
        work, ratio = f"{self.steps_run} steps", f"{self.speedup:.2f}x"
        if self.extra_evaluations:
            work += f" + {self.extra_evaluations} extra evaluations"
            ratio = f"{self.uncached_evaluations} uncached, {ratio}"
        text = (
            f"{work} -> {self.evaluations} model calls ({ratio}), {self.skipped} skipped, {self.wall_s:.1f} s, "
            f"history {format_bytes(self.history_bytes)} peak"
        )
        if self.fallbacks:
            text += f", {len(self.fallbacks)} planned skips computed"
        bad = [r.step for r in self.records if r.nonfinite]
        if bad:
            text += f", NaN/inf from the model at step(s) {bad}"
        return text


def format_bytes(size: int) -> str:
    """``size`` in KiB, MiB or GiB with one decimal (bytes below 1 KiB)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def fingerprint(latent: torch.Tensor, size: int = 64) -> tuple[float, ...]:
    """A few strided values of ``latent``: enough to tell runs apart without keeping tensors."""
    flat = latent.detach().flatten()
    stride = max(1, flat.numel() // size)
    return (float(flat.numel()), *flat[::stride][:size].float().cpu().tolist())


class Stepper:
    """Decides compute or skip per step and produces the skipped steps' velocities.

    ``cache_device`` keeps the velocity history elsewhere (e.g. the CPU, to
    spare VRAM); estimates are combined there and returned on the latent's
    device. A computed velocity with NaN or inf is never estimated from: the
    first planned skip that would read it is computed instead. Checking that
    reads one flag from the device once per computed step that a skip reads,
    not once per step.
    """

    def __init__(self, schedule: Schedule, debug: bool = False, cache_device: torch.device | str | None = None) -> None:
        self.schedule = schedule
        self.debug = debug
        self.cache_device = torch.device(cache_device) if cache_device is not None else None
        self.stats = RunStats(schedule)
        self._window = schedule.history_window
        self._velocities: dict[int, torch.Tensor] = {}
        self._finite: dict[int, torch.Tensor | bool] = {}
        self._computed: list[int] = []
        self._meta: tuple | None = None
        self._start = time.perf_counter()

    def decide(self, step: int, x: torch.Tensor) -> Action:
        """COMPUTE or SKIP for the first evaluation of ``step`` with sampler state ``x``."""
        now = time.perf_counter()
        self._close_previous(now)
        planned = Action.COMPUTE if self.schedule.compute[step] else Action.SKIP
        record = StepRecord(step, self.schedule.sigmas[step], planned, planned, self.schedule.span[step], started=now)
        meta = (x.shape, x.dtype, x.device)
        if self._meta is not None and meta != self._meta:
            self._forget()
            record.reason = "latent shape, dtype or device changed"
        self._meta = meta
        if planned is Action.SKIP and not record.reason:
            record.reason = self._missing_history(step) or self._nonfinite_history(step)
        if planned is Action.SKIP and record.reason:
            record.action = Action.COMPUTE
        self.stats.records.append(record)
        return record.action

    def last_computed(self) -> list[tuple[int, torch.Tensor]]:
        """The last two computed steps and their velocities (on the cache device), oldest first."""
        return [(m, self._velocities[m]) for m in self._computed[-2:] if m in self._velocities]

    def record(self, step: int, velocity: torch.Tensor) -> None:
        """Keep the model's velocity for ``step``."""
        # one reduction, no copy; NaN and inf survive a sum. Resolved only when a skip reads it.
        self._finite[step] = torch.isfinite(velocity.sum(dtype=torch.float32))
        if self.cache_device is not None:
            # blocking: the host reads this copy (estimates, finiteness); a non_blocking
            # device-to-host copy may still be in flight then, and nothing else syncs first
            velocity = velocity.to(self.cache_device)
        self._velocities[step] = velocity
        self._computed.append(step)
        del self._computed[:-2]
        self._prune(step)

    def estimate(self, step: int) -> torch.Tensor:
        """The estimator's velocity for skipped ``step`` (kept as that step's used velocity)."""
        weights = self._weights(step)
        velocity = combine(weights, self._velocities)
        self._velocities[step] = velocity
        self._prune(step)
        if self.debug:
            self.stats.notes.append(f"step {step}: weights {weights}, |v| {float(velocity.abs().mean()):.4g}")
        if self.cache_device is None:
            return velocity
        # host to device may overlap with the host: the stepper never writes this estimate in
        # place, and a copy from pageable memory is staged before the call returns
        return velocity.to(self._meta[2], non_blocking=True)

    def finish(self) -> RunStats:
        """Free all tensors and return the statistics of the run."""
        now = time.perf_counter()
        self._close_previous(now)
        for step in list(self._finite):
            self._is_finite(step)
        self._forget()
        self._meta = None
        self.stats.wall_s = now - self._start
        return self.stats

    def _weights(self, step: int) -> dict[int, float]:
        computed = self._computed[-2:]
        return estimator_weights(
            self.schedule.estimator_at(step), self.schedule.sigmas, step, self.schedule.span[step], computed
        )

    def _missing_history(self, step: int) -> str:
        if not self._computed:
            return "no computed step before it in this run"
        missing = sorted(set(self._weights(step)) - set(self._velocities))
        return f"history of step(s) {missing} not seen in this run" if missing else ""

    def _nonfinite_history(self, step: int) -> str:
        bad = [m for m in self._weights(step) if m in self._finite and not self._is_finite(m)]
        return f"velocity of step(s) {bad} has NaN or inf; computing instead of estimating from it" if bad else ""

    def _is_finite(self, step: int) -> bool:
        """Host value of a computed step's finiteness flag (one device read, then cached)."""
        flag = self._finite[step]
        if isinstance(flag, torch.Tensor):
            flag = self._finite[step] = bool(flag)
            if not flag:
                for record in self.stats.records:
                    if record.step == step:
                        record.nonfinite = True
        return flag

    def _prune(self, step: int) -> None:
        keep = set(self._computed[-2:]) | set(range(step - self._window + 1, step + 1))
        for old in [m for m in self._velocities if m not in keep]:
            del self._velocities[old]
        for old in [m for m in self._finite if m not in keep and isinstance(self._finite[m], bool)]:
            del self._finite[old]
        self._track_history()

    def _track_history(self) -> None:
        """Update the peak size of the kept velocities from shapes alone (no device sync).

        Each tensor counts once: plain reuse keeps the cached velocity itself
        as the skipped step's, not a copy.
        """
        kept = {id(v): v for v in self._velocities.values()}.values()
        size = sum(v.element_size() * v.numel() for v in kept)
        self.stats.history_bytes = max(self.stats.history_bytes, size)

    def _forget(self) -> None:
        self._velocities.clear()
        self._finite.clear()
        self._computed.clear()

    def _close_previous(self, now: float) -> None:
        if self.stats.records:
            last = self.stats.records[-1]
            if last.action is Action.COMPUTE and last.wall_s is None:
                last.wall_s = now - last.started
