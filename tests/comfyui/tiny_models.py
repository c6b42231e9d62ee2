"""Tiny random-weight ComfyUI models, built from ComfyUI's own classes.

Imports only ``comfy`` and torch, so both the test harness (after it has
bootstrapped ComfyUI) and the browser check's test-only node pack (inside a
running server) build the very same models from here.
"""

from __future__ import annotations

import math

import comfy.model_management
import comfy.model_patcher
import comfy.supported_models
import torch

ZIMAGE_CAP_FEAT_DIM = 32  # real Z-Image: 2560 (Qwen3-4B hidden states)


def init_weights_(module: torch.nn.Module, seed: int, *, gain: float = 1.0) -> torch.nn.Module:
    """Fill every parameter deterministically from ``seed`` (in place).

    ComfyUI builds models with ``comfy.ops`` layers that skip initialisation
    (weights are uninitialised memory), so this is required, not cosmetic.
    Matrices get N(0, gain^2/fan_in); norm weights 1 + N(0, 0.02^2); other
    vectors N(0, 0.02^2). The order is the module's parameter order, so the
    same seed gives bit-identical weights in every run of the same torch.
    """
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


def build(config_cls, unet_config: dict, seed: int, dtype=torch.float32) -> comfy.model_patcher.ModelPatcher:
    """Instantiate ``config_cls`` (a supported_models class) without a state dict."""
    model_config = config_cls(dict(unet_config))
    model_config.set_inference_dtype(dtype, None)  # fp32, no manual cast
    offload = comfy.model_management.unet_offload_device()
    model = model_config.get_model({}, "", device=offload)
    init_weights_(model.diffusion_model, seed)
    model = model.to(offload)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=comfy.model_management.get_torch_device(), offload_device=offload
    )


def tiny_zimage(seed: int = 0, *, n_layers: int = 2, n_refiner_layers: int = 1) -> comfy.model_patcher.ModelPatcher:
    """Tiny random Z-Image: ``model_base.Lumina2`` built from ``supported_models.ZImage``.

    Same NextDiT code path and flags as the real model (z_image_modulation,
    time_scale 1000, pad_tokens_multiple 32, rope theta 256, axes [32,48,48],
    qk_norm, 16-channel Flux latent format, FLOW, shift 3.0, multiplier 1.0),
    but dim 256, 2 heads, 2 layers, 1 refiner layer, cap_feat_dim 32.
    dim cannot go below 256: with z_image_modulation the timestep embedder
    emits 256 features but adaLN expects min(dim, 256) (lumina/model.py:236,439).
    """
    unet_config = {
        "image_model": "lumina2",
        "patch_size": 2,
        "in_channels": 16,
        "dim": 256,
        "cap_feat_dim": ZIMAGE_CAP_FEAT_DIM,
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
    return build(comfy.supported_models.ZImage, unet_config, seed)
