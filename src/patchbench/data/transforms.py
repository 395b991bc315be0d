"""Conversions between PIL images and patchbench tensors, and the resize + centre-crop used by every
loader (the standard ImageNet evaluation pre-processing: scale the shorter side, crop the centre).

Tensors are ``float32`` ``C×H×W`` (or ``N×C×H×W``) with values in ``[0, 1]``.

Example::

    x = to_tensor(resize_center_crop(Image.open("cat.jpg"), 224))   # 3×224×224
    to_pil(x).save("cat_224.png")
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

Size = Union[int, Tuple[int, int]]
_MODES = ("RGB", "L")


def _as_hw(size: Size) -> Tuple[int, int]:
    if isinstance(size, bool):
        raise TypeError(f"size: expected an int or (height, width), got {size!r}")
    if isinstance(size, int):
        size = (size, size)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in size)):
        raise TypeError(f"size: expected an int or (height, width) of ints, got {size!r}")
    if min(size) < 1:
        raise ValueError(f"size: expected positive sizes, got {tuple(size)}")
    return int(size[0]), int(size[1])


def _crop_box(h: int, w: int, out_h: int, out_w: int):
    """Scale so the image covers ``out_h×out_w``: returns ``(scale, (left, top, right, bottom),
    (scaled_h, scaled_w))`` — the centred crop box lives in the scaled image."""
    scale = max(out_h / h, out_w / w)
    sh, sw = max(out_h, round(h * scale)), max(out_w, round(w * scale))
    top, left = (sh - out_h) // 2, (sw - out_w) // 2
    return scale, (left, top, left + out_w, top + out_h), (sh, sw)


def resize_center_crop(img, size: Size):
    """Resize so the image covers ``size`` (aspect ratio kept), then crop the centre to ``size``.

    Args:
        img: a ``PIL.Image`` (resized with PIL's antialiased bicubic filter) or a float tensor
            ``C×H×W`` / ``N×C×H×W`` in [0, 1] (antialiased bicubic ``interpolate``, clamped to [0, 1];
            differentiable).
        size: ``int`` (square) or ``(height, width)``.

    Returns:
        The same kind of object as ``img``, of spatial size ``size``.
    """
    out_h, out_w = _as_hw(size)
    if isinstance(img, Image.Image):
        w, h = img.size
        _, box, (sh, sw) = _crop_box(h, w, out_h, out_w)
        if (sh, sw) != (h, w):
            img = img.resize((sw, sh), Image.Resampling.BICUBIC)
        return img.crop(box) if (sh, sw) != (out_h, out_w) else img
    if isinstance(img, Tensor):
        if img.dim() not in (3, 4) or not img.is_floating_point():
            raise ValueError(f"resize_center_crop: expected a float tensor C×H×W or N×C×H×W, got "
                             f"dtype {img.dtype} shape {tuple(img.shape)}")
        single = img.dim() == 3
        x = img.unsqueeze(0) if single else img
        h, w = x.shape[-2:]
        _, (left, top, right, bottom), (sh, sw) = _crop_box(h, w, out_h, out_w)
        if (sh, sw) != (h, w):
            x = F.interpolate(x, size=(sh, sw), mode="bicubic", align_corners=False,
                              antialias=sh < h or sw < w).clamp(0, 1)
        x = x[..., top:bottom, left:right]
        return x[0] if single else x
    raise TypeError(f"resize_center_crop: expected a PIL.Image or a torch.Tensor, got "
                    f"{type(img).__name__}")


def to_mode(img: Image.Image, mode: str = "RGB") -> Image.Image:
    """Convert any PIL image to ``"RGB"`` or ``"L"``; transparent pixels are composited on white
    (so an RGBA logo keeps its look instead of showing whatever colour hides under alpha = 0)."""
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray((np.clip(a / top, 0, 1) * 255).round().astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    return img if img.mode == mode else img.convert(mode)


def to_tensor(img: Image.Image, mode: str = "RGB") -> Tensor:
    """A PIL image → ``float32`` tensor ``C×H×W`` in [0, 1] (``C`` = 3 for ``"RGB"``, 1 for ``"L"``).
    Greyscale, palette, 16-bit and RGBA images are converted first (see :func:`to_mode`)."""
    if not isinstance(img, Image.Image):
        raise TypeError(f"to_tensor: expected a PIL.Image, got {type(img).__name__}")
    arr = np.asarray(to_mode(img, mode), dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def to_pil(x: Tensor) -> Image.Image:
    """A tensor ``C×H×W`` (or ``1×C×H×W``) in [0, 1], ``C`` ∈ {1, 3} → PIL ``"L"`` / ``"RGB"`` image
    (values clamped to [0, 1] and rounded to 8 bits; works from any device, gradients detached)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"to_pil: expected a torch.Tensor C×H×W, got {type(x).__name__}")
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"to_pil: expected a tensor 1×H×W or 3×H×W (or 1×C×H×W), got shape "
                         f"{tuple(x.shape)}")
    arr = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    if arr.shape[0] == 1:
        return Image.fromarray(arr[0], "L")
    return Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0)), "RGB")
