"""Model protocols and the wrapper that owns normalisation and resizing.

Convention (ARCHITECTURE.md): every model takes ``float32`` images ``N×C×H×W`` in ``[0, 1]``; mean/std
normalisation and resizing to the network's input size happen *inside* the wrapper, so attacks and
defenses never see normalised tensors.
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        return (x - self.mean) / self.std


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
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float],
                 input_size: Optional[tuple], class_names: Sequence[str], channels: int = 3,
                 name: str = "model"):
        super().__init__()
        self.net = net
        self.normalize = Normalize(mean, std)
        self.input_size = tuple(input_size) if input_size is not None else None
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.channels = channels
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"{self.name}: expected images N×{self.channels}×H×W, got shape "
                             f"{tuple(x.shape)}")
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            shrink = x.shape[-2] > self.input_size[0] or x.shape[-1] > self.input_size[1]
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False,
                              antialias=shrink)
        return self.net(self.normalize(x))

    def predict(self, x: Tensor, batch_size: int = 64) -> tuple[Tensor, Tensor]:
        """Return ``(labels, confidences)`` (softmax probability of the predicted class)."""
        return predict_in_batches(self, x, batch_size)


@torch.no_grad()
def predict_in_batches(module: nn.Module, x: Tensor, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """``(labels, confidences)`` of a logits-returning ``module`` in eval mode, ``batch_size`` images
    at a time; the module's train/eval mode is restored afterwards."""
    was_training = module.training
    module.eval()
    labels, confs = [], []
    try:
        for i in range(0, x.shape[0], batch_size):
            c, lab = module(x[i:i + batch_size]).softmax(-1).max(-1)
            labels.append(lab)
            confs.append(c)
    finally:
        module.train(was_training)
    return torch.cat(labels), torch.cat(confs)
