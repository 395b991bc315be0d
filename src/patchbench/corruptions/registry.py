"""Name → corruption registry and the one public entry point :func:`corrupt`.

Hendrycks & Dietterich, ICLR 2019, ImageNet-C definitions: the 15 benchmark corruptions in the
paper's order (frost left out, see :mod:`patchbench.corruptions.weather`), then their four extra
corruptions (speckle noise, Gaussian blur, spatter, saturate), grouped into the paper's families.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from .._registry import normalize_name, unknown_name_error
from .._validation import check_images, check_int, make_generator
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


_FOLDED: Dict[str, str] = {normalize_name(k): k for k in _FUNCS}


def _resolve(name) -> str:
    """The canonical corruption name ``name`` folds to (:func:`patchbench._registry.normalize_name`:
    case, ``-``, ``_`` and inner spaces do not matter, so ``"Gaussian-Noise"`` and
    ``" gaussian noise "`` are ``"gaussian_noise"``)."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a corruption name (str), got {type(name).__name__}; "
                        f"one of: {', '.join(CORRUPTIONS)}")
    key = normalize_name(name)
    if key == "frost":
        raise LookupError(f"name: {name!r} is not included (ImageNet-C's frost blends the "
                          f"benchmark's frost photographs, which are not available offline); "
                          f"expected one of: {', '.join(CORRUPTIONS)}")
    if key not in _FOLDED:
        raise unknown_name_error(name, CORRUPTIONS, "corruption", "name", known="expected one of")
    return _FOLDED[key]


def _check_severity(severity) -> int:
    return check_int(severity, "severity", minimum=0, maximum=MAX_SEVERITY)


def _generator(generator, device: torch.device) -> torch.Generator:
    g = make_generator(generator, device, "generator")     # seeds go through check_seed
    gdev = torch.device(g.device)
    if gdev.type != device.type or (device.type == "cuda" and gdev.index is not None
                                    and device.index is not None and gdev.index != device.index):
        raise ValueError(f"generator: lives on {gdev} but the images are on {device}; pass a "
                         f"generator created with torch.Generator(device='{device}') or an int seed")
    return g


def corrupt(x: Tensor, name: str, severity: int,
            generator: Optional[Union[int, torch.Generator]] = None) -> Tensor:
    """Apply one ImageNet-C common corruption (Hendrycks & Dietterich, ICLR 2019).

    Threat model: not an adversary — natural, input-independent image degradations at five
    severities, used to measure robustness beyond the clean test set (mCE-style evaluation).

    Args:
        x: images ``N×C×H×W`` (or one ``C×H×W``), float in ``[0, 1]``, ``C`` = 1 or 3, any size;
            224² is where ImageNet-C's constants hold, other sizes are rescaled (module docstrings).
        name: one of :data:`CORRUPTIONS` (case-insensitive; ``-``, ``_`` and spaces are
            interchangeable).
        severity: int 0–5; 0 returns an unchanged copy.
        generator: ``torch.Generator`` on ``x``'s device, an int seed in ``[0, 2**63-1]``, or
            ``None`` (seed 0). The same seed gives the same output.

    Returns:
        the corrupted images, clamped to ``[0, 1]``, with ``x``'s shape, dtype and device.

    Raises:
        LookupError: unknown name (the message lists the known ones). TypeError: a name that
        is not a string, a severity that is not an integer (``2.5``, ``"3"``, ``True``),
        non-tensor or non-float images, a seed that is not an int. ValueError: severity outside
        0–5, images that are not ``N×C×H×W`` / ``C×H×W`` with C = 1 or 3, empty, NaN/Inf or
        outside ``[0, 1]``, a negative or too large seed, a generator on another device.

    The per-corruption functions in :mod:`~patchbench.corruptions.noise`, ``blur``, ``weather``
    and ``digital`` are inner-loop helpers: they do not validate their inputs; this function
    (and :func:`get`) checks everything once.

    Example::

        x_c = corrupt(x, "fog", 3, generator=0)
        acc = {(n, s): (model.predict(corrupt(x, n, s))[0] == y).float().mean()
               for n in CORRUPTIONS for s in range(1, 6)}
    """
    key = _resolve(name)
    sev = _check_severity(severity)
    single = isinstance(x, Tensor) and x.dim() == 3
    xb = check_images(x, "x", channels=(1, 3), allow_single=True)
    g = _generator(generator, xb.device)
    if sev == 0:
        return x.clone()
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
