"""The experiment harness: TOML files validated on load (errors name the file and table path), the
grid and its keys, resume after kill -9, one row per cell, failed cells recorded, and the same numbers
through ``pb.evaluate``, the local executor and the Ray executor."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from patchbench.bench import config as C
from patchbench.bench.grid import expand, select
from patchbench.bench.runner import run_experiment
from patchbench.bench.store import ResultsStore

TINY = """
[experiment]
name = "tiny"
threads = 1

[grid]
models = [{ name = "tiny_cnn", options = { channels = 1, num_classes = 10 } }]
datasets = [{ name = "fashion-mnist", split = "test", n = 12 }]
attacks = ["none", { name = "masked-pgd", steps = 2 }]
defenses = ["none", "jpeg", "gt-mask"]
threats = [{ area = 0.1 }]
adaptive = [false, true]
seeds = SEEDS
"""


def _write(tmp_path, text, name="exp.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _tiny(tmp_path, seeds="[0]", extra="") -> C.Experiment:
    return C.load(_write(tmp_path, TINY.replace("SEEDS", seeds) + extra))


def _quiet(*a, **k):
    pass


def test_grid_expansion_prunes_adaptive_without_attack_or_defense(tmp_path):
    exp = _tiny(tmp_path)
    cells = expand(exp)
    # 3 benign + 3 DO + 2 adaptive (none-defense and none-attack have no adaptive variant)
    assert len(cells) == 8
    assert len({c.key for c in cells}) == 8
    adaptive = [c for c in cells if c.config["adaptive"]]
    assert {c.config["defense"] for c in adaptive} == {"jpeg", "gt-mask"}
    # the attack's registered defaults are part of the cell (PatchZero §4.1 settings for masked-pgd)
    import inspect

    from patchbench.attacks import MaskedPGD
    pgd = next(c for c in cells if c.config["attack"] == "masked-pgd")
    defaults = {k: p.default for k, p in inspect.signature(MaskedPGD).parameters.items()}
    assert pgd.config["attack_options"]["steps"] == 2
    assert set(pgd.config["attack_options"]) == set(defaults)
    assert all(pgd.config["attack_options"][k] == v for k, v in defaults.items() if k != "steps")
    assert select(cells, "jpeg*adaptive") == [c for c in cells if c.config["defense"] == "jpeg"
                                              and c.config["adaptive"]]


def test_overrides_change_n_and_options_and_skip(tmp_path):
    extra = """
[[override]]
where = { defense = "jpeg" }
set = { n = 4, defense = { quality = 50 } }
[[override]]
where = { defense = "gt-mask", adaptive = true }
set = { skip = true }
"""
    cells = expand(_tiny(tmp_path, extra=extra))
    jpeg = [c for c in cells if c.config["defense"] == "jpeg"]
    assert jpeg and all(c.config["n"] == 4 and c.config["defense_options"]["quality"] == 50 for c in jpeg)
    assert not [c for c in cells if c.config["defense"] == "gt-mask" and c.config["adaptive"]]


@pytest.mark.parametrize("text, where, kind", [
    ("[grid\nmodels = [", "line", ValueError),
    (TINY.replace("steps = 2", "steps = -3").replace("SEEDS", "[0]"), "grid.attacks[1].steps", ValueError),
    (TINY.replace("steps = 2", "stepz = 2").replace("SEEDS", "[0]"), "stepz", TypeError),
    (TINY.replace('"jpeg"', '"jpgg"').replace("SEEDS", "[0]"), "grid.defenses[1]", LookupError),
    (TINY.replace('"tiny_cnn"', '"resnet9000"').replace("SEEDS", "[0]"), "grid.models[0]", LookupError),
    (TINY.replace("SEEDS", '["x"]'), "grid.seeds[0]", TypeError),
    (TINY.replace("area = 0.1", "area = 1.5").replace("SEEDS", "[0]"), "grid.threats[0].area", ValueError),
    (TINY.replace("n = 12", "n = 0").replace("SEEDS", "[0]"), "grid.datasets[0].n", ValueError),
    (TINY.replace("threads = 1", "threads = 1\ndevice = 'cuda'").replace("SEEDS", "[0]"),
     "experiment.device", ValueError),
    (TINY.replace("threads = 1", "threads = 1\ncolour = 'red'").replace("SEEDS", "[0]"), "colour", ValueError),
    (TINY.replace('"jpeg"', '{ name = "patchzero", checkpoint = "@nope" }').replace("SEEDS", "[0]"),
     "grid.defenses[1].checkpoint", LookupError),
])
def test_bad_experiment_files_name_file_and_table_path(tmp_path, text, where, kind):
    if "cuda" in text and torch.cuda.is_available():
        pytest.skip("CUDA is present")
    path = _write(tmp_path, text)
    with pytest.raises(kind) as e:
        C.load(path)
    assert str(path) in str(e.value) and where in str(e.value), str(e.value)


def test_unknown_bundled_name_lists_the_bundled_ones():
    with pytest.raises(LookupError, match="quick"):
        C.load("quik")
    assert "quick" in C.bundled_names()
    assert C.load("QUICK").name == "quick"


def _rows(out) -> dict:
    with ResultsStore(out, readonly=True) as s:
        return {r.key: (r.status, {k: v for k, v in r.metrics.items() if k != "seconds"})
                for r in s.records()}


def test_run_writes_one_row_per_cell_and_a_rerun_computes_nothing(tmp_path, capsys):
    exp = _tiny(tmp_path)
    out = tmp_path / "run"
    s = run_experiment(exp, out, log=_quiet)
    assert (s.total, s.done, s.failed, s.ran) == (8, 8, 0, 8)
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 8
    for r in rows:
        assert {"model", "dataset", "defense", "attack", "adaptive", "patch_area", "n", "clean_acc",
                "robust_acc"} <= set(r)
    assert (out / "results.csv").is_file()
    again = run_experiment(exp, out, log=_quiet)
    assert (again.done, again.ran) == (8, 0)
    assert again.line() == "cells total=8 done=8 failed=0 ran=0"


def test_same_numbers_as_pb_evaluate(tmp_path):
    import patchbench as pb
    exp = _tiny(tmp_path)
    out = tmp_path / "run"
    run_experiment(exp, out, log=_quiet)
    cell = next(c for c in expand(exp) if c.config["defense"] == "jpeg" and c.config["adaptive"])
    model = pb.models.load("tiny_cnn", channels=1, num_classes=10)
    x, y = pb.data.load_dataset("fashion-mnist", split="test", n=12)
    ev = pb.evaluate(model, x, y, attack=pb.attacks.get("masked-pgd", steps=2),
                     defense=pb.defenses.JPEG(quality=75), threat=pb.Threat(area=0.1),
                     adaptive=True, generator=0)
    stored = _rows(out)[cell.key][1]
    assert stored["robust_acc"] == ev.metrics()["robust_acc"]
    assert stored["clean_acc"] == ev.metrics()["clean_acc"]


def test_a_failing_cell_is_stored_with_its_traceback_and_the_sweep_goes_on(tmp_path, monkeypatch):
    import patchbench.bench.runner as R
    exp = _tiny(tmp_path)
    real = R.compute_cell

    def flaky(cfg, settings):
        if cfg["defense"] == "jpeg" and cfg["attack"] == "none":
            raise RuntimeError("boom in a cell")
        return real(cfg, settings)

    monkeypatch.setattr(R, "compute_cell", flaky)
    s = run_experiment(exp, tmp_path / "run", log=_quiet)
    assert (s.done, s.failed) == (7, 1)
    with ResultsStore(tmp_path / "run", readonly=True) as store:
        (bad,) = store.records("failed")
    assert "RuntimeError: boom in a cell" in bad.error
    monkeypatch.setattr(R, "compute_cell", real)
    s = run_experiment(exp, tmp_path / "run", log=_quiet)      # failed cells are retried
    assert (s.done, s.failed, s.ran) == (8, 0, 1)


def test_kill_minus_9_then_rerun_computes_exactly_the_missing_cells(tmp_path):
    path = _write(tmp_path, TINY.replace("SEEDS", "[0, 1, 2, 3, 4, 5]"))
    out = tmp_path / "killed"
    code = textwrap.dedent(f"""
        from patchbench.bench import config as C
        from patchbench.bench.runner import run_experiment
        run_experiment(C.load({str(path)!r}), {str(out)!r}, log=lambda *a, **k: None)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    done_before = 0
    while time.time() < deadline and p.poll() is None:
        if (out / "results.db").is_file():
            try:
                con = sqlite3.connect(f"file:{out / 'results.db'}?mode=ro", uri=True)
                done_before = con.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
                con.close()
            except sqlite3.Error:
                done_before = 0
            if done_before >= 5:
                break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    exp = C.load(path)
    total = len(expand(exp))
    assert 5 <= done_before < total, "the sweep finished before it could be killed"
    with ResultsStore(out, readonly=True) as s:
        kept = set(s.statuses())
    again = run_experiment(exp, out, log=_quiet)
    assert again.ran == total - len(kept) and again.done == total
    clean = tmp_path / "clean"
    run_experiment(exp, clean, log=_quiet)
    assert _rows(out) == _rows(clean)


def test_second_process_on_the_same_dir_is_refused(tmp_path):
    from patchbench.bench.store import StoreError
    exp = _tiny(tmp_path)
    with ResultsStore(tmp_path / "run"):
        with pytest.raises(StoreError, match="in use"):
            run_experiment(exp, tmp_path / "run", log=_quiet)


def test_dry_run_lists_cells_and_computes_nothing(tmp_path):
    lines = []
    s = run_experiment(_tiny(tmp_path), tmp_path / "dry", dry_run=True, log=lines.append)
    assert s.ran == 0 and not (tmp_path / "dry" / "results.db").exists()
    assert sum(line.startswith("  to do") for line in lines) == 8
    assert "estimated cost" in lines[-1]


def test_cli_run_prints_the_summary_line_last(tmp_path, capsys):
    from patchbench.cli import main
    path = _write(tmp_path, TINY.replace("SEEDS", "[0]"))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "cells total=8 done=8 failed=0 ran=8"
    assert main(["run", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "r2")]) == 2
    assert "missing.toml" in capsys.readouterr().err


def test_ray_executor_gives_the_same_numbers(tmp_path):
    ray = pytest.importorskip("ray")
    exp = _tiny(tmp_path)
    run_experiment(exp, tmp_path / "local", log=_quiet)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s = run_experiment(exp, tmp_path / "ray", executor="ray", log=_quiet)
    finally:
        ray.shutdown()
    assert (s.done, s.ran) == (8, 8)
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "local")


def test_unknown_executor_and_address_without_ray_are_refused(tmp_path):
    exp = _tiny(tmp_path)
    with pytest.raises(LookupError, match="executor"):
        run_experiment(exp, tmp_path / "x", executor="slurm", log=_quiet)
    with pytest.raises(ValueError, match="address"):
        run_experiment(exp, tmp_path / "x", executor="local", address="auto", log=_quiet)


def test_bundled_quick_experiment_is_valid():
    exp = C.load("quick")
    cells = expand(exp)
    assert len(cells) >= 20 and exp.task == "classification"


def test_gallery_images_are_saved_per_cell_for_the_report(tmp_path):
    exp = C.load(_write(tmp_path, TINY.replace("SEEDS", "[0]").replace("threads = 1",
                                                                        "threads = 1\ngallery = 2")))
    out = tmp_path / "run"
    run_experiment(exp, out, log=_quiet)
    oracle = next(c for c in expand(exp) if c.config["defense"] == "gt-mask"
                  and c.config["attack"] != "none" and not c.config["adaptive"])
    g = torch.load(out / "gallery" / f"{oracle.key}.pt", weights_only=True)
    assert g["clean"].dtype == torch.uint8 and g["clean"].shape[0] == 2
    # the oracle repaints exactly the patch: outside the mask purified == patched
    outside = g["mask"].expand_as(g["adv"]) == 0
    assert torch.equal(g["purified"][outside], g["adv"][outside])
    assert not torch.equal(g["purified"], g["adv"])
    from patchbench.bench.pages import build_report
    page = build_report([out])
    assert page.is_file() and "gt-mask" in page.read_text().lower()
