"""LaVAN: localized and visible adversarial noise (Karmon, Zoran & Goldberg, ICML 2018).

The noise fully replaces the masked pixels, ``x' = (1 − m)⊙x + m⊙δ``, and the loss is the
target-minus-source logit difference ``M(ȳ | x') − M(ŷ | x')`` on pre-softmax activations (Karmon et
al. 2018, §2; restated as eq. (3) in You-Wei & Sheng-De, ICAART 2022). Per-image or universal.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._validation import check_positive
from ._common import (box, check_budget, check_common, check_eot, per_image_result, prepare,
                      threat_mask, uniform)
from .base import AttackResult, PatchAttack, register
from .masked_pgd import sign_ascent
from .universal import UniversalPatch


@register("lavan")
class LaVAN(PatchAttack):
    r"""LaVAN patch attack (Karmon et al. 2018): maximise ``Z_target − Z_source``.

    Threat model: white-box; the patch replaces (does not add to) the pixels under the threat mask
    and takes any value in [0, 1]. Targeted: ``Z_t − Z_y``; untargeted: the strongest other class
    plays the target, ``max_{i≠y} Z_i − Z_y``. Per-image mode optimises each image's patch region
    with signed-gradient ascent from uniform noise (restarts rerun unsuccessful images); universal
    mode trains one ``C×h×w`` patch over the images with random placements via
    :class:`UniversalPatch` (``loss="logit-margin"``).

    Args:
        steps (int): ascent iterations per restart (per-image mode). Default 200.
        step (float): signed-gradient step (per-image mode). Default 0.05.
        restarts (int): random restarts (per-image mode). Default 1.
        universal (bool): train one patch for all images. Default False.
        epochs (int): passes over the images (universal mode). Default 10.
        batch_size (int): mini-batch (universal mode). Default 32.
        lr (float): Adam learning rate (universal mode). Default 0.05.
        eot: optional ``patchbench.patches.EOT`` (universal mode).

    Shape:
        x: ``N×C×H×W`` in [0, 1]; y, target: ``N``; result.x_adv ``N×C×H×W``; result.mask ``N×1×H×W``;
        result.patch ``N×C×H×W`` (per-image) or ``C×h×w`` (universal).

    Example:
        >>> res = LaVAN(steps=200).run(model, x, y, Threat(area=0.02), target=torch.full((len(x),), 3))
        >>> res.success_rate
    """

    def __init__(self, steps: int = 200, step: float = 0.05, restarts: int = 1, universal: bool = False,
                 epochs: int = 10, batch_size: int = 32, lr: float = 0.05, eot=None):
        self.steps = steps
        self.step = step
        self.restarts = restarts
        self.universal = universal
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.eot = eot
        self._check_params()

    @property
    def per_image(self) -> bool:
        """Per-image mode optimises inside a given mask; universal mode draws its placements."""
        return not self.universal

    def _check_params(self) -> None:
        """Validate the hyper-parameters of both modes (at construction, and again when used)."""
        self.step = check_budget(self.step, "step")
        self.lr = check_positive(self.lr, "lr")
        check_common(self, "steps", "restarts", "epochs", "batch_size", "universal")
        check_eot(self.eot)

    def _universal(self) -> UniversalPatch:
        self._check_params()
        return UniversalPatch(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                              optimizer="adam", loss="logit-margin", eot=self.eot)

    def fit(self, model, data, threat, *, target=None, generator=None) -> Tensor:
        """Universal mode: train one LaVAN patch on ``data`` (see :meth:`UniversalPatch.fit`)."""
        return self._universal().fit(model, data, threat, target=target, generator=generator)

    def apply(self, model, x, y, threat, patch, *, target=None, generator=None) -> AttackResult:
        """Universal mode: paste a trained patch on ``x`` (see :meth:`UniversalPatch.apply`)."""
        return self._universal().apply(model, x, y, threat, patch, target=target, generator=generator)

    def run(self, model, x: Tensor, y: Tensor, threat, *, target: Optional[Tensor] = None,
            generator: Optional[torch.Generator] = None) -> AttackResult:
        """Attack ``model`` on ``x`` (labels ``y``) inside ``threat``'s mask (a Threat or a mask)."""
        self._check_params()
        if self.universal:
            return self._universal().run(model, x, y, threat, target=target, generator=generator)
        x, y, target, g = prepare(model, x, y, target, generator)
        step = self.step
        mask = threat_mask(threat, x, g)
        lo, hi = box(x, mask, 1.0)   # inside the mask: any value in [0, 1] (replacement)
        step_m = mask * step
        obj = self.task_objective(loss="logit-margin")

        def attempt(idx, r):
            xs, ms, ys = x[idx], mask[idx], y[idx]
            ts = None if target is None else target[idx]
            x0 = torch.where(ms.expand_as(xs) > 0, uniform(xs.shape, g, x.device), xs)
            return sign_ascent(model, x0, lo[idx], hi[idx], step_m[idx], int(self.steps),
                               lambda z: obj(z, ys, ts))

        return per_image_result(model, x, y, mask, target, int(self.restarts), attempt)
