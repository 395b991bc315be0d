"""One place for input checks at public boundaries (scikit-learn style): each check says what was
expected and what came instead, so a user can act on the message."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor


def check_images(x, name: str = "images", channels: Optional[Sequence[int] | int] = None,
                 allow_single: bool = False) -> Tensor:
    """Validate a float image batch ``N×C×H×W`` with values in ``[0, 1]`` and return it.

    ``allow_single`` accepts a single ``C×H×W`` image and adds the batch axis.
    Raises ``TypeError`` for non-tensors / non-float dtypes and ``ValueError`` for shape, channel,
    NaN/Inf or range problems.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor N×C×H×W, got {type(x).__name__}")
    if allow_single and x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D tensor N×C×H×W, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor with values in [0, 1], got dtype "
                        f"{x.dtype} (convert uint8 images with x.float() / 255)")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty (shape {tuple(x.shape)})")
    if channels is not None:
        allowed = (channels,) if isinstance(channels, int) else tuple(channels)
        if x.shape[1] not in allowed:
            raise ValueError(f"{name}: expected {' or '.join(map(str, allowed))} channels, got "
                             f"{x.shape[1]} (shape {tuple(x.shape)}; images are N×C×H×W)")
    if x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"{name}: empty spatial size {tuple(x.shape[-2:])}")
    with torch.no_grad():
        if not torch.isfinite(x).all():
            raise ValueError(f"{name}: contains NaN or Inf values")
        lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{name}: values must lie in [0, 1], got min {lo:.4g} max {hi:.4g} "
                         f"(patchbench normalises inside the model wrapper; pass unnormalised images)")
    return x


def check_labels(y, n: int, num_classes: Optional[int] = None, name: str = "labels") -> Tensor:
    """Validate integer class labels of length ``n`` (optionally ``< num_classes``); returns a long tensor."""
    if not isinstance(y, Tensor):
        try:
            y = torch.as_tensor(y)
        except Exception as e:  # noqa: BLE001
            raise TypeError(f"{name}: expected a 1-D integer tensor, got {type(y).__name__}") from e
    if y.dim() == 0:
        y = y.reshape(1)
    if y.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D tensor of class indices, got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer class indices, got dtype {y.dtype}")
    if y.numel() != n:
        raise ValueError(f"{name}: expected {n} labels (one per image), got {y.numel()}")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"{name}: class indices must be >= 0, got {int(y.min())}")
    if num_classes is not None and y.numel() and int(y.max()) >= num_classes:
        raise ValueError(f"{name}: class index {int(y.max())} out of range for a model with "
                         f"{num_classes} classes")
    return y.long()


def check_fraction(value, name: str, low: float = 0.0, high: float = 1.0,
                   inclusive: bool = False) -> float:
    """A number strictly inside (low, high) (or [low, high] with ``inclusive``)."""
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a number, got {value!r}") from e
    ok = (low <= v <= high) if inclusive else (low < v < high)
    if not ok or math.isnan(v):
        br = "[]" if inclusive else "()"
        raise ValueError(f"{name}: expected a value in {br[0]}{low}, {high}{br[1]}, got {value!r}")
    return v


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
            isinstance(value, float) and value.is_integer()):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {v}")
    return v


def make_generator(seed_or_gen=None, device="cpu") -> torch.Generator:
    """A ``torch.Generator`` from a seed, an existing generator (returned as is) or ``None`` (seed 0)."""
    if isinstance(seed_or_gen, torch.Generator):
        return seed_or_gen
    g = torch.Generator(device=device)
    g.manual_seed(0 if seed_or_gen is None else int(seed_or_gen))
    return g
