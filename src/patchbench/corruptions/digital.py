"""Digital corruptions: brightness, contrast, saturate, elastic transform, pixelate, JPEG
(Hendrycks & Dietterich, ICLR 2019, ImageNet-C definitions; parameter tables from the authors'
``make_imagenet_c.py``; saturate is one of their extra "validation" corruptions. ImageNet-C files
brightness under "weather"; the registry keeps that family).

Size scaling (``s = sqrt(H·W)/224``): elastic transform's affine jitter, displacement amplitude and
smoothing sigma are px at 224² and are multiplied by ``s`` (the displacement field keeps its 224²
statistics, see :func:`~patchbench.corruptions._filters.smoothed_noise`); pixelate's factor is a
fraction of the side already; brightness, contrast, saturate and JPEG act per pixel or per 8×8
block and are used unchanged.

Greyscale (``C = 1``): brightness adds to the value (V of HSV is the grey level), contrast as for
RGB, saturate is the identity (a grey image has no saturation to change), JPEG encodes a one-channel
(``L``) JPEG. Every function takes a validated ``N×C×H×W`` batch in ``[0, 1]``, an int severity
1–5 and a ``torch.Generator`` on the batch's device; they are inner-loop helpers: inputs are not
validated, :func:`patchbench.corruptions.corrupt` checks them once. Example::

    y = contrast(x, 2, torch.Generator().manual_seed(0))
"""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ._filters import side_scale, smoothed_noise

#: added to HSV value.
BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)
#: factor on the deviation from the per-channel mean.
CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
#: (factor, offset) on HSV saturation: 1–2 desaturate, 3–5 oversaturate (ImageNet-C's order).
SATURATE = ((0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2))
#: JPEG quality (libjpeg scaling of the standard's Annex K quantisation tables).
JPEG_QUALITY = (25, 18, 15, 10, 7)
#: side fraction of the low-resolution image.
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)
#: (displacement amplitude alpha, smoothing sigma, affine jitter) in px at 224²; ImageNet-C's
#: constants are written as multiples of 244 (their comment: a typo for 224 that they kept).
ELASTIC = ((244 * 2, 244 * 0.7, 244 * 0.1), (244 * 2, 244 * 0.08, 244 * 0.2),
           (244 * 0.05, 244 * 0.01, 244 * 0.02), (244 * 0.07, 244 * 0.01, 244 * 0.02),
           (244 * 0.12, 244 * 0.01, 244 * 0.02))


def _value_chroma(x: Tensor):
    """HSV value ``v = max_c x``, ``min_c x`` and the hue weights ``k_c = (v − x_c)/(v − min)``
    (for grey pixels, hue 0 = red as in skimage: ``k = (0, 1, 1)``)."""
    v = x.amax(1, keepdim=True)
    mn = x.amin(1, keepdim=True)
    spread = v - mn
    red = torch.tensor([0.0, 1.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.where(spread > 0, (v - x) / spread.clamp_min(1e-12), red)
    return v, mn, k


def brightness(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Raise HSV value by ``c`` (clipped at 1) keeping hue and saturation: ``x·v'/v``."""
    c = BRIGHTNESS[severity - 1]
    if x.shape[1] == 1:
        return x + c
    v = x.amax(1, keepdim=True)
    v2 = (v + c).clamp(max=1.0)
    return torch.where(v > 0, x * (v2 / v.clamp_min(1e-12)), v2.expand_as(x))


def contrast(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Shrink every channel towards its per-image mean by the factor ``c``."""
    mean = x.mean((2, 3), keepdim=True)
    return (x - mean) * CONTRAST[severity - 1] + mean


def saturate(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """HSV saturation ``s' = clip(s·a + b, 0, 1)`` keeping hue and value; identity on greyscale."""
    if x.shape[1] == 1:
        return x.clone()
    a, b = SATURATE[severity - 1]
    v, mn, k = _value_chroma(x)
    sat = torch.where(v > 0, (v - mn) / v.clamp_min(1e-12), torch.zeros_like(v))
    sat2 = (sat * a + b).clamp(0, 1)
    return v * (1 - sat2 * k)


def _area_weights(n_in: int, n_out: int, ref: Tensor) -> Tensor:
    """``n_out×n_in`` exact-area box resampling matrix: output pixel ``i`` averages the input
    pixels weighted by how much of each lies under its footprint."""
    e_in = torch.arange(n_in + 1, dtype=torch.float64) / n_in
    e_out = torch.arange(n_out + 1, dtype=torch.float64) / n_out
    lo = torch.maximum(e_out[:-1, None], e_in[None, :-1])
    hi = torch.minimum(e_out[1:, None], e_in[None, 1:])
    w = (hi - lo).clamp(min=0)
    return (w / w.sum(1, keepdim=True)).to(device=ref.device, dtype=ref.dtype)


def pixelate(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Resize to ``int(side·c)`` and back with a box filter both ways (ImageNet-C uses Pillow's
    ``BOX``). Written as one ``H×H`` and one ``W×W`` matrix of exact-area box weights: equal to
    Pillow's result when the side ratio is an integer; at fractional ratios Pillow snaps every
    output pixel to whole source pixels, which on tiny images makes severity 1 (28 → 16 px)
    blockier than severity 2 (28 → 14 px), while area weights keep the severities ordered.

    Documented deviation: at 224² the ratio is fractional at severities 1, 3 and 4 (134, 89 and
    67 px), where the area weights blend the block borders and this is milder than ImageNet-C
    by about 1 dB PSNR on photos (0.7–1.3 dB; Pillow's box upsampling there equals nearest
    neighbour, as ``imagecorruptions`` writes it); severities 2 and 5 (112, 56 px) match it.
    ``tests/test_corruptions_reference.py`` holds the measured bound."""
    c = PIXELATE[severity - 1]
    h, w = x.shape[-2:]
    hs, ws = max(1, int(h * c)), max(1, int(w * c))
    mh = _area_weights(hs, h, x) @ _area_weights(h, hs, x)      # H×H
    mw = _area_weights(ws, w, x) @ _area_weights(w, ws, x)      # W×W
    return mh @ x @ mw.T


def jpeg_compression(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """A real JPEG round trip through Pillow/libjpeg at quality ``JPEG_QUALITY[severity-1]``,
    one image at a time on the CPU (8-bit, 4:2:0 chroma subsampling for RGB, as PIL does)."""
    q = JPEG_QUALITY[severity - 1]
    arr = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    arr = arr.permute(0, 2, 3, 1).numpy()
    out = np.empty_like(arr)
    for i, img in enumerate(arr):
        pil = Image.fromarray(img[..., 0], "L") if img.shape[-1] == 1 else Image.fromarray(img, "RGB")
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=q)
        buf.seek(0)
        dec = np.asarray(Image.open(buf))
        out[i] = dec[..., None] if dec.ndim == 2 else dec
    res = torch.from_numpy(out).permute(0, 3, 1, 2)
    return res.to(device=x.device, dtype=x.dtype) / 255.0


def _affine_inverse(n: int, h: int, w: int, jitter: float, g: torch.Generator, ref: Tensor) -> Tensor:
    """ImageNet-C's random affine (three points around the centre moved by ``U(-jitter, jitter)``,
    cv2.getAffineTransform), returned inverted: ``N×2×3`` mapping output (x, y) to source (x, y).
    The three points are ``min(H, W) // 3`` px from the centre, at least 1 px so that images of
    one or two pixels get a well-defined (near-identity) affine instead of a singular system."""
    cx, cy, sq = w // 2, h // 2, max(1, min(h, w) // 3)
    p1 = torch.tensor([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]],
                      dtype=ref.dtype, device=ref.device)
    p2 = p1 + (torch.rand(n, 3, 2, generator=g, device=ref.device, dtype=ref.dtype) * 2 - 1) * jitter
    src = torch.cat([p1, torch.ones(3, 1, dtype=ref.dtype, device=ref.device)], 1)   # 3×3
    fwd = torch.linalg.solve(src, p2).transpose(1, 2)                                # N×2×3: p1 → p2
    full = torch.cat([fwd, fwd.new_tensor([0.0, 0.0, 1.0]).expand(n, 1, 3)], 1)
    return torch.linalg.inv(full)[:, :2]


def elastic_transform(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Random affine warp, then an elastic warp by a Gaussian-smoothed uniform displacement
    field (Simard et al. 2003 as used by ImageNet-C); both are composed into one bilinear
    ``grid_sample`` with reflection at the borders.

    Note ImageNet-C's severities 1–2 are dominated by a large affine jitter (0.1 and 0.2 of 244
    px) with a nearly uniform elastic field, 3–5 by small local elastic distortion.
    """
    alpha_ref, sigma_ref, jitter_ref = ELASTIC[severity - 1]
    alpha, jitter = alpha_ref * side_scale(x), jitter_ref * side_scale(x)
    n, c, h, w = x.shape
    u = torch.rand(n, 2, h, w, generator=g, device=x.device, dtype=x.dtype) * 2 - 1
    disp = smoothed_noise(u, sigma_ref, side_scale(x), truncate=3.0, mode="reflect") * alpha
    inv = _affine_inverse(n, h, w, jitter, g, x)
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype),
                            torch.arange(w, device=x.device, dtype=x.dtype), indexing="ij")
    px = xs + disp[:, 0]                                                   # N×H×W, output coords + d
    py = ys + disp[:, 1]
    sx = inv[:, 0, 0, None, None] * px + inv[:, 0, 1, None, None] * py + inv[:, 0, 2, None, None]
    sy = inv[:, 1, 0, None, None] * px + inv[:, 1, 1, None, None] * py + inv[:, 1, 2, None, None]
    grid = torch.stack([2 * sx / max(w - 1, 1) - 1, 2 * sy / max(h - 1, 1) - 1], -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
