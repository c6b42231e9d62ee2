"""Integration tests that run inside a real ComfyUI (CPU only, no server).

Pointing the tests at a ComfyUI install
---------------------------------------
* ``COMFYUI_PATH=/path/to/ComfyUI`` (the folder with ``main.py``, ``nodes.py``
  and ``comfy/``); without it ``~/comfy/ComfyUI`` is used.
* Run pytest with a Python that has ComfyUI's requirements (torch,
  torchvision, ...), usually ComfyUI's own venv::

      cd /work/main
      COMFYUI_PATH=~/comfy/ComfyUI ~/comfy/venv/bin/python -m pytest tests/comfyui -q

* When ComfyUI is missing, or cannot be imported by the running Python, every
  test file in this folder is reported as ONE skipped test with a one-line
  reason (``-rs`` shows it); nothing in the folder is imported, so collection
  never errors and the exit code stays 0.
* ``COMFYUI_TEST_TORCH_THREADS`` (default 1) sets torch's intra-op threads
  for each test here; the tiny models run fastest single-threaded, and more
  threads thrash badly when other processes share the cores. 0 leaves torch's
  setting alone.

ComfyUI is imported once per session in CPU mode (``args.cpu = True`` before
``comfy.model_management`` loads, progress bars off); its root goes first on
``sys.path``. See ``harness.py`` for the helpers and ``README.md`` for an
overview.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # the harness modules live next to this file
    sys.path.insert(0, str(_HERE))

import comfyui_bootstrap  # noqa: E402  (stdlib only)

COMFYUI_SKIP_REASON = comfyui_bootstrap.bootstrap()


def _in_this_folder(path) -> bool:
    try:
        Path(path).resolve().relative_to(_HERE)
        return True
    except ValueError:
        return False


if COMFYUI_SKIP_REASON is not None:

    class _ComfyUIUnavailable(pytest.Item):
        def runtest(self):
            pytest.skip(COMFYUI_SKIP_REASON)

        def reportinfo(self):
            return self.path, 0, f"{self.name} (ComfyUI unavailable)"

    class _ComfyUIUnavailableFile(pytest.File):
        """Stands in for a test module that must not be imported (no ComfyUI)."""

        def collect(self):
            item = _ComfyUIUnavailable.from_parent(self, name=self.path.stem)
            # A skip *marker* is honoured before any setup runs, so not even a
            # parent package's __init__.py (the repo root is a ComfyUI pack
            # whose __init__ imports comfy_api) gets imported on this path.
            item.add_marker(pytest.mark.skip(reason=COMFYUI_SKIP_REASON))
            yield item

    def pytest_pycollect_makemodule(module_path, parent):
        if _in_this_folder(module_path):
            return _ComfyUIUnavailableFile.from_parent(parent, path=module_path)
        return None

else:
    import harness  # noqa: E402

    @pytest.fixture(autouse=True)
    def _torch_threads():
        import torch

        n = int(os.environ.get("COMFYUI_TEST_TORCH_THREADS", "1"))
        if n <= 0:
            yield
            return
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    @pytest.fixture(scope="session")
    def comfyui_root() -> Path:
        """The ComfyUI root in use (already on sys.path and imported)."""
        return harness.COMFYUI_ROOT

    # Models are built once per session. They are shared: never patch them in
    # place; ``.clone()`` first (every probe and node does that).
    @pytest.fixture(scope="session")
    def zimage_model():
        """Tiny random Z-Image ModelPatcher (harness.tiny_zimage(seed=0))."""
        return harness.tiny_zimage(seed=0)

    @pytest.fixture(scope="session")
    def flux_model():
        """Tiny random Flux ModelPatcher (harness.tiny_flow_other(seed=0))."""
        return harness.tiny_flow_other(seed=0)

    @pytest.fixture(scope="session")
    def sd_model():
        """Tiny random SD1.5-style eps ModelPatcher (harness.tiny_sd_eps(seed=0))."""
        return harness.tiny_sd_eps(seed=0)

    @pytest.fixture(params=["zimage", "flux", "sd"])
    def any_model(request):
        """Each tiny model in turn (parametrised: zimage, flux, sd)."""
        return request.getfixturevalue(f"{request.param}_model")

    @pytest.fixture
    def comfy_log(caplog):
        """caplog at DEBUG for the root logger (ComfyUI logs through ``logging`` root)."""
        import logging

        caplog.set_level(logging.DEBUG)
        return caplog

    @pytest.fixture(autouse=True)
    def user_dir(tmp_path):
        """ComfyUI's user directory (profiles, learned auto profiles) in ``tmp_path``: no test sees another's."""
        import folder_paths

        before = folder_paths.get_user_directory()
        folder_paths.set_user_directory(str(tmp_path))
        yield tmp_path
        folder_paths.set_user_directory(before)
