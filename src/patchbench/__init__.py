"""patchbench: attack, defend and benchmark vision models against physical patches.

Sub-packages are imported lazily so that ``import patchbench`` stays cheap and one optional
dependency never breaks another area.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("patches", "models", "data", "attacks", "defenses", "defensive", "corruptions",
               "training", "metrics", "bench", "tasks")


_FUNCTIONS = {"Threat": ("patches.threat", "Threat"), "evaluate": ("evaluation", "evaluate"),
              "Evaluation": ("evaluation", "Evaluation"),
              # pb.list(kind): the names of models, attacks, defenses, corruptions, datasets, tasks
              # or experiments (patchbench._registry.list_names)
              "list": ("_registry", "list_names")}

# Looked up on every use, never cached in this module's globals, where it would shadow the builtin.
_UNCACHED = frozenset({"list"})


def __getattr__(name):
    # The resolved object is cached in the module's globals, so later look-ups never reach this
    # hook again. Function names never share a submodule's name (the submodule import would bind
    # itself over the function: ``pb.evaluate`` once was the module on its second use).
    if name in _SUBMODULES:
        obj = importlib.import_module(f"{__name__}.{name}")
    elif name in _FUNCTIONS:
        module, attr = _FUNCTIONS[name]
        obj = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        if name in _UNCACHED:
            return obj
    else:
        raise AttributeError(f"module 'patchbench' has no attribute {name!r}")
    globals()[name] = obj
    return obj


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES) | set(_FUNCTIONS))
