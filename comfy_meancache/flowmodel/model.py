"""A tiny class-conditional DiT that predicts rectified-flow velocity.

Why it exists: benchmarking step-skipping caches needs a *real* learned
velocity field (curved trajectories, class structure, CFG), but pulling a
multi-GB image model onto a laptop just to test a cache is impractical. This
~1.3 M parameter transformer, trained on scikit-learn's digits, runs on a CPU
in milliseconds per step and follows ComfyUI's flow conventions exactly:

* ``x_sigma = sigma * eps + (1 - sigma) * x0`` with ``sigma`` in [0, 1]
  (1 = pure noise);
* the network predicts velocity ``v = eps - x0``;
* denoised ``x0 = x - sigma * v``; Euler step ``x_next = x + (sigma_next - sigma) * v``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FlowModelConfig",
    "TinyDiT",
    "EmbeddedFlowModel",
    "sample_noise",
    "LATENT_SHAPE",
]

#: Shape of one "latent" (here simply a 16x16 grey image in [-1, 1]).
LATENT_SHAPE: tuple[int, int, int] = (1, 16, 16)


@dataclass(frozen=True)
class FlowModelConfig:
    """Architecture hyper-parameters; stored in the weights file's metadata
    so the loader never hard-codes them a second time."""

    image_size: int = 16
    in_channels: int = 1
    patch_size: int = 4
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10  # label ``num_classes`` is the CFG null label
    # Overlapping conv stem (kernel > patch) and a 3x3 conv head over a
    # ``head_channels``-wide unpatchified map: both let neighbouring tokens
    # share border pixels, removing the 4x4 block seams a pure linear
    # patchify/unpatchify leaves at this tiny resolution. Nearly free compute.
    stem_kernel: int = 8
    head_channels: int = 16

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FlowModelConfig:
        fields = cls.__dataclass_fields__
        return cls(**{k: type(getattr(cls(), k))(v) for k, v in d.items() if k in fields})


def timestep_embedding(sigma: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of ``sigma * 1000`` (ComfyUI/DiT scale), computed in
    fp32 so half-precision inference does not quantise the noise level."""
    t = sigma.float() * 1000.0
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_pos_embed_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sin/cos position table [grid*grid, dim]; fixed (not learned)
    so it needs no storage and cannot overfit the tiny data set."""
    assert dim % 4 == 0
    coords = torch.arange(grid, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))

    def emb(pos: Tensor) -> Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([emb(yy), emb(xx)], dim=1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: per-sample shift/scale [B, D] applied to tokens [B, N, D]."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation (DiT)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        # shift/scale/gate for attention and MLP, driven by (sigma, class).
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        b, n, d = x.shape
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        h = modulate(self.norm1(x), sh1, sc1)
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + g1[:, None] * self.proj(h)
        x = x + g2[:, None] * self.mlp(modulate(self.norm2(x), sh2, sc2))
        return x


class TinyDiT(nn.Module):
    """Patchify -> (sigma + class) conditioned DiT blocks -> unpatchify.

    ``forward(x, sigma, labels)`` returns the *raw* velocity for one label per
    sample; guidance is applied by :class:`EmbeddedFlowModel`.
    """

    def __init__(self, cfg: FlowModelConfig = FlowModelConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        p, d = cfg.patch_size, cfg.dim
        self.grid = cfg.image_size // p
        k = cfg.stem_kernel
        assert k >= p and (k - p) % 2 == 0, "stem kernel must be patch + even overlap"
        self.patch_embed = nn.Conv2d(cfg.in_channels, d, k, stride=p, padding=(k - p) // 2)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(d, self.grid)[None], persistent=False)
        self.sigma_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.class_embed = nn.Embedding(cfg.num_classes + 1, d)  # +1: null label
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        hc = cfg.head_channels
        self.out = nn.Linear(d, hc * p * p)
        self.head = nn.Conv2d(hc, cfg.in_channels, 3, padding=1)
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT recipe: xavier everywhere, zero the modulation and the output so
        # every block starts as identity and training is stable from step 0.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.class_embed.weight, std=0.02)
        for mlp in [self.sigma_mlp]:
            nn.init.normal_(mlp[0].weight, std=0.02)
            nn.init.normal_(mlp[2].weight, std=0.02)
        for blk in self.blocks:
            nn.init.zeros_(blk.ada[-1].weight)
            nn.init.zeros_(blk.ada[-1].bias)
        nn.init.zeros_(self.ada_out[-1].weight)
        nn.init.zeros_(self.ada_out[-1].bias)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def patchify(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> tokens [B, (H/p)*(W/p), dim] via the conv stem."""
        return self.patch_embed(x).flatten(2).transpose(1, 2)

    def unpatchify(self, x: Tensor) -> Tensor:
        """Tokens [B, N, hc*p*p] -> feature map [B, hc, H, W]."""
        b = x.shape[0]
        c, p, g = self.cfg.head_channels, self.cfg.patch_size, self.grid
        x = x.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, g * p, g * p)

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        dtype = self.patch_embed.weight.dtype
        t = timestep_embedding(sigma, self.cfg.dim).to(dtype)
        c = self.sigma_mlp(t) + self.class_embed(labels)
        h = self.patchify(x.to(dtype)) + self.pos_embed.to(dtype)
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.ada_out(c).chunk(2, dim=-1)
        h = self.out(modulate(self.norm_out(h), shift, scale))
        return self.head(self.unpatchify(h))


def sample_noise(batch: int, seed: int, shape: tuple[int, ...] = LATENT_SHAPE) -> Tensor:
    """Standard-normal noise ``[batch, *shape]`` in fp32 on CPU, reproducible
    per ``seed`` on any machine (a private CPU generator, global RNG untouched)."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn((batch, *shape), generator=g, dtype=torch.float32)


class EmbeddedFlowModel:
    """Inference wrapper: dtype/device handling and classifier-free guidance.

    The null (unconditional) label is ``num_classes`` (10). At ``cfg == 1``
    only the conditional pass runs, as ComfyUI does; otherwise cond and uncond
    are batched into a single forward.
    """

    def __init__(
        self,
        net: TinyDiT,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.net = net.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.dtype = dtype
        self.config = net.cfg
        self.latent_shape: tuple[int, int, int] = (
            net.cfg.in_channels,
            net.cfg.image_size,
            net.cfg.image_size,
        )
        self.num_classes: int = net.cfg.num_classes
        self.null_label: int = net.cfg.num_classes

    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def _sigma_vec(self, sigma: float | Tensor, batch: int) -> Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float32, device=self.device)
        if s.ndim == 0:
            s = s.expand(batch)
        return s.reshape(batch)

    @torch.no_grad()
    def velocity(
        self,
        x: Tensor,
        sigma: float | Tensor,
        labels: Tensor,
        cfg: float = 1.0,
    ) -> Tensor:
        """Guided velocity ``v_uncond + cfg * (v_cond - v_uncond)``.

        ``x``: [B, 1, 16, 16]; ``sigma``: scalar or [B]; ``labels``: [B] ints in
        0..10 (10 = unconditional). Returns a tensor with ``x``'s dtype/device.
        """
        b = x.shape[0]
        xin = x.to(device=self.device, dtype=self.dtype)
        s = self._sigma_vec(sigma, b)
        y = torch.as_tensor(labels, device=self.device).long().reshape(b)
        if cfg == 1.0:
            v = self.net(xin, s, y)
        else:
            null = torch.full_like(y, self.null_label)
            vc, vu = self.net(torch.cat([xin, xin]), torch.cat([s, s]), torch.cat([y, null])).chunk(2)
            # Guidance in fp32: the difference of two half-precision
            # predictions loses most of its bits otherwise.
            vu = vu.float()
            v = vu + cfg * (vc.float() - vu)
        return v.to(device=x.device, dtype=x.dtype)

    def denoised(self, x: Tensor, sigma: float | Tensor, labels: Tensor, cfg: float = 1.0) -> Tensor:
        """Predicted clean latent ``x0 = x - sigma * v`` (ComfyUI's output)."""
        v = self.velocity(x, sigma, labels, cfg)
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        s = s.reshape(-1, *([1] * (x.ndim - 1))) if s.ndim else s
        return x - s * v
