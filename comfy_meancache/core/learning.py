"""Edge costs learned from a model's own cached runs, at no extra model call.

Every computed step ``b`` after two computed steps ``r < a`` shows how far the
estimators' predictions of ``v_b`` from that history were from the real one:

* ``meancache2`` extrapolates linearly, so its error is about
  ``kappa * |(s_b - s_a)(s_b - s_r)| / 2`` with ``kappa`` the velocity's
  curvature in sigma: ``kappa(s_b) = 2 |v_hat_b - v_b| / |(s_b - s_a)(s_b - s_r)|``;
* plain reuse errs by the slope: ``slope(s_b) = |v_a - v_b| / |s_b - s_a|``.

Interpolated in sigma (in log), these price every edge of any plan on the
same grid: a skipped step ``m`` of edge ``a -> b`` errs by ``e_m`` (the
curvature form with the computed step ``r`` before the edge, the slope form
when there is none), and the edge costs ``sum_m |h_m| * e_m``: each velocity
error moves the state by its step, so this is the state's deviation at the
edge's end, what calibration measures. The first run plans with even costs
and computes the first ``warmup`` steps; later runs of the same model plan
from what the earlier ones showed, which prices the first edges too, so only
step 0 is forced (:meth:`~.schedule.PlannerSettings.for_measured_costs`).

:func:`save_learned` / :func:`load_learned` keep one model's observations in a
small JSON file (at most :data:`MAX_OBSERVATIONS`, well under
:data:`MAX_FILE_BYTES`), written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .costs import EdgeCosts
from .planner import replan_rest
from .profile import temporary_beside
from .schedule import Schedule

MAX_OBSERVATIONS = 4096  # three 7-digit floats each in JSON: about 160 kB per model
MAX_FILE_BYTES = 1 << 20
SAMPLE_ELEMENTS = 1 << 16  # of each velocity, for its curvature and slope
LEARNED_ESTIMATOR = "meancache2"  # the estimator whose errors the curvature form prices
FIRST_RUN_EVEN_ABOVE = 0.75  # a first run keeps the even plan while sigma is above this
LEARNED_FORMAT = "comfy-meancache-learned"
LEARNED_VERSION = 1


def one_step_errors(
    sigmas: Sequence[float], r: int, a: int, b: int, v_r: torch.Tensor, v_a: torch.Tensor, v_b: torch.Tensor
) -> torch.Tensor:
    """``[curvature, slope]`` seen at computed step ``b`` (see the module text), as a device tensor (no sync).

    Four passes over the latent and one temporary: this runs at every computed step.
    """
    ratio = (sigmas[b] - sigmas[a]) / (sigmas[a] - sigmas[r])
    difference = torch.sub(v_a, v_b)
    change = _mean_abs(difference)
    missed = _mean_abs(difference.add_(v_a, alpha=ratio).sub_(v_r, alpha=ratio))  # v_a + ratio (v_a - v_r) - v_b
    curvature = 2 * missed / abs((sigmas[b] - sigmas[a]) * (sigmas[b] - sigmas[r]))
    return torch.stack([curvature, change / abs(sigmas[b] - sigmas[a])])


def sample_blocks(values: torch.Tensor, most: int = SAMPLE_ELEMENTS, block: int = 64) -> torch.Tensor:
    """At most about ``most`` elements of ``values`` as evenly spaced contiguous blocks (a view when it can be).

    Curvature and slope are means over the latent: an even sample of it
    gives them at a fraction of the memory traffic (whole blocks, so strided
    reads do not touch every cache line anyway).
    """
    flat = values.reshape(-1)
    blocks = flat.numel() // block
    every = max(1, blocks * block // most)
    if every == 1:
        return flat
    return flat[: blocks * block].view(blocks, block)[::every]


def _mean_abs(values: torch.Tensor) -> torch.Tensor:
    """Mean absolute value in one pass, accumulated in at least fp32."""
    dtype = torch.float32 if values.dtype in (torch.float16, torch.bfloat16) else None
    return torch.linalg.vector_norm(values, 1, dtype=dtype).float() / values.numel()


@dataclass
class Observations:
    """Curvature and slope of one model's velocity, observed at sigmas (oldest first, bounded)."""

    sigma: list[float] = field(default_factory=list)
    curvature: list[float] = field(default_factory=list)
    slope: list[float] = field(default_factory=list)

    def add(self, sigma: float, curvature: float, slope: float) -> None:
        """Keep one observation; zero or non-finite ones carry no information and are dropped."""
        if not all(np.isfinite(v) and v > 0 for v in (sigma, curvature, slope)):
            return
        self.sigma.append(float(sigma))
        self.curvature.append(float(curvature))
        self.slope.append(float(slope))
        for values in (self.sigma, self.curvature, self.slope):
            del values[:-MAX_OBSERVATIONS]

    def __len__(self) -> int:
        return len(self.sigma)

    def coverage(self, sigmas: Sequence[float]) -> float:
        """The share of the span of ``sigmas`` (the nonzero ones) that the observed sigmas span.

        About 1 for runs over the same schedule; 0 for another part of it
        (what one expert of a two-model run learned, for the other expert).
        """
        run = [s for s in sigmas if s > 0]
        if not self.sigma or len(run) < 2 or max(run) == min(run):
            return 0.0
        overlap = min(max(run), max(self.sigma)) - max(min(run), min(self.sigma))
        return max(0.0, overlap) / (max(run) - min(run))

    def at(self, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Curvature and slope at ``sigmas``, interpolated in log (observations at one sigma average)."""
        grid, inverse = np.unique(np.asarray(self.sigma), return_inverse=True)
        counts = np.bincount(inverse)

        def interpolate(values: list[float]) -> np.ndarray:
            mean = np.bincount(inverse, weights=np.log(values)) / counts
            return np.exp(np.interp(sigmas, grid, mean))

        return interpolate(self.curvature), interpolate(self.slope)

    def to_dict(self) -> dict:
        return {"sigma": self.sigma, "curvature": self.curvature, "slope": self.slope}

    @classmethod
    def from_dict(cls, data: dict) -> Observations:
        """Read :meth:`to_dict`'s form; anything malformed is a ``ValueError``."""
        try:
            columns = [[float(v) for v in data[key]] for key in ("sigma", "curvature", "slope")]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed observations: {exc}") from exc
        if len({len(c) for c in columns}) != 1 or len(columns[0]) > MAX_OBSERVATIONS:
            raise ValueError("malformed observations: columns of unequal or excessive length")
        observations = cls()
        for row in zip(*columns):
            observations.add(*row)
        return observations


def save_learned(path: Path, observations: Observations, metadata: dict) -> int:
    """Write ``observations`` and ``metadata`` to ``path`` atomically; returns the file's size in bytes.

    The file is written beside ``path`` and moved into place, so a failed save
    (full disk, interrupt) leaves the previous file as it was.
    """
    columns = {key: [float(f"{v:.7g}") for v in values] for key, values in observations.to_dict().items()}
    document = {"format": LEARNED_FORMAT, "version": LEARNED_VERSION, "metadata": metadata, **columns}
    text = json.dumps(document, separators=(",", ":"))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_beside(path)
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return len(text.encode())


def load_learned(path: Path) -> tuple[Observations, dict]:
    """Observations and metadata saved by :func:`save_learned`.

    A file that was read but is unusable is a ``ValueError``; one that could
    not be read raises ``OSError`` (``FileNotFoundError``: nothing learned yet).
    """
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        document = json.loads(path.read_text())
        if not isinstance(document, dict) or document.get("format") != LEARNED_FORMAT:
            raise ValueError(f"not a learned MeanCache profile (expected format {LEARNED_FORMAT!r})")
        if document.get("version") != LEARNED_VERSION:
            raise ValueError(f"version {document.get('version')!r} is not supported (reads {LEARNED_VERSION})")
        if not isinstance(document.get("metadata"), dict):
            raise ValueError("metadata must be an object")
        return Observations.from_dict(document), document["metadata"]
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not a usable learned profile: {exc}") from exc


def learned_costs(sigmas: Sequence[float], observations: Observations, max_gap: int = 8) -> EdgeCosts:
    """``meancache2`` edge costs on ``sigmas`` from ``observations`` (at least one needed).

    Vectorised over edge starts and back distances: every run under ``auto`` plans from these.
    """
    if not len(observations):
        raise ValueError("no observations to learn costs from")
    s = np.asarray(sigmas, dtype=np.float64)
    n = len(s) - 1
    gap = max(1, min(max_gap, n - 1))
    curvature, slope = observations.at(s[:-1])
    h = np.abs(np.diff(s))
    band = np.full((gap + 1, n, gap + 1), np.inf)
    band[:, :, 1] = 0.0
    a = np.arange(n)[:, None]
    m = a + np.arange(1, gap)[None, :]  # skipped step m of edge a -> m + 1
    inside = m <= n - 2
    m = np.clip(m, 0, max(n - 2, 0))
    back = np.arange(gap + 1)[:, None, None]  # the computed step before a is a - back (0: none)
    curved = curvature[m] / 2 * np.abs((s[m] - s[a]) * (s[m] - s[np.maximum(a - back, 0)]))
    error = np.where(back > 0, curved, slope[m] * np.abs(s[m] - s[a]))
    starts = np.where(back > 0, a >= back, a == 0)
    total = np.cumsum(np.where(inside, h[m] * error, 0.0), axis=2)
    band[:, :, 2:] = np.where(inside & starts, total, np.inf)
    return EdgeCosts(LEARNED_ESTIMATOR, band, f"learned ({len(observations)} observations)")


def first_run_plan(schedule: Schedule) -> Schedule:
    """A first run's plan (nothing learned yet) from the even ``schedule``: even at high noise, then for flat curvature.

    The even plan is kept through its first computed step at or below sigma
    :data:`FIRST_RUN_EVEN_ABOVE`; the calls left are planned again with the
    learned-cost form for a curvature that stays the same from there on. The
    later sigma steps are longer, so this moves calls toward the end, as
    calibrated plans do. It is what a run would get by re-planning itself
    from its own observations with the curvature ahead taken as flat: the
    observed level scales every remaining edge alike, so it cannot move the
    plan (README, "Learning your model"). Kept at high noise because there an
    error can grow instead of fading (the zoo's photo UNet) and plans that
    took calls from those steps lost. Other estimators, fragments and plans
    that compute every step stay as they are.
    """
    n = schedule.steps
    if schedule.estimator != LEARNED_ESTIMATOR or schedule.part_of is not None or schedule.model_calls == n:
        return schedule
    computed = schedule.computed_steps
    at = next((k for k, step in enumerate(computed) if schedule.sigmas[step] <= FIRST_RUN_EVEN_ABOVE), None)
    if at is None:
        return schedule
    flat = Observations([1.0], [1.0], [1.0])
    replanned = replan_rest(
        schedule, learned_costs(schedule.sigmas, flat, schedule.settings.max_gap), list(computed[: at + 1])
    )
    if replanned is None or replanned is schedule:
        return schedule
    source = f"{schedule.settings.cost_source}, flat curvature from step {computed[at]}"
    note = f"first run: even while sigma > {FIRST_RUN_EVEN_ABOVE:g}, then for flat curvature from step {computed[at]}"
    return replace(replanned, settings=replace(schedule.settings, cost_source=source), notes=(*schedule.notes, note))
