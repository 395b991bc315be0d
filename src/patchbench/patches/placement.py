"""Where a patch lands: per-sample placement parameters and the placements that sample them.

Kornia-style split (STYLE.md): a placement's ``sample(n, image_hw, patch_hw, generator)`` returns a
:class:`PlacementParams` holding per-sample tensors; :func:`patchbench.patches.paste` applies them.
The same parameters re-applied give the same patched images *and* the same ground-truth mask, so the
attack, the oracle defense and the report all see one geometry.

Placements: fixed / centre / uniformly random with the patch fully inside the image (PatchZero, Xu et
al. WACV 2023, Sec. 5.1: "patch locations are random"), and relative to per-image boxes (Yang et al.
ECCV 2020, Sec. 3.2: a patch of side α·sqrt(w·h) with centre (w/2, α·sqrt(w·h)/2) in the face box,
α = 0.5; Sec. 4.3 also uses centre and bottom anchors).
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._validation import check_fraction, check_positive_int, make_generator
from .physical import PhotometricParams, _take
from .shapes import check_hw


@dataclass
class PlacementParams:
    """Per-sample geometry of a pasted patch (all tensors have a leading dimension N).

    Coordinates are in pixels with pixel ``i`` spanning ``[i, i+1)``; x to the right, y down.

    Attributes:
        center: N×2 ``(x, y)`` of the patch centre in the image.
        patch_hw: ``(h, w)`` of the patch's bounding box at scale 1.
        image_hw: ``(H, W)`` of the images.
        scale: N isotropic scale factors.
        angle: N rotations in degrees (counter-clockwise as seen on screen, as in kornia).
        perspective: N×4×2 offsets of the corners TL, TR, BR, BL as fractions of ``(w, h)``.
        photometric: optional :class:`~patchbench.patches.physical.PhotometricParams` (EOT).
    """

    center: Tensor
    patch_hw: Tuple[int, int]
    image_hw: Tuple[int, int]
    scale: Tensor
    angle: Tensor
    perspective: Tensor
    photometric: Optional[PhotometricParams] = None

    def __post_init__(self):
        # Derived values computed once per parameter object (dataclasses.replace builds a new
        # object, so a changed geometry never sees a stale entry).
        self._cache = {}

    @classmethod
    def translation(cls, center: Tensor, patch_hw, image_hw) -> "PlacementParams":
        """Pure translation: scale 1, no rotation, no perspective."""
        n, dev = center.shape[0], center.device
        return cls(center.float(), tuple(patch_hw), tuple(image_hw), torch.ones(n, device=dev),
                   torch.zeros(n, device=dev), torch.zeros(n, 4, 2, device=dev))

    @property
    def n(self) -> int:
        return int(self.center.shape[0])

    @property
    def top_left(self) -> Tensor:
        """N×2 ``(x, y)`` of the scaled, unrotated bounding box's top-left corner."""
        h, w = self.patch_hw
        return self.center - self.scale.unsqueeze(1) * self.center.new_tensor([w / 2, h / 2])

    @property
    def is_integer_translation(self) -> bool:
        """True when every sample is an integer shift that keeps the patch inside the image — then
        :func:`paste` takes its exact slicing path (computed once per parameter object)."""
        if "integer" not in self._cache:
            h, w = self.patch_hw
            H, W = self.image_hw
            tl = self.top_left
            self._cache["integer"] = bool(
                (self.scale == 1).all() and (self.angle == 0).all()
                and (self.perspective == 0).all() and (tl == tl.round()).all()
                and (tl >= 0).all() and (tl[:, 0] + w <= W).all() and (tl[:, 1] + h <= H).all())
        return self._cache["integer"]

    def window(self) -> Tuple[Tensor, Tuple[int, int]]:
        """Integer pixel windows holding every transformed patch: origins N×2 ``(x, y)`` (long) and
        one common size ``(hc, wc)`` <= the image size; windows are shifted to lie inside the image
        and always contain the part of the transformed patch that lies in the image."""
        if "window" not in self._cache:
            H, W = self.image_hw
            if self.is_integer_translation:
                origin, size = self.top_left.round().long(), tuple(self.patch_hw)
            else:
                c = self.corners().double()
                lo, hi = c.amin(1).floor(), c.amax(1).ceil()
                span = (hi - lo).amax(0)
                size = (min(H, int(span[1]) + 1), min(W, int(span[0]) + 1))
                limit = lo.new_tensor([W - size[1], H - size[0]])
                origin = torch.minimum(lo.clamp_min(0), limit).long()
            self._cache["window"] = (origin, size)
        return self._cache["window"]

    def homography(self) -> Tensor:
        """N×3×3 matrices mapping patch pixel coordinates to image pixel coordinates:
        ``T(center) · R(angle) · S(scale) · T(−w/2, −h/2) · P(perspective)``."""
        h, w = self.patch_hw
        dev, n = self.center.device, self.n
        a, s = torch.deg2rad(self.angle.double()), self.scale.double()
        cos, sin = torch.cos(a) * s, torch.sin(a) * s
        m = torch.zeros(n, 3, 3, dtype=torch.float64, device=dev)
        m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, sin, -sin, cos
        c = self.center.double()
        m[:, 0, 2] = c[:, 0] - (cos * w / 2 + sin * h / 2)
        m[:, 1, 2] = c[:, 1] - (-sin * w / 2 + cos * h / 2)
        m[:, 2, 2] = 1.0
        if bool((self.perspective != 0).any()):
            m = m @ _perspective_matrix(self.perspective.double(), h, w)
        return m

    def corners(self) -> Tensor:
        """N×4×2 image coordinates of the patch's corners TL, TR, BR, BL after the transform."""
        h, w = self.patch_hw
        src = self.center.new_tensor([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]]).double()
        p = torch.einsum("nij,kj->nki", self.homography(), src)
        return (p[..., :2] / p[..., 2:]).to(self.center.dtype)

    def to(self, device) -> "PlacementParams":
        """The same parameters on ``device`` (``self`` if already there, keeping cached flags)."""
        device = torch.device(device)

        def same(d: torch.device) -> bool:
            return d.type == device.type and (device.index is None or d.index == device.index)

        if same(self.center.device) and (self.photometric is None
                                         or same(self.photometric.brightness.device)):
            return self
        origin, size = self.window()              # computed where the parameters live (cheap)
        out = replace(self, center=self.center.to(device), scale=self.scale.to(device),
                      angle=self.angle.to(device), perspective=self.perspective.to(device),
                      photometric=None if self.photometric is None
                      else self.photometric.to(device))
        out._cache.update(integer=self.is_integer_translation, window=(origin.to(device), size))
        return out

    def index(self, i) -> "PlacementParams":
        """The parameters of sample(s) ``i`` (an int keeps a batch of one)."""
        return replace(self, center=_take(self.center, i), scale=_take(self.scale, i),
                       angle=_take(self.angle, i), perspective=_take(self.perspective, i),
                       photometric=None if self.photometric is None
                       else self.photometric.index(i))


def _perspective_matrix(offsets: Tensor, h: int, w: int) -> Tensor:
    """N×3×3 homographies taking the patch corners to the corners moved by ``offsets`` (N×4×2,
    fractions of w/h), solved from the four correspondences (direct linear transform)."""
    src = offsets.new_tensor([[0, 0], [w, 0], [w, h], [0, h]]).expand(offsets.shape[0], 4, 2)
    dst = src + offsets * offsets.new_tensor([w, h])
    x, y, u, v = src[..., 0], src[..., 1], dst[..., 0], dst[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    a = torch.cat([rows_u, rows_v], 1)                                     # N×8×8
    b = torch.cat([u, v], 1).unsqueeze(-1)                                 # N×8×1
    sol = torch.linalg.solve(a, b).squeeze(-1)
    return torch.cat([sol, torch.ones_like(sol[:, :1])], 1).view(-1, 3, 3)


def _check_hw(hw, name: str) -> Tuple[int, int]:
    return check_hw(hw, name)


def _check_n(n) -> int:
    return check_positive_int(n, "placement: n")


class Placement(abc.ABC):
    """Samples :class:`PlacementParams`; subclasses implement :meth:`sample`."""

    @abc.abstractmethod
    def sample(self, n: int, image_hw, patch_hw, generator: Optional[torch.Generator] = None, *,
               extent: Optional[Tensor] = None) -> PlacementParams:
        """Place ``n`` patches of size ``patch_hw`` on ``image_hw`` images.

        ``extent`` (N×4: x_min, x_max, y_min, y_max of the transformed patch relative to its centre,
        e.g. after EOT rotation/scale) lets position-sampling placements keep the *transformed* patch
        inside the image; by default the patch is an untransformed ``h×w`` box.
        """

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _free_range(n, image_hw, patch_hw, extent, device) -> Tuple[Tensor, Tensor]:
    """Per-sample allowed centre range ``lo, hi`` (N×2 each) so the patch stays inside the image."""
    H, W = image_hw
    h, w = patch_hw
    if extent is None:
        extent = torch.tensor([[-w / 2, w / 2, -h / 2, h / 2]], device=device).expand(n, 4)
    if not isinstance(extent, Tensor) or extent.shape != (n, 4):
        got = tuple(extent.shape) if isinstance(extent, Tensor) else type(extent).__name__
        raise ValueError(f"placement: extent must be N×4 with N={n}, got {got}")
    extent = extent.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(extent).all()):
        raise ValueError("placement: extent contains NaN or Inf")
    lo = torch.stack([-extent[:, 0], -extent[:, 2]], 1)
    hi = torch.stack([W - extent[:, 1], H - extent[:, 3]], 1)
    if bool((hi < lo - 1e-4).any()):
        raise ValueError(f"placement: a patch of size {h}×{w} (after its transform) does not fit a "
                         f"{H}×{W} image")
    return lo, torch.maximum(hi, lo)


class FixedPlacement(Placement):
    """The same position for every image: ``(x, y)`` are fractions of the free space, so ``(0, 0)``
    is the top-left corner, ``(1, 1)`` the bottom-right one and ``(0.5, 0.5)`` the centre. Without an
    ``extent`` the top-left corner is rounded to whole pixels (the exact, fast paste path).

    Example::
        >>> FixedPlacement(0.0, 1.0).sample(2, (32, 32), (8, 8)).top_left
        tensor([[ 0., 24.], [ 0., 24.]])
    """

    def __init__(self, x: float = 0.5, y: float = 0.5):
        self.x = check_fraction(x, "FixedPlacement x", 0.0, 1.0, inclusive=True)
        self.y = check_fraction(y, "FixedPlacement y", 0.0, 1.0, inclusive=True)

    def sample(self, n, image_hw, patch_hw, generator=None, *, extent=None) -> PlacementParams:
        n, image_hw, patch_hw = _check_n(n), _check_hw(image_hw, "image_hw"), _check_hw(
            patch_hw, "patch_hw")
        dev = make_generator(generator).device
        lo, hi = _free_range(n, image_hw, patch_hw, extent, dev)
        frac = torch.tensor([self.x, self.y], device=dev)
        h, w = patch_hw
        if extent is None:   # integer top-left corner
            half = torch.tensor([w / 2, h / 2], device=dev)
            tl = torch.floor((hi - lo) * frac + 0.5)
            center = tl + half
        else:
            center = lo + (hi - lo) * frac
        return PlacementParams.translation(center, patch_hw, image_hw)


class CenterPlacement(FixedPlacement):
    """The patch centred on every image (``FixedPlacement(0.5, 0.5)``)."""

    def __init__(self):
        super().__init__(0.5, 0.5)

    def __repr__(self) -> str:
        return "CenterPlacement()"


class RandomPlacement(Placement):
    """Uniform over all positions where the patch lies fully inside the image (PatchZero Sec. 5.1).
    Without an ``extent`` the top-left corner is a uniform *integer* pixel position.

    Example::
        >>> p = RandomPlacement().sample(4, (64, 64), (10, 10), torch.Generator().manual_seed(0))
    """

    def sample(self, n, image_hw, patch_hw, generator=None, *, extent=None) -> PlacementParams:
        n, image_hw, patch_hw = _check_n(n), _check_hw(image_hw, "image_hw"), _check_hw(
            patch_hw, "patch_hw")
        g = make_generator(generator)
        lo, hi = _free_range(n, image_hw, patch_hw, extent, g.device)
        h, w = patch_hw
        if extent is None:
            H, W = image_hw
            tl = torch.stack([torch.randint(0, W - w + 1, (n,), generator=g, device=g.device),
                              torch.randint(0, H - h + 1, (n,), generator=g, device=g.device)], 1)
            center = tl.float() + torch.tensor([w / 2, h / 2], device=g.device)
        else:
            center = lo + (hi - lo) * torch.rand(n, 2, generator=g, device=g.device)
        return PlacementParams.translation(center, patch_hw, image_hw)


_ANCHORS = ("top-center", "center", "bottom-center")


class BoxPlacement(Placement):
    """Relative to per-image boxes (e.g. face boxes), after Yang et al. (ECCV 2020, Sec. 3.2).

    Arguments:
        boxes: N×4 ``(x1, y1, x2, y2)`` in pixels, one box per image; must lie inside the image and
            have positive width and height.
        anchor: "top-center" (paper default: centre ``(w/2, α·sqrt(w·h)/2)`` in the box),
            "center" or "bottom-center" (centre ``(w/2, h − α·sqrt(w·h)/2)``).
        alpha: the patch is scaled so that its size is ``alpha·sqrt(w·h)`` of the box (geometric
            mean of its sides; a square patch gets side ``alpha·sqrt(w·h)``). ``None``: no scaling.
            Default 0.5 (the paper's).

    Example::
        >>> boxes = torch.tensor([[181., 62., 268., 172.]])      # MTCNN on skimage's astronaut
        >>> params = BoxPlacement(boxes).sample(1, (512, 512), (128, 128))
    """

    def __init__(self, boxes, anchor: str = "top-center", alpha: Optional[float] = 0.5):
        if isinstance(boxes, (str, bytes)) or boxes is None:
            raise TypeError(f"BoxPlacement: boxes must be N×4 (x1, y1, x2, y2), got {boxes!r}")
        try:
            b = torch.as_tensor(boxes, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"BoxPlacement: boxes must be N×4 (x1, y1, x2, y2), got "
                            f"{type(boxes).__name__}") from e
        if b.dim() == 1:
            b = b.unsqueeze(0)
        if b.dim() != 2 or b.shape[1] != 4 or b.shape[0] == 0:
            raise ValueError(f"BoxPlacement: boxes must be N×4 (x1, y1, x2, y2), got shape "
                             f"{tuple(b.shape)}")
        if not bool(torch.isfinite(b).all()):
            raise ValueError("BoxPlacement: boxes contain NaN or Inf")
        bad = ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).nonzero().flatten()
        if bad.numel():
            raise ValueError(f"BoxPlacement: box {int(bad[0])} {b[bad[0]].tolist()} has zero or "
                             f"negative size (expected x2 > x1 and y2 > y1)")
        if not isinstance(anchor, str) or anchor not in _ANCHORS:
            raise ValueError(f"BoxPlacement: anchor must be one of {_ANCHORS}, got {anchor!r}")
        self.boxes = b
        self.anchor = anchor
        self.alpha = None if alpha is None else check_fraction(alpha, "alpha", 0.0, 1.0,
                                                               inclusive=True)
        if self.alpha == 0.0:
            raise ValueError("BoxPlacement: alpha must be > 0")

    def sample(self, n, image_hw, patch_hw, generator=None, *, extent=None) -> PlacementParams:
        n, image_hw, patch_hw = _check_n(n), _check_hw(image_hw, "image_hw"), _check_hw(
            patch_hw, "patch_hw")
        if n != self.boxes.shape[0]:
            raise ValueError(f"BoxPlacement: {self.boxes.shape[0]} boxes for {n} images")
        H, W = image_hw
        b = self.boxes
        out = ((b[:, 0] < -1e-3) | (b[:, 1] < -1e-3) | (b[:, 2] > W + 1e-3) | (b[:, 3] > H + 1e-3))
        if bool(out.any()):
            i = int(out.nonzero()[0])
            raise ValueError(f"BoxPlacement: box {i} {b[i].tolist()} lies outside the {H}×{W} image")
        dev = make_generator(generator).device
        b = b.to(dev)
        h, w = patch_hw
        bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        scale = torch.ones(n, device=dev) if self.alpha is None else \
            self.alpha * torch.sqrt(bw * bh) / math.sqrt(h * w)
        half_h = scale * h / 2
        cy = {"top-center": b[:, 1] + half_h, "center": (b[:, 1] + b[:, 3]) / 2,
              "bottom-center": b[:, 3] - half_h}[self.anchor]
        center = torch.stack([(b[:, 0] + b[:, 2]) / 2, cy], 1)
        params = PlacementParams.translation(center, patch_hw, image_hw)
        return replace(params, scale=scale)
