"""Calibration profiles inside ComfyUI: where they live and how runs are added."""

from __future__ import annotations

import datetime
from pathlib import Path

from ..core.profile import Profile, Trajectory, list_profiles, profile_paths

PROFILE_SUBFOLDER = "meancache"


def profile_folder() -> Path:
    """``<ComfyUI user directory>/meancache``: profiles stay with the user's other settings."""
    import folder_paths

    return Path(folder_paths.get_user_directory()) / PROFILE_SUBFOLDER


def saved_profiles() -> list[str]:
    """Profile names available now (re-scanned on every call, so no restart is needed)."""
    return list_profiles(profile_folder())


def load_profile(name: str) -> Profile:
    return Profile.load(profile_folder(), name)


def profile_stamp(name: str) -> tuple:
    """(mtime_ns, size) of the profile's two files, None where one is missing: changes with every saved run."""
    try:
        paths = profile_paths(profile_folder(), name)
    except ValueError:  # a bad name: validation reports it
        return ()
    stamps = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            stamps.append(None)
        else:
            stamps.append((stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)


class Calibration:
    """Adds each completed full-step run to the named profile on disk."""

    def __init__(self, name: str, folder: Path | None = None) -> None:
        self.folder = folder if folder is not None else profile_folder()
        profile_paths(self.folder, name)  # refuse a bad name before any sampling
        self.name = name

    def add(self, run: Trajectory, metadata: dict) -> int:
        """Average ``run`` into the profile; returns how many runs it holds now."""
        json_path, _ = profile_paths(self.folder, self.name)
        profile = Profile.load(self.folder, self.name) if json_path.exists() else Profile(self.name)
        profile.add(run)
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        per_run = [*profile.metadata.get("per_run", []), {**metadata, "date": now}]
        profile.metadata = {**metadata, "runs": len(profile.runs), "updated": now, "per_run": per_run}
        profile.save(self.folder)
        return len(profile.runs)
