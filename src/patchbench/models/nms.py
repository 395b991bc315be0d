"""Box IoU and (batched) greedy non-maximum suppression in pure, vectorised torch.

torchvision's ``ops.nms`` cannot be used here (docs/architecture.md: no torchvision), so this module gives
the same greedy result without a Python loop over boxes. Greedy NMS keeps box ``j`` (boxes sorted by
descending score) iff no *kept* higher-scored box overlaps it above the threshold::

    keep[j] = not any_{i < j} (keep[i] and overlap[i, j] > t)

That recursion has exactly one solution (the greedy one). We find it by fixed-point iteration from
``keep = all True``: after ``k`` sweeps every box whose longest chain of suppressors is shorter than
``k`` is settled, so the loop ends in at most ``K`` (in practice a handful of) batched mat-vec sweeps.

Boxes are ``x1, y1, x2, y2`` in pixels. ``offset=1`` uses the legacy "pixel-inclusive" area
``(x2 - x1 + 1)(y2 - y1 + 1)`` of the original MTCNN/Matlab code, which the reference MTCNN uses in its
last stage; ``offset=0`` is the continuous convention (torchvision, COCO).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_choice, check_number

# Above this many IoU entries per chunk, batched NMS processes its groups in several chunks.
_MAX_PAIRS = 32_000_000


def _check_boxes(boxes, name: str) -> Tensor:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor K×4 (x1, y1, x2, y2), "
                        f"got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}: expected shape K×4 (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    return boxes


def _overlap(a: Tensor, b: Tensor, mode: str = "union", offset: float = 0.0) -> Tensor:
    """Pairwise overlap ``...×A×B`` of boxes ``...×A×4`` and ``...×B×4`` (broadcast over leading dims)."""
    area_a = (a[..., 2] - a[..., 0] + offset) * (a[..., 3] - a[..., 1] + offset)
    area_b = (b[..., 2] - b[..., 0] + offset) * (b[..., 3] - b[..., 1] + offset)
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt + offset).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    if mode == "min":
        denom = torch.minimum(area_a[..., :, None], area_b[..., None, :])
    elif mode == "union":
        denom = area_a[..., :, None] + area_b[..., None, :] - inter
    else:
        raise ValueError(f"mode: expected 'union' or 'min', got {mode!r}")
    return inter / denom.clamp(min=torch.finfo(inter.dtype).tiny)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of every box in ``a`` (A×4) with every box in ``b`` (B×4) → A×B.

    Boxes are ``x1, y1, x2, y2``; degenerate (zero-area) boxes have IoU 0 with everything.

    Example::
        >>> box_iou(torch.tensor([[0., 0, 2, 2]]), torch.tensor([[1., 1, 3, 3]]))  # 1 / 7
    """
    a, b = _check_boxes(a, "a"), _check_boxes(b, "b")
    return _overlap(a.float(), b.float(), "union")


def _greedy_keep(over: Tensor, valid: Tensor, threshold: float) -> Tensor:
    """Batched greedy NMS on score-sorted boxes: ``over`` G×M×M, ``valid`` G×M → keep mask G×M."""
    m = over.shape[-1]
    upper = torch.ones(m, m, dtype=torch.bool, device=over.device).triu(1)
    sup = (over > threshold) & upper & valid[:, :, None] & valid[:, None, :]   # i suppresses j>i
    sup = sup.to(torch.float32)
    keep = valid.clone()
    for _ in range(m + 1):
        hit = torch.bmm(keep.to(torch.float32).unsqueeze(1), sup).squeeze(1) > 0
        new = valid & ~hit
        if torch.equal(new, keep):
            break
        keep = new
    return keep


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float,
                mode: str = "union", offset: float = 0.0) -> Tensor:
    """Greedy NMS run independently inside each group (e.g. each image); returns kept indices.

    Args:
        boxes: K×4 ``x1, y1, x2, y2``.
        scores: K scores (higher is kept first).
        groups: K integer group ids; boxes of different groups never suppress each other.
        iou_threshold: a box is dropped when its overlap with a kept, higher-scored box is
            ``> iou_threshold``.
        mode: ``"union"`` (IoU) or ``"min"`` (intersection over the smaller area; MTCNN's last stage).
        offset: 0 for continuous areas, 1 for the legacy pixel-inclusive ``(x2 - x1 + 1)`` areas.
    Returns:
        Long tensor of kept indices into ``boxes``, sorted by descending score (ties: lower index first).

    Example::
        >>> keep = batched_nms(boxes, scores, image_index, 0.5)
        >>> boxes, scores = boxes[keep], scores[keep]
    """
    boxes = _check_boxes(boxes, "boxes")
    for t, name in ((scores, "scores"), (groups, "groups")):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a 1-D torch.Tensor, got {type(t).__name__}")
    check_number(iou_threshold, "iou_threshold", 0.0, 1.0)
    check_choice(mode, "mode", ("union", "min"))
    check_number(offset, "offset", 0.0)
    if scores.shape != (boxes.shape[0],) or groups.shape != (boxes.shape[0],):
        raise ValueError(f"scores and groups must have shape ({boxes.shape[0]},), got "
                         f"{tuple(scores.shape)} and {tuple(groups.shape)}")
    k = boxes.shape[0]
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    # Sort by group, then by descending score (stable, so equal scores keep their input order).
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]
    g_sorted = groups[order]
    _, counts = torch.unique_consecutive(g_sorted, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    gid = torch.repeat_interleave(torch.arange(len(counts), device=boxes.device), counts)
    pos = torch.arange(k, device=boxes.device) - starts[gid]
    m = int(counts.max())
    keep_sorted = torch.zeros(k, dtype=torch.bool, device=boxes.device)
    per_chunk = max(1, _MAX_PAIRS // (m * m))
    b_sorted = boxes.detach()[order].float()
    for g0 in range(0, len(counts), per_chunk):
        g1 = min(g0 + per_chunk, len(counts))
        sel = (gid >= g0) & (gid < g1)
        padded = torch.zeros(g1 - g0, m, 4, device=boxes.device)
        valid = torch.zeros(g1 - g0, m, dtype=torch.bool, device=boxes.device)
        padded[gid[sel] - g0, pos[sel]] = b_sorted[sel]
        valid[gid[sel] - g0, pos[sel]] = True
        keep = _greedy_keep(_overlap(padded, padded, mode, offset), valid, iou_threshold)
        keep_sorted[sel] = keep[gid[sel] - g0, pos[sel]]
    kept = order[keep_sorted]
    return kept[torch.sort(scores.detach()[kept], descending=True, stable=True).indices]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, mode: str = "union",
        offset: float = 0.0) -> Tensor:
    """Greedy non-maximum suppression of one set of boxes; returns kept indices by descending score.

    Args:
        boxes: K×4 ``x1, y1, x2, y2``; scores: K; iou_threshold: overlap above which the lower-scored
        box is dropped; mode / offset: see :func:`batched_nms`.

    Example::
        >>> keep = nms(boxes, scores, 0.5)
    """
    boxes = _check_boxes(boxes, "boxes")
    groups = torch.zeros(boxes.shape[0], dtype=torch.long, device=boxes.device)
    return batched_nms(boxes, scores, groups, iou_threshold, mode, offset)
