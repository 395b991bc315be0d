"""Name → corruption registry and the one public entry point :func:`corrupt`.

Hendrycks & Dietterich, ICLR 2019, ImageNet-C definitions: the 15 benchmark corruptions in the
paper's order (frost left out, see :mod:`patchbench.corruptions.weather`), then their four extra
corruptions (speckle noise, Gaussian blur, spatter, saturate), grouped into the paper's families.
"""
from __future__ import annotations

from numbers import Integral
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from .._validation import check_images, make_generator
from . import blur, digital, noise, weather

CorruptionFn = Callable[[Tensor, int, torch.Generator], Tensor]

_FUNCS: Dict[str, CorruptionFn] = {
    "gaussian_noise": noise.gaussian_noise, "shot_noise": noise.shot_noise,
    "impulse_noise": noise.impulse_noise, "defocus_blur": blur.defocus_blur,
    "glass_blur": blur.glass_blur, "motion_blur": blur.motion_blur, "zoom_blur": blur.zoom_blur,
    "snow": weather.snow, "fog": weather.fog, "brightness": digital.brightness,
    "contrast": digital.contrast, "elastic_transform": digital.elastic_transform,
    "pixelate": digital.pixelate, "jpeg_compression": digital.jpeg_compression,
    # the paper's extra (held-out) corruptions
    "speckle_noise": noise.speckle_noise, "gaussian_blur": blur.gaussian_blur,
    "spatter": weather.spatter, "saturate": digital.saturate,
}

#: every corruption name, ImageNet-C's benchmark order first, then the extra four.
CORRUPTIONS: Tuple[str, ...] = tuple(_FUNCS)

#: the paper's four families (brightness is "weather" in ImageNet-C).
FAMILIES: Dict[str, Tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"),
    "weather": ("snow", "fog", "brightness", "spatter"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression", "saturate"),
}

#: corruptions that draw random numbers (the others ignore the generator).
RANDOM: Tuple[str, ...] = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
                           "glass_blur", "motion_blur", "snow", "fog", "spatter",
                           "elastic_transform")

MAX_SEVERITY = 5


def _resolve(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"corruption name: expected a string, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key not in _FUNCS:
        raise LookupError(f"unknown corruption {name!r}; expected one of: {', '.join(CORRUPTIONS)}")
    return key


def _check_severity(severity) -> int:
    if isinstance(severity, bool) or not isinstance(severity, Integral):
        raise ValueError(f"severity: expected an int in 0..{MAX_SEVERITY}, got {severity!r} "
                         f"({type(severity).__name__})")
    if not 0 <= int(severity) <= MAX_SEVERITY:
        raise ValueError(f"severity: expected an int in 0..{MAX_SEVERITY}, got {int(severity)}")
    return int(severity)


def _generator(generator, device: torch.device) -> torch.Generator:
    if generator is not None and not isinstance(generator, (torch.Generator, Integral)):
        raise TypeError(f"generator: expected None, an int seed or a torch.Generator, got "
                        f"{type(generator).__name__}")
    g = make_generator(generator, device)
    if torch.device(g.device).type != device.type:
        raise ValueError(f"generator: lives on {g.device} but the images are on {device}; pass a "
                         f"generator created with torch.Generator(device='{device.type}') or an int seed")
    return g


def corrupt(x: Tensor, name: str, severity: int,
            generator: Optional[Union[int, torch.Generator]] = None) -> Tensor:
    """Apply one ImageNet-C common corruption (Hendrycks & Dietterich, ICLR 2019).

    Threat model: not an adversary — natural, input-independent image degradations at five
    severities, used to measure robustness beyond the clean test set (mCE-style evaluation).

    Args:
        x: images ``N×C×H×W`` (or one ``C×H×W``), float in ``[0, 1]``, ``C`` = 1 or 3, any size;
            224² is where ImageNet-C's constants hold, other sizes are rescaled (module docstrings).
        name: one of :data:`CORRUPTIONS` (``-`` and ``_`` are interchangeable).
        severity: int 0–5; 0 returns an unchanged copy.
        generator: ``torch.Generator`` on ``x``'s device, an int seed, or ``None`` (seed 0).
            The same seed gives the same output.

    Returns:
        the corrupted images, clamped to ``[0, 1]``, with ``x``'s shape, dtype and device.

    Raises:
        LookupError: unknown name. ValueError: severity not an int in 0–5, bad image batch, or
        a generator on another device. TypeError: non-tensor / non-float images.

    Example::

        x_c = corrupt(x, "fog", 3, generator=0)
        acc = {(n, s): (model.predict(corrupt(x, n, s))[0] == y).float().mean()
               for n in CORRUPTIONS for s in range(1, 6)}
    """
    key = _resolve(name)
    sev = _check_severity(severity)
    single = isinstance(x, Tensor) and x.dim() == 3
    xb = check_images(x, "images", channels=(1, 3), allow_single=True)
    if sev == 0:
        return x.clone()
    g = _generator(generator, xb.device)
    work = xb if xb.dtype in (torch.float32, torch.float64) else xb.float()
    out = _FUNCS[key](work, sev, g).clamp(0, 1).to(x.dtype)
    return out[0] if single else out


def get(name: str) -> Callable[..., Tensor]:
    """The corruption ``name`` as a function ``f(x, severity, generator=None)`` (see :func:`corrupt`).

    Example::

        fog = get("fog"); y = fog(x, 2, generator=1)
    """
    key = _resolve(name)

    def apply(x: Tensor, severity: int, generator=None) -> Tensor:
        return corrupt(x, key, severity, generator)

    apply.__name__ = key
    apply.__doc__ = _FUNCS[key].__doc__
    return apply


def family(name: str) -> str:
    """The ImageNet-C family (``noise``, ``blur``, ``weather``, ``digital``) of a corruption."""
    key = _resolve(name)
    return next(f for f, members in FAMILIES.items() if key in members)
