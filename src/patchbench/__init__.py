"""patchbench: attack, defend and benchmark vision models against physical patches.

Sub-packages are imported lazily so that ``import patchbench`` stays cheap and one optional
dependency never breaks another area.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("patches", "models", "data", "attacks", "defenses", "defensive", "corruptions",
               "training", "metrics", "bench")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "Threat":
        from .patches.threat import Threat
        return Threat
    if name == "evaluate":
        from .evaluate import evaluate
        return evaluate
    raise AttributeError(f"module 'patchbench' has no attribute {name!r}")
