"""The old ``defenses`` preset's cells — its plan (which cells, with which options) and its cell code —
kept as the reference that ``tests/test_defenses_experiment.py`` checks the bundled experiment file
``patchbench/experiments/defenses.toml`` against, cell for cell. No command runs it any more:
``patchbench evaluate --preset defenses`` runs that file through the harness.

A *cell* is one (model, dataset, patch area, defense, attack, attacker) combination with its sample
count and attack iterations. It is keyed by a hash of that config; finished cells are appended to a
JSON-lines file (``cells.jsonl``), so a killed run resumes without redoing any of them.

Attackers (PatchZero, Xu et al. WACV 2023, §3.3 and Table 1):

* ``attack = "none"``: benign accuracy of the defended model.
* downstream-only (DO, ``adaptive = False``): the attack runs on the bare classifier and the defense
  sees the result. Every DO cell of one (attack, area) shares the *same* attacked images — the attack
  only depends on the classifier and the seed — so it is run once on all images, cached in ``cache/``
  and handed, cut to the cell's ``n``, to :func:`patchbench.evaluation.evaluate` as its
  ``attack_result``.
* adaptive (``adaptive = True``): :func:`patchbench.evaluation.evaluate` attacks
  ``Defended(model, defense)``, passing gradients as the defense declares (exact, BPDA, EOT).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from torch import Tensor

import torch

from .._io import atomic_save, file_fingerprint, predict_batched
from ..attacks.base import AttackResult
from ..evaluation import evaluate
from ..models.weights import load_cache

ATTACK_LABELS = {"masked-pgd": "MPGD", "masked-apgd": "MAPGD", "masked-cw": "MCW"}


@dataclass(frozen=True)
class Cell:
    """One table cell's full config; ``key`` hashes all of it."""

    model: str
    dataset: str
    defense: str
    attack: str            # "none" or an attack name
    adaptive: bool
    patch_area: float
    n: int
    steps: int = 0
    seed: int = 0
    options: dict = field(default_factory=dict)   # defense settings that change its numbers

    @property
    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def describe(self) -> str:
        who = "benign" if self.attack == "none" else (
            f"{ATTACK_LABELS.get(self.attack, self.attack)} {'adaptive' if self.adaptive else 'DO'}")
        return (f"{self.model} area={self.patch_area:g} {self.defense:<20s} {who:<15s} n={self.n}"
                + (f" steps={self.steps}" if self.steps else ""))


class CellStore:
    """Finished cells, one JSON object per line ``{"key": ..., "row": {...}}``; appends are flushed
    and fsynced, and a torn last line (a kill mid-write) is ignored on reading."""

    def __init__(self, path):
        self.path = Path(path)
        self.rows: Dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.rows[rec["key"]] = rec["row"]

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def put(self, key: str, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "row": row}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows[key] = row


def build_attack(name: str, steps: int):
    """PatchZero §4.1 settings (the attacks' defaults): MPGD ε = 1, step 0.01; MAPGD ε = 0.3,
    step 0.1; MCW confidence 0.5, lr 0.1 — with ``steps`` iterations."""
    from .. import attacks
    return attacks.get(name, steps=steps)


def predict(model, x: Tensor, batch_size: int = 256) -> Tensor:
    """Labels of ``model`` (a classifier or ``Defended``) on ``x``, in eval mode, batched."""
    return predict_batched(model, x, batch_size, reduce=lambda z: z.argmax(-1))


class CellRunner:
    """Computes cells of one (model, dataset): holds the data, builds defenses, caches DO attacks.

    Args:
        model: the classifier. x, y: all evaluation images/labels (cells use the first ``n``).
        model_name, dataset: names written into every row.
        make_defense: ``(defense_id, cell) -> Defense or None``.
        cache_dir: where DO attack results are kept (``attack_<key>.pt``).
        threat_for: ``area -> Threat``.
        fingerprint: the model weights' hash (part of the DO attack cache key).
    """

    def __init__(self, model, x: Tensor, y: Tensor, model_name: str, dataset: str,
                 make_defense: Callable, cache_dir, threat_for: Callable, fingerprint: str = ""):
        self.model, self.x, self.y = model, x, y
        self.model_name, self.dataset = model_name, dataset
        self.make_defense, self.threat_for = make_defense, threat_for
        self.cache_dir = Path(cache_dir)
        self.fingerprint = fingerprint
        self._attacks: Dict[str, dict] = {}

    def do_attack(self, attack: str, area: float, steps: int, seed: int) -> dict:
        """The DO attack on all ``len(x)`` images (run once, then read from memory/disk):
        ``{"x_adv", "mask", "success", "eligible"}`` (a cache written before ``success`` was kept
        gets it from the bare model's predictions)."""
        spec = dict(model=self.model_name, dataset=self.dataset, attack=attack, area=area,
                    steps=steps, seed=seed, n=int(self.x.shape[0]), weights=self.fingerprint)
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]
        if key in self._attacks:
            return self._attacks[key]
        path = self.cache_dir / f"attack_{key}.pt"
        res = load_cache(path, "DO attack cache", map_location=self.x.device)
        if not isinstance(res, dict) or not {"x_adv", "mask"} <= set(res):
            r = build_attack(attack, steps).run(self.model, self.x, self.y, self.threat_for(area),
                                                generator=seed)
            res = {"x_adv": r.x_adv.detach(), "mask": r.mask.detach(), "success": r.success,
                   "eligible": r.eligible, "spec": json.dumps(spec)}
            atomic_save(res, path)
        elif not {"success", "eligible"} <= set(res):
            self.model.eval()
            res = dict(res, success=predict(self.model, res["x_adv"]) != self.y,
                       eligible=predict(self.model, self.x) == self.y)
        self._attacks[key] = res
        return res

    def do_result(self, cell: "Cell") -> AttackResult:
        """The cached DO attack of ``cell`` on its first ``n`` images, as an ``AttackResult``."""
        r = self.do_attack(cell.attack, cell.patch_area, cell.steps, cell.seed)
        n = cell.n
        return AttackResult(x_adv=r["x_adv"][:n], patch=None, mask=r["mask"][:n],
                            success=r["success"][:n], eligible=r["eligible"][:n])

    def run(self, cell: Cell) -> dict:
        """Compute one cell and return its row."""
        t0 = time.time()
        self.model.eval()
        x, y = self.x[:cell.n], self.y[:cell.n]
        defense = self.make_defense(cell.defense, cell)
        extra = {}
        if cell.attack == "none":
            ev = evaluate(self.model, x, y, None, defense, batch_size=256)
        elif not cell.adaptive:   # the shared DO attack, scored behind this defense
            ev = evaluate(self.model, x, y, build_attack(cell.attack, cell.steps), defense,
                          batch_size=256, attack_result=self.do_result(cell))
        else:
            ev = evaluate(self.model, x, y, build_attack(cell.attack, cell.steps), defense,
                          self.threat_for(cell.patch_area), adaptive=True, generator=cell.seed)
        if cell.defense == "patchcleanser" and cell.attack == "none" and cell.options.get("certify", True):
            ok = defense.certify(self.model, x, y)
            extra["certified_acc"] = float(ok.float().mean())
        if defense is not None and cell.defense == "patchcleanser":
            extra["forward_equivalents_last"] = float(defense.last_forward_counts.float().mean())
        row = dict(model=self.model_name, dataset=self.dataset, defense=cell.defense,
                   attack=cell.attack, adaptive=cell.adaptive, patch_area=cell.patch_area, n=cell.n,
                   steps=cell.steps, seed=cell.seed,
                   attacker=ev.attacker,
                   clean_acc=ev.clean.value, robust_acc=ev.robust.value,
                   robust_acc_ci=[ev.robust.lo, ev.robust.hi], asr=ev.asr.value,
                   options=cell.options, seconds=round(time.time() - t0, 2), key=cell.key)
        row.update(extra)
        return row


def run_cells(runner: CellRunner, cells, store: CellStore, log: Optional[Callable] = print) -> dict:
    """Compute every cell not yet in ``store`` (in order), saving each as it finishes.

    Returns ``{"computed": k, "reused": m, "rows": [row per cell, in order]}``.
    """
    rows, computed, reused = [], 0, 0
    total = len(cells)
    for i, cell in enumerate(cells, 1):
        if cell.key in store:
            rows.append(store.rows[cell.key])
            reused += 1
            continue
        row = runner.run(cell)
        store.put(cell.key, row)
        rows.append(row)
        computed += 1
        if log:
            log(f"[{i}/{total}] {cell.describe()}  clean {row['clean_acc']:.3f}  robust "
                f"{row['robust_acc']:.3f}  ({row['seconds']:.1f} s)")
    return {"computed": computed, "reused": reused, "rows": rows}


# ------------------------------------------------------------------------------------ the old plan
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


# ------------------------------------------------------------------------------------ defenses
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
        return {"checkpoint": file_fingerprint(pz[defense])}
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




def reference_rows(plan: Plan, out_dir, pz: Optional[Dict[str, str]] = None,
                   log: Optional[Callable] = None) -> list:
    """The rows the old preset computed for its Fashion-MNIST part under ``plan`` (its table cells,
    then the λ sweep, then the adaptive cells; cells.jsonl and the DO cache in ``out_dir``), with the
    PatchZero checkpoints ``pz`` (default: the shipped assets)."""
    from .._io import weights_fingerprint
    from ..data.fashion_mnist import FASHION_MNIST_MEAN, load_fashion_mnist
    from ..models import load
    from ..patches import Threat

    kw = {"channels": 1, "num_classes": 10} if plan.model == "tiny_cnn" else {}
    model = load(plan.model, **kw).requires_grad_(False)
    x, y = load_fashion_mnist("test", limit=plan.n)
    fill, hw = tuple(FASHION_MNIST_MEAN), tuple(x.shape[-2:])
    if pz is None:
        assets = Path(__file__).resolve().parent.parent / "assets"
        pz = {"patchzero-do": str(assets / "patchzero_fmnist_do.pt"),
              "patchzero-two-stage": str(assets / "patchzero_fmnist_two_stage.pt")}
    pz = {k: v for k, v in pz.items() if k in plan.defenses}
    fp = weights_fingerprint(model)
    out = Path(out_dir)
    runner = CellRunner(model, x, y, plan.model, "fashion-mnist", defense_factory(model, hw, fill, pz),
                        out / "cache", lambda area: Threat(area=area, shape="square", placement="random"),
                        fingerprint=fp)
    cheap, adaptive = table_cells(plan, plan.model, "fashion-mnist", plan.areas, plan.defenses, hw,
                                  fill, pz, len(x))
    sweep = sweep_cells(plan, plan.model, "fashion-mnist", hw, len(x)) if "lgs" in plan.defenses else []
    cells = [replace(c, options={**c.options, "model_weights": fp}) for c in cheap + sweep + adaptive]
    return run_cells(runner, cells, CellStore(out / "cells.jsonl"), log=log)["rows"]
