"""Blur corruptions (Hendrycks & Dietterich, ICLR 2019, ImageNet-C definitions; parameter tables
from the authors' ``make_imagenet_c.py``, motion blur as re-implemented without ImageMagick by
the ``imagecorruptions`` package).

Size scaling: every length below is in pixels of a 224×224 image and is multiplied by
``s = sqrt(H·W)/224`` (:func:`~patchbench.corruptions._filters.side_scale`): Gaussian sigmas,
the defocus disk radius and its anti-alias sigma, glass blur's sigma and maximal pixel
displacement, the motion-blur radius and sigma. Zoom factors are relative and need no scaling;
iteration counts are counts and are kept.

Each function takes a validated ``N×C×H×W`` batch in ``[0, 1]``, an int severity 1–5 and a
``torch.Generator`` on the batch's device. They are inner-loop helpers: inputs are not
validated; :func:`patchbench.corruptions.corrupt` checks them once. Example::

    y = motion_blur(x, 4, torch.Generator().manual_seed(0))
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ._filters import centre_zoom, conv2d_same, disk_kernel, gaussian_blur as _gauss
from ._filters import motion_blur as _motion, side_scale

#: (disk radius, anti-alias sigma) in px at 224².
DEFOCUS = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))
#: (Gaussian sigma, maximal displacement in px, iterations) at 224².
GLASS = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))
#: (kernel radius, Gaussian sigma) in px at 224²; the angle is uniform in [-45°, 45°] per image.
MOTION = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))
#: zoom factors averaged with the original (numpy.arange exactly as ImageNet-C builds them).
ZOOMS = tuple(tuple(float(z) for z in np.arange(1, stop, step))
              for stop, step in ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)))
#: Gaussian sigma in px at 224².
GAUSSIAN_SIGMA = (1, 2, 3, 4, 6)


def defocus_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Convolution with an anti-aliased disk (a defocused lens' circle of confusion)."""
    radius, alias = DEFOCUS[severity - 1]
    s = side_scale(x)
    return conv2d_same(x, disk_kernel(radius * s, alias * s, x), mode="reflect")


def _glass_reach(s: float, delta: int):
    """(reach D, move probability p) whose jump has ``s²`` times the second moment of ImageNet-C's
    uniform jump in ``[-delta, delta-1]`` per axis (``E j² = (2D²+1)/6``); ``(delta, 1)`` at 224²."""
    target = s * s * (2 * delta * delta + 1) / 6
    reach = 1
    while (2 * reach * reach + 1) / 6 < target * (1 - 1e-9):
        reach += 1
    return reach, min(1.0, target / ((2 * reach * reach + 1) / 6))


def glass_shuffle_sources(dy: Tensor, dx: Tensor, h: int, w: int, reach: int) -> Tensor:
    """Flat source index of every pixel after one ImageNet-C glass-blur pass, ``N×(H·W)``.

    ImageNet-C visits ``(r, c)`` for ``r = H-D … D+1`` and, within a row, ``c = W-D … D+1``
    (descending), and sets ``x[r, c] = x[r+dy, c+dx]`` (its tuple "swap" assigns through numpy
    views, so for RGB images it copies). A value can therefore be carried on by later visits.
    The pass is resolved exactly without a loop over pixels: a visit whose source was visited
    earlier in the pass (a larger flat index in the visited region) takes that visit's result,
    any other takes the source's value from before the pass; the chains are followed by pointer
    doubling (``ceil(log2(H·W))`` gathers).

    ``dy``, ``dx``: ``N×(H-2D)×(W-2D)`` integer offsets of the visited pixels (rows ``D+1…H-D``).
    Inner-loop helper: inputs are not validated.
    """
    n = dy.shape[0]
    dev = dy.device
    rows = torch.arange(reach + 1, h - reach + 1, device=dev).view(1, -1, 1)
    cols = torch.arange(reach + 1, w - reach + 1, device=dev).view(1, 1, -1)
    tgt = (rows * w + cols).expand(n, -1, -1).reshape(n, -1)             # visited positions
    sr, sc = rows + dy, cols + dx
    src = (sr * w + sc).reshape(n, -1)
    inside = ((sr > reach) & (sr <= h - reach) & (sc > reach) & (sc <= w - reach)).reshape(n, -1)
    chained = inside & (src > tgt)                                        # visited before tgt
    ident = torch.arange(h * w, device=dev).expand(n, -1)
    nxt = ident.clone().scatter_(1, tgt, torch.where(chained, src, tgt))  # pointer, roots self
    base = ident.clone().scatter_(1, tgt, torch.where(chained, tgt, src))  # root's source
    for _ in range(max(1, math.ceil(math.log2(h * w)))):
        nxt = nxt.gather(1, nxt)
    return base.gather(1, nxt)


def glass_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Frosted glass: blur, then ``iterations`` passes of ImageNet-C's local pixel shuffle, then
    blur again.

    A pass visits the pixels one at a time, bottom-right to top-left, rows and columns
    ``D+1 … side-D``, and gives each the value of the pixel at an offset drawn per axis
    uniformly from the integers in ``[-D, D-1]`` (numpy's ``randint(-D, D)``: the upper bound
    is exclusive). The reference's tuple "swap" writes through numpy views, so for RGB images it
    is a copy, and a value can be carried on by later visits; that is what ImageNet-C's images
    contain, and it is what is done here for every channel count. The sequential pass is
    computed exactly, for the whole batch at once (:func:`glass_shuffle_sources`).

    Size scaling: at 224² ``D`` is ImageNet-C's ``delta`` and every visited pixel moves; on
    other sizes ``D`` is the smallest reach, and each visit moves with the probability, that
    give ``s²`` times the second moment of the 224² jump, so the displacement scales with the
    side instead of vanishing on small images. The 8-bit rounding of the blurred image before
    the shuffle is not reproduced (images stay float).
    """
    sigma, delta, iterations = GLASS[severity - 1]
    s = side_scale(x)
    n, c, h, w = x.shape
    y = _gauss(x, sigma * s)
    reach, p_move = _glass_reach(s, delta)
    hr, wr = h - 2 * reach, w - 2 * reach
    if hr <= 0 or wr <= 0:   # no pixel is visited (the reference's loops are empty too)
        return _gauss(y, sigma * s)
    idx = None
    for _ in range(iterations):
        dy, dx = torch.randint(-reach, reach, (2, n, hr, wr), generator=g, device=x.device)
        if p_move < 1.0:
            stay = torch.rand(n, hr, wr, generator=g, device=x.device) >= p_move
            dy, dx = dy.masked_fill(stay, 0), dx.masked_fill(stay, 0)
        src = glass_shuffle_sources(dy, dx, h, w, reach)
        idx = src if idx is None else idx.gather(1, src)
    y = torch.gather(y.reshape(n, c, h * w), 2, idx.view(n, 1, h * w).expand(n, c, h * w))
    return _gauss(y.view(n, c, h, w), sigma * s)


def motion_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Camera shake: a one-sided Gaussian line kernel at a random angle in [-45°, 45°] per image."""
    radius, sigma = MOTION[severity - 1]
    s = side_scale(x)
    angle = torch.rand(x.shape[0], generator=g, device=x.device, dtype=x.dtype) * 90 - 45
    return _motion(x, radius * s, sigma * s, angle)


def zoom_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Moving towards the camera: the mean of the image and its centre zooms by each factor in
    ``ZOOMS[severity-1]``. All zooms go through ``grid_sample`` stacked in chunks."""
    zooms = torch.tensor(ZOOMS[severity - 1], dtype=x.dtype, device=x.device)
    chunk = max(1, (1 << 24) // x.numel())  # keep the stacked batch under ~64 MB in float32
    acc = x.clone()
    for i in range(0, zooms.numel(), chunk):
        acc += centre_zoom(x, zooms[i:i + chunk]).sum(0)
    return acc / (zooms.numel() + 1)


def gaussian_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Isotropic Gaussian blur (skimage ``gaussian``, edge mode ``nearest``)."""
    return _gauss(x, GAUSSIAN_SIGMA[severity - 1] * side_scale(x))
