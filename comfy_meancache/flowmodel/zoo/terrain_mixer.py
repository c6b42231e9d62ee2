"""``terrain-latent``: an MLP-Mixer on 4-channel 8x8 "latents" of elevation maps.

Why this one: the zoo's latent-like member. Like an image VAE latent it is
several channels at reduced resolution (4 x 8 x 8 for a 16x16 map, so the
channels are correlated), and the network mixes positions with fixed-size
MLPs over the token axis instead of attention or convolution, so its
velocity field has yet another inductive bias.

Data: matplotlib's bundled digital elevation maps ``topobathy.npz`` (coast
and sea floor) and ``jacksboro_fault_dem.npz`` (a fault zone), 16x16 patches
(stride 2 and 8), each min-max normalised to [-1, 1], in the 8 symmetries
of the square, then pixel-unshuffled 2x2 into [4, 8, 8]. Class = source map
x roughness: 0/1 topobathy smooth/rough, 2/3 jacksboro smooth/rough, split
at each map's median mean absolute gradient of the normalised patch;
4 = null. ``decode`` pixel-shuffles back to the 16x16 map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import decode as _decode_map
from ..model import modulate
from .common import SigmaClassEmbed, ZooConfig, crops, sample_data_file, to_unit_range

__all__ = ["TerrainMixerConfig", "TerrainMixer", "load_terrain_latents", "decode"]

PATCH = 16
MAP_STRIDES = {"topobathy.npz": 2, "jacksboro_fault_dem.npz": 8}  # ~equal patch counts per map


@dataclass(frozen=True)
class TerrainMixerConfig(ZooConfig):
    image_size: int = 8
    in_channels: int = 4
    num_classes: int = 4
    patch_size: int = 2  # a token is a 2x2 latent patch: 16 tokens of 16 values
    dim: int = 96
    depth: int = 6
    token_hidden: int = 64
    channel_ratio: float = 2.0


class MixerBlock(nn.Module):
    """Token-mixing MLP (across the positions) then channel-mixing MLP,
    each pre-norm with adaLN-Zero shift/scale/gate from the conditioning."""

    def __init__(self, tokens: int, dim: int, token_hidden: int, channel_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, token_hidden), nn.GELU(), nn.Linear(token_hidden, tokens))
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, channel_hidden), nn.GELU(), nn.Linear(channel_hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[-1].weight)
        nn.init.zeros_(self.ada[-1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        h = modulate(self.norm1(x), sh1, sc1)
        x = x + g1[:, None] * self.token_mlp(h.transpose(1, 2)).transpose(1, 2)
        return x + g2[:, None] * self.channel_mlp(modulate(self.norm2(x), sh2, sc2))


class TerrainMixer(nn.Module):
    """Each 2x2 patch of the latent is a token (16 values -> ``dim``); a
    learned position table, ``depth`` mixer blocks, a zero-initialised linear
    head back to the patch's 16 values."""

    def __init__(self, cfg: TerrainMixerConfig = TerrainMixerConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        p, d = cfg.patch_size, cfg.dim
        tokens = (cfg.image_size // p) ** 2
        self.embed = SigmaClassEmbed(d, cfg.num_classes)
        self.token_in = nn.Linear(cfg.in_channels * p * p, d)
        self.pos = nn.Parameter(torch.randn(1, tokens, d) * 0.02)
        hidden = int(d * cfg.channel_ratio)
        self.blocks = nn.ModuleList(MixerBlock(tokens, d, cfg.token_hidden, hidden) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.out = nn.Linear(d, cfg.in_channels * p * p)
        for layer in (self.ada_out[-1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        b, ch, hh, ww = x.shape
        p = self.cfg.patch_size
        c = self.embed(sigma, labels)
        tokens = F.pixel_unshuffle(x.to(self.pos.dtype), p).flatten(2).transpose(1, 2)
        h = self.token_in(tokens) + self.pos
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        h = self.out(modulate(self.norm_out(h), shift, scale))
        return F.pixel_shuffle(h.transpose(1, 2).reshape(b, ch * p * p, hh // p, ww // p), p)


def _square_symmetries(x: Tensor) -> Tensor:
    """The 8 rotations/reflections of square patches [N, C, S, S] (terrain has no up)."""
    rots = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return torch.cat(rots + [r.flip(-1) for r in rots])


def load_terrain_latents() -> tuple[Tensor, Tensor]:
    """Latents [N, 4, 8, 8] in [-1, 1] and (map, roughness) labels, from the
    elevation files installed with matplotlib."""
    xs, ys = [], []
    for m, (name, stride) in enumerate(MAP_STRIDES.items()):
        with np.load(sample_data_file(name)) as f:
            elev = f["topo" if "topo" in f.files else "elevation"].astype(np.float32)
        p = to_unit_range(crops(torch.from_numpy(elev)[None], PATCH, stride))
        grad = (p.diff(dim=-1).abs().mean((1, 2, 3)) + p.diff(dim=-2).abs().mean((1, 2, 3))) / 2
        rough = (grad > grad.median()).long()
        p = _square_symmetries(p)
        xs.append(F.pixel_unshuffle(p, 2))
        ys.append((2 * m + rough).repeat(8))
    return torch.cat(xs), torch.cat(ys)


def decode(latent: Tensor) -> Tensor:
    """[B, 4, 8, 8] latent -> the [B, 1, 16, 16] elevation map in [0, 1]."""
    return _decode_map(F.pixel_shuffle(latent.float(), 2))
