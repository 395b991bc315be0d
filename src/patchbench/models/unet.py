"""A small U-Net patch detector for 28–64 px images (PatchZero's pixel-level detector d, §3.2).

PatchZero (Xu et al., WACV 2023, §3.2 / §4) uses a PSPNet segmenter trained with "a main cross entropy
loss and two auxiliary loss terms"; for small images a U-Net (Ronneberger et al., 2015) is the natural
fully-convolutional equivalent. Besides the main head, the two coarsest decoder levels carry auxiliary
1×1 heads, so the training loss can keep PSPNet's main + two auxiliary terms.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_input_size, check_number, check_positive, check_positive_int
from .base import Normalize, check_input_for


def _per_channel(values, name: str, channels: int, positive: bool = False):
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != channels:
        raise ValueError(f"{name}: expected {channels} value(s), one per channel, got {values!r}")
    check = check_positive if positive else (lambda v, n: check_number(v, n))
    return tuple(check(v, name) for v in values)


def group_norm(c: int) -> nn.GroupNorm:
    """GroupNorm (Wu & He, ECCV 2018) with up to 8 groups. Unlike BatchNorm it behaves the same in
    train and eval mode, which matters here: stage-2 training attacks the detector in eval mode at
    every step, and short training runs never settle BatchNorm's running statistics."""
    groups = max(g for g in (8, 4, 2, 1) if c % g == 0)
    return nn.GroupNorm(groups, c)


def _block(cin: int, cout: int) -> nn.Sequential:
    """Two 3×3 conv + GroupNorm + ReLU, the U-Net building block."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), group_norm(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), group_norm(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Small U-Net: images ``N×C×H×W`` in [0, 1] → per-pixel patch logits ``N×1×H×W``.

    Args:
        in_channels (int): 1 (greyscale) or 3 (RGB). Default: 1.
        base (int): channels of the first level; level ``i`` has ``base·2^i``. Default: 16.
        depth (int): number of 2× down-samplings. Default: 2 (28 → 14 → 7).
        mean, std (sequence of float): per-channel normalisation applied inside ``forward``.
            Default: 0.5 / 0.25 for every channel.
        input_size (tuple or None): the ``(H, W)`` this detector is trained for; recorded so that a
            checkpoint refuses images of another size (``PatchZero`` checks it). Default: None.

    Any ``H, W`` works (inputs are padded to a multiple of ``2^depth`` and the logits cropped back).
    ``forward_with_aux`` also returns the auxiliary logits (upsampled to ``H×W``) for training.

    Example::

        det = UNet(in_channels=1, input_size=(28, 28))
        logits = det(torch.rand(4, 1, 28, 28))          # 4×1×28×28; sigmoid → P(patch pixel)
    """

    def __init__(self, in_channels: int = 1, base: int = 16, depth: int = 2,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 input_size: Tuple[int, int] | None = None):
        super().__init__()
        in_channels = check_positive_int(in_channels, "in_channels")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels: UNet takes 1 or 3 channels, got {in_channels}")
        base = check_positive_int(base, "base")
        depth = check_positive_int(depth, "depth")
        if depth > 6:
            raise ValueError(f"depth: expected at most 6 down-samplings (images are 28–64 px), "
                             f"got {depth}")
        mean = _per_channel(mean, "mean", in_channels) if mean is not None else (0.5,) * in_channels
        std = _per_channel(std, "std", in_channels, positive=True) if std is not None \
            else (0.25,) * in_channels
        input_size = check_input_size(input_size, "input_size")
        self.config = dict(in_channels=in_channels, base=base, depth=depth, mean=list(mean),
                           std=list(std), input_size=list(input_size) if input_size else None)
        self.channels = in_channels
        self.input_size = tuple(input_size) if input_size else None
        self.normalize = Normalize(mean, std)
        widths = [base * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(in_channels, widths[0])] +
                                  [_block(widths[i], widths[i + 1]) for i in range(depth)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                 for i in reversed(range(depth))])
        self.dec = nn.ModuleList([_block(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], 1, 1)
        # Auxiliary heads on the bottleneck and the first decoder level (PSPNet's two aux terms).
        self.aux = nn.ModuleList([nn.Conv2d(widths[depth], 1, 1), nn.Conv2d(widths[depth - 1], 1, 1)])

    def _features(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        h, w = x.shape[-2:]
        m = 2 ** self.config["depth"]
        ph, pw = (-h) % m, (-w) % m
        z = self.normalize(x)
        if ph or pw:
            z = F.pad(z, (0, pw, 0, ph), mode="replicate")
        skips = []
        for i, block in enumerate(self.down):
            z = block(z if i == 0 else F.max_pool2d(z, 2))
            skips.append(z)
        aux_feats = [z]
        for j, (up, dec) in enumerate(zip(self.up, self.dec)):
            z = dec(torch.cat([up(z), skips[-2 - j]], dim=1))
            if j == 0:
                aux_feats.append(z)
        return z, aux_feats

    def forward_with_aux(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """Main logits ``N×1×H×W`` and the two auxiliary logit maps, upsampled to ``H×W``."""
        x = check_input_for(self, x, "x", channels=self.channels)
        h, w = x.shape[-2:]
        z, aux_feats = self._features(x)
        main = self.head(z)[..., :h, :w]
        aux = []
        for head, f in zip(self.aux, aux_feats):
            a = F.interpolate(head(f), size=z.shape[-2:], mode="bilinear", align_corners=False)
            aux.append(a[..., :h, :w])
        return main, aux

    def forward(self, x: Tensor) -> Tensor:
        """Patch logits ``N×1×H×W`` of images ``N×C×H×W`` in [0, 1] (checked like a classifier's)."""
        x = check_input_for(self, x, "x", channels=self.channels)
        h, w = x.shape[-2:]
        z, _ = self._features(x)
        return self.head(z)[..., :h, :w]
