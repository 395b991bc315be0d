"""End-to-end evaluation presets behind ``patchbench evaluate --preset NAME``.

Each preset module exposes ``run(out_dir, argv) -> Path`` that trains (or reuses a cached checkpoint of)
what it needs, evaluates, and writes ``out_dir/index.html`` and ``out_dir/results.json``. ``defenses``
is an alias: it runs the bundled experiment file ``experiments/defenses.toml`` through the harness
(``patchbench run defenses``), with its old flags applied.
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


def check_preset(name: str) -> str:
    """The registry key of preset ``name`` (``LookupError`` listing the presets otherwise)."""
    if not isinstance(name, str):
        raise TypeError(f"preset: expected a preset name, got {name!r}")
    key = name.lower().replace("_", "-")
    if key not in PRESETS:
        raise LookupError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return key


def run_preset(name: str, out_dir: Optional[str] = None, argv: Optional[List[str]] = None) -> Path:
    key = check_preset(name)
    if argv is not None and (isinstance(argv, str) or not all(isinstance(a, str) for a in argv)):
        raise TypeError(f"argv: expected a list of strings, got {argv!r}")
    out = Path(out_dir or f"reports/{key}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {str(out)!r} is an existing file, expected a folder")
    mod = importlib.import_module(f"{__name__}.{PRESETS[key]}")
    return mod.run(out, list(argv or []))
