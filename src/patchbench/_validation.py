"""One place for input checks at public boundaries (scikit-learn style): each check says what was
expected and what came instead, naming the argument, so a user can act on the message.

Errors are always one of ``TypeError`` (wrong kind of value), ``ValueError`` (right kind, wrong
value), ``LookupError`` (unknown name) or ``FileNotFoundError`` (missing file). Inner-loop helpers
(paste, EOT jitter, the TV/NPS losses) do not call these; their docstrings say so.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor

_SEED_MAX = 2 ** 63 - 1
_DEVICE_TYPES = ("cpu", "cuda")

# Set while an attack iterates on inputs that were validated once at its entry point, so the model
# wrapper skips its per-call range check (one host sync per forward) inside the loop.
_TRUSTED = contextvars.ContextVar("patchbench_trusted_inputs", default=False)


@contextlib.contextmanager
def trusted_inputs():
    """Within this block, :func:`check_model_input` only checks shape and dtype (no range scan)."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def _type_name(x) -> str:
    return type(x).__name__


def check_tensor_device(x: Tensor, name: str) -> None:
    """Reject tensors on devices patchbench does not run on (``meta``, ``xla``, ...)."""
    if x.device.type not in _DEVICE_TYPES:
        raise ValueError(f"{name}: tensors on the {x.device.type!r} device are not supported "
                         f"(use {' or '.join(_DEVICE_TYPES)})")


def check_images(x, name: str = "images", channels: Optional[Sequence[int] | int] = None,
                 allow_single: bool = False, allow_empty: bool = False) -> Tensor:
    """Validate a float image batch ``N×C×H×W`` with values in ``[0, 1]`` and return it.

    ``allow_single`` accepts a single ``C×H×W`` image and adds the batch axis. Any floating dtype is
    kept (model wrappers cast to their own dtype, see :func:`check_model_input`); integer and bool
    images are refused, since ``uint8`` 0–255 would silently be read as mostly-white.
    Raises ``TypeError`` for non-tensors / non-float dtypes and ``ValueError`` for shape, channel,
    device, NaN/Inf or range problems.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor N×C×H×W with values in [0, 1], got "
                        f"{_type_name(x)}" + (" (convert with torch.from_numpy(a).permute(0, 3, 1, 2)"
                                               ".float() / 255)" if _type_name(x) == "ndarray" else ""))
    check_tensor_device(x, name)
    if allow_single and x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"{name}: expected a 4-D tensor N×C×H×W, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        hint = " (convert uint8 images with x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise TypeError(f"{name}: expected a floating-point tensor with values in [0, 1], got dtype "
                        f"{x.dtype}{hint}")
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name}: the batch is empty (shape {tuple(x.shape)})")
    if channels is not None:
        allowed = (channels,) if isinstance(channels, int) else tuple(channels)
        if x.shape[1] not in allowed:
            raise ValueError(f"{name}: expected {' or '.join(map(str, allowed))} channels, got "
                             f"{x.shape[1]} (shape {tuple(x.shape)}; images are N×C×H×W)")
    if x.shape[-1] < 1 or x.shape[-2] < 1:
        raise ValueError(f"{name}: empty spatial size {tuple(x.shape[-2:])}")
    if x.numel():
        _check_range(x, name)
    return x


def _check_range(x: Tensor, name: str) -> None:
    with torch.no_grad():
        lo, hi = torch.aminmax(x.detach())
        lo, hi = float(lo), float(hi)
    if math.isnan(lo) or math.isnan(hi) or math.isinf(lo) or math.isinf(hi):
        raise ValueError(f"{name}: contains NaN or Inf values")
    if lo < -1e-6 or hi > 1 + 1e-6:
        hint = (" — these look like 0–255 pixel values: divide by 255" if hi >= 10 and lo >= 0
                else "; patchbench normalises inside the model wrapper, so pass unnormalised images")
        raise ValueError(f"{name}: values must lie in [0, 1], got min {lo:.4g} max {hi:.4g}{hint}")


def check_model_input(x, name: str, channels: Optional[int] = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """The check a model wrapper runs on every call: a float tensor ``N×C×H×W`` in [0, 1], returned
    in the network's ``dtype`` (float64 or float16 images would otherwise crash inside it).

    Inside :func:`trusted_inputs` (an attack's loop, whose iterates are kept in [0, 1] by
    construction) the range scan is skipped; shape, dtype and device are always checked.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor N×C×H×W with values in [0, 1], got "
                        f"{_type_name(x)}")
    if x.dim() != 4 or (channels is not None and x.shape[1] != channels):
        c = channels if channels is not None else "C"
        raise ValueError(f"{name}: expected images N×{c}×H×W, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        hint = " (convert uint8 images with x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise TypeError(f"{name}: expected float images with values in [0, 1], got dtype {x.dtype}"
                        f"{hint}")
    check_tensor_device(x, name)
    if x.dtype != dtype:
        x = x.to(dtype)
    if not _TRUSTED.get() and x.numel():
        _check_range(x, name)
    return x


def check_labels(y, n: int, num_classes: Optional[int] = None, name: str = "labels") -> Tensor:
    """Validate integer class labels of length ``n`` (optionally ``< num_classes``); returns a long tensor."""
    if not isinstance(y, Tensor):
        if isinstance(y, (str, bytes)) or y is None:
            raise TypeError(f"{name}: expected a 1-D integer tensor, got {_type_name(y)}")
        try:
            y = torch.as_tensor(y)
        except Exception as e:  # noqa: BLE001
            raise TypeError(f"{name}: expected a 1-D integer tensor, got {_type_name(y)}") from e
    check_tensor_device(y, name)
    if y.dim() == 0:
        y = y.reshape(1)
    if y.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D tensor of class indices, got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer class indices, got dtype {y.dtype}")
    if y.numel() != n:
        raise ValueError(f"{name}: expected {n} labels (one per image), got {y.numel()}")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"{name}: class indices must be >= 0, got {int(y.min())}")
    if num_classes is not None and y.numel() and int(y.max()) >= num_classes:
        raise ValueError(f"{name}: class index {int(y.max())} out of range for a model with "
                         f"{num_classes} classes")
    return y.long()


def _as_real(value, name: str) -> float:
    """``value`` as a float, refusing bools, strings, None and tensors with more than one element."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.dtype == torch.bool:
            raise TypeError(f"{name}: expected a number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {_type_name(value)}")
    return float(value)


def check_number(value, name: str, low: Optional[float] = None, high: Optional[float] = None,
                 low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    """A finite real number in the given interval (either bound may be open or absent)."""
    v = _as_real(value, name)
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    bad_lo = low is not None and (v < low or (v == low and not low_inclusive))
    bad_hi = high is not None and (v > high or (v == high and not high_inclusive))
    if bad_lo or bad_hi:
        lo_s = "-inf" if low is None else f"{low:g}"
        hi_s = "inf" if high is None else f"{high:g}"
        lb = "[" if (low is not None and low_inclusive) else "("
        hb = "]" if (high is not None and high_inclusive) else ")"
        raise ValueError(f"{name}: expected a value in {lb}{lo_s}, {hi_s}{hb}, got {value!r}")
    return v


def check_positive(value, name: str) -> float:
    """A finite number > 0 (rejects 0, negatives, NaN, Inf, bools and strings)."""
    return check_number(value, name, low=0.0, low_inclusive=False)


def check_nonnegative(value, name: str) -> float:
    """A finite number >= 0."""
    return check_number(value, name, low=0.0)


def check_fraction(value, name: str, low: float = 0.0, high: float = 1.0,
                   inclusive: bool = False) -> float:
    """A number strictly inside (low, high) (or [low, high] with ``inclusive``)."""
    return check_number(value, name, low, high, low_inclusive=inclusive, high_inclusive=inclusive)


def check_int(value, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """An integer (Python or numpy; integral floats such as ``3.0`` too) within [minimum, maximum]."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, numbers.Integral):
        v = int(value)
    elif isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer():
        v = int(value)
    else:
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name}: expected an integer <= {maximum}, got {v}")
    return v


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (default 1): batch sizes, steps, epochs, counts."""
    return check_int(value, name, minimum=minimum)


def check_input_size(value, name: str = "input_size"):
    """``None`` or ``(H, W)`` positive integers (a network's input size), returned as a tuple."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"{name}: expected None or (height, width) in pixels, got {value!r}")
    return tuple(check_positive_int(v, name) for v in value)


def check_bool(value, name: str) -> bool:
    """``True``/``False`` (numpy bools too); refuses strings such as ``"false"`` that are truthy."""
    if isinstance(value, bool):
        return value
    try:
        import numpy as np
        if isinstance(value, np.bool_):
            return bool(value)
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"{name}: expected True or False, got {value!r}")


def check_choice(value, name: str, choices: Iterable[str]) -> str:
    """One of ``choices`` (exact string); ``LookupError`` listing them otherwise."""
    choices = tuple(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    if value not in choices:
        raise LookupError(f"{name}: unknown value {value!r}; expected one of "
                          f"{', '.join(map(repr, choices))}")
    return value


def check_seed(seed, name: str = "seed") -> int:
    """A seed: an integer in [0, 2**63 - 1] (what ``torch.Generator.manual_seed`` takes)."""
    if isinstance(seed, torch.Generator):
        raise TypeError(f"{name}: expected an integer seed, got a torch.Generator (pass it as "
                        f"generator= where the function takes one)")
    if _type_name(seed) == "Generator" or _type_name(seed) == "RandomState":
        raise TypeError(f"{name}: expected an integer seed or a torch.Generator, got a numpy "
                        f"{_type_name(seed)} (draw a seed from it: int(rng.integers(2**31)))")
    return check_int(seed, name, minimum=0, maximum=_SEED_MAX)


def make_generator(seed_or_gen=None, device="cpu", name: str = "generator") -> torch.Generator:
    """A ``torch.Generator`` from a seed, an existing generator (returned as is) or ``None`` (seed 0)."""
    if isinstance(seed_or_gen, torch.Generator):
        return seed_or_gen
    try:
        seed = 0 if seed_or_gen is None else check_seed(seed_or_gen, name)
    except TypeError as e:
        if "numpy" in str(e):
            raise
        raise TypeError(f"{name}: expected an integer seed or a torch.Generator, got "
                        f"{seed_or_gen!r}") from None
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def check_device(device, name: str = "device") -> torch.device:
    """A device patchbench can run on here: ``"cpu"``, or ``"cuda"``/``"cuda:K"`` when CUDA is usable."""
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"{name}: unknown device {device!r} (expected 'cpu' or 'cuda')") from e
    else:
        raise TypeError(f"{name}: expected a device name such as 'cpu' or 'cuda', got {device!r}")
    if dev.type not in _DEVICE_TYPES:
        raise ValueError(f"{name}: the {dev.type!r} device is not supported (use 'cpu' or 'cuda')")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA support" if torch.version.cuda is None else \
                "no CUDA device is visible"
            raise ValueError(f"{name}: {device!r} was asked for, but {build}; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}: {device!r} does not exist (this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s))")
    return dev


def check_mask(mask, name: str, n: int, height: int, width: int, binary: bool = True) -> Tensor:
    """A mask ``N×1×H×W`` / ``1×1×H×W`` / ``H×W`` for ``n`` images of ``height×width``; returned as a
    float ``N×1×H×W``. ``binary`` requires exact 0/1 values, otherwise values in [0, 1]."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name}: expected a mask tensor N×1×H×W, got {_type_name(mask)}")
    check_tensor_device(mask, name)
    m = mask[None, None] if mask.dim() == 2 else mask
    if m.dim() != 4 or m.shape[1] != 1 or tuple(m.shape[-2:]) != (height, width) \
            or m.shape[0] not in (1, n):
        raise ValueError(f"{name}: expected N×1×H×W with N in (1, {n}) and H×W = {height}×{width}, "
                         f"got shape {tuple(mask.shape)}")
    if m.is_complex():
        raise TypeError(f"{name}: expected a real-valued mask, got dtype {m.dtype}")
    m = m.float()
    if binary:
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"{name}: values must be exactly 0 or 1")
    elif not bool(torch.isfinite(m).all()) or float(m.min()) < 0 or float(m.max()) > 1:
        raise ValueError(f"{name}: values must lie in [0, 1]")
    return m.expand(n, 1, height, width)


def check_fill(value, name: str, channels: Optional[int] = None):
    """A fill value in [0, 1]: a number, or one value per channel (sequence or tensor ``C``)."""
    if isinstance(value, (list, tuple, Tensor)):
        t = torch.as_tensor(value, dtype=torch.float32) if not isinstance(value, Tensor) else value
        if t.dim() != 1 or t.numel() == 0 or (channels is not None and t.numel() not in (1, channels)):
            c = f"1 or {channels}" if channels is not None else "C"
            raise ValueError(f"{name}: expected a number or {c} per-channel values, got shape "
                             f"{tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()) or float(t.min()) < 0 or float(t.max()) > 1:
            raise ValueError(f"{name}: fill values must lie in [0, 1], got {value!r}")
        return value
    return check_number(value, name, 0.0, 1.0)


def check_path(path, name: str, kind: str = "file", must_exist: bool = True) -> Path:
    """A filesystem path; with ``must_exist`` it must be an existing ``kind`` ("file" or "dir")."""
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a file path, got {path!r}")
    p = Path(path)
    if str(path) == "":
        raise ValueError(f"{name}: the path is empty")
    if must_exist:
        if not p.exists():
            raise FileNotFoundError(f"{name}: {str(p)!r} does not exist")
        if kind == "file" and p.is_dir():
            raise ValueError(f"{name}: {str(p)!r} is a directory, expected a file")
        if kind == "dir" and not p.is_dir():
            raise ValueError(f"{name}: {str(p)!r} is not a directory")
    elif p.exists() and kind == "file" and p.is_dir():
        raise ValueError(f"{name}: {str(p)!r} is a directory, expected a file")
    elif p.exists() and kind == "dir" and not p.is_dir():
        raise ValueError(f"{name}: {str(p)!r} is an existing file, expected a directory")
    return p
