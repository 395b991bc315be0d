"""Cells of the defenses table: what one cell is, how it is keyed, stored, resumed and computed.

A *cell* is one (model, dataset, patch area, defense, attack, attacker) combination with its sample
count and attack iterations. It is keyed by a hash of that config; finished cells are appended to a
JSON-lines file (``cells.jsonl``), so a killed run resumes without redoing any of them.

Attackers (PatchZero, Xu et al. WACV 2023, §3.3 and Table 1):

* ``attack = "none"``: benign accuracy of the defended model.
* downstream-only (DO, ``adaptive = False``): the attack runs on the bare classifier and the defense
  sees the result. Every DO cell of one (attack, area) shares the *same* attacked images — the attack
  only depends on the classifier and the seed — so it is run once and cached in ``cache/``.
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

import torch
from torch import Tensor

from ..evaluation import evaluate
from ..metrics import classification as M
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


@torch.no_grad()
def predict(model, x: Tensor, batch_size: int = 256) -> Tensor:
    """Labels of ``model`` (a classifier or ``Defended``) on ``x``, in eval mode, batched."""
    return torch.cat([model(x[i:i + batch_size]).argmax(-1) for i in range(0, x.shape[0], batch_size)])


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
        ``{"x_adv", "mask", "pred"}`` with ``pred`` the bare model's labels on ``x_adv``."""
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
            res = {"x_adv": r.x_adv.detach(), "mask": r.mask.detach(), "spec": json.dumps(spec)}
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            torch.save(res, tmp)
            os.replace(tmp, path)
        self._attacks[key] = res
        return res

    def run(self, cell: Cell) -> dict:
        """Compute one cell and return its row."""
        t0 = time.time()
        self.model.eval()
        x, y = self.x[:cell.n], self.y[:cell.n]
        defense = self.make_defense(cell.defense, cell)
        extra = {}
        if cell.attack == "none" or not cell.adaptive:
            ev = self._benign_or_do(cell, defense, x, y)
        else:
            e = evaluate(self.model, x, y, build_attack(cell.attack, cell.steps), defense,
                         self.threat_for(cell.patch_area), adaptive=True, generator=cell.seed)
            ev = dict(clean=e.clean, robust=e.robust, asr=e.asr)
        if cell.defense == "patchcleanser" and cell.attack == "none" and cell.options.get("certify", True):
            ok = defense.certify(self.model, x, y)
            extra["certified_acc"] = float(ok.float().mean())
        if defense is not None and cell.defense == "patchcleanser":
            extra["forward_equivalents_last"] = float(defense.last_forward_counts.float().mean())
        row = dict(model=self.model_name, dataset=self.dataset, defense=cell.defense,
                   attack=cell.attack, adaptive=cell.adaptive, patch_area=cell.patch_area, n=cell.n,
                   steps=cell.steps, seed=cell.seed,
                   attacker=_attacker(cell, defense),
                   clean_acc=ev["clean"].value, robust_acc=ev["robust"].value,
                   robust_acc_ci=[ev["robust"].lo, ev["robust"].hi], asr=ev["asr"].value,
                   options=cell.options, seconds=round(time.time() - t0, 2), key=cell.key)
        row.update(extra)
        return row

    def _benign_or_do(self, cell: Cell, defense, x: Tensor, y: Tensor) -> dict:
        from ..defenses.base import Defended
        target = self.model if defense is None else Defended(self.model, defense).eval()
        oracle = hasattr(defense, "set_mask")
        if oracle:
            defense.set_mask(torch.zeros_like(x[:, :1]))
        # the oracle's mask covers all n images: predict them in one batch
        bs = x.shape[0] if oracle else 256
        pred_clean = predict(target, x, bs)
        clean = M.accuracy(pred_clean, y)
        if cell.attack == "none":
            return dict(clean=clean, robust=clean, asr=M.success_rate(pred_clean, pred_clean, y))
        res = self.do_attack(cell.attack, cell.patch_area, cell.steps, cell.seed)
        xa = res["x_adv"][:cell.n]
        if oracle:
            defense.set_mask(res["mask"][:cell.n])
        pred_adv = predict(target, xa, bs)
        return dict(clean=clean, robust=M.accuracy(pred_adv, y),
                    asr=M.success_rate(pred_clean, pred_adv, y))


def _attacker(cell: Cell, defense) -> str:
    if cell.attack == "none":
        return "none"
    if not cell.adaptive:
        return "DO"
    grad = getattr(defense, "gradient", "exact")
    eot = " + EOT" if getattr(defense, "randomized", False) else ""
    return f"adaptive ({grad}{eot})"


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
