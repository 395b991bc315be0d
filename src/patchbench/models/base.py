"""Model protocols and the wrapper that owns normalisation and resizing.

Convention (ARCHITECTURE.md): every model takes float images ``N×C×H×W`` in ``[0, 1]``; mean/std
normalisation and resizing to the network's input size happen *inside* the wrapper, so attacks and
defenses never see normalised tensors. The wrapper checks every call (``_validation.check_model_input``):
integer images (uint8 0–255) raise ``TypeError``, values outside [0, 1] or NaN raise ``ValueError``,
float64/float16 images are cast to the network's dtype. Inside ``_validation.trusted_inputs()`` (an
attack loop on inputs validated once) the range scan, the only check that costs a host sync, is skipped.
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._io import predict_batched
from .._validation import check_model_input, check_positive_int, check_tensor_device

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class Classifier(Protocol):
    """``forward(x: N×C×H×W in [0,1]) -> logits N×num_classes``."""

    num_classes: int
    class_names: Sequence[str]
    input_size: Optional[tuple]   # (H, W) the network sees, or None if any size works
    channels: int

    def __call__(self, x: Tensor) -> Tensor: ...


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as a module so it moves with ``.to(device)``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        mean, std = self.mean, self.std
        if mean.dtype != x.dtype and x.is_floating_point():    # e.g. a float64 network
            mean, std = mean.to(x.dtype), std.to(x.dtype)
        return (x - mean) / std


def module_dtype_device(module: nn.Module) -> tuple[torch.dtype, Optional[torch.device]]:
    """The dtype and device of ``module``'s first parameter (or floating buffer); float32 and None
    for a module without any."""
    for t in module.parameters():
        return t.dtype, t.device
    for t in module.buffers():
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.float32, None


def check_input_for(module: nn.Module, x, name: str = "x", channels: Optional[int] = None,
                    min_size: int = 1) -> Tensor:
    """:func:`~patchbench._validation.check_model_input` for ``module``: cast to its dtype, and a
    ``ValueError`` when ``x`` is on another device or smaller than ``min_size`` pixels."""
    dtype, device = module_dtype_device(module)
    x = check_model_input(x, name, channels=channels, dtype=dtype)
    if device is not None and x.device != device:
        raise ValueError(f"{name}: the images are on {x.device} but the model is on {device}; "
                         f"move them with x.to({str(device)!r})")
    if x.shape[-2] < min_size or x.shape[-1] < min_size:
        raise ValueError(f"{name}: images of {x.shape[-2]}×{x.shape[-1]} px are too small for this "
                         f"model (at least {min_size}×{min_size}; shape {tuple(x.shape)})")
    return x


class ImageClassifier(nn.Module):
    """Wrap a raw network into a :class:`Classifier`.

    Args:
        net: maps normalised ``N×C×H×W`` to logits.
        mean, std: per-channel normalisation applied inside ``forward``.
        input_size: ``(H, W)`` the network expects; other sizes are resized (bilinear, antialiased
            when shrinking — differentiable). ``None`` passes any size through.
        class_names: one name per class.
        channels: expected input channels (1 for greyscale models, 3 for RGB).
        name: registry name, for reports.
        min_size: smallest input side in pixels the network accepts when ``input_size`` is None
            (default 1).

    ``forward`` and ``predict`` refuse integer images (``TypeError``: convert with
    ``x.float() / 255``), values outside [0, 1], NaN, other devices (``ValueError``); other float
    dtypes are cast to the network's.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float],
                 input_size: Optional[tuple], class_names: Sequence[str], channels: int = 3,
                 name: str = "model", min_size: int = 1):
        super().__init__()
        self.net = net
        self.normalize = Normalize(mean, std)
        self.input_size = tuple(input_size) if input_size is not None else None
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.channels = channels
        self.name = name
        self.min_size = 1 if input_size is not None else check_positive_int(min_size, "min_size")

    def forward(self, x: Tensor) -> Tensor:
        x = check_input_for(self.net, x, "x", channels=self.channels, min_size=self.min_size)
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            shrink = x.shape[-2] > self.input_size[0] or x.shape[-1] > self.input_size[1]
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False,
                              antialias=shrink)
        return self.net(self.normalize(x))

    def predict(self, x: Tensor, batch_size: int = 64) -> tuple[Tensor, Tensor]:
        """Return ``(labels, confidences)`` (softmax probability of the predicted class).

        ``x``: ``N×C×H×W`` in [0, 1]; ``batch_size``: images per forward (an integer >= 1). An
        empty batch (``N = 0``) gives two empty tensors.
        """
        return predict_in_batches(self, x, batch_size)


def predict_in_batches(module: nn.Module, x: Tensor, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """``(labels, confidences)`` of a logits-returning ``module`` in eval mode, ``batch_size`` images
    at a time, without gradients (:func:`patchbench._io.predict_batched`); the module's train/eval
    mode is restored afterwards. ``module`` validates the images; an empty batch runs it once (so bad
    shapes are still refused) and gives empty tensors."""
    batch_size = check_batch_call(x, batch_size)
    return predict_batched(module, x, batch_size, reduce=_labels_and_confidences)


def check_batch_call(x, batch_size) -> int:
    """The checks of a batched prediction call (``x`` a 4-D tensor on a usable device, ``batch_size``
    an int >= 1; the module itself validates the values); returns ``batch_size``."""
    if not isinstance(x, Tensor):
        hint = (" (convert with torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255)"
                if type(x).__name__ == "ndarray" else "")
        raise TypeError(f"x: expected a torch.Tensor N×C×H×W with values in [0, 1], got "
                        f"{type(x).__name__}{hint}")
    batch_size = check_positive_int(batch_size, "batch_size")
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-D tensor N×C×H×W, got shape {tuple(x.shape)}")
    check_tensor_device(x, "x")
    return batch_size


def _labels_and_confidences(logits: Tensor) -> tuple[Tensor, Tensor]:
    conf, label = logits.softmax(-1).max(-1)
    return label, conf
