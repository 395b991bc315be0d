"""Pixel-level segmentation scores for patch detectors (PatchZero, Xu et al. WACV 2023, §4.4, Table 5).

PatchZero reports recall, precision, accuracy and F1 of the "adversarial pixel segmentation task on
attack images", micro-averaged over all pixels, and the false-positive rate on benign images. Here:

* :func:`pixel_scores` — micro precision / recall / F1 / accuracy over every pixel of a batch;
* :class:`PixelConfusion` — the same, accumulated over many batches;
* :func:`benign_false_positives` — on benign images: the fraction of images with *any* flagged pixel
  and the mean fraction of pixels flagged.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
from torch import Tensor

from .._validation import check_number, check_tensor_device


def _as_binary(m, name: str) -> Tensor:
    if not isinstance(m, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor mask N×1×H×W, got {type(m).__name__}")
    check_tensor_device(m, name)
    if m.dim() == 3:
        m = m.unsqueeze(1)
    if m.dim() != 4 or m.shape[1] != 1:
        raise ValueError(f"{name}: expected a mask N×1×H×W (or N×H×W), got shape {tuple(m.shape)}")
    if m.dtype == torch.bool:
        return m
    if m.is_complex():
        raise TypeError(f"{name}: expected a bool, integer or float mask, got dtype {m.dtype}")
    if m.is_floating_point():
        if m.numel() and not bool(torch.isfinite(m).all()):
            raise ValueError(f"{name}: mask contains NaN or Inf values")
        if m.numel() and (float(m.min()) < 0 or float(m.max()) > 1):
            raise ValueError(f"{name}: mask values must lie in [0, 1], got min {float(m.min()):.4g} "
                             f"max {float(m.max()):.4g}")
        return m > 0.5
    if m.numel() and int(m.min()) < 0:
        raise ValueError(f"{name}: integer mask values must be >= 0 (non-zero = patch), got "
                         f"{int(m.min())}")
    return m != 0


def _check_zero_division(value) -> float:
    """A number in [0, 1], or NaN (as scikit-learn's ``zero_division=np.nan``)."""
    if isinstance(value, float) and math.isnan(value):
        return value
    return check_number(value, "zero_division", 0.0, 1.0)


def _ratio(num: int, den: int, zero_division: float) -> float:
    return num / den if den > 0 else float(zero_division)


class PixelConfusion:
    """Running pixel confusion counts (micro average over pixels) for predicted vs true patch masks.

    Args:
        zero_division (float in [0, 1], or NaN): value of precision / recall / F1 when their
            denominator is 0 (e.g. nothing predicted). Default: 0.0 (as scikit-learn).

    Example::

        conf = PixelConfusion(); conf.update(pred_mask, true_mask)
        conf.scores()["f1"]
    """

    def __init__(self, zero_division: float = 0.0):
        self.zero_division = _check_zero_division(zero_division)
        self.tp = self.fp = self.fn = self.tn = 0

    def update(self, pred: Tensor, target: Tensor) -> "PixelConfusion":
        """Add a batch: ``pred`` and ``target`` masks ``N×1×H×W`` (bool, or float thresholded at 0.5)."""
        p, t = _as_binary(pred, "pred"), _as_binary(target, "target")
        if p.shape != t.shape:
            raise ValueError(f"pred and target masks must have the same shape, got pred "
                             f"{tuple(p.shape)} and target {tuple(t.shape)}")
        t = t.to(p.device)
        self.tp += int((p & t).sum())
        self.fp += int((p & ~t).sum())
        self.fn += int((~p & t).sum())
        self.tn += int((~p & ~t).sum())
        return self

    def scores(self) -> Dict[str, float]:
        """``precision, recall, f1, accuracy`` and the raw counts ``tp, fp, fn, tn``."""
        z = self.zero_division
        prec = _ratio(self.tp, self.tp + self.fp, z)
        rec = _ratio(self.tp, self.tp + self.fn, z)
        f1 = _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, z)
        acc = _ratio(self.tp + self.tn, self.tp + self.tn + self.fp + self.fn, z)
        return dict(precision=prec, recall=rec, f1=f1, accuracy=acc,
                    tp=self.tp, fp=self.fp, fn=self.fn, tn=self.tn)


def pixel_scores(pred: Tensor, target: Tensor, zero_division: float = 0.0) -> Dict[str, float]:
    """Micro pixel precision / recall / F1 / accuracy of ``pred`` against ``target`` (PatchZero Table 5).

    Args:
        pred, target: masks ``N×1×H×W`` (or ``N×H×W``); bool, integer (non-zero = patch) or float in
            [0, 1] (> 0.5 = patch).
        zero_division (float): value returned when a denominator is 0. Default: 0.0.

    Returns:
        dict with ``precision, recall, f1, accuracy, tp, fp, fn, tn``.

    Example::

        s = pixel_scores(defense.predict_mask(x_adv), result.mask)
        print(s["f1"])
    """
    return PixelConfusion(zero_division).update(pred, target).scores()


def benign_false_positives(pred: Tensor) -> Dict[str, float]:
    """False positives of a patch detector on *benign* images (PatchZero §4.4).

    Args:
        pred: predicted masks on benign images ``N×1×H×W`` (bool / int / float in [0, 1]).

    Returns:
        dict with ``image_fp_rate`` (fraction of images with at least one flagged pixel) and
        ``pixel_fp_rate`` (mean over images of the fraction of pixels flagged).

    Example::

        benign_false_positives(defense.predict_mask(x_clean))["image_fp_rate"]
    """
    p = _as_binary(pred, "pred")
    if p.shape[0] == 0:
        raise ValueError("pred: the batch of benign masks is empty")
    flat = p.flatten(1).float()
    return dict(image_fp_rate=float((flat.sum(1) > 0).float().mean()),
                pixel_fp_rate=float(flat.mean(1).mean()))
