"""PatchCleanser: certifiably robust prediction by double masking.

Xiang, Mahloujifar & Mittal, "PatchCleanser: Certifiably Robust Defense against Adversarial Patches
for Any Image Classifier", USENIX Security 2022.

- Mask set (the paper's R-covering construction, §3): for an axis of length n, patch size p and k
  masks per axis, stride ``s = ⌈(n − p + 1)/k⌉`` and mask size ``m = p + s − 1``; masks start at
  0, s, 2s, … and the last one is moved to ``n − m`` — every window of p pixels then lies inside some
  mask. The 2-D set is the product of the two axes (k² = 36 masks for k = 6).
- Inference: double masking (Algorithm 1). First round: one prediction per mask. If all agree, return
  it (case I). Otherwise, for each mask whose label disagrees with the majority, a second round masks
  it together with every mask; a disagreer whose second-round predictions all agree wins (case II);
  otherwise the majority label is returned (case III).
- Certification (Algorithm 2 / Theorem 1): if the predictions on all two-mask images equal the true
  label, no patch of the given size inside the image can change the double-masking output.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .._validation import check_images, check_labels, check_positive_int
from .base import Defense, check_classifier, check_fill_values, register


# The mask set is stored as a dense K×1×H×W float tensor: refuse sets above 1 GiB.
MAX_MASK_SET_ELEMENTS = 2 ** 28


def mask_positions(n: int, p: int, k: int) -> Tuple[int, list]:
    """Mask size and start offsets along one axis (PatchCleanser §3 mask-set construction).

    Inner helper: ``n``, ``p``, ``k`` are not validated (:class:`PatchCleanser` checks them)."""
    if p > n:
        raise ValueError(f"PatchCleanser: the patch ({p} px) is larger than the image ({n} px)")
    s = math.ceil((n - p + 1) / k)
    m = p + s - 1
    starts = list(range(0, n - m + 1, s))
    if starts[-1] != n - m:
        starts.append(n - m)
    return m, starts


def mask_set(image_size: Tuple[int, int], patch_size: Tuple[int, int], k: int = 6) -> Tensor:
    """The 2-D mask set ``K×1×H×W`` (1 = masked), ``K ≤ k²``: every ``patch_size`` window of the
    image lies fully inside at least one mask. Inner helper: arguments are not validated."""
    (h, w), (ph, pw) = image_size, patch_size
    mh, ys = mask_positions(h, ph, k)
    mw, xs = mask_positions(w, pw, k)
    masks = torch.zeros(len(ys) * len(xs), 1, h, w)
    for i, (y0, x0) in enumerate((y, x) for y in ys for x in xs):
        masks[i, :, y0:y0 + mh, x0:x0 + mw] = 1.0
    return masks


def _pair(value, name: str) -> Tuple[int, int]:
    """An int ``s`` → ``(s, s)``, or an ``(h, w)`` pair of ints >= 1."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"PatchCleanser: {name} must be an int or (h, w), got {value!r}")
        return tuple(check_positive_int(v, name) for v in value)
    v = check_positive_int(value, name)
    return v, v


def _resolve_patch(patch_size, image_size: Tuple[int, int]) -> Tuple[int, int]:
    h, w = image_size
    is_fraction = (isinstance(patch_size, numbers.Real) and not isinstance(patch_size, bool)
                   and not isinstance(patch_size, numbers.Integral))
    if is_fraction:
        frac = float(patch_size)
        if not 0 < frac < 1:     # also NaN and ±inf
            raise ValueError(f"PatchCleanser: a float patch_size is an area fraction in (0, 1), got "
                             f"{patch_size} (give pixels as an int or (h, w))")
        ph = pw = math.ceil(math.sqrt(frac * h * w))
    else:
        ph, pw = _pair(patch_size, "patch_size")
    if ph > h or pw > w:
        raise ValueError(f"PatchCleanser: a {ph}×{pw} patch (patch_size) does not fit in a {h}×{w} "
                         f"image (image_size)")
    return ph, pw


@register("patchcleanser")
class PatchCleanser(Defense):
    """PatchCleanser double masking (Xiang et al., USENIX Security 2022, Algorithms 1–2).

    Prediction-level defense: :meth:`classify` returns scores whose argmax is the double-masking
    label; :meth:`certify` says which images are certifiably robust. Threat model: one patch of
    (at most) ``patch_size`` anywhere in the image. Forward-equivalents per image (images passed
    through the model) of the last call are kept in ``last_forward_counts``; the case (1, 2, 3) of
    Algorithm 1 taken per image in ``last_cases``.

    Args:
        patch_size: int (square side, pixels), ``(h, w)`` in pixels, or a float area fraction in
            (0, 1) (square side ``⌈sqrt(area·H·W)⌉``).
        image_size: int or ``(H, W)`` — the size of the images to defend.
        k (int, default 6): masks per axis (k² = 36 masks, the paper's default).
        fill (float or per-channel sequence, default 0.5): colour of masked pixels (grey, or a
            dataset mean).
        batch_size (int, default 256): masked images per model call.

    Scores: case I the mean first-round logits; case II the logits of the winning one-mask image;
    case III the mean logits of the majority masks (argmax equals the returned label in all cases).
    In ``Defended`` the gradient is BPDA with the identity (the undefended model's gradient).

    Example::

        pc = PatchCleanser(patch_size=0.05, image_size=224)
        ok = pc.certify(model, x, y); labels = pc.classify(model, x).argmax(1)
    """

    gradient = "bpda-identity"
    output = "prediction"

    def __init__(self, patch_size: Union[int, float, Sequence[int]],
                 image_size: Union[int, Sequence[int]], k: int = 6,
                 fill: Union[float, Sequence[float]] = 0.5, batch_size: int = 256):
        super().__init__()
        self.image_size = _pair(image_size, "image_size")
        self.patch_size = _resolve_patch(patch_size, self.image_size)
        self.k = check_positive_int(k, "k")
        n_masks = (len(mask_positions(self.image_size[0], self.patch_size[0], self.k)[1])
                   * len(mask_positions(self.image_size[1], self.patch_size[1], self.k)[1]))
        if n_masks * self.image_size[0] * self.image_size[1] > MAX_MASK_SET_ELEMENTS:
            raise ValueError(f"PatchCleanser: k={self.k} gives {n_masks} masks of "
                             f"{self.image_size[0]}×{self.image_size[1]} pixels, more than the mask "
                             f"set can hold ({MAX_MASK_SET_ELEMENTS} values); lower k")
        self.fill = check_fill_values(fill, "fill")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.register_buffer("masks", mask_set(self.image_size, self.patch_size, self.k))
        self.last_forward_counts = torch.zeros(0, dtype=torch.long)
        self.last_cases = torch.zeros(0, dtype=torch.long)

    @classmethod
    def from_context(cls, ctx, **options) -> "PatchCleanser":
        """``patch_size`` defaults to the threat's patch area (``ctx.patch_area``), ``image_size``
        to ``ctx.image_size`` and ``fill`` to the dataset mean (``ctx.fill``)."""
        if "patch_size" not in options:
            options["patch_size"] = ctx.require("patch_area", "'patchcleanser'",
                                                "the patch size it certifies against")
        if "image_size" not in options:
            options["image_size"] = ctx.require("image_size", "'patchcleanser'",
                                                "the image size of its mask set")
        if "fill" not in options and ctx.fill is not None:
            options["fill"] = ctx.fill
        return super().from_context(ctx, **options)

    @property
    def num_masks(self) -> int:
        return self.masks.shape[0]

    def _check(self, model, x: Tensor) -> Tensor:
        check_classifier(model)
        x = check_images(x, "PatchCleanser input x")
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"PatchCleanser: built for {self.image_size[0]}×{self.image_size[1]} "
                             f"images, got x of size {tuple(x.shape[-2:])}")
        if len(self.fill) not in (1, x.shape[1]):
            raise ValueError(f"PatchCleanser: fill has {len(self.fill)} values but the images x have "
                             f"{x.shape[1]} channels")
        return x

    @torch.no_grad()
    def _masked_logits(self, model: nn.Module, x: Tensor, img: Tensor, a: Tensor,
                       b: Tensor) -> Tensor:
        """Logits of ``x[img]`` with masks ``a`` ∪ ``b`` filled (all index tensors of length L)."""
        masks = self.masks.to(device=x.device, dtype=x.dtype)
        fill = torch.tensor(self.fill, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        out = []
        for s in range(0, img.numel(), self.batch_size):
            i, ma, mb = (t[s:s + self.batch_size] for t in (img, a, b))
            u = torch.maximum(masks[ma], masks[mb])
            out.append(model(x[i] * (1.0 - u) + fill * u))
        return torch.cat(out) if out else x.new_zeros(0, 1)

    @torch.no_grad()
    def classify(self, model: nn.Module, x: Tensor) -> Tensor:
        """Double-masking scores ``N×num_classes`` (Algorithm 1); argmax = the robust label."""
        x = self._check(model, x)
        n, k, dev = x.shape[0], self.num_masks, x.device
        img = torch.arange(n, device=dev).repeat_interleave(k)
        mi = torch.arange(k, device=dev).repeat(n)
        logits1 = self._masked_logits(model, x, img, mi, mi).view(n, k, -1)
        pred1 = logits1.argmax(-1)                                  # N×K first-round labels
        maj = pred1.mode(dim=1).values                              # majority label per image
        agree_maj = pred1 == maj[:, None]
        dn, di = (~agree_maj).nonzero(as_tuple=True)                # disagreeing (image, mask) pairs
        passed = torch.zeros(n, k, dtype=torch.bool, device=dev)
        if dn.numel():
            p = dn.numel()
            mj = torch.arange(k, device=dev).repeat(p)
            pred2 = self._masked_logits(model, x, dn.repeat_interleave(k), di.repeat_interleave(k),
                                        mj).argmax(-1).view(p, k)
            passed[dn, di] = (pred2 == pred1[dn, di][:, None]).all(1)
        case2 = passed.any(1)
        first = passed.int().argmax(1)                              # first winning disagreer
        maj_mean = (logits1 * agree_maj[..., None]).sum(1) / agree_maj.sum(1, keepdim=True)
        scores = torch.where(case2[:, None], logits1[torch.arange(n, device=dev), first], maj_mean)
        self.last_cases = torch.where(case2, 2, torch.where(agree_maj.all(1), 1, 3)).cpu()
        self.last_forward_counts = (k + (~agree_maj).sum(1) * k).cpu()
        return scores

    @torch.no_grad()
    def certify(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Bool ``N``: True where every two-mask prediction (all pairs, Algorithm 2) equals ``y``,
        i.e. double masking provably outputs ``y`` whatever patch of ``patch_size`` is placed."""
        x = self._check(model, x)
        n, k, dev = x.shape[0], self.num_masks, x.device
        y = check_labels(y, n, getattr(model, "num_classes", None)).to(dev)
        a, b = torch.triu_indices(k, k, device=dev)                # unordered pairs, i ≤ j
        p = a.numel()
        img = torch.arange(n, device=dev).repeat_interleave(p)
        pred = self._masked_logits(model, x, img, a.repeat(n), b.repeat(n)).argmax(-1).view(n, p)
        self.last_forward_counts = torch.full((n,), p, dtype=torch.long)
        self.last_cases = torch.zeros(0, dtype=torch.long)
        return (pred == y[:, None]).all(1)

    def extra_repr(self) -> str:
        return (f"patch_size={self.patch_size}, image_size={self.image_size}, k={self.k}, "
                f"masks={self.num_masks}, fill={self.fill}")
