"""``photo-unet``: a small conv UNet on 32x32 RGB crops of bundled photos.

Why this one: the zoo's convolutional, larger-resolution member. Its
velocity field comes from local ResBlocks with FiLM conditioning and skip
connections across scales instead of global attention, and its data are
natural-photo textures (three colour photos) instead of digit strokes.

Data: scikit-learn's ``china.jpg`` and ``flower.jpg`` and matplotlib's
``grace_hopper.jpg``, each downscaled 4x (so a crop holds a recognisable
part of the scene) and cut into 32x32 crops at stride 3, plus their mirror
images; class = source photo (0 china, 1 flower, 2 grace hopper, 3 = null).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import decode
from .common import SigmaClassEmbed, ZooConfig, crops, sample_data_file

__all__ = ["PhotoUNetConfig", "PhotoUNet", "load_photo_crops", "decode"]

DOWNSCALE = 4
CROP_STRIDE = 3


@dataclass(frozen=True)
class PhotoUNetConfig(ZooConfig):
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 3
    channels: tuple[int, ...] = (16, 32, 64)  # per resolution level: 32, 16, 8 px
    emb_dim: int = 64
    groups: int = 8


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the second norm is FiLM-modulated by the
    (sigma, class) vector, the second conv starts at zero (block = skip)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout, affine=False)
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * cout))
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class PhotoUNet(nn.Module):
    """Three-level UNet: one ResBlock per level on the way down and up, a
    stride-2 conv to go down, nearest upsampling + conv to go up, and the
    encoder's feature map concatenated into the decoder at each level."""

    def __init__(self, cfg: PhotoUNetConfig = PhotoUNetConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        ch, e, g = cfg.channels, cfg.emb_dim, cfg.groups
        self.embed = SigmaClassEmbed(e, cfg.num_classes)
        self.stem = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down = nn.ModuleList(ResBlock(ci, co, e, g) for ci, co in zip((ch[0],) + ch[:-1], ch))
        self.pool = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for c in ch[:-1])
        self.mid = ResBlock(ch[-1], ch[-1], e, g)
        # Decoder level i sees its own input plus the encoder's skip at level i.
        ins = [ch[-1] + ch[-1]] + [ch[i + 1] + ch[i] for i in reversed(range(len(ch) - 1))]
        outs = list(reversed(ch))
        self.up = nn.ModuleList(ResBlock(ci, co, e, g) for ci, co in zip(ins, outs))
        self.unpool = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for c in reversed(ch[1:]))
        self.norm_out = nn.GroupNorm(g, ch[0])
        self.out = nn.Conv2d(ch[0], cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        e = self.embed(sigma, labels)
        h = self.stem(x.to(self.stem.weight.dtype))
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, e)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)
        h = self.mid(h, e)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), e)
            if i < len(self.unpool):
                h = self.unpool[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.norm_out(h)))


def load_photo_crops() -> tuple[Tensor, Tensor]:
    """Crops [N, 3, 32, 32] in [-1, 1] and source-photo labels, from image
    files installed with scikit-learn and matplotlib."""
    from matplotlib.image import imread  # training/test-time only
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images) + [imread(sample_data_file("grace_hopper.jpg"))]
    xs, ys = [], []
    for label, photo in enumerate(photos):
        img = torch.tensor(photo[..., :3], dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
        img = F.avg_pool2d(img, DOWNSCALE)[0] * 2 - 1
        c = crops(img, PhotoUNetConfig.image_size, CROP_STRIDE)
        c = torch.cat([c, c.flip(-1)])
        xs.append(c)
        ys.append(torch.full((len(c),), label, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)
