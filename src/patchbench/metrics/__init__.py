"""Metrics: classification rates with Wilson intervals (here), and per-task modules imported on
first use (``pb.metrics.segmentation``, ``pb.metrics.detection``, ``pb.metrics.retrieval``, ...).

Example::

    from patchbench.metrics import clean_accuracy, attack_success_rate
    print(clean_accuracy(model, x, y))        # "0.833 [0.44, 0.97] (5/6)"
"""
from __future__ import annotations

import importlib

from .classification import (Rate, accuracy, attack_success_rate, clean_accuracy, predict_labels,
                             robust_accuracy, success_rate, wilson_interval)

__all__ = ["Rate", "accuracy", "attack_success_rate", "clean_accuracy", "predict_labels",
           "robust_accuracy", "success_rate", "wilson_interval"]

_SUBMODULES = ("classification", "segmentation", "detection", "retrieval", "image")


def __getattr__(name):
    # Per-task metric modules load lazily, so one area's optional dependency never breaks another.
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
