"""Embedded demo flow model: a tiny class-conditional DiT on 16x16 digits.

Why: benchmarking step-skipping caches needs a real learned velocity field
(curved trajectories, class structure, CFG) that anyone can run on a laptop
CPU with no downloads. The weights ship in ``weights.safetensors`` beside
this file (safetensors only; the architecture config lives in its metadata,
so it is written once, by the training script).

Usage::

    from comfy_meancache.core.euler import sample_euler
    from comfy_meancache.core.sigmas import flow_sigmas

    model = load_embedded_model()                         # fp32, CPU, cached
    labels = torch.arange(8)                              # digits 0..7
    sigmas = flow_sigmas(50, shift=3.0, scheduler="simple")
    noise = sample_noise(8, seed=0)                       # [8, 1, 16, 16]
    x0, _ = sample_euler(lambda x, s: model.velocity(x, s, labels, cfg=4.0), noise * sigmas[0], sigmas)
    images = decode(x0)                                   # [8, 1, 16, 16] in [0, 1]

Conventions match ComfyUI flow models: ``x_sigma = sigma*eps + (1-sigma)*x0``,
the net predicts ``v = eps - x0``, ``x0 = x - sigma*v``, Euler
``x_next = x + (sigma_next - sigma)*v``. Labels 0..9 are digits, 10 is the
null label used for classifier-free guidance.

Shipped weights: 1,296,273 parameters (patch 4, dim 128, depth 4, 4 heads),
EMA weights stored as fp16 (2.6 MB). Produced from the repository root by::

    python -m comfy_meancache.flowmodel.train --out comfy_meancache/flowmodel/weights.safetensors

seed 0, 2400 steps x batch 128, torch 2.13.0+cpu, 2 threads on the 2-core
dev machine: ``time`` reported real 8m33.6s (user 10m43s), while other jobs
shared the CPU for part of the run (~0.15-0.2 s/step when idle). Final
training loss 0.1447 (mean of the last 200 steps); EMA weights' loss on the
whole set at 8 fixed sigmas 0.1387. The same numbers are in the file's
``training`` metadata (:func:`training_info`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from .model import LATENT_SHAPE, EmbeddedFlowModel, FlowModelConfig, TinyDiT, sample_noise

__all__ = [
    "WEIGHTS_PATH",
    "LATENT_SHAPE",
    "NULL_LABEL",
    "EmbeddedFlowModel",
    "FlowModelConfig",
    "TinyDiT",
    "load_embedded_model",
    "decode",
    "sample_noise",
    "training_info",
]

WEIGHTS_PATH: Path = Path(__file__).with_name("weights.safetensors")
#: Label of the unconditional (CFG) pass.
NULL_LABEL: int = FlowModelConfig.num_classes


def _read_weights(path: Path) -> tuple[FlowModelConfig, dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if "config" not in meta:
        raise ValueError(f"{path} has no 'config' metadata; not an embedded flow model file")
    return FlowModelConfig.from_dict(json.loads(meta["config"])), state, meta


def training_info(path: Path | str = WEIGHTS_PATH) -> dict:
    """The training record stored in the weights' metadata (seed, steps, loss, wall time)."""
    return json.loads(_read_weights(Path(path))[2].get("training", "{}"))


@lru_cache(maxsize=8)
def _load_cached(path: str, device: str, dtype: torch.dtype) -> EmbeddedFlowModel:
    cfg, state, _ = _read_weights(Path(path))
    net = TinyDiT(cfg)
    # Stored as fp16 to keep the file small; upcast first so fp32 inference
    # really runs in fp32 (load_state_dict would copy into fp32 anyway).
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return EmbeddedFlowModel(net, device=device, dtype=dtype)


def load_embedded_model(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    path: Path | str | None = None,
) -> EmbeddedFlowModel:
    """Load the shipped model (no network; cached per path/device/dtype, so
    treat the returned object as read-only).

    ``dtype``: float32, bfloat16 or float16. On CPU the half types work (the
    velocity stays within ~2 % of fp32) but are slower than fp32 without
    native half-precision matmul; they exist to exercise half-precision paths.
    """
    p = str(Path(path) if path is not None else WEIGHTS_PATH)
    return _load_cached(p, str(torch.device(device)), dtype)


def decode(latent: Tensor) -> Tensor:
    """Latent -> image in [0, 1] (float32): the "VAE" here is just clamp + rescale."""
    return (latent.float().clamp(-1, 1) + 1) / 2
