"""``patchbench evaluate --preset NAME``: the old preset commands, now aliases that run the bundled
experiment files through the harness (``patchbench run NAME``) with their old flags applied to the
file in memory. Anything else: copy the file, edit it and ``patchbench run COPY.toml``.

* ``defenses`` (``experiments/defenses.toml``): ``--n``, ``--steps``, ``--areas``, ``--defenses``,
  ``--quick``, ``--model``, ``--skip-imagenet``, ``--patchzero-do``, ``--patchzero-two-stage``;
* ``face-patch`` (``experiments/face-patch.toml``): ``--strategies``, ``--n-train``, ``--n-test``,
  ``--size``, ``--epochs``, ``--lr``, ``--batch-size``, ``--alpha``, ``--patch-size``, ``--delta``,
  ``--no-cascades``, ``--quick`` (8 train, 4 test, 1 epoch);
* ``defensive-patch`` (``experiments/defensive-patch.toml``): ``--n-test``, ``--n-adv``,
  ``--epochs`` / ``--train-limit`` (the Fashion-MNIST patch is then trained with them instead of
  read from the shipped asset, which was trained with the defaults), ``--imagenet-epochs``,
  ``--skip-imagenet``, ``--quick`` (48 test images, 20 attacked, one corruption per family, no
  photos);

and for all: ``--threads``, ``--seed``, ``--device``, ``--dry-run``. A killed run resumes (the results store is
``OUT/results.db``); the report is ``OUT/index.html`` with ``results.json`` / ``results.csv``.

Example::

    patchbench evaluate --preset defenses --quick --out /tmp/defenses
    patchbench evaluate --preset face-patch --quick --out /tmp/faces
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from .._validation import check_path

PRESETS = ("defenses", "defensive-patch", "face-patch")

# ---- defenses ------------------------------------------------------------------------------------
#: the defenses experiment's rows (the old preset's names: "undefended" is the none defense)
DEFENSES = ("undefended", "gt-mask", "jpeg", "median-filter", "lgs", "slgs", "wlgs", "patchcleanser",
            "patchzero-do", "patchzero-two-stage", "sac")
TRAINING_FREE = DEFENSES[:8]
LAMBDAS = (1.5, 1.9, 2.3, 2.7, 3.5)
QUICK = {"n": 16, "steps": 2, "areas": (0.10,), "lambdas": (1.5, 3.5),
         "defenses": ("undefended", "gt-mask", "jpeg", "lgs", "patchcleanser")}
TABLE, SWEEP, PHOTOS = "fashion-mnist", "lambda-sweep", "imagenet"
ARTIFACT_FLAGS = {"pz_do": "patchzero_do", "pz_two_stage": "patchzero_two_stage"}


def check_preset(name: str) -> str:
    """The canonical name of preset ``name`` (``LookupError`` listing the presets otherwise)."""
    if not isinstance(name, str):
        raise TypeError(f"preset: expected a preset name, got {name!r}")
    key = name.lower().replace("_", "-").strip()
    if key not in PRESETS:
        raise LookupError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return key


def _parser(prog: str):
    from ..cli import ArgumentParser, device_arg, seed_arg, threads_arg
    p = ArgumentParser(prog=f"patchbench evaluate --preset {prog}",
                       description=f"Runs the bundled experiment patchbench/experiments/{prog}.toml "
                                   f"(= patchbench run {prog}) with these flags applied; for other "
                                   f"changes copy that file and run patchbench run COPY.toml.")
    p.add_argument("--threads", type=threads_arg, default=2)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--device", type=device_arg, default=None, help="cpu or cuda (default: the file's)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the cells with a cost estimate, compute nothing")
    return p


class DefensesPlan(argparse.Namespace):
    """What the ``defenses`` flags ask for (sizes of the run)."""

    n: int = 1000
    steps: int = 100
    areas: Tuple[float, ...] = (0.05, 0.10)
    defenses: Tuple[str, ...] = DEFENSES
    model: str = "fmnist_cnn_small"
    imagenet: bool = True
    lambdas: Tuple[float, ...] = LAMBDAS
    seed: int = 0


def parse_defenses(argv: List[str]) -> Tuple[DefensesPlan, argparse.Namespace]:
    """The ``defenses`` flags, checked (one-line errors naming the flag)."""
    from ..cli import positive_int_arg
    p = _parser("defenses")
    p.add_argument("--n", type=positive_int_arg, default=None,
                   help="Fashion-MNIST test images (default 1000)")
    p.add_argument("--steps", type=positive_int_arg, default=None, help="attack iterations (default 100)")
    p.add_argument("--areas", default=None, help="comma-separated patch areas (default 0.05,0.1)")
    p.add_argument("--quick", action="store_true", help="tiny smoke-test run (16 images, 2 steps)")
    p.add_argument("--defenses", default=None, help=f"comma-separated subset of {','.join(DEFENSES)}")
    p.add_argument("--model", default="fmnist_cnn_small", help="Fashion-MNIST classifier name")
    p.add_argument("--skip-imagenet", action="store_true", help="no MobileNetV2 / photo part")
    p.add_argument("--patchzero-do", default=None, help="PatchZero DO-trained checkpoint")
    p.add_argument("--patchzero-two-stage", default=None, help="PatchZero two-stage checkpoint")
    a = p.parse_args(argv)
    plan = DefensesPlan(model=a.model, seed=a.seed)
    if a.quick:
        plan = DefensesPlan(n=QUICK["n"], steps=QUICK["steps"], areas=QUICK["areas"],
                            defenses=QUICK["defenses"], model=a.model, imagenet=False,
                            lambdas=QUICK["lambdas"], seed=a.seed)
    if a.n is not None:
        plan.n = a.n
    if a.steps is not None:
        plan.steps = a.steps
    if a.areas:
        try:
            plan.areas = tuple(float(v) for v in a.areas.split(","))
        except ValueError:
            raise ValueError(f"--areas: expected comma-separated fractions in (0, 1), got "
                             f"{a.areas!r}") from None
        if not all(0 < v < 1 for v in plan.areas):
            raise ValueError(f"--areas: expected fractions in (0, 1), got {a.areas!r}")
    if a.defenses:
        chosen = tuple(d.strip() for d in a.defenses.split(",") if d.strip())
        bad = [d for d in chosen if d not in DEFENSES]
        if bad:
            raise LookupError(f"--defenses: unknown {bad}; available: {', '.join(DEFENSES)}")
        plan.defenses = tuple(d for d in DEFENSES if d in chosen or d == "undefended")
    if a.skip_imagenet:
        plan.imagenet = False
    from ..models import get_spec
    try:
        get_spec(a.model)
    except LookupError as e:
        raise LookupError(f"--model: {e}") from None
    for flag, path in (("--patchzero-do", a.patchzero_do), ("--patchzero-two-stage",
                                                             a.patchzero_two_stage)):
        if path is not None:
            check_path(path, flag)
    return plan, a


def defenses_experiment(argv: List[str] = ()):
    """The bundled ``defenses`` experiment with the flags ``argv`` applied; no flags: the file."""
    from . import config as C
    plan, a = parse_defenses(list(argv))
    return _apply_defenses(C.load("defenses"), plan, a)


def _apply_defenses(exp, plan: DefensesPlan, a: argparse.Namespace):
    from .config import ArtifactSpec, Entry
    exp = copy.deepcopy(exp)
    given = {"n": a.n is not None or a.quick, "steps": a.steps is not None or a.quick,
             "areas": bool(a.areas) or a.quick, "defenses": bool(a.defenses) or a.quick}
    cap = min(plan.n, QUICK["n"]) if a.quick else plan.n
    grids = []
    for g in exp.grids:
        if g.name == PHOTOS and not plan.imagenet:
            continue
        if g.name == SWEEP and "lgs" not in plan.defenses:
            continue
        fmnist = g.name in (TABLE, SWEEP)
        if fmnist:
            if a.model != "fmnist_cnn_small":
                opts = {"options": {"channels": 1, "num_classes": 10}} if a.model == "tiny_cnn" else {}
                g.models = [Entry(a.model, opts)]
            if given["n"]:
                g.datasets = [Entry(d.name, {**d.options, "n": plan.n}, d.label) for d in g.datasets]
                for o in g.overrides:
                    if "n" in o["set"]:
                        o["set"]["n"] = min(o["set"]["n"], cap)
        elif given["n"] and plan.n < _pool(g):
            # the old preset cut the photos' benign and DO cells to --n (its adaptive ones kept all)
            g.overrides.append({"where": {"adaptive": False}, "set": {"n": plan.n},
                                "path": f"{g.path}.override[--n]"})
        if given["steps"]:
            g.attacks = [_with(e, steps=plan.steps) for e in g.attacks]
            for o in g.overrides:
                if "steps" in o["set"].get("attack", {}):
                    o["set"]["attack"]["steps"] = min(o["set"]["attack"]["steps"], plan.steps)
        if given["areas"]:
            areas = plan.areas if g.name == TABLE else plan.areas[:1]
            g.threats = [{**g.threats[0], "area": float(v)} for v in areas]
        if given["defenses"] and g.name != SWEEP:
            keep = plan.defenses if fmnist else tuple(d for d in plan.defenses if d in TRAINING_FREE)
            g.defenses = [e for e in g.defenses if _row(e) in keep]
        if g.name == SWEEP and a.quick:
            g.defenses = [e for e in g.defenses if e.options.get("smoothing_factor") in plan.lambdas]
        g.seeds = [plan.seed]
        grids.append(g)
    exp.grids = grids
    exp.threads = a.threads
    for name, attr in ARTIFACT_FLAGS.items():
        path = getattr(a, attr)
        if path is not None:
            exp.artifacts[name] = ArtifactSpec(name, "patchzero", {}, f"file:{path}")
    return exp


def _row(entry) -> str:
    return "undefended" if entry.name == "none" else (entry.label or entry.name)


def _with(entry, **options):
    from .config import Entry
    if entry.name == "none":
        return entry
    return Entry(entry.name, {**entry.options, **options}, entry.label)


def _pool(grid) -> int:
    from .config import dataset_size
    d = grid.datasets[0]
    n = d.options.get("n")
    return int(n) if n is not None else dataset_size(d.name, d.options.get("split", "test"))


# ---- face-patch ----------------------------------------------------------------------------------
def face_experiment(argv: List[str] = ()):
    """The bundled ``face-patch`` experiment with the old preset's flags applied."""
    from ..attacks.face import STRATEGIES
    from ..cli import chance_arg, positive_float_arg, positive_int_arg
    from . import config as C
    p = _parser("face-patch")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated strategies")
    p.add_argument("--n-train", type=positive_int_arg, default=None, help="training composites (32)")
    p.add_argument("--n-test", type=positive_int_arg, default=None, help="held-out composites (32)")
    p.add_argument("--size", type=positive_int_arg, default=None, help="composite side (192)")
    p.add_argument("--epochs", type=positive_int_arg, default=None, help="training epochs (6)")
    p.add_argument("--lr", type=positive_float_arg, default=None, help="Adam step (0.1)")
    p.add_argument("--batch-size", type=positive_int_arg, default=None, help="images per step (8)")
    p.add_argument("--alpha", type=chance_arg, default=None, help="patch scale (0.3)")
    p.add_argument("--patch-size", type=positive_int_arg, default=None, help="patch side (48)")
    p.add_argument("--delta", type=chance_arg, default=None, help="detection threshold (0.99)")
    p.add_argument("--no-cascades", action="store_true", help="skip the Haar / LBP transfer rows")
    p.add_argument("--quick", action="store_true", help="smoke test: 8 train, 4 test, 1 epoch")
    a = p.parse_args(list(argv))
    strategies = [s.strip() for s in a.strategies.split(",") if s.strip()]
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad or not strategies:
        raise LookupError(f"--strategies: unknown {bad or strategies}; expected some of "
                          f"{', '.join(STRATEGIES)}")
    if a.quick:
        a.n_train, a.n_test, a.epochs = 8, 4, 1
    if a.size is not None and a.size < 24:
        raise ValueError(f"--size: composites need at least 24 px (the smallest pasted face), got "
                         f"{a.size}")
    exp = copy.deepcopy(C.load("face-patch"))
    train = {k: v for k, v in (("n_train", a.n_train), ("size", a.size), ("epochs", a.epochs),
                               ("lr", a.lr), ("batch_size", a.batch_size), ("alpha", a.alpha),
                               ("patch_size", a.patch_size), ("delta", a.delta), ("seed", a.seed))
             if v is not None}
    shared = {k: v for k, v in (("alpha", a.alpha), ("patch_size", a.patch_size), ("delta", a.delta))
              if v is not None}
    keep = {s.replace("-", "_") for s in strategies}
    exp.artifacts = {k: type(v)(v.name, v.kind, {**v.config, **train}, v.source)
                     for k, v in exp.artifacts.items() if k in keep}
    size = train.get("size")
    side = size if size is not None else int(exp.grids[0].datasets[0].options.get("size", 192))
    if train.get("patch_size", 48) > side:
        raise ValueError(f"--patch-size: the patch ({train['patch_size']} px) is larger than the "
                         f"composites (--size {side})")
    for g in exp.grids:
        g.attacks = [_with(e, **shared) for e in g.attacks
                     if e.name == "none" or "patch" not in e.options
                     or e.options["patch"][1:] in keep]
        g.datasets = [_with_dataset(d, n=a.n_test, size=size) for d in g.datasets]
        if a.no_cascades:
            g.models = [m for m in g.models if m.name == "mtcnn"]
        g.seeds = [a.seed]
    exp.threads = a.threads
    return exp, a


def _with_dataset(entry, **options):
    from .config import Entry
    return Entry(entry.name, {**entry.options, **{k: v for k, v in options.items() if v is not None}},
                 entry.label)


# ---- defensive-patch -----------------------------------------------------------------------------
DEFAULT_FMNIST_EPOCHS, DEFAULT_TRAIN_LIMIT = 8, 10000
QUICK_CORRUPTIONS = ("gaussian_noise", "defocus_blur", "fog", "contrast")


def defensive_experiment(argv: List[str] = ()):
    """The bundled ``defensive-patch`` experiment with the old preset's flags applied."""
    from ..cli import positive_int_arg
    from . import config as C
    p = _parser("defensive-patch")
    p.add_argument("--n-test", type=positive_int_arg, default=None,
                   help="Fashion-MNIST test images (default 1000)")
    p.add_argument("--n-adv", type=positive_int_arg, default=None,
                   help="test images attacked with FGSM/PGD (300)")
    p.add_argument("--epochs", type=positive_int_arg, default=None,
                   help="outer epochs of the Fashion-MNIST patch (8: the shipped patch)")
    p.add_argument("--train-limit", type=positive_int_arg, default=None,
                   help="Fashion-MNIST training images (10000: the shipped patch)")
    p.add_argument("--imagenet-epochs", type=positive_int_arg, default=None)
    p.add_argument("--skip-imagenet", action="store_true", help="only the Fashion-MNIST part")
    p.add_argument("--quick", action="store_true",
                   help="48 test images, 20 attacked, 4 corruptions, no photos")
    a = p.parse_args(list(argv))
    if a.n_test is not None and a.n_test > 10000:
        p.error(f"argument --n-test: the Fashion-MNIST test split has 10000 images, got {a.n_test}")
    if a.train_limit is not None and a.train_limit > 60000:
        p.error(f"argument --train-limit: the Fashion-MNIST train split has 60000 images, got "
                f"{a.train_limit}")
    if a.quick:
        a.n_test, a.n_adv, a.skip_imagenet = a.n_test or 48, a.n_adv or 20, True
    exp = copy.deepcopy(C.load("defensive-patch"))
    if a.epochs is not None or a.train_limit is not None:
        exp.artifacts["dp_fmnist"] = _retrained(exp.artifacts["dp_fmnist"], epochs=a.epochs,
                                                train_limit=a.train_limit)
    if a.imagenet_epochs is not None:
        spec = exp.artifacts["dp_imagenet"]
        exp.artifacts["dp_imagenet"] = type(spec)(spec.name, spec.kind,
                                                  {**spec.config, "epochs": a.imagenet_epochs}, None)
    grids = []
    for g in exp.grids:
        photos = g.name.startswith("photos")
        if photos and a.skip_imagenet:
            continue
        if not photos:
            n = a.n_adv if g.name.endswith("adversarial") else a.n_test
            g.datasets = [_with_dataset(d, n=n) for d in g.datasets]
            if a.quick:
                g.corruptions = [c for c in g.corruptions
                                 if c["name"] == "none" or c["name"] in QUICK_CORRUPTIONS]
        g.seeds = [a.seed]
        grids.append(g)
    exp.grids = grids
    exp.threads = a.threads
    return exp, a


def _retrained(spec, **changes):
    """The shipped patch's artifact as one trained from its own recorded config with ``changes``."""
    from ..defensive.apply import DefensivePatch
    from .artifacts import artifact_path
    recorded = dict(DefensivePatch.load(artifact_path(spec)).meta["config"])
    recorded.update({k: v for k, v in changes.items() if v is not None})
    return type(spec)(spec.name, spec.kind, recorded, None)


# ---- running -------------------------------------------------------------------------------------
def experiment_for(name: str, argv: List[str] = ()):
    """``(experiment, dry_run)``: the bundled file of preset ``name`` with the flags ``argv``."""
    key = check_preset(name)
    if key == "defenses":
        plan, a = parse_defenses(list(argv))
        from . import config as C
        exp = _apply_defenses(C.load("defenses"), plan, a)
    else:
        builder: Callable = face_experiment if key == "face-patch" else defensive_experiment
        exp, a = builder(list(argv))
    if a.device is not None:
        exp.device = str(a.device)
    return exp, a.dry_run


def run_preset(name: str, out_dir: Optional[str] = None, argv: Optional[List[str]] = None) -> Path:
    """Run (or resume) preset ``name``'s experiment with the flags ``argv`` into ``out_dir``
    (default ``reports/<name>``), then write the report; returns ``index.html`` (``--dry-run``:
    lists the cells and returns the folder). The last line printed is the harness's ``cells
    total=T done=D failed=F ran=R``."""
    from .pages import build_report
    from .runner import run_experiment
    key = check_preset(name)
    if argv is not None and (isinstance(argv, str) or not all(isinstance(a, str) for a in argv)):
        raise TypeError(f"argv: expected a list of strings, got {argv!r}")
    out = Path(out_dir or f"reports/{key}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {str(out)!r} is an existing file, expected a folder")
    exp, dry = experiment_for(key, list(argv or []))
    summary = run_experiment(exp, out, dry_run=dry)
    result = out
    if not dry:
        result = build_report([summary.out_dir])
        print(f"results: {summary.out_dir / 'results.db'} (results.json, results.csv); report "
              f"{result}")
    print(summary.line(), flush=True)
    return result


__all__ = ["PRESETS", "DEFENSES", "check_preset", "run_preset", "experiment_for",
           "parse_defenses", "defenses_experiment", "face_experiment", "defensive_experiment"]
