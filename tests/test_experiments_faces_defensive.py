"""The bundled ``face-patch`` and ``defensive-patch`` experiments reproduce the old presets' numbers
cell for cell (the old side is recorded in ``tests/golden/``, written by the presets at commit
dcb6e6e with the command stored in each file), the ``evaluate --preset`` aliases map the old flags
onto the files, and the new grid axes (stickers, corruptions, face datasets) are validated."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchbench.bench import config as C
from patchbench.bench.aliases import experiment_for
from patchbench.bench.grid import expand
from patchbench.bench.runner import run_experiment
from patchbench.bench.store import ResultsStore
from patchbench.data.fashion_mnist import fashion_mnist_available

GOLDEN = Path(__file__).parent / "golden"
needs_data = pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST files missing")


def _quiet(*a, **k):
    pass


def _records(exp, out):
    run_experiment(exp, out, log=_quiet)
    with ResultsStore(out, readonly=True) as s:
        return s.records()


# ---- face-patch ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def face_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    mp = pytest.MonkeyPatch()
    mp.setenv("PATCHBENCH_HOME", str(root / "home"))       # the artifacts are trained here
    try:
        exp, _ = experiment_for("face-patch", ["--quick", "--strategies",
                                               "patch-iou,patch-combination"])
        recs = _records(exp, root / "run")
    finally:
        mp.undo()
    return recs


def test_face_patch_numbers_equal_the_old_presets_cell_for_cell(face_run):
    gold = json.loads((GOLDEN / "face_patch_preset_quick.json").read_text())["rows"]
    want = {(r["detector"], r["strategy"]): r for r in gold}
    got = {(r.config["model"], r.config["labels"]["attack"]): r.metrics for r in face_run}
    assert all(r.status == "done" for r in face_run) and len(got) == 3 * 6
    for key, m in got.items():
        w = want[key]
        assert (m["precision"], m["recall"], m["patch_detections"], m["n_faces"], m["ap"]) == \
            (w["precision"], w["recall"], w["patch_detections"], w["n_faces"], w["ap"]), key
        for beta, v in w["afbeta"].items():
            assert m[f"afbeta_{beta}"] == pytest.approx(v, abs=1e-12), (key, beta)


def test_face_cells_pool_the_composites_and_the_photo(face_run):
    benign = next(r for r in face_run if r.config["attack"] == "none" and r.config["model"] == "mtcnn")
    assert benign.metrics["n"] == 4 + 1                 # 4 held-out composites + the astronaut
    assert benign.config["threat"] is None and benign.config["patch_area"] is None


# ---- defensive-patch -------------------------------------------------------------------------------
def _old_rows():
    return json.loads((GOLDEN / "defensive_patch_preset_small.json").read_text())["rows"]


def _as_old_key(rec) -> tuple:
    c = rec.config
    patch = (c.get("sticker") or {}).get("name", "none")
    if c["attack"] != "none":
        noise = {"fgsm": "fgsm", "pgd-linf": "pgd"}[c["attack"]]
        return c["model"], patch, noise, round(float(c["attack_options"]["eps"]), 6)
    if c.get("corruption"):
        return c["model"], patch, c["corruption"]["name"], float(c["corruption"]["severity"])
    return c["model"], patch, "clean", 0.0


@needs_data
def test_defensive_patch_numbers_equal_the_old_presets_cell_for_cell(tmp_path):
    exp, _ = experiment_for("defensive-patch", ["--n-test", "48", "--n-adv", "20", "--skip-imagenet"])
    for g in exp.grids:             # the recorded subset: two corruptions (and every attack)
        g.corruptions = [c for c in g.corruptions if c["name"] in ("none", "gaussian_noise", "fog")]
    recs = _records(exp, tmp_path / "run")
    got = {_as_old_key(r): r.metrics for r in recs}
    assert all(r.status == "done" for r in recs)
    old = _old_rows()
    assert len(old) == len(got) == 3 * 4 * (1 + 2 * 5) + 3 * 4 * 6
    for r in old:
        m = got[(r["model"], r["patch"], r["noise"], round(float(r["severity"]), 6))]
        acc = m["robust_acc"] if r["noise"] in ("fgsm", "pgd") else m["clean_acc"]
        assert (m["n"], acc) == (r["n"], r["acc"]), r


def test_the_bundled_defensive_file_has_the_old_presets_cells():
    cells = expand(C.load("defensive-patch"))
    fm = [c.config for c in cells if c.config["dataset"] == "fashion-mnist"]
    photos = [c.config for c in cells if c.config["dataset"] == "imagenet-samples"]
    # 3 models × 4 patches × (clean + 18 corruptions × 5 severities), + FGSM / PGD at 3 ε
    assert len(fm) == 3 * 4 * (1 + 18 * 5) + 3 * 4 * 6
    assert len(photos) == 2 * 4 * (1 + 5 * 5) + 2 * 4 * 6
    adv = [c for c in fm if c["attack"] != "none"]
    assert {c["dataset_options"]["n"] for c in adv} == {300}
    assert {c["attack_options"]["batch_size"] for c in adv} == {250}


def test_the_aliases_map_the_old_flags():
    exp, dry = experiment_for("face-patch", ["--quick", "--no-cascades", "--dry-run"])
    assert dry and [m.name for m in exp.grids[0].models] == ["mtcnn"]
    assert {a.config["epochs"] for a in exp.artifacts.values()} == {1}
    assert exp.grids[0].datasets[0].options["n"] == 4
    exp, _ = experiment_for("defensive-patch", ["--epochs", "2"])
    assert exp.artifacts["dp_fmnist"].source is None and exp.artifacts["dp_fmnist"].config["epochs"] == 2
    with pytest.raises(LookupError, match="--strategies"):
        experiment_for("face-patch", ["--strategies", "nope"])
    with pytest.raises(LookupError, match="unknown preset"):
        experiment_for("nope")


# ---- validation of the new axes --------------------------------------------------------------------
BASE = """
[experiment]
name = "x"
task = "{task}"
[artifacts.dp]
kind = "defensive-patch"
source = "asset:defensive_patch_fmnist.pt"
[grid]
models = [{models}]
datasets = [{datasets}]
{extra}
"""


def _parse(task="classification", models='"fmnist_cnn_small_stickers"',
           datasets='{ name = "fashion-mnist", n = 8 }', extra=""):
    import tomllib
    return C.parse(tomllib.loads(BASE.format(task=task, models=models, datasets=datasets,
                                             extra=extra)))


@pytest.mark.parametrize("extra, err, match", [
    ('stickers = ["defensive"]', ValueError, "grid.stickers\\[0\\].patch: missing"),
    ('stickers = [{ name = "shiny", patch = "@dp" }]', LookupError, "unknown sticker"),
    ('stickers = [{ name = "random", patch = "@nope" }]', LookupError, "refers to artifact"),
    ('corruptions = [{ name = "fogg" }]', LookupError, "fog"),
    ('corruptions = [{ name = "fog", severity = 6 }]', ValueError, "severity"),
    ('corruptions = [{ name = "all", severity = [] }]', ValueError, "is empty"),
])
def test_bad_sticker_and_corruption_entries_name_the_table_path(extra, err, match):
    with pytest.raises(err, match=match):
        _parse(extra=extra)


def test_corruption_all_expands_to_every_corruption_and_severity():
    from patchbench.corruptions import CORRUPTIONS
    exp = _parse(extra='corruptions = ["none", { name = "all", severity = [2, 4] }]')
    assert len(exp.grids[0].corruptions) == 1 + 2 * len(CORRUPTIONS)
    cells = expand(exp)
    assert sum("corruption" not in c.config for c in cells) == 1


@pytest.mark.parametrize("kw, match", [
    (dict(task="face-detection", models='"yolo"', datasets='{ name = "face-composites", n = 2 }'),
     "unknown face detector"),
    (dict(task="face-detection", models='"mtcnn"', datasets='{ name = "face-composites", n = 2 }',
          extra='defenses = ["jpeg"]'), "no defenses"),
    (dict(task="face-detection", models='"mtcnn"', datasets='{ name = "fashion-mnist", n = 2 }'),
     "classification dataset"),
    (dict(datasets='{ name = "fashion-mnist", n = 2, photos = true }'), "photos"),
    (dict(task="face-detection", models='"mtcnn"',
          datasets='{ name = "face-composites", n = 2, colour = 3 }'), "colour"),
])
def test_face_grids_are_checked(kw, match):
    with pytest.raises((ValueError, LookupError, TypeError), match=match):
        _parse(**kw)
