"""Test-only ComfyUI node pack for scripts/browser_check.py: a tiny random Z-Image and its conditioning.

Never installed with the pack: browser_check.py copies this file as
``<temp custom_nodes>/meancache_browser_tiny/__init__.py`` of the server it starts, so that the
browser can queue a real Z-Image graph (loader -> MeanCache Planner/Apply -> KSampler -> Report)
in seconds on a CPU without model files.

ComfyUI cannot load a tiny Z-Image from a file (its detection only knows the full width), so
TinyZImageLoader builds it with ``tiny_models.tiny_zimage``, the builder the test harness uses
(browser_check.py copies tiny_models.py beside this file; the harness itself is not imported,
since it bootstraps ComfyUI and this runs inside a started server).
TinyZImageConds gives (positive, negative) CONDITIONING shaped like the Qwen3 encoder's output
(harness.make_cond_pair: 12 and 7 tokens). Use EmptySD3LatentImage (16 channels) for the latent.
"""

from __future__ import annotations

import torch

from .tiny_models import tiny_zimage

CATEGORY = "testing/meancache_browser_check"


def make_conditioning(model, tokens: int, seed: int) -> list:
    """``[[cross_attn [1, tokens, cap_feat_dim], {attention_mask, pooled_output=None}]]``."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    width = model.model.diffusion_model.cap_embedder[1].in_features
    cross = torch.randn(1, tokens, width, generator=gen)
    return [[cross, {"pooled_output": None, "attention_mask": torch.ones(1, tokens, dtype=torch.int64)}]]


class TinyZImageLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"weight_seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Tiny random Z-Image (test only)."

    def load(self, weight_seed: int):
        return (tiny_zimage(weight_seed),)


class TinyZImageConds:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "cond_seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 2}),
                "pos_tokens": ("INT", {"default": 12, "min": 1, "max": 512}),
                "neg_tokens": ("INT", {"default": 7, "min": 1, "max": 512}),
            }
        }

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "make"
    CATEGORY = CATEGORY
    DESCRIPTION = "Random text-encoder-shaped conditioning for TinyZImageLoader's model (test only)."

    def make(self, model, cond_seed: int, pos_tokens: int, neg_tokens: int):
        # named *_seed, not seed: no 'control after generate' widget re-rolling it after each queue
        return make_conditioning(model, pos_tokens, cond_seed), make_conditioning(model, neg_tokens, cond_seed + 1)


NODE_CLASS_MAPPINGS = {"TinyZImageLoader": TinyZImageLoader, "TinyZImageConds": TinyZImageConds}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TinyZImageLoader": "Tiny Z-Image Loader (test)",
    "TinyZImageConds": "Tiny Z-Image Conds (test)",
}
