"""Weather corruptions: snow, fog, spatter (Hendrycks & Dietterich, ICLR 2019, ImageNet-C
definitions; parameter tables from the authors' ``make_imagenet_c.py``; spatter is one of their
four extra "validation" corruptions).

Frost is left out on purpose: ImageNet-C blends crops of six frost *photographs* shipped with
the benchmark, and no such texture images are available offline; a synthetic stand-in would not
be ImageNet-C frost.

Size scaling (lengths in px at 224², multiplied by ``s = sqrt(H·W)/224``):
- snow: the motion-blur radius and sigma; below 224² the flake layer is drawn at the 224²
  equivalent size and area-downsampled (flake size and coverage as in ImageNet-C);
- fog: the plasma fractal is drawn on a ``2^k`` map with ``2^k ≥ side·256/224`` (ImageNet-C draws
  256 and crops 224), so its coarsest octave spans the same fraction of the image;
- spatter: the liquid layer's smoothing sigma (with the field's std kept at its 224² value, see
  :func:`~patchbench.corruptions._filters.smoothed_noise`), the mud blur sigma, the water
  distance-to-edge cap (20 px) and its 3×3 box blurs.

Each function takes a validated ``N×C×H×W`` batch in ``[0, 1]``, an int severity 1–5 and a
``torch.Generator`` on the batch's device. They are inner-loop helpers: inputs are not
validated; :func:`patchbench.corruptions.corrupt` checks them once. Example::

    y = fog(x, 3, torch.Generator().manual_seed(0))
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._cv import box_sum, canny, chamfer_distance, equalize_hist, filter2d_u8
from ._filters import colour, gaussian_blur, motion_blur, side_scale, smoothed_noise, to_grey

#: (noise mean, noise std, flake zoom, threshold, motion radius, motion sigma, image blend).
SNOW = ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))
#: (fog strength, plasma wibble decay).
FOG = ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))
#: (liquid mean, liquid std, smoothing sigma, threshold, intensity / mud sigma, 0 = water 1 = mud).
SPATTER = ((0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
           (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1))
WATER_RGB = (175 / 255, 238 / 255, 238 / 255)   # pale turquoise, as in ImageNet-C
MUD_RGB = (63 / 255, 42 / 255, 20 / 255)        # brown, as in ImageNet-C
_EMBOSS = ((-2.0, -1.0, 0.0), (-1.0, 1.0, 1.0), (0.0, 1.0, 2.0))


def plasma_fractal(n: int, mapsize: int, decay: float, g: torch.Generator, device, dtype) -> Tensor:
    """``n`` diamond-square plasma fractals ``mapsize×mapsize`` in ``[0, 1]`` (ImageNet-C's
    ``plasma_fractal``, batched; the random term is ``wibble·U(-wibble, wibble)`` as there)."""
    m = torch.zeros(n, mapsize, mapsize, device=device, dtype=dtype)
    step, wibble = mapsize, 100.0

    def wibbled(a: Tensor) -> Tensor:
        u = torch.rand(a.shape, generator=g, device=device, dtype=dtype) * (2 * wibble) - wibble
        return a / 4 + wibble * u

    while step >= 2:
        h = step // 2
        corners = m[:, 0::step, 0::step]
        acc = corners + corners.roll(-1, 1)
        m[:, h::step, h::step] = wibbled(acc + acc.roll(-1, 2))            # squares
        dr, ul = m[:, h::step, h::step], m[:, 0::step, 0::step]
        m[:, 0::step, h::step] = wibbled(dr + dr.roll(1, 1) + ul + ul.roll(-1, 2))  # diamonds
        m[:, h::step, 0::step] = wibbled(dr + dr.roll(1, 2) + ul + ul.roll(-1, 1))
        step //= 2
        wibble /= decay
    m = m - m.amin((1, 2), keepdim=True)
    return m / m.amax((1, 2), keepdim=True).clamp_min(1e-12)


def fog(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Fog: add a plasma fractal of strength ``c``, then rescale by ``max/(max + c)``."""
    strength, decay = FOG[severity - 1]
    n, _, h, w = x.shape
    mapsize = 2 ** max(1, math.ceil(math.log2(max(h, w) * 256 / 224)))
    plasma = plasma_fractal(n, mapsize, decay, g, x.device, x.dtype)[:, None, :h, :w]
    vmax = x.amax((1, 2, 3), keepdim=True)
    return (x + strength * plasma) * vmax / (vmax + strength)


def _flake_layer(n: int, h: int, w: int, s: float, loc: float, scale: float, zoom: float,
                 thr: float, g: torch.Generator, ref: Tensor) -> Tensor:
    """Thresholded flake noise ``N×1×H×W``. On small images the non-linear steps (zoomed noise,
    threshold, clip) run on a finer grid (at most the 224²-equivalent one) on which a flake spans
    ≥ 2 cells as it does at 224², then the layer is area-downsampled: flake size and coverage
    match ImageNet-C's at any resolution. The (linear) motion blur comes after, at the image's size.

    The zoom is corner-aligned linear interpolation, as ``scipy.ndimage.zoom(order=1)`` in
    ImageNet-C's ``clipped_zoom``: its sample positions drift through all sub-pixel fractions,
    while half-pixel sampling would hit fixed fractions (0, 1/3, 2/3 at zoom 3; 1/4, 3/4 at
    zoom 2) and change the flake field's variance, hence the snow cover, by +12 % / −11 %."""
    up = max(1, math.ceil(min(1.0 / s, 2.0 / (zoom * s)) - 1e-9))   # integer supersampling
    hr, wr = h * up, w * up
    z = zoom * s * up
    hs, ws = math.ceil(hr / z), math.ceil(wr / z)
    flakes = torch.randn(n, 1, hs, ws, generator=g, device=ref.device, dtype=ref.dtype) * scale + loc
    big = F.interpolate(flakes, size=(max(hr, round(hs * z)), max(wr, round(ws * z))),
                        mode="bilinear", align_corners=True)
    top, left = (big.shape[-2] - hr) // 2, (big.shape[-1] - wr) // 2
    layer = big[..., top:top + hr, left:left + wr]
    layer = layer.masked_fill(layer < thr, 0.0).clamp_(0, 1)
    return layer if up == 1 else F.avg_pool2d(layer, up)


def snow(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Snow: thresholded, zoomed Gaussian noise (flakes), motion-blurred at an angle in
    [-135°, -45°] per image, added to a whitened image together with its 180° rotation."""
    loc, scale, zoom, thr, radius, sigma, blend = SNOW[severity - 1]
    n, _, h, w = x.shape
    s = side_scale(x)
    layer = _flake_layer(n, h, w, s, loc, scale, zoom, thr, g, x)
    angle = torch.rand(n, generator=g, device=x.device, dtype=x.dtype) * 90 - 135
    layer = motion_blur(layer, radius * s, sigma * s, angle)
    x = blend * x + (1 - blend) * torch.maximum(x, to_grey(x) * 1.5 + 0.5)
    return x + layer + layer.flip(-2, -1)


def _water(x: Tensor, liquid: Tensor, intensity: float, s: float) -> Tensor:
    """ImageNet-C's water spatter, step for step on the 8-bit liquid layer as there: Canny edges
    of the blobs, the chamfer distance to them truncated at 20 px, a box blur floored to 8 bits,
    histogram equalisation, the emboss filter and a second box blur in 8-bit arithmetic; the
    8-bit liquid times that map, scaled to a maximum of ``intensity``, tints the image pale
    turquoise. Distances are in px of a 224² image (``unit = s``) and the box side is
    ``round(3·s)``, so the 8-bit levels the equalisation sees are ImageNet-C's at any size; the
    edges and the emboss act per pixel, as there."""
    u8 = (liquid.clamp(0, 1) * 255).floor().float()        # (liquid * 255).astype(np.uint8)
    box = max(1, round(3 * s))
    area = float(box * box)
    dist = chamfer_distance(canny(u8), 20.0, unit=s)
    dist = (box_sum(dist.double(), box) * (1.0 / area)).float().floor()   # cv2.blur → uint8
    dist = equalize_hist(dist)
    dist = filter2d_u8(dist, torch.tensor(_EMBOSS, dtype=dist.dtype, device=dist.device))
    dist = (box_sum(dist, box) / area).round()              # cv2.blur on uint8 rounds
    m = u8 * dist
    m = m / m.amax((2, 3), keepdim=True).clamp_min(1.0) * intensity
    return x + m.to(x.dtype) * colour(WATER_RGB, x.shape[1], x)


def spatter(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Spatter: a thresholded smoothed-noise liquid layer; water (severities 1–3) brightens blob
    rims with a pale-turquoise tint, mud (4–5) occludes blob interiors with brown."""
    loc, scale, sigma, thr, inten, mud = SPATTER[severity - 1]
    n, _, h, w = x.shape
    s = side_scale(x)
    noise = torch.randn(n, 1, h, w, generator=g, device=x.device, dtype=x.dtype) * scale + loc
    liquid = smoothed_noise(noise, sigma, s, mean=loc)
    liquid = torch.where(liquid < thr, torch.zeros_like(liquid), liquid)
    if not mud:
        return _water(x, liquid, inten, s)
    m = gaussian_blur((liquid > thr).to(x.dtype), inten * s)
    m = torch.where(m < 0.8, torch.zeros_like(m), m)
    return x * (1 - m) + colour(MUD_RGB, x.shape[1], x) * m
