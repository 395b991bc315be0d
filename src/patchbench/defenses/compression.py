"""Input-transformation baselines: JPEG compression and local filters.

- JPEG: Guo et al., "Countering adversarial images using input transformations", ICLR 2018 (§3);
  PatchZero's (Xu et al., WACV 2023, §4) and ELGS's (§4, Fig. 9, Pillow JPEG) baseline.
- Median / Gaussian filters: the filtering baselines of ELGS §4 (Fig. 9) and Naseer et al. 2019.

JPEG is not differentiable: its backward pass is BPDA with the identity (Athalye et al. 2018, §4.1),
optionally replaced by a differentiable JPEG surrogate (``surrogate="differentiable"``).
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .._validation import check_choice, check_images, check_int, check_number, check_positive_int
from .base import Defense, bpda, register

# Gaussian kernels wider than this (radius in pixels) are refused: memory grows with the radius.
MAX_GAUSSIAN_RADIUS = 4096


def _check_quality(quality, name: str = "quality", maximum: int = 100) -> int:
    return check_int(quality, name, minimum=1, maximum=maximum)


def jpeg_roundtrip(x: Tensor, quality: int = 75) -> Tensor:
    """Encode and decode each image with Pillow's JPEG at ``quality`` (an int in 1–100; no autograd).

    ``x`` ``N×C×H×W`` float in [0, 1] with C ∈ {1, 3} → same shape, dtype and device. Images are
    quantised to 8 bits first, as any saved image would be.
    """
    x = check_images(x, "x", channels=(1, 3))
    return _jpeg_roundtrip(x, _check_quality(quality))


def _jpeg_roundtrip(x: Tensor, quality: int) -> Tensor:
    """:func:`jpeg_roundtrip` without the checks (``x`` and ``quality`` already validated)."""
    arr = (x.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty_like(arr)
    for i, img in enumerate(arr):   # PIL codes one image at a time
        pil = Image.fromarray(img[..., 0], "L") if img.shape[-1] == 1 else Image.fromarray(img, "RGB")
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        dec = np.asarray(Image.open(buf).convert(pil.mode))
        out[i] = dec[..., None] if dec.ndim == 2 else dec
    res = torch.from_numpy(out).to(x.device).permute(0, 3, 1, 2).to(x.dtype) / 255.0
    return res.contiguous()


# IJG / JPEG Annex K standard quantisation tables (luminance, chrominance).
_Q_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
           14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
           18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
           49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_Q_CHROMA = (17, 18, 24, 47) + (99,) * 4 + (18, 21, 26, 66) + (99,) * 4 + (24, 26, 56) + (99,) * 5 \
    + (47, 66) + (99,) * 6 + (99,) * 32


def _quant_table(table, quality: int, device, dtype) -> Tensor:
    """IJG quality scaling (libjpeg ``jpeg_quality_scaling``, used by Pillow)."""
    scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
    q = torch.tensor(table, dtype=torch.float64)
    q = torch.floor((q * scale + 50.0) / 100.0).clamp(1, 255)
    return q.view(8, 8).to(device=device, dtype=dtype)


def _dct_matrix(device, dtype) -> Tensor:
    """Orthonormal 8-point DCT-II matrix; JPEG's 2-D FDCT is ``D B Dᵀ`` (ITU T.81 §A.3.3)."""
    k = torch.arange(8, dtype=torch.float64)
    d = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * 0.5
    d[0] = d[0] / math.sqrt(2.0)
    return d.to(device=device, dtype=dtype)


def _jpeg_plane(p: Tensor, q: Tensor, d: Tensor) -> Tensor:
    """Level-shift, 8×8 DCT, quantise with the cubic rounding of Shin & Song (2017)
    ``⌊z⌉ + (z − ⌊z⌉)³``, dequantise, inverse DCT. ``p`` is ``N×1×H×W`` in [0, 255], H, W % 8 == 0."""
    n, _, h, w = p.shape
    b = (p - 128.0).reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    coef = d @ b @ d.T
    z = coef / q
    zr = torch.round(z).detach()
    z = zr + (z - zr) ** 3
    rec = d.T @ (z * q) @ d
    return rec.permute(0, 1, 3, 2, 4).reshape(n, 1, h, w) + 128.0


def differentiable_jpeg(x: Tensor, quality: int = 75) -> Tensor:
    """A differentiable JPEG approximation: JFIF YCbCr, 4:2:0 chroma subsampling (Pillow's default),
    8×8 DCT, IJG tables scaled by ``quality`` (an int in 1–100), cubic rounding (Shin & Song,
    "JPEG-resistant adversarial images", 2017), bilinear chroma upsampling.
    ``N×C×H×W`` float in [0, 1] (C ∈ {1, 3}) → same."""
    x = check_images(x, "x", channels=(1, 3))
    return _differentiable_jpeg(x, _check_quality(quality))


def _differentiable_jpeg(x: Tensor, quality: int) -> Tensor:
    """:func:`differentiable_jpeg` without the checks (``x`` and ``quality`` already validated)."""
    n, c, h, w = x.shape
    d = _dct_matrix(x.device, x.dtype)
    ph, pw = (-h) % 16, (-w) % 16
    v = F.pad(x * 255.0, (0, pw, 0, ph), mode="replicate")
    if c == 1:
        y = _jpeg_plane(v, _quant_table(_Q_LUMA, quality, x.device, x.dtype), d)
        return (y[..., :h, :w] / 255.0).clamp(0.0, 1.0)
    r, g, bl = v[:, 0:1], v[:, 1:2], v[:, 2:3]
    lum = 0.299 * r + 0.587 * g + 0.114 * bl
    cb = -0.168736 * r - 0.331264 * g + 0.5 * bl + 128.0
    cr = 0.5 * r - 0.418688 * g - 0.081312 * bl + 128.0
    qy = _quant_table(_Q_LUMA, quality, x.device, x.dtype)
    qc = _quant_table(_Q_CHROMA, quality, x.device, x.dtype)
    lum = _jpeg_plane(lum, qy, d)
    chroma = F.avg_pool2d(torch.cat([cb, cr], 0), 2)
    chroma = _jpeg_plane(chroma, qc, d)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    cb, cr = chroma[:n] - 128.0, chroma[n:] - 128.0
    rgb = torch.cat([lum + 1.402 * cr, lum - 0.344136 * cb - 0.714136 * cr, lum + 1.772 * cb], 1)
    return (rgb[..., :h, :w] / 255.0).clamp(0.0, 1.0)


@register("jpeg")
class JPEG(Defense):
    """JPEG compression as a pre-processing defense (Guo et al. 2018; PatchZero §4 baseline).

    Forward: a real Pillow JPEG encode/decode at ``quality``. Backward: the identity by default
    (``gradient = "bpda-identity"``); ``surrogate="differentiable"`` back-propagates through
    :func:`differentiable_jpeg` instead (``gradient = "bpda-surrogate"``, a closer h ≈ JPEG).

    Args:
        quality (int, default 75): JPEG quality 1–95 (Pillow's useful range; the functions
            :func:`jpeg_roundtrip` and :func:`differentiable_jpeg` take 1–100).
        surrogate (str, default "identity"): ``"identity"`` or ``"differentiable"``
            (``LookupError`` otherwise).

    Shapes: ``N×C×H×W`` (C = 1 or 3) in [0, 1] → same.

    Example::

        xd = JPEG(quality=75)(x_adv)
        target = Defended(model, JPEG())     # BPDA-identity adaptive target
    """

    gradient = "bpda-identity"

    def __init__(self, quality: int = 75, surrogate: str = "identity"):
        super().__init__()
        self.quality = _check_quality(quality, maximum=95)
        self.surrogate = check_choice(surrogate, "surrogate", ("identity", "differentiable"))
        self.gradient = "bpda-identity" if surrogate == "identity" else "bpda-surrogate"

    def purify(self, x: Tensor) -> Tensor:
        if x.shape[1] not in (1, 3):
            raise ValueError(f"JPEG input x: expected 1 or 3 channels, got {x.shape[1]} "
                             f"(shape {tuple(x.shape)})")
        y = _jpeg_roundtrip(x, self.quality)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return y
        approx = x if self.surrogate == "identity" else _differentiable_jpeg(x, self.quality)
        return bpda(y, approx)

    def extra_repr(self) -> str:
        return f"quality={self.quality}, surrogate={self.surrogate!r}"


@register("median-filter")
class MedianFilter(Defense):
    """Per-channel ``k×k`` median filter (ELGS §4 baseline "MF"), reflect padding.

    Vectorised with ``unfold``; differentiable with the exact subgradient of the median (the
    gradient flows to the selected neighbour), so ``gradient = "exact"``.

    Args:
        k (int, default 3): odd window size (>= 1); it must be smaller than twice the image side.

    Example::

        xd = MedianFilter(3)(x_adv)
    """

    gradient = "exact"

    def __init__(self, k: int = 3):
        super().__init__()
        self.k = check_positive_int(k, "k")
        if self.k % 2 == 0:
            raise ValueError(f"MedianFilter: k must be odd, got {k}")

    def purify(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        r = self.k // 2
        if r == 0:
            return x
        if r >= min(h, w):
            raise ValueError(f"MedianFilter: k={self.k} too large for images of size {h}×{w}")
        xp = F.pad(x.reshape(n * c, 1, h, w), (r, r, r, r), mode="reflect")
        cols = F.unfold(xp, self.k)                      # (N·C)×k²×(H·W)
        return cols.median(dim=1).values.reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return f"k={self.k}"


@register("gaussian-filter")
class GaussianFilter(Defense):
    """Per-channel Gaussian blur (ELGS §4 baseline "GF"), separable, reflect padding; exact gradient.

    Args:
        sigma (float, default 1.0): standard deviation in pixels, finite and > 0.
        truncate (float, default 4.0): kernel radius = ceil(truncate·sigma) (scipy's default);
            finite and > 0, with a radius of at most ``MAX_GAUSSIAN_RADIUS`` (4096) px.

    Example::

        xd = GaussianFilter(sigma=1.0)(x_adv)
    """

    gradient = "exact"

    def __init__(self, sigma: float = 1.0, truncate: float = 4.0):
        super().__init__()
        self.sigma = check_number(sigma, "sigma", low=0.0, low_inclusive=False)
        self.truncate = check_number(truncate, "truncate", low=0.0, low_inclusive=False)
        radius = math.ceil(self.truncate * self.sigma)
        if radius > MAX_GAUSSIAN_RADIUS:
            raise ValueError(f"GaussianFilter: sigma·truncate = {self.sigma:g}·{self.truncate:g} gives "
                             f"a kernel radius of {radius} px; at most {MAX_GAUSSIAN_RADIUS} is "
                             f"supported (lower sigma or truncate)")

    def kernel(self, device=None, dtype=torch.float32) -> Tensor:
        """The normalised 1-D kernel of length ``2·ceil(truncate·sigma) + 1``."""
        r = max(1, int(math.ceil(self.truncate * self.sigma)))
        t = torch.arange(-r, r + 1, device=device, dtype=dtype)
        # below 1e-30 the kernel is already the unit impulse; the floor keeps 0/σ from being 0/0
        k = torch.exp(-0.5 * (t / max(self.sigma, 1e-30)) ** 2)
        return k / k.sum()

    def purify(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        k = self.kernel(x.device, x.dtype)
        r = k.numel() // 2
        mode = "reflect" if r < min(h, w) else "replicate"
        y = x.reshape(n * c, 1, h, w)
        y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
        y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
        return y.reshape(n, c, h, w).clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"
