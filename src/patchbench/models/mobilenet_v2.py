"""MobileNetV2 in pure torch, with torchvision's exact ``state_dict`` layout.

Paper: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
Table 2 gives the body (``t`` expansion, ``c`` channels, ``n`` repeats, ``s`` first stride); Fig. 4
the inverted residual block (1×1 expand + ReLU6 → 3×3 depthwise + ReLU6 → 1×1 linear projection,
residual when stride 1 and in == out channels).

The module tree mirrors ``torchvision.models.mobilenet_v2`` (``features.{0..18}``, ``classifier.1``),
so torchvision's ImageNet checkpoint ``mobilenet_v2-b0353104.pth`` (314 tensors) loads with
``strict=True`` without importing torchvision.

Example::

    net = MobileNetV2().eval()
    logits = net(torch.randn(2, 3, 224, 224))    # 2×1000, expects ImageNet-normalised input
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor, nn

from .._validation import check_number, check_positive, check_positive_int

# Table 2 of the paper: (t, c, n, s).
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without losing more than 10% (reference code)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU(nn.Sequential):
    """conv (no bias) → BatchNorm → ReLU6; children named ``0, 1, 2`` like torchvision."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """The bottleneck block of Fig. 4 / Table 1 (linear 1×1 projection, no activation after it)."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier (ImageNet layout by default).

    Args:
        num_classes: output logits (default 1000).
        width_mult: channel multiplier of Sec. 6.1 (default 1.0 — the released checkpoint).
        in_channels: input channels (default 3).
        dropout: dropout before the classifier (default 0.2, torchvision's value).
        setting: ``(t, c, n, s)`` rows (default Table 2).

    Shapes: ``N×in_channels×H×W`` (normalised) → ``N×num_classes``; any ``H, W ≥ 32``.
    """

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3,
                 dropout: float = 0.2, setting: Sequence[Sequence[int]] = INVERTED_RESIDUAL_SETTING):
        super().__init__()
        num_classes = check_positive_int(num_classes, "num_classes")
        in_channels = check_positive_int(in_channels, "in_channels")
        width_mult = check_positive(width_mult, "width_mult")
        dropout = check_number(dropout, "dropout", 0.0, 1.0, high_inclusive=False)
        cin = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: List[nn.Module] = [ConvBNReLU(in_channels, cin, stride=2)]
        for t, c, n, s in setting:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(ConvBNReLU(cin, self.last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so an untrained net behaves the same as theirs.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Globally average-pooled features ``N×last_channel``."""
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))
