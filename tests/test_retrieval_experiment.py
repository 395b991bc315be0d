"""Retrieval as the harness's third task (issue 14, PAIR Table 2): retrieval grids validated with
their table paths, one ``pb.evaluate`` per cell with the same numbers as a direct call, the
non-adaptive AdvHash shared by every defense, resume, the result rows' fields, and the Table 2 view.

The hasher is the zoo's CSQ with ``weights = false`` (untrained head on the ImageNet backbone) at 32²:
the numbers are those of a real cell, not of a trained victim."""
from __future__ import annotations

import json
import re

import pytest
import torch

import patchbench as pb
from patchbench.bench import config as C
from patchbench.bench import retrieval_cell as RCELL
from patchbench.bench import runner
from patchbench.bench.grid import expand, select
from patchbench.bench.runner import run_experiment
from patchbench.bench.store import CellRecord, ResultsStore

TARGET = 3
EXP = """
[experiment]
name = "tiny-retrieval"
task = "retrieval"
gallery = 2

[grid]
models = [{ name = "csq_fmnist_objects_64", weights = false, options = { input_size = 32 } }]
datasets = [{ name = "fmnist-objects", split = "query", n = 12, size = 32, gallery = { n = 48 }, train = { n = 10 } }]
attacks = ["none", { name = "advhash", iterations = 2, epochs = 1, batch_size = 5 }]
defenses = ["none", { name = "jpeg", quality = 75 }]
threats = [{ area = 0.1 }]
adaptive = [false, true]
targets = [TARGET]
k = 20
"""
ROW_FIELDS = ("task", "model", "dataset", "defense", "attack", "adaptive", "eot_samples",
              "patch_side", "shape", "metric", "n_queries", "clean", "irrelevant", "relevant")


def _quiet(*a, **k):
    pass


def _load(tmp_path, text=EXP, name="exp.toml"):
    p = tmp_path / name
    p.write_text(text.replace("TARGET", str(TARGET)))
    return C.load(p)


def _clear_caches():
    for cache in (runner._ATTACKS, runner._DATA, runner._MODELS, RCELL._GALLERY_CODES,
                  RCELL._GALLERY_DATA, RCELL._TRAIN):
        cache.clear()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny experiment run once, counting AdvHash trainings."""
    from patchbench.attacks.advhash import AdvHash
    tmp = tmp_path_factory.mktemp("retrieval")
    exp = _load(tmp)
    _clear_caches()
    fits = []
    original = AdvHash.fit

    def counting(self, *a, **k):
        fits.append(1)
        return original(self, *a, **k)
    AdvHash.fit = counting
    try:
        summary = run_experiment(exp, tmp / "out", log=_quiet)
    finally:
        AdvHash.fit = original
    with ResultsStore(tmp / "out", readonly=True) as store:
        recs = {r.key: r for r in store.records()}
    return {"exp": exp, "summary": summary, "records": recs, "fits": len(fits), "dir": tmp / "out",
            "cells": expand(exp)}


def _cell(run, defense, attack, adaptive):
    return next(c for c in run["cells"] if c.config["defense"] == defense and
                c.config["attack"] == attack and c.config["adaptive"] == adaptive)


# ---- running -----------------------------------------------------------------------------------
def test_the_tiny_experiment_runs_every_cell_and_rows_carry_the_table_2_fields(run):
    assert run["summary"].line() == "cells total=5 done=5 failed=0 ran=5"
    rows = json.loads((run["dir"] / "results.json").read_text())
    assert len(rows) == 5
    for r in rows:
        assert all(f in r for f in ROW_FIELDS), [f for f in ROW_FIELDS if f not in r]
        assert r["task"] == "hashing" and r["metric"] == "map@k" and r["model"] == \
            "csq_fmnist_objects_64" and r["dataset"] == "fmnist-objects"
        assert 0 <= r["clean"] <= 1 and r["k"] == 20
    attacked = [r for r in rows if r["attack"] == "advhash"]
    assert {(r["defense"], r["adaptive"]) for r in attacked} == {("none", False), ("jpeg", False),
                                                                  ("jpeg", True)}
    # AdvHash tests on queries of other classes than the target (PAIR §5.1)
    from patchbench.data import load_dataset
    _, y = load_dataset("fmnist-objects", "query", n=12, size=32)
    assert all(r["n_queries"] == int((y != TARGET).sum()) for r in attacked)
    assert all(r["eot_samples"] == 1 and r["shape"] == "square" and r["patch_side"] > 0
               for r in attacked)


def test_the_non_adaptive_attack_is_trained_once_for_every_defense(run):
    # one DO training shared by the undefended and the JPEG cell, one adaptive (against JPEG)
    assert run["fits"] == 2
    assert len(list((run["dir"] / "cache" / "attacks").glob("*.pt"))) == 1
    do = [run["records"][_cell(run, d, "advhash", False).key] for d in ("none", "jpeg")]
    assert do[0].metrics["attacker"] == "DO" and do[1].metrics["attacker"] == "DO"


def _direct(defense, adaptive):
    """The cell computed by hand: the same data, hasher, attack, threat and seed."""
    from patchbench.attacks.advhash import AdvHash
    from patchbench.data import load_dataset
    from patchbench.defenses import JPEG
    from patchbench.patches import Threat
    h = pb.models.load("csq_fmnist_objects_64", weights=False, input_size=32)
    x, y = load_dataset("fmnist-objects", "query", n=12, size=32)
    xd, yd = load_dataset("fmnist-objects", "database", n=48, size=32)
    xt, yt = load_dataset("fmnist-objects", "train", n=40, size=32)
    keep = (yt != TARGET).nonzero()[:10, 0]
    d = JPEG(quality=75) if defense == "jpeg" else None
    ev = pb.evaluate(h, x, y, attack=AdvHash(iterations=2, epochs=1, batch_size=5), defense=d,
                     threat=Threat(area=0.1), adaptive=adaptive, generator=0, task="retrieval",
                     target=TARGET, gallery=(xd, yd), k=20, attack_train=(xt[keep], yt[keep]))
    return ev.metrics()


@pytest.mark.parametrize("defense,adaptive", [("jpeg", False), ("jpeg", True)])
def test_a_cell_has_the_numbers_of_a_direct_evaluate_call(run, defense, adaptive):
    stored = run["records"][_cell(run, defense, "advhash", adaptive).key].metrics
    direct = _direct(defense, adaptive)
    for key in ("clean", "clean_attacked", "irrelevant", "relevant", "asr", "n_queries",
                "eot_samples", "patch_side", "attacker"):
        assert stored[key] == direct[key], key


def test_a_partial_store_resumes_with_only_the_missing_cells(run, tmp_path):
    exp = _load(tmp_path)
    _clear_caches()
    first = run_experiment(exp, tmp_path / "out", only="benign", log=_quiet)
    assert first.ran == 2
    second = run_experiment(exp, tmp_path / "out", log=_quiet)
    assert second.line() == "cells total=5 done=5 failed=0 ran=3"
    with ResultsStore(tmp_path / "out", readonly=True) as store:
        got = {r.key: r.metrics for r in store.records()}
    for key, rec in run["records"].items():
        a = {k: v for k, v in got[key].items() if k not in ("seconds",)}
        b = {k: v for k, v in rec.metrics.items() if k not in ("seconds",)}
        assert a == b, rec.config["defense"]


def test_training_images_leave_out_the_target_class(run):
    cfg = _cell(run, "jpeg", "advhash", True).config
    x, y = RCELL.attack_train(cfg, "cpu", runner._remember)
    assert x.shape[0] == 10 and bool((y != TARGET).all())


# ---- the view ----------------------------------------------------------------------------------
def test_the_report_has_table_2_and_a_gallery_per_defense(run):
    from patchbench.bench.pages import build_report
    page = build_report([run["dir"]]).read_text()
    assert "Table 2" in page
    head = re.search(r"<tr><th class='t' rowspan='2'>Defense</th>.*?</tr><tr>.*?</tr>", page).group(0)
    assert re.findall(r"<th[^>]*>([^<]+)</th>", head) == [
        "Defense", "Clean", "Adaptive", "Non-adaptive", "Irrelevant ↓", "Relevant ↑",
        "Irrelevant ↓", "Relevant ↑"]
    table = page[page.index("Table 2"):]
    table = table[:table.index("</table>")]
    assert table.index("Undefended") < table.index("JPEG")
    assert "Galleries" in page and "top 5: patched query" in page


def _record(defense, attack="advhash", adaptive=False, irrelevant=0.5, options=None, label="",
            attack_options=None, status="done"):
    opts = dict(options or {})
    cfg = {"task": "retrieval", "model": "csq", "dataset": "fmnist-objects", "model_options": {},
           "dataset_options": {"split": "query"}, "seed": 0, "target": 3, "k": 1000,
           "purify_gallery": False, "attack": attack,
           "attack_options": {"iterations": 20, **(attack_options or {})} if attack != "none" else {},
           "defense": defense, "defense_options": opts, "patch_area": 0.05,
           "threat": {"shape": "square", "placement": "random", "aspect": 1.0},
           "adaptive": adaptive, "n": 100,
           "labels": {"defense": label or defense, "attack": attack}}
    m = {"clean": 0.7, "irrelevant": irrelevant, "relevant": 0.3, "n_queries": 90, "n": 100,
         "k": 1000, "asr": 0.1, "asr_n": 90, "seconds": 1.0,
         "eot_samples": opts.get("eot_samples", 7 if defense == "pair" else 1) if attack != "none"
         else None}
    key = json.dumps([defense, attack, adaptive, opts, label, attack_options])
    import hashlib
    return CellRecord(key=hashlib.sha1(key.encode()).hexdigest()[:20], config=cfg,
                      metrics=m if status == "done" else {}, status=status)


def test_the_view_orders_rows_like_table_2_and_lists_ablations_and_stronger_attackers():
    from patchbench.bench.report import Report
    from patchbench.bench.views import CellNamer, retrieval
    recs = [_record("pair", "none"), _record("pair", adaptive=False, irrelevant=0.02),
            _record("pair", adaptive=True, irrelevant=0.04),
            _record("pair", adaptive=True, irrelevant=0.30, options={"eot_samples": 28}),
            _record("pair", adaptive=True, irrelevant=0.10, options={"gradient": "bpda-identity"}),
            _record("none", "none"), _record("none", irrelevant=0.9),
            _record("jpeg", "none"), _record("jpeg", irrelevant=0.8),
            _record("jpeg", adaptive=True, status="failed"),
            _record("pair", "none", options={"mask": "fixed"}, label="fixed mask"),
            _record("pair", adaptive=True, irrelevant=0.6, options={"mask": "fixed"},
                    label="fixed mask")]
    rep = Report("t")
    retrieval.render(rep, recs, CellNamer(r.config for r in recs))
    page = rep.render()
    t2 = page[page.index("<caption>Table 2"):]
    t2 = t2[:t2.index("</table>")]
    assert t2.index("Undefended") < t2.index("JPEG") < t2.index("PAIR")
    assert "fixed mask" not in t2 and "failed" in t2          # ablations go to Table 3
    assert "PAIR ablations (Table 3" in page
    strong = page[page.index("under stronger attackers"):]
    strong = strong[:strong.index("</table>")]
    assert "EOT 28" in strong and "BPDA (identity)" in strong and "EOT 7" in strong
    # the strongest attacker (EOT 28: t-mAP 30 %) is marked
    row = next(r for r in strong.split("<tr>") if "strongest" in r)
    assert "EOT 28" in row
    # the targets are stated with the measured numbers
    assert "Undefended AdvHash t-mAP 90.0% (target ≥ 80%): met" in page
    assert "PAIR under the adaptive attacker (EOT 7) t-mAP 4.0% (target ≤ 5%): met" in page


# ---- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize("old,new,kind,where", [
    ("gallery = { n = 48 }", "gallery = { split = 'gallery', n = 48 }", LookupError,
     "grid.datasets[0].gallery.split"),
    ("gallery = { n = 48 }", "gallery = { n = 5000 }", ValueError, "grid.datasets[0].gallery.n"),
    ("train = { n = 10 }", "train = { n = 10, shuffle = true }", ValueError,
     "grid.datasets[0].train"),
    ("targets = [3]", "targets = [10]", ValueError, "grid.targets[0]"),
    ("targets = [3]", "targets = [-1]", ValueError, "grid.targets[0]"),
    ("targets = [3]\n", "", ValueError, "grid.targets"),
    ("k = 20", "k = 0", ValueError, "grid.k"),
    ("k = 20", "k = 49", ValueError, "grid.k"),
    ("k = 20", "k = 20\npurify_gallery = 1", TypeError, "grid.purify_gallery"),
    ('"none", { name = "advhash"', '"none", { name = "masked-pgd", steps = 2 }, { name = "advhash"',
     ValueError, "grid.attacks[1]"),
    ('{ name = "jpeg", quality = 75 }', '"patchcleanser"', ValueError, "grid.defenses[1]"),
    ('name = "csq_fmnist_objects_64", weights = false', 'name = "tiny_cnn"', LookupError,
     "grid.models[0]"),
    ("weights = false", "weights = 3", TypeError, "grid.models[0].weights"),
])
def test_config_errors_name_the_table_path(tmp_path, old, new, kind, where):
    text = EXP.replace("TARGET", str(TARGET))
    assert old in text
    with pytest.raises(kind) as e:
        _load(tmp_path, text.replace(old, new))
    assert f": {where}" in str(e.value) or f": {where}." in str(e.value), str(e.value)


def test_retrieval_keys_and_tables_only_in_retrieval_grids(tmp_path):
    cls = """
[experiment]
name = "c"
[grid]
models = ["tiny_cnn"]
datasets = [{ name = "fashion-mnist", n = 4 }]
"""
    with pytest.raises(ValueError, match=r"grid\.targets: only retrieval grids"):
        _load(tmp_path, cls + "targets = [1]\n")
    with pytest.raises(ValueError, match=r"grid\.datasets\[0\]\.gallery: only retrieval"):
        _load(tmp_path, cls.replace("n = 4 }", "n = 4, gallery = { n = 4 } }"))


def test_a_sub_grid_may_name_its_own_task_without_changing_the_others_keys(tmp_path):
    cls = """
[experiment]
name = "mixed"

[[grid]]
models = [{ name = "tiny_cnn", options = { channels = 1, num_classes = 10 } }]
datasets = [{ name = "fashion-mnist", split = "test", n = 8 }]
attacks = ["none", { name = "masked-pgd", steps = 2 }]
defenses = ["none", "jpeg"]
"""
    alone = [c.key for c in expand(_load(tmp_path, cls, "a.toml"))]
    extra = "\n[[grid]]\ntask = \"retrieval\"\n" + EXP.split("[grid]\n", 1)[1]
    mixed = expand(_load(tmp_path, cls + extra.replace("TARGET", str(TARGET)), "b.toml"))
    assert [c.key for c in mixed[:len(alone)]] == alone
    assert {c.config["task"] for c in mixed} == {"classification", "retrieval"}
    assert len(select(mixed, "target=3")) == 5


def test_the_bundled_retrieval_experiment_is_valid_and_its_dry_run_lists_the_cost(tmp_path):
    exp = C.load("retrieval")
    cells = expand(exp)
    lines = []
    summary = run_experiment(exp, tmp_path / "dry", dry_run=True, log=lines.append)
    assert summary.total == len(cells) and summary.ran == 0
    assert any("estimated cost" in line for line in lines)
    defenses = {c.config["defense"] for c in cells}
    assert defenses == {"none", "patchzero", "sac", "mae-defense", "lgs", "jpeg", "pair"}
    # the stronger attackers: EOT 1 / 28, BPDA, 3x iterations, on top of Table 2's EOT-7 cell
    pair_adaptive = [c for c in cells if c.config["defense"] == "pair" and c.config["adaptive"]
                     and c.config["labels"]["defense"] == "pair" and c.config["task"] == "retrieval"]
    assert len(pair_adaptive) == 5
    quick = expand(C.load("quick"))
    assert sum(c.config["task"] == "retrieval" for c in quick) == 5


# ---- artifact kinds ----------------------------------------------------------------------------
ART = """
[experiment]
name = "a"
task = "retrieval"
[artifacts.x]
kind = "KIND"
config = CONFIG
[grid]
models = ["csq_fmnist_objects_64"]
datasets = [{ name = "fmnist-objects", n = 4 }]
"""


@pytest.mark.parametrize("kind,config,match", [
    ("pair", "{ stage = 'both' }", r"artifacts\.x\.config: stage: expected one of pair, mae"),
    ("pair", "{ n_train = 0 }", r"artifacts\.x\.config"),
    ("hasher", "{ bits = 0 }", r"artifacts\.x\.config"),
    ("patchzero-images", "{ classifier = 'mobilenet_v2' }", r"artifacts\.x\.config: images"),
    ("sac-images", "{ images = { name = 'fmnist-objects', split = 'nope' } }",
     r"artifacts\.x\.config: images\.split"),
    ("sac-images", "{ images = { name = 'fmnist-objects' }, image_size = 64 }",
     r"artifacts\.x\.config: image_size: set by the artifact"),
])
def test_retrieval_artifact_configs_are_checked_on_load(tmp_path, kind, config, match):
    with pytest.raises((TypeError, ValueError, LookupError), match=match):
        _load(tmp_path, ART.replace("KIND", kind).replace("CONFIG", config))


def test_the_pair_and_mae_artifacts_of_one_config_share_one_training(tmp_path, monkeypatch):
    """Stage 1 (MAE pretraining) runs once: the "mae" artifact takes its checkpoint, the "pair"
    artifact resumes the same run folder for stage 2."""
    from patchbench.bench import artifacts_retrieval as AR
    from patchbench.training import pair as P
    monkeypatch.setenv("PATCHBENCH_HOME", str(tmp_path / "home"))
    epochs = []
    original = P._run_epoch

    def counting(stage, epoch, *a, **k):
        epochs.append((stage, epoch))
        return original(stage, epoch, *a, **k)
    monkeypatch.setattr(P, "_run_epoch", counting)
    base = {"dataset": "fmnist-objects", "dataset_options": {"size": 16}, "n_train": 8,
            "n_val": 4, "patch_size": 8, "pretrain_epochs": 1, "epochs": 1, "batch_size": 8,
            "beta": 0.0, "progress": False, "mae_options": {"dim": 16, "depth": 1, "heads": 2,
                                                             "decoder_dim": 16, "decoder_depth": 1,
                                                             "decoder_heads": 2}}
    for sub in ("m", "p"):
        (tmp_path / sub).mkdir()
    mae = AR._build_pair({**base, "stage": "mae"}, tmp_path / "m", _quiet)
    pair = AR._build_pair({**base, "stage": "pair"}, tmp_path / "p", _quiet)
    assert epochs == [(1, 0), (2, 0)]
    assert mae.name == "mae_pretrained.pt" and mae.parent == tmp_path / "m"
    assert pair.name == "pair_final.pt" and pair.is_file()
    from patchbench.defenses.pair import PAIR, MAEDefense
    assert isinstance(MAEDefense.load(mae), MAEDefense) and isinstance(PAIR.load(pair), PAIR)


def test_detector_artifacts_train_on_the_datasets_images_written_losslessly(tmp_path):
    from patchbench.bench import artifacts_retrieval as AR
    from patchbench.data import load_dataset
    from patchbench.training.patchzero import PatchZeroTrainConfig, _load_data
    cfg = {"images": {"name": "fmnist-objects", "split": "train", "size": 32},
           "classifier": "mobilenet_v2", "n_train": 6}
    spec, probe = AR._detector_config("patchzero", cfg, str(tmp_path))
    folder = AR._write_images(spec, probe.n_train, tmp_path / "images", _quiet)
    _, train_cfg = AR._detector_config("patchzero", cfg, str(folder))
    assert isinstance(train_cfg, PatchZeroTrainConfig) and train_cfg.image_size == 32
    x, _ = load_dataset("fmnist-objects", "train", n=6, size=32)
    # what the trainer reads is the dataset's images, bit for bit
    assert torch.equal(_load_data(train_cfg), (x * 255).round().to(torch.uint8))
