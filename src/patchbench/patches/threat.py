"""The patch threat model: how large, what shape, where, and under which physical transformations.

A :class:`Threat` is the one object attacks, defense trainers and benchmarks share. Its size follows
PatchZero's convention (Xu et al. WACV 2023, Sec. 5.1): a fraction of the image area (2% rectangles
on ImageNet, 9% squares on RESISC-45) at random locations. ``eot`` adds the physical transformation
distribution of Brown et al. (2017, Sec. 2) / Athalye et al. (2018, Eq. 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .._validation import check_fraction, check_images, make_generator
from .physical import EOT
from .placement import (CenterPlacement, FixedPlacement, Placement, PlacementParams,
                        RandomPlacement, _check_hw, _check_n)
from .render import paste as _paste
from .render import render_mask
from .shapes import ShapeFit, check_shape, check_shape_args, fit_shape
from .shapes import shape_mask as _shape_mask


def _resolve_placement(placement) -> Placement:
    if isinstance(placement, Placement):
        return placement
    if isinstance(placement, str):
        key = placement.lower()
        if key == "random":
            return RandomPlacement()
        if key in ("center", "centre"):
            return CenterPlacement()
        raise ValueError(f"Threat: placement must be 'random', 'center', an (x, y) pair of "
                         f"fractions or a Placement object, got {placement!r}")
    if isinstance(placement, (tuple, list)) and len(placement) == 2:
        return FixedPlacement(*placement)
    raise TypeError(f"Threat: placement must be 'random', 'center', an (x, y) pair of fractions or "
                    f"a Placement object, got {type(placement).__name__} {placement!r}")


def _image_hw(hw) -> Tuple[int, int]:
    if isinstance(hw, Tensor):
        if hw.dim() < 2:
            raise ValueError(f"Threat: expected images (…×H×W) or an (H, W) pair, got a tensor of "
                             f"shape {tuple(hw.shape)}")
        return int(hw.shape[-2]), int(hw.shape[-1])
    return _check_hw(hw, "image_hw")


def _corner_extent(patch_hw, scale: Tensor, angle: Tensor, perspective: Tensor) -> Tensor:
    """N×4 (x_min, x_max, y_min, y_max) of the transformed patch's corners around its centre."""
    params = PlacementParams(torch.zeros(scale.shape[0], 2, device=scale.device), tuple(patch_hw),
                             (1, 1), scale, angle, perspective)
    c = params.corners()
    return torch.stack([c[..., 0].amin(1), c[..., 0].amax(1), c[..., 1].amin(1),
                        c[..., 1].amax(1)], 1)


@dataclass(frozen=True)
class Threat:
    """A patch threat model: size (fraction of the image), shape, placement and optional EOT.

    Arguments:
        area (float): fraction of the image's pixels the patch *mask* covers, in (0, 1). Default 0.05.
        shape (str): one of ``SHAPES`` ("square", "rectangle", "circle", "ellipse", "diamond",
            "octagon", "ring", "border"). Default "square".
        placement: "random" (uniform, fully inside the image), "center", ``(fx, fy)`` fractions of
            the free space, or a :class:`Placement` (e.g. ``BoxPlacement(face_boxes)``). Default
            "random".
        aspect (float): width/height of the patch's bounding box (ignored by "border"). Default 1.0.
        eot (EOT or None): physical transformations sampled with every placement. Default None.
        ring_width (float or None): band thickness for "ring"/"border" (see ``shape_mask``); None
            = the shape's default ("border" then hugs the image edge). Default None.

    Shapes: ``masks(x)`` and ``paste(x, patch, params)[1]`` are N×1×H×W, exactly 0/1; patches are
    ``C×h×w`` with ``(h, w) = patch_size((H, W))``.

    Example::
        >>> threat = Threat(area=0.02, shape="rectangle", aspect=2.0)
        >>> params = threat.sample(len(x), x.shape[-2:], generator=0)
        >>> x_p, m = threat.paste(x, torch.rand(3, *threat.patch_size(x.shape[-2:])), params)
    """

    area: float = 0.05
    shape: str = "square"
    placement: Union[str, Tuple[float, float], Placement] = "random"
    aspect: float = 1.0
    eot: Optional[EOT] = None
    ring_width: Optional[float] = None
    _placement: Placement = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "area", check_fraction(self.area, "Threat area", 0.0, 1.0))
        object.__setattr__(self, "shape", check_shape(self.shape))
        if self.eot is not None and not isinstance(self.eot, EOT):
            raise TypeError(f"Threat: eot must be an EOT or None, got {type(self.eot).__name__}")
        object.__setattr__(self, "_placement", _resolve_placement(self.placement))
        aspect, ring_width = check_shape_args(self.shape, self.aspect, self.ring_width)
        object.__setattr__(self, "aspect", aspect)
        object.__setattr__(self, "ring_width", ring_width)

    def fit(self, image_hw) -> ShapeFit:
        """Bounding box and band width of the patch for images of size ``image_hw``."""
        return fit_shape(self.shape, self.area, _image_hw(image_hw), self.aspect, self.ring_width)

    def patch_size(self, image_hw) -> Tuple[int, int]:
        """``(h, w)`` of the patch for ``(H, W)`` images (or an image tensor): mask area ≈ area·H·W."""
        f = self.fit(image_hw)
        return f.h, f.w

    def shape_mask(self, hw, *, device=None) -> Tensor:
        """The ``h×w`` 0/1 shape mask of the patch for images of size ``hw`` = ``(H, W)`` (or an image
        tensor, whose last two dimensions are used)."""
        f = self.fit(hw)
        return _shape_mask(self.shape, f.h, f.w, device=device, ring_width=f.ring_width)

    def sample(self, n: int, image_hw, generator=None, eot: Optional[EOT] = None) -> PlacementParams:
        """Per-sample geometry (and photometric EOT parameters) for ``n`` images of ``image_hw``.

        ``generator``: a ``torch.Generator`` or a seed (``None`` = seed 0); the same seed gives the
        same parameters. ``eot`` overrides the threat's own EOT for this call.
        """
        n, hw = _check_n(n), _image_hw(image_hw)
        g = make_generator(generator)
        eot = self.eot if eot is None else eot
        patch_hw = self.patch_size(hw)
        if eot is None:
            return self._placement.sample(n, hw, patch_hw, g)
        if not isinstance(eot, EOT):
            raise TypeError(f"Threat.sample: eot must be an EOT or None, got {type(eot).__name__}")
        e = eot.sample(n, g)
        moved = bool((e.scale != 1).any() or (e.angle != 0).any() or (e.perspective != 0).any())
        extent = _corner_extent(patch_hw, e.scale, e.angle, e.perspective) if moved else None
        params = self._placement.sample(n, hw, patch_hw, g, extent=extent)
        return replace(params, scale=params.scale * e.scale.to(params.scale.device),
                       angle=e.angle.to(params.scale.device),
                       perspective=e.perspective.to(params.scale.device),
                       photometric=e.photometric.to(params.scale.device))

    def masks(self, x: Tensor, generator=None) -> Tensor:
        """N×1×H×W exact 0/1 masks for images ``x`` (one placement per image), on ``x``'s device."""
        x = check_images(x, "Threat.masks: x")
        params = self.sample(x.shape[0], x.shape[-2:], generator=generator)
        return render_mask(self.shape_mask(x.shape[-2:]), params, device=x.device)

    def paste(self, x: Tensor, patch: Tensor, params: PlacementParams) -> Tuple[Tensor, Tensor]:
        """``(x_p, m)``: ``patch`` (C×h×w universal or N×C×h×w) pasted into ``x`` per ``params``;
        see :func:`patchbench.patches.paste`."""
        if not isinstance(params, PlacementParams):
            raise TypeError(f"Threat.paste: params must be PlacementParams from Threat.sample(), got "
                            f"{type(params).__name__}")
        if not isinstance(x, Tensor) or x.dim() != 4:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Threat.paste: x must be images N×C×H×W, got {got}")
        return _paste(x, patch, self.shape_mask(x.shape[-2:]), params)
