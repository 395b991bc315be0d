"""MTCNN face detector (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", IEEE SPL 2016) in pure torch, with facenet-pytorch 2.6's pretrained weights.

The cascade (paper §II-A): an image pyramid goes through the fully convolutional P-Net (12×12 windows,
stride 2); surviving windows are regressed, squared and re-scored by R-Net on 24×24 crops, then by
O-Net on 48×48 crops, which also gives five landmarks. We reproduce facenet-pytorch's reference
behaviour (MIT): input ``(255·x − 127.5)/128``, pyramid from ``12/min_face_size`` by ``factor`` while
the short side is ≥ 12 px, thresholds (0.6, 0.7, 0.7), NMS 0.5 per scale, 0.7 per image after P-Net
and R-Net, 0.7 "Min" (pixel-inclusive) after O-Net, crops clipped to the image (no zero padding) and
resized with area interpolation, and the Caffe-era (W, H) flattening order before the dense layers.

For attacks, :meth:`MTCNN.candidates` exposes *every* scored window with a differentiable face
probability — the analogue of the anchors of Yang et al. (ECCV 2020, §3.1): P-Net cells at all pyramid
scales, optionally R-/O-Net scores of the cascade's crops. Crops are taken with an exact, batched
area resampling built from an integral image, so gradients reach the input pixels.
"""
from __future__ import annotations

import importlib.util
import math
import os
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import (check_bool, check_device, check_fraction, check_model_input,
                           check_number)
from .nms import batched_nms
from .weights import KNOWN_SHA256, load_file, load_state_dict_checked, verify_sha256

STAGES = ("pnet", "rnet", "onet")


class PNet(nn.Module):
    """Proposal net: 12×12 window classifier, fully convolutional (output stride 2)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` N×3×h×w normalised → (box offsets N×4×h'×w', face probability N×h'×w')."""
        x = _channels_last(x)
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.conv4_1(x).softmax(1)[:, 1]


def _channels_last(x: Tensor) -> Tensor:
    # NHWC halves the CPU time of these small-channel convs and ceil-mode max-pools (measured 2×).
    return x.contiguous(memory_format=torch.channels_last)


def _flatten_wh(x: Tensor) -> Tensor:
    # The weights were converted from Caffe/TF, which flatten feature maps in (W, H, C) order.
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], math.prod(x.shape[1:]))


class RNet(nn.Module):
    """Refine net: scores and regresses 24×24 crops."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` K×3×24×24 normalised → (box offsets K×4, face probability K)."""
        x = _channels_last(x)
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten_wh(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), self.dense5_1(x).softmax(1)[:, 1]


class ONet(nn.Module):
    """Output net: scores, regresses and places 5 landmarks on 48×48 crops."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2 = nn.Linear(256, 2), nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` K×3×48×48 → (box offsets K×4, landmarks K×10 (5 x then 5 y), face probability K)."""
        x = _channels_last(x)
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten_wh(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x).softmax(1)[:, 1]


class Detections(NamedTuple):
    """Faces found in one image: ``boxes`` K×4 (x1, y1, x2, y2 pixels), ``scores`` K, ``landmarks``
    K×5×2 (x, y: left eye, right eye, nose, left and right mouth corner), sorted by descending score."""
    boxes: Tensor
    scores: Tensor
    landmarks: Tensor


class Candidates(NamedTuple):
    """Every window the cascade scores, flattened over images, scales and stages.

    ``boxes`` K×4: the window that was scored (P-Net: its 12×12 cell mapped back to the image; R/O-Net:
    the square crop), detached. ``scores`` K: face probabilities, differentiable w.r.t. the images.
    ``image_index`` K: which image. ``stage`` K: 0 P-Net, 1 R-Net, 2 O-Net (see ``STAGES``).
    ``regressed`` K×4: the window after the net's box regression (detached).
    """
    boxes: Tensor
    scores: Tensor
    image_index: Tensor
    stage: Tensor
    regressed: Tensor


def _normalize(x255: Tensor) -> Tensor:
    return (x255 - 127.5) * 0.0078125


def _rerec(boxes: Tensor) -> Tensor:
    """Square each box about its centre with side max(w, h) (reference ``rerec``)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + 0.5 * (w - side)
    y1 = boxes[:, 1] + 0.5 * (h - side)
    return torch.stack([x1, y1, x1 + side, y1 + side], 1)


def _bbreg(boxes: Tensor, reg: Tensor) -> Tensor:
    """Apply regression offsets in units of the pixel-inclusive box size (reference ``bbreg``)."""
    wh = (boxes[:, 2:] - boxes[:, :2] + 1).repeat(1, 2)
    return boxes + reg * wh


def integral_image(x: Tensor) -> Tensor:
    """Zero-padded float64 integral image of N×C×H×W ``x``, flattened to ``(N·(H+1)·(W+1))×C`` rows
    (channels last, so one gather reads all channels of a corner). Build it once per batch and pass it
    to :func:`area_crops` for every crop size."""
    n, c, h, w = x.shape
    ii = x.new_zeros((n, h + 1, w + 1, c), dtype=torch.float64)
    ii[:, 1:, 1:] = x.permute(0, 2, 3, 1)
    if ii.requires_grad:
        return ii.cumsum(1).cumsum(2).reshape(-1, c)
    torch.cumsum(ii, 1, out=ii)                       # in place: no second batch-sized allocation
    torch.cumsum(ii, 2, out=ii)
    return ii.reshape(-1, c)


def area_crops(x: Tensor, image_index: Tensor, boxes: Tensor, size: int,
               integral: Optional[Tensor] = None) -> Tensor:
    """Crop ``boxes`` from ``x`` and resize them to ``size``×``size`` with area interpolation.

    Follows the reference ``pad``: coordinates are truncated to integers and clipped to the image
    (1-based), and the crop ``[y1 − 1, y2) × [x1 − 1, x2)`` is resampled exactly like
    ``F.interpolate(mode="area")`` (adaptive average pooling bins). All crops of all images are made in
    one batch from a float64 integral image, so the result is differentiable w.r.t. ``x``.

    Args:
        x: N×C×H×W images; image_index: K long; boxes: K×4 (x1, y1, x2, y2); size: output side.
        integral: ``integral_image(x)`` if already computed (it is the costly part for few crops).
    Returns:
        K×C×size×size crops (``x``'s dtype, channels-last memory). Boxes must give non-empty crops
        (see :func:`_valid_crops`).
    """
    n, c, h, w = x.shape
    ii = integral_image(x) if integral is None else integral
    b = boxes.detach().trunc().long()
    x0 = b[:, 0].clamp(min=1) - 1
    y0 = b[:, 1].clamp(min=1) - 1
    x1 = b[:, 2].clamp(max=w)
    y1 = b[:, 3].clamp(max=h)
    i = torch.arange(size, device=x.device)

    def bins(lo, hi):  # adaptive-pool bin edges: floor(i·L/S), ceil((i+1)·L/S)
        length = (hi - lo)[:, None]
        return lo[:, None] + (i * length) // size, lo[:, None] + ((i + 1) * length + size - 1) // size

    ys, ye = bins(y0, y1)
    xs, xe = bins(x0, x1)
    base = (image_index * (h + 1))[:, None]
    rs, re = (base + ys) * (w + 1), (base + ye) * (w + 1)            # first row of each bin edge

    def at(r, q):                                                   # K×S×S×C corner values
        return ii.index_select(0, (r[:, :, None] + q[:, None, :]).view(-1)).view(len(r), size, size, c)

    total = at(re, xe).sub_(at(rs, xe)).sub_(at(re, xs)).add_(at(rs, xs))
    count = ((ye - ys)[:, :, None] * (xe - xs)[:, None, :]).unsqueeze(-1)
    # K×S×S×C memory seen as K×C×S×S: channels-last, the layout the nets convert to anyway.
    return total.div_(count).to(x.dtype).permute(0, 3, 1, 2)


def _valid_crops(boxes: Tensor, h: int, w: int) -> Tensor:
    """Boxes whose clipped integer crop is non-empty (the reference skips the others)."""
    b = boxes.detach().trunc().long()
    rows = b[:, 3].clamp(max=h) > b[:, 1].clamp(min=1) - 1
    cols = b[:, 2].clamp(max=w) > b[:, 0].clamp(min=1) - 1
    return rows & cols


class MTCNN(nn.Module):
    """MTCNN face detector with pretrained weights, batched over images.

    Paper: Zhang et al., IEEE SPL 2016 (the three-stage cascade, §II); reference implementation:
    facenet-pytorch 2.6 (``detect_face``), whose outputs this module reproduces.
    Threat model (for attacks): white-box; :meth:`candidates` gives differentiable face probabilities.

    Args:
        device: where the weights live (default ``"cpu"``); inputs are moved there.
        min_face_size: smallest face side in pixels searched for (default 20).
        thresholds: face-probability thresholds of P-, R- and O-Net (default (0.6, 0.7, 0.7)).
        factor: pyramid scale step (default 0.709).
        weights_dir: folder with ``pnet.pt``, ``rnet.pt``, ``onet.pt`` (default: facenet-pytorch's
            data folder, whose files are checked against their recorded sha256); ``pretrained=False``
            leaves random weights. Files that are missing raise ``LookupError``; damaged, non-finite
            or mismatching ones ``ValueError`` naming the file.
    Shapes:
        images N×3×H×W float in [0, 1] (RGB); :meth:`detect` returns a list of N :class:`Detections`.

    Example::
        >>> det = MTCNN().detect(x)          # x: N×3×H×W in [0, 1]
        >>> boxes, scores, landmarks = det[0]
    """

    def __init__(self, device="cpu", min_face_size: int = 20,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), factor: float = 0.709,
                 weights_dir: Optional[str] = None, pretrained: bool = True):
        super().__init__()
        dev = check_device(device, "device")
        self.min_face_size = check_number(min_face_size, "min_face_size (P-Net's window is 12 px)",
                                          low=12)
        if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence) \
                or len(thresholds) != 3:
            raise ValueError(f"thresholds: expected 3 values (P-, R-, O-Net), got {thresholds!r}")
        self.thresholds = tuple(check_fraction(t, "thresholds", 0, 1, inclusive=True) for t in thresholds)
        self.factor = check_fraction(factor, "factor")
        pretrained = check_bool(pretrained, "pretrained")
        # Crops per R-/O-Net forward (by crop side). Thousands of crops in one batch spill the CPU
        # caches: bounded chunks make batched detection faster (perf/mtcnn_speed.py).
        self.crop_chunk = {24: 512, 48: 64}
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        if pretrained:
            self._load_weights(weights_dir)
        self.eval().requires_grad_(False)
        self.to(device=dev, memory_format=torch.channels_last)

    def _load_weights(self, weights_dir: Optional[str]) -> None:
        """``pnet.pt``, ``rnet.pt``, ``onet.pt`` from ``weights_dir`` (structure and values checked)
        or from facenet-pytorch's data folder (also checked against their recorded sha256)."""
        if weights_dir is None:
            folder, default = _default_weights_dir(), True
        elif isinstance(weights_dir, bool) or not isinstance(weights_dir, (str, os.PathLike)):
            raise TypeError(f"weights_dir: expected a folder path, got {weights_dir!r}")
        else:
            folder, default = os.path.expanduser(os.fspath(weights_dir)), False
            if os.path.exists(folder) and not os.path.isdir(folder):
                raise ValueError(f"weights_dir: {folder!r} is a file, expected the folder holding "
                                 f"pnet.pt, rnet.pt and onet.pt")
        for name in STAGES:
            path = os.path.join(folder, f"{name}.pt")
            if not os.path.isfile(path):
                raise LookupError(f"MTCNN weights: expected {path} (pip install --no-deps "
                                  f"facenet-pytorch==2.6.0, or pass weights_dir=)")
            if default:
                verify_sha256(path, KNOWN_SHA256[f"facenet_pytorch/data/{name}.pt"],
                              "reinstall the weights (pip install --force-reinstall --no-deps "
                              "facenet-pytorch==2.6.0)")
            state = load_file(path, "weights_dir")
            if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
                raise ValueError(f"weights_dir: {path} is not a state_dict (name → tensor), got "
                                 f"{type(state).__name__}")
            load_state_dict_checked(getattr(self, name), state, path, what=f"MTCNN's {name}")

    @property
    def device(self) -> torch.device:
        return self.pnet.conv1.weight.device

    def scales(self, h: int, w: int) -> list[float]:
        """Pyramid scales for an H×W image: ``12/min_face_size · factor^k`` while the side is ≥ 12."""
        m = 12.0 / self.min_face_size
        minl, s, out = min(h, w) * m, m, []
        while minl >= 12:
            out.append(s)
            s, minl = s * self.factor, minl * self.factor
        return out

    def _prepare(self, images: Tensor) -> Tensor:
        """Checked float32 images ×255 on ``self.device``; as a classifier's input, the range scan
        is skipped inside ``trusted_inputs()`` (an attack loop)."""
        if isinstance(images, Tensor) and images.dim() == 3:
            images = images.unsqueeze(0)
        if isinstance(images, Tensor) and images.dim() == 4 and images.shape[1] != 3:
            raise ValueError(f"images: expected 3 channels (RGB), got {images.shape[1]} (shape "
                             f"{tuple(images.shape)}; images are N×3×H×W)")
        x = check_model_input(images, "images", channels=3, dtype=torch.float32)
        if x.shape[0] == 0:
            raise ValueError(f"images: the batch is empty (shape {tuple(x.shape)})")
        if x.shape[-1] < 1 or x.shape[-2] < 1:
            raise ValueError(f"images: empty spatial size {tuple(x.shape[-2:])}")
        return x.to(self.device) * 255.0

    def _pnet_cells(self, x255: Tensor, scale: float, threshold: Optional[float] = None):
        """P-Net cells at one scale: (windows M×4, scores M, reg M×4, image index M); all cells, or
        only those scoring ``>= threshold`` (found before any per-cell tensor is built)."""
        n, _, h, w = x255.shape
        im = F.interpolate(x255, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
        reg, prob = self.pnet(_normalize(im))
        reg = reg.permute(0, 2, 3, 1)
        if threshold is None:
            gh, gw = prob.shape[-2:]
            idx, yy, xx = (t.flatten() for t in torch.meshgrid(
                *(torch.arange(k, device=x255.device) for k in (n, gh, gw)), indexing="ij"))
            prob, reg = prob.reshape(-1), reg.reshape(-1, 4)          # views, cheap to differentiate
        else:
            idx, yy, xx = (prob >= threshold).nonzero(as_tuple=True)
            prob, reg = prob[idx, yy, xx], reg[idx, yy, xx]
        xy = torch.stack([xx, yy], 1).float()                      # row/col → (x, y), reference flip
        win = torch.cat([((2 * xy + 1) / scale).floor(), ((2 * xy + 12) / scale).floor()], 1)
        return win, prob, reg, idx

    @torch.no_grad()
    def _stage1(self, x255: Tensor):
        """P-Net proposals: threshold, NMS per scale (0.5) and per image (0.7), regress, square."""
        parts = []
        for s in self.scales(*x255.shape[-2:]):
            win, score, reg, idx = self._pnet_cells(x255, s, self.thresholds[0])
            keep = batched_nms(win, score, idx, 0.5)
            parts.append((win[keep], score[keep], reg[keep], idx[keep]))
        if not parts:                                         # image smaller than P-Net's window
            z = x255.new_zeros(0)
            return z.reshape(0, 4), z, z.long()
        win, score, reg, idx = (torch.cat(t) for t in zip(*parts))
        keep = batched_nms(win, score, idx, 0.7)
        win, score, reg, idx = win[keep], score[keep], reg[keep], idx[keep]
        wh = (win[:, 2:] - win[:, :2]).repeat(1, 2)          # stage 1 regresses without the +1
        return _rerec(win + reg * wh), score, idx

    def _refine(self, net: nn.Module, x255: Tensor, ii: Tensor, boxes: Tensor, idx: Tensor, size: int):
        """Run ``net`` on the ``size``² area crops of the valid ``boxes`` (image-major order), at most
        ``crop_chunk[size]`` crops per forward; returns the kept boxes, their image index and the
        net's outputs. ``ii`` is ``integral_image(x255)``."""
        ok = _valid_crops(boxes, *x255.shape[-2:]).nonzero().flatten()
        ok = ok[torch.sort(idx[ok], stable=True).indices]     # image-major: cache-friendly gathers
        boxes, idx = boxes[ok], idx[ok]
        step = self.crop_chunk[size]
        outs = [net(_normalize(area_crops(x255, idx[s:s + step], boxes[s:s + step], size, integral=ii)))
                for s in range(0, max(len(boxes), 1), step)]
        return boxes, idx, [torch.cat(t) for t in zip(*outs)]

    @torch.no_grad()
    def _stage2(self, x255: Tensor, ii: Tensor, boxes: Tensor, idx: Tensor):
        """R-Net refinement of stage-1 squares: threshold, NMS 0.7, regress, square."""
        boxes, idx, (reg, score) = self._refine(self.rnet, x255, ii, boxes, idx, 24)
        ok = score > self.thresholds[1]
        boxes, idx, reg, score = boxes[ok], idx[ok], reg[ok], score[ok]
        keep = batched_nms(boxes, score, idx, 0.7)
        return _rerec(_bbreg(boxes[keep], reg[keep])), idx[keep]

    @torch.no_grad()
    def detect(self, images: Tensor) -> list[Detections]:
        """Detect faces in every image (one batched pass per pyramid scale and per refine stage).

        Args:
            images: N×3×H×W (or 3×H×W) float RGB in [0, 1].
        Returns:
            list of N :class:`Detections` ``(boxes K×4, scores K, landmarks K×5×2)`` on ``self.device``.
        """
        x255 = self._prepare(images)
        n, _, h, w = x255.shape
        boxes, _, idx = self._stage1(x255)
        ii = integral_image(x255) if len(boxes) else None      # shared by the R- and O-Net crops
        if len(boxes):
            boxes, idx = self._stage2(x255, ii, boxes, idx)
        scores = torch.zeros(0, device=self.device)
        points = torch.zeros(0, 5, 2, device=self.device)
        if len(boxes):
            boxes, idx, (reg, marks, scores) = self._refine(self.onet, x255, ii, boxes, idx, 48)
            ok = scores > self.thresholds[2]
            boxes, idx, reg, marks, scores = boxes[ok], idx[ok], reg[ok], marks[ok], scores[ok]
            wh = boxes[:, 2:] - boxes[:, :2] + 1
            points = torch.stack([wh[:, None, 0] * marks[:, :5] + boxes[:, None, 0] - 1,
                                  wh[:, None, 1] * marks[:, 5:] + boxes[:, None, 1] - 1], -1)
            boxes = _bbreg(boxes, reg)
            keep = batched_nms(boxes, scores, idx, 0.7, mode="min", offset=1.0)
            boxes, idx, points, scores = boxes[keep], idx[keep], points[keep], scores[keep]
        else:
            boxes, idx = boxes.reshape(0, 4), idx.reshape(0)
        return [Detections(boxes[idx == i], scores[idx == i], points[idx == i]) for i in range(n)]

    def candidates(self, images: Tensor, stages: Sequence[str] = ("pnet",)) -> Candidates:
        """Every scored window with a differentiable face probability (the detector's "anchors").

        ``"pnet"``: all P-Net cells at all pyramid scales (no threshold). ``"rnet"``: R-Net scores of
        all stage-1 proposals; ``"onet"``: O-Net scores of all stage-2 proposals. Which windows exist
        is decided without gradient; their scores are recomputed from ``images`` with gradient (crops
        via :func:`area_crops`).

        Example::
            >>> c = model.candidates(x_adv, stages=("pnet", "onet"))
            >>> loss = c.scores[c.scores > 0.5].log().mean()
        """
        if isinstance(stages, str):
            stages = (stages,)
        if not isinstance(stages, (tuple, list, set, frozenset)):
            raise TypeError(f"stages: expected a non-empty subset of {STAGES}, got {stages!r}")
        bad = [s for s in stages if s not in STAGES]
        if bad or not stages:
            raise ValueError(f"stages: expected a non-empty subset of {STAGES}, got {tuple(stages)}")
        x255 = self._prepare(images)
        out = []
        if "pnet" in stages:
            for s in self.scales(*x255.shape[-2:]):
                win, score, reg, idx = self._pnet_cells(x255, s)
                wh = (win[:, 2:] - win[:, :2]).repeat(1, 2)
                out.append((win, score, idx, 0, (win + reg * wh).detach()))
        if "rnet" in stages or "onet" in stages:
            with torch.no_grad():
                boxes, _, idx = self._stage1(x255.detach())
            ii = integral_image(x255)                           # differentiable w.r.t. the images
            if "rnet" in stages and len(boxes):
                b, i, (reg, score) = self._refine(self.rnet, x255, ii, boxes, idx, 24)
                out.append((b, score, i, 1, _bbreg(b, reg.detach())))
            if "onet" in stages and len(boxes):
                boxes, idx = self._stage2(x255.detach(), ii.detach(), boxes, idx)
                b, i, (reg, _, score) = self._refine(self.onet, x255, ii, boxes, idx, 48)
                out.append((b, score, i, 2, _bbreg(b, reg.detach())))
        if not out:
            z = x255.new_zeros(0)
            return Candidates(z.reshape(0, 4), z, z.long(), z.long(), z.reshape(0, 4))
        return Candidates(torch.cat([o[0] for o in out]).detach(), torch.cat([o[1] for o in out]),
                          torch.cat([o[2] for o in out]),
                          torch.cat([torch.full_like(o[2], o[3]) for o in out]),
                          torch.cat([o[4] for o in out]))

    def forward(self, images: Tensor) -> Candidates:
        """Same as ``candidates(images, stages=("pnet", "rnet", "onet"))``."""
        return self.candidates(images, STAGES)


def _default_weights_dir() -> str:
    spec = importlib.util.find_spec("facenet_pytorch")   # locate only: importing it needs torchvision
    if spec is None or not spec.submodule_search_locations:
        raise LookupError("MTCNN weights: the facenet-pytorch data wheel is not installed "
                          "(pip install --no-deps facenet-pytorch==2.6.0, or pass weights_dir=)")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def load_mtcnn(weights_dir: Optional[str] = None, device="cpu", **kwargs) -> MTCNN:
    """The pretrained MTCNN (facenet-pytorch 2.6 weights); ``kwargs`` go to :class:`MTCNN`.

    Example::
        >>> det = load_mtcnn().detect(x)
    """
    return MTCNN(device=device, weights_dir=weights_dir, **kwargs)
