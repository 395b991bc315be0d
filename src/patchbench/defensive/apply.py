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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_images, check_labels, make_generator
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
        if self.kind not in KINDS:
            raise LookupError(f"defensive placement kind: expected one of {', '.join(KINDS)}, got "
                              f"{self.kind!r}")
        for name in ("width", "size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DefensivePlacement.{name}: expected an int >= 1, got {v!r}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0:
            raise ValueError(f"DefensivePlacement.margin: expected an int >= 0, got {self.margin!r}")
        pos = tuple(float(p) for p in self.position)
        if len(pos) != 2 or not all(0.0 <= p <= 1.0 for p in pos):
            raise ValueError(f"DefensivePlacement.position: expected (x, y) fractions in [0, 1], got "
                             f"{self.position!r}")
        object.__setattr__(self, "position", pos)

    def mask(self, hw, device=None) -> Tensor:
        """``H×W`` float mask, exactly 0/1, of the patch pixels on ``hw = (H, W)`` images.

        Raises:
            ValueError: the placement does not fit, or covers more than ``MAX_COVER`` of the image
                (no room left for the object).
        """
        H, W = (int(v) for v in hw)
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
        self.patches = patches.detach().clamp(0, 1)
        self.mask = (mask.detach() > 0.5).float().to(patches.device)
        self.classes = [str(c) for c in classes]
        ids = list(range(patches.shape[0])) if class_ids is None else [int(i) for i in class_ids]
        if len(ids) != patches.shape[0] or len(set(ids)) != len(ids) or \
                any(not 0 <= i < len(self.classes) for i in ids):
            raise ValueError(f"DefensivePatch: class_ids must be {patches.shape[0]} distinct indices "
                             f"in 0..{len(self.classes) - 1}, got {ids[:12]}")
        self.class_ids = ids
        if isinstance(placement, dict):
            placement = DefensivePlacement(**{**placement, "position": tuple(placement.get(
                "position", (0.5, 0.0)))})
        self.placement = placement
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
        from ..training.checkpoint import atomic_save
        from ..bench.report import atomic_write_text

        path = Path(path).with_suffix(".pt")
        meta = self.metadata()
        atomic_save({"patches": self.patches.cpu(), "mask": self.mask.cpu(), "meta": json.dumps(meta)},
                    path)
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
        patch_sheet(self).save(path.with_suffix(".png"))
        return path

    def metadata(self) -> dict:
        return {"classes": self.classes, "class_ids": self.class_ids,
                "placement": asdict(self.placement) if self.placement is not None else None,
                "image_hw": list(self.image_hw), "channels": self.channels, **self.meta}

    @classmethod
    def load(cls, path, device="cpu") -> "DefensivePatch":
        """Read a patch written by :meth:`save` (``FileNotFoundError`` / ``ValueError`` if unusable)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"defensive patch file {path} does not exist")
        try:
            obj = torch.load(path, map_location=device, weights_only=True)
            meta = json.loads(obj["meta"])
            patches, mask = obj["patches"], obj["mask"]
        except Exception as e:  # noqa: BLE001 - many ways for a file to be wrong
            raise ValueError(f"{path}: not a defensive patch file ({type(e).__name__}: {e})") from e
        extra = {k: v for k, v in meta.items()
                 if k not in ("classes", "class_ids", "placement", "image_hw", "channels")}
        return cls(patches, mask, meta["classes"], meta["class_ids"], meta["placement"], extra)


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
    the whole patched image; bilinear, zero fill). Differentiable wrt ``x``; ``N×C×H×W`` → same."""
    g = make_generator(generator)
    n = x.shape[0]

    def u(lo, hi, *shape):
        return (lo + (hi - lo) * torch.rand(n, *shape, generator=g, device=g.device)).to(x.device)

    a = u(-rotation, rotation) * math.pi / 180
    s = u(float(scale[0]), float(scale[1]))
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
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"blank_patch_like: value must be in [0, 1], got {value!r}")
    return _control(patch, torch.full_like(patch.patches, float(value)), "blank")


def _control(patch: DefensivePatch, fill: Tensor, kind: str) -> DefensivePatch:
    """A control patch: ``fill`` in ``patch``'s mask, for its classes, marked ``kind`` in the metadata."""
    return DefensivePatch(fill, patch.mask, patch.classes, patch.class_ids, patch.placement,
                          {**patch.meta, "kind": kind})
