"""Face-detection scores for patch attacks (Yang et al., "Design and Interpretation of Universal
Adversarial Patches in Face Detection", ECCV 2020).

* :func:`precision_recall` — precision / recall of the detections scoring ≥ δ (the paper reports them at
  δ = 0.99, Tables 1–3: an attack succeeds when true faces fall below δ — Criterion 1 — without the
  patch itself rising above δ — Criterion 2, §4.1).
* :func:`threshold_fbeta_curve` and :func:`afbeta` — F_β at every score threshold and the area under
  that curve, AF_β (§4.1, Fig. 8; lower AF_β = stronger attack). The paper defines
  ``F_β = (1 + β²) / (β² / P + 1 / R)``, so β < 1 weights *recall* (the reverse of van Rijsbergen's
  convention); we follow the paper.
* :func:`average_precision` — VOC-style AP (all-points interpolation, VOC 2010+ devkit), the metric the
  paper argues is unfit for attacks (§4.1) but which readers expect next to it.
* :func:`count_patch_detections` — detections that land on the patch (Criterion 2 violations).

Matching (all functions): per image, detections in descending score order each take the still
unmatched ground-truth box of highest IoU, if that IoU is ≥ ``iou_threshold`` (0.5); the rest are false
positives. The matching of the detections above any threshold is a prefix of the full matching, so
one matching serves every threshold. Precision with no detection at all is 1 (no false positive);
F_β is 0 when precision or recall is 0.

``dets``: one entry per image — a ``Detections``/tuple ``(boxes K×4, scores K, ...)`` or a dict with
``"boxes"`` and ``"scores"``. ``gts``: one K×4 tensor of ``x1, y1, x2, y2`` boxes per image.

Example::
    >>> dets = model.detect(x)
    >>> p, r = precision_recall(dets, gt_boxes, delta=0.99)
    >>> afbeta(dets, gt_boxes, beta=0.1)
"""
from __future__ import annotations

import numbers
from typing import List, Tuple

import torch
from torch import Tensor

from .._validation import check_choice, check_number, check_tensor_device
from ..models.nms import box_iou

#: F_β with β above this equals precision to float64 precision; larger β would overflow β².
MAX_BETA = 1e6


def _as_float_tensor(v, name: str, what: str, dtype: torch.dtype = torch.float32) -> Tensor:
    """``v`` (tensor, array, list of numbers) as a ``dtype`` CPU tensor; ``TypeError`` otherwise."""
    if isinstance(v, Tensor):
        check_tensor_device(v, name)
        if v.dtype == torch.bool or v.is_complex():
            raise TypeError(f"{name}: expected {what} of real numbers, got dtype {v.dtype}")
        return v.detach().to("cpu", dtype)
    if v is None or isinstance(v, (str, bytes, dict, bool)) or \
            (not isinstance(v, numbers.Real) and not hasattr(v, "__len__")):
        raise TypeError(f"{name}: expected {what} (a tensor or a list of numbers), got "
                        f"{type(v).__name__}")
    try:
        t = torch.as_tensor(v)
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"{name}: expected {what} of real numbers, got dtype {t.dtype}")
        return torch.as_tensor(v, dtype=dtype)     # straight to dtype: no float32 rounding first
    except (ValueError, RuntimeError, OverflowError) as e:
        raise TypeError(f"{name}: expected {what} (a tensor or a list of numbers), got "
                        f"{type(v).__name__}: {str(v)[:80]}") from e
    except TypeError as e:
        if str(e).startswith(name):
            raise
        raise TypeError(f"{name}: expected {what} (a tensor or a list of numbers), got "
                        f"{type(v).__name__}: {str(v)[:80]}") from e


def _as_boxes(b, name: str) -> Tensor:
    b = _as_float_tensor(b, name, "a K×4 tensor of x1, y1, x2, y2 boxes")
    if b.numel() == 0 and b.dim() <= 2:
        return b.reshape(0, 4)
    if b.dim() != 2 or b.shape[1] != 4:
        raise ValueError(f"{name}: expected a K×4 tensor of x1, y1, x2, y2 boxes, "
                         f"got shape {tuple(b.shape)}")
    if not bool(torch.isfinite(b).all()):
        raise ValueError(f"{name}: box coordinates must be finite, got NaN or Inf")
    bad = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name}: box {i} {b[i].tolist()} has a negative width or height "
                         f"(boxes are x1, y1, x2, y2 with x2 >= x1 and y2 >= y1)")
    return b


def _as_scores(s, name: str) -> Tensor:
    s = _as_float_tensor(s, name, "a tensor of K detection scores").reshape(-1)
    if s.numel() and (not bool(torch.isfinite(s).all()) or float(s.min()) < 0 or float(s.max()) > 1):
        raise ValueError(f"{name}: detection scores must be probabilities in [0, 1] (finite), got "
                         f"min {float(s.min()):.4g} max {float(s.max()):.4g}")
    return s


def _entries(seq, name: str, what: str) -> list:
    """``seq`` as a list of per-image entries: a list or tuple (or a 3-D tensor: one row each)."""
    if isinstance(seq, Tensor) and seq.dim() == 3:
        return list(seq)
    if not isinstance(seq, (list, tuple)):
        raise TypeError(f"{name}: expected a list with {what} per image, got {type(seq).__name__}")
    return list(seq)


def _as_dets(dets, n_images: int, ref: str = "gts") -> List[Tuple[Tensor, Tensor]]:
    dets = _entries(dets, "dets", "one (boxes, scores) entry")
    if len(dets) != n_images:
        raise ValueError(f"dets: expected one entry per image ({n_images}, as in {ref}), got "
                         f"{len(dets)}")
    out = []
    for i, d in enumerate(dets):
        if isinstance(d, dict):
            missing = [k for k in ("boxes", "scores") if k not in d]
            if missing:
                raise ValueError(f"dets[{i}]: the dict has no {' or '.join(map(repr, missing))} "
                                 f"key (expected {{'boxes': K×4, 'scores': K}}, got keys "
                                 f"{sorted(map(str, d))})")
            boxes, scores = d["boxes"], d["scores"]
        elif isinstance(d, (tuple, list)):
            if len(d) < 2:
                raise ValueError(f"dets[{i}]: expected (boxes, scores, ...), got {len(d)} element(s)")
            boxes, scores = d[0], d[1]
        else:
            raise TypeError(f"dets[{i}]: expected a Detections/(boxes, scores) tuple or a dict with "
                            f"'boxes' and 'scores', got {type(d).__name__}")
        boxes = _as_boxes(boxes, f"dets[{i}].boxes")
        scores = _as_scores(scores, f"dets[{i}].scores")
        if len(scores) != len(boxes):
            raise ValueError(f"dets[{i}]: {len(boxes)} boxes but {len(scores)} scores")
        out.append((boxes, scores))
    return out


def _as_gts(gts, name: str = "gts") -> List[Tensor]:
    if isinstance(gts, Tensor) and gts.dim() == 2:
        raise TypeError(f"{name}: expected a list with one K×4 tensor per image, got a single 2-D "
                        f"tensor")
    return [_as_boxes(g, f"{name}[{i}]") for i, g in enumerate(_entries(gts, name, "one K×4 tensor"))]


def _check_iou(iou_threshold) -> float:
    return check_number(iou_threshold, "iou_threshold", 0.0, 1.0, low_inclusive=False)


def _check_delta(delta) -> float:
    return check_number(delta, "delta", 0.0, 1.0)


def match_detections(boxes: Tensor, scores: Tensor, gt: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """Greedy matching of one image's detections to its ground truth; returns a bool "is true positive"
    per detection (in the input order). See the module docstring for the rule."""
    boxes, gt = _as_boxes(boxes, "boxes"), _as_boxes(gt, "gt")
    scores = _as_scores(scores, "scores")
    if len(scores) != len(boxes):
        raise ValueError(f"scores: {len(boxes)} boxes but {len(scores)} scores")
    return _match(boxes, scores, gt, _check_iou(iou_threshold))


def _match(boxes: Tensor, scores: Tensor, gt: Tensor, iou_threshold: float) -> Tensor:
    """:func:`match_detections` on validated inputs."""
    tp = torch.zeros(len(boxes), dtype=torch.bool)
    if len(boxes) == 0 or len(gt) == 0:
        return tp
    iou = box_iou(boxes, gt)
    taken = torch.zeros(len(gt), dtype=torch.bool)
    for d in torch.sort(scores, descending=True, stable=True).indices.tolist():
        cand = iou[d].masked_fill(taken, -1.0)
        best = int(cand.argmax())
        if cand[best] >= iou_threshold:
            tp[d], taken[best] = True, True
    return tp


def _matched(dets, gts, iou_threshold: float) -> Tuple[Tensor, Tensor, int]:
    """All detections' scores, their true-positive flags, and the number of ground-truth boxes."""
    iou_threshold = _check_iou(iou_threshold)
    gts = _as_gts(gts)
    dets = _as_dets(dets, len(gts))
    scores = [s for _, s in dets]
    tps = [_match(b, s, g, iou_threshold) for (b, s), g in zip(dets, gts)]
    cat = lambda xs, dt: torch.cat(xs) if xs else torch.zeros(0, dtype=dt)  # noqa: E731
    return cat(scores, torch.float32), cat(tps, torch.bool), sum(len(g) for g in gts)


def _pr_at(scores: Tensor, tp: Tensor, num_gt: int, thresholds: Tensor) -> Tuple[Tensor, Tensor]:
    above = scores[None, :] >= thresholds[:, None]                      # T×D
    n_tp = (above & tp[None]).sum(1).double()
    n_det = above.sum(1).double()
    precision = torch.where(n_det > 0, n_tp / n_det.clamp(min=1), torch.ones_like(n_det))
    recall = n_tp / num_gt if num_gt > 0 else torch.zeros_like(n_tp)
    return precision, recall


def precision_recall(dets, gts, delta: float = 0.99, iou_threshold: float = 0.5) -> Tuple[float, float]:
    """Precision and recall of the detections with score ≥ ``delta`` (paper: δ = 0.99).

    Args:
        dets: per-image detections; gts: per-image K×4 ground-truth boxes.
        delta: score threshold (default 0.99); iou_threshold: match IoU (default 0.5).
    Returns:
        ``(precision, recall)`` floats in [0, 1].

    Example::
        >>> p, r = precision_recall(model.detect(x), boxes, delta=0.99)
    """
    delta = _check_delta(delta)
    scores, tp, num_gt = _matched(dets, gts, iou_threshold)
    p, r = _pr_at(scores, tp, num_gt, torch.tensor([delta]))
    return float(p[0]), float(r[0])


def _fbeta(precision: Tensor, recall: Tensor, beta: float) -> Tensor:
    """Paper §4.1: ``F_β = (1 + β²) / (β² P⁻¹ + R⁻¹)``; 0 where P or R is 0."""
    b2 = float(beta) ** 2
    ok = (precision > 0) & (recall > 0)
    f = (1 + b2) / (b2 / precision.clamp(min=1e-300) + 1 / recall.clamp(min=1e-300))
    return torch.where(ok, f, torch.zeros_like(f))


def _thresholds(thresholds) -> Tensor:
    if thresholds is None:
        return torch.linspace(0, 1, 101, dtype=torch.float64)
    t = _as_float_tensor(thresholds, "thresholds", "score thresholds", torch.float64).flatten()
    if not bool(torch.isfinite(t).all()):
        raise ValueError("thresholds: expected finite score thresholds, got NaN or Inf")
    if len(t) < 2 or not bool((t[1:] > t[:-1]).all()):
        raise ValueError("thresholds: expected at least two strictly increasing score thresholds")
    if float(t[0]) < 0 or float(t[-1]) > 1:
        raise ValueError(f"thresholds: score thresholds must lie in [0, 1], got {float(t[0]):.4g} "
                         f"to {float(t[-1]):.4g}")
    return t


def threshold_fbeta_curve(dets, gts, beta: float, thresholds=None,
                          iou_threshold: float = 0.5) -> Tuple[Tensor, Tensor]:
    """F_β (paper's definition) of the detections scoring ≥ t, for every threshold t.

    Args:
        dets, gts: see the module docstring. beta: > 0 (paper: 0.001, 0.01, 0.1, 0.5).
        thresholds: increasing score thresholds (default ``linspace(0, 1, 101)``).
    Returns:
        ``(thresholds T, fbeta T)`` float64 tensors.

    Example::
        >>> t, f = threshold_fbeta_curve(dets, boxes, beta=0.1)
    """
    beta = check_number(beta, "beta", 0.0, MAX_BETA, low_inclusive=False)
    t = _thresholds(thresholds)
    scores, tp, num_gt = _matched(dets, gts, iou_threshold)
    p, r = _pr_at(scores.double(), tp, num_gt, t)
    return t, _fbeta(p, r, beta)


def afbeta(dets, gts, beta: float, thresholds=None, iou_threshold: float = 0.5) -> float:
    """AF_β: area under the Threshold-F_β curve (trapezoid rule), divided by the threshold range so a
    perfect detector scores 1 and one that finds nothing scores 0 (paper §4.1, Fig. 8).

    Example::
        >>> afbeta(model.detect(x_adv), boxes, beta=0.01)
    """
    t, f = threshold_fbeta_curve(dets, gts, beta, thresholds, iou_threshold)
    return float(torch.trapezoid(f, t) / (t[-1] - t[0]))


def average_precision(dets, gts, iou_threshold: float = 0.5) -> float:
    """Average precision with all-points interpolation (PASCAL VOC 2010+ devkit): area under the
    precision envelope ``max_{r' ≥ r} P(r')`` over all recall steps. 0 when there is no ground truth.

    Example::
        >>> average_precision(model.detect(x), boxes)
    """
    scores, tp, num_gt = _matched(dets, gts, iou_threshold)
    if num_gt == 0 or len(scores) == 0:
        return 0.0
    order = torch.sort(scores, descending=True, stable=True).indices
    ctp = tp[order].double().cumsum(0)
    cfp = (~tp[order]).double().cumsum(0)
    zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    rec = torch.cat([zero, ctp / num_gt, one])
    prec = torch.cat([zero, ctp / (ctp + cfp), zero])
    prec = prec.flip(0).cummax(0).values.flip(0)                         # precision envelope
    step = rec[1:] != rec[:-1]
    return float(((rec[1:] - rec[:-1]) * prec[1:])[step].sum())


def count_patch_detections(dets, patch_boxes, delta: float = 0.99, criterion: str = "iou",
                           iou_threshold: float = 0.5) -> Tensor:
    """Per image, how many detections scoring ≥ ``delta`` sit on the adversarial patch (paper §4.1,
    Criterion 2: the patch itself must not be detected as a face).

    Args:
        dets: per-image detections. patch_boxes: N×4 (one patch per image) or a list of K×4.
        delta: score threshold (default 0.99).
        criterion: ``"iou"`` (IoU with a patch box ≥ ``iou_threshold``, default 0.5) or ``"center"``
            (the detection's centre lies inside a patch box).
    Returns:
        Long tensor N of counts.

    Example::
        >>> count_patch_detections(model.detect(x_adv), patch_boxes).sum()
    """
    criterion = check_choice(criterion, "criterion", ("iou", "center"))
    delta = _check_delta(delta)
    iou_threshold = _check_iou(iou_threshold)
    if isinstance(patch_boxes, Tensor) and patch_boxes.dim() == 2:
        patch_boxes = [pb[None] for pb in patch_boxes]
    patches = _as_gts(patch_boxes, "patch_boxes")
    counts = []
    for (boxes, scores), pb in zip(_as_dets(dets, len(patches), "patch_boxes"), patches):
        boxes = boxes[scores >= delta]
        if len(boxes) == 0 or len(pb) == 0:
            counts.append(0)
            continue
        if criterion == "iou":
            hit = (box_iou(boxes, pb) >= iou_threshold).any(1)
        else:
            c = (boxes[:, None, :2] + boxes[:, None, 2:]) / 2
            hit = ((c >= pb[None, :, :2]) & (c <= pb[None, :, 2:])).all(-1).any(1)
        counts.append(int(hit.sum()))
    return torch.tensor(counts, dtype=torch.long)
