"""Image and latent quality metrics for the benchmark and the demo (per sample, torch only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 7  # the images are 16x16; the usual 11-pixel window would see little but border
SSIM_SIGMA = 1.5


def psnr(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per sample, images in [0, 1]; identical images give 100 dB."""
    mse = ((image.float() - reference.float()) ** 2).flatten(1).mean(1)
    return torch.where(mse > 0, -10 * torch.log10(mse.clamp_min(1e-10)), torch.full_like(mse, 100.0))


def ssim(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Structural similarity per sample (Gaussian window, constants of Wang et al. 2004), images in [0, 1]."""
    c1, c2 = 0.01**2, 0.03**2
    coords = torch.arange(SSIM_WINDOW, dtype=torch.float32) - SSIM_WINDOW // 2
    g = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    channels = image.shape[1]
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=channels)

    x, y = image.float(), reference.float()
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def relative_l2(latent: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``|a - b| / |b|`` per sample."""
    return (latent.float() - reference.float()).flatten(1).norm(dim=1) / reference.float().flatten(1).norm(dim=1)
