"""Calibration profiles: full-step runs of one model, saved to plan from later.

A profile keeps the trajectories themselves (subsampled velocities and
states of runs that computed every step), not a finished cost table. Costs
for any estimator, span and sigma grid are then measured on demand by
:func:`costs.trajectory_costs`: runs recorded on the planned grid are used
as they are; for another step count, scheduler or denoise each run's velocity
is interpolated linearly in sigma onto the new grid and integrated with
Euler, so a profile recorded at 50 steps plans 28 or 20 steps too.

On disk a profile is ``<name>.json`` (versioned metadata) beside
``<name>.safetensors`` (the tensors). Only JSON and safetensors are ever
read, and names are plain file names inside one folder.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .costs import EdgeCosts, cheapest_per_edge, trajectory_costs
from .estimators import ADAPTIVE, BASE_ESTIMATORS

PROFILE_FORMAT = "comfy-meancache-profile"
PROFILE_VERSION = 1
MAX_ELEMENTS = 4096  # per run and step: bounded memory even for video latents
MAX_RUNS = 256
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def subsample(latent: torch.Tensor, max_elements: int = MAX_ELEMENTS) -> torch.Tensor:
    """Every k-th element of each spatial axis so at most ``max_elements`` remain per batch item.

    ``latent`` is ``[B, C, *spatial]``; the same stride ``k`` applies to every
    spatial axis, so a 128x128 image latent with 16 channels keeps 16x16x16.
    """
    channels, spatial = latent.shape[1], latent.shape[2:]

    def kept(stride: int) -> int:
        return channels * math.prod(-(-s // stride) for s in spatial)

    stride = 1
    while kept(stride) > max_elements and stride < max(spatial, default=1):
        stride += 1
    index = (slice(None), slice(None), *(slice(None, None, stride) for _ in spatial))
    return latent[index].detach().float().cpu().clone()


@dataclass
class Trajectory:
    """One full-step calibration run: the velocity used at each step and the states."""

    sigmas: list[float]
    velocities: torch.Tensor  # [N, ...]
    states: torch.Tensor  # [N + 1, ...]

    def __post_init__(self) -> None:
        n = len(self.sigmas) - 1
        if n < 1 or self.velocities.shape[0] != n or self.states.shape[0] != n + 1:
            raise ValueError(
                f"a run over {len(self.sigmas)} sigmas needs {n} velocities and {n + 1} states, "
                f"got {self.velocities.shape[0]} and {self.states.shape[0]}"
            )
        if self.velocities.shape[1:] != self.states.shape[1:]:
            raise ValueError("velocities and states of a run must have one shape")
        if not all(math.isfinite(s) for s in self.sigmas) or any(b > a for a, b in zip(self.sigmas, self.sigmas[1:])):
            raise ValueError("a run's sigmas must be finite and must not increase")
        if not (torch.isfinite(self.velocities).all() and torch.isfinite(self.states).all()):
            raise ValueError("a run holds NaN or inf values")

    def on_grid(self, sigmas: list[float]) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Velocities and states on ``sigmas``; the flag says whether it was interpolated."""
        if len(sigmas) == len(self.sigmas) and np.allclose(sigmas, self.sigmas, rtol=1e-5, atol=1e-7):
            return self.velocities, self.states, False
        recorded = np.asarray(self.sigmas[:-1], dtype=np.float64)[::-1]  # ascending for interpolation
        velocities = torch.stack([_interpolate(recorded, self.velocities.flip(0), s) for s in sigmas[:-1]])
        start = _interpolate(np.asarray(self.sigmas, dtype=np.float64)[::-1], self.states.flip(0), sigmas[0])
        states = [start]
        for i, v in enumerate(velocities):
            states.append(states[-1] + (sigmas[i + 1] - sigmas[i]) * v)
        return velocities, torch.stack(states), True


def _interpolate(grid: np.ndarray, values: torch.Tensor, sigma: float) -> torch.Tensor:
    """Linear interpolation of ``values`` (aligned with ascending ``grid``) at ``sigma``, clamped."""
    k = int(np.clip(np.searchsorted(grid, sigma), 1, len(grid) - 1)) if len(grid) > 1 else 0
    if len(grid) == 1:
        return values[0]
    lo, hi = grid[k - 1], grid[k]
    w = float(np.clip((sigma - lo) / (hi - lo), 0.0, 1.0)) if hi > lo else 0.0
    return values[k - 1] * (1 - w) + values[k] * w


@dataclass
class Profile:
    """Named calibration runs of one setup, with metadata (model, sampler, cfg, ...)."""

    name: str
    metadata: dict = field(default_factory=dict)
    runs: list[Trajectory] = field(default_factory=list)

    def add(self, run: Trajectory) -> None:
        """Keep ``run``; any latent shape and batch size, as costs are per-element means of each run."""
        if len(self.runs) >= MAX_RUNS:
            raise ValueError(f"profile {self.name!r} already holds {MAX_RUNS} runs")
        self.runs.append(run)

    def costs(
        self, sigmas: list[float], estimator: str, max_span: int = 6, max_gap: int = 8, metric: str = "state"
    ) -> EdgeCosts:
        """Edge costs on ``sigmas``, averaged over the runs; the source says if it interpolated."""
        if not self.runs:
            raise ValueError(f"profile {self.name!r} holds no runs yet")
        if estimator == ADAPTIVE:  # average each estimator over the runs first, then pick per edge
            return cheapest_per_edge([self.costs(sigmas, e, max_span, max_gap, metric) for e in BASE_ESTIMATORS])
        tables, interpolated = [], False
        for run in self.runs:
            velocities, states, moved = run.on_grid(list(sigmas))
            interpolated |= moved
            tables.append(trajectory_costs(sigmas, velocities, states, estimator, max_span, max_gap, metric).band)
        source = f"profile {self.name} ({len(self.runs)} runs" + (", interpolated in sigma)" if interpolated else ")")
        return EdgeCosts(estimator, np.mean(tables, axis=0), source)

    def save(self, folder: Path) -> Path:
        """Write ``<name>.json`` and ``<name>.safetensors`` into ``folder``; returns the JSON path.

        Both files are written to temporary files beside them and then moved
        into place, JSON last: a save that fails while writing (full disk,
        interrupt) leaves the previous profile as it was and no temporary
        file. Between the two moves the old JSON meets the new tensors, which
        still begin with its runs when runs were only added (calibration).
        """
        json_path, tensor_path = profile_paths(folder, self.name)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for k, run in enumerate(self.runs):
            tensors[f"run{k}.velocities"] = run.velocities.contiguous()
            tensors[f"run{k}.states"] = run.states.contiguous()
        document = {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "name": self.name,
            "metadata": self.metadata,
            "runs": [{"sigmas": run.sigmas} for run in self.runs],
        }
        tensor_tmp, json_tmp = temporary_beside(tensor_path), temporary_beside(json_path)
        try:
            save_file(tensors, str(tensor_tmp))
            json_tmp.write_text(json.dumps(document, indent=1))
            os.replace(tensor_tmp, tensor_path)
            os.replace(json_tmp, json_path)
        finally:
            tensor_tmp.unlink(missing_ok=True)
            json_tmp.unlink(missing_ok=True)
        return json_path

    @classmethod
    def load(cls, folder: Path, name: str) -> Profile:
        """Read a saved profile; any problem is a ValueError naming the file."""
        json_path, tensor_path = profile_paths(folder, name)
        try:
            document = json.loads(json_path.read_text())
            _check_document(document)
            tensors = load_file(str(tensor_path))
            profile = cls(name, dict(document["metadata"]))
            for k, entry in enumerate(document["runs"]):
                profile.add(
                    Trajectory(
                        [float(s) for s in entry["sigmas"]], tensors[f"run{k}.velocities"], tensors[f"run{k}.states"]
                    )
                )
        except FileNotFoundError as exc:
            raise ValueError(f"profile {name!r}: {exc.filename} does not exist") from exc
        except (OSError, SafetensorError, KeyError, TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"profile file {json_path} is not a usable MeanCache profile: {exc}") from exc
        return profile


def _check_document(document: object) -> None:
    if not isinstance(document, dict) or document.get("format") != PROFILE_FORMAT:
        raise ValueError(f"not a MeanCache profile (expected format {PROFILE_FORMAT!r})")
    if document.get("version") != PROFILE_VERSION:
        raise ValueError(f"profile version {document.get('version')!r} is not supported (reads {PROFILE_VERSION})")
    if not isinstance(document.get("metadata"), dict) or not isinstance(document.get("runs"), list):
        raise ValueError("metadata must be an object and runs a list")
    if len(document["runs"]) > MAX_RUNS:
        raise ValueError(f"more than {MAX_RUNS} runs")
    for entry in document["runs"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("sigmas"), list) or len(entry["sigmas"]) > 10001:
            raise ValueError("each run needs a list of at most 10001 sigmas")


def temporary_beside(path: Path) -> Path:
    """A new empty file beside ``path`` (same file system, so ``os.replace`` is atomic); never listed."""
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    return Path(name)


def profile_paths(folder: Path, name: str) -> tuple[Path, Path]:
    """The JSON and tensor paths of profile ``name``, refusing names that leave ``folder``."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        raise ValueError(
            f"profile name {name!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    folder = Path(folder).resolve()
    paths = (folder / f"{name}.json", folder / f"{name}.safetensors")
    for path in paths:
        if path.resolve().parent != folder:
            raise ValueError(f"profile {name!r} resolves outside {folder} (a link?); refused")
    return paths


def list_profiles(folder: Path) -> list[str]:
    """Names of the profiles saved in ``folder`` (JSON files with a valid name)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if NAME_PATTERN.match(p.stem) and p.is_file())


class TrajectoryRecorder:
    """Collects one full-step run, subsampled, as the sampler produces it."""

    def __init__(self, max_elements: int = MAX_ELEMENTS) -> None:
        self.max_elements = max_elements
        self._start: torch.Tensor | None = None
        self._velocities: dict[int, torch.Tensor] = {}

    def observe(self, step: int, x: torch.Tensor, velocity: torch.Tensor) -> None:
        """Keep the state of step 0 and every step's velocity (copied to the CPU, subsampled)."""
        if step == 0:
            self._start = subsample(x, self.max_elements)
        self._velocities[step] = subsample(velocity, self.max_elements)

    def trajectory(self, sigmas: list[float]) -> Trajectory:
        """The recorded run; steps at sigma 0 (never evaluated) are left out."""
        steps = sum(1 for s in sigmas[:-1] if s > 0.0)
        missing = [i for i in range(steps) if i not in self._velocities]
        if self._start is None or missing:
            raise ValueError(f"the run did not evaluate every step (missing {missing[:5] or [0]})")
        velocities = torch.stack([self._velocities[i] for i in range(steps)])
        grid = list(sigmas[: steps + 1])
        states = [self._start]
        for i, v in enumerate(velocities):
            states.append(states[-1] + (grid[i + 1] - grid[i]) * v)
        return Trajectory(grid, velocities, torch.stack(states))
