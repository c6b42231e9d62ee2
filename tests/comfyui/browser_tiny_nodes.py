"""Test-only ComfyUI node pack for scripts/browser_check.py: a tiny random Z-Image and its conditioning.

Never installed with the pack: browser_check.py copies this file as
``<temp custom_nodes>/meancache_browser_tiny/__init__.py`` of the server it starts, so that the
browser can queue a real Z-Image graph (loader -> MeanCache Planner/Apply -> KSampler -> Report)
in seconds on a CPU without model files.

ComfyUI cannot load a tiny Z-Image from a file (its detection only knows the full width), so
TinyZImageLoader builds one the way harness.py::tiny_zimage does. The logic is repeated, not
imported, because this file runs inside the ComfyUI server, where importing the harness would
bootstrap a second ComfyUI import: ``comfy.supported_models.ZImage`` with small dims, ``get_model({}, "")``, a
deterministic weight fill and a ``ModelPatcher`` like a checkpoint loader's MODEL.
TinyZImageConds gives (positive, negative) CONDITIONING shaped like the Qwen3 encoder's output
(harness.make_cond_pair: 12 and 7 tokens). Use EmptySD3LatentImage (16 channels) for the latent.
"""

from __future__ import annotations

import math

import comfy.model_management
import comfy.model_patcher
import comfy.supported_models
import torch

CAP_FEAT_DIM = 32  # real Z-Image: 2560 (Qwen3-4B hidden states)
CATEGORY = "testing/meancache_browser_check"


def init_weights_(module: torch.nn.Module, seed: int, *, gain: float = 1.0) -> torch.nn.Module:
    """Fill every parameter deterministically from ``seed`` (comfy.ops layers skip initialisation)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    norm_params: set[str] = set()
    for mname, mod in module.named_modules():
        if "norm" in type(mod).__name__.lower():
            for pname, _ in mod.named_parameters(recurse=False):
                norm_params.add(f"{mname}.{pname}" if mname else pname)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name in norm_params:
                value = (1.0 + 0.02 * noise) if name.rsplit(".", 1)[-1] in ("weight", "scale") else 0.02 * noise
            elif p.ndim >= 2:
                value = noise * (gain / math.sqrt(max(1, p[0].numel())))
            else:
                value = 0.02 * noise
            p.copy_(value.to(p.dtype))
    return module


def tiny_zimage(seed: int = 0, n_layers: int = 2, n_refiner_layers: int = 1) -> comfy.model_patcher.ModelPatcher:
    """model_base.Lumina2 from supported_models.ZImage: dim 256, 2 heads, 2 layers, cap_feat_dim 32."""
    unet_config = {
        "image_model": "lumina2",
        "patch_size": 2,
        "in_channels": 16,
        "dim": 256,  # not lower: z_image_modulation's timestep embedder emits 256 features
        "cap_feat_dim": CAP_FEAT_DIM,
        "n_layers": n_layers,
        "n_refiner_layers": n_refiner_layers,
        "n_heads": 2,
        "n_kv_heads": 2,
        "multiple_of": 16,
        "ffn_dim_multiplier": 8.0 / 3.0,
        "norm_eps": 1e-5,
        "qk_norm": True,
        "axes_dims": [32, 48, 48],
        "axes_lens": [1536, 512, 512],
        "rope_theta": 256.0,
        "z_image_modulation": True,
        "time_scale": 1000.0,
        "pad_tokens_multiple": 32,
    }
    model_config = comfy.supported_models.ZImage(dict(unet_config))
    model_config.set_inference_dtype(torch.float32, None)  # fp32, no manual cast
    offload = comfy.model_management.unet_offload_device()
    model = model_config.get_model({}, "", device=offload)
    init_weights_(model.diffusion_model, seed)
    model = model.to(offload)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=comfy.model_management.get_torch_device(), offload_device=offload
    )


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
