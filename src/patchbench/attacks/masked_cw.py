"""Masked Carlini–Wagner: the C&W margin objective optimised with Adam over a tanh-parameterised
patch region.

Carlini & Wagner, "Towards evaluating the robustness of neural networks", S&P 2017 (§V: objective
f6 with confidence κ, change of variables x = (tanh w + 1)/2, Adam); masked as in PatchZero
(Xu et al., WACV 2023) §4.1: confidence 0.5, learning rate 0.1, 100 iterations.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._validation import check_nonnegative, check_positive
from ._common import BestIterate, check_common, per_image_result, prepare, threat_mask, uniform
from .base import AttackResult, PatchAttack, register

_TANH_EDGE = 1 - 1e-6   # atanh(±1) is infinite: start a hair inside the box


def cw_descent(model, x: Tensor, mask: Tensor, w0: Tensor, steps: int, lr: float, loss_fn,
               l2_weight: float):
    """Adam on ``w`` with ``x_adv = where(m, (tanh w + 1)/2, x)``; minimises
    ``f(x_adv) + l2_weight·‖x_adv − x‖²`` per image. Scores every iterate; returns (best, history)."""
    inside = mask.expand_as(x) > 0
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    best = BestIterate(x)
    hist = torch.empty(steps + 1, device=x.device)
    for t in range(steps + 1):
        last = t == steps
        with torch.set_grad_enabled(not last):
            x_adv = torch.where(inside, (torch.tanh(w) + 1) / 2, x)
            neg_f, success = loss_fn(model(x_adv))
        best.update(x_adv, neg_f, success)
        hist[t] = neg_f.detach().mean()
        if last:
            break
        total = -neg_f
        if l2_weight:
            total = total + l2_weight * (x_adv - x).pow(2).flatten(1).sum(1)
        opt.zero_grad(set_to_none=True)
        w.grad, = torch.autograd.grad(total.sum(), w)
        opt.step()
    return best, hist


@register("masked-cw")
class MaskedCW(PatchAttack):
    r"""Masked Carlini–Wagner patch attack (C&W, S&P 2017; PatchZero, WACV 2023, §4.1).

    Threat model: white-box; the pixels inside the threat mask are replaced by
    ``(tanh w + 1)/2`` (always in [0, 1]) and ``w`` is optimised with Adam to minimise the margin
    ``f = max(Z_y − max_{i≠y} Z_i, −κ)`` (targeted: ``max(max_{i≠t} Z_i − Z_t, −κ)``), optionally
    plus ``l2_weight·‖x_adv − x‖²``. The most adversarial iterate per image is kept.

    Args:
        confidence (float): κ. Default 0.5 (PatchZero §4.1).
        lr (float): Adam learning rate on ``w``. Default 0.1 (PatchZero §4.1).
        steps (int): Adam iterations per restart. Default 100 (PatchZero §4.1).
        restarts (int): restarts; the first starts at the clean image (C&W), later ones at a
            uniformly random patch and only rerun unsuccessful images. Default 1.
        l2_weight (float): weight of C&W's distance term; 0 (default) leaves the patch unconstrained
            inside its region, as patch attacks do.
        random_start (bool): also start the first restart at a random patch. Default False.

    Shape:
        x: ``N×C×H×W`` in [0, 1]; y, target: ``N``; result.x_adv ``N×C×H×W``; result.mask ``N×1×H×W``.

    Example:
        >>> res = MaskedCW().run(model, x, y, Threat(area=0.02), target=torch.full((len(x),), 3))
        >>> res.success_rate
    """

    def __init__(self, confidence: float = 0.5, lr: float = 0.1, steps: int = 100, restarts: int = 1,
                 l2_weight: float = 0.0, random_start: bool = False):
        self.confidence = confidence
        self.lr = lr
        self.steps = steps
        self.restarts = restarts
        self.l2_weight = l2_weight
        self.random_start = random_start
        self._check()

    def _check(self) -> None:
        """Validate the hyper-parameters (at construction, and again in ``run``): finite numbers,
        ``lr > 0``, ``confidence, l2_weight >= 0``."""
        self.confidence = check_nonnegative(self.confidence, "confidence")
        self.lr = check_positive(self.lr, "lr")
        self.l2_weight = check_nonnegative(self.l2_weight, "l2_weight")
        check_common(self, "steps", "restarts", "random_start")

    def run(self, model, x: Tensor, y: Tensor, threat, *, target: Optional[Tensor] = None,
            generator: Optional[torch.Generator] = None) -> AttackResult:
        """Attack ``model`` on ``x`` (labels ``y``) inside ``threat``'s mask (a Threat or a mask)."""
        x, y, target, g = prepare(model, x, y, target, generator)
        self._check()
        mask = threat_mask(threat, x, g)
        obj = self.task_objective(loss="cw", kappa=float(self.confidence))

        def attempt(idx, r):
            xs, ms, ys = x[idx], mask[idx], y[idx]
            ts = None if target is None else target[idx]
            start = uniform(xs.shape, g, x.device) if (r > 0 or self.random_start) else xs
            w0 = torch.atanh((2 * start - 1).clamp(-_TANH_EDGE, _TANH_EDGE))
            return cw_descent(model, xs, ms, w0, int(self.steps), float(self.lr),
                              lambda z: obj(z, ys, ts),
                              float(self.l2_weight))

        return per_image_result(model, x, y, mask, target, int(self.restarts), attempt)
