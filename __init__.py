"""ComfyUI loads this folder as a custom-node package; the nodes live in comfy_meancache/comfyui/.

pytest imports this file too (the repository root holds an ``__init__.py``),
sometimes as a plain module when the checkout's folder name is no identifier,
and outside ComfyUI; the nodes are imported only when this runs as a package
where ComfyUI's API exists.
"""

import importlib.util

WEB_DIRECTORY = "./js"

if __package__ and importlib.util.find_spec("comfy_api") is not None:
    from .comfy_meancache.comfyui.nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
