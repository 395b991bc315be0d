"""Classification metrics with their uncertainty: clean accuracy, robust accuracy and attack success
rate, each a :class:`Rate` (value, k successes out of n, and a 95 % Wilson score interval).

Definitions follow the patch-attack literature (PatchZero, Xu et al. WACV 2023, Sec. 4.1 / Table 1:
benign accuracy on clean images, robust accuracy on attacked images, both over *all* samples) and the
usual attack success rate, measured only on the samples the model classified correctly before the
attack.

The interval is Wilson's score interval (Wilson, "Probable inference, the law of succession, and
statistical inference", JASA 22(158), 1927): with p̂ = k/n,

    centre = (p̂ + z²/2n) / (1 + z²/n),   half = z / (1 + z²/n) · sqrt(p̂(1−p̂)/n + z²/4n²)

— unlike the normal approximation it stays inside [0, 1] and is sensible for the small n of real-photo
evaluations (n = 7 photos gives wide intervals; reports must show them).

Example::

    acc = clean_accuracy(model, x, y)               # Rate; print(acc) → "0.833 [0.44, 0.97] (5/6)"
    asr = attack_success_rate(model, x, res.x_adv, y)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Tuple

import torch
from torch import Tensor

from .._io import predict_batched
from .._validation import (check_images, check_int, check_labels, check_positive,
                           check_positive_int, check_tensor_device)


@dataclass(frozen=True)
class Rate:
    """A proportion ``k / n`` with its Wilson interval ``[lo, hi]``.

    ``n == 0`` (nothing to measure, e.g. an attack success rate when the model got no clean image
    right) gives ``value = nan`` and the uninformative interval ``[0, 1]``; it prints as
    ``"n/a (0/0)"``.
    """

    value: float
    k: int
    n: int
    lo: float
    hi: float

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a (0/0)"
        return f"{self.value:.3f} [{self.lo:.2f}, {self.hi:.2f}] ({self.k}/{self.n})"

    def __float__(self) -> float:
        return float(self.value)

    def to_dict(self) -> dict:
        """Plain dict for the results store / JSON."""
        return asdict(self)

    @classmethod
    def of(cls, k: int, n: int, z: float = 1.96) -> "Rate":
        """The rate ``k / n`` with its Wilson interval at ``z`` (1.96 → 95 %)."""
        lo, hi = wilson_interval(k, n, z)
        return cls(k / n if n else float("nan"), int(k), int(n), lo, hi)


def wilson_interval(k: int, n: int, z: float = 1.96) -> Tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (formula in the module docstring).

    Args:
        k: successes, ``0 <= k <= n``. n: trials, ``>= 0``. z: normal quantile (default 1.96 = 95 %).

    Returns:
        ``(lo, hi)`` within [0, 1]; ``(0.0, 1.0)`` when ``n == 0`` (no information).
        E.g. ``wilson_interval(5, 10)`` ≈ ``(0.237, 0.763)``.
    """
    k, n = check_int(k, "wilson_interval: k"), check_int(n, "wilson_interval: n")
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval: expected 0 <= k <= n, got k={k}, n={n}")
    z = check_positive(z, "wilson_interval: z")
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def _as_predictions(pred, name: str) -> Tensor:
    """Class predictions from a 1-D label tensor or ``N×K`` logits/probabilities (argmax)."""
    if not isinstance(pred, Tensor):
        if isinstance(pred, (str, bytes)) or pred is None:
            raise TypeError(f"{name}: expected N class indices or N×K logits, got {pred!r}")
        try:
            pred = torch.as_tensor(pred)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{name}: expected N class indices or N×K logits, got "
                            f"{type(pred).__name__}") from e
    check_tensor_device(pred, name)
    if pred.dtype == torch.bool or pred.is_complex():
        raise TypeError(f"{name}: expected N class indices or N×K logits, got dtype {pred.dtype}")
    if pred.dim() == 2:
        if pred.shape[1] == 0:
            raise ValueError(f"{name}: N×K logits need K >= 1 classes, got shape {tuple(pred.shape)}")
        if pred.is_floating_point() and pred.numel() and not bool(torch.isnan(pred).logical_not().all()):
            raise ValueError(f"{name}: the logits contain NaN")
        return pred.argmax(-1)
    if pred.dim() == 1 and pred.is_floating_point() and pred.numel() == 0:
        return pred.long()   # an empty list or tensor: no predictions
    if pred.dim() != 1 or pred.is_floating_point():
        raise ValueError(f"{name}: expected N class indices or N×K logits, got dtype {pred.dtype} "
                         f"shape {tuple(pred.shape)}")
    if pred.numel() and int(pred.min()) < 0:
        raise ValueError(f"{name}: class indices must be >= 0, got {int(pred.min())}")
    return pred.long()


def accuracy(pred, y) -> Rate:
    """Fraction of predictions equal to the labels.

    Args:
        pred: ``N`` predicted class indices, or ``N×K`` logits / probabilities (argmax is taken).
        y: ``N`` integer labels.
    """
    p = _as_predictions(pred, "pred")
    y = check_labels(y, p.shape[0], name="y")
    return Rate.of(int((p == y.to(p.device)).sum()), int(p.shape[0]))


def predict_labels(model, x: Tensor, batch_size: int = 64) -> Tensor:
    """``model``'s argmax class for each image of ``x`` (``N``, long, on ``x``'s device).

    Runs in eval mode without gradients, ``batch_size`` images at a time; batches move to the model's
    device when it has parameters, and the model's training flag is restored afterwards.
    """
    _check_model(model)
    return _predict(model, check_images(x, "x"), check_positive_int(batch_size, "batch_size"))


def _check_model(model) -> None:
    if not callable(model):
        raise TypeError(f"model: expected a callable classifier (nn.Module), got {type(model).__name__}")


def _argmax(z: Tensor) -> Tensor:
    return z.argmax(-1)


def _predict(model, x: Tensor, batch_size: int) -> Tensor:
    """Inner helper (inputs already validated): argmax labels via :func:`patchbench._io.predict_batched`."""
    return predict_batched(model, x, batch_size, reduce=_argmax)


def clean_accuracy(model, x: Tensor, y, batch_size: int = 64) -> Rate:
    """Accuracy of ``model`` on clean images ``x`` (``N×C×H×W`` in [0, 1]) with labels ``y`` (``N``)
    — the "benign accuracy" row of a robustness table."""
    _check_model(model)
    x = check_images(x, "x")
    y = check_labels(y, x.shape[0], getattr(model, "num_classes", None), name="y")
    return accuracy(predict_labels(model, x, batch_size), y)


def robust_accuracy(model, x_adv: Tensor, y, batch_size: int = 64) -> Rate:
    """Accuracy of ``model`` on attacked images ``x_adv`` over *all* N samples (an image the model
    already got wrong counts as wrong) — the "robust accuracy" row of a robustness table; compare it
    with :func:`clean_accuracy` on the same samples."""
    _check_model(model)
    x_adv = check_images(x_adv, "x_adv")
    y = check_labels(y, x_adv.shape[0], getattr(model, "num_classes", None), name="y")
    return accuracy(predict_labels(model, x_adv, batch_size), y)


def success_rate(clean_pred, adv_pred, y, target=None) -> Rate:
    """Attack success rate from predictions (see :func:`attack_success_rate`).

    Args:
        clean_pred, adv_pred: ``N`` class indices (or ``N×K`` logits) before / after the attack.
        y: ``N`` true labels. target: ``None`` (untargeted), one class for all (an int) or ``N``
            target labels.

    Only samples with ``clean_pred == y`` count (and, when targeted, ``y != target``: such samples
    are left out, never counted as successes): untargeted success = ``adv_pred != y``; targeted
    success = ``adv_pred == target``. This is ``AttackResult.rate`` of the attacks (which refuse
    ``target == y`` outright).
    """
    cp, ap = _as_predictions(clean_pred, "clean_pred"), _as_predictions(adv_pred, "adv_pred")
    if cp.shape != ap.shape:
        raise ValueError(f"clean_pred and adv_pred: expected the same number of samples, got "
                         f"{cp.shape[0]} and {ap.shape[0]}")
    y = check_labels(y, cp.shape[0], name="y").to(cp.device)
    ap = ap.to(cp.device)
    eligible = cp == y
    if target is None:
        hit = ap != y
    else:
        if isinstance(target, int) and not isinstance(target, bool):
            target = torch.full((cp.shape[0],), target, dtype=torch.long)
        t = check_labels(target, cp.shape[0], name="target").to(cp.device)
        eligible &= y != t
        hit = ap == t
    return Rate.of(int((hit & eligible).sum()), int(eligible.sum()))


def attack_success_rate(model, x: Tensor, x_adv: Tensor, y, target=None,
                        batch_size: int = 64) -> Rate:
    """Attack success rate, measured only on the samples ``model`` classifies correctly on clean
    ``x`` (an attack cannot "succeed" on an image that was already misclassified).

    Untargeted: success when the prediction on ``x_adv`` differs from ``y``. Targeted
    (``target`` = ``N`` labels): success when it equals ``target``; samples whose label already
    equals their target are excluded too. No eligible sample → ``Rate`` with ``n = 0``, value NaN.

    Args:
        model: a classifier (``N×C×H×W`` in [0, 1] → logits).
        x, x_adv: clean and attacked images, same shape ``N×C×H×W`` in [0, 1].
        y: ``N`` true labels. target: ``None`` (default, untargeted) or ``N`` target labels.
        batch_size: images per forward pass (default 64).
    """
    _check_model(model)
    x, x_adv = check_images(x, "x"), check_images(x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv: expected the same shape, got {tuple(x.shape)} and "
                         f"{tuple(x_adv.shape)}")
    num_classes = getattr(model, "num_classes", None)
    y = check_labels(y, x.shape[0], num_classes)
    if target is not None:
        if isinstance(target, int) and not isinstance(target, bool):
            target = torch.full((x.shape[0],), target, dtype=torch.long)
        target = check_labels(target, x.shape[0], num_classes, name="target")
    batch_size = check_positive_int(batch_size, "batch_size")
    return success_rate(_predict(model, x, batch_size), _predict(model, x_adv, batch_size), y, target)
