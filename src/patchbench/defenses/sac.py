"""SAC: segment the adversarial patch, complete the mask to a square, and remove it.

Paper: Liu, Levine, Lau, Chellappa & Feizi, "Segment and Complete: Defending Object Detectors against
Adversarial Patch Attacks with Robust Patch Detection", CVPR 2022 (authors' code:
joellliu/SegmentAndComplete, ``patch_detector.py``). Nothing in it is specific to detection: the
defense maps an image to an image, so it protects a classifier (or a hasher) unchanged.

Pipeline:

1. *Patch segmentation*: a U-Net segmenter ``S`` gives per-pixel logits; ``m = 1[σ(S(x)) ≥ 0.5]``.
   It is trained with self adversarial training (``patchbench.training.sac``).
2. *Shape completion*: the patch is assumed to be a square of a known size range ``square_sizes``.
   For every size ``s`` and every position, the L1 (Hamming) distance between ``m`` and the ``s×s``
   square ``q`` is ``d(m, q) = |q \\ m| + |m \\ q|`` (square pixels the mask misses plus mask pixels
   outside the square), computed for all positions at once from a 2-D cumulative sum (an integral
   image). The squares with ``d(m, q) / s² < 1 − γ`` are kept; ``γ`` starts at 0.9 and, while no
   square of any size qualifies, is multiplied by 0.7, for 15 tries in all (the authors'
   ``init_l1_thresh=0.9, thresh_decay=0.7, break_its=15``). The completed mask is the union of the
   kept squares of all sizes at the first ``γ`` that keeps any; when none qualifies within the tries
   (an empty mask always: ``d/s² = 1``) nothing is removed.
3. *Removal*: ``x' = x ⊙ (1 − M) + fill ⊙ M`` with the completed mask ``M`` (the authors multiply
   by ``1 − M``: ``fill = 0``). Pixels outside ``M`` are bit-identical to the input.

Because γ decays towards 0, the retries end up accepting any square that holds more than about
half of the mask: a lone false-positive pixel on a clean image is removed with every ``s×s`` square
containing it (a ``(2s−1)²`` area) at the 12th try. That is the authors' algorithm, kept as is.

The square sides are the threat's: the authors try ``[125, 100, 75, 50, 25]`` on ~500-px COCO
images attacked with 75–125 px patches; ``from_context`` takes the sides of the experiment's square
patch (``ctx.patch_area``), the known size SAC assumes.

The paper's guarantee follows from step 2: if the segmenter's mask is within ``(1 − γ)·s²`` of the
true ``s×s`` patch (in Hamming distance), the patch itself qualifies at that ``γ``, so it is removed
entirely whenever no square qualified at an earlier (stricter) ``γ``.

Where the authors' code differs from the paper's description (which is the default here; the
code's reading is an option):

* ``alignment="authors"``: their integral-image indexing scores the squares whose top-left corner is
  at row/column ≥ 1 and paints each kept square one pixel up and to the left of the square it scored
  (``ShapeCompletionL1KnownSquare``). On 500-px COCO images this is invisible; on 28-px images a
  one-pixel strip of the patch would survive. ``"paper"`` scores and paints the same squares, at
  every position.
* ``union=True``: also remove the raw segmenter pixels outside the completed squares (the authors'
  ``--union`` flag, off in their evaluation script).
* Not built: the authors' ``n_patch > 1`` k-means split of the mask into several patches.

Adaptive attacks: ``gradient="bpda-straight-through"`` (default) is the authors' evaluation
(``--bpda --bpda_shape_completion``): every threshold — the segmenter's 0.5 and the three inside the
shape completion — passes its input's gradient unchanged, so the attacker differentiates the
completion as the linear map the thresholds wrap (no gradient for an image where no square
qualified: the authors return a constant zero mask there). ``"bpda-sigmoid"`` uses a sigmoid for the
segmenter's threshold (PatchZero's choice) and the same straight-through completion; ``"exact"``
gives the true (zero) derivative of every threshold; ``"bpda-identity"`` treats the whole defense as
the identity.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import (check_bool, check_choice, check_fraction, check_int, check_mask,
                           check_number)
from .base import register
from .patchzero import _OVERRIDES, PatchZero

_ALIGNMENTS = ("paper", "authors")
_SAC_SETTINGS = ("square_sizes", "gamma", "decay", "tries", "union", "alignment")
_ASSETS = {"fmnist": "sac_fmnist.pt"}
_ASSET_DIR = Path(__file__).resolve().parent.parent / "assets"


def sizes_for_area(area: float, image_size) -> Tuple[int, ...]:
    """The square sides (largest first) that cover a square threat of ``area`` on ``image_size``
    images: the sides of the patch's bounding box as :class:`patchbench.patches.Threat` draws it (a
    5 % "square" on 28×28 is 6×7 px, so ``(7, 6)``)."""
    from ..patches import Threat
    h, w = Threat(area=area, shape="square").patch_size(image_size)
    return tuple(sorted({int(h), int(w)}, reverse=True))


def check_square_sizes(sizes, name: str = "square_sizes",
                       image_size: Optional[Tuple[int, int]] = None) -> Tuple[int, ...]:
    """One side or a sequence of square sides in pixels, returned deduplicated, largest first;
    with ``image_size`` each must fit in the image."""
    if isinstance(sizes, numbers.Integral) and not isinstance(sizes, bool):
        sizes = (sizes,)
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, (list, tuple)):
        raise TypeError(f"{name}: expected a square side in pixels or a list of them, got {sizes!r}")
    if not sizes:
        raise ValueError(f"{name}: expected at least one square side, got an empty list")
    out = tuple(sorted({check_int(s, name, minimum=1) for s in sizes}, reverse=True))
    if image_size is not None and out[0] > min(image_size):
        raise ValueError(f"{name}: a {out[0]}×{out[0]} square does not fit in "
                         f"{image_size[0]}×{image_size[1]} images (the largest side must be at "
                         f"most {min(image_size)})")
    return out


def _window_sums(t: Tensor, s: int) -> Tensor:
    """Sums of ``t`` (``N×H×W``) over every ``s×s`` window inside it, ``N×(H−s+1)×(W−s+1)``, from
    one integral image (2-D cumulative sum). Inner helper: inputs are not validated."""
    c = F.pad(t.cumsum(-2).cumsum(-1), (1, 0, 1, 0))
    return c[..., s:, s:] - c[..., :-s, s:] - c[..., s:, :-s] + c[..., :-s, :-s]


def _count_dtype(mask: Tensor) -> torch.dtype:
    """float32 counts are exact up to 2²⁴ pixels; larger images count in float64."""
    return torch.float64 if mask.shape[-1] * mask.shape[-2] >= 2 ** 24 else torch.float32


def _binary_masks(mask) -> Tensor:
    """``mask`` checked as a batch ``N×1×H×W`` of exact 0/1 values, as float."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask: expected a tensor N×1×H×W of 0/1 values, got {type(mask).__name__}")
    if mask.dim() != 4 or mask.shape[0] == 0:
        raise ValueError(f"mask: expected a non-empty batch N×1×H×W, got shape {tuple(mask.shape)}")
    return check_mask(mask, "mask", mask.shape[0], *mask.shape[-2:])


def _l1(m: Tensor, s: int, total: Tensor) -> Tensor:
    """``d(m, q) = s² − |m ∩ q| + (|m| − |m ∩ q|)`` for every ``s×s`` square ``q`` (unchecked)."""
    return s * s + total[:, None, None] - 2 * _window_sums(m, s)


def square_l1_distances(mask: Tensor, size: int) -> Tensor:
    """L1 distance between binary masks and every ``size×size`` square (SAC, "Shape completion").

    Args:
        mask: ``N×1×H×W`` of exact 0/1 values.
        size: the square's side in pixels, at most ``min(H, W)``.

    Returns: ``N×(H−size+1)×(W−size+1)``; entry ``[n, i, j]`` is the number of pixels in which
    ``mask[n]`` and the square with top-left corner ``(i, j)`` differ.
    """
    m = _binary_masks(mask)
    (s,) = check_square_sizes(size, "size", tuple(m.shape[-2:]))
    m = m[:, 0].to(_count_dtype(m))
    return _l1(m, s, m.sum((-2, -1)))


def _st(hard: Tensor, soft: Tensor) -> Tensor:
    """``hard`` forward (exactly: ``soft − soft`` is 0), the gradient of ``soft`` backward."""
    return hard.detach() + (soft - soft.detach())


def _thresholds(gamma: float, decay: float, tries: int, like: Tensor) -> Tensor:
    """``1 − γ·decay^k`` for the ``tries`` levels ``k = 0 … tries−1``."""
    return 1 - gamma * decay ** torch.arange(tries, dtype=torch.float64).to(like.device, like.dtype)


def _complete(mask: Tensor, sizes: Sequence[int], gamma: float, decay: float, tries: int,
              alignment: str, straight_through: bool) -> Tensor:
    """Shape completion of ``N×1×H×W`` 0/1 masks (see the module docstring); unchecked inner helper.

    Each image picks its own ``γ`` level; all levels are read off the smallest normalised distance
    at once, so there is no loop over retries. With ``straight_through`` the output carries the
    authors' straight-through gradient (every threshold passes its input's gradient)."""
    dt = _count_dtype(mask)
    m = mask[:, 0].to(dt)
    total = m.sum((-2, -1))
    ratios = []
    for s in sizes:
        r = _l1(m, s, total) / (s * s)
        if alignment == "authors":       # their cumulative sums never score row or column 0
            r = torch.cat([torch.full_like(r[:, :1], math.inf), r[:, 1:]], 1)
            r = torch.cat([torch.full_like(r[..., :1], math.inf), r[..., 1:]], 2)
        ratios.append(r)
    best = torch.stack([r.detach().amin((-2, -1)) for r in ratios]).amin(0)          # N
    levels = _thresholds(gamma, decay, tries, best)
    ok = levels[None, :] > best[:, None]                                             # N×tries
    found = ok.any(1)
    first = (~ok).sum(1).clamp(max=tries - 1)      # levels only loosen, so ok is monotone in k
    t = torch.where(found, levels[first], torch.zeros_like(best))
    union = torch.zeros_like(m)
    for s, r in zip(sizes, ratios):
        keep = (r.detach() < t[:, None, None]).to(dt)
        if straight_through:   # the authors' STE(1.5 − d/s² − γ > 0.5); no gradient where none kept
            keep = _st(keep, (0.5 + t[:, None, None] - r) * found[:, None, None])
        if alignment == "authors":       # painted one pixel up-left of the square scored
            keep = F.pad(keep[:, 1:, 1:], (0, 1, 0, 1))
        cover = _window_sums(F.pad(keep, (s - 1,) * 4), s)   # kept squares covering each pixel
        union = union + (_st(cover.detach() >= 0.5, cover / 2) if straight_through
                         else (cover >= 0.5).to(dt))
    hard = (union.detach() >= 0.5).to(dt)
    out = _st(hard, union / 2) if straight_through else hard
    return out.to(mask.dtype)[:, None]


def shape_completion(mask: Tensor, square_sizes, gamma: float = 0.9, decay: float = 0.7,
                     tries: int = 15, alignment: str = "paper") -> Tensor:
    """SAC's shape completion of binary masks (CVPR 2022, "Shape completion"; module docstring).

    Args:
        mask: ``N×1×H×W`` of exact 0/1 values (1 = patch pixel, the segmenter's output).
        square_sizes: square side(s) in pixels, each at most ``min(H, W)``.
        gamma: the first γ, in (0, 1); squares with ``d/s² < 1 − γ`` are kept. Default 0.9.
        decay: γ's factor per retry, in (0, 1]. Default 0.7.
        tries: number of γ levels tried (the authors' ``break_its``). Default 15.
        alignment: ``"paper"`` or ``"authors"`` (their one-pixel offset). Default ``"paper"``.

    Returns: the completed masks ``N×1×H×W`` (0/1, the dtype and device of ``mask``), all zero for
    images where no square qualifies.
    """
    m = _binary_masks(mask)
    m = m.to(mask.dtype) if mask.is_floating_point() else m
    settings = _check_settings(square_sizes, gamma, decay, tries, alignment, tuple(m.shape[-2:]))
    return _complete(m, *settings, straight_through=False)


def _check_settings(square_sizes, gamma, decay, tries, alignment, image_size=None):
    return (check_square_sizes(square_sizes, "square_sizes", image_size),
            check_fraction(gamma, "gamma"),
            check_number(decay, "decay", 0.0, 1.0, low_inclusive=False),
            check_int(tries, "tries", minimum=1),
            check_choice(alignment, "alignment", _ALIGNMENTS))


@register("sac")
class SAC(PatchZero):
    """Segment and Complete (Liu et al., CVPR 2022): segmenter + square shape completion + removal.

    Threat model: one square patch of a known size range (``square_sizes``), white-box; adaptive
    attackers differentiate straight through every threshold (the authors' BPDA evaluation).

    Args:
        detector (nn.Module): the segmenter, ``N×C×H×W`` in [0, 1] → patch logits ``N×1×H×W``
            (a ``UNet``); trained ones come from :meth:`load` (a path or the asset ``"fmnist"``).
        square_sizes (int or sequence): the square sides tried by shape completion, in pixels.
            ``from_context`` derives them from the experiment's patch area.
        gamma (float): the first γ of shape completion. Default 0.9.
        decay (float): γ's factor per retry. Default 0.7.
        tries (int): number of γ levels tried. Default 15.
        union (bool): also remove the raw segmenter pixels outside the squares. Default False.
        alignment (str): ``"paper"`` (default) or ``"authors"`` (see the module docstring).
        threshold (float): segmenter threshold on ``σ(logits)``. Default 0.5.
        fill (float or sequence): the value removed pixels get. Default 0.0 (the authors' zeroing).
        input_size (tuple or None): ``(H, W)`` the segmenter was trained for. Default: the
            detector's.
        gradient (str): ``"bpda-straight-through"`` (default), ``"bpda-sigmoid"``, ``"exact"`` or
            ``"bpda-identity"``. temperature (float): sigmoid width for ``"bpda-sigmoid"``.
        dilation (int): dilate the raw mask before completion, in pixels. Default 0 (SAC has none).

    Shapes: ``N×C×H×W`` in [0, 1] → ``N×C×H×W`` in [0, 1]; pixels outside the completed mask are
    bit-identical to the input.

    Example::

        sac = SAC.load("fmnist", square_sizes=(7, 6))
        x_clean = sac(x_adv); mask = sac.predict_mask(x_adv)
    """

    gradient = "bpda-straight-through"

    def __init__(self, detector: nn.Module, square_sizes, gamma: float = 0.9, decay: float = 0.7,
                 tries: int = 15, union: bool = False, alignment: str = "paper",
                 threshold: float = 0.5, fill: Union[float, Sequence[float]] = 0.0,
                 input_size: Optional[Tuple[int, int]] = None,
                 gradient: str = "bpda-straight-through", temperature: float = 0.05,
                 dilation: int = 0):
        super().__init__(detector, threshold=threshold, dilation=dilation, fill=fill,
                         input_size=input_size, gradient=gradient, temperature=temperature)
        (self.square_sizes, self.gamma, self.decay, self.tries,
         self.alignment) = _check_settings(square_sizes, gamma, decay, tries, alignment,
                                           self.input_size)
        self.union = check_bool(union, "union")

    def _mask(self, x: Tensor, dilated: bool = True) -> Tensor:
        """The mask SAC removes; ``dilated=False`` gives the raw (thresholded) segmenter mask."""
        check_square_sizes(self.square_sizes, "square_sizes", tuple(x.shape[-2:]))
        raw = super()._mask(x)
        if not dilated:
            return raw
        st = self.gradient in ("bpda-straight-through", "bpda-sigmoid") and torch.is_grad_enabled()
        m = _complete(raw, self.square_sizes, self.gamma, self.decay, self.tries, self.alignment,
                      straight_through=st)
        return m + raw - m * raw if self.union else m

    @torch.no_grad()
    def predict_mask(self, x: Tensor, completed: bool = True) -> Tensor:
        """The binary mask ``N×1×H×W`` SAC removes; ``completed=False``: the segmenter's own
        thresholded output (before shape completion)."""
        return super().predict_mask(x, dilated=check_bool(completed, "completed"))

    def settings(self) -> dict:
        """The shape-completion settings, as saved in a checkpoint."""
        return dict(square_sizes=list(self.square_sizes), gamma=self.gamma, decay=self.decay,
                    tries=self.tries, union=self.union, alignment=self.alignment)

    def extra_repr(self) -> str:
        return (f"square_sizes={self.square_sizes}, gamma={self.gamma}, decay={self.decay}, "
                f"tries={self.tries}, union={self.union}, alignment={self.alignment!r}, "
                f"gradient={self.gradient!r}, input_size={self.input_size}")

    @classmethod
    def from_context(cls, ctx, checkpoint=None, **options) -> "SAC":
        """Load the segmenter ``checkpoint`` (a path, ``"@ARTIFACT"`` or the asset ``"fmnist"``) on
        ``ctx.device``, checked against ``ctx.image_size`` / ``ctx.channels``. ``square_sizes``
        defaults to the sides of the context's square patch (``ctx.patch_area`` on
        ``ctx.image_size``, the authors' known size), else to the checkpoint's; the other
        ``options`` override the saved settings. Without a checkpoint, ``detector=`` builds it."""
        if options.get("square_sizes") is None and ctx.patch_area is not None:
            size = ctx.require("image_size", "'sac'", "the image size to turn patch_area into "
                                                      "square sides")
            options["square_sizes"] = sizes_for_area(ctx.patch_area, size)
        if checkpoint is None:
            if "detector" not in options:
                raise ValueError(f"checkpoint: 'sac' needs a trained segmenter: checkpoint=PATH, "
                                 f"'@ARTIFACT' (one of the context's artifacts) or an asset name "
                                 f"({', '.join(_ASSETS)})")
            if options.get("square_sizes") is None:
                raise ValueError("square_sizes: 'sac' needs the patch's square side(s): pass "
                                 "square_sizes or set context.patch_area")
            return super(PatchZero, cls).from_context(ctx, **options)
        options = {k: v for k, v in options.items() if not (k == "square_sizes" and v is None)}
        unknown = [k for k in options if k not in _OVERRIDES + _SAC_SETTINGS]
        if unknown:
            raise TypeError(f"defense 'sac': unexpected keyword argument"
                            f"{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                            f"with a checkpoint it accepts: checkpoint, "
                            f"{', '.join(_OVERRIDES + _SAC_SETTINGS)}")
        return cls.load(ctx.resolve(checkpoint, "checkpoint"), device=ctx.device,
                        input_size=ctx.image_size, channels=ctx.channels, **options)

    # ------------------------------------------------------------------ checkpoints
    def save(self, path, **meta) -> str:
        """Write the segmenter and every setting to ``path`` (atomically): a PatchZero-format file
        whose ``meta["sac"]`` holds the shape-completion settings, so it also loads as the
        segmenter alone with ``PatchZero.load``. ``meta`` values must be plain data."""
        if "sac" in meta:
            raise ValueError("meta: 'sac' is reserved for the shape-completion settings")
        return super().save(path, sac=self.settings(), **meta)

    @classmethod
    def load(cls, path, device="cpu", input_size: Optional[Tuple[int, int]] = None,
             channels: Optional[int] = None, **overrides) -> "SAC":
        """Load a checkpoint written by :meth:`save` (or the asset ``"fmnist"``); a PatchZero
        checkpoint loads too, with default shape completion (``square_sizes`` must then be given).

        ``overrides`` replace saved settings: those of :class:`PatchZero` (``threshold``,
        ``dilation``, ``fill``, ``gradient``, ``temperature``) and ``square_sizes``, ``gamma``,
        ``decay``, ``tries``, ``union``, ``alignment``. Errors as :meth:`PatchZero.load`; the
        returned defense is in eval mode.
        """
        unknown = sorted(set(overrides) - set(_OVERRIDES) - set(_SAC_SETTINGS))
        if unknown:
            raise TypeError(f"SAC.load: unknown setting(s) {unknown}; overrides can be "
                            f"{', '.join(_OVERRIDES + _SAC_SETTINGS)}")
        if isinstance(path, str) and path in _ASSETS:
            path = _ASSET_DIR / _ASSETS[path]
            if not path.is_file():
                raise FileNotFoundError(f"the SAC asset {path.name} is not shipped in this "
                                        f"install; train one with `patchbench train sac` and pass "
                                        f"its path")
        pz = PatchZero.load(path, device=device, input_size=input_size, channels=channels,
                            **{k: v for k, v in overrides.items() if k in _OVERRIDES})
        from ..models.weights import load_file
        saved = load_file(path, "path").get("meta", {}).get("sac", {})
        if not isinstance(saved, dict):
            raise ValueError(f"{path}: meta['sac'] must be a dict of SAC settings")
        kw = {**{k: v for k, v in saved.items() if k in _SAC_SETTINGS},
              **{k: v for k, v in overrides.items() if k in _SAC_SETTINGS}}
        if "square_sizes" not in kw:
            raise ValueError(f"square_sizes: {path} has no saved square sizes (a PatchZero "
                             f"checkpoint?); pass square_sizes=")
        base = dict(threshold=pz.threshold, dilation=pz.dilation, fill=pz.fill.flatten().tolist(),
                    input_size=pz.input_size,       # gradient rules are not saved: SAC's defaults
                    **{k: overrides[k] for k in ("gradient", "temperature") if k in overrides})
        if saved:
            try:
                cls(pz.detector, **base, **{k: v for k, v in saved.items() if k in _SAC_SETTINGS})          # the file's own settings
            except (TypeError, ValueError, LookupError) as e:
                raise ValueError(f"{path}: invalid saved SAC setting: {e}") from e
        return cls(pz.detector, **base, **kw).to(device).eval()

