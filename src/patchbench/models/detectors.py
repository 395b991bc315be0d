"""Face detectors by name, for experiment files and the face-detection task: ``mtcnn`` (the
differentiable white-box victim, :func:`patchbench.models.mtcnn.load_mtcnn`), and the two classical,
non-differentiable cascades ``haar`` (OpenCV) and ``lbp`` (scikit-image), the black-box transfer
targets of Yang et al.'s §3.3 / App. C.

Example::

    det = load_detector("mtcnn")
    boxes, scores = det.detect(x)[0]
"""
from __future__ import annotations

from typing import List

from .._registry import resolve_name

DETECTORS = ("mtcnn", "haar", "lbp")


def detector_names() -> List[str]:
    """The names :func:`load_detector` accepts."""
    return list(DETECTORS)


def load_detector(name: str, device="cpu", **options):
    """The detector ``name`` (``options`` go to its constructor); ``LookupError`` listing the
    detectors for an unknown name. The cascades run on the CPU whatever ``device`` says (their
    detections come back on the images' device)."""
    key = resolve_name(name, DETECTORS, "face detector", "name")
    if key == "mtcnn":
        from .mtcnn import load_mtcnn
        return load_mtcnn(device=device, **options)
    from .cascades import load_cascade
    return load_cascade(key, **options)


__all__ = ["DETECTORS", "detector_names", "load_detector"]
