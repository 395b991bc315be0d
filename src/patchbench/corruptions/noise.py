"""Noise corruptions (Hendrycks & Dietterich, ICLR 2019, ImageNet-C definitions, Sec. 3 and
appendix; parameter tables from the authors' ``make_imagenet_c.py``).

All four act per pixel and per channel, so none needs rescaling with image size. Each function
takes a validated ``N×C×H×W`` float batch in ``[0, 1]``, an int severity 1–5 and a
``torch.Generator`` on the batch's device, and returns the unclamped corrupted batch (the
registry clamps). Inner-loop helpers: inputs are not validated;
:func:`patchbench.corruptions.corrupt` checks them once. Example::

    g = torch.Generator().manual_seed(0)
    y = gaussian_noise(x, 3, g)
"""
from __future__ import annotations

import torch
from torch import Tensor

#: std of additive N(0, c) noise in [0, 1] units.
GAUSSIAN_STD = (0.08, 0.12, 0.18, 0.26, 0.38)
#: photon counts per unit intensity: x' = Poisson(x·c) / c (fewer photons = more noise).
SHOT_PHOTONS = (60.0, 25.0, 12.0, 5.0, 3.0)
#: fraction of values replaced by salt (1) or pepper (0), half each (skimage ``s&p``).
IMPULSE_AMOUNT = (0.03, 0.06, 0.09, 0.17, 0.27)
#: std of multiplicative noise: x' = x + x·N(0, c).
SPECKLE_STD = (0.15, 0.2, 0.35, 0.45, 0.6)


def _normal(x: Tensor, g: torch.Generator) -> Tensor:
    return torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def gaussian_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Additive Gaussian noise, std ``GAUSSIAN_STD[severity-1]``."""
    return x + GAUSSIAN_STD[severity - 1] * _normal(x, g)


def shot_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Poisson (photon shot) noise with ``SHOT_PHOTONS[severity-1]`` photons per unit intensity."""
    c = SHOT_PHOTONS[severity - 1]
    return torch.poisson(x * c, generator=g) / c


def impulse_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Salt-and-pepper noise on a fraction ``IMPULSE_AMOUNT[severity-1]`` of the values."""
    u = torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype)
    salt = torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) < 0.5
    return torch.where(u < IMPULSE_AMOUNT[severity - 1], salt.to(x.dtype), x)


def speckle_noise(x: Tensor, severity: int, g: torch.Generator) -> Tensor:
    """Multiplicative Gaussian noise, std ``SPECKLE_STD[severity-1]``."""
    return x + x * SPECKLE_STD[severity - 1] * _normal(x, g)
