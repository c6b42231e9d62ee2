"""``mri-uvit``: a U-ViT-style transformer on 24x24 crops of a brain MRI slice.

Why this one: the zoo's second transformer, but conditioned the other way
from the digits DiT: (sigma, class) enter as two extra *tokens* that every
patch attends to (in-context conditioning, no adaLN), blocks use ordinary
affine LayerNorms, and long skip connections join the first half of the
blocks to the second (U-ViT). Patch size 3 (64 tokens) and depth 6 differ
from the digits model's 4 and 4, and the data are smooth grey-level anatomy
instead of strokes.

Data: matplotlib's bundled sagittal MRI slice ``s1045.ima.gz`` (256x256
big-endian uint16), 4x average-pooled to 64x64, 24x24 crops at stride 1
that contain some tissue (mean above 5 % of the slice maximum), mirrored
left-right; each scaled by the slice maximum to [-1, 1]. Class = vertical
third of the slice the crop centre lies in (0 top: cortex, 1 middle,
2 bottom: face and neck), 3 = null.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import decode
from ..model import sincos_pos_embed_2d
from .common import SigmaClassEmbed, ZooConfig, crops, sample_data_file

__all__ = ["MriViTConfig", "MriViT", "load_mri_crops", "decode"]

DOWNSCALE = 4  # 64x64: a crop spans a third of the head, so its class shows
CROP_STRIDE = 1
TISSUE_MIN = 0.05


@dataclass(frozen=True)
class MriViTConfig(ZooConfig):
    image_size: int = 24
    in_channels: int = 1
    num_classes: int = 3
    patch_size: int = 3
    dim: int = 64
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 3.0


class Block(nn.Module):
    """Plain pre-norm transformer block (no modulation: the conditioning
    tokens reach the patches only through attention)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class MriViT(nn.Module):
    """Linear patchify, [sigma token, class token, patches] through
    ``depth`` blocks with U-ViT long skips (block i feeds block depth-1-i
    through a linear fuse), linear unpatchify of the patch tokens."""

    def __init__(self, cfg: MriViTConfig = MriViTConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        p, d = cfg.patch_size, cfg.dim
        self.grid = cfg.image_size // p
        self.embed = SigmaClassEmbed(d, cfg.num_classes)
        self.sigma_token = nn.Linear(d, d)  # splits the shared vector into two tokens
        self.class_token = nn.Linear(d, d)
        self.patch_in = nn.Linear(cfg.in_channels * p * p, d)
        self.register_buffer("pos", sincos_pos_embed_2d(d, self.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.fuse = nn.ModuleList(nn.Linear(2 * d, d) for _ in range(cfg.depth // 2))
        self.norm_out = nn.LayerNorm(d)
        self.out = nn.Linear(d, cfg.in_channels * p * p)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        b, ch, hh, ww = x.shape
        p, g = self.cfg.patch_size, self.grid
        c = self.embed(sigma, labels)
        patches = F.pixel_unshuffle(x.to(self.pos.dtype), p).flatten(2).transpose(1, 2)  # [B, g*g, C*p*p]
        cond = [self.sigma_token(c)[:, None], self.class_token(c)[:, None]]
        h = torch.cat([*cond, self.patch_in(patches) + self.pos], dim=1)
        half = self.cfg.depth // 2
        skips = []
        for i, blk in enumerate(self.blocks):
            if i >= self.cfg.depth - half:
                h = self.fuse[self.cfg.depth - 1 - i](torch.cat([h, skips.pop()], dim=-1))
            h = blk(h)
            if i < half:
                skips.append(h)
        out = self.out(self.norm_out(h[:, 2:]))  # drop the two conditioning tokens
        return F.pixel_shuffle(out.transpose(1, 2).reshape(b, ch * p * p, g, g), p)


def load_mri_crops() -> tuple[Tensor, Tensor]:
    """Crops [N, 1, 24, 24] in [-1, 1] and vertical-band labels, from the
    MRI file installed with matplotlib."""
    with gzip.open(sample_data_file("s1045.ima.gz")) as f:
        raw = np.frombuffer(f.read(), dtype=">u2").reshape(256, 256).astype(np.float32)
    img = F.avg_pool2d(torch.from_numpy(raw)[None, None], DOWNSCALE)[0]
    img = img / img.max() * 2 - 1
    size = MriViTConfig.image_size
    c = crops(img, size, CROP_STRIDE)
    n_side = (img.shape[-1] - size) // CROP_STRIDE + 1
    centre_row = (torch.arange(len(c)) // n_side) * CROP_STRIDE + size // 2
    band = (centre_row * 3 // img.shape[-2]).long()
    keep = (c.mean((1, 2, 3)) + 1) / 2 > TISSUE_MIN
    c, band = c[keep], band[keep]
    return torch.cat([c, c.flip(-1)]), band.repeat(2)
