"""Experiment files: a TOML file that names a grid of cells and the artifacts they need, validated on
load so that every mistake is reported, with its table path, before any cell runs.

A file has three parts (a bundled example: ``src/patchbench/experiments/quick.toml``)::

    [experiment]                      # name, task, description, device, threads, num_cpus, num_gpus,
    name = "quick"                    # gallery (images kept per cell for the report)
    task = "classification"

    [artifacts.pz_do]                 # something the grid needs that is trained or loaded once
    kind = "patchzero"                # patchzero | classifier
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

Attack and defense options not given come from the registered classes' defaults (so ``masked-pgd`` gets
PatchZero §4.1's settings). Names resolve through the registries' one folding rule (``Masked_PGD`` is
``masked-pgd``).
"""
from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional

from .._config import read_toml
from .._registry import check_keywords, normalize_name
from .._validation import check_bool, check_device, check_int, check_number, check_seed

TASKS = ("classification",)
ARTIFACT_KINDS = ("patchzero", "classifier")
_EXPERIMENT_KEYS = {"name", "task", "description", "device", "threads", "num_cpus", "num_gpus",
                    "gallery"}
_GRID_KEYS = ("models", "datasets", "attacks", "defenses", "threats", "adaptive", "seeds")
_WHERE_KEYS = {"model", "dataset", "attack", "defense", "adaptive", "patch_area", "shape",
               "placement", "seed"}
_SET_KEYS = {"n", "attack", "defense", "skip"}


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
class Experiment:
    """A validated experiment file (see the module docstring)."""

    name: str
    task: str
    path: Optional[Path]
    description: str = ""
    device: str = "cpu"
    threads: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    gallery: int = 0
    models: List[Entry] = field(default_factory=list)
    datasets: List[Entry] = field(default_factory=list)
    attacks: List[Entry] = field(default_factory=list)
    defenses: List[Entry] = field(default_factory=list)
    threats: List[Dict[str, object]] = field(default_factory=list)
    adaptive: List[bool] = field(default_factory=lambda: [False])
    seeds: List[int] = field(default_factory=lambda: [0])
    artifacts: Dict[str, ArtifactSpec] = field(default_factory=dict)
    overrides: List[Dict[str, object]] = field(default_factory=list)


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
        except (TypeError, ValueError, LookupError) as e:
            msg = str(e)
            keys = [k for k in kwargs if isinstance(k, str)] + [a for a in args[1:2] if isinstance(a, str)]
            head, sep, rest = msg.partition(": ")
            for k in sorted(keys, key=len, reverse=True):
                if sep and re.search(rf"(^|[\s.'\"]){re.escape(k)}['\"]?$", head):
                    where, msg = f"{where}.{k}", rest
                    break
            kind = LookupError if isinstance(e, LookupError) else (
                TypeError if isinstance(e, TypeError) else ExperimentError)
            raise kind(f"{self.src}: {where}: {msg}") from None


def _show(v) -> str:
    return f"{type(v).__name__} {v!r}"


def _axis(c: _Checker, grid: dict, key: str, default=None) -> list:
    if key not in grid:
        if default is None:
            c.fail(f"grid.{key}", "missing (every grid needs at least one value here)")
        return default
    value = grid[key]
    if not isinstance(value, list):
        value = [value]
    if not value:
        c.fail(f"grid.{key}", "is empty (give at least one value)")
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
    task = head.get("task", "classification")
    c.wrap("experiment.task", _check_task, task)
    exp = Experiment(name=name, task=normalize_name(task), path=path,
                     description=str(head.get("description", "")))
    exp.device = str(c.wrap("experiment.device", check_device, head.get("device", "cpu"), "device"))
    exp.threads = c.wrap("experiment", check_int, head.get("threads", 1), "threads", 1, 256)
    exp.num_cpus = c.wrap("experiment", check_number, head.get("num_cpus", 1), "num_cpus", 0.0, 1024,
                          False)
    exp.num_gpus = c.wrap("experiment", check_number, head.get("num_gpus", 0), "num_gpus", 0.0, 64)
    if exp.num_gpus > 0 and exp.device == "cpu":
        c.fail("experiment.num_gpus", "GPUs are asked for but device is 'cpu' (set device = 'cuda')")
    exp.gallery = c.wrap("experiment", check_int, head.get("gallery", 0), "gallery", 0, 64)

    arts = c.table(data.get("artifacts", {}), "artifacts")
    for aname, raw in arts.items():
        exp.artifacts[aname] = _artifact(c, aname, raw)

    grid = c.table(data.get("grid"), "grid") if "grid" in data else c.fail("grid", "missing table [grid]")
    c.keys(grid, "grid", _GRID_KEYS)
    exp.models = [_model(c, r, f"grid.models[{i}]") for i, r in enumerate(_axis(c, grid, "models"))]
    exp.datasets = [_dataset(c, r, f"grid.datasets[{i}]")
                    for i, r in enumerate(_axis(c, grid, "datasets"))]
    exp.attacks = [_attack(c, r, f"grid.attacks[{i}]")
                   for i, r in enumerate(_axis(c, grid, "attacks", ["none"]))]
    exp.defenses = [_defense(c, r, f"grid.defenses[{i}]", exp.artifacts)
                    for i, r in enumerate(_axis(c, grid, "defenses", ["none"]))]
    exp.threats = [_threat(c, r, f"grid.threats[{i}]")
                   for i, r in enumerate(_axis(c, grid, "threats", [{}]))]
    exp.adaptive = [c.wrap(f"grid.adaptive[{i}]", check_bool, v, "value")
                    for i, v in enumerate(_axis(c, grid, "adaptive", [False]))]
    exp.seeds = [c.wrap(f"grid.seeds[{i}]", check_seed, v, "value")
                 for i, v in enumerate(_axis(c, grid, "seeds", [0]))]
    raw_over = data.get("override", [])
    if not isinstance(raw_over, list):
        c.fail("override", "expected an array of tables ([[override]])", TypeError)
    exp.overrides = [_override(c, o, f"override[{i}]") for i, o in enumerate(raw_over)]
    return exp


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
    if kind == "patchzero":
        from ..training.patchzero import PatchZeroTrainConfig
        from .._config import config_from_mapping
        config_from_mapping(PatchZeroTrainConfig, cfg, "config")
    elif kind == "classifier":
        from ..training.classifier import train_classifier
        if "arch" not in cfg:
            raise ValueError("arch: missing (the classifier's registered architecture)")
        check_keywords(train_classifier, {k: v for k, v in cfg.items() if k != "out_path"},
                       "classifier config")


def _model(c: _Checker, raw, where: str) -> Entry:
    e = _entry(c, raw, where)
    from ..models import zoo
    c.wrap(where, zoo.get_spec, e.name)
    c.keys(e.options, where, {"weights", "options"})
    if "weights" in e.options:
        w = e.options["weights"]
        if not isinstance(w, str):
            c.fail(f"{where}.weights", f"expected a file path or '@artifact', got {_show(w)}", TypeError)
    return e


def _dataset(c: _Checker, raw, where: str) -> Entry:
    e = _entry(c, raw, where)
    from ..data import dataset_info, dataset_names
    known = {normalize_name(n): n for n in dataset_names()}
    if normalize_name(e.name) not in known:
        c.fail(where, f"unknown dataset {e.name!r}; known: {', '.join(sorted(known.values()))}",
               LookupError)
    e = Entry(known[normalize_name(e.name)], e.options, e.label)
    c.keys(e.options, where, {"split", "n", "offset"})
    info = dataset_info(e.name)
    split = e.options.get("split", "test")
    if split not in info.get("splits", [split]):
        c.fail(f"{where}.split", f"expected one of {info['splits']}, got {split!r}", LookupError)
    if "n" in e.options:
        c.wrap(where, check_int, e.options["n"], "n", 1)
    if "offset" in e.options:
        c.wrap(where, check_int, e.options["offset"], "offset", 0)
    return e


def _attack(c: _Checker, raw, where: str) -> Entry:
    e = _entry(c, raw, where)
    if normalize_name(e.name) == "none":
        if e.options:
            c.fail(where, "the 'none' attack takes no options")
        return Entry("none", {}, e.label)
    from .. import attacks
    from ..attacks.base import _ATTACKS
    cls = c.wrap(where, _ATTACKS.lookup, e.name)
    c.wrap(where, attacks.get, e.name, **e.options)       # validates every option's value
    return Entry(cls.name, dict(e.options), e.label)


def _defense(c: _Checker, raw, where: str, artifacts: Dict[str, ArtifactSpec]) -> Entry:
    e = _entry(c, raw, where)
    if normalize_name(e.name) == "none":
        if e.options:
            c.fail(where, "the 'none' defense takes no options")
        return Entry("none", {}, e.label)
    from ..defenses.base import _DEFENSES
    cls = c.wrap(where, _DEFENSES.lookup, e.name)
    builder = getattr(cls, "from_context", None) or cls
    c.wrap(where, check_keywords, builder, e.options, f"defense {e.name!r}")
    for k, v in e.options.items():
        if isinstance(v, str) and v.startswith("@") and v[1:] not in artifacts:
            c.fail(f"{where}.{k}", f"refers to artifact {v!r}, but [artifacts] has "
                                   f"{', '.join(sorted(artifacts)) or 'none'}", LookupError)
    return Entry(cls.name, dict(e.options), e.label)


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
        c.wrap(f"{where}.set", check_int, sets["n"], "n", 1)
    if "skip" in sets:
        c.wrap(f"{where}.set", check_bool, sets["skip"], "skip")
    for k in ("attack", "defense"):
        if k in sets:
            c.table(sets[k], f"{where}.set.{k}")
    return {"where": dict(match), "set": copy.deepcopy(sets)}


def as_dict(exp: Experiment) -> dict:
    """The experiment as plain data (for ``--dry-run`` and the run's metadata)."""
    d = dataclasses.asdict(exp)
    d["path"] = str(exp.path) if exp.path is not None else None
    return d


__all__ = ["Experiment", "Entry", "ArtifactSpec", "ExperimentError", "bundled_names", "resolve",
           "load", "parse", "as_dict"]

