"""Pieces every zoo architecture shares: config (de)serialisation, the
(sigma, class) conditioning vector, and package-file data access.

Why shared: the zoo exists to vary architecture and data while keeping the
flow convention, the conditioning inputs and the storage format identical, so
that a step-caching default scored across the zoo sees only the differences
that matter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from torch import Tensor, nn

from ..model import timestep_embedding


@dataclass(frozen=True)
class ZooConfig:
    """Fields :class:`~comfy_meancache.flowmodel.model.EmbeddedFlowModel`
    reads from ``net.cfg``; architectures subclass it with their own."""

    image_size: int = 16
    in_channels: int = 1
    num_classes: int = 2  # label ``num_classes`` is the CFG null label

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ZooConfig:
        # JSON turns tuples into lists; frozen dataclasses want them hashable.
        fields = cls.__dataclass_fields__
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields})


class SigmaClassEmbed(nn.Module):
    """``MLP(sinusoid(sigma)) + embed(label)``: one vector per sample that
    drives each architecture's own conditioning (FiLM, adaLN or a token)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.dim = dim
        self.sigma_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.class_embed = nn.Embedding(num_classes + 1, dim)  # +1: null label
        nn.init.normal_(self.class_embed.weight, std=0.02)

    def forward(self, sigma: Tensor, labels: Tensor) -> Tensor:
        t = timestep_embedding(sigma, self.dim).to(self.class_embed.weight.dtype)
        return self.sigma_mlp(t) + self.class_embed(labels)


def sample_data_file(name: str) -> Path:
    """A file of matplotlib's bundled ``sample_data`` (installed with the
    package, never downloaded)."""
    import matplotlib  # training/test-time only

    return Path(matplotlib.get_data_path()) / "sample_data" / name


def to_unit_range(x: Tensor) -> Tensor:
    """Min-max per sample to [-1, 1] (the latent range decode expects)."""
    flat = x.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    scale = (hi - lo).clamp_min(1e-6)
    return ((flat - lo[:, None]) / scale[:, None] * 2 - 1).view_as(x)


def crops(image: Tensor, size: int, stride: int) -> Tensor:
    """All ``size`` x ``size`` crops of ``image`` [C, H, W] at ``stride``: [N, C, size, size]."""
    c = image.shape[0]
    p = image.unfold(1, size, stride).unfold(2, size, stride)  # [C, nh, nw, size, size]
    return p.permute(1, 2, 0, 3, 4).reshape(-1, c, size, size).contiguous()


__all__ = ["ZooConfig", "SigmaClassEmbed", "sample_data_file", "to_unit_range", "crops"]
