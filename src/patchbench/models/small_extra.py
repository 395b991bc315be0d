"""A third Fashion-MNIST architecture, held out when testing transfer (e.g. of defensive patches).

:class:`FmnistResNet` — a small residual network with *global average pooling* (He et al., CVPR 2016,
Sec. 3.2 identity shortcuts and Sec. 4.2's CIFAR layout: a 3×3 stem, stages that halve the resolution
with stride-2 convolutions, global average pooling, one linear layer), scaled down for 28×28 input.
It differs from both registered models on purpose: ``fmnist_cnn_small`` (VGG-style, max-pooling to
3×3, linear head) and ``fmnist_cnn_wide`` (LeNet-style 5×5 convolutions, hidden FC layer) —
residual connections, strided convolutions instead of pooling, and a spatially averaged head.

Importing this module registers ``"fmnist_resnet"`` in :mod:`patchbench.models.zoo`; its weights
are ``assets/fmnist_resnet.pt`` (training command in ``assets/README.md``). It also registers
``"fmnist_resnet_stickers"``, the same network fine-tuned with random stickers
(``assets/fmnist_resnet_stickers.pt``).

Example::

    from patchbench.models import small_extra, load
    model = load("fmnist_resnet")                    # 1×28×28 in [0, 1] → 10 logits
"""
from __future__ import annotations

from torch import Tensor, nn

from . import zoo
from .small import check_arch_ints, check_widths


class _BasicBlock(nn.Module):
    """He et al. (2016) basic block: two 3×3 conv-BN layers plus the identity shortcut (Eq. 1)."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.body(x))


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FmnistResNet(nn.Module):
    """Small residual CNN with global average pooling for 1×28×28 inputs (≈ 30 k parameters).

    Args:
        in_channels: input channels (default 1).
        num_classes: output logits (default 10).
        widths: channels of the stem and the two residual stages (default ``(8, 16, 32)``).

    Shapes: ``N×in_channels×H×W`` (any ``H, W ≥ 4``) → ``N×num_classes``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths=(8, 16, 32)):
        super().__init__()
        in_channels, num_classes = check_arch_ints(in_channels=in_channels, num_classes=num_classes)
        a, b, c = check_widths(widths, 3)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(inplace=True),
            _down(a, b), _BasicBlock(b), _down(b, c), _BasicBlock(c), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _fmnist_pre(**opts):
    return zoo.fmnist_preprocess(**opts)


SPEC = zoo.register(zoo.ModelSpec(
    "fmnist_resnet", build=FmnistResNet, preprocess=_fmnist_pre,
    weights=zoo.WeightSource("fmnist_resnet.pt", "patchbench", "assets/fmnist_resnet.pt",
                             hint="retrain it (see patchbench/assets/README.md, section fmnist_resnet)"),
    description="Fashion-MNIST small residual CNN with global average pooling (held-out architecture)"))
SPEC_STICKERS = zoo.register(zoo.ModelSpec(
    "fmnist_resnet_stickers", build=FmnistResNet, preprocess=_fmnist_pre,
    weights=zoo.WeightSource("fmnist_resnet_stickers.pt", "patchbench", "assets/fmnist_resnet_stickers.pt",
                             hint="retrain it (see patchbench/assets/README.md, sticker-tolerant models)"),
    description="fmnist_resnet fine-tuned with random stickers (sticker-tolerant; assets/README.md)"))
