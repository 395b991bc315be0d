"""Preset ``defenses``: PatchZero's Table 1 (Xu et al., WACV 2023) for every patchbench defense, with
non-adaptive (downstream-only, DO) and adaptive attackers, and ELGS's λ sweep (ICAART 2022, Tables 1–2,
Fig. 5).

Rows: Undefended, GT mask (oracle), JPEG, median filter, LGS, SLGS, WLGS, PatchCleanser, PatchZero
(DO-trained detector) and PatchZero (two-stage DO → BPDA detector). Columns: benign accuracy, then
MPGD / MAPGD / MCW robust accuracy as "DO / adaptive" (PatchZero §4.1 attack settings: MPGD ε = 1, step
0.01; MAPGD ε = 0.3, step 0.1; MCW confidence 0.5, lr 0.1; 100 iterations; square patches at random
locations, 5% and 10% of the image). The adaptive attacker runs the same attack on
``Defended(model, defense)`` with the gradient rule the defense declares (BPDA where it is not
differentiable); for PatchCleanser that is BPDA with the identity (its masking and voting are treated
as absent in the backward pass), and its certified accuracy (Algorithm 2) is reported too.

Parts: Fashion-MNIST with ``fmnist_cnn_small`` (1000 test images by default; fewer for the expensive
adaptive rows, the table says n per row) and, for the training-free defenses, MobileNetV2 on the 7
offline ImageNet photos (a demonstration: the intervals in results.json are wide).

Every finished cell is appended to ``out_dir/cells.jsonl`` keyed by a hash of its config and DO attack
results are cached in ``out_dir/cache/``, so a killed run resumes where it stopped. Writes
``out_dir/index.html``, ``results.json`` and ``results.csv``.

Example::

    patchbench evaluate --preset defenses --out reports/defenses            # the full table
    patchbench evaluate --preset defenses --quick --out /tmp/defenses        # smoke test
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from .._io import cache_root, file_fingerprint, weights_fingerprint
from .._validation import check_path
from ..bench.report import Report, write_csv, write_json
from ._defenses_cells import Cell, CellRunner, CellStore, run_cells
from ._defenses_report import (LABELS, add_gallery, gallery_items, sweep_figure, sweep_rows,
                               table_html)

DEFENSES = ("undefended", "gt-mask", "jpeg", "median-filter", "lgs", "slgs", "wlgs", "patchcleanser",
            "patchzero-do", "patchzero-two-stage")
TRAINING_FREE = DEFENSES[:8]
ATTACKS = ("masked-pgd", "masked-apgd", "masked-cw")
LAMBDAS = (1.5, 1.9, 2.3, 2.7, 3.5)       # ELGS Tables 1–2 sweep both {1.5, 1.9, 2.3} and {2.3, 2.7, 3.5}
# LGS windows: Naseer et al.'s 15/5 px at 224²; at 28² a 5% patch is 6–7 px, so 5/2 px blocks.
LGS_28 = {"window": 5, "overlap": 2}
# SLGS's 2 erosions + 3 dilations with a 3×3 kernel (ELGS eqs. 8–9) are set for 224² images; at 28²
# they erase the whole saliency mask (0.2 % of pixels left, measured on 300 attacked test images, so
# SLGS would equal no defense). Scaled by 28/224 they round to none: the mask is the saliency binarised
# at its mean (eq. 7) alone.
SLGS_28 = {"erosions": 0, "dilations": 0}
# Adaptive rows cost more than DO rows (SLGS/WLGS: an extra saliency backward per step; PatchZero: the
# U-Net's forward + backward per step; PatchCleanser: ≥ 36 masked forwards per step); their sample
# counts (full run) keep the preset under 45 min on 2 cores (measured 2026-11-21: with 400 PatchZero
# adaptive and 500 PatchCleanser images the Fashion-MNIST part alone took 36 min).
# The GT-mask oracle repaints exactly the attacked pixels, so its adaptive row is a check (it must
# equal its DO row), not a measurement: 100 images.
ADAPTIVE_N = {"slgs": 200, "wlgs": 200, "patchcleanser": 16, "patchzero-do": 200,
              "patchzero-two-stage": 200, "gt-mask": 100}
ADAPTIVE_N_DEFAULT, PC_N = 300, 300
# PatchCleanser's adaptive attacker classifies every iterate by double masking (36 + 36 per disagreeing
# mask forwards per image and step): fewer iterations on that row, stated in the table.
ADAPTIVE_STEPS = {"patchcleanser": 25}


@dataclass
class Plan:
    """Sizes of one run (see :func:`parse_plan`)."""

    n: int = 1000
    steps: int = 100
    areas: Tuple[float, ...] = (0.05, 0.10)
    defenses: Tuple[str, ...] = DEFENSES
    adaptive_n: Dict[str, int] = field(default_factory=dict)
    pc_n: int = PC_N
    model: str = "fmnist_cnn_small"
    imagenet: bool = True
    imagenet_adaptive_attacks: Tuple[str, ...] = ("masked-pgd",)
    imagenet_adaptive_steps: int = 50
    lambdas: Tuple[float, ...] = LAMBDAS
    seed: int = 0

    def n_adaptive(self, defense: str) -> int:
        return min(self.n, self.adaptive_n.get(defense, ADAPTIVE_N.get(defense, ADAPTIVE_N_DEFAULT)))

    def n_for(self, defense: str) -> int:
        return min(self.n, self.pc_n) if defense == "patchcleanser" else self.n


def parse_plan(argv: List[str]) -> Tuple[Plan, argparse.Namespace]:
    from ..cli import ArgumentParser, positive_int_arg, seed_arg, threads_arg
    p = ArgumentParser(prog="patchbench evaluate --preset defenses")
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
    a = p.parse_args(argv)
    plan = Plan(model=a.model, seed=a.seed)
    if a.quick:
        plan = Plan(n=16, steps=2, areas=(0.10,), defenses=("undefended", "gt-mask", "jpeg", "lgs",
                    "patchcleanser"), model=a.model, imagenet=False, lambdas=(1.5, 3.5), seed=a.seed,
                    adaptive_n={d: 16 for d in DEFENSES}, pc_n=16)
    if a.n is not None:
        plan.n = _positive(a.n, "--n")
    if a.steps is not None:
        plan.steps = _positive(a.steps, "--steps")
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


def _positive(v: int, name: str) -> int:
    if v < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {v}")
    return v


# ------------------------------------------------------------------------------------ defenses
def _file_hash(path) -> str:
    return file_fingerprint(path)


def patchzero_checkpoints(a: argparse.Namespace, wanted) -> Dict[str, str]:
    """Paths of the two PatchZero detectors: the flags, else the shipped assets
    (``assets/patchzero_fmnist_{do,two_stage}.pt``), else trained here with
    :func:`patchbench.training.patchzero.train_patchzero` into ``~/.cache/patchbench/patchzero_fmnist``
    (stage-1 checkpoint = DO-trained, final = two-stage)."""
    if not any(d.startswith("patchzero") for d in wanted):
        return {}
    assets = Path(__file__).resolve().parent.parent / "assets"
    paths = {"patchzero-do": a.patchzero_do or assets / "patchzero_fmnist_do.pt",
             "patchzero-two-stage": a.patchzero_two_stage or assets / "patchzero_fmnist_two_stage.pt"}
    if all(Path(p).is_file() for p in paths.values()):
        return {k: str(v) for k, v in paths.items()}
    from ..training.patchzero import PatchZeroTrainConfig, train_patchzero
    cache = cache_root("patchzero_fmnist")
    print(f"PatchZero checkpoints not found ({', '.join(str(p) for p in paths.values())}); training "
          f"them into {cache} (resumable)")
    cfg = PatchZeroTrainConfig(classifier=a.model, n_train=2000, epochs_stage1=4, epochs_stage2=1,
                               num_threads=a.threads)
    final = train_patchzero(cfg, cache, resume=True)
    return {"patchzero-do": str(cache / "patchzero_stage1.pt"), "patchzero-two-stage": final}


def defense_options(defense: str, area: float, hw: Tuple[int, int], fill, pz: Dict[str, str],
                    lam: float = 2.3) -> dict:
    """The settings of ``defense`` that change its numbers (part of every cell's key)."""
    small = max(hw) <= 64                      # Fashion-MNIST-sized images
    if defense in ("lgs", "slgs", "wlgs"):
        base = LGS_28 if small else {"window": 15, "overlap": 5}
        if defense == "slgs" and small:
            base = {**base, **SLGS_28}
        return {**base, "smoothing_factor": lam}
    if defense == "patchcleanser":
        o = {"patch_size": area, "k": 6, "fill": list(fill)}
        # Certification (Algorithm 2) checks all 666 one- and two-mask images per image: 8 photos
        # at 224² cost ~5 min of MobileNetV2 forwards here, so it runs on the small images only.
        return o if small else {**o, "certify": False}
    if defense == "gt-mask":
        return {"fill": list(fill)}
    if defense in pz:
        return {"checkpoint": _file_hash(pz[defense])}
    if defense == "jpeg":
        return {"quality": 75}
    if defense == "median-filter":
        return {"k": 3}
    return {}


#: table rows → registered defenses (the PatchZero rows are two checkpoints of one defense)
REGISTRY_NAMES = {"undefended": "none", "patchzero-do": "patchzero", "patchzero-two-stage": "patchzero"}
#: cell options that key a cell but are not constructor options
_NOT_OPTIONS = ("model_weights", "certify")


def defense_factory(model, hw: Tuple[int, int], fill, pz: Dict[str, str]):
    """``(defense_id, cell) -> Defense or None``: :func:`patchbench.defenses.build` from a context
    (the model, image size, fill, device and the PatchZero checkpoints as artifacts) and the
    cell's options."""
    from .. import defenses as D

    ctx = D.BuildContext(model=model, image_size=hw, fill=fill or None,
                         device=str(cell_device(model)), artifacts=dict(pz))

    def make(did: str, cell: Cell):
        o = {k: v for k, v in cell.options.items() if k not in _NOT_OPTIONS}
        if did in pz:   # the option is the checkpoint's hash (a cell key); the path is the artifact
            o["checkpoint"] = f"@{did}"
        elif did.startswith("patchzero"):
            raise LookupError(f"defense {did!r}: no PatchZero checkpoint given for it")
        return D.build(REGISTRY_NAMES.get(did, did), ctx, **o)

    return make




def cell_device(model) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# ------------------------------------------------------------------------------------ plan → cells
def table_cells(plan: Plan, model_name: str, dataset: str, areas, defenses, hw, fill, pz, n_all: int,
                adaptive_attacks=ATTACKS, adaptive_steps=None, adaptive_n=None) -> Tuple[list, list]:
    """(benign + DO cells, adaptive cells) of one model's tables."""
    cheap, adaptive = [], []
    for area in areas:
        for d in defenses:
            o = defense_options(d, area, hw, fill, pz)
            n = min(n_all, plan.n_for(d))
            cheap.append(Cell(model_name, dataset, d, "none", False, area, n, 0, plan.seed, o))
            for atk in ATTACKS:
                cheap.append(Cell(model_name, dataset, d, atk, False, area, n, plan.steps, plan.seed, o))
            if d == "undefended":
                continue
            na = min(n_all, adaptive_n(d) if adaptive_n else plan.n_adaptive(d))
            steps = min(adaptive_steps or plan.steps, ADAPTIVE_STEPS.get(d, plan.steps))
            for atk in adaptive_attacks:
                adaptive.append(Cell(model_name, dataset, d, atk, True, area, na, steps, plan.seed, o))
    order = {d: i for i, d in enumerate(("gt-mask", "jpeg", "median-filter", "lgs", "patchzero-do",
                                         "patchzero-two-stage", "slgs", "wlgs", "patchcleanser"))}
    adaptive.sort(key=lambda c: (order.get(c.defense, 99), c.patch_area))
    return cheap, adaptive


def sweep_cells(plan: Plan, model_name: str, dataset: str, hw, n: int) -> list:
    """ELGS λ sweep: benign and DO-MPGD accuracy of LGS / SLGS / WLGS for each λ (first area)."""
    cells = []
    for d in ("lgs", "slgs", "wlgs"):
        for lam in plan.lambdas:
            o = defense_options(d, plan.areas[0], hw, (), {}, lam)
            for atk in ("none", "masked-pgd"):
                cells.append(Cell(model_name, dataset, d, atk, False, plan.areas[0], n,
                                  plan.steps if atk != "none" else 0, plan.seed, o))
    return cells


# ------------------------------------------------------------------------------------ the run
def _part(name: str, plan: Plan, a, out: Path, store: CellStore, stats: dict) -> dict:
    """Build one part's runner and cells, compute the cells, return what the report needs."""
    from ..models import load
    from ..patches import Threat
    if name == "fashion-mnist":
        from ..data.fashion_mnist import FASHION_MNIST_MEAN, load_fashion_mnist
        kw = {"channels": 1, "num_classes": 10} if plan.model == "tiny_cnn" else {}
        model = load(plan.model, **kw)
        x, y = load_fashion_mnist("test", limit=plan.n)
        fill, defenses, model_name = tuple(FASHION_MNIST_MEAN), plan.defenses, plan.model
        pz = patchzero_checkpoints(a, defenses)
    else:
        from ..data import samples
        from ..models.base import IMAGENET_MEAN
        model, model_name = load("mobilenet_v2"), "mobilenet_v2"
        x, y = samples("imagenet")
        fill, pz = tuple(IMAGENET_MEAN), {}
        defenses = tuple(d for d in plan.defenses if d in TRAINING_FREE)
    model.requires_grad_(False)
    hw = tuple(x.shape[-2:])
    areas = plan.areas if name == "fashion-mnist" else plan.areas[:1]
    fp = weights_fingerprint(model)   # new weights → new keys → recomputed cells and attacks
    runner = CellRunner(model, x, y, model_name, name, defense_factory(model, hw, fill, pz),
                        out / "cache", lambda area: Threat(area=area, shape="square", placement="random"),
                        fingerprint=fp)
    if name == "fashion-mnist":
        cheap, adaptive = table_cells(plan, model_name, name, areas, defenses, hw, fill, pz, len(x))
        sweep = sweep_cells(plan, model_name, name, hw, len(x)) if "lgs" in defenses else []
    else:   # MobileNetV2: no PatchCleanser adaptive row (≥ 36 MobileNetV2 forwards per attack step)
        cheap, adaptive = table_cells(plan, model_name, name, areas, defenses, hw, fill, pz, len(x),
                                      adaptive_attacks=plan.imagenet_adaptive_attacks,
                                      adaptive_steps=plan.imagenet_adaptive_steps,
                                      adaptive_n=lambda d: len(x))
        adaptive = [c for c in adaptive if c.defense != "patchcleanser"]
        sweep = []
    cheap, sweep, adaptive = ([replace(c, options={**c.options, "model_weights": fp}) for c in cs]
                              for cs in (cheap, sweep, adaptive))
    print(f"{name}: {len(cheap) + len(sweep)} benign/DO cells, {len(adaptive)} adaptive cells "
          f"({model_name}, {len(x)} images)", flush=True)
    res = run_cells(runner, cheap + sweep + adaptive, store)
    stats["computed"] += res["computed"]
    stats["reused"] += res["reused"]
    k = len(cheap)
    return dict(name=name, model=model, model_name=model_name, x=x, y=y, runner=runner, areas=areas,
                defenses=defenses, table=res["rows"][:k] + res["rows"][k + len(sweep):],
                sweep=res["rows"][k:k + len(sweep)], hw=hw, fill=fill, pz=pz)


def _gallery(report: Report, part: dict, plan: Plan) -> None:
    show = [d for d in ("gt-mask", "lgs", "jpeg", "patchzero-do", "patchzero-two-stage")
            if d in part["defenses"]]
    if not show:
        return
    area = part["areas"][0]
    attack = part["runner"].do_attack("masked-pgd", area, plan.steps, plan.seed)
    make = part["runner"].make_defense
    ds = {d: make(d, Cell(part["model_name"], part["name"], d, "none", False, area, 1, 0, plan.seed,
                          defense_options(d, area, part["hw"], part["fill"], part["pz"])))
          for d in show}
    names = list(getattr(part["model"], "class_names", range(10)))
    add_gallery(report, f"Gallery — {part['model_name']}, area {area:g}",
                gallery_items(part["model"], part["x"], part["y"], attack, ds, names, count=3))


def _report(parts: List[dict], plan: Plan, elapsed: float, stats: dict) -> Report:
    r = Report("Patch defenses: benign and robust accuracy, DO and adaptive attackers")
    r.paragraph(f"PatchZero (Xu et al., WACV 2023) Table 1 layout. Attacks per §4.1: MPGD (ε = 1, step "
                f"0.01), MAPGD (ε = 0.3, step 0.1), MCW (confidence 0.5, lr 0.1), {plan.steps} iterations, "
                f"square patches at random locations (seed {plan.seed}). Each robust cell is 'DO / "
                f"adaptive': DO = the attack on the bare classifier (the defense is unknown to it); "
                f"adaptive = the same attack on model∘defense, with BPDA where the defense is not "
                f"differentiable (the gradient rule is in the last column). PatchCleanser's adaptive "
                f"attacker is BPDA with the identity (its masking and voting are invisible to the "
                f"gradient); 'Certified' is its certified accuracy (Algorithm 2) on the benign images "
                f"(28² images only: on 224² photos it costs 666 forwards per image). "
                f"The GT-mask oracle repaints the true patch pixels with the dataset mean (an upper "
                f"bound of any removal defense). Smaller n on expensive adaptive rows keeps the run "
                f"short; 95% Wilson intervals are in results.json. On 28² images LGS/SLGS/WLGS use "
                f"5-px blocks with 2-px overlap (Naseer et al.'s 15/5 px are for 224²) and SLGS skips "
                f"its erosions/dilations (at 28² they erase the whole saliency mask).")
    for part in parts:
        rows = part["table"]
        for area in part["areas"]:
            sub = [x for x in rows if x["patch_area"] == area]
            r.raw_html(table_html(sub, part["defenses"], ATTACKS,
                                  f"{part['model_name']} on {part['name']} — patch area {area:.0%}"))
        if part["name"] != "fashion-mnist":
            r.paragraph(f"MobileNetV2 on the {len(part['x'])} offline photos: a demonstration, not a "
                        f"benchmark; adaptive attacks: "
                        f"{', '.join(plan.imagenet_adaptive_attacks)} with "
                        f"{plan.imagenet_adaptive_steps} iterations; no adaptive PatchCleanser row (each "
                        f"attack step would cost ≥ 36 MobileNetV2 forwards).", "note")
        if part["sweep"]:
            summary = sweep_rows(part["sweep"])
            r.heading(f"ELGS λ sweep — {part['model_name']}, area {part['areas'][0]:.0%}, DO MPGD")
            r.table(summary, ["method", "lambda", "no attack", "with attack", "average"],
                    caption="Top-1 accuracy without and with attack vs the smoothing factor λ "
                            "(ELGS Tables 1–2, Fig. 5)", text_columns=("method",))
            r.figure(sweep_figure(summary, f"{part['model_name']}: LGS family vs λ"),
                     caption="Accuracy with / without attack and their average vs λ")
        _gallery(r, part, plan)
    r.paragraph(f"Wall time {elapsed / 60:.1f} min; cells computed this run: {stats['computed']}, "
                f"reused from cells.jsonl: {stats['reused']}.", "note")
    return r


def run(out_dir: Path, argv: list) -> Path:
    """Compute (or resume) every cell, then write ``index.html``, ``results.json``, ``results.csv``.

    Args:
        out_dir: output folder (``cells.jsonl`` and ``cache/`` inside it make the run resumable).
        argv: ``[--n N] [--steps S] [--areas A,B] [--quick] [--defenses D,...] [--skip-imagenet]
            [--model NAME] [--patchzero-do PATH] [--patchzero-two-stage PATH] [--threads T]``.

    Returns: the path of ``index.html``.
    """
    plan, a = parse_plan(list(argv))
    torch.set_num_threads(a.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = CellStore(out / "cells.jsonl")
    stats = {"computed": 0, "reused": 0}
    t0 = time.time()
    parts = [_part("fashion-mnist", plan, a, out, store, stats)]
    if plan.imagenet:
        parts.append(_part("imagenet-samples", plan, a, out, store, stats))
    elapsed = time.time() - t0
    rows = []
    for p in parts:
        rows += [{**x, "section": "table", "label": LABELS.get(x["defense"], x["defense"])}
                 for x in p["table"]]
        rows += [{**x, "section": "lambda-sweep", "label": LABELS[x["defense"]]} for x in p["sweep"]]
    write_json(rows, out / "results.json")
    write_csv(rows, out / "results.csv")
    path = _report(parts, plan, elapsed, stats).save(out)
    print(f"cells: {stats['computed']} computed, {stats['reused']} reused; wall {elapsed:.0f} s; "
          f"report: {path}", flush=True)
    return path
