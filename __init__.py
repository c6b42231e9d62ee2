"""ComfyUI loads this folder as a custom-node package; the nodes live in comfy_meancache/comfyui/.

pytest also imports this file (the repository root is a package), outside
ComfyUI, so the nodes are only imported where ComfyUI's API exists.
"""

import importlib.util

WEB_DIRECTORY = "./js"

if importlib.util.find_spec("comfy_api") is not None:
    from .comfy_meancache.comfyui.nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
