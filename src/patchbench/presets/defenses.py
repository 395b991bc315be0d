"""Preset ``defenses``: an alias that runs the bundled experiment file
``patchbench/experiments/defenses.toml`` through the harness (``patchbench run defenses``), with the
preset's old flags applied to it in memory.

The experiment: PatchZero's Table 1 (Xu et al., WACV 2023) for every patchbench defense, with
non-adaptive (downstream-only, DO) and adaptive attackers, and ELGS's λ sweep (ICAART 2022, Tables 1–2,
Fig. 5), on Fashion-MNIST with ``fmnist_cnn_small`` and, for the training-free defenses, MobileNetV2 on
the offline ImageNet photos. The file says which cells, with which options and sample counts, and why.

The flags keep their old meaning (the same cells as the old preset's for the same flags):

* ``--n N``: Fashion-MNIST pool (default 1000); every smaller per-row count stays, capped at N (the
  photos' DO cells take at most N of them);
* ``--steps S``: attack iterations (default 100; rows with fewer keep them, capped at S);
* ``--areas A,B``: Fashion-MNIST patch areas (the λ sweep and the photos take the first);
* ``--defenses D,...``: a subset of the rows (the undefended row always; the λ sweep with ``lgs``);
* ``--quick``: 16 images, 2 steps, area 0.1, 5 rows, λ ∈ {1.5, 3.5}, no photos;
* ``--model``, ``--skip-imagenet``, ``--patchzero-do PATH``, ``--patchzero-two-stage PATH``,
  ``--threads``, ``--seed``; ``--dry-run`` lists the cells with a cost estimate.

Anything else: copy the file, edit it and ``patchbench run COPY.toml``. A killed run resumes (the
results store is ``out_dir/results.db``); writes ``out_dir/index.html``, ``results.json`` and
``results.csv``.

Example::

    patchbench evaluate --preset defenses --out reports/defenses            # the full table
    patchbench evaluate --preset defenses --quick --out /tmp/defenses        # smoke test
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import List, Tuple

from .._validation import check_path
# the old preset's plan, re-exported: tests and the parity check build its cells from it
from ._defenses_cells import (ADAPTIVE_N, ADAPTIVE_STEPS, ATTACKS, DEFENSES, LAMBDAS, LGS_28,
                              SLGS_28, TRAINING_FREE, Plan, defense_factory, defense_options,
                              sweep_cells, table_cells)

__all__ = ["run", "experiment", "apply_plan", "parse_plan", "Plan", "DEFENSES", "TRAINING_FREE",
           "ATTACKS", "LAMBDAS", "LGS_28", "SLGS_28", "ADAPTIVE_N", "ADAPTIVE_STEPS",
           "defense_factory", "defense_options", "table_cells", "sweep_cells"]

#: the old ``--quick`` plan
QUICK = {"n": 16, "steps": 2, "areas": (0.10,), "lambdas": (1.5, 3.5),
         "defenses": ("undefended", "gt-mask", "jpeg", "lgs", "patchcleanser")}
#: the bundled file's grids (by name) and artifacts the flags change
TABLE, SWEEP, PHOTOS = "fashion-mnist", "lambda-sweep", "imagenet"
ARTIFACT_FLAGS = {"pz_do": "patchzero_do", "pz_two_stage": "patchzero_two_stage"}


def parse_plan(argv: List[str]) -> Tuple[Plan, argparse.Namespace]:
    """The old preset's flags, checked (one-line errors naming the flag), as its :class:`Plan` and
    the parsed namespace."""
    from ..cli import ArgumentParser, positive_int_arg, seed_arg, threads_arg
    p = ArgumentParser(prog="patchbench evaluate --preset defenses",
                       description="Runs the bundled experiment patchbench/experiments/defenses.toml "
                                   "(= patchbench run defenses) with these flags applied; for "
                                   "other changes copy that file and run patchbench run COPY.toml.")
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
    p.add_argument("--threads", type=threads_arg, default=2)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--dry-run", action="store_true",
                   help="list the cells with a cost estimate, compute nothing")
    a = p.parse_args(argv)
    plan = Plan(model=a.model, seed=a.seed)
    if a.quick:
        plan = Plan(n=QUICK["n"], steps=QUICK["steps"], areas=QUICK["areas"],
                    defenses=QUICK["defenses"], model=a.model, imagenet=False,
                    lambdas=QUICK["lambdas"], seed=a.seed,
                    adaptive_n={d: QUICK["n"] for d in DEFENSES}, pc_n=QUICK["n"])
    if a.n is not None:
        plan.n = a.n
    if a.steps is not None:
        plan.steps = a.steps
        plan.imagenet_adaptive_steps = min(plan.imagenet_adaptive_steps, plan.steps)
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


# ------------------------------------------------------------------------------------ flags → file
def experiment(argv: List[str] = ()):
    """The bundled ``defenses`` experiment with the flags ``argv`` applied (see the module
    docstring); no flags: the file as it is."""
    from ..bench import config as C
    plan, a = parse_plan(list(argv))
    return apply_plan(C.load("defenses"), plan, a)


def apply_plan(exp, plan: Plan, a: argparse.Namespace):
    """A copy of ``exp`` (the bundled file) changed as the flags in ``a`` say; ``plan`` is what
    :func:`parse_plan` made of them."""
    from ..bench.config import ArtifactSpec, Entry
    exp = copy.deepcopy(exp)
    given = {"n": a.n is not None or a.quick, "steps": a.steps is not None or a.quick,
             "areas": bool(a.areas) or a.quick, "defenses": bool(a.defenses) or a.quick}
    # per-row counts: --n caps them; --quick makes them 16 (the old quick plan's adaptive_n, pc_n)
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
            g.attacks = [_with_steps(e, plan.steps) for e in g.attacks]
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
    """The old preset's row name of a defense entry."""
    return "undefended" if entry.name == "none" else (entry.label or entry.name)


def _with_steps(entry, steps: int):
    from ..bench.config import Entry
    if entry.name == "none":
        return entry
    return Entry(entry.name, {**entry.options, "steps": steps}, entry.label)


def _pool(grid) -> int:
    from ..bench.config import dataset_size
    d = grid.datasets[0]
    n = d.options.get("n")
    return int(n) if n is not None else dataset_size(d.name, d.options.get("split", "test"))


def run(out_dir: Path, argv: list) -> Path:
    """Run (or resume) the bundled ``defenses`` experiment with the flags ``argv`` into ``out_dir``,
    then write the report; returns the path of ``index.html`` (``--dry-run``: lists the cells and
    returns ``out_dir``). The last line printed is the harness's ``cells total=T done=D failed=F
    ran=R``."""
    from ..bench import config as C
    from ..bench.pages import build_report
    from ..bench.runner import run_experiment

    plan, a = parse_plan(list(argv))
    exp = apply_plan(C.load("defenses"), plan, a)
    summary = run_experiment(exp, out_dir, dry_run=a.dry_run)
    result = Path(out_dir)
    if not a.dry_run:
        result = build_report([summary.out_dir])
        print(f"results: {summary.out_dir / 'results.db'} (results.json, results.csv); report "
              f"{result}")
    print(summary.line(), flush=True)
    return result
