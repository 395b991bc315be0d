"""Batched torch building blocks shared by the corruptions: Gaussian / disk / motion blur,
centre zoom, greyscale and the size scale factor.

Everything works on ``N×C×H×W`` float tensors on the input's device. Spatial constants of
ImageNet-C are defined for 224×224 images (Hendrycks & Dietterich, ICLR 2019, ImageNet-C
definitions); :func:`side_scale` gives the factor that maps them to another image size.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: ImageNet-C renders every corruption on 224×224 crops; lengths are rescaled from this side.
REFERENCE_SIDE = 224.0
#: ITU-R BT.601 luma weights, as used by OpenCV's RGB2GRAY in ImageNet-C's snow.
LUMA = (0.299, 0.587, 0.114)


def side_scale(x: Tensor) -> float:
    """``sqrt(H·W) / 224``: lengths defined on 224² images are multiplied by this factor."""
    return math.sqrt(x.shape[-2] * x.shape[-1]) / REFERENCE_SIDE


def to_grey(x: Tensor) -> Tensor:
    """``N×1×H×W`` luma (BT.601) of an RGB batch; a one-channel batch is returned as is."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def colour(rgb: Sequence[float], channels: int, ref: Tensor) -> Tensor:
    """A ``1×C×1×1`` colour on ``ref``'s device; for one channel its BT.601 luma."""
    if channels == 1:
        rgb = (sum(w * c for w, c in zip(LUMA, rgb)),)
    return torch.tensor(rgb, dtype=ref.dtype, device=ref.device).view(1, channels, 1, 1)


def _pad(x: Tensor, ph: int, pw: int, mode: str) -> Tensor:
    # torch's reflect padding needs pad < size; fall back to edge replication for tiny images.
    if mode == "reflect" and (ph >= x.shape[-2] or pw >= x.shape[-1]):
        mode = "replicate"
    return F.pad(x, (pw, pw, ph, ph), mode=mode)


def gaussian_kernel1d(sigma: float, truncate: float, ref: Tensor, max_radius: int | None = None) -> Tensor:
    """Normalised 1-D Gaussian of radius ``ceil(truncate·sigma)`` (optionally capped)."""
    radius = max(1, int(math.ceil(truncate * sigma)))
    if max_radius is not None:
        radius = max(1, min(radius, max_radius))
    t = torch.arange(-radius, radius + 1, dtype=ref.dtype, device=ref.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _depthwise(y: Tensor, kernel: Tensor) -> Tensor:
    """Every channel of a ``1×M×h×w`` tensor convolved with the same 2-D kernel (grouped conv;
    ~10× faster on CPU than a batch of one-channel convolutions)."""
    m = y.shape[1]
    return F.conv2d(y, kernel.expand(m, 1, *kernel.shape), groups=m)


def separable_conv(x: Tensor, k: Tensor, mode: str = "replicate") -> Tensor:
    """Convolve every channel of ``x`` with the same 1-D kernel along H then W."""
    n, c, h, w = x.shape
    r = k.numel() // 2
    y = x.reshape(1, n * c, h, w)
    y = _depthwise(_pad(y, r, 0, mode), k.view(-1, 1))
    y = _depthwise(_pad(y, 0, r, mode), k.view(1, -1))
    return y.reshape(n, c, h, w)


def gaussian_blur(x: Tensor, sigma: float, truncate: float = 4.0, mode: str = "replicate") -> Tensor:
    """skimage.filters.gaussian equivalent (default ``mode='nearest'``, ``truncate=4``)."""
    if sigma <= 1e-3:
        return x
    max_r = max(1, min(x.shape[-2], x.shape[-1]) - 1) if mode == "reflect" else None
    return separable_conv(x, gaussian_kernel1d(sigma, truncate, x, max_r), mode)


def conv2d_same(x: Tensor, kernel: Tensor, mode: str = "reflect") -> Tensor:
    """Convolve every channel with one odd ``k×k`` kernel, output the input's size."""
    n, c, h, w = x.shape
    r = kernel.shape[-1] // 2
    y = _pad(x.reshape(1, n * c, h, w), r, r, mode)
    return _depthwise(y, kernel).reshape(n, c, h, w)


def disk_kernel(radius: float, alias_sigma: float, ref: Tensor, supersample: int = 8) -> Tensor:
    """ImageNet-C's defocus kernel: a disk of ``radius`` px smoothed by a Gaussian of
    ``alias_sigma`` px. The disk is supersampled so sub-pixel radii (small images) give a
    fractional, monotone coverage instead of snapping to the centre pixel."""
    extent = int(math.ceil(radius + 3 * alias_sigma)) + 1
    s = supersample
    t = (torch.arange(-extent * s, (extent + 1) * s, dtype=ref.dtype, device=ref.device) + 0.5) / s - 0.5
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).to(ref.dtype)
    disk = F.avg_pool2d(disk[None, None], s)[0, 0]
    if disk.sum() == 0:
        disk[extent, extent] = 1.0
    if alias_sigma > 1e-3:
        disk = separable_conv(disk[None, None], gaussian_kernel1d(alias_sigma, 3.0, ref), "constant")[0, 0]
    return disk / disk.sum()


def motion_blur(x: Tensor, radius: float, sigma: float, angle_deg: Tensor) -> Tensor:
    """ImageMagick ``-motion-blur`` as re-implemented for ImageNet-C (imagecorruptions'
    ``_motion_blur``): a one-sided half-Gaussian line kernel of width ``2·radius+1`` along an
    angle per image, applied as a weighted sum of edge-clamped shifts (one gather per tap).

    ``angle_deg``: ``N`` angles in degrees on ``x``'s device.
    """
    n, c, h, w = x.shape
    width = 2 * int(math.ceil(radius)) + 1
    if sigma <= 1e-3 or width <= 1:
        return x
    taps = torch.arange(width, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (taps / sigma) ** 2)
    k = k / k.sum()
    keep = int((k > 1e-4).sum())  # later taps weigh nothing; skip their gathers
    k = k[:keep] / k[:keep].sum()
    a = torch.deg2rad(angle_deg.to(x.dtype))
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    flat = x.reshape(n, c, h * w)
    out = torch.zeros_like(flat)
    for i in range(keep):
        dy = torch.ceil(i * torch.sin(a) - 0.5).long().view(n, 1, 1)
        dx = torch.ceil(i * torch.cos(a) - 0.5).long().view(n, 1, 1)
        idx = ((rows + dy).clamp(0, h - 1) * w + (cols + dx).clamp(0, w - 1)).view(n, 1, h * w)
        out += k[i] * torch.gather(flat, 2, idx.expand(n, c, h * w))
    return out.view(n, c, h, w)


def centre_zoom(x: Tensor, zooms: Tensor) -> Tensor:
    """ImageNet-C's ``clipped_zoom`` for several factors at once: magnify the centre of every
    image by each factor in ``zooms`` (``Z``) and crop back to ``H×W`` (bilinear).

    Returns ``Z×N×C×H×W``.
    """
    n, c, h, w = x.shape
    z = zooms.to(device=x.device, dtype=x.dtype)
    theta = torch.zeros(z.numel(), 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0 / z
    theta[:, 1, 1] = 1.0 / z
    grid = F.affine_grid(theta, [z.numel(), c, h, w], align_corners=False)  # Z×H×W×2
    xs = x.unsqueeze(0).expand(z.numel(), n, c, h, w).reshape(z.numel(), n * c, h, w)
    out = F.grid_sample(xs, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(z.numel(), n, c, h, w)


def smoothed_noise(noise: Tensor, sigma_ref: float, scale: float, mean: float = 0.0,
                   truncate: float = 4.0, mode: str = "replicate") -> Tensor:
    """Gaussian-smoothed white noise with the statistics it has on a 224² image.

    ImageNet-C smooths per-pixel noise (mean ``mean``) with a Gaussian of ``sigma_ref`` px at
    224². Here the sigma is ``sigma_ref·scale`` px, and the fluctuation around ``mean`` is
    rescaled by ``‖k_ref‖₂ / ‖k‖₂`` (2-D kernel norms), so the field has the same correlation
    length relative to the image *and* the same standard deviation as at 224²: thresholds on it
    cover the same fraction of the image at any size.
    """
    sigma = sigma_ref * scale
    y = gaussian_blur(noise, sigma, truncate, mode)

    def norm2(sg: float) -> float:
        if sg <= 1e-3:
            return 1.0
        return float(gaussian_kernel1d(sg, truncate, noise).pow(2).sum())  # 1-D ‖k‖² = 2-D ‖k‖

    return mean + (y - mean) * (norm2(sigma_ref) / norm2(sigma))
