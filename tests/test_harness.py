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


# ---- sub-grids, pools, sweeps, certification ---------------------------------------------------
SUBGRIDS = """
[experiment]
name = "sub"
threads = 1

[[grid]]
name = "table"
models = [{ name = "tiny_cnn", options = { channels = 1, num_classes = 10 } }]
datasets = [{ name = "fashion-mnist", n = 12 }]
attacks = ["none", { name = "masked-pgd", steps = 2 }]
defenses = ["none", { name = "lgs", window = 5, overlap = 2, smoothing_factor = 2.3 }]
threats = [{ area = 0.1 }]
adaptive = [false, true]

[[grid.override]]
where = { defense = "lgs" }
set = { n = 8 }

[[grid]]
name = "sweep"
models = [{ name = "tiny_cnn", options = { channels = 1, num_classes = 10 } }]
datasets = [{ name = "fashion-mnist", n = 12 }]
attacks = ["none", { name = "masked-pgd", steps = 2 }]
defenses = [{ name = "lgs", window = 5, overlap = 2, sweep = { smoothing_factor = [1.5, 2.3] } }]
threats = [{ area = 0.1 }]
"""


def test_sub_grids_are_a_union_with_their_own_overrides_and_shared_cells_once(tmp_path):
    cells = expand(C.load(_write(tmp_path, SUBGRIDS)))
    # table: 2 benign + 2 DO + 1 adaptive; sweep: 2 λ × (benign, DO), of which λ = 2.3 is the table's
    # cells only if n matches: the table's override (n = 8) is its own, so the sweep's are new
    assert len(cells) == 5 + 4 and len({c.key for c in cells}) == 9
    lgs = [c.config for c in cells if c.config["defense"] == "lgs"]
    assert sorted((c["defense_options"]["smoothing_factor"], c["n"]) for c in lgs
                  if not c["adaptive"]) == [(1.5, 12), (1.5, 12), (2.3, 8), (2.3, 8), (2.3, 12),
                                            (2.3, 12)]
    assert all(c["dataset_options"]["n"] == 12 for c in lgs)            # one pool for all
    # the same cell given by two grids is listed once
    text = SUBGRIDS.replace('[[grid.override]]\nwhere = { defense = "lgs" }\nset = { n = 8 }\n', "")
    assert len(expand(C.load(_write(tmp_path, text, "b.toml")))) == 5 + 2
    # a single [grid] table still works, and takes [[grid.override]] too
    single = TINY.replace("SEEDS", "[0]") + ('[[grid.override]]\nwhere = { defense = "jpeg" }\n'
                                             'set = { skip = true }\n')
    assert len(expand(C.load(_write(tmp_path, single, "c.toml")))) == 8 - 3


@pytest.mark.parametrize("old, new, where, kind", [
    ('defenses = ["none", { name = "lgs", window', 'defenses = ["none", { name = "lgz", window',
     "grid[0].defenses[1]", LookupError),
    ("sweep = { smoothing_factor = [1.5, 2.3] }", "sweep = { smoothing_factor = 1.5 }",
     "grid[1].defenses[0].sweep.smoothing_factor", TypeError),
    ("sweep = { smoothing_factor = [1.5, 2.3] }", "sweep = { smoothing_factor = [1.5, -1.0] }",
     "grid[1].defenses[0].sweep.smoothing_factor[1]", ValueError),
    ("sweep = { smoothing_factor = [1.5, 2.3] }",
     "smoothing_factor = 2.0, sweep = { smoothing_factor = [1.5] }",
     "grid[1].defenses[0].sweep.smoothing_factor", ValueError),
    ("set = { n = 8 }", "set = { n = 13 }", "grid[0].override[0].set.n", ValueError),
    ("set = { n = 8 }", "set = { defense = { windw = 3 } }", "grid[0].override[0].set.defense",
     TypeError),
    ("set = { n = 8 }", "set = { defense = { window = -3 } }", "grid[0].override[0].set.defense.window",
     ValueError),
    ('name = "sweep"', 'name = "table"', "grid", ValueError),
    ("n = 12 }]\nattacks = [\"none\", { name = \"masked-pgd\", steps = 2 }]\ndefenses = [\"none\"",
     "n = 10001 }]\nattacks = [\"none\", { name = \"masked-pgd\", steps = 2 }]\ndefenses = [\"none\"",
     "grid[0].datasets[0].n", ValueError),
    ("window = 5, overlap = 2, smoothing_factor = 2.3 }", "window = 5, overlap = 2, certify = true }",
     "grid[0].defenses[1].certify", ValueError),
    ("window = 5, overlap = 2, smoothing_factor = 2.3 }", "window = 5, overlp = 2 }",
     "overlp", TypeError),
])
def test_sub_grid_pool_and_sweep_mistakes_name_the_table_path(tmp_path, old, new, where, kind):
    assert old in SUBGRIDS
    path = _write(tmp_path, SUBGRIDS.replace(old, new, 1))
    with pytest.raises(kind) as e:
        expand(C.load(path))
    assert str(path) in str(e.value) and where in str(e.value), str(e.value)


def test_experiment_settings_are_validated(tmp_path):
    for bad, where in (("batch_size = 0", "batch_size"), ("batch_size = 'x'", "batch_size")):
        path = _write(tmp_path, TINY.replace("threads = 1", f"threads = 1\n{bad}").replace("SEEDS", "[0]"))
        with pytest.raises((TypeError, ValueError), match=where):
            C.load(path)
    with pytest.raises(ValueError, match=r"grid: missing"):
        C.parse({"experiment": {"name": "x"}})
    with pytest.raises(ValueError, match=r"grid: is empty"):
        C.parse({"grid": []})


POOL = """
[experiment]
name = "pool"
threads = 1

[grid]
models = ["fmnist_cnn_small"]
datasets = [{ name = "fashion-mnist", n = 12 }]
attacks = [{ name = "masked-pgd", steps = 2 }]
defenses = ["jpeg", { name = "patchcleanser", k = 3, certify = true }]
threats = [{ area = 0.1 }]
adaptive = [false, true]

[[grid.override]]
where = { defense = "patchcleanser" }
set = { n = 5 }
"""


def _same(got: dict, want: dict) -> bool:
    """``want``'s metrics all in ``got`` with the same values (NaN equal to NaN)."""
    return json.dumps({k: got.get(k) for k in want}, sort_keys=True) == json.dumps(want, sort_keys=True)


def test_a_do_cell_scores_its_first_n_images_of_the_attack_on_the_whole_pool(tmp_path):
    import patchbench as pb
    from patchbench.bench.runner import _sliced

    exp = C.load(_write(tmp_path, POOL))
    out = tmp_path / "run"
    run_experiment(exp, out, log=_quiet)
    rows = _rows(out)
    cells = {(c.config["defense"], c.config["adaptive"]): c for c in expand(exp)}
    model = pb.models.load("fmnist_cnn_small")
    x, y = pb.data.load_dataset("fashion-mnist", n=12)
    attack, threat = pb.attacks.get("masked-pgd", steps=2), pb.Threat(area=0.1)
    pc = pb.defenses.build("patchcleanser", pb.defenses.BuildContext(
        model=model, image_size=(28, 28), fill=(0.286,), patch_area=0.1), k=3)
    # DO: the attack ran on all 12 images; the PatchCleanser cell scores its first 5
    pool = attack.run(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    want = pb.evaluate(model, x[:5], y[:5], attack, pc, attack_result=_sliced(pool, 5)).metrics()
    got = rows[cells[("patchcleanser", False)].key][1]
    assert got["n"] == 5 and _same(got, want)
    # ...which is not the attack on the first 5 images alone (its placements differ)
    alone = pb.evaluate(model, x[:5], y[:5], attack, pc, threat, generator=0).result
    assert not torch.equal(alone.mask, pool.mask[:5])
    # adaptive: the cell attacks its own first 5 images
    want = pb.evaluate(model, x[:5], y[:5], attack, pc, threat, adaptive=True, generator=0).metrics()
    got = rows[cells[("patchcleanser", True)].key][1]
    assert _same(got, want)
    # the full-pool cell gets the same numbers as pb.evaluate running the attack itself
    want = pb.evaluate(model, x, y, attack, pb.defenses.JPEG(), threat, generator=0).metrics()
    got = rows[cells[("jpeg", False)].key][1]
    assert _same(got, want)
    # PatchCleanser counts its forward passes
    assert got.get("forward_equivalents_last") is None
    assert rows[cells[("patchcleanser", False)].key][1]["forward_equivalents_last"] >= 9


def test_certify_adds_the_certified_accuracy_to_benign_cells_only(tmp_path):
    import patchbench as pb
    exp = C.load(_write(tmp_path, POOL.replace('attacks = [{ name', 'attacks = ["none", { name')))
    out = tmp_path / "run"
    run_experiment(exp, out, log=_quiet)
    with ResultsStore(out, readonly=True) as s:
        recs = {(r.config["defense"], r.config["attack"], r.config["adaptive"]): r.metrics
                for r in s.records()}
    ben = recs[("patchcleanser", "none", False)]
    model = pb.models.load("fmnist_cnn_small")
    x, y = pb.data.load_dataset("fashion-mnist", n=5)
    pc = pb.defenses.PatchCleanser(0.1, 28, k=3, fill=0.286)
    assert ben["certified_acc"] == float(pc.certify(model, x, y).float().mean())
    lo, hi = ben["certified_acc_ci"]
    assert lo <= ben["certified_acc"] <= hi and ben["certified_acc"] <= ben["clean_acc"]
    assert "certified_acc" not in recs[("patchcleanser", "masked-pgd", False)]
    assert "certified_acc" not in recs[("jpeg", "none", False)]


def test_batch_size_reaches_the_cell_but_not_its_key(tmp_path):
    a = expand(_tiny(tmp_path))
    b = expand(C.load(_write(tmp_path, TINY.replace("threads = 1", "threads = 1\nbatch_size = 7")
                             .replace("SEEDS", "[0]"), "b.toml")))
    assert [c.key for c in a] == [c.key for c in b]
    seen = []
    import patchbench as pb
    real = pb.evaluate

    def spy(*args, **kw):
        seen.append(kw.get("batch_size"))
        return real(*args, **kw)

    import unittest.mock
    with unittest.mock.patch.object(pb, "evaluate", spy):
        run_experiment(C.load(tmp_path / "b.toml"), tmp_path / "run", log=_quiet)
    assert seen and set(seen) == {7}


def test_dry_run_charges_a_shared_do_attack_once(tmp_path):
    lines = []
    run_experiment(_tiny(tmp_path), tmp_path / "dry", dry_run=True, log=lines.append)
    cost = [float(ln.rsplit("~", 1)[1].split()[0].replace(",", "")) for ln in lines
            if ln.startswith("  to do") and " DO " in ln]
    assert len(cost) == 3 and cost[0] > cost[1] == cost[2]      # the first DO cell runs the attack
