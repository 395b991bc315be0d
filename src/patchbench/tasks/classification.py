"""Image classification: the model returns ``N×K`` logits, the label is one class per image.

Objectives (per-sample loss to MAXIMISE and per-sample success, from one forward pass):

* ``"ce"``: cross-entropy of the label (untargeted) / minus cross-entropy of the target — PGD's loss
  (Madry et al., ICLR 2018, eq. (2)); Brown et al. (2017) eq. (2) for the targeted universal patch.
* ``"dlr"``: Croce & Hein (ICML 2020) difference-of-logits ratio, eq. (6) and its targeted form.
* ``"cw"``: minus the Carlini–Wagner margin ``f = max(Z_y − max_{i≠y} Z_i, −κ)`` (targeted
  ``max(max_{i≠t} Z_i − Z_t, −κ)``), Carlini & Wagner (S&P 2017), objective f6.
* ``"logit-margin"``: LaVAN (Karmon et al., ICML 2018) target-minus-source logits ``Z_t − Z_y``;
  untargeted uses the strongest other class as the target.

Success: untargeted, the predicted class differs from the label; targeted, it equals the target.

Cell metrics (PatchZero, Xu et al. WACV 2023, §4.1 / Table 1): clean and robust accuracy over all
images, the attack success rate over the images the model got right (and, targeted, whose label is
not the target), each with its 95 % Wilson interval (:mod:`patchbench.metrics.classification`).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor

from .base import Task, register

LOSSES = ("ce", "dlr", "cw", "logit-margin")


def _max_other(logits: Tensor, cls: Tensor) -> Tensor:
    """``max_{i≠cls} Z_i`` per row."""
    return logits.scatter(1, cls[:, None], float("-inf")).amax(1)


def objective(loss: str, logits: Tensor, y: Tensor, target: Optional[Tensor],
              kappa: float = 0.0) -> Tuple[Tensor, Tensor]:
    """Per-sample loss to MAXIMISE and per-sample success, from one forward pass (see the module
    docstring for each ``loss``).

    Inner-loop helper: inputs are not validated (``logits`` ``N×K``, ``y``/``target`` ``N`` long on
    the logits' device, ``loss`` one of ``LOSSES``; the attacks check them once, at entry).
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


def attacker_label(attack, adaptive: bool, defense) -> str:
    """How the cell's attacker saw the defense: ``"none"`` (no attack), ``"DO"`` (downstream-only:
    the attack ran on the bare model) or ``"adaptive (<gradient rule>[ + EOT])"`` (PatchZero §3.3;
    Athalye et al. 2018 BPDA/EOT)."""
    if attack is None:
        return "none"
    if not adaptive:
        return "DO"
    grad = getattr(defense, "gradient", "exact")
    eot = " + EOT" if getattr(defense, "randomized", False) else ""
    return f"adaptive ({grad}{eot})"


@register("classification")
class Classification(Task):
    """Classification: ``N×K`` logits, ``N`` labels (and optional ``N`` targets)."""

    outputs = "N×K logits"
    losses = LOSSES

    def objective(self, outputs: Tensor, y: Tensor, target: Optional[Tensor] = None, *,
                  loss: str = "ce", kappa: float = 0.0) -> Tuple[Tensor, Tensor]:
        """:func:`objective` with ``loss`` (default ``"ce"``) and the C&W confidence ``kappa``.

        Inner-loop helper: inputs are not validated (attacks check them once, at entry)."""
        return objective(loss, outputs, y, target, kappa)

    def success(self, outputs: Tensor, y: Tensor, target: Optional[Tensor] = None) -> Tensor:
        """``N`` bool: untargeted, ``argmax ≠ y``; targeted, ``argmax == target``."""
        pred = outputs.argmax(1) if outputs.dim() == 2 else outputs
        return pred != y if target is None else pred == target

    def rates(self, pred_clean: Tensor, pred_adv: Tensor, y: Tensor, target=None):
        """``(clean accuracy, robust accuracy, attack success rate)`` as
        :class:`patchbench.metrics.Rate` (success among the eligible images)."""
        from ..metrics import classification as M
        return (M.accuracy(pred_clean, y), M.accuracy(pred_adv, y),
                M.success_rate(pred_clean, pred_adv, y, target))

    def cell_metrics(self, pred_clean: Tensor, pred_adv: Tensor, y: Tensor, target=None,
                     attacker: str = "none") -> Dict[str, object]:
        """``{"n", "clean_acc", "clean_acc_ci", "robust_acc", "robust_acc_ci", "asr", "asr_ci",
        "asr_n", "attacker"}`` from the predictions on the clean and the attacked images (with no
        attack, pass ``pred_adv = pred_clean``: robust = clean, success 0 over the correct ones)."""
        clean, robust, asr = self.rates(pred_clean, pred_adv, y, target)
        return metrics_of(clean, robust, asr, attacker)


def metrics_of(clean, robust, asr, attacker: str) -> Dict[str, object]:
    """The classification cell metrics from its three :class:`~patchbench.metrics.Rate`."""
    return {"n": clean.n, "clean_acc": clean.value, "clean_acc_ci": [clean.lo, clean.hi],
            "robust_acc": robust.value, "robust_acc_ci": [robust.lo, robust.hi],
            "asr": asr.value, "asr_ci": [asr.lo, asr.hi], "asr_n": asr.n, "attacker": attacker}
