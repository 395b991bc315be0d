"""End-to-end evaluation presets behind ``patchbench evaluate --preset NAME``.

Each preset module exposes ``run(out_dir, argv) -> Path`` that trains (or reuses a cached checkpoint of)
what it needs, evaluates, and writes ``out_dir/index.html`` and ``out_dir/results.json``.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import List, Optional

PRESETS = {
    "defenses": "defenses",
    "defensive-patch": "defensive_patch",
    "face-patch": "face_patch",
}


def run_preset(name: str, out_dir: Optional[str] = None, argv: Optional[List[str]] = None) -> Path:
    key = name.lower().replace("_", "-")
    if key not in PRESETS:
        raise LookupError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    mod = importlib.import_module(f"{__name__}.{PRESETS[key]}")
    return mod.run(Path(out_dir or f"reports/{key}"), list(argv or []))
