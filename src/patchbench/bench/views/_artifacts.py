"""The artifact files a run used, found read-only for its report (a view never trains anything).

A run writes ``DIR/experiment.json`` with its artifact specs (``artifacts.NAME``: ``kind``,
``source`` or ``config``), and each cell records the fingerprint of every artifact file it used
(``config["artifacts"][NAME]``). :func:`artifact_file` finds the file the way
:func:`patchbench.bench.artifacts.artifact_path` would — ``asset:FILE`` is a shipped file under
``patchbench/assets``, ``file:PATH`` a user file, a trained one lives in
``$PATCHBENCH_HOME/artifacts/<kind>/<hash of kind and config>/`` (its ``DONE`` marker names the
file) — but it never trains and never writes. A file whose fingerprint no longer matches the cell's
(retrained or replaced since the run) is not used. Where the run recorded the paths it used
(``experiment.json``'s ``artifact_paths``), those come first.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Tuple


def _experiment(run_dir) -> dict:
    if run_dir is None:
        return {}
    try:
        exp = json.loads((Path(run_dir) / "experiment.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return exp if isinstance(exp, dict) else {}


def artifact_specs(run_dir) -> Dict[str, dict]:
    """``NAME -> spec dict`` from ``run_dir/experiment.json`` (``{}`` when it is missing or
    unreadable). A spec gets the ``path`` the run used where the file records it
    (``artifact_paths``)."""
    exp = _experiment(run_dir)
    arts, paths = exp.get("artifacts"), exp.get("artifact_paths")
    paths = paths if isinstance(paths, dict) else {}
    if not isinstance(arts, dict):
        return {}
    return {str(k): {**v, **({"path": paths[k]} if isinstance(paths.get(k), str) else {})}
            for k, v in arts.items() if isinstance(v, dict)}


def experiment_order(run_dir, field: str = "models") -> list:
    """The names of a grid axis (``models``) in the experiment file's order, every grid in turn
    (``[]`` without ``experiment.json``)."""
    grids = _experiment(run_dir).get("grids")
    out = []
    for grid in grids if isinstance(grids, list) else []:
        entries = grid.get(field) if isinstance(grid, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            name = entry.get("name") if isinstance(entry, dict) else entry
            if isinstance(name, str) and name not in out:
                out.append(name)
    return out


def _candidate(spec: dict) -> Tuple[Optional[Path], str]:
    if isinstance(spec.get("path"), str) and Path(spec["path"]).is_file():
        return Path(spec["path"]), ""
    source = spec.get("source")
    if isinstance(source, str) and source.startswith("asset:"):
        from importlib import resources
        return Path(str(resources.files("patchbench").joinpath("assets", source[6:]))), ""
    if isinstance(source, str) and source.startswith("file:"):
        return Path(source[5:]).expanduser(), ""
    if not isinstance(spec.get("config"), dict) or not isinstance(spec.get("kind"), str):
        return None, "its spec in experiment.json has neither a source nor a config"
    from ..._io import cache_root, config_fingerprint
    folder = cache_root("artifacts", spec["kind"],
                        config_fingerprint({"kind": spec["kind"], "config": spec["config"]}))
    done = folder / "DONE"
    try:
        return folder / done.read_text(encoding="utf-8").strip(), ""
    except OSError:
        return None, (f"it is not (or no longer) trained in {folder} (set PATCHBENCH_HOME as for "
                      f"the run)")


def artifact_file(run_dir, name: str, fingerprint: Optional[str] = None
                  ) -> Tuple[Optional[Path], str]:
    """``(path, "")`` of the artifact ``name`` of the run in ``run_dir``, or ``(None, why)``.
    ``fingerprint``: the one the cells recorded; a file with another is refused."""
    specs = artifact_specs(run_dir)
    if name not in specs:
        where = "no experiment.json" if not specs else "experiment.json does not name it"
        return None, f"artifact {name!r}: {where}"
    path, why = _candidate(specs[name])
    if path is None:
        return None, f"artifact {name!r}: {why}"
    if not path.is_file():
        return None, f"artifact {name!r}: {path} is missing"
    if fingerprint and fingerprint != name:      # --dry-run cells carry the name instead
        from ..._io import file_fingerprint
        have = file_fingerprint(path, len(fingerprint))
        if have != fingerprint:
            return None, (f"artifact {name!r}: {path} has changed since the run (fingerprint "
                          f"{have}, the cells used {fingerprint})")
    return path, ""


__all__ = ["artifact_specs", "artifact_file", "experiment_order"]
