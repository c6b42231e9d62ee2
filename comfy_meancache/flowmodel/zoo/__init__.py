"""A zoo of small trained flow models for scoring step caching leave-one-out.

Why: a caching default fitted to one model can look good on that model only.
These models differ from the digits DiT and from each other in architecture
AND data, so a default can be fitted on all but one and scored on the one it
never saw. All share the digits model's conventions (rectified flow,
``x_sigma = sigma*eps + (1-sigma)*x0``, the net predicts ``v = eps - x0``,
label dropout 0.1 to the null label ``num_classes`` for CFG, shift-3 sigma
mix, EMA weights stored as fp16 safetensors with config and training record
in the metadata) and its inference wrapper, so a loaded model works wherever
:func:`~comfy_meancache.flowmodel.load_embedded_model`'s does, plus a
``decode(latent)`` to [0, 1] images for PSNR/SSIM.

Usage::

    from comfy_meancache.core.euler import sample_euler
    from comfy_meancache.core.sigmas import flow_sigmas

    model = load_zoo_model("photo-unet")                 # fp32, CPU, cached
    labels = torch.arange(model.num_classes)             # the null label is model.null_label
    sigmas = flow_sigmas(50, shift=3.0, scheduler="simple")
    noise = sample_noise(len(labels), seed=0, shape=model.latent_shape)
    x0, _ = sample_euler(lambda x, s: model.velocity(x, s, labels, cfg=4.0), noise * sigmas[0], sigmas)
    images = model.decode(x0)                            # [3, 3, 32, 32] in [0, 1]

Members (each module's docstring says why its architecture and data). Trained
from the repository root with ``python -m comfy_meancache.flowmodel.zoo.train
--model NAME --out comfy_meancache/flowmodel/zoo/NAME.safetensors``, seed 0,
torch 2.13.0+cpu, one thread on the shared 2-core dev machine; wall time
includes data loading and the final EMA evaluation (on <= 2048 samples).
Losses are the mean training MSE to ``eps - x0`` over the last 200 steps; they
are not comparable across data sets.

* ``digits-dit``: DiT, adaLN-Zero, patch 4, dim 128, depth 4. scikit-learn
  digits upscaled to 16x16; latent [1, 16, 16]; 10 classes. 1,296,273 params,
  2.6 MB. 2400 steps x 128 on 2 threads, 510 s; loss 0.1447. The shipped
  embedded model, loaded by its own loader, unchanged.
* ``photo-unet``: conv UNet, channels 16/32/64 at 32/16/8 px, FiLM ResBlocks,
  skip concatenation. 32x32 crops of china.jpg, flower.jpg (scikit-learn) and
  grace_hopper.jpg (matplotlib), 4x downscaled, mirrored; latent [3, 32, 32];
  3 classes (photo). 424,979 params, 0.86 MB. 800 steps x 32, lr 2e-3, 295 s;
  loss 0.2116.
* ``terrain-latent``: MLP-Mixer on 2x2-patch tokens (16 tokens), adaLN-Zero,
  dim 96, depth 6. 16x16 patches of matplotlib's topobathy and
  jacksboro_fault_dem elevation maps, min-max normalised, 8 symmetries,
  pixel-unshuffled to [4, 8, 8]; 4 classes (map x roughness). 613,360 params,
  1.23 MB. 3000 steps x 64, 241 s; loss 0.3233.
* ``mri-uvit``: U-ViT: in-context sigma and class tokens (no adaLN), long
  skips, patch 3 (64 tokens), dim 64, depth 6. 24x24 crops of matplotlib's
  sagittal MRI slice s1045 (4x downscaled to 64x64, tissue only, mirrored);
  latent [1, 24, 24]; 3 classes (vertical third). 293,385 params, 0.60 MB.
  2400 steps x 32, 375 s (another job shared the CPU); loss 0.2748.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import decode as decode_digits
from .. import load_embedded_model, training_info
from ..model import EmbeddedFlowModel, sample_noise
from . import mri_vit, photo_unet, terrain_mixer
from .common import ZooConfig

__all__ = [
    "ZOO_MODELS",
    "ARCHS",
    "ZooArch",
    "ZooModel",
    "load_zoo_model",
    "load_zoo_weights",
    "read_zoo_file",
    "sample_noise",
]

ZOO_DIR: Path = Path(__file__).parent


@dataclass(frozen=True)
class ZooArch:
    """What training and loading need to know about one trained zoo member."""

    name: str
    config_cls: type[ZooConfig]
    net_cls: type[nn.Module]
    load_data: Callable[[], tuple[Tensor, Tensor]]  # package files only; training/tests
    decode: Callable[[Tensor], Tensor]

    @property
    def weights_path(self) -> Path:
        return ZOO_DIR / f"{self.name}.safetensors"


ARCHS: dict[str, ZooArch] = {
    a.name: a
    for a in (
        ZooArch(
            "photo-unet",
            photo_unet.PhotoUNetConfig,
            photo_unet.PhotoUNet,
            photo_unet.load_photo_crops,
            photo_unet.decode,
        ),
        ZooArch(
            "terrain-latent",
            terrain_mixer.TerrainMixerConfig,
            terrain_mixer.TerrainMixer,
            terrain_mixer.load_terrain_latents,
            terrain_mixer.decode,
        ),
        ZooArch("mri-uvit", mri_vit.MriViTConfig, mri_vit.MriViT, mri_vit.load_mri_crops, mri_vit.decode),
    )
}


class ZooModel(EmbeddedFlowModel):
    """:class:`EmbeddedFlowModel` (same ``velocity``/``denoised``/
    ``latent_shape``/``num_classes``/``null_label``) plus its zoo name, its
    decoder and the training record read from its weights file."""

    def __init__(
        self,
        net: nn.Module,
        name: str,
        decoder: Callable[[Tensor], Tensor],
        training: dict,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(net, device=device, dtype=dtype)
        self.name = name
        self.training = training
        self._decoder = decoder

    def decode(self, latent: Tensor) -> Tensor:
        """Latent -> images in [0, 1], float32 [B, C, H, W]."""
        return self._decoder(latent)


def read_zoo_file(path: Path) -> tuple[dict, dict[str, Tensor], dict]:
    """(config dict, fp16 state dict, training record) of a zoo weights file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if "config" not in meta:
        raise ValueError(f"{path} has no 'config' metadata; not a zoo model file")
    return json.loads(meta["config"]), state, json.loads(meta.get("training", "{}"))


def load_zoo_weights(name: str, path: Path | str | None = None) -> ZooModel:
    """Uncached load of a trained zoo architecture, from its shipped file or
    from ``path`` (a file written by ``zoo.train``)."""
    arch = ARCHS[name]
    config, state, training = read_zoo_file(Path(path) if path is not None else arch.weights_path)
    net = arch.net_cls(arch.config_cls.from_dict(config))
    net.load_state_dict({k: v.float() for k, v in state.items()})  # fp16 on disk, fp32 inference
    return ZooModel(net, arch.name, arch.decode, training)


def _load_digits() -> ZooModel:
    # The shipped digits model, unchanged; wrapped only for name/decode/training.
    return ZooModel(load_embedded_model().net, "digits-dit", decode_digits, training_info())


#: Zoo name -> loader (no arguments, fp32, CPU, no network).
ZOO_MODELS: dict[str, Callable[[], ZooModel]] = {
    "digits-dit": _load_digits,
    **{name: partial(load_zoo_weights, name) for name in ARCHS},
}


@lru_cache(maxsize=8)
def load_zoo_model(name: str) -> ZooModel:
    """Load a zoo member by name (cached: treat it as read-only)."""
    if name not in ZOO_MODELS:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO_MODELS)}")
    return ZOO_MODELS[name]()
