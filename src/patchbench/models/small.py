"""Small CNNs for 28–64 px data (Fashion-MNIST) and a tiny untrained net for tests.

Two deliberately different Fashion-MNIST architectures, so transfer between models (e.g. a patch
trained on one and evaluated on the other) is a real test:

* :class:`FmnistCNNSmall` — deep and narrow: three 3×3 conv-BN-ReLU stages (16→32→64 channels),
  each followed by 2×2 max-pooling, then a linear layer (VGG-style, Simonyan & Zisserman 2015, Sec. 2.1).
* :class:`FmnistCNNWide` — shallow and wide: a 5×5 and a 3×3 conv-ReLU stage (32→64 channels, no
  BatchNorm) with max-pooling, then a 128-unit hidden layer with dropout (the LeNet-5 layout of LeCun
  et al. 1998, Sec. II-B, widened).
* :class:`TinyCNN` — two conv layers and global average pooling; works for any input size, channel
  count and class count. Untrained: for fast tests of attacks and defenses.

All take *normalised* ``N×C×H×W`` tensors and return logits ``N×num_classes``; wrap them in
:class:`patchbench.models.base.ImageClassifier` (``patchbench.models.load`` does) to feed [0, 1] images.

Example::

    net = FmnistCNNSmall()
    logits = net(torch.randn(8, 1, 28, 28))     # 8×10
"""
from __future__ import annotations

from typing import Sequence, Tuple

from torch import Tensor, nn

from .._validation import check_positive_int


def check_arch_ints(**values) -> Tuple[int, ...]:
    """Each keyword an integer >= 1, named in the error (``in_channels=0`` → ValueError)."""
    return tuple(check_positive_int(v, k) for k, v in values.items())


def check_widths(widths, n: int, name: str = "widths") -> Tuple[int, ...]:
    """``n`` layer widths, each an integer >= 1."""
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) != n:
        raise TypeError(f"{name}: expected {n} integers (channels per stage), got {widths!r}")
    return tuple(check_positive_int(w, name) for w in widths)


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FmnistCNNSmall(nn.Module):
    """Deep/narrow CNN for 1×28×28 inputs (≈ 30 k parameters).

    Args:
        in_channels: input channels (default 1).
        num_classes: output logits (default 10).
        widths: channels of the three stages (default ``(16, 32, 64)``).

    Shapes: ``N×in_channels×28×28`` → ``N×num_classes`` (other sizes work: the head pools to 3×3).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths=(16, 32, 64)):
        super().__init__()
        in_channels, num_classes = check_arch_ints(in_channels=in_channels, num_classes=num_classes)
        a, b, c = check_widths(widths, 3)
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, a), nn.MaxPool2d(2),
            _conv_bn_relu(a, b), nn.MaxPool2d(2),
            _conv_bn_relu(b, c), nn.AdaptiveMaxPool2d(3),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(c * 9, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class FmnistCNNWide(nn.Module):
    """Shallow/wide LeNet-style CNN for 1×28×28 inputs (≈ 0.42 M parameters).

    Args:
        in_channels: input channels (default 1).
        num_classes: output logits (default 10).
        widths: channels of the 5×5 and the 3×3 conv stage (default ``(32, 64)``).
        hidden: units of the hidden fully connected layer (default 128).

    Shapes: ``N×in_channels×28×28`` → ``N×num_classes`` (the head pools to 7×7 for other sizes).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths=(32, 64), hidden: int = 128):
        super().__init__()
        in_channels, num_classes, hidden = check_arch_ints(in_channels=in_channels,
                                                           num_classes=num_classes, hidden=hidden)
        a, b = check_widths(widths, 2)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, a, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(a, b, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveMaxPool2d(7),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(b * 49, hidden), nn.ReLU(inplace=True), nn.Dropout(0.3),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class TinyCNN(nn.Module):
    """A tiny untrained CNN for tests: conv3×3-ReLU-pool, conv3×3-ReLU, global average pool, linear.

    Args:
        in_channels: input channels (default 3).
        num_classes: output logits (default 10).
        width: channels of the conv layers (default 8).

    Shapes: ``N×in_channels×H×W`` (any ``H, W ≥ 2``) → ``N×num_classes``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 8):
        super().__init__()
        in_channels, num_classes, width = check_arch_ints(in_channels=in_channels,
                                                          num_classes=num_classes, width=width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
