"""User code an experiment file names: ``[experiment] imports = [...]``.

An attack, defense, model, dataset or task registered in the user's own code (``@register("name")``,
see docs/architecture.md) is unknown to ``patchbench run`` until that code is imported. The
experiment file lists it::

    [experiment]
    name = "mine"
    imports = ["my_project.attacks",        # a module on sys.path (importlib.import_module)
               "plugins/my_defense.py"]     # a file, relative to the experiment file's folder

Each entry is imported once per process, before the file's names are checked, and again in every
Ray worker before its first cell (the run's settings carry the resolved list; a module file is
loaded under the name ``patchbench_user.<stem>_<hash of its path>``). Importing the same entry
twice does nothing. A module that does not import, or a file that does not exist, is a
``ValueError`` naming ``experiment.imports[i]``.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import List, Optional, Sequence

__all__ = ["resolve_imports", "load_imports"]

_LOADED: set = set()


def _is_file(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or "\\" in entry


def resolve_imports(raw, base: Optional[Path], where: str = "experiment.imports") -> List[str]:
    """The entries as they are imported: module names kept, file paths made absolute (relative to
    ``base``, the experiment file's folder; the working directory without a file). Checks the
    form only; :func:`load_imports` imports them."""
    if isinstance(raw, str) or not isinstance(raw, (list, tuple)):
        raise TypeError(f"{where}: expected a list of module names or .py files, got {raw!r}")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, str) or not entry.strip():
            raise TypeError(f"{where}[{i}]: expected a module name or a .py file, got {entry!r}")
        entry = entry.strip()
        if _is_file(entry):
            p = Path(entry).expanduser()
            if not p.is_absolute():
                p = (base or Path.cwd()) / p
            if not p.is_file():
                raise ValueError(f"{where}[{i}]: no such file {p}")
            if p.suffix != ".py":
                raise ValueError(f"{where}[{i}]: {p} is not a .py file")
            entry = str(p.resolve())
        elif not all(part.isidentifier() for part in entry.split(".")):
            raise ValueError(f"{where}[{i}]: {entry!r} is neither a module name (a.b.c) nor a .py "
                             f"file")
        out.append(entry)
    return out


def load_imports(entries: Sequence[str], where: str = "experiment.imports") -> None:
    """Import each resolved entry (see the module docstring) unless already imported here."""
    for i, entry in enumerate(entries):
        if entry in _LOADED:
            continue
        try:
            if _is_file(entry):
                p = Path(entry)
                tag = hashlib.sha256(str(p).encode()).hexdigest()[:8]
                name = f"patchbench_user.{p.stem}_{tag}"
                spec = importlib.util.spec_from_file_location(name, p)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot load {p}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(name, None)
                    raise
            else:
                importlib.import_module(entry)
        except Exception as e:  # noqa: BLE001 - any error in user code, named with its entry
            raise ValueError(f"{where}[{i}]: importing {entry!r} failed: "
                             f"{type(e).__name__}: {e}") from e
        _LOADED.add(entry)
