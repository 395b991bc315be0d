"""``patchbench demo`` (``make demo``): the bundled experiment ``demo`` run by the harness into
``reports/demo``, then its report.

What it runs is the file ``patchbench/experiments/demo.toml`` (``patchbench run demo`` computes the
same cells): a real ImageNet MobileNetV2 on the real photographs of :func:`patchbench.data.photos`,
masked PGD at 2 % and 5 % of the image (PatchZero, Xu et al. WACV 2023, §4.1, with early stopping)
and a universal patch (Brown et al. 2017, with EOT) trained on the pool's ``train`` photos and scored
on its held-out ``test`` photos at 3 placements each. Attack success is counted over the photos the
model classifies correctly; photos without a human label are scored against the model's own clean
prediction (:mod:`patchbench.bench.heldout`). The local executor prints progress and an ETA.

``quick=True`` runs a smaller version (8 photos, 20 iterations, a 2-epoch patch on 16 photos) as the
experiment ``demo-quick``: a smoke test, not numbers to quote.

The output folder holds one demo run: run again with the same settings, it resumes (only missing
cells are computed); with other settings (``quick``, ``seed``) the previous demo results there are
replaced. A folder holding another experiment's store is refused.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

#: what ``quick`` changes, per sub-grid of demo.toml (smoke test sizes)
QUICK = {"masked-pgd": {"n": 8, "steps": 20},
         "universal": {"n": 8, "train_n": 16, "epochs": 2}}
_RUN_FILES = ("results.db", "results.db-wal", "results.db-shm", "results.json", "results.csv",
              "experiment.json", "index.html")
_RUN_DIRS = ("gallery", "cache")


def demo_experiment(quick: bool = False, seed: int = 0, device: str = "cpu"):
    """The bundled ``demo`` experiment (validated), with its seed and device, or its quick version."""
    from ._config import read_toml
    from .bench import config as C

    path = C.resolve("demo")
    data = read_toml(path, "experiment")
    data["experiment"]["device"] = str(device)
    for grid in data["grid"]:
        grid["seeds"] = [int(seed)]
        if quick:
            _shrink(grid, QUICK[grid["name"]])
    if quick:
        data["experiment"]["name"] = "demo-quick"
        data["experiment"]["description"] = "the demo at smoke-test size (patchbench demo --quick)"
    return C.parse(data, path)


def _shrink(grid: dict, q: dict) -> None:
    d = grid["datasets"][0]
    d["n"] = q["n"]
    if "train" in d:
        d["train"] = {**d["train"], "n": q["train_n"]}
    for a in grid["attacks"]:
        for k in ("steps", "epochs"):
            if k in q and k in a:
                a[k] = q[k]


def _prepare_folder(out: Path, exp) -> None:
    """Keep a resumable run of this very experiment; replace another demo run; refuse anything
    else (a store of another experiment)."""
    from .bench.grid import expand
    from .bench.store import ResultsStore

    if not (out / "results.db").is_file():
        return
    meta = out / "experiment.json"
    name = None
    if meta.is_file():
        try:
            name = json.loads(meta.read_text()).get("name")
        except (OSError, ValueError):
            name = None
    if not (isinstance(name, str) and name.startswith("demo")):
        raise ValueError(f"out_dir: {str(out)!r} holds the results store of another experiment "
                         f"({name or 'unknown'}); give the demo a folder of its own")
    with ResultsStore(out, readonly=True) as store:
        stored = {r.key for r in store.records()}
    if stored <= {c.key for c in expand(exp)}:
        return
    for f in _RUN_FILES:
        (out / f).unlink(missing_ok=True)
    for d in _RUN_DIRS:
        shutil.rmtree(out / d, ignore_errors=True)


def run_demo(out_dir="reports/demo", quick: bool = False, seed: int = 0, device="cpu") -> Path:
    """Run the demo experiment into ``out_dir`` and write its report; returns ``out_dir/index.html``.
    The arguments are checked before any model is loaded."""
    from ._validation import check_bool, check_device, check_path, check_seed
    from .bench.pages import build_report
    from .bench.runner import run_experiment

    out = check_path(out_dir, "out_dir", kind="dir", must_exist=False)
    quick, seed = check_bool(quick, "quick"), check_seed(seed, "seed")
    device = check_device(device, "device")
    exp = demo_experiment(quick=quick, seed=seed, device=str(device))
    out.mkdir(parents=True, exist_ok=True)
    _prepare_folder(out, exp)
    summary = run_experiment(exp, out)
    print(summary.line(), flush=True)
    path = build_report([out])
    print(f"report written to {path}", flush=True)
    return path


__all__ = ["run_demo", "demo_experiment", "QUICK"]
