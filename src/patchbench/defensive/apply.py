"""Defensive patches: where they go on the object, the patch object itself, and how it is applied.

Wang et al., "Defensive Patches for Robust Recognition in the Physical World" (CVPR 2022): the defender
owns the object and sticks the patch *of the object's own class* on or around it, so at test time the
patch for image ``i`` is chosen by its true label ``y_i`` and pasted as ``x·(1−m) + patch[y]·m``
(authors' code, see ``defensive-patch-notes.md``; the same setting as Salman et al. 2021's
unadversarial examples). Pasting goes through :func:`patchbench.patches.paste`, the one differentiable
paste every attack and defense uses, so photometric EOT parameters act on the patch pixels only.

Placements (:class:`DefensivePlacement`) — all around the object, leaving the image centre free:

* ``"border"``: a frame ``width`` pixels thick along the image edge;
* ``"ring"``: the same frame inset by ``margin`` pixels (the authors' CIFAR ring: 30×30 minus the
  inner 26×26 on 32×32, i.e. ``width=2, margin=1``);
* ``"corner"``: four ``size``×``size`` squares in the image corners;
* ``"sticker"``: one ``size``×``size`` square at ``position`` = (x, y) fractions of the free space.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import (check_choice, check_device, check_images, check_int, check_labels,
                           check_number, check_path, check_positive, check_positive_int,
                           make_generator)
from ..patches import PlacementParams, paste, shape_mask
from ..patches.physical import EOTParams

KINDS = ("border", "ring", "corner", "sticker")
#: a placement may cover at most this fraction of the image: the rest belongs to the object.
MAX_COVER = 0.5


@dataclass(frozen=True)
class DefensivePlacement:
    """Where a defensive patch sits on an ``H×W`` image.

    Args:
        kind: ``"border"``, ``"ring"``, ``"corner"`` or ``"sticker"`` (default ``"border"``).
        width: frame thickness in pixels for border/ring (default 2).
        margin: gap between the image edge and the ring in pixels (default 1; border uses 0).
        size: side in pixels of each corner square / of the sticker (default 6).
        position: ``(x, y)`` fractions in [0, 1] of the sticker's free space (default (0.5, 0.0):
            top centre).
    """

    kind: str = "border"
    width: int = 2
    margin: int = 1
    size: int = 6
    position: Tuple[float, float] = (0.5, 0.0)

    def __post_init__(self):
        check_choice(self.kind, "DefensivePlacement.kind", KINDS)
        for name in ("width", "size"):
            object.__setattr__(self, name, check_positive_int(getattr(self, name),
                                                              f"DefensivePlacement.{name}"))
        object.__setattr__(self, "margin", check_int(self.margin, "DefensivePlacement.margin", 0))
        pos = self.position
        if isinstance(pos, (str, bytes)) or not isinstance(pos, (tuple, list)) or len(pos) != 2:
            raise TypeError(f"DefensivePlacement.position: expected (x, y) fractions in [0, 1], got "
                            f"{pos!r}")
        pos = tuple(check_number(p, f"DefensivePlacement.position[{i}]", 0.0, 1.0)
                    for i, p in enumerate(pos))
        object.__setattr__(self, "position", pos)

    @classmethod
    def from_dict(cls, d, name: str = "placement") -> "DefensivePlacement":
        """Build from a dict of fields (a config's ``placement`` table), naming unknown keys."""
        if isinstance(d, cls):
            return d
        if not isinstance(d, dict):
            raise TypeError(f"{name}: expected a table of DefensivePlacement fields (kind, width, "
                            f"margin, size, position), got {d!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"{name}: unknown keys {unknown}; known keys: {', '.join(known)}")
        try:
            return cls(**d)
        except (TypeError, ValueError, LookupError) as e:   # name the field path: placement.width
            kind = next(k for k in (TypeError, LookupError, ValueError) if isinstance(e, k))
            raise kind(str(e).replace("DefensivePlacement.", f"{name}.")) from None

    def mask(self, hw, device=None) -> Tensor:
        """``H×W`` float mask, exactly 0/1, of the patch pixels on ``hw = (H, W)`` images.

        Raises:
            ValueError: the placement does not fit, or covers more than ``MAX_COVER`` of the image
                (no room left for the object).
        """
        if isinstance(hw, (str, bytes)) or not isinstance(hw, (tuple, list)) or len(hw) != 2:
            raise TypeError(f"hw: expected an (H, W) pair of image sizes, got {hw!r}")
        H, W = (check_positive_int(v, "hw") for v in hw)
        m = torch.zeros(H, W)
        if self.kind in ("border", "ring"):
            off = 0 if self.kind == "border" else self.margin
            h, w = H - 2 * off, W - 2 * off
            if 2 * self.width >= min(h, w):
                raise ValueError(f"a {self.kind} {self.width} px wide (margin {off}) on {H}×{W} images "
                                 f"leaves no room for the object: it must be narrower than half of "
                                 f"{min(h, w)} px")
            frame = shape_mask("border", h, w, ring_width=2 * self.width / min(h, w))
            m[off:off + h, off:off + w] = frame
        else:
            s = self.size
            if (self.kind == "corner" and 2 * s >= min(H, W)) or s > min(H, W):
                raise ValueError(f"{self.kind} squares of {s} px leave no room for the object on "
                                 f"{H}×{W} images")
            if self.kind == "corner":
                for r in (slice(0, s), slice(H - s, H)):
                    for c in (slice(0, s), slice(W - s, W)):
                        m[r, c] = 1.0
            else:
                top, left = round(self.position[1] * (H - s)), round(self.position[0] * (W - s))
                m[top:top + s, left:left + s] = 1.0
        cover = float(m.mean())
        if cover > MAX_COVER:
            raise ValueError(f"the {self.kind} placement covers {100 * cover:.0f}% of the {H}×{W} image;"
                             f" at most {100 * MAX_COVER:.0f}% may be covered so the object stays "
                             f"visible (make it thinner or smaller)")
        return m.to(device if device is not None else "cpu")


class DefensivePatch:
    """Per-class defensive patches ``K×C×H×W`` in [0, 1], their ``H×W`` mask and their provenance.

    Args:
        patches: ``K×C×H×W`` float tensor; row ``k`` is the patch of class ``class_ids[k]``.
        mask: ``H×W`` 0/1 tensor (where the patch is).
        classes: the class *names* of the model(s) the patch was made for (all ``num_classes`` of
            them, in the model's order).
        class_ids: model class indices that have a patch (default ``range(K)``).
        placement: :class:`DefensivePlacement` (or its dict). meta: anything else worth keeping
            (models, seed, config, kind "defensive", "random" or "blank").

    Example::
        >>> dp = DefensivePatch(torch.rand(10, 1, 28, 28), DefensivePlacement().mask((28, 28)), names)
        >>> x_p = apply_defensive_patch(x, y, dp)
    """

    def __init__(self, patches: Tensor, mask: Tensor, classes: Sequence[str],
                 class_ids: Optional[Sequence[int]] = None, placement=None, meta: Optional[dict] = None):
        if not isinstance(patches, Tensor) or patches.dim() != 4 or not patches.is_floating_point():
            got = tuple(patches.shape) if isinstance(patches, Tensor) else type(patches).__name__
            raise ValueError(f"DefensivePatch: patches must be a float tensor K×C×H×W, got {got}")
        if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(patches.shape[-2:]):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"DefensivePatch: mask must be H×W = {tuple(patches.shape[-2:])}, got {got}")
        if not bool(torch.isfinite(patches.detach()).all()):
            raise ValueError("DefensivePatch: patches contain NaN or Inf values")
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or not classes:
            raise TypeError(f"DefensivePatch: classes must be a non-empty list of class names, got "
                            f"{classes!r}")
        self.patches = patches.detach().clamp(0, 1)
        self.mask = (mask.detach() > 0.5).float().to(patches.device)
        self.classes = [str(c) for c in classes]
        if class_ids is not None and (isinstance(class_ids, (str, bytes)) or
                                      not isinstance(class_ids, (Sequence, range, Tensor))):
            raise TypeError(f"DefensivePatch: class_ids must be a list of class indices, got "
                            f"{class_ids!r}")
        ids = list(range(patches.shape[0])) if class_ids is None else \
            [check_int(i, "DefensivePatch: class_ids") for i in class_ids]
        if len(ids) != patches.shape[0] or len(set(ids)) != len(ids) or \
                any(not 0 <= i < len(self.classes) for i in ids):
            raise ValueError(f"DefensivePatch: class_ids must be {patches.shape[0]} distinct indices "
                             f"in 0..{len(self.classes) - 1}, got {ids[:12]}")
        self.class_ids = ids
        if placement is not None:
            placement = DefensivePlacement.from_dict(placement, "DefensivePatch: placement")
        self.placement = placement
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f"DefensivePatch: meta must be a dict, got {type(meta).__name__}")
        self.meta = dict(meta or {})

    @property
    def channels(self) -> int:
        return int(self.patches.shape[1])

    @property
    def image_hw(self) -> Tuple[int, int]:
        return int(self.patches.shape[-2]), int(self.patches.shape[-1])

    def to(self, device) -> "DefensivePatch":
        return DefensivePatch(self.patches.to(device), self.mask.to(device), self.classes,
                              self.class_ids, self.placement, self.meta)

    def rows(self, y: Tensor) -> Tensor:
        """Row of :attr:`patches` for each label in ``y`` (``LookupError`` for a class without patch)."""
        lut = torch.full((len(self.classes),), -1, dtype=torch.long, device=y.device)
        lut[torch.tensor(self.class_ids, device=y.device)] = torch.arange(len(self.class_ids),
                                                                          device=y.device)
        r = lut[y]
        if (r < 0).any():
            missing = sorted(set(y[r < 0].tolist()))
            raise LookupError(f"DefensivePatch has no patch for class(es) {missing[:10]}; it covers "
                              f"{len(self.class_ids)} classes: {self.class_ids[:20]}")
        return r

    def check_model(self, model) -> None:
        """``ValueError`` unless ``model`` has the same class names, channels and input size."""
        names = list(getattr(model, "class_names", []))
        if names != self.classes:
            raise ValueError(f"DefensivePatch was made for {len(self.classes)} classes "
                             f"{self.classes[:5]}…, but model {getattr(model, 'name', '?')!r} has "
                             f"{len(names)} classes {names[:5]}…; use a patch trained for its classes")
        ch = getattr(model, "channels", None)
        if ch is not None and ch != self.channels:
            raise ValueError(f"DefensivePatch has {self.channels} channels, model "
                             f"{getattr(model, 'name', '?')!r} expects {ch}")

    def save(self, path) -> Path:
        """Write ``path`` (.pt: patches, mask, metadata), ``path.png`` (a sheet of the patches) and
        ``path.json`` (metadata); returns the ``.pt`` path."""
        import io

        from .._io import atomic_save, atomic_write_bytes, atomic_write_text

        path = Path(path).with_suffix(".pt")
        meta = self.metadata()
        atomic_save({"patches": self.patches.cpu(), "mask": self.mask.cpu(), "meta": json.dumps(meta)},
                    path)
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
        png = io.BytesIO()
        patch_sheet(self).save(png, format="PNG")
        atomic_write_bytes(path.with_suffix(".png"), png.getvalue())
        return path

    def metadata(self) -> dict:
        return {"classes": self.classes, "class_ids": self.class_ids,
                "placement": asdict(self.placement) if self.placement is not None else None,
                "image_hw": list(self.image_hw), "channels": self.channels, **self.meta}

    @classmethod
    def load(cls, path, device="cpu") -> "DefensivePatch":
        """Read a patch written by :meth:`save` (``FileNotFoundError`` / ``ValueError`` if unusable)."""
        path = check_path(path, "DefensivePatch.load: path")
        check_device(device, "DefensivePatch.load: device")
        from ..models.weights import is_shipped_asset, load_file, verify_asset
        if is_shipped_asset(path):
            verify_asset(path)
        obj = load_file(path, "DefensivePatch.load: path", map_location=device)
        try:
            meta = json.loads(obj["meta"])
            patches, mask = obj["patches"], obj["mask"]
            classes, class_ids, placement = meta["classes"], meta["class_ids"], meta["placement"]
            extra = {k: v for k, v in meta.items()
                     if k not in ("classes", "class_ids", "placement", "image_hw", "channels")}
        except Exception as e:  # noqa: BLE001 - many ways for a file to be wrong
            raise ValueError(f"{path}: not a defensive patch file ({type(e).__name__}: {e})") from e
        try:
            return cls(patches, mask, classes, class_ids, placement, extra)
        except (TypeError, ValueError, LookupError) as e:
            raise ValueError(f"{path}: not a usable defensive patch file ({e})") from e


def patch_sheet(patch: DefensivePatch, scale: int = 0):
    """A PIL image with the K patches side by side (outside the mask: mid-grey)."""
    from ..bench.report import tensor_to_pil

    p = patch.patches.detach().cpu() * patch.mask.cpu() + 0.5 * (1 - patch.mask.cpu())
    gap = torch.ones(p.shape[1], p.shape[2], 2)
    tiles = []
    for k in range(p.shape[0]):
        tiles += [p[k], gap]
    img = tensor_to_pil(torch.cat(tiles[:-1], dim=2))
    f = scale or max(1, 96 // p.shape[2])
    return img.resize((img.size[0] * f, img.size[1] * f), 0)


def apply_defensive_patch(x: Tensor, y, patch: DefensivePatch,
                          photometric: Optional[EOTParams] = None, *, check: bool = True) -> Tensor:
    """Stick each image's own-class patch on it: ``x·(1−m) + patch[y]·m`` (Wang et al. 2022).

    Args:
        x: ``N×C×H×W`` images in [0, 1] of the patch's size and channels.
        y: ``N`` true labels (model class indices) — the defender knows the object's class.
        patch: a :class:`DefensivePatch`; its ``patches`` may require grad (training).
        photometric: optional :class:`~patchbench.patches.EOTParams` for N samples; its photometric
            part (brightness, contrast, blur, noise) is applied to the patch pixels only.
        check: validate ``x`` and ``y`` (default True; training loops pass False).

    Returns:
        ``N×C×H×W``; pixels outside the mask are bit-identical to ``x``.

    Example::
        >>> x_p = apply_defensive_patch(x, y, DefensivePatch.load("fmnist_border.pt"))
    """
    if not isinstance(patch, DefensivePatch):
        raise TypeError(f"apply_defensive_patch: patch must be a DefensivePatch, got "
                        f"{type(patch).__name__}")
    if photometric is not None and not isinstance(photometric, EOTParams):
        raise TypeError(f"apply_defensive_patch: photometric must be EOTParams (EOT.sample(n)) or "
                        f"None, got {type(photometric).__name__}")
    if check:
        x = check_images(x, "apply_defensive_patch: x")
        y = check_labels(y, x.shape[0], len(patch.classes), name="apply_defensive_patch: y")
        if tuple(x.shape[1:]) != (patch.channels, *patch.image_hw):
            raise ValueError(f"apply_defensive_patch: the patch is for {patch.channels}×"
                             f"{patch.image_hw[0]}×{patch.image_hw[1]} images, got "
                             f"{tuple(x.shape[1:])}")
    y = y.to(x.device)
    p = patch.patches.to(x.device)[patch.rows(y)]
    n, _, H, W = x.shape
    centre = torch.tensor([[W / 2, H / 2]], device=x.device).expand(n, 2)
    params = PlacementParams.translation(centre, (H, W), (H, W))
    if photometric is not None:
        params.photometric = photometric.photometric.to(x.device)
    return paste(x, p, patch.mask.to(x.device), params)[0]


def physical_jitter(x: Tensor, generator=None, rotation: float = 8.0, scale=(0.95, 1.05),
                    shift: float = 0.04) -> Tensor:
    """A camera's view of the patched object: each image rotated by U(−rotation, rotation) degrees,
    scaled by U(scale), shifted by U(−shift, shift)·size (EOT, Athalye et al. 2018, Eq. 1, applied to
    the whole patched image; bilinear, zero fill). Differentiable wrt ``x``; ``N×C×H×W`` → same.

    The scalar arguments are checked; ``x`` only for its type and shape (no value scan: training
    loops call this once per batch)."""
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"physical_jitter: x must be float images N×C×H×W, got {got}")
    rotation = check_number(rotation, "physical_jitter: rotation", 0.0, 180.0)
    if isinstance(scale, (str, bytes)) or not isinstance(scale, (tuple, list)) or len(scale) != 2:
        raise TypeError(f"physical_jitter: scale must be a (low, high) pair, got {scale!r}")
    lo, hi = (check_positive(v, "physical_jitter: scale") for v in scale)
    if lo > hi:
        raise ValueError(f"physical_jitter: scale must be (low, high) with low <= high, got {scale!r}")
    shift = check_number(shift, "physical_jitter: shift", 0.0, 1.0)
    g = make_generator(generator)
    n = x.shape[0]

    def u(lo, hi, *shape):
        return (lo + (hi - lo) * torch.rand(n, *shape, generator=g, device=g.device)).to(x.device)

    a = u(-rotation, rotation) * math.pi / 180
    s = u(lo, hi)
    t = u(-shift, shift, 2) * 2                       # affine_grid's coordinates span [−1, 1]
    cos, sin = torch.cos(a) / s, torch.sin(a) / s
    theta = torch.stack([torch.stack([cos, -sin, t[:, 0]], 1), torch.stack([sin, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_patch_like(patch: DefensivePatch, generator=None) -> DefensivePatch:
    """The control: uniform noise U(0, 1) in the same mask, one pattern per class (seeded).

    Example::
        >>> ctrl = random_patch_like(dp, generator=0)
    """
    if not isinstance(patch, DefensivePatch):
        raise TypeError(f"random_patch_like: expected a DefensivePatch, got {type(patch).__name__}")
    g = make_generator(generator)
    noise = torch.rand(patch.patches.shape, generator=g, device=g.device).to(patch.patches.device)
    return _control(patch, noise, "random")


def blank_patch_like(patch: DefensivePatch, value: float = 0.0) -> DefensivePatch:
    """The occlusion control: the same mask filled with the constant ``value`` (default 0, the black
    background of Fashion-MNIST). It hides exactly the pixels the defensive patch hides and adds no
    content, so ``none − blank`` is what covering them costs and ``blank − random`` what a noise
    pattern costs beyond that.

    Example::
        >>> occluded = apply_defensive_patch(x, y, blank_patch_like(dp))
    """
    if not isinstance(patch, DefensivePatch):
        raise TypeError(f"blank_patch_like: expected a DefensivePatch, got {type(patch).__name__}")
    value = check_number(value, "blank_patch_like: value", 0.0, 1.0)
    return _control(patch, torch.full_like(patch.patches, value), "blank")


def _control(patch: DefensivePatch, fill: Tensor, kind: str) -> DefensivePatch:
    """A control patch: ``fill`` in ``patch``'s mask, for its classes, marked ``kind`` in the metadata."""
    return DefensivePatch(fill, patch.mask, patch.classes, patch.class_ids, patch.placement,
                          {**patch.meta, "kind": kind})
