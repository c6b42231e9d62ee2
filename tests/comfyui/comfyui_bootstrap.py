"""Locate a ComfyUI checkout and import it once, in CPU mode.

Standard library only at import time, so ``conftest.py`` can ask "is ComfyUI
usable here?" in any Python (even one without torch) and skip cleanly.

Where ComfyUI is looked for:

1. ``$COMFYUI_PATH`` (the ComfyUI root: the folder holding ``main.py``,
   ``nodes.py`` and the ``comfy/`` package), else
2. ``~/comfy/ComfyUI``.

The Python running pytest must have ComfyUI's requirements installed
(torch, torchvision, ...); typically that is ComfyUI's own venv.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

DEFAULT_COMFYUI_PATH = "~/comfy/ComfyUI"
ENV_VAR = "COMFYUI_PATH"

# Core modules the harness needs; importing them is the availability test.
_REQUIRED_MODULES = (
    "torch",
    "torchvision",
    "comfy.options",
    "comfy.cli_args",
    # ComfyUI's root package ``utils`` must be imported before ``nodes``:
    # nodes.py puts ``<root>/comfy`` first on sys.path, after which a fresh
    # ``import utils`` finds comfy/utils.py instead (main.py imports
    # utils.extra_config early for the same reason, and comfy_extras/
    # nodes_images.py needs utils.install_util).
    "folder_paths",
    "utils.extra_config",
    "utils.install_util",
    "comfy.model_management",
    "comfy.model_patcher",
    "comfy.model_base",
    "comfy.supported_models",
    "comfy.samplers",
    "comfy.sample",
    "comfy.patcher_extension",
    "nodes",
    "comfy_api.latest",
)

_state: dict = {}


def comfyui_path() -> Path:
    """The ComfyUI root to use: ``$COMFYUI_PATH`` or ``~/comfy/ComfyUI`` (not checked)."""
    raw = os.environ.get(ENV_VAR) or DEFAULT_COMFYUI_PATH
    return Path(os.path.expanduser(raw)).resolve()


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_layout(root: Path) -> str | None:
    if not root.is_dir():
        how = f"${ENV_VAR}" if os.environ.get(ENV_VAR) else f"default {DEFAULT_COMFYUI_PATH}; set ${ENV_VAR}"
        return f"ComfyUI not found at {root} ({how})"
    missing = [p for p in ("nodes.py", "comfy/model_patcher.py", "comfy_api") if not (root / p).exists()]
    if missing:
        return f"{root} does not look like a ComfyUI root (missing {', '.join(missing)})"
    return None


def bootstrap() -> str | None:
    """Import ComfyUI once per process in CPU mode.

    Returns ``None`` when ComfyUI is usable, else a one-line reason. The
    result is cached, so a failure is not retried in the same session.
    """
    if "reason" in _state:
        return _state["reason"]
    root = comfyui_path()
    reason = _check_layout(root)
    if reason is None:
        try:
            _import_comfyui(root)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - any failure (even SystemExit) means "skip"
            reason = f"ComfyUI at {root} is not importable with {sys.executable}: {_one_line(exc)}"
    _state["reason"] = reason
    _state["root"] = root
    return reason


def _import_comfyui(root: Path) -> None:
    # Fail fast, with a clear message, when the running Python lacks torch.
    importlib.import_module("torch")
    importlib.import_module("torchvision")

    root_s = str(root)
    if root_s not in sys.path:
        # ComfyUI's own entry points (main.py, tests-unit's pythonpath=.) put the
        # root first; its top-level names (nodes, folder_paths, utils, app, ...)
        # must win over anything else on sys.path.
        sys.path.insert(0, root_s)

    # comfy.cli_args parses [] unless comfy.options.args_parsing was enabled,
    # so pytest's own argv never reaches ComfyUI's argparse.
    import comfy.cli_args
    import comfy.options  # noqa: F401

    args = comfy.cli_args.args
    args.cpu = True  # must be set before comfy.model_management is imported
    # Note: this affects only this process. LatentPreviewMethod.NoPreviews is
    # already the default, so common_ksampler builds no previewer.

    for name in _REQUIRED_MODULES:
        importlib.import_module(name)

    import comfy.utils

    comfy.utils.set_progress_bar_enabled(False)  # no tqdm bars in test output


def require() -> Path:
    """Bootstrap or raise ``ImportError`` with the reason; returns the ComfyUI root."""
    reason = bootstrap()
    if reason is not None:
        raise ImportError(reason)
    return _state["root"]
