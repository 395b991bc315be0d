"""Physical-world robustness: Expectation over Transformation (EOT), printability and smoothness.

EOT (Athalye et al., ICML 2018, Sec. 2 / Eq. 1; used for patches by Brown et al. 2017, Sec. 2) optimises
a patch over a *distribution* of transformations. Following kornia's augmentation design, the random
work is split into ``EOT.sample(n, generator) -> EOTParams`` and applying those parameters:

* geometric parameters (rotation, scale, perspective) are folded into the placement homography by
  :class:`patchbench.patches.Threat`, so the shape mask is warped by exactly the same transform as
  the patch pixels;
* photometric parameters (brightness, contrast, blur, sensor noise) act on the patch pixels only
  (:func:`apply_photometric`, called by :func:`patchbench.patches.paste`).

Printability: :func:`nps_loss` is the non-printability score of Sharif et al. (CCS 2016, Sec. 4.3.1,
Eq. 4); :func:`tv_loss` is their smoothness (total-variation) term (Sec. 4.3.1, Eq. 3).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_int, check_number, check_positive, make_generator


def _take(t: Tensor, i) -> Tensor:
    if isinstance(i, int):
        i = slice(i, i + 1 if i != -1 else None)
    return t[i]


@dataclass
class PhotometricParams:
    """Per-sample photometric changes of the patch (all tensors have length N).

    ``patch' = clamp(contrast·(patch − 0.5) + 0.5 + brightness, then Gaussian blur of std
    blur_sigma (patch pixels), then + noise_std·ε)`` with ε drawn from ``noise_seed`` (so the same
    parameters always give the same noise, on any device).
    """

    brightness: Tensor
    contrast: Tensor
    blur_sigma: Tensor
    noise_std: Tensor
    noise_seed: Tensor
    blur_radius: int = 0
    has_noise: bool = False

    @property
    def n(self) -> int:
        return int(self.brightness.shape[0])

    def to(self, device) -> "PhotometricParams":
        return replace(self, brightness=self.brightness.to(device), contrast=self.contrast.to(device),
                       blur_sigma=self.blur_sigma.to(device), noise_std=self.noise_std.to(device),
                       noise_seed=self.noise_seed.to("cpu"))

    def index(self, i) -> "PhotometricParams":
        return replace(self, brightness=_take(self.brightness, i), contrast=_take(self.contrast, i),
                       blur_sigma=_take(self.blur_sigma, i), noise_std=_take(self.noise_std, i),
                       noise_seed=_take(self.noise_seed, i))


@dataclass
class EOTParams:
    """Sampled EOT parameters: ``angle`` N (degrees), ``scale`` N, ``perspective`` N×4×2 (corner
    offsets as fractions of the patch width/height, corners TL, TR, BR, BL) and ``photometric``."""

    angle: Tensor
    scale: Tensor
    perspective: Tensor
    photometric: PhotometricParams

    @property
    def n(self) -> int:
        return int(self.angle.shape[0])

    def to(self, device) -> "EOTParams":
        return EOTParams(self.angle.to(device), self.scale.to(device), self.perspective.to(device),
                         self.photometric.to(device))

    def index(self, i) -> "EOTParams":
        return EOTParams(_take(self.angle, i), _take(self.scale, i), _take(self.perspective, i),
                         self.photometric.index(i))


def _nonneg(v, name: str, high: float = math.inf) -> float:
    """A finite number in ``[0, high)`` (``high`` inclusive up to 1e-9 where it is 1 + 1e-9)."""
    return check_number(v, f"EOT {name}", 0.0, None if math.isinf(high) else high,
                        high_inclusive=False)


def _scale_range(scale) -> tuple:
    if isinstance(scale, (str, bytes)) or scale is None or isinstance(scale, bool):
        raise TypeError(f"EOT scale: expected a number > 0 or a (lo, hi) pair, got {scale!r}")
    if isinstance(scale, numbers.Real) or (isinstance(scale, Tensor) and scale.dim() == 0):
        lo = hi = check_positive(scale, "EOT scale")
    else:
        try:
            pair = tuple(scale)
        except TypeError as e:
            raise TypeError(f"EOT scale: expected a number > 0 or a (lo, hi) pair, got "
                            f"{scale!r}") from e
        if len(pair) != 2:
            raise ValueError(f"EOT scale: expected a (lo, hi) pair, got {len(pair)} values")
        lo, hi = (check_positive(v, "EOT scale") for v in pair)
    if lo > hi:
        raise ValueError(f"EOT scale: expected 0 < lo <= hi, got {scale!r}")
    return lo, hi


class EOT:
    r"""Distribution of physical transformations of a patch (Athalye et al. 2018, Eq. 1).

    Threat model: the patch is printed and photographed; it must survive small rotations, distance
    changes (scale), viewpoint changes (perspective), lighting (brightness/contrast), defocus (blur)
    and sensor noise. All ranges are uniform, as in Brown et al. (2017, Sec. 2).

    Arguments:
        rotation (float): max rotation in degrees, angle ~ U(−rotation, rotation). Default: 20.
        scale (tuple or float): scale ~ U(lo, hi); a single number is a fixed scale.
            Default: (0.8, 1.2).
        perspective (float): each corner moves by U(−p, p) × the patch's width/height, in [0, 0.5).
            Default: 0.1.
        brightness (float): additive offset ~ U(−b, b). Default: 0.1.
        contrast (float): factor ~ U(1 − c, 1 + c) around mid-grey, c in [0, 1). Default: 0.1.
        blur (float): Gaussian blur std ~ U(0, blur), in patch pixels. Default: 1.0.
        noise (float): Gaussian noise std ~ U(0, noise). Default: 0.03.

    Shape:
        sample(n, generator) -> EOTParams with N-long tensors; apply_photometric(patch N×C×h×w, params).

    Examples::
        >>> eot = EOT(rotation=20, scale=(0.8, 1.2))
        >>> threat = Threat(area=0.05, eot=eot)   # paste() then applies all of it
    """

    def __init__(self, rotation: float = 20.0, scale=(0.8, 1.2), perspective: float = 0.1,
                 brightness: float = 0.1, contrast: float = 0.1, blur: float = 1.0,
                 noise: float = 0.03):
        self.rotation = _nonneg(rotation, "rotation", 180.0)
        self.scale = _scale_range(scale)
        self.perspective = _nonneg(perspective, "perspective", 0.5)
        self.brightness = _nonneg(brightness, "brightness", 1.0 + 1e-9)
        self.contrast = _nonneg(contrast, "contrast", 1.0)
        self.blur = _nonneg(blur, "blur")
        self.noise = _nonneg(noise, "noise", 1.0 + 1e-9)

    def __repr__(self) -> str:
        return (f"EOT(rotation={self.rotation}, scale={self.scale}, perspective={self.perspective}, "
                f"brightness={self.brightness}, contrast={self.contrast}, blur={self.blur}, "
                f"noise={self.noise})")

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> EOTParams:
        """Draw parameters for ``n`` samples on the generator's device (seed 0 if ``None``)."""
        n = check_int(n, "EOT.sample: n", minimum=1)
        g = make_generator(generator)
        dev = g.device

        def u(lo, hi, *shape):
            return lo + (hi - lo) * torch.rand(n, *shape, generator=g, device=dev)

        angle = u(-self.rotation, self.rotation)
        scale = u(*self.scale)
        persp = u(-self.perspective, self.perspective, 4, 2)
        photo = PhotometricParams(
            brightness=u(-self.brightness, self.brightness), contrast=u(1 - self.contrast,
                                                                        1 + self.contrast),
            blur_sigma=u(0.0, self.blur), noise_std=u(0.0, self.noise),
            noise_seed=torch.randint(0, 2 ** 62, (n,), generator=g, device=dev).cpu(),
            blur_radius=int(math.ceil(2 * self.blur)), has_noise=self.noise > 0)
        return EOTParams(angle, scale, persp, photo)

    def apply_photometric(self, patch: Tensor, params: EOTParams) -> Tensor:
        """The photometric half of the parameters applied to ``patch`` (N×C×h×w)."""
        if not isinstance(params, EOTParams):
            raise TypeError(f"EOT.apply_photometric: params must be EOTParams from EOT.sample(), got "
                            f"{type(params).__name__}")
        return apply_photometric(patch, params.photometric)


def _gaussian_blur(p: Tensor, sigma: Tensor, radius: int) -> Tensor:
    """Per-sample separable Gaussian blur of ``p`` (N×C×h×w) with std ``sigma`` (N)."""
    n, c, h, w = p.shape
    k = torch.arange(-radius, radius + 1, device=p.device, dtype=p.dtype)
    s = sigma.to(p.dtype).clamp_min(1e-3).view(n, 1)
    g = torch.exp(-0.5 * (k.view(1, -1) / s) ** 2)
    g = (g / g.sum(1, keepdim=True)).repeat_interleave(c, 0)              # (N·C)×K
    x = F.pad(p.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, g.view(n * c, 1, 1, -1), groups=n * c)
    x = F.conv2d(x, g.view(n * c, 1, -1, 1), groups=n * c)
    return x.view(n, c, h, w)


def apply_photometric(patch: Tensor, params: Optional[PhotometricParams]) -> Tensor:
    """Brightness/contrast, blur and noise on patch pixels (N×C×h×w, differentiable); see
    :class:`PhotometricParams` for the order. ``params=None`` returns ``patch`` unchanged.

    Inner-loop helper (:func:`~patchbench.patches.paste` calls it on every pasting): the types and
    shapes are checked, the pixel values are not (they should lie in [0, 1])."""
    if params is None:
        return patch
    if not isinstance(params, PhotometricParams):
        raise TypeError(f"apply_photometric: params must be PhotometricParams (EOT.sample(n)"
                        f".photometric) or None, got {type(params).__name__}")
    if not isinstance(patch, Tensor) or not patch.is_floating_point():
        got = f"dtype {patch.dtype}" if isinstance(patch, Tensor) else type(patch).__name__
        raise TypeError(f"apply_photometric: patch must be a float tensor N×C×h×w, got {got}")
    if patch.dim() != 4 or patch.shape[0] != params.n:
        raise ValueError(f"apply_photometric: expected a patch N×C×h×w with N={params.n}, got shape "
                         f"{tuple(patch.shape)}")
    view = (-1, 1, 1, 1)
    p = params.contrast.to(patch).view(view) * (patch - 0.5) + 0.5 + \
        params.brightness.to(patch).view(view)
    if params.blur_radius > 0:
        p = _gaussian_blur(p, params.blur_sigma.to(patch.device), params.blur_radius)
    if params.has_noise:
        eps = torch.stack([torch.randn(patch.shape[1:], generator=make_generator(int(s)))
                           for s in params.noise_seed.tolist()]).to(patch)
        p = p + params.noise_std.to(patch).view(view) * eps
    return p.clamp(0.0, 1.0)


def default_printable_colors(channels: int = 3, levels: int = 3, device=None) -> Tensor:
    """A coarse grid of ``levels`` values per channel in [0, 1] (3 levels → 27 RGB colours).

    We have no printer-measured palette (Sharif et al. printed and photographed 30 colours); this
    grid is a stand-in that penalises colours far from any grid point. Pass your printer's measured
    colours to :func:`nps_loss` for a real printability score.
    """
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(f"default_printable_colors: channels must be 1 or 3, got {channels!r}")
    levels = check_int(levels, "default_printable_colors: levels", minimum=2)
    v = torch.linspace(0.0, 1.0, levels, device=device)
    if channels == 1:
        return v.view(-1, 1)
    return torch.cartesian_prod(v, v, v)


def _patch_4d(patch, fn: str) -> Tensor:
    if not isinstance(patch, Tensor) or patch.dim() not in (3, 4) or not patch.is_floating_point():
        got = tuple(patch.shape) if isinstance(patch, Tensor) else type(patch).__name__
        raise ValueError(f"{fn}: expected a float patch C×h×w or N×C×h×w, got {got}")
    return patch if patch.dim() == 4 else patch.unsqueeze(0)


def _masked_mean(v: Tensor, mask: Optional[Tensor]) -> Tensor:
    if mask is None:
        return v.mean()
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask: expected an h×w weight tensor or None, got {type(mask).__name__}")
    m = mask.to(v).expand_as(v)
    return (v * m).sum() / m.sum().clamp_min(1.0)


def nps_loss(patch: Tensor, printable_colors: Optional[Tensor] = None,
             mask: Optional[Tensor] = None) -> Tensor:
    r"""Non-printability score (Sharif et al., CCS 2016, Eq. 4): :math:`\prod_{c \in P} \|p - c\|_2`
    per pixel ``p``, averaged over pixels (the paper sums; the mean makes it size-independent).

    Arguments:
        patch: ``C×h×w`` or ``N×C×h×w`` in [0, 1].
        printable_colors: ``K×C`` palette; default :func:`default_printable_colors` (a 3-level grid —
            a stand-in, not a measured printer palette).
        mask: optional ``h×w`` (or broadcastable) weights, e.g. the shape mask. Default: all pixels.

    Inner-loop helper (a training penalty): shapes are checked, values are not.

    Example::
        >>> loss = nps_loss(patch) + tv_loss(patch)      # differentiable wrt patch
    """
    p = _patch_4d(patch, "nps_loss")
    c = p.shape[1]
    pal = default_printable_colors(c, device=p.device) if printable_colors is None \
        else printable_colors
    if not isinstance(pal, Tensor) or pal.dim() != 2 or pal.shape[1] != c:
        got = tuple(pal.shape) if isinstance(pal, Tensor) else type(pal).__name__
        raise ValueError(f"nps_loss: printable_colors must be K×{c} (one colour per row), got {got}")
    diff = p.unsqueeze(1) - pal.to(p).view(1, -1, c, 1, 1)               # N×K×C×h×w
    dist = (diff.pow(2).sum(2) + 1e-12).sqrt()                            # N×K×h×w
    return _masked_mean(dist.prod(1).unsqueeze(1), mask)


def tv_loss(patch: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    r"""Total variation (Sharif et al. 2016, Eq. 3): :math:`\sqrt{(p_{i,j}-p_{i+1,j})^2 +
    (p_{i,j}-p_{i,j+1})^2}` per pixel and channel, averaged (optionally weighted by ``mask`` h×w).

    Inner-loop helper (a training penalty): shapes are checked, values are not.

    Example::
        >>> tv_loss(torch.rand(3, 16, 16)) > tv_loss(torch.full((3, 16, 16), 0.5))
        tensor(True)
    """
    p = _patch_4d(patch, "tv_loss")
    dy = F.pad(p[..., 1:, :] - p[..., :-1, :], (0, 0, 0, 1))
    dx = F.pad(p[..., :, 1:] - p[..., :, :-1], (0, 1, 0, 0))
    return _masked_mean((dx.pow(2) + dy.pow(2) + 1e-12).sqrt(), mask)
