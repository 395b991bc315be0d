"""Cells of the defenses table: what one cell is, how it is keyed, stored, resumed and computed.

A *cell* is one (model, dataset, patch area, defense, attack, attacker) combination with its sample
count and attack iterations. It is keyed by a hash of that config; finished cells are appended to a
JSON-lines file (``cells.jsonl``), so a killed run resumes without redoing any of them.

Attackers (PatchZero, Xu et al. WACV 2023, §3.3 and Table 1):

* ``attack = "none"``: benign accuracy of the defended model.
* downstream-only (DO, ``adaptive = False``): the attack runs on the bare classifier and the defense
  sees the result. Every DO cell of one (attack, area) shares the *same* attacked images — the attack
  only depends on the classifier and the seed — so it is run once, cached in ``cache/`` and handed to
  :func:`patchbench.evaluation.evaluate` as its ``attack_result``.
* adaptive (``adaptive = True``): :func:`patchbench.evaluation.evaluate` attacks
  ``Defended(model, defense)``, passing gradients as the defense declares (exact, BPDA, EOT).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

from torch import Tensor

from .._io import atomic_save, predict_batched
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
