"""From a validated :class:`~patchbench.bench.config.Experiment` to its cells.

A cell is one combination of model × dataset × attack × defense × threat × adaptive × seed (× target
class, for retrieval grids; × keyword, for text-image grids) of one of the experiment's grids, after the overrides. Its *config* is plain JSON-able data holding everything
that changes its numbers (the attack's full options, with the registered defaults filled in, the
defense's options, the dataset pool and the cell's own ``n``, and the fingerprints of the artifacts it
uses); its *key* is the hash of that config. Rules that keep the grid honest and small:

* the ``none`` attack has no adaptive variant, and neither has the ``none`` defense (an adaptive attack
  on an undefended model is the non-adaptive one);
* overrides apply in file order, a grid's own (``[[grid.override]]``) before the top-level ones;
  ``skip = true`` removes a cell, ``n`` must fit in the dataset entry's pool;
* a cell that two grids (or two axis values) both give is listed once.

A classification dataset entry's ``train`` table (a universal patch's training images, defaults
filled in) and ``placements`` are part of ``dataset_options``, and ``[experiment] attack_batch``
is the attacked cells' ``attack_batch``, so each is in the key where given (:mod:`.heldout`,
:mod:`.steps`); cells of files without them keep their keys.

Defense options are kept as the file gives them (not filled with constructor defaults): the defaults
that matter at build time come from the cell's context (the dataset's mean fill, the image size, the
patch area), and the context is itself in the config.
"""
from __future__ import annotations

import fnmatch
import inspect
import itertools
from dataclasses import dataclass
from typing import Dict, List, Optional

from .._io import config_fingerprint
from .._registry import normalize_name
from .config import Entry, Experiment, ExperimentError, Grid, dataset_size

#: bump when the meaning of a cell config changes, so old stores are not mixed with new cells
CELL_SCHEMA = 2     # 2: dataset_options.n is the pool, n the cell's own


@dataclass(frozen=True)
class Cell:
    """One cell: ``key`` (config hash), ``config`` (JSON-able), a short ``label`` for progress lines,
    the artifacts it needs and the resources one cell takes on a cluster."""

    key: str
    config: Dict[str, object]
    label: str
    artifacts: tuple = ()
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    @property
    def seed(self) -> int:
        return int(self.config["seed"])


def _defaults(cls) -> Dict[str, object]:
    """The keyword defaults of a registered class (its constructor, or ``from_context``)."""
    fn = getattr(cls, "from_context", None) or cls
    out = {}
    for k, p in inspect.signature(fn).parameters.items():
        if p.default is not inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                                   p.KEYWORD_ONLY):
            d = p.default
            out[k] = list(d) if isinstance(d, tuple) else d
    return out


def _jsonable(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return repr(v)


def attack_options(entry: Entry) -> Dict[str, object]:
    if entry.name == "none":
        return {}
    from ..attacks.base import _ATTACKS
    return _jsonable({**_defaults(_ATTACKS.lookup(entry.name)), **entry.options})


def defense_options(entry: Entry) -> Dict[str, object]:
    if entry.name == "none":
        return {}
    from ..defenses.base import _DEFENSES
    cls = _DEFENSES.lookup(entry.name)
    d = _defaults(cls)
    d.pop("context", None)
    return _jsonable({**{k: v for k, v in d.items() if k not in ("model",)}, **entry.options})


def _matches(where: Dict[str, object], cfg: Dict[str, object], labels: Dict[str, str]) -> bool:
    for k, want in where.items():
        if k in ("shape", "placement"):
            have = (cfg["threat"] or {}).get(k)
        elif k == "sticker":
            have = cfg.get("sticker", {}).get("name", "none")
        elif k in ("target", "keyword"):
            have = cfg.get(k)
        elif k in ("corruption", "severity"):
            have = cfg.get("corruption", {}).get("name" if k == "corruption" else k,
                                                 "none" if k == "corruption" else 0)
        else:
            have = cfg[k]
        if isinstance(want, list):
            if not any(_eq(k, w, have, labels) for w in want):
                return False
        elif not _eq(k, want, have, labels):
            return False
    return True


def _eq(key: str, want, have, labels: Dict[str, str]) -> bool:
    if key in ("attack", "defense", "model", "dataset", "sticker", "corruption") and \
            isinstance(want, str):
        pat = normalize_name(want)
        return fnmatch.fnmatchcase(normalize_name(have), pat) or \
            fnmatch.fnmatchcase(normalize_name(labels.get(key, "")), pat)
    if key == "patch_area":
        return have is not None and abs(float(want) - float(have)) < 1e-12
    return want == have


def _apply(cfg: Dict[str, object], sets: Dict[str, object]) -> Optional[Dict[str, object]]:
    if sets.get("skip"):
        return None
    if "n" in sets:
        cfg["n"] = int(sets["n"])
    for k in ("attack", "defense"):
        if k in sets and cfg[k] != "none":
            cfg[f"{k}_options"] = {**cfg[f"{k}_options"], **_jsonable(sets[k])}
    return cfg


class _OverrideChecks:
    """Checks what an override did to a cell, once per (override, attack/defense, options): the
    merged options must build, and the cell's ``n`` must fit in its pool. Errors name the file and
    the override's table path."""

    def __init__(self, src: str):
        self.src, self.seen = src, set()

    def __call__(self, o: Dict[str, object], cfg: Dict[str, object], pool: Optional[int],
                 data_path: str) -> None:
        from .config import _located, check_attack_options, check_defense_options
        where = f"{o['path']}.set"
        n = cfg["n"]
        if "n" in o["set"] and pool is not None and n > pool:
            raise ExperimentError(
                f"{self.src}: {where}.n: {n} images, but the pool of {data_path} holds {pool} (the "
                f"dataset entry's n; a cell evaluates the first n images of its pool)")
        for part, check in (("attack", check_attack_options), ("defense", check_defense_options)):
            if part not in o["set"] or cfg[part] == "none":
                continue
            opts = cfg[f"{part}_options"]
            key = (o["path"], part, cfg[part], config_fingerprint(opts))
            if key in self.seen:
                continue
            self.seen.add(key)
            try:
                check(cfg[part], **opts)
            except (TypeError, ValueError, LookupError) as e:
                raise _located(e, self.src, f"{where}.{part}", list(o["set"][part])) from None


def artifact_refs(cfg: Dict[str, object]) -> List[str]:
    """Names of the artifacts (``"@NAME"`` option values) a cell config uses."""
    refs = []
    for part in ("model_options", "defense_options", "attack_options", "sticker"):
        for v in cfg.get(part, {}).values():
            if isinstance(v, str) and v.startswith("@"):
                refs.append(v[1:])
    return sorted(set(refs))


def expand(exp: Experiment, artifact_prints: Optional[Dict[str, str]] = None) -> List[Cell]:
    """Every cell of ``exp``: grid by grid, each in axis order (models, datasets, threats, defenses,
    attacks, adaptive, seeds). ``artifact_prints`` maps artifact names to their fingerprints (part of
    the key: a retrained artifact gives new cells); without it the artifact names stand in (for
    ``--dry-run``)."""
    prints = artifact_prints or {}
    checks = _OverrideChecks(exp.source)
    cells, seen = [], set()
    for grid in exp.grids:
        for cell in _grid_cells(exp, grid, prints, checks):
            if cell.key in seen:          # two axis values (or two grids) that mean the same thing
                continue
            seen.add(cell.key)
            cells.append(cell)
    return cells


def _grid_cells(exp: Experiment, grid: Grid, prints: Dict[str, str], checks: _OverrideChecks):
    overrides = list(grid.overrides) + list(exp.overrides)
    task = grid.task or exp.task             # a [[grid]] may name its own task
    faces = task == "face-detection"         # face patches sit on the face boxes: no threat
    retrieval = task == "retrieval"
    text_image = task == "text-image"
    # one axis more: AdvHash's target classes (retrieval) or the keywords (text-image)
    targets = grid.targets if retrieval else (grid.keywords if text_image else [None])
    for model, (d, data), sticker, corruption, threat, defense, attack, adaptive, seed, target in \
            itertools.product(grid.models, enumerate(grid.datasets), grid.stickers,
                              grid.corruptions, grid.threats[:1] if faces else grid.threats,
                              grid.defenses, grid.attacks, grid.adaptive, grid.seeds, targets):
        if adaptive and (attack.name == "none" or defense.name == "none"):
            continue
        n = data.options.get("n")
        split, offset = data.options.get("split", "test"), int(data.options.get("offset", 0))
        cfg: Dict[str, object] = {
            "schema": CELL_SCHEMA, "experiment": exp.name, "task": task,
            "model": model.name, "model_options": _jsonable(model.options),
            "dataset": data.name,
            "dataset_options": {"split": split, "offset": offset,
                                "n": None if n is None else int(n),
                                **_jsonable({k: v for k, v in data.options.items()
                                             if k not in ("split", "offset", "n")})},
            "n": None if n is None else int(n),
            "attack": attack.name, "attack_options": attack_options(attack),
            "defense": defense.name, "defense_options": defense_options(defense),
            "patch_area": None if faces else float(threat["area"]),
            "threat": None if faces else {"shape": threat["shape"],
                                          "placement": _jsonable(threat["placement"]),
                                          "aspect": float(threat["aspect"])},
            "adaptive": bool(adaptive), "seed": int(seed),
        }
        labels = {"attack": attack.display(), "defense": defense.display(),
                  "model": model.display(), "dataset": data.display()}
        if sticker.name != "none":           # absent when "none": older cells keep their keys
            cfg["sticker"] = {"name": sticker.name, **_jsonable(sticker.options)}
            labels["sticker"] = sticker.display()
        if corruption["name"] != "none":
            cfg["corruption"] = dict(corruption)
        if exp.attack_batch and attack.name != "none":   # absent otherwise: older keys stay
            cfg["attack_batch"] = int(exp.attack_batch)
        if retrieval:                        # only retrieval cells carry these: other keys stay
            from .retrieval_config import cell_fields
            cfg.update(cell_fields(grid, target))
        if text_image:                       # only text-image cells carry these
            from .text_image_config import cell_fields as text_image_fields
            cfg.update(text_image_fields(grid, target))
        pool = n
        if pool is None:
            size = dataset_size(data.name, split)
            pool = None if size is None else size - offset
        for o in overrides:
            if cfg is not None and _matches(o["where"], cfg, labels):
                cfg = _apply(cfg, o["set"])
                if cfg is not None:
                    checks(o, cfg, pool, f"{grid.path}.datasets[{d}]")
        if cfg is None:
            continue
        refs = artifact_refs(cfg)
        cfg["artifacts"] = {r: prints.get(r, r) for r in refs}
        cfg["labels"] = labels
        yield Cell(config_fingerprint(cfg), cfg, describe(cfg), tuple(refs), exp.num_cpus,
                   exp.num_gpus)


def describe(cfg: Dict[str, object]) -> str:
    """A one-line label: ``fmnist_cnn_small 5% jpeg masked-pgd adaptive n=64 seed 0``."""
    lab = cfg.get("labels", {})
    who = "benign" if cfg["attack"] == "none" else (
        f"{lab.get('attack', cfg['attack'])} {'adaptive' if cfg['adaptive'] else 'DO'}")
    n = cfg["n"] if cfg["n"] is not None else "all"
    area = "" if cfg.get("patch_area") is None else f" {cfg['patch_area']:.0%}"
    extra = ""
    if cfg.get("sticker"):
        extra += f" sticker={lab.get('sticker', cfg['sticker']['name'])}"
    if cfg.get("corruption"):
        extra += f" {cfg['corruption']['name']}@{cfg['corruption']['severity']}"
    if cfg.get("task") == "retrieval":
        if cfg.get("target") is not None:
            extra += f" target={cfg['target']}"
        opts = cfg.get("defense_options") or {}      # the options that change the attacker only
        extra += "".join(f" {k}={opts[k]}" for k in ("eot_samples", "gradient") if k in opts)
    if cfg.get("task") == "text-image":
        extra += f" keyword={cfg.get('keyword')}"
        opts = cfg.get("defense_options") or {}      # the options that change the attacker only
        extra += "".join(f" {k}={opts[k]}" for k in ("eot_samples", "gradient") if k in opts)
    return (f"{lab.get('model', cfg['model'])}{area}{extra} "
            f"{lab.get('defense', cfg['defense'])} {who} n={n} seed {cfg['seed']}")


def select(cells: List[Cell], pattern: Optional[str]) -> List[Cell]:
    """Cells whose label (or key) contains a match of the glob ``pattern`` (``--only``):
    case-insensitive, ``_``, ``-`` and spaces alike (``"jpeg*adaptive"``, ``"masked-pgd"``)."""
    if not pattern:
        return cells
    pat = f"*{normalize_name(pattern)}*"
    return [c for c in cells if fnmatch.fnmatchcase(normalize_name(c.label), pat)
            or fnmatch.fnmatchcase(c.key, pat)]


__all__ = ["Cell", "CELL_SCHEMA", "expand", "describe", "select", "artifact_refs"]

