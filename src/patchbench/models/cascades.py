"""Classical, non-differentiable face detectors: black-box transfer targets for face patches.

* :class:`HaarFaceDetector` — Viola & Jones (CVPR 2001) boosted Haar cascade, OpenCV's
  ``haarcascade_frontalface_default.xml`` run by ``cv2.CascadeClassifier.detectMultiScale``. Needs
  ``opencv-python-headless<5`` (5.0 dropped the cascade API and the xml files), imported lazily.
* :class:`LBPFaceDetector` — the multi-block LBP cascade of Liao et al. (ICB 2007) that scikit-image
  ships (``skimage.data.lbp_frontal_face_cascade_filename()``), run by ``skimage.feature.Cascade``.

Yang et al. (ECCV 2020, §3.3 and App. C) test how a patch trained on one detector transfers to
others; these give such targets with no gradient at all. Neither detector returns a calibrated score,
so every detection has score 1.0 (it passes any threshold δ ≤ 1): only precision and recall at δ
are meaningful for them, not threshold curves.

Example::
    >>> dets = HaarFaceDetector().detect(x)          # x: N×3×H×W in [0, 1]
    >>> boxes, scores = dets[0]
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .._validation import check_fraction, check_images, check_path, check_positive_int


class BoxDetections(NamedTuple):
    """Faces in one image: ``boxes`` K×4 (x1, y1, x2, y2 pixels) and ``scores`` K (all 1.0)."""
    boxes: Tensor
    scores: Tensor


def _grey_uint8(images: Tensor) -> np.ndarray:
    """N×3×H×W (or N×1×H×W) in [0, 1] → N×H×W uint8 luma (ITU-R BT.601, as ``cv2.cvtColor``)."""
    x = images.detach().float().cpu()
    if x.shape[1] == 3:
        x = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    else:
        x = x[:, 0]
    return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


def _as_detections(rects, device) -> BoxDetections:
    """``(x, y, w, h)`` rows → :class:`BoxDetections` with x2 = x + w, y2 = y + h."""
    r = torch.as_tensor(np.asarray(rects, dtype=np.float32).reshape(-1, 4), device=device)
    boxes = torch.cat([r[:, :2], r[:, :2] + r[:, 2:]], 1)
    return BoxDetections(boxes, torch.ones(len(boxes), device=device))


def _check_min_size(min_size) -> Tuple[int, int]:
    try:
        h, w = min_size
    except (TypeError, ValueError) as e:
        raise TypeError(f"min_size: expected (height, width) in pixels, got {min_size!r}") from e
    return check_positive_int(h, "min_size height"), check_positive_int(w, "min_size width")


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade (Viola & Jones 2001) as a batched black-box detector.

    Args:
        scale_factor: pyramid step of ``detectMultiScale`` (default 1.1).
        min_neighbors: overlapping hits needed to keep a face (default 3).
        min_size: smallest face ``(h, w)`` in pixels (default (20, 20)).
        cascade: path to a cascade xml (default OpenCV's ``haarcascade_frontalface_default.xml``).
    Shapes:
        images N×3×H×W (or N×1×H×W) float in [0, 1]; returns N :class:`BoxDetections`.

    Example::
        >>> dets = HaarFaceDetector().detect(x)
    """

    name = "haar"

    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 3,
                 min_size: Tuple[int, int] = (20, 20), cascade: Optional[str] = None):
        try:
            import cv2
        except ImportError as e:
            raise ImportError("HaarFaceDetector needs OpenCV: pip install 'opencv-python-headless<5'") from e
        if not hasattr(cv2, "CascadeClassifier"):
            raise ImportError(f"HaarFaceDetector: OpenCV {cv2.__version__} has no CascadeClassifier "
                              f"(removed in 5.0): pip install 'opencv-python-headless<5'")
        if cascade is not None:
            cascade = str(check_path(cascade, "cascade", kind="file"))
        path = cascade or (cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        try:
            self._clf = cv2.CascadeClassifier(path)
        except Exception as e:  # noqa: BLE001 - OpenCV raises cv2.error / SystemError on a bad xml
            raise ValueError(f"cascade: could not load {path} as an OpenCV cascade xml "
                             f"({type(e).__name__})") from e
        if self._clf.empty():
            if cascade is not None:
                raise ValueError(f"cascade: could not load {path} as an OpenCV cascade xml")
            raise LookupError(f"HaarFaceDetector: could not load the cascade {path}")
        self.scale_factor = check_fraction(scale_factor, "scale_factor", 1.0, 10.0)
        self.min_neighbors = check_positive_int(min_neighbors, "min_neighbors", minimum=0)
        self.min_size = _check_min_size(min_size)

    def detect(self, images: Tensor) -> List[BoxDetections]:
        """Detect faces in every image; boxes on the images' device, scores 1.0."""
        images = check_images(images, "images", channels=(1, 3), allow_single=True)
        out = []
        for g in _grey_uint8(images):
            rects = self._clf.detectMultiScale(g, scaleFactor=self.scale_factor,
                                               minNeighbors=self.min_neighbors,
                                               minSize=self.min_size[::-1])
            out.append(_as_detections(rects, images.device))
        return out

    __call__ = detect


class LBPFaceDetector:
    """scikit-image's multi-block LBP frontal-face cascade as a batched black-box detector.

    Args:
        scale_factor: pyramid step (default 1.2); step_ratio: window stride factor (default 1).
        min_size: smallest face ``(h, w)`` (default (20, 20)); the largest is the image size.
        min_neighbors: overlapping hits needed to keep a face (default 4).
        overlap: intersection score above which hits are merged (default 0.5).
    Shapes:
        images N×3×H×W (or N×1×H×W) float in [0, 1]; returns N :class:`BoxDetections`.

    Example::
        >>> dets = LBPFaceDetector().detect(x)
    """

    name = "lbp"

    def __init__(self, scale_factor: float = 1.2, step_ratio: float = 1.0,
                 min_size: Tuple[int, int] = (20, 20), min_neighbors: int = 4, overlap: float = 0.5):
        import skimage.data
        from skimage.feature import Cascade
        self._cascade = Cascade(skimage.data.lbp_frontal_face_cascade_filename())
        self.scale_factor = check_fraction(scale_factor, "scale_factor", 1.0, 10.0)
        self.step_ratio = check_fraction(step_ratio, "step_ratio", 0.0, 10.0)
        self.min_size = _check_min_size(min_size)
        self.min_neighbors = check_positive_int(min_neighbors, "min_neighbors", minimum=0)
        self.overlap = check_fraction(overlap, "overlap", 0.0, 1.0, inclusive=True)

    def detect(self, images: Tensor) -> List[BoxDetections]:
        """Detect faces in every image; boxes on the images' device, scores 1.0."""
        images = check_images(images, "images", channels=(1, 3), allow_single=True)
        out = []
        for g in _grey_uint8(images):
            hits = self._cascade.detect_multi_scale(
                img=g.astype(np.float32) / 255.0, scale_factor=self.scale_factor,
                step_ratio=self.step_ratio, min_size=self.min_size, max_size=g.shape,
                min_neighbor_number=self.min_neighbors,
                intersection_score_threshold=self.overlap)
            rects = [(d["c"], d["r"], d["width"], d["height"]) for d in hits]
            out.append(_as_detections(rects, images.device))
        return out

    __call__ = detect


def load_cascade(name: str, **kwargs):
    """``"haar"`` → :class:`HaarFaceDetector`, ``"lbp"`` → :class:`LBPFaceDetector` (kwargs passed on)."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected 'haar' or 'lbp', got {name!r}")
    key = name.lower()
    if key == "haar":
        return HaarFaceDetector(**kwargs)
    if key == "lbp":
        return LBPFaceDetector(**kwargs)
    raise LookupError(f"unknown cascade detector {name!r}; available: haar, lbp")
