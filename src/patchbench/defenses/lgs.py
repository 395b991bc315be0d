"""Local Gradients Smoothing and its saliency-guided variants.

- LGS: Naseer et al., "Local Gradients Smoothing: Defense against localized adversarial attacks",
  WACV 2019; as summarised in "Enhanced Local Gradient Smoothing" (ELGS, ICAART 2022) §2.3, eq. (5).
- SLGS: ELGS §3, eqs. (6)–(10): saliency mask (binarised at its mean, 2 erosions + 3 dilations with a
  3×3 kernel) gating the LGS gradient map.
- WLGS: ELGS §3, eqs. (11)–(12): normalised saliency as per-pixel weights of the gradient map, and
  the "WLGS clamp" variant of ELGS Fig. 5 (normalised saliency clipped to (0, 1)).

All three transform ``T(x) = clip(x ⊙ (1 − λ·G(x)), 0, 1)`` with ``G = g``, ``D ⊙ g`` or ``W ⊙ g``.
Threat model: localized (patch) perturbations that are high-frequency; training-free, deterministic.

The module-level building blocks (:func:`gradient_magnitude`, :func:`block_mask`, :func:`erode`,
:func:`saliency_mask`, :func:`top_k_saliency`, ...) are inner-loop helpers: their inputs are not
validated. The defense classes validate their parameters on construction and their input images
when called.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_bool, check_fraction, check_int, check_number, check_positive_int
from .base import Defense, check_classifier, register

# λ·G ≥ 1 already zeroes a pixel, so larger λ only saturates; the cap keeps λ·G finite (no inf·0 = NaN
# where G = 0), also in float16.
MAX_SMOOTHING_FACTOR = 1000.0
# Morphology past this many 3×3 steps has long reached a fixed point on any practical image.
MAX_MORPHOLOGY_STEPS = 1000

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, PIL's "L" conversion used by the LGS reference code


def gradient_magnitude(x: Tensor) -> Tensor:
    """First-order local gradient magnitude of the grey image, ``N×1×H×W`` (LGS, ELGS §2.3).

    ``|∇x(a, b)| = sqrt((x(a+1, b) − x(a, b))² + (x(a, b+1) − x(a, b))²)``, forward differences with a
    zero difference at the last row/column. RGB is converted to luma first.
    """
    if x.shape[1] == 3:
        w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        grey = (x * w).sum(1, keepdim=True)
    else:
        grey = x.mean(1, keepdim=True)
    dx = F.pad(grey[..., :, 1:] - grey[..., :, :-1], (0, 1, 0, 0))
    dy = F.pad(grey[..., 1:, :] - grey[..., :-1, :], (0, 0, 0, 1))
    # clamp keeps sqrt's derivative finite on flat regions (true subgradient there is 0 anyway)
    return (dx * dx + dy * dy).clamp_min(1e-12).sqrt()


def normalized_gradient(x: Tensor) -> Tensor:
    """Gradient magnitude min–max normalised to [0, 1] per image, ``N×1×H×W``."""
    g = gradient_magnitude(x)
    lo = g.amin(dim=(2, 3), keepdim=True)
    hi = g.amax(dim=(2, 3), keepdim=True)
    return (g - lo) / (hi - lo + 1e-7)


def block_mask(g: Tensor, window: int = 15, overlap: int = 5, threshold: float = 0.1) -> Tensor:
    """Binary ``N×1×H×W`` map: 1 on every pixel of a block whose mean of ``g`` is ≥ ``threshold``.

    Blocks are ``window×window`` with stride ``window − overlap`` (LGS's overlapping windows); the
    last row/column of blocks is clipped at the image border so every pixel lies in a block.
    Vectorised: average pooling gives block means, a transposed convolution with a ones kernel
    spreads each kept block back onto its pixels.
    """
    h, w = g.shape[-2:]
    kh, kw = min(window, h), min(window, w)
    sh, sw = max(1, min(window - overlap, kh)), max(1, min(window - overlap, kw))
    means = F.avg_pool2d(g, (kh, kw), (sh, sw), ceil_mode=True)   # divisor = in-image pixels
    keep = (means >= threshold).to(g.dtype)
    ones = torch.ones(1, 1, kh, kw, dtype=g.dtype, device=g.device)
    cover = F.conv_transpose2d(keep, ones, stride=(sh, sw))
    return (cover[..., :h, :w] > 0).to(g.dtype).detach()


def binarize_at_mean(s: Tensor) -> Tensor:
    """ELGS eq. (7): 1 where the saliency exceeds its per-image mean, else 0 (``N×1×H×W``)."""
    return (s > s.mean(dim=(2, 3), keepdim=True)).to(s.dtype)


def erode(m: Tensor, times: int = 1) -> Tensor:
    """Binary erosion with a 3×3 square (ELGS eq. 8: AND over the 8-neighbourhood); the outside
    of the image is neutral."""
    for _ in range(times):
        m = -F.max_pool2d(-m, 3, stride=1, padding=1)
    return m


def dilate(m: Tensor, times: int = 1) -> Tensor:
    """Binary dilation with a 3×3 square (ELGS eq. 9: OR over the 8-neighbourhood)."""
    for _ in range(times):
        m = F.max_pool2d(m, 3, stride=1, padding=1)
    return m


def saliency_mask(s: Tensor, erosions: int = 2, dilations: int = 3) -> Tensor:
    """SLGS's region proposal D(x): binarise at the mean, erode ``erosions`` times, dilate
    ``dilations`` times (ELGS §3: two erosions followed by three dilations, kernel 3)."""
    return dilate(erode(binarize_at_mean(s), erosions), dilations)


def standardized_saliency(s: Tensor, clamp: bool = False) -> Tensor:
    """WLGS weights W(x), ELGS eq. (11): the saliency standardised per image, ``(M − mean)/std``.

    The PDF extraction loses eq. (11)'s operators; we read it as standardisation because the
    paper's "WLGS clamp" variant (Fig. 5) clips the normalised saliency to (0, 1), which is only
    meaningful if the normalised values leave that interval. ``clamp=True`` is that variant.
    """
    if s.shape[-1] * s.shape[-2] == 1:         # one pixel: std is undefined, (M − mean) is 0
        return torch.zeros_like(s)
    mu = s.mean(dim=(2, 3), keepdim=True)
    sd = s.std(dim=(2, 3), keepdim=True)
    w = (s - mu) / (sd + 1e-12)
    return w.clamp(0.0, 1.0) if clamp else w


def top_k_saliency(model: nn.Module, x: Tensor, k: int = 5, create_graph: bool = False) -> Tensor:
    """ELGS eq. (6) with its top-5 loss: ``|∂ Σ_{c ∈ top-k(x)} CE(model(x), c) / ∂x|``, max over
    channels (Simonyan et al. 2013), ``N×1×H×W``.

    With ``create_graph`` (and ``x.requires_grad``) the map stays differentiable wrt ``x``
    (double back-propagation); otherwise it is computed on a detached copy.
    """
    if x.is_inference():                      # called under torch.inference_mode()
        with torch.inference_mode(False):
            x = x.clone()
    inp = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
    with torch.inference_mode(False), torch.enable_grad():
        logits = model(inp)
        top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
        loss = -logits.log_softmax(-1).gather(1, top).sum()
        (grad,) = torch.autograd.grad(loss, inp, create_graph=create_graph)
    sal = grad.abs().amax(1, keepdim=True)
    return sal if create_graph else sal.detach()


def _check_lgs_args(window, overlap, threshold, smoothing_factor):
    window = check_positive_int(window, "window")
    overlap = check_positive_int(overlap, "overlap", minimum=0)
    if overlap >= window:
        raise ValueError(f"overlap must be smaller than window ({window}), got {overlap}")
    threshold = check_fraction(threshold, "threshold", 0.0, 1.0, inclusive=True)
    lam = check_number(smoothing_factor, "smoothing_factor (λ)", low=0.0,
                       high=MAX_SMOOTHING_FACTOR, low_inclusive=False)
    return window, overlap, threshold, lam


def _check_saliency_args(owner: str, model, top_k):
    return check_classifier(model, f"{owner} model"), check_positive_int(top_k, "top_k")


@register("lgs")
class LGS(Defense):
    """Local Gradients Smoothing (Naseer et al., WACV 2019; ELGS §2.3, eq. 5).

    ``T(x) = clip(x ⊙ (1 − λ·g(x)), 0, 1)`` where ``g`` is the min–max normalised first-order
    gradient magnitude, zeroed outside overlapping ``window×window`` blocks whose mean is below
    ``threshold``. Differentiable (``gradient = "exact"``; the block selection is piecewise constant).

    Args:
        window (int >= 1, default 15), overlap (int in [0, window), default 5), threshold (float in
        [0, 1], default 0.1), smoothing_factor (float λ in (0, 1000], default 2.3): Naseer et al.'s
        defaults; ELGS sweeps λ ∈ {2.3, 2.7, 3.5} (VGG16, Table 1) and {1.5, 1.9, 2.3}
        (InceptionV3, Table 2).

    Shapes: ``N×C×H×W`` in [0, 1] → same.

    Example::

        xd = LGS()(x_adv)
        acc = (model(xd).argmax(1) == y).float().mean()
    """

    gradient = "exact"

    def __init__(self, window: int = 15, overlap: int = 5, threshold: float = 0.1,
                 smoothing_factor: float = 2.3):
        super().__init__()
        self.window, self.overlap, self.threshold, self.smoothing_factor = _check_lgs_args(
            window, overlap, threshold, smoothing_factor)

    def gradient_map(self, x: Tensor) -> Tensor:
        """g(x): the block-gated normalised gradient map, ``N×1×H×W`` in [0, 1]."""
        g = normalized_gradient(x)
        return g * block_mask(g.detach(), self.window, self.overlap, self.threshold)

    def suppression_map(self, x: Tensor) -> Tensor:
        """G(x) in ``T(x) = x ⊙ (1 − λ·G(x))``; for LGS G = g."""
        return self.gradient_map(x)

    def purify(self, x: Tensor) -> Tensor:
        return (x * (1.0 - self.smoothing_factor * self.suppression_map(x))).clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return (f"window={self.window}, overlap={self.overlap}, threshold={self.threshold}, "
                f"smoothing_factor={self.smoothing_factor}")


class _SaliencyGuided:
    """SLGS and WLGS are built from an experiment's context with its classifier (``ctx.model``),
    whose saliency map guides them."""

    @classmethod
    def from_context(cls, ctx, **options):
        """``model`` defaults to the context's classifier (``ctx.model``)."""
        if "model" not in options:
            options["model"] = ctx.require("model", f"{cls.name!r}",
                                           "the classifier whose saliency guides it")
        return super().from_context(ctx, **options)


@register("slgs")
class SLGS(_SaliencyGuided, LGS):
    """Saliency-map-based LGS (ELGS §3, eq. 10): ``T(x) = clip(x ⊙ (1 − λ·D(x) ⊙ g(x)), 0, 1)``.

    ``D(x)`` = saliency of ``model`` (top-5 cross-entropy, eq. 6) binarised at its mean (eq. 7),
    eroded twice and dilated three times with a 3×3 kernel (eqs. 8–9). Costs one extra forward +
    backward of ``model`` per call. Gradient: ``"exact"`` — D is a 0/1 step function of the saliency,
    so its derivative is zero almost everywhere and holding it fixed is the true gradient.

    Args:
        model: the classifier whose saliency guides the smoothing (the defended model).
        window (15), overlap (5), threshold (float, default 0.2: ELGS §3 sets the gradient-map
        threshold to 0.2), smoothing_factor (λ, default 2.3), top_k (5), erosions (2), dilations (3).

    Example::

        defense = SLGS(model, smoothing_factor=3.5)
        target = Defended(model, defense)
    """

    gradient = "exact"

    def __init__(self, model: nn.Module, window: int = 15, overlap: int = 5,
                 threshold: float = 0.2, smoothing_factor: float = 2.3, top_k: int = 5,
                 erosions: int = 2, dilations: int = 3):
        super().__init__(window, overlap, threshold, smoothing_factor)
        self.model, self.top_k = _check_saliency_args("SLGS", model, top_k)
        self.erosions = check_int(erosions, "erosions", 0, MAX_MORPHOLOGY_STEPS)
        self.dilations = check_int(dilations, "dilations", 0, MAX_MORPHOLOGY_STEPS)

    def suppression_map(self, x: Tensor) -> Tensor:
        sal = top_k_saliency(self.model, x, self.top_k)
        return saliency_mask(sal, self.erosions, self.dilations) * self.gradient_map(x)


@register("wlgs")
class WLGS(_SaliencyGuided, LGS):
    """Weighted LGS (ELGS §3, eqs. 11–12): ``T(x) = clip(x ⊙ (1 − λ·W(x) ⊙ g(x)), 0, 1)``.

    ``W`` = the top-5 saliency of ``model`` standardised per image (eq. 11, see
    :func:`standardized_saliency`); ``clamp=True`` clips W to [0, 1] ("WLGS clamp", ELGS Fig. 5).

    Args:
        model: the classifier whose saliency weights the smoothing.
        clamp (bool, default False): the clamped variant.
        second_order (bool, default False): if True, W stays differentiable wrt the input (double
            back-propagation, ``gradient = "exact"``, ~2–3× the cost); if False, W is held fixed at
            its forward value in the backward pass (``gradient = "bpda-constant"``).
        window (15), overlap (5), threshold (0.2, ELGS §3), smoothing_factor (λ, 2.3), top_k (5).

    Example::

        defense = WLGS(model, clamp=True)
        xd = defense(x_adv)
    """

    gradient = "bpda-constant"

    def __init__(self, model: nn.Module, clamp: bool = False, second_order: bool = False,
                 window: int = 15, overlap: int = 5, threshold: float = 0.2,
                 smoothing_factor: float = 2.3, top_k: int = 5):
        super().__init__(window, overlap, threshold, smoothing_factor)
        self.model, self.top_k = _check_saliency_args("WLGS", model, top_k)
        self.clamp = check_bool(clamp, "clamp")
        self.second_order = check_bool(second_order, "second_order")
        self.gradient = "exact" if self.second_order else "bpda-constant"

    def suppression_map(self, x: Tensor) -> Tensor:
        second = self.second_order and torch.is_grad_enabled() and x.requires_grad
        sal = top_k_saliency(self.model, x, self.top_k, create_graph=second)
        return standardized_saliency(sal, self.clamp) * self.gradient_map(x)
