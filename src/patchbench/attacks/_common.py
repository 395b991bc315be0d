"""Pieces every classification patch attack shares: input checks, the threat mask, the adversarial
objective (from the task: :mod:`patchbench.tasks.classification`), success, a frozen-model context and
the per-sample "best iterate" bookkeeping.

Nothing here runs per iteration except :func:`objective` and :meth:`BestIterate.update`, which are a
handful of fused ``N``-sized tensor ops without host synchronisation.
"""
from __future__ import annotations

import contextlib
import numbers
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._validation import (check_bool, check_choice, check_images, check_labels,
                           check_mask, check_number, check_positive_int, make_generator,
                           trusted_inputs)

# The classification objective lives with its task (patchbench.tasks.classification); these names
# stay importable from here for the attacks and their callers.
from ..tasks.classification import LOSSES, _max_other, objective  # noqa: E402,F401


def check_model(model) -> None:
    """A classifier is anything callable (an ``nn.Module`` or a function of images)."""
    if not callable(model):
        raise TypeError(f"model: expected a callable classifier (nn.Module), got {type(model).__name__}")


def check_target_differs(y: Tensor, target: Optional[Tensor]) -> None:
    """A targeted attack on an image whose label already is the target has nothing to do: refuse it
    (it would count as an instant success; ``metrics.success_rate`` leaves such images out)."""
    if target is None:
        return
    same = (target == y).nonzero()[:, 0]
    if same.numel():
        idx = same[:10].tolist()
        more = f" and {same.numel() - 10} more" if same.numel() > 10 else ""
        raise ValueError(f"target: target equals the label for images {idx}{more}; a targeted attack "
                         f"needs target != y (drop those images or choose another target)")


def as_targets(target, n: int, num_classes: Optional[int], device) -> Optional[Tensor]:
    """``None``, one class for every image (an int or a 0-d tensor) or ``N`` class indices →
    ``N`` long targets on ``device``."""
    if target is None:
        return None
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        target = torch.full((n,), int(target), dtype=torch.long)
    elif isinstance(target, Tensor) and target.dim() == 0:
        target = check_labels(target, 1, num_classes, name="target").expand(n)
    return check_labels(target, n, num_classes, name="target").to(device)


def prepare(model, x, y, target=None, generator=None) -> Tuple[Tensor, Tensor, Optional[Tensor],
                                                               torch.Generator]:
    """Validate one attack call: images, labels, optional targets; returns ``(x, y, target, g)``.

    ``target`` may be ``None`` (untargeted), an int (one class for all images) or ``N`` class indices,
    each different from its image's label (``ValueError`` otherwise). ``generator`` may be a
    ``torch.Generator`` or an int seed in [0, 2**63 - 1] (``None`` → seed 0). The images are
    detached: an attack never backpropagates into its caller's graph.
    """
    check_model(model)
    x = check_images(x, "x", channels=getattr(model, "channels", None)).detach()
    n = x.shape[0]
    num_classes = getattr(model, "num_classes", None)
    y = check_labels(y, n, num_classes, name="y").to(x.device)
    target = as_targets(target, n, num_classes, x.device)
    check_target_differs(y, target)
    g = make_generator(generator)   # on the CPU: the same seed gives the same numbers on any device
    return x, y, target, g


@torch.no_grad()
def clean_predictions(model, x: Tensor, y: Tensor, target: Optional[Tensor]) -> Tensor:
    """The model's classes on the clean images (``N``), checking its output once: ``N×K`` logits
    with every label (and target) ``< K``. Call it with the model frozen (eval mode)."""
    logits = model(x)
    n = x.shape[0]
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != n \
            or logits.shape[1] < 2:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"model: expected N×K logits (K >= 2 classes) for {n} images, got {got}")
    k = logits.shape[1]
    for name, lab in (("y", y), ("target", target)):
        if lab is not None and int(lab.max()) >= k:
            raise ValueError(f"{name}: class index {int(lab.max())} out of range for a model with "
                             f"{k} classes")
    return logits.argmax(1)


def eligible(clean_pred: Tensor, y: Tensor, target: Optional[Tensor]) -> Tensor:
    """Images an attack can succeed on, as :func:`patchbench.metrics.success_rate` counts them: the
    model classifies the clean image correctly (and, targeted, the label is not the target)."""
    ok = clean_pred.to(y.device) == y
    return ok if target is None else ok & (target != y)


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
        m = check_mask(threat, "threat mask", n, h, w, binary=True)
        return m.to(device=x.device, dtype=x.dtype).contiguous()
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


def check_budget(value, name: str) -> float:
    """A budget/step in (0, 1] (images live in [0, 1])."""
    return check_number(value, name, 0.0, 1.0, low_inclusive=False)


def check_loss(loss: str, num_classes: Optional[int] = None, targeted: bool = False,
               choices=LOSSES) -> str:
    """One of ``choices`` (``LookupError`` otherwise); the DLR loss needs 3 (targeted: 4) classes."""
    check_choice(loss, "loss", choices)
    need = 4 if targeted else 3
    if loss == "dlr" and num_classes is not None and num_classes < need:
        raise ValueError(f"the DLR loss needs at least {need} classes, the model has {num_classes}")
    return loss


def check_eot(eot, name: str = "eot"):
    """``None`` or a :class:`patchbench.patches.EOT`."""
    from ..patches import EOT   # lazy: the geometry package is only needed by universal attacks
    if eot is not None and not isinstance(eot, EOT):
        raise TypeError(f"{name}: expected a patchbench.patches.EOT or None, got {type(eot).__name__}")
    return eot


def check_common(attack, *names: str) -> None:
    """Validate (and normalise in place) the usual hyper-parameters of ``attack`` that it has:
    iteration counts are integers >= 1, flags are bools."""
    for name in names:
        v = getattr(attack, name)
        if name in ("steps", "restarts", "epochs", "batch_size"):
            setattr(attack, name, check_positive_int(v, name))
        else:
            setattr(attack, name, check_bool(v, name))


@contextlib.contextmanager
def frozen(model):
    """Eval mode and ``requires_grad=False`` on every parameter for the duration of an attack, so
    backward computes gradients w.r.t. the input only; both are restored afterwards. Inside, the
    model wrapper trusts its inputs (:func:`patchbench._validation.trusted_inputs`: no per-call
    range scan) — attacks validate their images once, at entry, and keep iterates in [0, 1]."""
    params = list(model.parameters()) if hasattr(model, "parameters") else []
    flags = [p.requires_grad for p in params]
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        with trusted_inputs():
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


def per_image_result(model, x: Tensor, y: Tensor, mask: Tensor, target: Optional[Tensor],
                     restarts: int, attempt):
    """Run ``attempt`` with restarts on the frozen model and package the best iterates as the
    :class:`AttackResult` of a per-image attack (the patch is the adversarial image inside the mask).
    One forward pass on the clean images first checks the model's output and gives ``eligible``."""
    from .base import AttackResult

    with frozen(model):
        clean = clean_predictions(model, x, y, target)
        best, history = with_restarts(x.shape[0], x.device, restarts, attempt)
    x_adv = best.x
    return AttackResult(x_adv=x_adv, patch=x_adv * mask, mask=mask, success=best.success.clone(),
                        history=torch.cat(history).tolist(),
                        info=result_info(best, target, restarts_run=len(history)),
                        eligible=eligible(clean, y, target))
