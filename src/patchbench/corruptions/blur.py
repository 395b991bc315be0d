"""Blur corruptions (Hendrycks & Dietterich, ICLR 2019, ImageNet-C definitions; parameter tables
from the authors' ``make_imagenet_c.py``, motion blur as re-implemented without ImageMagick by
the ``imagecorruptions`` package).

Size scaling: every length below is in pixels of a 224×224 image and is multiplied by
``s = sqrt(H·W)/224`` (:func:`~patchbench.corruptions._filters.side_scale`): Gaussian sigmas,
the defocus disk radius and its anti-alias sigma, glass blur's sigma and maximal pixel
displacement, the motion-blur radius and sigma. Zoom factors are relative and need no scaling;
iteration counts are counts and are kept.

Each function takes a validated ``N×C×H×W`` batch in ``[0, 1]``, an int severity 1–5 and a
``torch.Generator`` on the batch's device. Example::

    y = motion_blur(x, 4, torch.Generator().manual_seed(0))
"""
from __future__ import annotations

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


def glass_blur(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Frosted glass: blur, then ``iterations`` rounds in which every pixel takes the value of a
    random neighbour at most ``delta`` px away, then blur again.

    ImageNet-C swaps pixels one at a time in a Python loop; here each round is one gather of
    independent random local displacements (same local shuffling, vectorised). Per axis a pixel
    moves by an integer uniform in ``[-D, D]`` with probability ``p``, where ``D`` is the smallest
    reach and ``p`` the probability that give the variance ``s²·delta(delta+1)/3`` of ImageNet-C's
    uniform jump in ``[-delta, delta]`` scaled by ``s²``: at 224² it is exactly that jump, on
    small images the displacement shrinks in proportion to the side instead of vanishing.
    """
    sigma, delta, iterations = GLASS[severity - 1]
    s = side_scale(x)
    n, c, h, w = x.shape
    y = _gauss(x, sigma * s)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    var = s * s * delta * (delta + 1) / 3
    reach = 1
    while reach * (reach + 1) / 3 < var:
        reach += 1
    p_move = min(1.0, var / (reach * (reach + 1) / 3))
    for _ in range(iterations):
        jump = torch.randint(-reach, reach + 1, (2, n, h, w), generator=g, device=x.device)
        moves = torch.rand(2, n, h, w, generator=g, device=x.device) < p_move
        dy, dx = jump * moves
        idx = (rows + dy).clamp(0, h - 1) * w + (cols + dx).clamp(0, w - 1)
        y = torch.gather(y.reshape(n, c, h * w), 2, idx.view(n, 1, h * w).expand(n, c, h * w))
        y = y.view(n, c, h, w)
    return _gauss(y, sigma * s)


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
