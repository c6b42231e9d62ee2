"""comfy-meancache: MeanCache step caching for flow-matching models in ComfyUI."""

__version__ = "0.1.0"
