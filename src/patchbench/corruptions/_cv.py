"""The OpenCV operations ImageNet-C's water spatter uses, batched in torch and matching OpenCV
4's definitions on 8-bit images: Canny edges, the 5×5 chamfer distance transform, histogram
equalisation and the 3×3 box filter with 8-bit rounding (Hendrycks & Dietterich, ICLR 2019,
``make_imagenet_c.py``; OpenCV's ``imgproc/src/canny.cpp``, ``distransform.cpp``,
``histogram.cpp``).

Inputs are ``N×1×H×W`` float tensors holding integer 8-bit values (0–255) unless a function says
otherwise. Inner-loop helpers: inputs are not validated (the registry validates once).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: OpenCV's Canny: tan(22.5°) in 15-bit fixed point.
_TG22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)
#: OpenCV's DIST_L2 5×5 chamfer costs: axial, diagonal, knight's move.
CHAMFER_5x5 = (1.0, 1.4, 2.1969)


def _shifts(p: Tensor, r: int, h: int, w: int):
    """Every ``(dy, dx, view)`` of a tensor padded by ``r`` on each side, for ``|dy|, |dx| <= r``."""
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            yield dy, dx, p[..., r + dy:r + dy + h, r + dx:r + dx + w]


def _dilate3(m: Tensor) -> Tensor:
    """3×3 binary dilation of a bool tensor by shifted ORs."""
    p = F.pad(m.to(torch.uint8), (1, 1, 1, 1))
    v = p[..., :-2, :] | p[..., 1:-1, :] | p[..., 2:, :]
    return (v[..., :-2] | v[..., 1:-1] | v[..., 2:]).bool()


def canny(img: Tensor, low: float = 50, high: float = 150) -> Tensor:
    """``cv2.Canny(img, low, high)`` (3×3 Sobel with replicated borders, L1 gradient norm,
    non-maximum suppression in four sectors, 8-connected hysteresis). Returns a bool edge map."""
    h, w = img.shape[-2:]
    p = F.pad(img, (1, 1, 1, 1), mode="replicate")
    gx = (p[..., :-2, 2:] - p[..., :-2, :-2]) + 2 * (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) \
        + (p[..., 2:, 2:] - p[..., 2:, :-2])
    gy = (p[..., 2:, :-2] - p[..., :-2, :-2]) + 2 * (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) \
        + (p[..., 2:, 2:] - p[..., :-2, 2:])
    gx, gy = gx.round().long(), gy.round().long()
    mag = gx.abs() + gy.abs()
    nb = {(dy, dx): v for dy, dx, v in _shifts(F.pad(mag, (1, 1, 1, 1)), 1, h, w)}  # 0 outside
    ax, ay = gx.abs(), gy.abs() << 15
    tg22x = ax * _TG22
    horiz = ay < tg22x
    vert = ~horiz & (ay > tg22x + (ax << 16))
    anti = (gx < 0) != (gy < 0)                      # OpenCV's (xs ^ ys) < 0: s = -1
    diag_a = torch.where(anti, nb[(-1, 1)], nb[(-1, -1)])
    diag_b = torch.where(anti, nb[(1, -1)], nb[(1, 1)])
    peak = torch.where(horiz, (mag > nb[(0, -1)]) & (mag >= nb[(0, 1)]),
                       torch.where(vert, (mag > nb[(-1, 0)]) & (mag >= nb[(1, 0)]),
                                   (mag > diag_a) & (mag > diag_b)))
    cand = peak & (mag > int(low))
    edges = cand & (mag > int(high))
    while True:                                       # hysteresis: grow strong edges along weak ones
        grown = _dilate3(edges) & cand
        if torch.equal(grown, edges):
            return edges
        edges = grown


def chamfer_distance(edges: Tensor, cap: float, unit: float = 1.0) -> Tensor:
    """``cv2.distanceTransform(255 - edges, DIST_L2, 5)`` (distance of every pixel to the nearest
    edge pixel by the 5×5 chamfer costs 1, 1.4, 2.1969; the image border is not an edge),
    truncated at ``cap``. Distances are in units of ``unit`` px (``unit = s`` measures in px of
    a 224² image). Exact by relaxation: every path with cost ≤ ``cap`` has at most
    ``ceil(cap·unit)`` moves; one relaxation step takes the 16 moves through shared pairwise
    minima (10 ``minimum`` calls instead of 16)."""
    h, w = edges.shape[-2:]
    big = float(cap) + 10.0
    axial, diag, knight = (c / unit for c in CHAMFER_5x5)
    d = torch.where(edges, 0.0, big).to(torch.float32)
    for _ in range(max(1, math.ceil(cap * unit))):
        p = F.pad(d, (2, 2, 2, 2), value=big)
        h1 = torch.minimum(p[..., :, 1:w + 1], p[..., :, 3:w + 3])        # columns ±1, all rows
        h2 = torch.minimum(p[..., :, 0:w], p[..., :, 4:w + 4])            # columns ±2
        v1 = torch.minimum(p[..., 1:h + 1, 2:w + 2], p[..., 3:h + 3, 2:w + 2])
        near = torch.minimum(h1[..., 2:h + 2, :], v1) + axial
        near = torch.minimum(near, torch.minimum(h1[..., 1:h + 1, :], h1[..., 3:h + 3, :]) + diag)
        far = torch.minimum(torch.minimum(h2[..., 1:h + 1, :], h2[..., 3:h + 3, :]),
                            torch.minimum(h1[..., 0:h, :], h1[..., 4:h + 4, :]))
        new = torch.minimum(d, torch.minimum(near, far + knight))
        if torch.equal(new, d):
            break
        d = new
    return d.clamp(max=cap)


def equalize_hist(v: Tensor) -> Tensor:
    """``cv2.equalizeHist`` per image on integer values 0–255 (float out, still 0–255)."""
    n = v.shape[0]
    flat = v.reshape(n, -1).long()
    total = flat.shape[1]
    hist = torch.zeros(n, 256, dtype=torch.long, device=v.device).scatter_add_(
        1, flat, torch.ones_like(flat))
    first = (hist > 0).long().argmax(1, keepdim=True)
    lowest = hist.gather(1, first)
    scale = 255.0 / (total - lowest).clamp_min(1).double()
    lut = ((hist.cumsum(1) - lowest).double() * scale).round().clamp(0, 255)
    bins = torch.arange(256, device=v.device).expand(n, -1)
    lut = torch.where(bins < first, 0.0, lut)
    lut = torch.where(lowest == total, first.double().expand(n, 256), lut)   # one level only
    return lut.gather(1, flat).to(v.dtype).view_as(v)


def box_sum(v: Tensor, size: int) -> Tensor:
    """Sum over a ``size×size`` window (reflect-101 borders as OpenCV's default, edge
    replication on images too small to reflect); ``size`` odd or even as cv2.blur anchors it."""
    if size <= 1:
        return v
    lo = size // 2
    hi = size - 1 - lo
    h, w = v.shape[-2:]
    mode = "reflect" if max(lo, hi) < min(h, w) else "replicate"
    p = F.pad(v, (lo, hi, lo, hi), mode=mode)
    k = torch.ones(1, 1, size, size, dtype=v.dtype, device=v.device)
    return F.conv2d(p, k)


def filter2d_u8(v: Tensor, kernel: Tensor) -> Tensor:
    """``cv2.filter2D(v, cv2.CV_8U, kernel)`` for a 3×3 kernel: correlation with reflect-101
    borders, rounded and saturated to 0–255."""
    h, w = v.shape[-2:]
    mode = "reflect" if min(h, w) > 1 else "replicate"
    return F.conv2d(F.pad(v, (1, 1, 1, 1), mode=mode), kernel.view(1, 1, 3, 3)).round().clamp(0, 255)
