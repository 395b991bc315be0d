"""The ground-truth-mask oracle: perfect patch removal, the upper bound of every removal defense.

PatchZero (Xu et al., WACV 2023), Table 1 "GT Mask" row: the true patch pixels are "zeroed out" and
filled with the dataset's mean pixel value, eq. (3): ``X' = X ⊙ M + X̄ ⊙ ¬M`` (M = 1 on benign
pixels there; here ``mask`` = 1 on patch pixels, so ``X' = X ⊙ (1 − mask) + X̄ ⊙ mask``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .._validation import check_images
from ..models.base import IMAGENET_MEAN
from .base import Defense, register


def _check_mask(mask, x: Tensor) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"GTMaskOracle: mask must be a tensor N×1×H×W, got {type(mask).__name__}")
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    n, _, h, w = x.shape
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (h, w) or mask.shape[0] not in (1, n):
        raise ValueError(f"GTMaskOracle: mask must be {n}×1×{h}×{w} (or 1×1×{h}×{w}) for images of "
                         f"shape {tuple(x.shape)}, got {tuple(mask.shape)}")
    mask = mask.to(device=x.device, dtype=x.dtype)
    if float(mask.min()) < 0 or float(mask.max()) > 1:
        raise ValueError("GTMaskOracle: mask values must lie in [0, 1] (1 = patch pixel)")
    return mask


@register("gt-mask")
class GTMaskOracle(Defense):
    """Fill the *true* patch pixels with the dataset mean (PatchZero's "GT Mask" upper bound).

    The mask comes from the attack (``AttackResult.mask``): set it per batch with
    :meth:`set_mask`, or pass it directly, ``oracle(x, mask=m)``. Differentiable (``"exact"``: the
    output does not depend on the patch pixels at all, so an adaptive attacker gets zero gradient
    there — as it should for a perfect oracle).

    Args:
        fill (float, sequence of per-channel floats, or None; default None): the dataset mean pixel.
            None → the ImageNet mean (0.485, 0.456, 0.406) for RGB images and 0.5 otherwise.

    Shapes: ``x`` ``N×C×H×W`` in [0, 1]; ``mask`` ``N×1×H×W`` (or ``N×H×W``), 1 = patch pixel.

    Example::

        oracle = GTMaskOracle(); oracle.set_mask(res.mask)
        acc = (model(oracle(res.x_adv)).argmax(1) == y).float().mean()
    """

    gradient = "exact"

    def __init__(self, fill: Union[None, float, Sequence[float]] = None):
        super().__init__()
        if fill is not None:
            vals = [float(fill)] if isinstance(fill, (int, float)) else [float(v) for v in fill]
            if not vals or any(not 0.0 <= v <= 1.0 for v in vals):
                raise ValueError(f"GTMaskOracle: fill must be value(s) in [0, 1], got {fill!r}")
            fill = tuple(vals)
        self.fill = fill
        self._mask: Optional[Tensor] = None

    def set_mask(self, mask: Optional[Tensor]) -> "GTMaskOracle":
        """Store the true patch masks for the next calls (``None`` clears them); returns self."""
        if mask is not None and not isinstance(mask, Tensor):
            raise TypeError(f"GTMaskOracle.set_mask: expected a tensor N×1×H×W, got "
                            f"{type(mask).__name__}")
        self._mask = None if mask is None else mask.detach()
        return self

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
        x = check_images(x, "GTMaskOracle input")
        if mask is not None:
            return self._apply(x, _check_mask(mask, x))
        return self.purify(x)

    def purify(self, x: Tensor) -> Tensor:
        if self._mask is None:
            raise ValueError("GTMaskOracle: no mask set; call oracle.set_mask(result.mask) or pass "
                             "oracle(x, mask=m)")
        return self._apply(x, _check_mask(self._mask, x))

    def _apply(self, x: Tensor, mask: Tensor) -> Tensor:
        return x * (1.0 - mask) + self.fill_value(x) * mask
