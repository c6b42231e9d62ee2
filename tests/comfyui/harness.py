"""Helpers for integration tests that run inside a real ComfyUI (CPU only).

Importing this module imports ComfyUI (once per process, CPU mode) through
``comfyui_bootstrap``; it raises ``ImportError`` with a one-line reason when
ComfyUI is not usable. ``conftest.py`` checks that first and skips the whole
``tests/comfyui`` folder, so test modules may ``import harness`` (and
``comfy.*``) at top level.

Nothing here copies ComfyUI code: models, conditioning, noise and sampling go
through ComfyUI's own classes and functions (``nodes.common_ksampler``,
``comfy.samplers.CFGGuider``, ``SamplerCustomAdvanced``, ...).

Overview
--------
Models (random weights, fp32, CPU; ``ModelPatcher`` like a loader's MODEL):
    tiny_zimage(seed=0)       Z-Image: model_base.Lumina2 + supported_models.ZImage, shift 3.0
    tiny_flux(seed=0)         Flux dev, guidance embed (model_base.Flux, ModelSamplingFlux shift 1.15);
                              also tiny_flow_other
    tiny_qwen_image(seed=0)   Qwen-Image (model_base.QwenImage, shift 1.15)
    tiny_hunyuan_video(seed=0) HunyuanVideo t2v (5-D latents, shift 7.0)
    tiny_wan21(seed=0)        Wan 2.1 t2v (model_base.WAN21, 5-D latents, shift 8.0)
    tiny_wan22_pair(seed=0)   Wan 2.2 A14B: (high-noise, low-noise) tiny Wan 2.1 models
    tiny_sd_eps(seed=0)       SD1.5-style UNet, epsilon prediction, ModelSamplingDiscrete
Conditioning:
    make_conditioning(model, tokens=..., batch=1, seed=0)     one CONDITIONING list
    make_cond_pair(model, pos_tokens=..., neg_tokens=...)      (positive, negative)
Latents / sigmas:
    empty_latent(model, batch=1, height=16, width=16, frames=3) {"samples": zeros}, 5-D for video
    ksampler_sigmas(model, steps, ...)                         sigmas KSampler would sample
    scheduler_sigmas(model, steps, ...)                        BasicScheduler's output
    split_sigmas(sigmas, step)                                 SplitSigmas' (high, low)
Sampling:
    sample(model, seed=, steps=, cfg=, ...)                    KSampler / KSamplerAdvanced path
    sample_custom(model, sigmas=, seed=, cfg=, ...)            SamplerCustomAdvanced path
Probes:
    DiffusionModelCallCounter(model)                           DIFFUSION_MODEL wrapper: real forwards
    PredictNoiseRecorder(model)                                PREDICT_NOISE wrapper: sampler evaluations
Nodes / packs:
    load_custom_node_pack(path)                                nodes.load_custom_node + captured log
    node_info(node)                                            /object_info entry (GET_NODE_INFO_V1)
    execute_node(node_cls, **inputs)                           run a node like the executor does
    load_builtin_extra_nodes()                                 comfy_extras nodes (for id clashes)
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import io as _stdio
import json
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import comfyui_bootstrap

COMFYUI_ROOT: Path = comfyui_bootstrap.require()
#: This repository's root (the custom-node pack folder itself).
PROJECT_ROOT: Path = Path(__file__).resolve().parents[2]

import comfy.model_base  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.patcher_extension  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.supported_models  # noqa: E402
import nodes  # noqa: E402
import torch  # noqa: E402
from comfy.patcher_extension import WrappersMP  # noqa: E402
from tiny_models import (  # noqa: E402
    FLUX_CONTEXT_DIM,
    FLUX_VEC_DIM,
    HUNYUAN_CONTEXT_DIM,
    HUNYUAN_VEC_DIM,
    QWEN_CONTEXT_DIM,
    WAN_TEXT_DIM,
    ZIMAGE_CAP_FEAT_DIM,
    build,
    init_weights_,
    tiny_flux,
    tiny_hunyuan_video,
    tiny_qwen_image,
    tiny_wan21,
    tiny_wan22_pair,
    tiny_zimage,
)

#: MeanCache Planner inputs of the balanced preset at 30 steps on the prior, as the tests' common base.
PLANNER_INPUTS = dict(
    preset="balanced",
    steps=30,
    scheduler="simple",
    denoise=1.0,
    compute_steps=0,
    speedup=2.5,
    gamma=2.0,
    warmup=3,
    max_gap=8,
    estimator="meancache2",
    cost_source="prior",
)

__all__ = [
    "COMFYUI_ROOT",
    "PLANNER_INPUTS",
    "PROJECT_ROOT",
    "ZIMAGE_CAP_FEAT_DIM",
    "FLUX_CONTEXT_DIM",
    "FLUX_VEC_DIM",
    "SD_CONTEXT_DIM",
    "QWEN_CONTEXT_DIM",
    "HUNYUAN_CONTEXT_DIM",
    "HUNYUAN_VEC_DIM",
    "WAN_TEXT_DIM",
    "FLUX_GUIDANCE",
    "VIDEO_FAMILIES",
    "HUNYUAN_GUIDANCE",
    "init_weights_",
    "tiny_zimage",
    "tiny_flux",
    "tiny_flow_other",
    "tiny_qwen_image",
    "tiny_hunyuan_video",
    "tiny_wan21",
    "tiny_wan22_pair",
    "tiny_sd_eps",
    "model_family",
    "make_conditioning",
    "make_cond_pair",
    "empty_latent",
    "ksampler_sigmas",
    "scheduler_sigmas",
    "split_sigmas",
    "sample",
    "sample_custom",
    "ModelCall",
    "DiffusionModelCallCounter",
    "Evaluation",
    "PredictNoiseRecorder",
    "CustomNodeLoad",
    "load_custom_node_pack",
    "load_builtin_extra_nodes",
    "core_node_ids",
    "node_info",
    "execute_node",
]

# Snapshot of the node ids defined by nodes.py itself, taken before any pack
# is loaded; used as the "ignore" set (core ids win over packs), the same role
# init_external_custom_nodes gives to its base_node_names.
_CORE_NODE_IDS: set[str] = set(nodes.NODE_CLASS_MAPPINGS)
_STATE: dict = {}

# --------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------

SD_CONTEXT_DIM = 64  # real SD1.5: 768 (CLIP-L)
FLUX_GUIDANCE = 3.5  # FluxGuidance's default, what Flux dev workflows set
VIDEO_FAMILIES = ("hunyuan_video", "wan21")  # sampled on 5-D [B, C, T, H, W] latents
HUNYUAN_GUIDANCE = 6.0  # HunyuanVideo's extra_conds default (its templates use FluxGuidance 6)
#: The older name of :func:`tiny_flux`: the flow model that is not Lumina2 in the first tests.
tiny_flow_other = tiny_flux


def tiny_sd_eps(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """Tiny random SD1.5-style UNet (``openaimodel.UNetModel``), epsilon prediction.

    ``supported_models.SD15`` (4-channel SD15 latent format, ModelSamplingDiscrete,
    EPS); 2 levels of 32/64 channels, one res block each, cross-attention
    (context_dim 64) on the second level and in the middle. SD15 forces
    num_heads 8 through unet_extra_config.
    """
    unet_config = {
        "use_checkpoint": False,
        "image_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 32,
        "num_res_blocks": [1, 1],
        "channel_mult": [1, 2],
        "transformer_depth": [0, 1],
        "transformer_depth_output": [0, 0, 1, 1],
        "transformer_depth_middle": 1,
        "use_spatial_transformer": True,
        "legacy": False,
        "context_dim": SD_CONTEXT_DIM,
        "use_linear_in_transformer": False,
        "adm_in_channels": None,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }
    return build(comfy.supported_models.SD15, unet_config, seed)


def model_family(model) -> str:
    """The family of a ModelPatcher built above (or a real one): ``"zimage"``, ``"lumina2"``, ``"flux"``,
    ``"qwen_image"``, ``"hunyuan_video"``, ``"wan21"`` or ``"sd"``."""
    base = model.model
    if isinstance(base, comfy.model_base.Lumina2):
        return "zimage" if isinstance(base.model_config, comfy.supported_models.ZImage) else "lumina2"
    families = [
        (comfy.model_base.Flux, "flux"),
        (comfy.model_base.QwenImage, "qwen_image"),
        (comfy.model_base.HunyuanVideo, "hunyuan_video"),
        (comfy.model_base.WAN21, "wan21"),
    ]
    for cls, name in families:
        if isinstance(base, cls):
            return name
    if type(base) is comfy.model_base.BaseModel:
        return "sd"
    return type(base).__name__.lower()


# --------------------------------------------------------------------------
# Conditioning
# --------------------------------------------------------------------------


def make_conditioning(model, *, tokens: int | None = None, batch: int = 1, seed: int = 0, scale: float = 1.0) -> list:
    """A CONDITIONING list ``[[cross_attn, extras]]`` shaped like the family's text encoder output.

    - Z-Image/Lumina2: cross_attn ``[batch, tokens, cap_feat_dim]`` plus
      ``attention_mask`` (all ones, like the Qwen3 encoder returns) and
      ``pooled_output=None``. ``Lumina2.extra_conds`` turns it into
      ``num_tokens``, a ``CONDConstant``: different token counts for positive
      and negative can NOT be batched (two forwards per step at cfg != 1).
    - Flux (dev): ``[batch, tokens, context_in_dim]`` plus ``pooled_output
      [batch, vec_in_dim]`` and ``guidance`` (:data:`FLUX_GUIDANCE`, as
      FluxGuidance sets it). ``c_crossattn`` is a ``CONDRegular``: only equal
      token counts batch. The same holds for the families below.
    - Qwen-Image: ``[batch, tokens, joint_attention_dim]`` (``QwenImage.extra_conds``
      reads only ``cross_attn``), ``pooled_output=None``.
    - HunyuanVideo: ``[batch, tokens, context_in_dim]``, ``pooled_output
      [batch, vec_in_dim]`` (``encode_adm`` returns it as ``y``) and
      ``guidance`` (:data:`HUNYUAN_GUIDANCE`).
    - Wan 2.1/2.2: ``[batch, tokens, text_dim]`` (umT5 hidden states), ``pooled_output=None``.
    - SD: ``[batch, tokens, context_dim]`` (``CONDCrossAttn``), default 77
      tokens; different counts still batch when one is a multiple of the other
      (it is repeated to the lcm), as with real 77/154-token prompts.
    ``batch`` is the conditioning batch (CLIPTextEncode gives 1; ComfyUI
    repeats it to the latent batch).
    """
    family = model_family(model)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    dm = model.model.diffusion_model
    if family == "sd":
        tokens = 77 if tokens is None else tokens
        width = model.model.model_config.unet_config["context_dim"]
        cross = torch.randn(batch, tokens, width, generator=gen) * scale
        return [[cross, {"pooled_output": torch.randn(batch, width, generator=gen) * scale}]]
    tokens = 12 if tokens is None else tokens
    if family in ("zimage", "lumina2"):
        width = dm.cap_embedder[1].in_features
    elif family in ("flux", "qwen_image"):
        width = dm.txt_in.in_features
    elif family == "hunyuan_video":
        width = dm.txt_in.input_embedder.in_features
    elif family == "wan21":
        width = dm.text_embedding[0].in_features
    else:
        raise ValueError(f"make_conditioning: unsupported model family {family!r}")
    cross = torch.randn(batch, tokens, width, generator=gen) * scale
    extras: dict = {"pooled_output": None}
    if family in ("zimage", "lumina2"):
        extras["attention_mask"] = torch.ones(batch, tokens, dtype=torch.int64)
    elif family in ("flux", "hunyuan_video"):
        extras["pooled_output"] = torch.randn(batch, dm.params.vec_in_dim, generator=gen) * scale
        extras["guidance"] = FLUX_GUIDANCE if family == "flux" else HUNYUAN_GUIDANCE
    return [[cross, extras]]


def make_cond_pair(
    model, *, pos_tokens: int | None = None, neg_tokens: int | None = None, batch: int = 1, seed: int = 0
) -> tuple[list, list]:
    """``(positive, negative)`` for ``model``, from seeds ``seed`` and ``seed + 1``.

    Defaults: flow models 12 vs 7 tokens (unequal: cond and uncond run as two
    diffusion-model calls when cfg != 1), SD 77 vs 77 (batched).
    Pass equal ``pos_tokens``/``neg_tokens`` to get one batched call per step.
    """
    family = model_family(model)
    if family == "sd":
        pos_tokens = 77 if pos_tokens is None else pos_tokens
        neg_tokens = 77 if neg_tokens is None else neg_tokens
    else:
        pos_tokens = 12 if pos_tokens is None else pos_tokens
        neg_tokens = 7 if neg_tokens is None else neg_tokens
    positive = make_conditioning(model, tokens=pos_tokens, batch=batch, seed=seed)
    negative = make_conditioning(model, tokens=neg_tokens, batch=batch, seed=seed + 1)
    return positive, negative


# --------------------------------------------------------------------------
# Latents and sigmas
# --------------------------------------------------------------------------


def empty_latent(
    model=None, batch: int = 1, height: int = 16, width: int = 16, channels: int | None = None, frames: int = 3
) -> dict:
    """A LATENT dict of zeros in latent pixels (not image pixels), shaped as the family's empty-latent node makes it.

    ``[batch, C, height, width]`` for image models (EmptySD3LatentImage,
    EmptyLatentImage; Qwen-Image too, which samples it as one frame);
    ``[batch, C, frames, height, width]`` for the video families HunyuanVideo
    and Wan (EmptyHunyuanLatentVideo, EmptyWanLatentVideo). ``C`` is the
    model's latent channel count (16 for the flow models, 4 for SD). Like
    those nodes' output, the sampler treats an all-zero latent as "empty" and
    does not run ``process_latent_in`` on it.
    """
    if channels is None:
        channels = 4 if model is None else model.get_model_object("latent_format").latent_channels
    video = model is not None and model_family(model) in VIDEO_FAMILIES
    shape = [batch, channels, frames, height, width] if video else [batch, channels, height, width]
    return {"samples": torch.zeros(shape)}


def ksampler_sigmas(
    model,
    steps: int,
    scheduler: str = "simple",
    *,
    sampler_name: str = "euler",
    denoise: float = 1.0,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
) -> torch.Tensor:
    """The sigmas a KSampler/KSamplerAdvanced run samples over (== ``sample_sigmas``).

    Uses ``comfy.samplers.KSampler`` for the schedule (incl. denoise and the
    samplers that discard the penultimate sigma) and applies the same
    last_step/start_step cut as ``KSampler.sample``.
    """
    ks = comfy.samplers.KSampler(
        model,
        steps=steps,
        device=model.load_device,
        sampler=sampler_name,
        scheduler=scheduler,
        denoise=denoise,
        model_options=model.model_options,
    )
    sigmas = ks.sigmas.clone()
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1]
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        sigmas = sigmas[start_step:] if start_step < len(sigmas) - 1 else sigmas[:0]
    return sigmas.cpu()


def scheduler_sigmas(model, steps: int, scheduler: str = "simple", denoise: float = 1.0) -> torch.Tensor:
    """What the BasicScheduler node outputs for these inputs (CPU float tensor)."""
    from comfy_extras.nodes_custom_sampler import BasicScheduler

    return BasicScheduler.execute(model, scheduler, steps, denoise)[0]


def split_sigmas(sigmas: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the SplitSigmas node outputs: ``(sigmas[:step+1], sigmas[step:])``."""
    from comfy_extras.nodes_custom_sampler import SplitSigmas

    out = SplitSigmas.execute(sigmas, step)
    return out[0], out[1]


# --------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------


def _latent_dict(model, latent, batch: int, height: int, width: int) -> dict:
    if latent is None:
        return empty_latent(model, batch=batch, height=height, width=width)
    if isinstance(latent, torch.Tensor):
        return {"samples": latent}
    return latent


def _default_conds(model, positive, negative):
    if positive is None or negative is None:
        pos, neg = make_cond_pair(model)
        positive = pos if positive is None else positive
        negative = neg if negative is None else negative
    return positive, negative


def sample(
    model,
    *,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str = "euler",
    scheduler: str = "simple",
    denoise: float = 1.0,
    batch: int = 1,
    latent=None,
    positive=None,
    negative=None,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
    add_noise: bool = True,
    sigmas: torch.Tensor | None = None,
    height: int = 16,
    width: int = 16,
    return_dict: bool = False,
):
    """Sample exactly like the KSampler / KSamplerAdvanced nodes; returns the output latent tensor.

    Goes through ``nodes.common_ksampler`` (noise from ``comfy.sample.prepare_noise``
    with ``seed``, the preview callback, ``comfy.sample.sample``). KSampler is
    ``start_step=last_step=None``; KSamplerAdvanced maps to
    ``start_step=start_at_step, last_step=end_at_step, add_noise=(add_noise ==
    "enable"), force_full_denoise=(return_with_leftover_noise == "disable")``.
    ``latent`` is a LATENT dict or tensor (default: ``empty_latent(model, batch,
    height, width)``); conds default to ``make_cond_pair(model)``.
    With ``sigmas`` given, runs :func:`sample_custom` instead (custom-sigmas path).
    ``return_dict=True`` returns the whole LATENT dict.
    """
    positive, negative = _default_conds(model, positive, negative)
    latent = _latent_dict(model, latent, batch, height, width)
    if sigmas is not None:
        return sample_custom(
            model,
            sigmas=sigmas,
            seed=seed,
            cfg=cfg,
            sampler_name=sampler_name,
            latent=latent,
            positive=positive,
            negative=negative,
            add_noise=add_noise,
            return_dict=return_dict,
        )
    out = nodes.common_ksampler(
        model,
        seed,
        steps,
        cfg,
        sampler_name,
        scheduler,
        positive,
        negative,
        latent,
        denoise=denoise,
        disable_noise=not add_noise,
        start_step=start_step,
        last_step=last_step,
        force_full_denoise=force_full_denoise,
    )[0]
    return out if return_dict else out["samples"]


def sample_custom(
    model,
    *,
    sigmas: torch.Tensor,
    seed: int = 0,
    cfg: float = 1.0,
    sampler_name: str = "euler",
    latent=None,
    positive=None,
    negative=None,
    add_noise: bool = True,
    batch: int = 1,
    height: int = 16,
    width: int = 16,
    guider=None,
    return_dict: bool = False,
):
    """Sample like SamplerCustomAdvanced + CFGGuider + KSamplerSelect + RandomNoise/DisableNoise.

    Calls ComfyUI's own ``SamplerCustomAdvanced.execute`` with a
    ``comfy.samplers.CFGGuider(model)`` (conds + cfg set) unless ``guider`` is
    given, ``comfy.samplers.sampler_object(sampler_name)`` and the given
    ``sigmas`` (e.g. one half of :func:`split_sigmas`). ``add_noise=False`` is
    DisableNoise (the usual second half of a split). Returns the output latent
    tensor (``return_dict=True``: the LATENT dict).
    """
    from comfy_extras.nodes_custom_sampler import Noise_EmptyNoise, Noise_RandomNoise, SamplerCustomAdvanced

    latent = _latent_dict(model, latent, batch, height, width)
    if guider is None:
        positive, negative = _default_conds(model, positive, negative)
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
    noise = Noise_RandomNoise(seed) if add_noise else Noise_EmptyNoise()
    sampler = comfy.samplers.sampler_object(sampler_name)
    out = SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent)[0]
    return out if return_dict else out["samples"]


# --------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------


def _find_transformer_options(args, kwargs) -> dict:
    to = kwargs.get("transformer_options")
    if isinstance(to, dict):
        return to
    # Positional in some families (Flux: index 7, UNet: index 5).
    for a in args:
        if isinstance(a, dict) and ("cond_or_uncond" in a or "sigmas" in a or "wrappers" in a):
            return a
    return {}


def _floats(t) -> list[float]:
    if t is None:
        return []
    if isinstance(t, torch.Tensor):
        return [float(v) for v in t.detach().flatten().cpu()]
    return [float(t)]


@dataclass
class ModelCall:
    """One diffusion-model forward as seen by :class:`DiffusionModelCallCounter`."""

    sigma: float  # transformer_options["sigmas"][0]: the sampler's sigma for this step
    sigmas: list[float]  # transformer_options["sigmas"] (one per latent in the batch)
    timestep: list[float]  # the model's own timestep arg (sigma for flow models, 0..999 for SD)
    batch: int  # x.shape[0]: latent batch x number of conds in this chunk
    cond_or_uncond: list[int]  # 0 = positive, 1 = negative, one entry per chunk
    innermost: bool  # True when no other DIFFUSION_MODEL wrapper ran inside this one
    output: torch.Tensor | None = None  # raw model output (keep_outputs=True)


class DiffusionModelCallCounter:
    """Counts real diffusion-model forwards via a DIFFUSION_MODEL wrapper.

    ``counter = DiffusionModelCallCounter(model)`` registers the wrapper on a
    clone, available as ``counter.model``; sample with that. Clones of
    ``counter.model`` (e.g. made by a node under test) keep reporting to the
    same counter. Wrappers run in registration order, outermost first, so put
    the counter on LAST (after the node under test patched the model) to count
    only forwards that really reach the network; ``all_innermost`` tells.
    """

    KEY = "test_counter"

    def __init__(self, model, *, key: str = KEY, keep_outputs: bool = False):
        self.key = key
        self.keep_outputs = keep_outputs
        self.calls: list[ModelCall] = []
        self._lock = threading.Lock()
        self.model = model.clone()
        self.model.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, key, self._wrapper)

    def _wrapper(self, executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        x = args[0] if args else kwargs.get("x")
        to = _find_transformer_options(args, kwargs)
        sig = _floats(to.get("sigmas"))
        ts = args[1] if len(args) > 1 else kwargs.get("timesteps", kwargs.get("timestep"))
        call = ModelCall(
            sigma=sig[0] if sig else float("nan"),
            sigmas=sig,
            timestep=_floats(ts),
            batch=int(x.shape[0]) if isinstance(x, torch.Tensor) else -1,
            cond_or_uncond=list(to.get("cond_or_uncond", [])),
            innermost=executor.idx == len(executor.wrappers) - 1,
            output=out.detach().clone() if (self.keep_outputs and isinstance(out, torch.Tensor)) else None,
        )
        with self._lock:
            self.calls.append(call)
        return out

    @property
    def count(self) -> int:
        return len(self.calls)

    def __len__(self) -> int:
        return len(self.calls)

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()

    @property
    def sigmas(self) -> list[float]:
        return [c.sigma for c in self.calls]

    @property
    def batch_sizes(self) -> list[int]:
        return [c.batch for c in self.calls]

    @property
    def all_innermost(self) -> bool:
        return all(c.innermost for c in self.calls)

    def __repr__(self) -> str:
        return f"DiffusionModelCallCounter(count={self.count}, batch_sizes={self.batch_sizes})"


@dataclass
class Evaluation:
    """One sampler evaluation (``CFGGuider.predict_noise``) seen by :class:`PredictNoiseRecorder`."""

    sigma: float  # timestep arg [0] (the sigma; a Heun corrector runs at sigma[i+1])
    batch: int  # x.shape[0] (latent batch)
    sample_sigmas: torch.Tensor | None  # model_options["transformer_options"]["sample_sigmas"] (CPU copy)
    output: torch.Tensor | None = None  # CFG-combined denoised x0 (keep_outputs=True)

    def step_index(self) -> int | None:
        """Index of the nearest entry of ``sample_sigmas`` (a Heun corrector maps to i+1)."""
        if self.sample_sigmas is None or self.sample_sigmas.numel() == 0:
            return None
        return int(torch.argmin((self.sample_sigmas - self.sigma).abs()))


class PredictNoiseRecorder:
    """Records every sampler evaluation via a PREDICT_NOISE wrapper (on a clone: ``.model``).

    The wrapped call is ``predict_noise(x, timestep, model_options, seed)``;
    ``sample_sigmas`` lives in ``args[2]["transformer_options"]`` (the
    guider's own ``model_options`` lack it). The return value is the
    CFG-combined denoised x0.
    """

    KEY = "test_predict_noise_recorder"

    def __init__(self, model, *, key: str = KEY, keep_outputs: bool = False):
        self.key = key
        self.keep_outputs = keep_outputs
        self.evaluations: list[Evaluation] = []
        self.model = model.clone()
        self.model.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, key, self._wrapper)

    def _wrapper(self, executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        x, timestep = args[0], args[1]
        model_options = args[2] if len(args) > 2 else kwargs.get("model_options", {})
        ss = (model_options or {}).get("transformer_options", {}).get("sample_sigmas")
        self.evaluations.append(
            Evaluation(
                sigma=_floats(timestep)[0],
                batch=int(x.shape[0]),
                sample_sigmas=ss.detach().float().cpu().clone() if isinstance(ss, torch.Tensor) else None,
                output=out.detach().clone() if self.keep_outputs else None,
            )
        )
        return out

    @property
    def count(self) -> int:
        return len(self.evaluations)

    def __len__(self) -> int:
        return len(self.evaluations)

    def reset(self) -> None:
        self.evaluations.clear()

    @property
    def sigmas(self) -> list[float]:
        return [e.sigma for e in self.evaluations]

    def step_indices(self) -> list[int | None]:
        return [e.step_index() for e in self.evaluations]

    def __repr__(self) -> str:
        return f"PredictNoiseRecorder(count={self.count})"


# --------------------------------------------------------------------------
# Custom-node packs and node info
# --------------------------------------------------------------------------


def _run_coro(coro):
    """Run a coroutine to completion, also from inside a running event loop."""
    try:
        asyncio.get_running_loop()
        in_loop = True
    except RuntimeError:
        in_loop = False
    if not in_loop:
        return asyncio.run(coro)
    box: dict = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def _capture_root_logging(level=logging.DEBUG):
    root = logging.getLogger()
    handler = _ListHandler()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, old_level) if old_level else level)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


FAILURE_MARKERS = (
    "IMPORT FAILED",
    "Cannot import",
    "Error while calling comfy_entrypoint",
    "did not return a ComfyExtension",
    "did not return a list of nodes",
    "is not callable, skipping",
    "due to the lack of NODE_CLASS_MAPPINGS",
)


@dataclass
class CustomNodeLoad:
    """Result of :func:`load_custom_node_pack`."""

    path: Path
    success: bool  # load_custom_node's return value
    seconds: float
    log_lines: list[str]  # every log record's "LEVEL: message" + the import-times line
    stdout: str  # what the pack print()ed while loading
    records: list[logging.LogRecord] = field(repr=False, default_factory=list)
    nodes: dict[str, type] = field(default_factory=dict)  # node_id -> class registered by this load
    display_names: dict[str, str] = field(default_factory=dict)

    @property
    def failure_lines(self) -> list[str]:
        return [ln for ln in self.log_lines if any(m in ln for m in FAILURE_MARKERS)]

    @property
    def ok(self) -> bool:
        return self.success and not self.failure_lines

    def assert_ok(self) -> None:
        assert self.ok, f"custom node pack {self.path} failed to load:\n" + "\n".join(self.log_lines)


def load_custom_node_pack(
    path,
    *,
    as_name: str | None = None,
    ignore: set[str] | None = None,
    module_parent: str = "custom_nodes",
    level: int = logging.DEBUG,
) -> CustomNodeLoad:
    """Load a pack folder (or single .py) through ComfyUI's own ``nodes.load_custom_node``.

    ``load_custom_node(module_path, ignore=set(), module_parent="custom_nodes")``
    is ``async`` in 0.8.0; it is run to completion here. ``ignore`` defaults to
    the core node ids (plus comfy_extras ids once :func:`load_builtin_extra_nodes`
    ran), as ComfyUI does at startup. Root-logger output (level >= ``level``)
    and stdout are captured; ``log_lines`` also gets ComfyUI's import-times
    line (``"  0.1 seconds (IMPORT FAILED): <path>"`` on failure), so a test
    can assert that no "IMPORT FAILED"/"Cannot import" line appears
    (``result.assert_ok()``). Loading the same folder again re-executes it.

    ``as_name`` loads it through a symlink of that name (in a fresh temp dir),
    as if installed as ``custom_nodes/<as_name>``: ComfyUI derives
    ``RELATIVE_PYTHON_MODULE``/``python_module`` ("custom_nodes.<as_name>")
    and the module name from the path it is given. E.g.
    ``load_custom_node_pack(PROJECT_ROOT, as_name="comfy-meancache")``.
    """
    path = Path(path).resolve()
    if as_name is not None:
        link_dir = Path(tempfile.mkdtemp(prefix="comfyui-harness-pack-"))  # the module lives there until exit
        atexit.register(shutil.rmtree, link_dir, ignore_errors=True)
        (link_dir / as_name).symlink_to(path, target_is_directory=path.is_dir())
        path = link_dir / as_name
    if ignore is None:
        ignore = set(_CORE_NODE_IDS)
    before = dict(nodes.NODE_CLASS_MAPPINGS)
    out = _stdio.StringIO()
    with _capture_root_logging(level) as handler, contextlib.redirect_stdout(out):
        t0 = time.perf_counter()
        success = bool(_run_coro(nodes.load_custom_node(str(path), ignore, module_parent=module_parent)))
        seconds = time.perf_counter() - t0
    lines = [f"{r.levelname}: {r.getMessage()}" for r in handler.records]
    lines.append("{:6.1f} seconds{}: {}".format(seconds, "" if success else " (IMPORT FAILED)", path))
    added = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items() if before.get(k) is not v}
    names = {k: nodes.NODE_DISPLAY_NAME_MAPPINGS[k] for k in added if k in nodes.NODE_DISPLAY_NAME_MAPPINGS}
    return CustomNodeLoad(
        path=path,
        success=success,
        seconds=seconds,
        log_lines=lines,
        stdout=out.getvalue(),
        records=handler.records,
        nodes=added,
        display_names=names,
    )


def load_builtin_extra_nodes() -> list[str]:
    """Load ComfyUI's comfy_extras nodes (``nodes.init_builtin_extra_nodes``) once.

    Returns the extra files that failed to import (e.g. those needing
    torchaudio). Afterwards their node ids count as core ids for
    :func:`load_custom_node_pack`'s default ``ignore``.
    """
    if "_extras_failed" not in _STATE:
        _STATE["_extras_failed"] = list(_run_coro(nodes.init_builtin_extra_nodes()) or [])
        _CORE_NODE_IDS.update(nodes.NODE_CLASS_MAPPINGS)
    return _STATE["_extras_failed"]


def core_node_ids() -> set[str]:
    """Node ids a pack cannot take over (core, plus comfy_extras once loaded)."""
    return set(_CORE_NODE_IDS)


def _is_v3(cls) -> bool:
    from comfy_api.internal import _ComfyNodeInternal

    return isinstance(cls, type) and issubclass(cls, _ComfyNodeInternal)


def node_info(node, *, json_roundtrip: bool = True) -> dict:
    """The ``/object_info`` entry for a node (node id in NODE_CLASS_MAPPINGS, or the class).

    V3 classes: ``cls.GET_NODE_INFO_V1()``, which is what server.py serves.
    V1 classes: the main keys server.py builds (input, input_order, output,
    output_is_list, output_name, name, display_name, description,
    python_module, category, output_node). With ``json_roundtrip`` the dict
    goes through ``json.dumps``/``loads`` like the HTTP response does, so a
    value the frontend could not receive fails here.
    """
    if isinstance(node, str):
        node_id, cls = node, nodes.NODE_CLASS_MAPPINGS[node]
    else:
        cls = node
        node_id = cls.GET_SCHEMA().node_id if _is_v3(cls) else getattr(cls, "__name__", str(cls))
    if _is_v3(cls):
        info = cls.GET_NODE_INFO_V1()
    else:
        inputs = cls.INPUT_TYPES()
        outputs = cls.RETURN_TYPES
        info = {
            "input": inputs,
            "input_order": {k: list(v.keys()) for k, v in inputs.items()},
            "output": outputs,
            "output_is_list": getattr(cls, "OUTPUT_IS_LIST", [False] * len(outputs)),
            "output_name": getattr(cls, "RETURN_NAMES", outputs),
            "name": node_id,
            "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_id, node_id),
            "description": getattr(cls, "DESCRIPTION", ""),
            "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
            "category": getattr(cls, "CATEGORY", "sd"),
            "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
        }
    if json_roundtrip:
        info = json.loads(json.dumps(info))
    return info


def execute_node(node_cls, /, **inputs):
    """Run a node's function the way ComfyUI's executor does; returns what it returns.

    V3 (``io.ComfyNode``): ``execute`` on a locked shallow clone
    (``PREPARE_CLASS_CLONE`` + ``make_locked_method_func``), so setting class
    attributes raises as it does in ComfyUI; ``cls.hidden`` is an empty
    HiddenHolder. Returns the ``io.NodeOutput`` (``.result`` / ``[i]``).
    V1: ``getattr(cls(), cls.FUNCTION)(**inputs)``. Coroutines are awaited.
    """
    if _is_v3(node_cls):
        from comfy_api.internal import make_locked_method_func

        clone = node_cls.PREPARE_CLASS_CLONE(None)
        fn = make_locked_method_func(node_cls, "execute", clone)
    else:
        fn = getattr(node_cls(), node_cls.FUNCTION)
    result = fn(**inputs)
    if inspect.isawaitable(result):
        result = _run_coro(_await(result))
    return result


async def _await(awaitable):
    return await awaitable
