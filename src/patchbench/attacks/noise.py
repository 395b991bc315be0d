"""Whole-image L∞ noise, the adversarial half of the defensive-patch evaluation (Wang et al.,
CVPR 2022, §4: "adversarial noise"): the attacker perturbs every pixel of the image — a defensive
patch already stuck on it included — within an L∞ ball of radius ε.

* ``fgsm``: FGSM (Goodfellow et al., ICLR 2015, eq. 3): one step of size ε along the sign of the
  gradient, from the image itself.
* ``pgd-linf``: PGD-L∞ (Madry et al., ICLR 2018, eq. 2): ``steps`` sign steps of size ``step``
  (default ε/4) from a uniform random start in the ball.

Both are :class:`~patchbench.attacks.MaskedPGD` with the whole image as the mask, so they are *not*
patch attacks: the ``threat`` of a cell is ignored. ``batch_size`` runs the images in chunks that
each start from the same generator state, i.e. as separate runs seeded alike (how the
defensive-patch evaluation always attacked its images, 250 at a time), so a cell's numbers do not
depend on how many images it holds beyond the chunking.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._validation import check_number, check_positive_int, make_generator
from .base import AttackResult, register
from .masked_pgd import MaskedPGD


class _WholeImage(MaskedPGD):
    per_image = True

    def __init__(self, eps: float, step: float, steps: int, random_start: bool,
                 batch_size: Optional[int]):
        super().__init__(eps=eps, step=step, steps=steps, random_start=random_start)
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")

    def run(self, model, x: Tensor, y: Tensor, threat=None, *, target: Optional[Tensor] = None,
            generator=None) -> AttackResult:
        """Perturb all of ``x`` (``threat`` is not used: the mask is the whole image)."""
        g = make_generator(generator, device="cuda" if x.device.type == "cuda" else "cpu")
        full = torch.ones(1, 1, *x.shape[-2:], device=x.device)
        if self.batch_size is None or self.batch_size >= x.shape[0]:
            return super().run(model, x, y, full, target=target, generator=g)
        state = g.get_state()
        parts = []
        for i in range(0, x.shape[0], self.batch_size):
            g.set_state(state)
            sl = slice(i, i + self.batch_size)
            parts.append(super().run(model, x[sl], y[sl], full,
                                     target=None if target is None else target[sl], generator=g))
        return _concat(parts)


def _concat(parts) -> AttackResult:
    def cat(name):
        vals = [getattr(p, name) for p in parts]
        return None if any(v is None for v in vals) else torch.cat(vals)
    return AttackResult(x_adv=cat("x_adv"), patch=cat("patch"), mask=cat("mask"),
                        success=cat("success"), history=list(parts[0].history),
                        info=dict(parts[0].info or {}), eligible=cat("eligible"))


@register("fgsm")
class FGSM(_WholeImage):
    """FGSM (Goodfellow et al. 2015, eq. 3) over the whole image: ``x + ε·sign(∇x L)``, clipped.

    Args: eps: the L∞ radius, in (0, 1] (default 4/255); batch_size: images per run (default all).
    """

    def __init__(self, eps: float = 4 / 255, batch_size: Optional[int] = None):
        eps = check_number(eps, "eps", 0.0, 1.0, low_inclusive=False)
        super().__init__(eps=eps, step=eps, steps=1, random_start=False, batch_size=batch_size)


@register("pgd-linf")
class PGDLinf(_WholeImage):
    """PGD-L∞ (Madry et al. 2018, eq. 2) over the whole image, from a uniform random start.

    Args: eps: the L∞ radius, in (0, 1] (default 4/255); steps (default 10); step: the step size
    (default ε/4); batch_size: images per run (default all).
    """

    def __init__(self, eps: float = 4 / 255, steps: int = 10, step: Optional[float] = None,
                 batch_size: Optional[int] = None):
        eps = check_number(eps, "eps", 0.0, 1.0, low_inclusive=False)
        step = eps / 4 if step is None else check_number(step, "step", 0.0, 1.0, low_inclusive=False)
        super().__init__(eps=eps, step=step, steps=check_positive_int(steps, "steps"),
                         random_start=True, batch_size=batch_size)


__all__ = ["FGSM", "PGDLinf"]
