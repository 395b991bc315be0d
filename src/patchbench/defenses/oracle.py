"""The ground-truth-mask oracle: perfect patch removal, the upper bound of every removal defense.

PatchZero (Xu et al., WACV 2023), Table 1 "GT Mask" row: the true patch pixels are "zeroed out" and
filled with the dataset's mean pixel value, eq. (3): ``X' = X ⊙ M + X̄ ⊙ ¬M`` (M = 1 on benign
pixels there; here ``mask`` = 1 on patch pixels, so ``X' = X ⊙ (1 − mask) + X̄ ⊙ mask``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .._validation import check_images, check_mask, check_tensor_device
from ..models.base import IMAGENET_MEAN
from .base import Defense, check_fill_values, register


def _mask_values_ok(mask: Tensor, name: str) -> None:
    """Type, device, dimensions and exact 0/1 values of a mask, before the images are known."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name}: expected a mask tensor N×1×H×W (1 = patch pixel), got "
                        f"{type(mask).__name__}")
    check_tensor_device(mask, name)
    if mask.dim() not in (2, 3, 4):
        raise ValueError(f"{name}: expected a mask N×1×H×W (or N×H×W / H×W), got shape "
                         f"{tuple(mask.shape)}")
    if mask.is_complex():
        raise TypeError(f"{name}: expected a real-valued mask, got dtype {mask.dtype}")
    if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name}: values must be exactly 0 or 1 (1 = patch pixel)")


def _fit_mask(mask: Tensor, x: Tensor, name: str, check_values: bool = True) -> Tensor:
    """``mask`` (N×1×H×W, N×H×W, 1×1×H×W or H×W) as ``N×1×H×W`` in ``x``'s dtype and device."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name}: expected a mask tensor N×1×H×W (1 = patch pixel), got "
                        f"{type(mask).__name__}")
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    n, _, h, w = x.shape
    if check_values:
        m = check_mask(mask, name, n, h, w, binary=True)
    else:   # values were checked by with_mask: shapes only (no pass over the values)
        m4 = mask[None, None] if mask.dim() == 2 else mask
        if m4.dim() != 4 or m4.shape[1] != 1 or tuple(m4.shape[-2:]) != (h, w) \
                or m4.shape[0] not in (1, n):
            raise ValueError(f"{name}: expected N×1×H×W with N in (1, {n}) and H×W = {h}×{w} for "
                             f"images of shape {tuple(x.shape)}, got shape {tuple(mask.shape)}")
        m = m4.expand(n, 1, h, w)
    return m.to(device=x.device, dtype=x.dtype)


#: the mask of a bound oracle that faces clean images: nothing to repaint
_NO_PATCH = "no patch"


@register("gt-mask")
class GTMaskOracle(Defense):
    """Fill the *true* patch pixels with the dataset mean (PatchZero's "GT Mask" upper bound).

    The mask comes from the attack: ``oracle.for_result(res)`` is the oracle for the images of an
    ``AttackResult`` (it repaints ``res.mask``), ``oracle.with_mask(m)`` the one for a mask known in
    advance (what an adaptive attacker facing the oracle knows), ``oracle.for_result(None)`` the one
    for clean images (nothing to repaint); or pass the mask directly, ``oracle(x, mask=m)``. A bare
    oracle knows no mask, and purifying with it is an error. Differentiable (``"exact"``: the output
    does not depend on the patch pixels at all, so an adaptive attacker gets zero gradient there — as
    it should for a perfect oracle).

    Args:
        fill (float, sequence of per-channel floats, or None; default None): the dataset mean pixel,
            value(s) in [0, 1]. None → the ImageNet mean (0.485, 0.456, 0.406) for RGB images and
            0.5 otherwise.

    Shapes: ``x`` ``N×C×H×W`` in [0, 1]; ``mask`` ``N×1×H×W`` (or ``N×H×W``, ``1×1×H×W``, ``H×W``)
    of exact 0/1 values, 1 = patch pixel. A bound oracle's mask covers its ``N`` images: call it on
    all of them at once.

    Example::

        res = pb.attacks.get("masked-pgd").run(model, x, y, Threat(area=0.02))
        acc = (model(GTMaskOracle().for_result(res)(res.x_adv)).argmax(1) == y).float().mean()
    """

    gradient = "exact"
    uses_true_mask = True

    def __init__(self, fill: Union[None, float, Sequence[float]] = None):
        super().__init__()
        self.fill = None if fill is None else check_fill_values(fill, "fill")
        self._mask = None

    @classmethod
    def from_context(cls, ctx, **options) -> "GTMaskOracle":
        """``fill`` defaults to the context's dataset mean (``ctx.fill``)."""
        if ctx.fill is not None:
            options.setdefault("fill", ctx.fill)
        return super().from_context(ctx, **options)

    def with_mask(self, mask: Optional[Tensor]) -> "GTMaskOracle":
        """A copy of this oracle that repaints ``mask`` (exact 0/1, ``N×1×H×W``; ``None`` = clean
        images, nothing to repaint). Its shape is checked against the images at each call."""
        if mask is not None:
            _mask_values_ok(mask, "mask")
        bound = GTMaskOracle(fill=self.fill).train(self.training)
        bound._mask = _NO_PATCH if mask is None else mask.detach()
        return bound

    def fill_value(self, x: Tensor) -> Tensor:
        """The fill colour as a ``1×C×1×1`` tensor on ``x``'s device."""
        c = x.shape[1]
        vals = self.fill if self.fill is not None else (IMAGENET_MEAN if c == 3 else (0.5,))
        if len(vals) == 1:
            vals = vals * c
        if len(vals) != c:
            raise ValueError(f"GTMaskOracle: fill has {len(vals)} values but the images have {c} "
                             f"channels")
        return torch.tensor(vals, dtype=x.dtype, device=x.device).view(1, c, 1, 1)

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        x = check_images(x, "GTMaskOracle input x")
        if mask is not None:
            return self._repaint(x, _fit_mask(mask, x, "mask"))
        return self.purify(x)

    def purify(self, x: Tensor) -> Tensor:
        if self._mask is None:
            raise ValueError("GTMaskOracle: this oracle does not know where the patch is; use "
                             "oracle.for_result(attack_result) or oracle.with_mask(mask), or call "
                             "oracle(x, mask=m)")
        if isinstance(self._mask, str):   # bound to clean images: repaint nothing
            return self._repaint(x, torch.zeros_like(x[:, :1]))
        return self._repaint(x, _fit_mask(self._mask, x, "mask (with_mask)", check_values=False))

    def _repaint(self, x: Tensor, mask: Tensor) -> Tensor:
        return x * (1.0 - mask) + self.fill_value(x) * mask
