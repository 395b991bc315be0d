"""Experiment files: a TOML file that names a grid of cells and the artifacts they need, validated on
load so that every mistake is reported, with its table path, before any cell runs.

A file has three parts (bundled examples: ``src/patchbench/experiments/quick.toml``, and
``defenses.toml`` for sub-grids, pools and sweeps)::

    [experiment]                      # name, task, description, device, threads, num_cpus, num_gpus,
    name = "quick"                    # gallery (images kept per cell for the report), batch_size
    task = "classification"           # (images per prediction batch, default 64), imports
                                      # (user modules / .py files registering names: .imports)

    [artifacts.pz_do]                 # something the grid needs that is trained or loaded once
    kind = "patchzero"                # patchzero | classifier | face-patch | defensive-patch | sac
                                      # | hasher | pair | patchzero-images | sac-images
    source = "asset:patchzero_fmnist_do.pt"   # or: config = { ...trainer config... }

    [grid]                            # the cells: every combination of the axes below
    models   = ["fmnist_cnn_small"]                         # a name, or {name = ..., options...}
    datasets = [{name = "fashion-mnist", split = "test", n = 64}]
    attacks  = ["none", {name = "masked-pgd", steps = 10}]  # options default to the attack's own
    defenses = ["none", "jpeg", {name = "patchzero", checkpoint = "@pz_do"}]
    threats  = [{area = 0.05, shape = "square", placement = "random"}]
    adaptive = [false, true]
    seeds    = [0]

    [[override]]                      # per-axis overrides, applied in order
    where = {defense = "jpeg", adaptive = true}
    set = {n = 32, attack = {steps = 5}}               # or: skip = true

Sub-grids: instead of one ``[grid]`` table, a file may give several ``[[grid]]`` tables (each with
the axes above and an optional ``name``); the cells are their union, in file order, and a cell two
sub-grids both give is computed once. A ``[[grid.override]]`` after a ``[[grid]]`` (or after
``[grid]``) applies to that grid only, before the top-level ``[[override]]`` tables. Errors name the
sub-grid by index: ``grid[1].defenses[3]``.

Pools: a dataset entry's ``n`` is the *pool* of its cells, the first ``n`` images of the split
(all of it when ``n`` is not given). A cell takes its own ``n`` from an override (``set = {n = 300}``,
at most the pool), else the whole pool: benign and adaptive cells evaluate its first ``n`` images;
non-adaptive (downstream-only) cells score the shared attack, which runs once on the whole pool, on
its first ``n`` (so a DO cell's numbers depend on the pool, which is part of its key).

Entries: ``label`` names an axis value in reports and in ``where`` (two PatchZero detectors:
``{name = "patchzero", checkpoint = "@pz_do", label = "patchzero-do"}``); ``sweep`` expands an
attack or defense entry into one entry per value (or per combination, with several keys):
``{name = "lgs", sweep = {smoothing_factor = [1.5, 2.3, 3.5]}}``. A defense with a ``certify``
method (PatchCleanser) takes ``certify = true``: its benign cells also report the certified accuracy
(``certified_acc``, with ``certified_acc_ci``).

Tasks: ``[experiment] task`` is every grid's task unless a ``[[grid]]`` names its own
(``task = "retrieval"``), so one file may hold grids of several tasks (the bundled ``quick`` holds a
retrieval cell). Retrieval grids (hashers, AdvHash, purifiers) add a dataset entry's ``gallery``
and ``train`` tables and the grid keys ``targets``, ``k`` and ``purify_gallery``: see
:mod:`patchbench.bench.retrieval_config`. Text-image grids (``task = "text-image"``: dual encoders,
TTH, purifiers) take a captioned gallery entry with ``ads`` and ``train`` tables and the grid keys
``keywords`` (an axis) and ``k``: see :mod:`patchbench.bench.text_image_config`.

Classification dataset entries may add ``train = {split, offset, n}`` (a universal patch's training
images, disjoint from the scored ones: :mod:`patchbench.bench.heldout`) and ``placements`` (each
scored image pasted on at that many placements); ``[experiment] attack_batch`` attacks a per-image
DO attack's pool that many images at a time (each chunk early-stops on its own). An attack's
``eot`` option is a table of :class:`patchbench.patches.EOT` arguments.

Attack options not given come from the registered classes' defaults (so ``masked-pgd`` gets PatchZero
§4.1's settings); defense options not given are left to the defense, which builds from the cell's
context (image size, dataset mean, patch area, model), all of it part of the cell's config. Names
resolve through the registries' one folding rule (``Masked_PGD`` is ``masked-pgd``).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional

from .._config import read_toml
from .._registry import normalize_name
from .._validation import (check_bool, check_device, check_int, check_number, check_positive_int,
                           check_seed)

TASKS = ("classification", "face-detection", "retrieval", "text-image")
ARTIFACT_KINDS = ("patchzero", "classifier", "face-patch", "defensive-patch", "sac",
                  # the retrieval experiments' (bench/artifacts_retrieval.py)
                  "hasher", "pair", "patchzero-images", "sac-images")
_EXPERIMENT_KEYS = {"name", "task", "description", "device", "threads", "num_cpus", "num_gpus",
                    "gallery", "batch_size", "attack_batch", "imports"}
_GRID_KEYS = ("models", "datasets", "stickers", "corruptions", "attacks", "defenses", "threats",
              "adaptive", "seeds")
_GRID_TABLE_KEYS = set(_GRID_KEYS) | {"name", "override", "task", "targets", "k",
                                       "purify_gallery", "keywords"}
_WHERE_KEYS = {"model", "dataset", "attack", "defense", "adaptive", "patch_area", "shape",
               "placement", "seed", "sticker", "corruption", "severity", "target", "keyword"}
#: the ``stickers`` axis: a defensive patch of the true class stuck on each image before anything
#: else happens to it, or one of its controls (Wang et al. CVPR 2022; patchbench.defensive)
STICKERS = ("none", "defensive", "random", "blank")
_SET_KEYS = {"n", "attack", "defense", "skip"}
#: defense entry keys the harness reads itself (never passed to the defense's constructor)
HARNESS_DEFENSE_KEYS = ("certify",)
#: dataset entry keys the harness reads itself; the others are the dataset's own options (size=)
#: (``photos = true``: a face set also evaluates the real photos of data.faces.real_faces())
#: (``gallery`` / ``train``: a retrieval entry's database and attack-training images, see
#: :mod:`.retrieval_config`)
#: (``placements``: a classification entry's images are each scored at that many placements; its
#: ``train``: the training images of a universal patch, see :mod:`.heldout`)
#: (``ads``: a text-image entry's ad images, see :mod:`.text_image_config`)
_HARNESS_DATASET_KEYS = ("split", "n", "offset", "photos", "gallery", "train", "placements", "ads")


class ExperimentError(ValueError):
    """An experiment file that cannot run; the message names the file and the table path."""


@dataclass(frozen=True)
class Entry:
    """One value of a grid axis: a registered ``name`` with its ``options`` (and a display ``label``)."""

    name: str
    options: Dict[str, object] = field(default_factory=dict)
    label: str = ""

    def display(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class ArtifactSpec:
    """Something cells need that is built once: trained from ``config`` or taken from ``source``."""

    name: str
    kind: str
    config: Dict[str, object] = field(default_factory=dict)
    source: Optional[str] = None


@dataclass
class Grid:
    """One grid of cells (the ``[grid]`` table, or one of several ``[[grid]]``): its axes and its
    own overrides; ``path`` is its table path in the file (``grid`` or ``grid[1]``), for messages."""

    name: str = ""
    path: str = "grid"
    task: str = "classification"
    models: List[Entry] = field(default_factory=list)
    datasets: List[Entry] = field(default_factory=list)
    stickers: List[Entry] = field(default_factory=lambda: [Entry("none")])
    corruptions: List[Dict[str, object]] = field(default_factory=lambda: [{"name": "none"}])
    attacks: List[Entry] = field(default_factory=list)
    defenses: List[Entry] = field(default_factory=list)
    threats: List[Dict[str, object]] = field(default_factory=list)
    adaptive: List[bool] = field(default_factory=lambda: [False])
    seeds: List[int] = field(default_factory=lambda: [0])
    overrides: List[Dict[str, object]] = field(default_factory=list)
    #: retrieval grids only (:mod:`.retrieval_config`): AdvHash's target classes (``[None]``: no
    #: attack), ``k`` of mAP@k (None: min(1000, gallery)), and whether the gallery is purified
    targets: List[Optional[int]] = field(default_factory=lambda: [None])
    k: Optional[int] = None
    purify_gallery: bool = False
    #: text-image grids only (:mod:`.text_image_config`): the keywords (an axis; ``[None]``: none)
    keywords: List[Optional[str]] = field(default_factory=lambda: [None])


@dataclass
class Experiment:
    """A validated experiment file (see the module docstring). ``overrides`` are the top-level
    ``[[override]]`` tables (each grid's own are in ``grids[i].overrides``)."""

    name: str
    task: str
    path: Optional[Path]
    description: str = ""
    device: str = "cpu"
    threads: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    gallery: int = 0
    batch_size: int = 64
    #: images per run of a per-image DO attack (None: the whole pool at once); each chunk stops
    #: early on its own, so an early-stopping attack costs what its hardest chunk needs
    attack_batch: Optional[int] = None
    grids: List[Grid] = field(default_factory=list)
    artifacts: Dict[str, ArtifactSpec] = field(default_factory=dict)
    overrides: List[Dict[str, object]] = field(default_factory=list)
    #: user modules / .py files imported before the checks and in every worker (``.imports``)
    imports: List[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        """The file, as error messages name it."""
        return str(self.path) if self.path is not None else "<experiment>"


# ---- locating files ----------------------------------------------------------------------------
def bundled_names() -> List[str]:
    """Names of the experiments shipped in ``patchbench/experiments/`` (``patchbench run NAME``)."""
    folder = resources.files("patchbench").joinpath("experiments")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def resolve(name_or_path) -> Path:
    """A bundled experiment name (folded: ``defensive_patch`` = ``defensive-patch``) or a ``.toml`` path."""
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or Path(text).is_file():
        p = Path(text)
        if not p.exists():
            raise FileNotFoundError(f"experiment: {text!r} does not exist")
        if p.is_dir():
            raise ExperimentError(f"experiment: {text!r} is a directory, expected a .toml file")
        return p
    names = bundled_names()
    by_key = {normalize_name(n): n for n in names}
    key = normalize_name(text)
    if key not in by_key:
        import difflib
        close = difflib.get_close_matches(key, list(by_key), n=1)
        hint = f" (did you mean {by_key[close[0]]!r}?)" if close else ""
        raise LookupError(f"experiment: unknown experiment {text!r}{hint}; bundled: "
                          f"{', '.join(names)} (or give a FILE.toml)")
    return Path(str(resources.files("patchbench").joinpath("experiments", by_key[key] + ".toml")))


def load(name_or_path) -> Experiment:
    """Read and validate an experiment (bundled name or file)."""
    path = resolve(name_or_path)
    try:
        data = read_toml(path, "experiment")
    except ValueError as e:
        raise ExperimentError(str(e)) from None
    return parse(data, path)


# ---- validation --------------------------------------------------------------------------------
class _Checker:
    def __init__(self, path: Optional[Path]):
        self.src = str(path) if path is not None else "<experiment>"

    def fail(self, where: str, msg: str, kind=ExperimentError):
        err = kind(f"{self.src}: {where}: {msg}")
        raise err

    def table(self, value, where: str) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"expected a table, got {_show(value)}", TypeError)
        return value

    def keys(self, value: dict, where: str, known) -> None:
        unknown = sorted(set(value) - set(known))
        if unknown:
            self.fail(where, f"unknown key{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(map(repr, unknown))}; known keys: {', '.join(sorted(known))}")

    def wrap(self, where: str, fn, *args, **kwargs):
        """Run a validation helper; its error gets the table path: a message that starts by naming
        one of the options given (``steps: ...``, ``MaskedPGD steps: ...``) becomes
        ``grid.attacks[2].steps: ...``."""
        try:
            return fn(*args, **kwargs)
        except (TypeError, ValueError, LookupError, FileNotFoundError) as e:
            raise _located(e, self.src, where, [k for k in kwargs if isinstance(k, str)]
                           + [a for a in args[1:2] if isinstance(a, str)]) from None


def _located(e: Exception, src: str, where: str, keys) -> Exception:
    """``e`` re-raised as the same kind of error, prefixed with the file and the table path (and the
    option its message starts by naming, when it is one of ``keys``)."""
    msg = str(e)
    head, sep, rest = msg.partition(": ")
    for k in sorted(keys, key=len, reverse=True):
        if sep and re.search(rf"(^|[\s.'\"]){re.escape(k)}['\"]?( \([^)]*\))?$", head):
            where, msg = f"{where}.{k}", rest
            break
    kind = LookupError if isinstance(e, LookupError) else (
        TypeError if isinstance(e, TypeError) else ExperimentError)
    return kind(f"{src}: {where}: {msg}")


def _show(v) -> str:
    return f"{type(v).__name__} {v!r}"


def _axis(c: _Checker, grid: dict, where: str, key: str, default=None) -> list:
    if key not in grid:
        if default is None:
            c.fail(f"{where}.{key}", "missing (every grid needs at least one value here)")
        return default
    value = grid[key]
    if not isinstance(value, list):
        value = [value]
    if not value:
        c.fail(f"{where}.{key}", "is empty (give at least one value)")
    return value


def _entry(c: _Checker, raw, where: str) -> Entry:
    if isinstance(raw, str):
        return Entry(raw.strip())
    t = c.table(raw, where)
    if "name" not in t or not isinstance(t["name"], str):
        c.fail(where, "expected a name or a table with a 'name' key", TypeError)
    opts = {k: v for k, v in t.items() if k not in ("name", "label")}
    label = t.get("label", "")
    if not isinstance(label, str):
        c.fail(f"{where}.label", f"expected a string, got {_show(label)}", TypeError)
    return Entry(t["name"].strip(), opts, label)


def _swept(c: _Checker, raw, where: str) -> list:
    """``(entry, note)`` for each entry one raw attack/defense entry stands for: itself (note
    ``""``), or one per combination of the values of its ``sweep`` table (``{sweep = {steps = [10,
    100]}}`` → two entries; note ``"sweep.steps[1]"``)."""
    if not isinstance(raw, dict) or "sweep" not in raw:
        return [(raw, "")]
    sweep = c.table(raw["sweep"], f"{where}.sweep")
    if not sweep:
        c.fail(f"{where}.sweep", "is empty (give option = [values] to sweep)")
    for k, values in sweep.items():
        if not isinstance(values, list) or not values:
            c.fail(f"{where}.sweep.{k}", f"expected a non-empty list of values, got {_show(values)}",
                   TypeError)
        if k in raw or k in ("name", "label"):
            c.fail(f"{where}.sweep.{k}", f"{k!r} is given both in the entry and in its sweep")
    base = {k: v for k, v in raw.items() if k != "sweep"}
    keys = list(sweep)
    return [({**base, **{k: sweep[k][j] for k, j in zip(keys, idx)}},
             ", ".join(f"sweep.{k}[{j}]" for k, j in zip(keys, idx)))
            for idx in itertools.product(*(range(len(v)) for v in sweep.values()))]


def _entries(c: _Checker, raws: list, where: str, parse_one, *extra) -> List[Entry]:
    out = []
    for i, raw in enumerate(raws):
        for variant, note in _swept(c, raw, f"{where}[{i}]"):
            try:
                out.append(parse_one(c, variant, f"{where}[{i}]", *extra))
            except (TypeError, ValueError, LookupError) as e:
                if not note:
                    raise
                raise type(e)(f"{e} (the entry with {where}[{i}].{note})") from None
    return out


def parse(data: dict, path: Optional[Path] = None) -> Experiment:
    """Validate a parsed TOML document; every error names the file and the table path."""
    c = _Checker(path)
    c.table(data, "top level")
    c.keys(data, "top level", {"experiment", "artifacts", "grid", "override"})
    head = c.table(data.get("experiment", {}), "experiment")
    c.keys(head, "experiment", _EXPERIMENT_KEYS)
    name = head.get("name", path.stem if path is not None else "experiment")
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
        c.fail("experiment.name", f"expected a name of letters, digits, '-', '_', '.', got {name!r}")
    imports: List[str] = []
    if "imports" in head:             # user code registering names, imported before the checks
        from .imports import load_imports, resolve_imports
        imports = c.wrap("experiment", resolve_imports, head["imports"],
                         path.parent if path is not None else None)
        c.wrap("experiment", load_imports, imports)
    task = head.get("task", "classification")
    c.wrap("experiment.task", _check_task, task)
    exp = Experiment(name=name, task=normalize_name(task), path=path,
                     description=str(head.get("description", "")), imports=imports)
    exp.device = str(c.wrap("experiment.device", check_device, head.get("device", "cpu"), "device"))
    exp.threads = c.wrap("experiment", check_int, head.get("threads", 1), "threads", 1, 256)
    exp.num_cpus = c.wrap("experiment", check_number, head.get("num_cpus", 1), "num_cpus", 0.0, 1024,
                          False)
    exp.num_gpus = c.wrap("experiment", check_number, head.get("num_gpus", 0), "num_gpus", 0.0, 64)
    if exp.num_gpus > 0 and exp.device == "cpu":
        c.fail("experiment.num_gpus", "GPUs are asked for but device is 'cpu' (set device = 'cuda')")
    exp.gallery = c.wrap("experiment", check_int, head.get("gallery", 0), "gallery", 0, 64)
    exp.batch_size = c.wrap("experiment", check_int, head.get("batch_size", 64), "batch_size", 1,
                            1 << 16)
    if "attack_batch" in head:
        exp.attack_batch = c.wrap("experiment", check_int, head["attack_batch"], "attack_batch", 1,
                                  1 << 16)

    arts = c.table(data.get("artifacts", {}), "artifacts")
    for aname, raw in arts.items():
        exp.artifacts[aname] = _artifact(c, aname, raw)

    if "grid" not in data:
        c.fail("grid", "missing table [grid] (or [[grid]] sub-grids)")
    raw_grid = data["grid"]
    if isinstance(raw_grid, list):
        if not raw_grid:
            c.fail("grid", "is empty (give at least one [[grid]] table)")
        exp.grids = [_grid(c, g, f"grid[{i}]", exp.artifacts, exp.task)
                     for i, g in enumerate(raw_grid)]
    else:
        exp.grids = [_grid(c, raw_grid, "grid", exp.artifacts, exp.task)]
    names = [g.name for g in exp.grids if g.name]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        c.fail("grid", f"two sub-grids are named {dup[0]!r} (names must differ)")
    exp.overrides = _overrides(c, data.get("override", []), "override")
    return exp


def _grid(c: _Checker, raw, where: str, artifacts: Dict[str, ArtifactSpec],
          task: str = "classification") -> Grid:
    grid = c.table(raw, where)
    c.keys(grid, where, _GRID_TABLE_KEYS)
    name = grid.get("name", "")
    if not isinstance(name, str):
        c.fail(f"{where}.name", f"expected a string, got {_show(name)}", TypeError)
    if "task" in grid:                        # a sub-grid of another task than the experiment's
        c.wrap(f"{where}.task", _check_task, grid["task"])
        task = normalize_name(grid["task"])
    g = Grid(name=name, path=where, task=task)
    g.models = [_model(c, r, f"{where}.models[{i}]", task)
                for i, r in enumerate(_axis(c, grid, where, "models"))]
    g.datasets = [_dataset(c, r, f"{where}.datasets[{i}]", task)
                  for i, r in enumerate(_axis(c, grid, where, "datasets"))]
    g.stickers = [_sticker(c, r, f"{where}.stickers[{i}]", artifacts)
                  for i, r in enumerate(_axis(c, grid, where, "stickers", ["none"]))]
    g.corruptions = [v for i, r in enumerate(_axis(c, grid, where, "corruptions", ["none"]))
                     for v in _corruptions(c, r, f"{where}.corruptions[{i}]")]
    g.attacks = _entries(c, _axis(c, grid, where, "attacks", ["none"]), f"{where}.attacks", _attack,
                         artifacts)
    g.defenses = _entries(c, _axis(c, grid, where, "defenses", ["none"]), f"{where}.defenses",
                          _defense, artifacts)
    g.threats = [_threat(c, r, f"{where}.threats[{i}]")
                 for i, r in enumerate(_axis(c, grid, where, "threats", [{}]))]
    g.adaptive = [c.wrap(f"{where}.adaptive[{i}]", check_bool, v, "value")
                  for i, v in enumerate(_axis(c, grid, where, "adaptive", [False]))]
    g.seeds = [c.wrap(f"{where}.seeds[{i}]", check_seed, v, "value")
               for i, v in enumerate(_axis(c, grid, where, "seeds", [0]))]
    g.overrides = _overrides(c, grid.get("override", []), f"{where}.override")
    from . import retrieval_config as RC
    from . import text_image_config as TIC
    if task == "retrieval":
        RC.check_grid(c, grid, g, where, dataset_size)
        if len(g.stickers) > 1 or g.stickers[0].name != "none" or len(g.corruptions) > 1 \
                or g.corruptions[0]["name"] != "none":
            c.fail(where, "retrieval grids take no stickers or corruptions")
    elif task == "text-image":
        TIC.check_grid(c, grid, g, where, dataset_size)
    else:
        RC.refuse_outside(c, grid, where, task)
    if task != "text-image":
        TIC.refuse_outside(c, grid, where, task)
    if task == "classification":
        from .heldout import check_grid as check_heldout_grid
        check_heldout_grid(c, g, where)
    if task == "face-detection":
        if any(d.name != "none" for d in g.defenses) or any(g.adaptive):
            c.fail(where, "face-detection grids take no defenses and no adaptive attacker yet "
                          "(defenses = ['none'], adaptive = [false])")
        if "threats" in grid or len(g.stickers) > 1 or len(g.corruptions) > 1:
            c.fail(where, "face-detection grids take no threats, stickers or corruptions (a face "
                          "patch sits on each face box: its alpha and position are attack options)")
    elif any(s.name != "none" for s in g.stickers) and task != "classification":
        c.fail(f"{where}.stickers", "stickers are for classification grids")
    return g


def _overrides(c: _Checker, raw, where: str) -> List[Dict[str, object]]:
    if not isinstance(raw, list):
        c.fail(where, f"expected an array of tables ([[{where}]])", TypeError)
    return [_override(c, o, f"{where}[{i}]") for i, o in enumerate(raw)]


def _check_task(task):
    if not isinstance(task, str):
        raise TypeError(f"expected a task name, got {task!r}")
    if normalize_name(task) not in TASKS:
        raise LookupError(f"unknown task {task!r}; the harness runs: {', '.join(TASKS)}")


def _artifact(c: _Checker, name: str, raw) -> ArtifactSpec:
    where = f"artifacts.{name}"
    if not re.fullmatch(r"[\w-]+", name):
        c.fail(where, "artifact names are letters, digits, '-' and '_'")
    t = c.table(raw, where)
    c.keys(t, where, {"kind", "config", "source"})
    kind = t.get("kind")
    if kind not in ARTIFACT_KINDS:
        c.fail(f"{where}.kind", f"expected one of {', '.join(ARTIFACT_KINDS)}, got {kind!r}", LookupError)
    if ("config" in t) == ("source" in t):
        c.fail(where, "give exactly one of 'config' (train it) or 'source' (asset:NAME or file:PATH)")
    if "source" in t:
        src = t["source"]
        if not isinstance(src, str) or not src.startswith(("asset:", "file:")):
            c.fail(f"{where}.source", f"expected 'asset:NAME' or 'file:PATH', got {src!r}")
        if src.startswith("file:") and not Path(src[5:]).expanduser().is_file():
            c.fail(f"{where}.source", f"{src[5:]!r} does not exist", FileNotFoundError)
        if src.startswith("asset:"):
            asset = resources.files("patchbench").joinpath("assets", src[6:])
            if not asset.is_file():
                c.fail(f"{where}.source", f"no shipped asset {src[6:]!r}", LookupError)
        return ArtifactSpec(name, kind, {}, src)
    cfg = c.table(t["config"], f"{where}.config")
    c.wrap(f"{where}.config", _check_artifact_config, kind, cfg)
    return ArtifactSpec(name, kind, dict(cfg), None)


def _check_artifact_config(kind: str, cfg: dict) -> None:
    from .artifacts import KINDS, check_config
    if kind not in KINDS:          # the retrieval kinds, before artifacts.KINDS registers them
        from .artifacts_retrieval import retrieval_kinds
        retrieval_kinds()[kind].check(cfg)
        return
    check_config(kind, cfg)


def _model(c: _Checker, raw, where: str, task: str = "classification") -> Entry:
    e = _entry(c, raw, where)
    if task == "face-detection":
        from .._registry import resolve_name
        from ..models.detectors import DETECTORS
        name = c.wrap(where, resolve_name, e.name, DETECTORS, "face detector", "name")
        c.keys(e.options, where, {"options"})
        return Entry(name, e.options, e.label)
    if task == "retrieval":
        from .retrieval_config import check_model
        return check_model(c, e, where)
    if task == "text-image":
        from .text_image_config import check_model as check_text_image_model
        return check_text_image_model(c, e, where)
    from ..models import zoo
    c.wrap(where, zoo.check_spec, e.name)     # zoo names, torchvision:/timm:/module:function specs
    c.keys(e.options, where, {"weights", "options"})
    if "weights" in e.options:
        w = e.options["weights"]
        if not isinstance(w, str):
            c.fail(f"{where}.weights", f"expected a file path or '@artifact', got {_show(w)}", TypeError)
    return e


def _dataset(c: _Checker, raw, where: str, task: str = "classification") -> Entry:
    e = _entry(c, raw, where)
    from ..data import dataset_info, dataset_names
    known = {normalize_name(n): n for n in dataset_names()}
    if normalize_name(e.name) not in known:
        c.fail(where, f"unknown dataset {e.name!r}; known: {', '.join(sorted(known.values()))}",
               LookupError)
    e = Entry(known[normalize_name(e.name)], e.options, e.label)
    own = {k: v for k, v in e.options.items() if k not in _HARNESS_DATASET_KEYS}
    info = c.wrap(where, dataset_info, e.name, **own)
    if info["task"] != task and not (task == "text-image" and info["task"] == "retrieval"):
        c.fail(where, f"{e.name!r} is a {info['task']} dataset, this experiment's task is {task!r}")
    if "photos" in e.options:
        c.wrap(where, check_bool, e.options["photos"], "photos")
        if task != "face-detection":
            c.fail(f"{where}.photos", "only face-detection datasets take photos = true")
    if "gallery" in e.options and task != "retrieval":
        c.fail(f"{where}.gallery", "only retrieval datasets take a gallery")
    if "ads" in e.options and task != "text-image":
        c.fail(f"{where}.ads", "only text-image datasets take ads")
    if task == "text-image":
        from .text_image_config import check_dataset as check_text_image_dataset
        e = check_text_image_dataset(c, e, where, info, dataset_size)
    elif task == "retrieval":
        from .retrieval_config import check_dataset
        e = check_dataset(c, e, where, info, dataset_size)
    elif "train" in e.options or "placements" in e.options:
        if task != "classification":
            key = "train" if "train" in e.options else "placements"
            c.fail(f"{where}.{key}", f"only classification (and retrieval: train) datasets take "
                                     f"{key!r}, this grid's task is {task!r}")
        from .heldout import check_dataset as check_heldout
        e = check_heldout(c, e, where, info, dataset_size)
    split = e.options.get("split", "test")
    if split not in info.get("splits", [split]):
        c.fail(f"{where}.split", f"expected one of {info['splits']}, got {split!r}", LookupError)
    n = c.wrap(where, check_int, e.options["n"], "n", 1) if "n" in e.options else None
    offset = c.wrap(where, check_int, e.options.get("offset", 0), "offset", 0)
    size = dataset_size(e.name, split)
    if size is not None and offset >= size:
        c.fail(f"{where}.offset", f"the {e.name!r} {split} split has {size} images, got "
                                  f"offset={offset}")
    if size is not None and n is not None and offset + n > size:
        c.fail(f"{where}.n", f"the {e.name!r} {split} split has {size} images, got n={n}"
                             + (f" from offset={offset}" if offset else ""))
    return e


def dataset_size(name: str, split: str) -> Optional[int]:
    """Images in one split of a registered dataset (``None`` when the registry does not say)."""
    from ..data import dataset_info
    sizes = dataset_info(name).get("sizes") or {}
    size = sizes.get(split)
    return int(size) if isinstance(size, int) else None


def _attack(c: _Checker, raw, where: str, artifacts: Optional[Dict[str, ArtifactSpec]] = None) -> Entry:
    e = _entry(c, raw, where)
    if normalize_name(e.name) == "none":
        if e.options:
            c.fail(where, "the 'none' attack takes no options")
        return Entry("none", {}, e.label)
    from ..attacks.base import _ATTACKS
    cls = c.wrap(where, _ATTACKS.lookup, e.name)
    _check_refs(c, e.options, where, artifacts or {})
    plain = {k: v for k, v in e.options.items() if not _is_ref(v)}
    c.wrap(where, check_attack_options, cls.name, **plain)
    return Entry(cls.name, dict(e.options), e.label)


def _is_ref(v) -> bool:
    return isinstance(v, str) and v.startswith("@")


def _check_refs(c: _Checker, options: dict, where: str, artifacts: Dict[str, ArtifactSpec],
                kind: Optional[str] = None) -> None:
    """Every ``"@NAME"`` option names an artifact of the file (of ``kind`` when given)."""
    for k, v in options.items():
        if not _is_ref(v):
            continue
        if v[1:] not in artifacts:
            c.fail(f"{where}.{k}", f"refers to artifact {v!r}, but [artifacts] has "
                                   f"{', '.join(sorted(artifacts)) or 'none'}", LookupError)
        if kind is not None and artifacts[v[1:]].kind != kind:
            c.fail(f"{where}.{k}", f"{v!r} is a {artifacts[v[1:]].kind} artifact, expected a {kind}")


def _sticker(c: _Checker, raw, where: str, artifacts: Dict[str, ArtifactSpec]) -> Entry:
    e = _entry(c, raw, where)
    name = normalize_name(e.name)
    if name not in STICKERS:
        c.fail(where, f"unknown sticker {e.name!r}; expected one of {', '.join(STICKERS)}", LookupError)
    if name == "none":
        if e.options:
            c.fail(where, "the 'none' sticker takes no options")
        return Entry("none", {}, e.label)
    c.keys(e.options, where, {"patch"})
    if "patch" not in e.options or not _is_ref(e.options["patch"]):
        c.fail(f"{where}.patch", "missing: a sticker needs patch = '@ARTIFACT' (a defensive-patch "
                                 "artifact)")
    _check_refs(c, e.options, where, artifacts, "defensive-patch")
    return Entry(name, dict(e.options), e.label)


def _corruptions(c: _Checker, raw, where: str) -> List[Dict[str, object]]:
    """One ``{name, severity}`` per corruption × severity of an entry (``name = "all"``: every
    registered corruption, in :data:`patchbench.corruptions.CORRUPTIONS` order)."""
    from ..corruptions import CORRUPTIONS, MAX_SEVERITY
    e = _entry(c, raw, where)
    if normalize_name(e.name) == "none":
        if e.options:
            c.fail(where, "the 'none' corruption takes no options")
        return [{"name": "none"}]
    c.keys(e.options, where, {"severity"})
    if normalize_name(e.name) == "all":
        names = list(CORRUPTIONS)
    else:
        from .._registry import resolve_name
        names = [c.wrap(where, resolve_name, e.name, list(CORRUPTIONS), "corruption", "name")]
    sev = e.options.get("severity", list(range(1, MAX_SEVERITY + 1)))
    sev = sev if isinstance(sev, list) else [sev]
    if not sev:
        c.fail(f"{where}.severity", "is empty")
    sev = [c.wrap(f"{where}.severity[{i}]", check_int, s, "severity", 1, MAX_SEVERITY)
           for i, s in enumerate(sev)]
    return [{"name": n, "severity": s} for n in names for s in sev]


def check_attack_options(name: str, **options) -> None:
    """Build the attack once: every option's name and value is checked by its constructor."""
    build_attack(name, options)


def build_attack(name: str, options: dict):
    """The registered attack ``name`` with ``options`` from an experiment file: an ``eot`` table
    (``{rotation = 20, scale = [0.9, 1.1]}``) becomes a :class:`patchbench.patches.EOT` (Athalye
    et al. 2018; its constructor checks every value)."""
    from .. import attacks
    opts = dict(options)
    if isinstance(opts.get("eot"), dict):
        from ..patches import EOT
        eot = dict(opts["eot"])
        if isinstance(eot.get("scale"), list):
            eot["scale"] = tuple(eot["scale"])
        try:
            opts["eot"] = EOT(**eot)
        except TypeError as e:
            raise TypeError(f"eot: {e} (the EOT table takes rotation, scale, perspective, "
                            f"brightness, contrast, blur, noise)") from None
        except ValueError as e:
            raise ValueError(f"eot: {e}") from None
    return attacks.get(name, **opts)


def _defense(c: _Checker, raw, where: str, artifacts: Dict[str, ArtifactSpec]) -> Entry:
    e = _entry(c, raw, where)
    if normalize_name(e.name) == "none":
        if e.options:
            c.fail(where, "the 'none' defense takes no options")
        return Entry("none", {}, e.label)
    from ..defenses.base import _DEFENSES
    cls = c.wrap(where, _DEFENSES.lookup, e.name)
    c.wrap(where, check_defense_options, cls.name, **e.options)
    _check_refs(c, e.options, where, artifacts)
    return Entry(cls.name, dict(e.options), e.label)


def check_defense_options(name: str, **options) -> None:
    """The options of a registered defense: its constructor's keywords (the context the harness
    builds it from gives the model, image size, fill and patch area), plus ``certify`` (a bool, for
    defenses with a ``certify`` method). A defense whose required arguments are all given (and no
    artifact reference) is built once, so that its constructor checks every value too."""
    import inspect

    from ..defenses.base import _DEFENSES
    cls = _DEFENSES.lookup(name)
    opts = dict(options)
    if "certify" in opts:
        check_bool(opts.pop("certify"), "certify")
        if not callable(getattr(cls, "certify", None)):
            raise ValueError(f"certify: the {cls.name!r} defense has no certification (certify = true "
                             f"needs a defense with a certify() method, e.g. 'patchcleanser')")
    ctor = _keywords(cls)
    accepted = ctor | (_keywords(cls.from_context) - {"ctx", "context"})
    unknown = [k for k in opts if k not in accepted]
    if unknown:
        takes = sorted(accepted | ({"certify"} if callable(getattr(cls, "certify", None)) else set()))
        raise TypeError(f"defense {cls.name!r}: unexpected option{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(map(repr, unknown))}; it takes: {', '.join(takes)}")
    params = inspect.signature(cls).parameters
    required = [k for k, p in params.items() if p.default is p.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    refs = any(isinstance(v, str) and v.startswith("@") for v in opts.values())
    if all(k in opts for k in required) and set(opts) <= ctor and not refs:
        cls(**opts)


def _keywords(fn) -> set:
    import inspect
    return {k for k, p in inspect.signature(fn).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _threat(c: _Checker, raw, where: str) -> Dict[str, object]:
    t = dict(c.table(raw, where))
    c.keys(t, where, {"area", "shape", "placement", "aspect"})
    from ..patches import Threat
    threat = c.wrap(where, Threat, **t)
    return {"area": threat.area, "shape": threat.shape,
            "placement": t.get("placement", "random"), "aspect": threat.aspect}


def _override(c: _Checker, raw, where: str) -> Dict[str, object]:
    t = c.table(raw, where)
    c.keys(t, where, {"where", "set"})
    match = c.table(t.get("where", {}), f"{where}.where")
    c.keys(match, f"{where}.where", _WHERE_KEYS)
    sets = c.table(t.get("set", {}), f"{where}.set")
    c.keys(sets, f"{where}.set", _SET_KEYS)
    if not sets:
        c.fail(f"{where}.set", "is empty: say what the override changes (n, attack, defense, skip)")
    if "n" in sets:
        c.wrap(f"{where}.set", check_positive_int, sets["n"], "n")
    if "skip" in sets:
        c.wrap(f"{where}.set", check_bool, sets["skip"], "skip")
    for k in ("attack", "defense"):
        if k in sets:
            c.table(sets[k], f"{where}.set.{k}")
    return {"where": dict(match), "set": copy.deepcopy(sets), "path": where}


def as_dict(exp: Experiment) -> dict:
    """The experiment as plain data (for ``--dry-run`` and the run's metadata)."""
    d = dataclasses.asdict(exp)
    d["path"] = str(exp.path) if exp.path is not None else None
    return d


__all__ = ["Experiment", "Grid", "Entry", "ArtifactSpec", "ExperimentError", "bundled_names",
           "resolve", "load", "parse", "as_dict", "check_attack_options", "check_defense_options",
           "dataset_size", "build_attack"]
