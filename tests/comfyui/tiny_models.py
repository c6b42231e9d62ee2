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
FLUX_CONTEXT_DIM = 32  # real Flux: 4096 (T5-XXL)
FLUX_VEC_DIM = 16  # real Flux: 768 (CLIP-L pooled)
QWEN_CONTEXT_DIM = 32  # real Qwen-Image: 3584 (Qwen2.5-VL-7B hidden states)
HUNYUAN_CONTEXT_DIM = 32  # real HunyuanVideo: 4096 (LLaVA-Llama-3 hidden states)
HUNYUAN_VEC_DIM = 16  # real HunyuanVideo: 768 (CLIP-L pooled)
WAN_TEXT_DIM = 32  # real Wan 2.1/2.2: 4096 (umT5-XXL); WanModel takes any text_dim


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


def tiny_flux(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """Tiny random Flux dev (guidance embedding on): ``model_base.Flux`` from ``supported_models.Flux``.

    ModelType.FLUX, i.e. CONST prediction with ``ModelSamplingFlux`` (shift
    1.15, multiplier 1), 16-channel latents, patch 2; hidden 64, 2 heads,
    1 double + 1 single block. ``guidance_embed`` makes it read the
    conditioning's ``guidance`` (what FluxGuidance sets; 3.5 by default).
    """
    unet_config = {
        "image_model": "flux",
        "in_channels": 16,
        "out_channels": 16,
        "vec_in_dim": FLUX_VEC_DIM,
        "context_in_dim": FLUX_CONTEXT_DIM,
        "hidden_size": 64,
        "mlp_ratio": 4.0,
        "num_heads": 2,
        "depth": 1,
        "depth_single_blocks": 1,
        "axes_dim": [8, 12, 12],
        "theta": 10000,
        "patch_size": 2,
        "qkv_bias": True,
        "guidance_embed": True,
        "txt_ids_dims": [],
    }
    return build(comfy.supported_models.Flux, unet_config, seed)


def tiny_qwen_image(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """Tiny random Qwen-Image: ``model_base.QwenImage`` from ``supported_models.QwenImage``.

    ModelType.FLUX with shift 1.15, the Wan 2.1 latent format (16 channels,
    a 4-D empty latent comes back 5-D with one frame), patch 2; 2 layers,
    2 heads of 32, joint attention dim 32.
    """
    unet_config = {
        "image_model": "qwen_image",
        "patch_size": 2,
        "in_channels": 64,  # 16 latent channels x 2x2 patch
        "out_channels": 16,
        "num_layers": 2,
        "attention_head_dim": 32,
        "num_attention_heads": 2,
        "joint_attention_dim": QWEN_CONTEXT_DIM,
        "axes_dims_rope": (8, 12, 12),
    }
    return build(comfy.supported_models.QwenImage, unet_config, seed)


def tiny_hunyuan_video(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """Tiny random HunyuanVideo (1.0, t2v): ``model_base.HunyuanVideo`` from ``supported_models.HunyuanVideo``.

    FLOW, shift 7.0, 16-channel 5-D latents ``[B, 16, T, H, W]``, patch
    (1, 2, 2); hidden 64, 2 heads, 1 double + 1 single block, guidance
    embedding on (the conditioning's ``guidance``, 6.0 by default).
    """
    unet_config = {
        "image_model": "hunyuan_video",
        "in_channels": 16,
        "out_channels": 16,
        "vec_in_dim": HUNYUAN_VEC_DIM,
        "context_in_dim": HUNYUAN_CONTEXT_DIM,
        "hidden_size": 64,
        "mlp_ratio": 4.0,
        "num_heads": 2,
        "depth": 1,
        "depth_single_blocks": 1,
        "axes_dim": [8, 12, 12],
        "theta": 256,
        "patch_size": [1, 2, 2],
        "qkv_bias": True,
        "guidance_embed": True,
        "byt5": False,
        "meanflow": False,
        "use_cond_type_embedding": False,
        "vision_in_dim": None,
        "meanflow_sum": False,
    }
    return build(comfy.supported_models.HunyuanVideo, unet_config, seed)


def tiny_wan21(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """Tiny random Wan 2.1 t2v: ``model_base.WAN21`` from ``supported_models.WAN21_T2V``.

    FLOW, shift 8.0, 16-channel 5-D latents ``[B, 16, T, H, W]``, patch
    (1, 2, 2); dim 64, 2 heads, 2 layers, text_dim 32. Wan 2.2 A14B t2v is two
    such models (a high-noise and a low-noise expert): :func:`tiny_wan22_pair`.
    """
    unet_config = {
        "image_model": "wan2.1",
        "model_type": "t2v",
        "dim": 64,
        "ffn_dim": 128,
        "freq_dim": 32,
        "text_dim": WAN_TEXT_DIM,
        "num_heads": 2,
        "num_layers": 2,
        "in_dim": 16,
        "out_dim": 16,
        "patch_size": (1, 2, 2),
        "window_size": (-1, -1),
        "qk_norm": True,
        "cross_attn_norm": True,
        "eps": 1e-6,
    }
    return build(comfy.supported_models.WAN21_T2V, unet_config, seed)


def tiny_wan22_pair(seed: int = 0) -> tuple[comfy.model_patcher.ModelPatcher, comfy.model_patcher.ModelPatcher]:
    """Wan 2.2 A14B t2v's two experts as tiny Wan 2.1-architecture models: ``(high_noise, low_noise)``.

    The real experts share the Wan 2.1 architecture and latent format and
    differ in weights only, so two seeds (``seed``, ``seed + 1``) stand in.
    """
    return tiny_wan21(seed), tiny_wan21(seed + 1)
