"""The ``auto`` cost source: every model learns its own edge costs from its cached runs.

One learned profile per model and sampler setup (model weights and LoRAs,
sampler, CFG scale) lives in ``<ComfyUI user directory>/meancache/auto/``.
A run opens it, plans from what earlier runs showed (on a setup's first run:
from the model's nearest other setup, else from another model of the same
architecture under the same setup, else evenly), and adds its own
observations when it completes
(:mod:`..core.learning`). The file is small (bounded observations) and written
atomically. A file that cannot be read is moved aside, never overwritten, and
a folder that cannot be written leaves a warning: the prompt never fails, and
this session keeps learning in memory. Deleting the file forgets the model.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from math import inf
from pathlib import Path

import torch

from ..core.learning import Observations, load_learned, save_learned
from .calibration import profile_folder

log = logging.getLogger("comfy_meancache")

AUTO_SUBFOLDER = "auto"
SAMPLED_WEIGHTS = 4  # tensors whose first values identify the weights
SAMPLED_VALUES = 64
MIN_BORROWED_COVERAGE = 0.5  # another model's profile must have seen most of this run's sigmas
_UNSAVED: dict[Path, Observations] = {}  # what this session learned but could not save, by file


def auto_folder() -> Path:
    return profile_folder() / AUTO_SUBFOLDER


def model_identity(model_patcher) -> tuple[str, str]:
    """``(class name, digest)`` of the model as sampled: architecture, weights and weight patches (LoRAs).

    The weights are identified by the first values of a few tensors that no
    patch touches, so a model with its LoRA applied (ComfyUI keeps it loaded
    patched between prompts) and the same model not yet loaded agree.
    """
    model = model_patcher.model
    digest = hashlib.sha256(_architecture(model).encode())
    for key in sorted(model_patcher.patches):
        strengths = [(p[0], p[2]) for p in model_patcher.patches[key]]
        digest.update(f"{key}:{strengths};".encode())
    state = model.state_dict()
    untouched = [k for k in state if k not in model_patcher.patches and k not in model_patcher.backup]
    step = max(1, len(untouched) // SAMPLED_WEIGHTS)
    for key in untouched[::step][:SAMPLED_WEIGHTS]:
        tensor = state[key]
        digest.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
        try:
            values = tensor.detach().flatten()[:SAMPLED_VALUES].to(device="cpu", dtype=torch.float64)
        except Exception as exc:  # quantized or custom tensor types: their shapes and names still identify them
            log.debug("[MeanCache] weight %s not sampled for the auto profile key: %s", key, exc)
            continue
        digest.update(values.numpy().tobytes())
    return type(model).__name__, digest.hexdigest()


def architecture_key(model_patcher) -> str:
    """Digest of the model's class and architecture config: what its fine-tunes and LoRAs share."""
    return hashlib.sha256(_architecture(model_patcher.model).encode()).hexdigest()[:16]


def _architecture(model) -> str:
    config = getattr(getattr(model, "model_config", None), "unet_config", None)
    return type(model).__name__ + repr(sorted((config or {}).items(), key=str))


def profile_path(model_patcher, sampler: str, cfg: float | None) -> tuple[Path, str]:
    """``auto/<model class>-<model digest>-<sampler>-cfg<scale>.json`` and its model prefix (up to the sampler).

    One file per model and setup; the prefix finds the model's profiles for
    other samplers and scales.
    """
    name, digest = model_identity(model_patcher)
    scale = "none" if cfg is None else f"{cfg:g}"
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{name}-{digest[:16]}-")
    return auto_folder() / (prefix + re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{sampler}-cfg{scale}.json")), prefix


def _closest_setup(path: Path, prefix: str, metadata: dict) -> tuple[Observations, str] | None:
    """The model's profile for the nearest other setup (closest cfg, then the same sampler, then the most
    observations), and which setup that is.

    On the zoo a profile learned under another sampler or cfg of the same
    model planned a first run almost as well as the setup's own profile
    (+7.4 and +6.9 dB over even on average, against +7.5 for its own).
    """
    best = None
    for _, observations, saved in _other_profiles(path, f"{prefix}*.json"):
        cfg, own_cfg = saved.get("cfg"), metadata.get("cfg")
        numbers = all(isinstance(c, (int, float)) for c in (cfg, own_cfg))
        rank = (
            abs(cfg - own_cfg) if numbers else inf,
            saved.get("sampler") != metadata.get("sampler"),
            -len(observations),
        )
        if len(observations) and (best is None or rank < best[0]):
            best = (rank, observations, f"this model's {saved.get('sampler')} cfg {cfg}")
    return best[1:] if best else None


def _same_setup_of_architecture(
    path: Path, prefix: str, metadata: dict, sigmas: list[float]
) -> tuple[Observations, str] | None:
    """The profile with the most observations of another model of this architecture (a fine-tune, other
    LoRAs) under this exact sampler and cfg that observed most of this run's sigmas, and which file that is.

    On fine-tunes of the three zoo architectures (300 steps on one class,
    ``scripts/finetune_transfer.py``) the base model's profile planned a
    first run +7.4 dB over even on average, better than the fine-tune's own
    profile after one run (+6.8 dB); it lost more than 1 dB to even in no
    cell of 72, the own profile in 4. Another sampler or cfg is not borrowed
    across models: a distilled variant of the same architecture runs other
    setups and bends differently. Nor is a profile that saw another part of
    the schedule (the other expert of a two-model run such as Wan 2.2).
    """
    best = None
    for other, observations, saved in _other_profiles(path, f"*-{path.name[len(prefix) :]}"):
        if other.name.startswith(prefix):
            continue  # this model's own setups: _closest_setup's
        same = saved.get("architecture") == metadata.get("architecture") is not None
        if same and saved.get("sampler") == metadata.get("sampler") and saved.get("cfg") == metadata.get("cfg"):
            covers = observations.coverage(sigmas) >= MIN_BORROWED_COVERAGE
            if covers and (best is None or len(observations) > len(best[0])):
                best = (observations, f"another model of this architecture ({other.name})")
    return best


def _other_profiles(path: Path, pattern: str):
    """``(file, observations, metadata)`` of each readable profile beside ``path`` matching ``pattern``."""
    for other in sorted(path.parent.glob(pattern)) if path.parent.is_dir() else ():
        if other == path or ".unreadable-" in other.name:
            continue
        try:
            observations, saved = load_learned(other)
        except (OSError, ValueError):
            continue
        yield other, observations, saved


@dataclass
class AutoProfile:
    """One model's learned profile for one run: what it holds now and the run's notes about it."""

    path: Path
    observations: Observations
    metadata: dict
    notes: list[str] = field(default_factory=list)
    unreadable: str | None = None  # why the file on disk could not be used
    borrowed: tuple[Observations, str] | None = None  # another setup's or model's, for this setup's first run

    @classmethod
    def open(cls, path: Path, prefix: str, metadata: dict, sigmas: list[float]) -> AutoProfile:
        """Load ``path``; without a usable file, what this session could not save (or nothing).

        A setup with nothing learned yet plans from the same model's profile
        for the nearest other setup, else from another model of the same
        architecture under the same setup that saw most of ``sigmas`` (this
        run's), if there is one. A file with unusable
        content warns and plans as a first run; the next save keeps it aside. One that
        cannot be read at all (permissions, a file where the folder should
        be) warns too.
        """
        unsaved = _UNSAVED.get(path, Observations())
        try:
            observations, saved = load_learned(path)
        except FileNotFoundError:
            borrowed = None
            if not len(unsaved):
                borrowed = _closest_setup(path, prefix, metadata)
                borrowed = borrowed or _same_setup_of_architecture(path, prefix, metadata, sigmas)
            return cls(path, unsaved, {**metadata, "runs": 0}, borrowed=borrowed)
        except OSError as exc:
            profile = cls(path, unsaved, {**metadata, "runs": 0})
            profile.warn(f"auto profile cannot be read ({exc}); planning from this session's runs only")
            return profile
        except ValueError as exc:
            profile = cls(path, Observations(), {**metadata, "runs": 0}, unreadable=str(exc))
            profile.warn(f"auto profile unreadable, planning without it: {exc}")
            return profile
        runs = saved.get("runs", 0)
        return cls(path, observations, {**metadata, "runs": runs if isinstance(runs, int) else 0})

    @property
    def for_planning(self) -> Observations:
        """What this run plans from: this setup's observations, else those borrowed from another setup."""
        if len(self.observations) or self.borrowed is None:
            return self.observations
        return self.borrowed[0]

    def warn(self, text: str) -> None:
        self.notes.append(text)
        log.warning("[MeanCache] %s", text)

    def save(self) -> None:
        """Write the profile with this run's observations; problems are warnings, never errors."""
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        metadata = {**self.metadata, "runs": self.metadata["runs"] + 1, "updated": now}
        try:
            if self.unreadable is not None and self.path.exists():
                kept = self.path.with_name(f"{self.path.stem}.unreadable-{now.replace(':', '')}.json")
                os.replace(self.path, kept)
                self.warn(f"the unreadable auto profile was kept as {kept.name}; a new one starts")
            size = save_learned(self.path, self.observations, metadata)
        except (OSError, TypeError, ValueError) as exc:  # after sampling: warn, never fail the prompt
            _UNSAVED[self.path] = self.observations
            self.warn(f"auto profile not saved ({exc}); this session keeps what it learned in memory")
            return
        _UNSAVED.pop(self.path, None)
        self.metadata = metadata
        self.notes.append(
            f"auto profile {self.path.name}: {len(self.observations)} observations from {metadata['runs']} "
            f"run{'s' * (metadata['runs'] != 1)} ({size / 1024:.1f} KiB)"
        )
