"""Patch shapes: binary masks inside a patch's bounding box, and bounding boxes sized to an area.

Every shape is defined on the normalised bounding box ``[-1, 1]²`` and a pixel belongs to the shape
when its *centre* lies inside it, so masks are exactly ``{0, 1}`` and scale with the box. The shapes are
those used in the patch literature: squares and rectangles (PatchZero, Xu et al. WACV 2023, Sec. 5.1:
"2% rectangular patches for ImageNet, 9% square patches for RESISC-45"), the diamond, octagon and
rectangle of its shape-transfer study (Sec. 5.4, Fig. 3), circles/ellipses (Brown et al. 2017), a
ring (annulus) and a border frame (the ring-shaped defensive patch of Wang et al. CVPR 2022).

Patch sizes follow PatchZero's convention that a patch's size is a fraction of the image *area*;
:func:`fit_shape` searches the discrete masks so that the mask's pixel count is within 2% of
``area·H·W`` (possible whenever the patch has more than a few dozen pixels).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .._validation import check_fraction, check_int, check_positive, check_positive_int

SHAPES = ("square", "rectangle", "circle", "ellipse", "diamond", "octagon", "ring", "border")

# Default band thickness, as a fraction of the half-extent of the bounding box.
_DEFAULT_RING_WIDTH = {"ring": 0.5, "border": 0.1}
# Shapes that are defined by h == w; asking for another aspect is a user error.
_ISOTROPIC = ("square", "circle")
AREA_TOLERANCE = 0.02


class ShapeFit(NamedTuple):
    """Bounding box ``(h, w)`` of a patch and the ``ring_width`` its mask needs (None if unused)."""

    h: int
    w: int
    ring_width: Optional[float]


def check_shape(shape) -> str:
    """Return ``shape`` lower-cased, or raise ``LookupError`` listing the known shapes."""
    if not isinstance(shape, str) or shape.lower() not in SHAPES:
        raise LookupError(f"unknown patch shape {shape!r}; available: {', '.join(SHAPES)}")
    return shape.lower()


def _check_ring_width(ring_width, shape: str) -> Optional[float]:
    if shape not in _DEFAULT_RING_WIDTH:
        return None
    if ring_width is None:
        return _DEFAULT_RING_WIDTH[shape]
    rw = check_fraction(ring_width, "ring_width", 0.0, 1.0, inclusive=True)
    if rw == 0.0:
        raise ValueError(f"ring_width: expected a value in (0, 1], got {ring_width!r}")
    return rw


def _mask_cpu(shape: str, h: int, w: int, ring_width: Optional[float]) -> Tensor:
    """The boolean mask on CPU, computed in float64 on pixel centres (deterministic everywhere)."""
    v = ((torch.arange(h, dtype=torch.float64) + 0.5) / h * 2 - 1).abs().view(h, 1)
    u = ((torch.arange(w, dtype=torch.float64) + 0.5) / w * 2 - 1).abs().view(1, w)
    eps = 1e-9
    if shape in ("square", "rectangle"):
        return torch.ones(h, w, dtype=torch.bool)
    r2 = u ** 2 + v ** 2
    if shape in ("circle", "ellipse"):
        return r2 <= 1 + eps
    if shape == "diamond":
        return u + v <= 1 + eps
    if shape == "octagon":
        # Regular octagon in the unit square: corners cut at |u|+|v| = sqrt(2) (side lengths equal).
        return (u + v <= math.sqrt(2) + eps).expand(h, w).clone()
    if shape == "ring":
        inner = 1.0 - ring_width
        return (r2 <= 1 + eps) & (r2 >= inner ** 2 - eps)
    # border: a frame of uniform pixel thickness t along the box's edge.
    t = max(1, int(round(ring_width * min(h, w) / 2)))
    rows = torch.arange(h).view(h, 1)
    cols = torch.arange(w).view(1, w)
    return (rows < t) | (rows >= h - t) | (cols < t) | (cols >= w - t)


@lru_cache(maxsize=512)
def _mask_cached(shape: str, h: int, w: int, ring_width: Optional[float]) -> Tensor:
    return _mask_cpu(shape, h, w, ring_width).float()


def shape_mask(shape: str, h: int, w: int, *, device=None,
               ring_width: Optional[float] = None) -> Tensor:
    """Binary mask of ``shape`` inside an ``h×w`` bounding box.

    Args:
        shape: one of :data:`SHAPES`.
        h, w: bounding-box height and width in pixels (>= 1).
        device: where the returned tensor lives (default CPU).
        ring_width: band thickness of "ring" and "border" as a fraction of the box's half-extent, in
            (0, 1]; default 0.5 for "ring" (inner radius = half the outer radius) and 0.1 for "border"
            (a frame of ``round(ring_width·min(h, w)/2)`` >= 1 pixels). Ignored by other shapes.

    Returns:
        ``h×w`` float32 tensor with values exactly 0 or 1.

    Example::
        >>> shape_mask("circle", 5, 5).sum()
        tensor(21.)
    """
    shape = check_shape(shape)
    h, w = check_positive_int(h, "shape_mask: h"), check_positive_int(w, "shape_mask: w")
    rw = _check_ring_width(ring_width, shape)
    return _mask_cached(shape, h, w, rw).to(device if device is not None else "cpu", copy=True)


def _fill_fraction(shape: str, ring_width: Optional[float]) -> float:
    """Continuous area fraction of the bounding box covered by the shape (a starting point only)."""
    return {"square": 1.0, "rectangle": 1.0, "circle": math.pi / 4, "ellipse": math.pi / 4,
            "diamond": 0.5, "octagon": 2 * math.sqrt(2) - 2,
            "ring": math.pi / 4 * (1 - (1 - (ring_width or 0.5)) ** 2),
            "border": 1 - (1 - (ring_width or 0.1)) ** 2}[shape]


def _best_box(shape, target, aspect, image_hw, ring_width, h0, w0) -> Tuple[int, int, float]:
    """Search the integer boxes around ``(h0, w0)`` whose width is within one pixel (or 10%) of
    ``aspect·h`` (so a small "square" stays a square up to a pixel, never e.g. 8×5): among those within
    2% of ``target`` pixels take the one closest to ``aspect``; if none is, the one closest in area.
    Returns (h, w, rel. error)."""
    H, W = image_hw
    best = None
    for h in range(max(1, int(h0) - 2), min(H, int(math.ceil(h0)) + 2) + 1):
        for w in range(max(1, int(w0) - 2), min(W, int(math.ceil(w0)) + 2) + 1):
            err = abs(float(_mask_cached(shape, h, w, ring_width).sum()) - target) / target
            dev = abs(math.log(w / h / aspect))
            off = abs(w - h * aspect) > max(1.0, 0.1 * h * aspect) + 1e-9   # a pixel (or 10%) off
            key = (off, False, dev, err) if err <= AREA_TOLERANCE else (off, True, err, dev)
            if best is None or key < best[0]:
                best = (key, h, w, err)
    if best is None:
        raise ValueError(f"a {shape} patch of {target:.3g} pixels (area × H × W) does not fit a "
                         f"{H}×{W} image")
    return best[1], best[2], best[3]


def _fit_border(target: float, image_hw, ring_width) -> ShapeFit:
    """A frame hugging the image edge: the thinnest integer thickness that reaches the area; when the
    full-size frame of that thickness has too many pixels, the box shrinks (keeping the image's
    aspect) until the count matches."""
    H, W = image_hw
    if ring_width is not None:
        rw = _check_ring_width(ring_width, "border")
        f = _fill_fraction("border", rw)
        h0 = math.sqrt(target / f / (W / H))
        h, w, _ = _best_box("border", target, W / H, image_hw, rw, h0, h0 * W / H)
        return ShapeFit(h, w, rw)
    # An image 1 px high or wide is all edge: its only frame is the whole image (thickness 1).
    t, full = 1, H * W - max(H - 2, 0) * max(W - 2, 0)
    for t in range(1, min(H, W) // 2 + 1):
        full = H * W - max(H - 2 * t, 0) * max(W - 2 * t, 0)
        if full >= target * (1 - AREA_TOLERANCE):
            break
    if abs(full - target) <= AREA_TOLERANCE * target:
        return ShapeFit(H, W, min(1.0, 2 * t / min(H, W)))
    # frame pixels of an h×w box with thickness t: 2t(h + w) - 4t²; keep h/w = H/W.
    s = (target + 4 * t * t) / (2 * t)
    h0 = s * H / (H + W)
    best = None
    for h in range(max(2 * t + 1, int(h0) - 2), min(H, int(h0) + 3) + 1):
        for w in range(max(2 * t + 1, int(h0 * W / H) - 2), min(W, int(h0 * W / H) + 3) + 1):
            err = abs(2 * t * (h + w) - 4 * t * t - target) / target
            key = (err > AREA_TOLERANCE, abs(math.log(w / h * H / W)), err)
            if best is None or key < best[0]:
                best = (key, h, w)
    if best is None:
        raise ValueError(f"a border of {target:.3g} pixels (area × H × W) does not fit a "
                         f"{H}×{W} image")
    return ShapeFit(best[1], best[2], 2 * t / min(best[1], best[2]))


@lru_cache(maxsize=1024)
def _fit(shape: str, area: float, image_hw: Tuple[int, int], aspect: float,
         ring_width: Optional[float]) -> ShapeFit:
    H, W = image_hw
    target = area * H * W
    if shape == "border":
        return _fit_border(target, image_hw, ring_width)
    rw = _check_ring_width(ring_width, shape)
    f = _fill_fraction(shape, rw)
    h0 = math.sqrt(target / (f * aspect))
    w0 = h0 * aspect
    if h0 > H + 0.5 or w0 > W + 0.5:
        raise ValueError(f"a {shape} patch covering {area:.4g} of a {H}×{W} image with aspect (w/h) "
                         f"{aspect:.4g} needs a {h0:.1f}×{w0:.1f} box, which does not fit the image")
    h, w, err = _best_box(shape, target, aspect, image_hw, rw, h0, w0)
    if err > 0.25:
        raise ValueError(f"a {shape} patch covering {area:.4g} of a {H}×{W} image cannot be drawn "
                         f"(best box {h}×{w} is {100 * err:.0f}% off the requested area)")
    return ShapeFit(h, w, rw)


def fit_shape(shape: str, area: float, image_hw, aspect: float = 1.0,
              ring_width: Optional[float] = None) -> ShapeFit:
    """Bounding box (and band width) of a ``shape`` patch covering ``area`` of an ``H×W`` image.

    ``shape_mask(shape, h, w, ring_width=fit.ring_width).sum()`` is within 2% of ``area·H·W``
    for patches of a few hundred pixels or more (the search runs on the discrete masks). Symmetric
    masks change in steps of ~4 pixels, so below ~200 pixels 2% can be out of reach; the closest
    count is returned then. Only boxes whose width is within a pixel (10% for large ones) of
    ``aspect × height`` are considered; among those within 2%, the one closest to ``aspect`` (w/h)
    wins, so small "squares" may be off by a pixel in one direction (a 5% square on 28×28 is
    6×7 = 42 pixels, not 8×5 = 40).
    "border" ignores ``aspect``: with ``ring_width=None`` it is a frame hugging the image edge with the
    thinnest integer thickness that reaches the area (shrunk towards the centre when a full-size frame
    of that thickness is too large); with a ``ring_width`` it is a frame of that relative thickness.

    Raises:
        ValueError: area not in (0, 1), aspect <= 0, a non-unit aspect for "square"/"circle", or a
            patch that cannot fit the image. LookupError: unknown shape.
    """
    shape = check_shape(shape)
    area = check_fraction(area, "area", 0.0, 1.0)
    H, W = check_hw(image_hw, "image_hw")
    aspect, rw = check_shape_args(shape, aspect, ring_width)
    return _fit(shape, area, (H, W), aspect, rw)


def check_hw(hw, name: str) -> Tuple[int, int]:
    """``(height, width)``: two integers >= 1 (a ``torch.Size`` or pair; integral floats such as
    ``32.0`` are accepted, ``2.5`` or ``"32"`` are not)."""
    if isinstance(hw, (str, bytes)) or not hasattr(hw, "__len__") or len(hw) != 2:
        raise TypeError(f"{name}: expected (height, width), got {hw!r}")
    a, b = hw
    return (check_int(a, f"{name} height", minimum=1), check_int(b, f"{name} width", minimum=1))


def check_shape_args(shape: str, aspect, ring_width) -> Tuple[float, Optional[float]]:
    """Validate ``aspect`` (w/h > 0; exactly 1 for "square"/"circle") and ``ring_width`` (in (0, 1])."""
    a = check_positive(aspect, "aspect")
    if shape in _ISOTROPIC and abs(a - 1.0) > 1e-9:
        alt = "rectangle" if shape == "square" else "ellipse"
        raise ValueError(f"shape {shape!r} has aspect 1; got aspect={aspect} (use {alt!r})")
    if ring_width is None:
        return a, None
    return a, _check_ring_width(ring_width, shape if shape in _DEFAULT_RING_WIDTH else "ring")


def patch_size(shape: str, area: float, image_hw, aspect: float = 1.0) -> Tuple[int, int]:
    """``(h, w)`` of the bounding box of a ``shape`` patch covering ``area`` (a fraction of the image).

    Args:
        shape: one of :data:`SHAPES`.
        area: fraction of the image's pixels the *mask* covers, in (0, 1) (PatchZero: 0.02 on ImageNet).
        image_hw: ``(H, W)`` of the images.
        aspect: width / height of the bounding box (default 1.0); ignored by "border".

    Example::
        >>> patch_size("square", 0.02, (224, 224))
        (31, 32)
    """
    fit = fit_shape(shape, area, image_hw, aspect)
    return fit.h, fit.w
