"""ComfyUI-Manager installs requirements.txt, not pyproject's dependencies: the two must agree."""

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[\s]", line.strip(), maxsplit=1)[0].lower() for line in requirements}


def test_requirements_txt_lists_every_dependency_but_torch():
    """torch is the user's own (a pin could replace their CUDA build), so only the manifest names it."""
    declared = names(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.strip()]
    listed = names([line for line in lines if not line.lstrip().startswith("#")])
    assert listed == declared - {"torch"}
