"""Masked PGD: L∞ projected sign-gradient ascent restricted to the patch region.

Madry et al. (ICLR 2018) PGD, eq. (1) of PatchZero (Xu et al., WACV 2023); the masked form is
PatchZero eq. (2): only pixels inside the patch region change. PatchZero §4.1 settings: ε = 1.0,
step 0.01, 100 iterations (ImageNet, 2% patches at random locations).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ._common import (BestIterate, box, check_budget, check_common, check_loss,
                      per_image_result, prepare, threat_mask, uniform)
from .base import AttackResult, PatchAttack, register


def sign_ascent(model, x0: Tensor, lo: Tensor, hi: Tensor, step_m: Tensor, steps: int,
                loss_fn: Callable[[Tensor], tuple], early_stop: bool = False,
                check_every: int = 10) -> tuple[BestIterate, Tensor]:
    """``steps`` iterations of ``x ← clip_[lo,hi](x + step⊙m·sign(∇ loss))`` from ``x0``.

    One forward + backward (w.r.t. the input only) and three in-place tensor ops per iteration; no
    host synchronisation. Every iterate x_0 … x_steps is scored (the last one with a forward only).
    With ``early_stop`` the loop ends once every sample has succeeded (checked every
    ``check_every`` iterations, one host sync each): samples are independent and the best iterate is
    kept, so per-sample success equals that of the full run; only the loss keeps no longer rising.
    Returns the :class:`BestIterate` tracker and the mean loss per iterate run.
    """
    x_adv = x0.clone()
    best = BestIterate(x_adv)
    hist = torch.empty(steps + 1, device=x0.device)
    for t in range(steps + 1):
        last = t == steps
        with torch.set_grad_enabled(not last):
            xa = x_adv.detach().requires_grad_(not last)
            loss, success = loss_fn(model(xa))
        best.update(x_adv, loss, success)
        hist[t] = loss.detach().mean()
        if last:
            break
        if early_stop and t % check_every == 0 and bool(best.success.all()):
            return best, hist[:t + 1]
        grad, = torch.autograd.grad(loss.sum(), xa)
        x_adv.addcmul_(grad.sign_(), step_m).clamp_(lo, hi)
    return best, hist


@register("masked-pgd")
class MaskedPGD(PatchAttack):
    r"""Masked PGD patch attack (PatchZero, Xu et al. WACV 2023, §3 eq. (2); Madry et al. 2018).

    Threat model: white-box; per image, the pixels inside the threat mask ``m`` may change by at most
    ``eps`` (L∞) and stay in [0, 1]: ``x_adv = clip(x + δ⊙m)``, ``‖δ‖∞ ≤ eps``. With ``eps=1`` the
    patch pixels are free. Untargeted maximises CE(label); targeted minimises CE(target).
    The most adversarial iterate per sample is kept (success first, then loss); no early stop.

    Args:
        eps (float): L∞ budget on δ inside the mask. Default 1.0 (PatchZero §4.1).
        step (float): step size α. Default 0.01 (PatchZero §4.1).
        steps (int): iterations per restart. Default 100 (PatchZero §4.1).
        restarts (int): random restarts; restarts after the first only rerun unsuccessful images.
            Default 1.
        random_start (bool): start from ``x + U(-eps, eps)⊙m`` instead of ``x``. Default True.
        loss (str): ``"ce"`` (default), ``"dlr"``, ``"cw"`` or ``"logit-margin"``.
        early_stop (bool): stop once every image of the batch is fooled (same per-image success as
            the full run, less compute; the best iterate's loss is then not maximised further).
            Default False.

    Shape:
        x: ``N×C×H×W`` in [0, 1]; y, target: ``N``; result.x_adv: ``N×C×H×W``; result.mask ``N×1×H×W``.

    Example:
        >>> res = MaskedPGD(steps=100).run(model, x, y, Threat(area=0.02))
        >>> res.success_rate
    """

    def __init__(self, eps: float = 1.0, step: float = 0.01, steps: int = 100, restarts: int = 1,
                 random_start: bool = True, loss: str = "ce", early_stop: bool = False):
        self.eps = eps
        self.step = step
        self.steps = steps
        self.restarts = restarts
        self.random_start = random_start
        self.loss = loss
        self.early_stop = early_stop
        self._check_params()

    def _check_params(self) -> None:
        """Validate the hyper-parameters (at construction, and again in ``run`` since they may have
        been changed since); numbers are stored as float/int."""
        self.eps = check_budget(self.eps, "eps")
        self.step = check_budget(self.step, "step")
        check_common(self, "steps", "restarts", "random_start", "early_stop")
        check_loss(self.loss)

    def _check(self, model, target) -> None:
        self._check_params()
        check_loss(self.loss, getattr(model, "num_classes", None), target is not None)

    def run(self, model, x: Tensor, y: Tensor, threat, *, target: Optional[Tensor] = None,
            generator: Optional[torch.Generator] = None) -> AttackResult:
        """Attack ``model`` on ``x`` (labels ``y``) inside ``threat``'s mask (a Threat or a mask)."""
        x, y, target, g = prepare(model, x, y, target, generator)
        self._check(model, target)
        mask = threat_mask(threat, x, g)
        lo, hi = box(x, mask, float(self.eps))
        step_m = mask * float(self.step)
        obj = self.task_objective(loss=self.loss)

        def attempt(idx, r):
            xs, los, his, ys = x[idx], lo[idx], hi[idx], y[idx]
            ts = None if target is None else target[idx]
            x0 = xs
            if self.random_start:
                noise = uniform(xs.shape, g, x.device, -float(self.eps), float(self.eps))
                x0 = torch.max(torch.min(xs + noise * mask[idx], his), los)
            return sign_ascent(model, x0, los, his, step_m[idx], int(self.steps),
                               lambda z: obj(z, ys, ts), bool(self.early_stop))

        return per_image_result(model, x, y, mask, target, int(self.restarts), attempt)
