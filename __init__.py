"""ComfyUI loads this folder as a custom-node package; the nodes live in comfy_meancache/."""
