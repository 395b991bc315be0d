"""Masked AutoPGD: Croce & Hein's step-size-free PGD restricted to the patch region.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, Alg. 1 (momentum α = 0.75, checkpoints p_j, halving condition
with ρ = 0.75); masked as in PatchZero (Xu et al., WACV 2023) eq. (2) with its §4.1 setting
ε = 0.3, step 0.1, 100 iterations.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from .._validation import check_fraction
from ._common import (BestIterate, box, check_budget, check_common, check_loss,
                      per_image_result, prepare, threat_mask, uniform)
from .base import AttackResult, PatchAttack, register


def checkpoints(steps: int) -> set:
    """Iterations w_j = ⌈p_j·N⌉ at which the step size may halve (Croce & Hein 2020, §3.1):
    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)."""
    p_prev, p, out = 0.0, 0.22, set()
    while p < 1.0:
        out.add(max(1, math.ceil(round(p * steps, 6))))   # round: 0.22·100 is 22.000000000000004
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    return out


def _loss_grad(model, x: Tensor, loss_fn, need_grad: bool):
    with torch.set_grad_enabled(need_grad):
        xa = x.detach().requires_grad_(need_grad)
        loss, success = loss_fn(model(xa))
        grad = torch.autograd.grad(loss.sum(), xa)[0] if need_grad else None
    return loss.detach(), success, grad


def apgd(model, x0: Tensor, lo: Tensor, hi: Tensor, mask: Tensor, eta: float, steps: int,
         loss_fn: Callable[[Tensor], tuple], rho: float = 0.75, alpha: float = 0.75):
    """Croce & Hein 2020, Alg. 1 with per-sample step sizes, masked steps and box projection."""
    n = x0.shape[0]
    ck = checkpoints(steps)
    step = torch.full((n, 1, 1, 1), eta, device=x0.device)
    x_adv, x_prev = x0.clone(), x0.clone()
    loss, success, grad = _loss_grad(model, x_adv, loss_fn, steps > 0)
    best = BestIterate(x_adv)
    best.update(x_adv, loss, success)
    x_max, loss_max, grad_max = x_adv.clone(), loss.clone(), grad
    loss_prev, increases = loss, torch.zeros(n, device=x0.device)
    reduced_last = torch.zeros(n, dtype=torch.bool, device=x0.device)
    loss_max_last, last_ck = loss_max.clone(), 0
    hist = torch.empty(steps + 1, device=x0.device)
    hist[0] = loss.mean()
    for k in range(steps):
        with torch.no_grad():
            a = alpha if k > 0 else 1.0   # x^(1) is a plain PGD step (Alg. 1, line 3)
            z = (x_adv + step * mask * grad.sign()).clamp_(lo, hi)
            x_new = (x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev)).clamp_(lo, hi)
            x_prev, x_adv = x_adv, x_new
        last = k == steps - 1
        loss, success, grad = _loss_grad(model, x_adv, loss_fn, not last)
        best.update(x_adv, loss, success)
        hist[k + 1] = loss.mean()
        if last:
            break
        increases += (loss > loss_prev).float()
        loss_prev = loss
        imp = loss > loss_max
        loss_max = torch.where(imp, loss, loss_max)
        x_max = torch.where(imp.view(-1, 1, 1, 1), x_adv, x_max)
        grad_max = torch.where(imp.view(-1, 1, 1, 1), grad, grad_max)
        if k + 1 in ck:
            # condition 1: too few loss increases since the last checkpoint; condition 2: the step
            # was not reduced last time and the best loss did not improve (Alg. 1, eq. (3)-(4)).
            cond1 = increases < rho * (k + 1 - last_ck)
            cond2 = ~reduced_last & (loss_max_last >= loss_max)
            reduce = cond1 | cond2
            r4 = reduce.view(-1, 1, 1, 1)
            step = torch.where(r4, step / 2, step)
            x_adv = torch.where(r4, x_max, x_adv)   # restart from the best point
            x_prev = torch.where(r4, x_max, x_prev)
            grad = torch.where(r4, grad_max, grad)
            reduced_last, loss_max_last, last_ck = reduce, loss_max.clone(), k + 1
            increases.zero_()
    return best, hist


@register("masked-apgd")
class MaskedAPGD(PatchAttack):
    r"""Masked AutoPGD patch attack (Croce & Hein, ICML 2020, Alg. 1; PatchZero, WACV 2023, §4.1).

    Threat model: white-box; the pixels inside the threat mask may change by at most ``eps`` (L∞) and
    stay in [0, 1]. AutoPGD adapts the step size per image: it starts at ``step``, halves it at the
    checkpoints p_j when the loss rose in fewer than ``rho`` of the steps (or the best loss stalled)
    and restarts from the best point; updates use momentum ``alpha``.

    Args:
        eps (float): L∞ budget inside the mask. Default 0.3 (PatchZero §4.1).
        step (float): initial step size. Default 0.1 — PatchZero §4.1 states 0.1; Croce & Hein's
            own default is 2·eps.
        steps (int): iterations. Default 100 (PatchZero §4.1).
        restarts (int): random restarts (later ones only rerun unsuccessful images). Default 1.
        loss (str): ``"ce"`` (default) or ``"dlr"`` (Croce & Hein eq. (6); targeted form needs ≥ 4
            classes), also ``"cw"`` / ``"logit-margin"``.
        rho (float): fraction of increasing steps below which the step halves. Default 0.75.
        alpha (float): momentum. Default 0.75.
        random_start (bool): start from ``x + U(-eps, eps)⊙m``. Default True.

    Shape:
        x: ``N×C×H×W`` in [0, 1]; y, target: ``N``; result.x_adv ``N×C×H×W``; result.mask ``N×1×H×W``.

    Example:
        >>> res = MaskedAPGD(loss="dlr").run(model, x, y, Threat(area=0.02))
        >>> res.success_rate
    """

    def __init__(self, eps: float = 0.3, step: float = 0.1, steps: int = 100, restarts: int = 1,
                 loss: str = "ce", rho: float = 0.75, alpha: float = 0.75, random_start: bool = True):
        self.eps = eps
        self.step = step
        self.steps = steps
        self.restarts = restarts
        self.loss = loss
        self.rho = rho
        self.alpha = alpha
        self.random_start = random_start
        self._check_params()

    def _check_params(self) -> None:
        """Validate the hyper-parameters (at construction, and again in ``run``)."""
        self.eps = check_budget(self.eps, "eps")
        self.step = check_budget(self.step, "step")
        check_common(self, "steps", "restarts", "random_start")
        self.rho = check_fraction(self.rho, "rho", 0.0, 1.0, inclusive=True)
        self.alpha = check_fraction(self.alpha, "alpha", 0.0, 1.0, inclusive=True)
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
        obj = self.task_objective(loss=self.loss)

        def attempt(idx, r):
            xs, ms, los, his, ys = x[idx], mask[idx], lo[idx], hi[idx], y[idx]
            ts = None if target is None else target[idx]
            x0 = xs
            if self.random_start:
                noise = uniform(xs.shape, g, x.device, -float(self.eps), float(self.eps))
                x0 = torch.max(torch.min(xs + noise * ms, his), los)
            return apgd(model, x0, los, his, ms, float(self.step), int(self.steps),
                        lambda z: obj(z, ys, ts), float(self.rho), float(self.alpha))

        return per_image_result(model, x, y, mask, target, int(self.restarts), attempt)
