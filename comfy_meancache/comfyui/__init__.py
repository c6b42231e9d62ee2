"""The ComfyUI layer: V3 nodes and the model hook (the only code that imports comfy*)."""
