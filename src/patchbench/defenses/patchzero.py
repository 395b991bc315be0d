"""PatchZero: detect adversarial-patch pixels and "zero them out" with the dataset mean.

Paper: Xu, Zhang, Liu, Song, Sorkin & Wang, "PatchZero: Defending against Adversarial Patch Attacks
by Detecting and Zeroing the Patch", WACV 2023.

Pipeline (§3.2, Eq. 3): a pixel-level detector ``d`` gives ``p = σ(d(x))``, the probability that a
pixel belongs to a patch; it is binarised at ``ε_p = 0.5`` (§4), the mask is enlarged by a
morphological dilation of a few pixels (§3.2, border pixels the detector misses), and the flagged
pixels are repainted with the dataset mean: ``x' = x ⊙ (1 − m) + x̄ ⊙ m``. (The paper's ``M`` marks
benign pixels with 1; our ``m = ¬M`` marks patch pixels, as every patchbench mask does.)

Adaptive attacks (§3.3): the binarisation is a step function, so an adaptive BPDA attacker
differentiates it as a sigmoid (``gradient="bpda-sigmoid"``, the paper's choice) or straight through
(``"bpda-straight-through"``, SAC's identity estimator discussed in §2). ``"exact"`` gives the true
(zero) derivative of the threshold; ``"bpda-identity"`` treats the whole defense as the identity.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import (check_bool, check_choice, check_device, check_fraction, check_images,
                           check_input_size, check_int, check_path, check_positive,
                           check_positive_int)
from .base import Defense, _binarize, bpda, check_fill_values, register

FORMAT = "patchbench.patchzero/1"
_MODES = ("bpda-sigmoid", "bpda-straight-through", "exact", "bpda-identity")
_ASSETS = {"fmnist_do": "patchzero_fmnist_do.pt", "fmnist_two_stage": "patchzero_fmnist_two_stage.pt"}


def build_detector(kind: str, config: dict) -> nn.Module:
    """Rebuild a detector from its ``kind`` (``"unet"`` or ``"mobilenet_v2_segmenter"``) and config."""
    if kind == "unet":
        from ..models.unet import UNet
        return UNet(**config)
    if kind == "mobilenet_v2_segmenter":
        from ..models.segmenter import MobileNetV2Segmenter
        return MobileNetV2Segmenter.from_config(config)   # weights come from the file
    raise ValueError(f"unknown PatchZero detector kind {kind!r}; expected 'unet' or "
                     f"'mobilenet_v2_segmenter'")


def detector_kind(detector: nn.Module) -> str:
    """The ``kind`` string :func:`build_detector` understands for ``detector``."""
    names = {"UNet": "unet", "MobileNetV2Segmenter": "mobilenet_v2_segmenter"}
    kind = names.get(type(detector).__name__)
    if kind is None or not hasattr(detector, "config"):
        raise TypeError(f"cannot save a {type(detector).__name__} detector: expected a patchbench "
                        f"UNet or MobileNetV2Segmenter")
    return kind


def dilate(mask: Tensor, radius: int) -> Tensor:
    """Morphological dilation of ``N×1×H×W`` masks by a ``(2r+1)²`` square (differentiable max-pool).

    Inner-loop helper: inputs are not validated. A radius beyond the image side gives the same
    result as the image side, so it is capped there."""
    if radius <= 0:
        return mask
    radius = min(int(radius), max(mask.shape[-2:]))
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)


def _check_plain(value, name: str, depth: int = 0) -> None:
    """Refuse values ``torch.load(weights_only=True)`` could not read back (or cycles)."""
    if depth > 20:
        raise ValueError(f"{name}: nested too deeply (or refers to itself)")
    if value is None or isinstance(value, (bool, int, float, str, bytes, Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{name}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{name}: keys must be strings or ints, got {type(k).__name__}")
            _check_plain(v, f"{name}[{k!r}]", depth + 1)
        return
    raise TypeError(f"{name}: cannot be saved in a weights-only checkpoint: {type(value).__name__} "
                    f"(use numbers, strings, lists, dicts or tensors)")


@register("patchzero")
class PatchZero(Defense):
    """Pixel-level patch detection + mean-value repainting (PatchZero, WACV 2023, §3.2, Eq. 3).

    Threat model: white-box patch attacks; adaptive attackers differentiate through the detector with
    BPDA (§3.3).

    Args:
        detector (nn.Module): maps ``N×C×H×W`` in [0, 1] to patch logits ``N×1×H×W`` (a ``UNet``
            or ``MobileNetV2Segmenter``). Trained detectors come from :meth:`load` (a checkpoint
            path or an asset name: ``"fmnist_do"``, ``"fmnist_two_stage"``).
        threshold (float): ε_p, pixels with ``p ≥ threshold`` are patch pixels. Default: 0.5 (§4).
        dilation (int): radius in pixels of the square dilation of the mask. Default: 1.
        fill (float or sequence): the repaint value per channel (the dataset mean). Default: 0.5.
        input_size (tuple or None): ``(H, W)`` the detector was trained for; other sizes raise
            ``ValueError``. Default: ``detector.input_size`` (None = any size).
        gradient (str): ``"bpda-sigmoid"`` (default), ``"bpda-straight-through"``, ``"exact"`` or
            ``"bpda-identity"`` — see the module docstring.
        temperature (float): sigmoid width τ of ``σ((p − ε_p)/τ)`` for ``"bpda-sigmoid"``. Default: 0.05.

    Shapes: ``N×C×H×W`` in [0, 1] → ``N×C×H×W`` in [0, 1]; pixels outside the (dilated) mask are
    bit-identical to the input, pixels inside equal ``fill``.

    Example::

        defense = PatchZero.load("patchzero_fmnist_two_stage.pt")
        x_clean = defense(x_adv); mask = defense.predict_mask(x_adv)
    """

    gradient = "bpda-sigmoid"

    def __init__(self, detector: nn.Module, threshold: float = 0.5, dilation: int = 1,
                 fill: Union[float, Sequence[float]] = 0.5,
                 input_size: Optional[Tuple[int, int]] = None, gradient: str = "bpda-sigmoid",
                 temperature: float = 0.05):
        super().__init__()
        if isinstance(detector, (str, os.PathLike)):
            raise TypeError("PatchZero(detector=...) got a path: use PatchZero.load(path) instead")
        if not isinstance(detector, nn.Module):
            raise TypeError(f"PatchZero: detector must be an nn.Module, got {type(detector).__name__}")
        self.gradient = check_choice(gradient, "gradient", _MODES)
        self.dilation = check_int(dilation, "dilation", minimum=0)
        self.detector = detector
        self.threshold = check_fraction(threshold, "threshold", 0.0, 1.0)
        self.temperature = check_positive(temperature, "temperature")
        channels = getattr(detector, "channels", None)
        self.channels = (None if channels in (None, 0)
                         else check_positive_int(channels, "detector.channels"))
        size = input_size if input_size is not None else getattr(detector, "input_size", None)
        self.input_size = check_input_size(size, "input_size")
        fill = check_fill_values(fill, "fill", self.channels)
        self.register_buffer("fill", torch.tensor(fill, dtype=torch.float32).view(1, -1, 1, 1))

    def _check(self, x: Tensor) -> None:
        if self.channels is not None and x.shape[1] != self.channels:
            raise ValueError(f"PatchZero: the detector was trained on {self.channels}-channel images, "
                             f"got {x.shape[1]} channels (shape {tuple(x.shape)})")
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"PatchZero: the detector was trained on {self.input_size[0]}×"
                             f"{self.input_size[1]} images, got {x.shape[-2]}×{x.shape[-1]}; "
                             f"resize the images or train a detector for this size")

    def soft_mask(self, x: Tensor) -> Tensor:
        """Per-pixel patch probability ``p = σ(d(x))``, ``N×1×H×W`` (differentiable)."""
        return self._soft_mask(check_images(x, "PatchZero.soft_mask input x"))

    def _soft_mask(self, x: Tensor) -> Tensor:
        self._check(x)
        param = next(self.detector.parameters(), None)
        z = x
        if param is not None:
            if param.device != x.device:
                raise ValueError(f"PatchZero: the images x are on {x.device} but the detector is on "
                                 f"{param.device}; move one of them (defense.to(device))")
            if param.dtype != x.dtype:      # float64 / float16 images: run the detector in its dtype
                z = x.to(param.dtype)
        logits = self.detector(z)
        if not isinstance(logits, Tensor) or tuple(logits.shape) != (x.shape[0], 1, *x.shape[-2:]):
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"PatchZero: the detector must return patch logits N×1×H×W = "
                             f"{(x.shape[0], 1, *x.shape[-2:])}, got {got}")
        return torch.sigmoid(logits).to(x.dtype)

    def _mask(self, x: Tensor, dilated: bool = True) -> Tensor:
        p = self._soft_mask(x)
        mode = "exact" if self.gradient == "bpda-identity" else self.gradient
        m = _binarize(p, self.threshold, mode, self.temperature)
        return dilate(m, self.dilation) if dilated else m

    @torch.no_grad()
    def predict_mask(self, x: Tensor, dilated: bool = True) -> Tensor:
        """The binary patch mask ``N×1×H×W`` (float, exactly 0/1) PatchZero repaints; with
        ``dilated=False`` the detector's own thresholded output (what §4.4 Table 5 scores)."""
        x = check_images(x, "PatchZero.predict_mask input x")
        return self._mask(x, check_bool(dilated, "dilated"))

    def purify(self, x: Tensor) -> Tensor:
        m = self._mask(x)
        fill = self.fill.to(device=x.device, dtype=x.dtype)
        out = x * (1 - m) + fill * m   # Eq. 3, with m = 1 on patch pixels
        return bpda(out, x) if self.gradient == "bpda-identity" else out

    def extra_repr(self) -> str:
        return (f"threshold={self.threshold}, dilation={self.dilation}, gradient={self.gradient!r}, "
                f"input_size={self.input_size}")

    @classmethod
    def from_context(cls, ctx, checkpoint=None, **options) -> "PatchZero":
        """Load the detector ``checkpoint`` — a path, an artifact reference ``"@NAME"`` (a path in
        ``ctx.artifacts``) or an asset name (``"fmnist_do"``, ``"fmnist_two_stage"``) — onto
        ``ctx.device``, checked against ``ctx.image_size`` / ``ctx.channels``; ``options`` override
        its saved settings (``threshold``, ``dilation``, ``fill``, ``gradient``, ``temperature``).
        Without a checkpoint, ``detector=`` (an untrained or in-memory module) builds it directly."""
        if checkpoint is None:
            if "detector" not in options:
                raise ValueError(f"checkpoint: 'patchzero' needs a trained detector: "
                                 f"checkpoint=PATH, '@ARTIFACT' (one of the context's artifacts) "
                                 f"or an asset name ({', '.join(_ASSETS)})")
            return super().from_context(ctx, **options)
        unknown = [k for k in options if k not in _OVERRIDES]
        if unknown:
            raise TypeError(f"defense 'patchzero': unexpected keyword argument"
                            f"{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                            f"with a checkpoint it accepts: checkpoint, {', '.join(_OVERRIDES)}")
        path = ctx.resolve(checkpoint, "checkpoint")
        return cls.load(path, device=ctx.device, input_size=ctx.image_size, channels=ctx.channels,
                        **options)

    # ------------------------------------------------------------------ checkpoints
    def save(self, path, **meta) -> str:
        """Write detector weights + defense settings to ``path`` (atomically); returns the path.

        ``meta`` values must be plain data (numbers, strings, None, lists/tuples/dicts of them,
        tensors): :meth:`load` reads with ``weights_only=True`` and would refuse anything else."""
        path = check_path(path, "path", kind="file", must_exist=False)
        for k, v in meta.items():
            _check_plain(v, f"meta[{k!r}]")
        kind = detector_kind(self.detector)
        ckpt = dict(format=FORMAT, kind=kind, config=dict(self.detector.config),
                    state_dict={k: v.detach().cpu() for k, v in self.detector.state_dict().items()},
                    threshold=self.threshold, dilation=self.dilation,
                    fill=self.fill.flatten().tolist(), channels=self.channels,
                    input_size=list(self.input_size) if self.input_size else None, meta=meta)
        from .._io import atomic_save
        return str(atomic_save(ckpt, path))

    @classmethod
    def load(cls, path, device="cpu", input_size: Optional[Tuple[int, int]] = None,
             channels: Optional[int] = None, **overrides) -> "PatchZero":
        """Load a checkpoint written by :meth:`save` (or an asset name such as ``"fmnist_two_stage"``).

        ``input_size`` / ``channels``, when given, must match what the detector was trained for
        (``ValueError`` otherwise). ``overrides`` replace saved settings (``dilation``, ``gradient``,
        ``threshold``, ``fill``, ``temperature``). The returned defense is in eval mode.

        Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for one
        that is not a PatchZero checkpoint (unreadable, wrong format, missing entries, weights of
        another architecture or shape, NaN/Inf weights).
        """
        if isinstance(path, str) and path in _ASSETS:
            path = Path(__file__).resolve().parent.parent / "assets" / _ASSETS[path]
        if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a checkpoint path or an asset name "
                            f"({', '.join(_ASSETS)}), got {path!r}")
        if not Path(path).is_file():
            if Path(path).is_dir():
                raise ValueError(f"path: {str(path)!r} is a directory, not a PatchZero checkpoint")
            raise FileNotFoundError(f"PatchZero checkpoint {path} not found (asset names: "
                                    f"{', '.join(_ASSETS)})")
        device = check_device(device, "device")
        input_size = check_input_size(input_size, "input_size")
        if channels is not None:
            channels = check_positive_int(channels, "channels")
        unknown = sorted(set(overrides) - set(_OVERRIDES))
        if unknown:
            raise TypeError(f"PatchZero.load: unknown setting(s) {unknown}; overrides can be "
                            f"{', '.join(_OVERRIDES)}")
        ckpt = _read_checkpoint(Path(path))
        saved = ckpt["input_size"]
        if input_size is not None and saved is not None and input_size != saved:
            raise ValueError(f"{path}: detector trained for {saved[0]}×{saved[1]} images, but "
                             f"{input_size[0]}×{input_size[1]} was requested")
        if channels is not None and ckpt["channels"] is not None and channels != ckpt["channels"]:
            raise ValueError(f"{path}: detector trained for {ckpt['channels']}-channel images, but "
                             f"{channels} channels were requested")
        detector = _build_loaded_detector(Path(path), ckpt)
        kw = dict(threshold=ckpt["threshold"], dilation=ckpt["dilation"], fill=ckpt["fill"],
                  input_size=saved)
        try:
            cls(detector, **kw)          # the file's own settings
        except (TypeError, ValueError, LookupError) as e:
            raise ValueError(f"{path}: invalid saved PatchZero setting: {e}") from e
        kw.update(overrides)
        return cls(detector, **kw).to(device).eval()


_OVERRIDES = ("threshold", "dilation", "fill", "gradient", "temperature")
_REQUIRED = ("kind", "config", "state_dict", "threshold", "dilation", "fill", "channels",
             "input_size")


def _read_checkpoint(path: Path) -> dict:
    """The checkpoint dict at ``path``, its structure checked; ``ValueError`` naming the file.

    Shipped assets are checked against ``assets/SHA256SUMS`` first; every file is loaded with
    ``weights_only=True`` (:func:`patchbench.models.weights.load_file`)."""
    from ..models.weights import check_finite, load_file, verify_asset
    verify_asset(path)
    try:
        ckpt = load_file(path, "path")
    except ValueError as e:
        raise ValueError(f"{path}: not a PatchZero checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a PatchZero checkpoint (expected format {FORMAT!r})")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: PatchZero checkpoint is missing the entries {missing}")
    sd = ckpt["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{path}: 'state_dict' must map parameter names to tensors")
    if not isinstance(ckpt["config"], dict):
        raise ValueError(f"{path}: 'config' must be a dict, got {type(ckpt['config']).__name__}")
    check_finite(sd, path)
    try:
        ckpt = dict(ckpt, input_size=check_input_size(ckpt["input_size"], "input_size"))
        if ckpt["channels"] is not None:
            ckpt["channels"] = check_positive_int(ckpt["channels"], "channels")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: invalid saved PatchZero setting: {e}") from e
    return ckpt


def _build_loaded_detector(path: Path, ckpt: dict) -> nn.Module:
    """Rebuild the detector of ``ckpt`` and load its weights; ``ValueError`` naming the file and
    the mismatching keys when the weights are for another architecture or shape."""
    from ..models.weights import load_state_dict_checked
    try:
        detector = build_detector(ckpt["kind"], ckpt["config"])
    except (TypeError, ValueError, LookupError, RuntimeError) as e:
        raise ValueError(f"{path}: cannot rebuild the PatchZero detector (kind {ckpt['kind']!r}, "
                         f"config {ckpt['config']!r}): {e}") from e
    return load_state_dict_checked(detector, ckpt["state_dict"], path,
                                   f"a {ckpt['kind']} detector with config {ckpt['config']!r}")
