"""Trainers for the models patchbench trains itself, with atomic checkpoints and resume.

Names are imported lazily so that ``python -m patchbench.training.classifier`` runs cleanly.
"""
import importlib

_EXPORTS = {
    "atomic_save": "checkpoint", "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "save_weights": "checkpoint", "main_train_classifier": "classifier", "train_classifier": "classifier",
    "train_pair": "pair", "main_train_pair": "pair", "train_sac": "sac", "main_train_sac": "sac",
    "train_hasher": "hasher", "main_train_hasher": "hasher", "HasherTrainConfig": "hasher",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
