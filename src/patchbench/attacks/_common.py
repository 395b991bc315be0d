"""Pieces every classification patch attack shares: input checks, the threat mask, the adversarial
objectives, success, a frozen-model context and the per-sample "best iterate" bookkeeping.

Nothing here runs per iteration except :func:`objective` and :meth:`BestIterate.update`, which are a
handful of fused ``N``-sized tensor ops without host synchronisation.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_fraction, check_images, check_labels, make_generator

LOSSES = ("ce", "dlr", "cw", "logit-margin")


def prepare(model, x, y, target=None, generator=None) -> Tuple[Tensor, Tensor, Optional[Tensor],
                                                               torch.Generator]:
    """Validate one attack call: images, labels, optional targets; returns ``(x, y, target, g)``.

    ``target`` may be ``None`` (untargeted), an int (one class for all images) or ``N`` class indices.
    ``generator`` may be a ``torch.Generator`` or an int seed (``None`` → seed 0).
    """
    if not callable(model):
        raise TypeError(f"model: expected a callable classifier (nn.Module), got {type(model).__name__}")
    x = check_images(x, "x", channels=getattr(model, "channels", None))
    n = x.shape[0]
    num_classes = getattr(model, "num_classes", None)
    y = check_labels(y, n, num_classes, name="y").to(x.device)
    if target is not None:
        if isinstance(target, int) and not isinstance(target, bool):
            target = torch.full((n,), target, dtype=torch.long)
        target = check_labels(target, n, num_classes, name="target").to(x.device)
    g = make_generator(generator)   # on the CPU: the same seed gives the same numbers on any device
    return x, y, target, g


def uniform(shape, generator: torch.Generator, device, low: float = 0.0, high: float = 1.0) -> Tensor:
    """``U(low, high)`` drawn on the generator's device and moved to ``device`` (so a CPU generator
    also drives CUDA attacks reproducibly)."""
    u = torch.rand(shape, generator=generator, device=generator.device)
    return (u * (high - low) + low).to(device)


def threat_mask(threat, x: Tensor, generator: torch.Generator) -> Tensor:
    """The ``N×1×H×W`` {0,1} float mask where each image may be changed.

    ``threat`` is a :class:`patchbench.patches.Threat` (one placement per image drawn with
    ``generator``) or an explicit mask tensor ``N×1×H×W`` / ``1×1×H×W`` / ``H×W`` of zeros and ones.
    """
    n, _, h, w = x.shape
    if isinstance(threat, Tensor):
        m = threat
        if m.dim() == 2:
            m = m[None, None]
        if m.dim() != 4 or m.shape[1] != 1 or tuple(m.shape[-2:]) != (h, w) or m.shape[0] not in (1, n):
            raise ValueError(f"threat mask: expected N×1×H×W with N in (1, {n}) and H×W = {h}×{w}, got "
                             f"shape {tuple(threat.shape)}")
        m = m.to(device=x.device, dtype=x.dtype)
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("threat mask: values must be exactly 0 or 1")
        return m.expand(n, 1, h, w).contiguous()
    if not hasattr(threat, "masks"):
        raise TypeError(f"threat: expected a patchbench.patches.Threat or a mask tensor, got "
                        f"{type(threat).__name__}")
    m = threat.masks(x, generator=generator)
    return m.to(device=x.device, dtype=x.dtype)


def box(x: Tensor, mask: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """Per-pixel bounds ``lo, hi`` of the feasible set {x + δ⊙m : ‖δ‖∞ ≤ ε, x + δ⊙m ∈ [0, 1]}.

    Outside the mask ``lo == hi == x``, so clamping to them leaves those pixels bit-identical.
    """
    inside = mask.expand_as(x) > 0
    lo = torch.where(inside, (x - eps).clamp_(min=0.0), x)
    hi = torch.where(inside, (x + eps).clamp_(max=1.0), x)
    return lo, hi


def objective(loss: str, logits: Tensor, y: Tensor, target: Optional[Tensor],
              kappa: float = 0.0) -> Tuple[Tensor, Tensor]:
    """Per-sample loss to MAXIMISE and per-sample success, from one forward pass.

    * ``"ce"``: cross-entropy of the label (untargeted) / minus cross-entropy of the target.
    * ``"dlr"``: Croce & Hein (ICML 2020) difference-of-logits ratio, eq. (6) and its targeted form.
    * ``"cw"``: minus the Carlini–Wagner margin ``f = max(Z_y − max_{i≠y} Z_i, −κ)``
      (targeted ``max(max_{i≠t} Z_i − Z_t, −κ)``), Carlini & Wagner (S&P 2017) eq. objective f6.
    * ``"logit-margin"``: LaVAN (Karmon et al. 2018) target-minus-source logits ``Z_t − Z_y``;
      untargeted uses the strongest other class as the target.
    """
    pred = logits.argmax(1)
    success = pred != y if target is None else pred == target
    if loss == "ce":
        if target is None:
            return F.cross_entropy(logits, y, reduction="none"), success
        return -F.cross_entropy(logits, target, reduction="none"), success
    z_y = logits.gather(1, y[:, None])[:, 0]
    if loss == "dlr":
        srt = logits.sort(1, descending=True).values
        if target is None:
            other = _max_other(logits, y)
            return -(z_y - other) / (srt[:, 0] - srt[:, 2] + 1e-12), success
        z_t = logits.gather(1, target[:, None])[:, 0]
        return -(z_y - z_t) / (srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + 1e-12), success
    if loss == "cw":
        if target is None:
            f = (z_y - _max_other(logits, y)).clamp(min=-kappa)
        else:
            z_t = logits.gather(1, target[:, None])[:, 0]
            f = (_max_other(logits, target) - z_t).clamp(min=-kappa)
        return -f, success
    if loss == "logit-margin":
        z_t = _max_other(logits, y) if target is None else logits.gather(1, target[:, None])[:, 0]
        return z_t - z_y, success
    raise LookupError(f"unknown loss {loss!r}; available: {', '.join(LOSSES)}")


def check_budget(value, name: str) -> float:
    """A budget/step in (0, 1] (images live in [0, 1])."""
    v = check_fraction(value, name, 0.0, 1.0, inclusive=True)
    if v == 0.0:
        raise ValueError(f"{name}: expected a value in (0, 1], got {value!r}")
    return v


def check_loss(loss: str, num_classes: Optional[int] = None, targeted: bool = False) -> str:
    if loss not in LOSSES:
        raise LookupError(f"unknown loss {loss!r}; available: {', '.join(LOSSES)}")
    need = 4 if targeted else 3
    if loss == "dlr" and num_classes is not None and num_classes < need:
        raise ValueError(f"the DLR loss needs at least {need} classes, the model has {num_classes}")
    return loss


def _max_other(logits: Tensor, cls: Tensor) -> Tensor:
    """``max_{i≠cls} Z_i`` per row."""
    return logits.scatter(1, cls[:, None], float("-inf")).amax(1)


@contextlib.contextmanager
def frozen(model):
    """Eval mode and ``requires_grad=False`` on every parameter for the duration of an attack, so
    backward computes gradients w.r.t. the input only; both are restored afterwards."""
    params = list(model.parameters()) if hasattr(model, "parameters") else []
    flags = [p.requires_grad for p in params]
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        if was_training and hasattr(model, "train"):
            model.train(True)


class BestIterate:
    """Keeps, per sample, the most adversarial iterate seen: a successful one beats an unsuccessful
    one, and among equals the higher loss wins (the "best point" of Croce & Hein 2020, Alg. 1)."""

    def __init__(self, x: Tensor):
        n = x.shape[0]
        self.x = x.detach().clone()
        self.loss = torch.full((n,), float("-inf"), device=x.device)
        self.success = torch.zeros(n, dtype=torch.bool, device=x.device)

    def update(self, x: Tensor, loss: Tensor, success: Tensor) -> Tensor:
        """Fold in iterate ``x`` with its per-sample ``loss``/``success``; returns the improved rows."""
        loss = loss.detach()
        better = (success & ~self.success) | ((success == self.success) & (loss > self.loss))
        self.loss = torch.where(better, loss, self.loss)
        self.success = self.success | success
        self.x = torch.where(better.view(-1, 1, 1, 1), x.detach(), self.x)
        return better

    def merge(self, idx: Tensor, other: "BestIterate") -> None:
        """Fold the results of a restart run on the rows ``idx`` into this tracker."""
        better = (other.success & ~self.success[idx]) | (
            (other.success == self.success[idx]) & (other.loss > self.loss[idx]))
        rows = idx[better]
        self.loss[rows] = other.loss[better]
        self.success[rows] = other.success[better]
        self.x[rows] = other.x[better]


def result_info(best: BestIterate, target: Optional[Tensor], **extra) -> dict:
    info = {"best_loss": best.loss.detach().cpu(), "targets": None if target is None else target.cpu()}
    info.update(extra)
    return info


def with_restarts(n: int, device, restarts: int, attempt) -> Tuple[BestIterate, list]:
    """Run ``attempt(idx, r) -> (BestIterate, history)`` for ``r = 0..restarts-1``; restart ``r > 0``
    only reruns the rows not yet successful (one host sync per restart, none per iteration)."""
    best, history = None, []
    for r in range(restarts):
        idx = torch.arange(n, device=device) if best is None else (~best.success).nonzero()[:, 0]
        if idx.numel() == 0:
            break
        run_best, hist = attempt(idx, r)
        history.append(hist)
        if best is None:
            best = run_best
        else:
            best.merge(idx, run_best)
    return best, history


def per_image_result(model, x: Tensor, mask: Tensor, target: Optional[Tensor], restarts: int,
                     attempt):
    """Run ``attempt`` with restarts on the frozen model and package the best iterates as the
    :class:`AttackResult` of a per-image attack (the patch is the adversarial image inside the mask)."""
    from .base import AttackResult

    with frozen(model):
        best, history = with_restarts(x.shape[0], x.device, restarts, attempt)
    x_adv = best.x
    return AttackResult(x_adv=x_adv, patch=x_adv * mask, mask=mask, success=best.success.clone(),
                        history=torch.cat(history).tolist(),
                        info=result_info(best, target, restarts_run=len(history)))
