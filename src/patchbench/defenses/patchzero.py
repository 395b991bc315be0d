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

from .._validation import check_fraction, check_images
from .base import Defense, binarize, bpda, register

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
    """Morphological dilation of ``N×1×H×W`` masks by a ``(2r+1)²`` square (differentiable max-pool)."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius)


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
        if gradient not in _MODES:
            raise ValueError(f"PatchZero: gradient must be one of {_MODES}, got {gradient!r}")
        if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 0:
            raise ValueError(f"PatchZero: dilation must be an integer >= 0, got {dilation!r}")
        self.detector = detector
        self.threshold = check_fraction(threshold, "threshold", 0.0, 1.0)
        self.dilation = dilation
        self.gradient = gradient
        self.temperature = check_fraction(temperature, "temperature", 0.0, float("inf"))
        self.channels = int(getattr(detector, "channels", 0)) or None
        size = input_size if input_size is not None else getattr(detector, "input_size", None)
        self.input_size = tuple(int(s) for s in size) if size is not None else None
        fill_t = torch.as_tensor(fill, dtype=torch.float32).flatten()
        if self.channels is not None and fill_t.numel() not in (1, self.channels):
            raise ValueError(f"PatchZero: fill needs 1 or {self.channels} values, got {fill_t.numel()}")
        if fill_t.numel() == 0 or float(fill_t.min()) < 0 or float(fill_t.max()) > 1:
            raise ValueError(f"PatchZero: fill values must lie in [0, 1], got {fill!r}")
        self.register_buffer("fill", fill_t.view(1, -1, 1, 1))

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
        self._check(x)
        return torch.sigmoid(self.detector(x))

    def _mask(self, x: Tensor, dilated: bool = True) -> Tensor:
        p = self.soft_mask(x)
        mode = "exact" if self.gradient == "bpda-identity" else self.gradient
        m = binarize(p, self.threshold, mode, self.temperature)
        return dilate(m, self.dilation) if dilated else m

    @torch.no_grad()
    def predict_mask(self, x: Tensor, dilated: bool = True) -> Tensor:
        """The binary patch mask ``N×1×H×W`` (float, exactly 0/1) PatchZero repaints; with
        ``dilated=False`` the detector's own thresholded output (what §4.4 Table 5 scores)."""
        x = check_images(x, "PatchZero.predict_mask input")
        return self._mask(x, dilated)

    def purify(self, x: Tensor) -> Tensor:
        m = self._mask(x)
        fill = self.fill.to(device=x.device, dtype=x.dtype)
        out = x * (1 - m) + fill * m   # Eq. 3, with m = 1 on patch pixels
        return bpda(out, x) if self.gradient == "bpda-identity" else out

    def extra_repr(self) -> str:
        return (f"threshold={self.threshold}, dilation={self.dilation}, gradient={self.gradient!r}, "
                f"input_size={self.input_size}")

    # ------------------------------------------------------------------ checkpoints
    def save(self, path, **meta) -> str:
        """Write detector weights + defense settings to ``path`` (atomically); returns the path."""
        kind = detector_kind(self.detector)
        ckpt = dict(format=FORMAT, kind=kind, config=dict(self.detector.config),
                    state_dict={k: v.detach().cpu() for k, v in self.detector.state_dict().items()},
                    threshold=self.threshold, dilation=self.dilation,
                    fill=self.fill.flatten().tolist(), channels=self.channels,
                    input_size=list(self.input_size) if self.input_size else None, meta=meta)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
        return str(path)

    @classmethod
    def load(cls, path, device="cpu", input_size: Optional[Tuple[int, int]] = None,
             channels: Optional[int] = None, **overrides) -> "PatchZero":
        """Load a checkpoint written by :meth:`save` (or an asset name such as ``"fmnist_two_stage"``).

        ``input_size`` / ``channels``, when given, must match what the detector was trained for
        (``ValueError`` otherwise). ``overrides`` replace saved settings (``dilation``, ``gradient``,
        ``threshold``, ``fill``, ``temperature``). The returned defense is in eval mode.
        """
        if str(path) in _ASSETS:
            path = Path(__file__).resolve().parent.parent / "assets" / _ASSETS[str(path)]
        if not Path(path).is_file():
            raise FileNotFoundError(f"PatchZero checkpoint {path} not found (asset names: "
                                    f"{', '.join(_ASSETS)})")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
            raise ValueError(f"{path}: not a PatchZero checkpoint (expected format {FORMAT!r})")
        saved = tuple(ckpt["input_size"]) if ckpt["input_size"] else None
        if input_size is not None and saved is not None and tuple(input_size) != saved:
            raise ValueError(f"{path}: detector trained for {saved[0]}×{saved[1]} images, but "
                             f"{tuple(input_size)[0]}×{tuple(input_size)[1]} was requested")
        if channels is not None and ckpt["channels"] is not None and channels != ckpt["channels"]:
            raise ValueError(f"{path}: detector trained for {ckpt['channels']}-channel images, but "
                             f"{channels} channels were requested")
        detector = build_detector(ckpt["kind"], ckpt["config"])
        detector.load_state_dict(ckpt["state_dict"])
        kw = dict(threshold=ckpt["threshold"], dilation=ckpt["dilation"], fill=ckpt["fill"],
                  input_size=saved)
        kw.update(overrides)
        return cls(detector, **kw).to(device).eval()
