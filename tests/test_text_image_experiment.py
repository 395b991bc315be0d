"""Text-to-image search as a harness task (issue 15, PAIR Tables 1, 3, 4; TTH, ICASSP 2023):
text-image grids validated with their table paths, one ``pb.evaluate(task="text-image")`` per cell
with the numbers of a direct call, one non-adaptive TTH patch shared by every defense, the result
rows' fields and the Table 1 / Table 4 view with its gallery.

The victim is a tiny *untrained* DualEncoder (MobileNetV2 at width 0.25, one text layer) built here
and registered as a temporary zoo entry: the numbers are those of a real cell, not of a trained
victim."""
from __future__ import annotations

import json
import re

import pytest
import torch

import patchbench as pb
from patchbench.bench import config as C
from patchbench.bench import runner
from patchbench.bench import text_image_cell as TCELL
from patchbench.bench.grid import expand
from patchbench.bench.runner import run_experiment
from patchbench.bench.store import CellRecord, ResultsStore

MODEL = "tiny_dual_encoder_test"
EXP = """
[experiment]
name = "tiny-text-image"
task = "text-image"
gallery = 1

[grid]
models = ["MODEL"]
datasets = [{ name = "fmnist-scenes", split = "query", n = 24, size = 32, ads = { n = 3 }, train = { split = "train", n = 300 } }]
keywords = ["coat"]
attacks = ["none", { name = "tth", iterations = 2 }]
defenses = ["none", { name = "jpeg", quality = 75 }]
adaptive = [false, true]
k = 5
""".replace("MODEL", MODEL)
ROW_FIELDS = ("task", "metric", "model", "dataset", "defense", "attack", "adaptive", "eot_samples",
              "patch_side", "shape", "keyword", "n_queries", "clean", "irrelevant", "relevant",
              "clean_ci", "irrelevant_ci", "relevant_ci")


def _quiet(*a, **k):
    pass


def _tiny_model(device="cpu"):
    from patchbench.data.captions import scene_captions
    from patchbench.models import Tokenizer, build_dual_encoder
    caps = [c for cs in scene_captions("query", n=24) + scene_captions("train", n=60) for c in cs]
    return build_dual_encoder(Tokenizer.from_captions(caps), input_size=32, embed_dim=16,
                              width=16, layers=1, heads=2, trainable_from=0, pretrained=False,
                              width_mult=0.25, name=MODEL, seed=0).to(device).eval()


@pytest.fixture(scope="module", autouse=True)
def tiny_zoo_entry():
    """A temporary zoo entry of kind "text-image" whose loader builds the tiny dual encoder."""
    from torch import nn

    from patchbench.models import zoo

    def loader(weights=None, device="cpu", seed=0, input_size=32):
        return _tiny_model(device)
    zoo.register(zoo.ModelSpec(MODEL, build=lambda input_size=32: nn.Identity(),
                               preprocess=lambda input_size=32: ((0.5,) * 3, (0.5,) * 3,
                                                                 (input_size,) * 2, 3, ()),
                               pretrained_required=False, kind="text-image", loader=loader))
    yield
    zoo._REGISTRY.pop(MODEL, None)
    zoo._FOLDED.pop(zoo.normalize_name(MODEL), None)


def _load(tmp_path, text=EXP, name="exp.toml"):
    p = tmp_path / name
    p.write_text(text)
    return C.load(p)


def _clear_caches():
    for cache in (runner._ATTACKS, runner._DATA, runner._MODELS, TCELL._GALLERY, TCELL._ADS,
                  TCELL._TRAIN_CAPTIONS):
        cache.clear()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_zoo_entry):
    """The tiny experiment run once, counting TTH trainings."""
    from patchbench.attacks.tth import TTH
    tmp = tmp_path_factory.mktemp("text_image")
    exp = _load(tmp)
    _clear_caches()
    fits = []
    original = TTH.fit

    def counting(self, *a, **k):
        fits.append(1)
        return original(self, *a, **k)
    TTH.fit = counting
    try:
        summary = run_experiment(exp, tmp / "out", log=_quiet)
    finally:
        TTH.fit = original
    with ResultsStore(tmp / "out", readonly=True) as store:
        recs = {r.key: r for r in store.records()}
    return {"exp": exp, "summary": summary, "records": recs, "fits": len(fits), "dir": tmp / "out",
            "cells": expand(exp)}


def _cell(run, defense, attack, adaptive):
    return next(c for c in run["cells"] if c.config["defense"] == defense and
                c.config["attack"] == attack and c.config["adaptive"] == adaptive)


# ---- running -----------------------------------------------------------------------------------
def test_the_tiny_experiment_runs_every_cell_and_rows_carry_the_table_1_fields(run):
    failed = [r.error for r in run["records"].values() if r.status != "done"]
    assert not failed, failed[0]
    assert run["summary"].line() == "cells total=5 done=5 failed=0 ran=5"
    rows = json.loads((run["dir"] / "results.json").read_text())
    assert len(rows) == 5
    for r in rows:
        assert all(f in r for f in ROW_FIELDS), [f for f in ROW_FIELDS if f not in r]
        assert r["task"] == "text-image" and r["metric"] == "r@5" and r["model"] == MODEL
        assert r["dataset"] == "fmnist-scenes" and r["keyword"] == "coat" and r["k"] == 5
        assert 0 <= r["clean"] <= 1 and 0 <= r["irrelevant"] <= 1 and r["n_ads"] == 3
    attacked = [r for r in rows if r["attack"] == "tth"]
    assert {(r["defense"], r["adaptive"]) for r in attacked} == {("none", False), ("jpeg", False),
                                                                  ("jpeg", True)}
    # the queries are the gallery captions with the keyword (TTH's protocol)
    from patchbench.data.captions import keyword_captions
    n_q = len(keyword_captions("coat", "query", n=24))
    assert all(r["n_queries"] == n_q for r in rows)
    # TTH's default threat: 0.35 of the side at the top-right corner (32 px: an 11-px square)
    assert all(r["eot_samples"] == 1 and r["shape"] == "square" and
               r["patch_side"] == round(11 / 32, 4) and r["threat.placement"] == [1.0, 0.0]
               for r in attacked)
    assert all(r["eot_samples"] is None and r["patch_side"] is None
               for r in rows if r["attack"] == "none")


def test_the_do_cells_share_one_patch(run):
    # one DO training shared by the undefended and the JPEG cell, one adaptive (against JPEG)
    assert run["fits"] == 2
    assert len(list((run["dir"] / "cache" / "attacks").glob("*.pt"))) == 1
    do = [run["records"][_cell(run, d, "tth", False).key] for d in ("none", "jpeg")]
    assert [r.metrics["attacker"] for r in do] == ["DO", "DO"]
    assert run["records"][_cell(run, "jpeg", "tth", True).key].metrics["attacker"] != "DO"


def _direct(defense, adaptive):
    """The cell computed by hand: the same gallery, ads, captions, model, attack and seed."""
    from patchbench.attacks.tth import TTH, tth_threat
    from patchbench.data import load_dataset
    from patchbench.data.captions import ad_images, keyword_captions, scene_captions
    from patchbench.defenses import JPEG
    x, _ = load_dataset("fmnist-scenes", "query", n=24, size=32)
    caps = scene_captions("query", n=24)
    ads = ad_images("coat", n=3, size=32)
    train = [c for _, c in keyword_captions("coat", "train", n=300)]
    d = JPEG(quality=75) if defense == "jpeg" else None
    ev = pb.evaluate(_tiny_model(), ads, None, attack=TTH(iterations=2), defense=d,
                     threat=tth_threat((32, 32)), adaptive=adaptive, generator=0,
                     task="text-image", gallery=(x, caps), k=5, keyword="coat",
                     train_captions=train)
    return ev.metrics()


@pytest.mark.parametrize("defense,adaptive", [("jpeg", False), ("jpeg", True)])
def test_a_cell_has_the_numbers_of_a_direct_evaluate_call(run, defense, adaptive):
    stored = run["records"][_cell(run, defense, "tth", adaptive).key].metrics
    direct = _direct(defense, adaptive)
    for key in ("clean", "irrelevant", "relevant", "n_queries", "eot_samples", "patch_side",
                "shape", "attacker", "keyword"):
        assert stored[key] == direct[key], key


def test_the_cell_gallery_marks_the_ads_in_the_top_k(run):
    key = _cell(run, "none", "tth", False).key
    g = torch.load(run["dir"] / "gallery" / f"{key}.pt", weights_only=True)
    assert g["kind"] == "text-image" and g["keyword"] == "coat" and len(g["queries"]) == 1
    assert g["before"]["index"].shape == (1, 5) and g["after"]["images"].shape == (1, 5, 3, 32, 32)
    assert not bool(g["before"]["ad"].any())          # no ad in the clean gallery
    assert torch.equal(g["after"]["ad"], g["after"]["index"] >= g["n_gallery"])
    assert g["ads_adv"].shape == (3, 3, 32, 32) and g["patch"].shape == (3, 11, 11)
    # the same query is shown for every DO cell of the keyword (one shared patch)
    other = torch.load(run["dir"] / "gallery" / f"{_cell(run, 'jpeg', 'tth', False).key}.pt",
                       weights_only=True)
    assert other["queries"] == g["queries"] and "ads_purified" in other
    assert torch.equal(other["ads_adv"], g["ads_adv"])
    # the cells leave the shared model in eval mode (BatchNorm statistics untouched)
    assert not any(m.training for m in runner._MODELS.values())


def test_the_report_has_table_1_and_a_gallery(run):
    from patchbench.bench.pages import build_report
    page = build_report([run["dir"]]).read_text()
    assert "Table 1" in page and "Text-to-image search under TTH" in page
    head = re.search(r"<tr><th class='t' rowspan='2'>Defense</th>.*?</tr><tr>.*?</tr>", page).group(0)
    assert re.findall(r"<th[^>]*>([^<]+)</th>", head) == [
        "Defense", "Clean ↑", "Adaptive", "Non-adaptive", "Irrelevant ↓", "Relevant ↑",
        "Irrelevant ↓", "Relevant ↑"]
    table = page[page.index("Table 1"):]
    table = table[:table.index("</table>")]
    assert table.index("Undefended") < table.index("JPEG")
    assert "Galleries" in page and "ads added" in page


# ---- the view ----------------------------------------------------------------------------------
def _record(defense, attack="tth", adaptive=False, irrelevant=0.5, options=None, label="",
            attack_options=None, keyword="coat", area=0.1225, shape="square",
            placement=(1.0, 0.0), aspect=1.0, clean=0.7):
    import hashlib
    opts = dict(options or {})
    cfg = {"task": "text-image", "model": "dual", "dataset": "fmnist-scenes", "model_options": {},
           "dataset_options": {"split": "query", "n": 300}, "seed": 0, "keyword": keyword, "k": 10,
           "attack": attack,
           "attack_options": {"iterations": 30, **(attack_options or {})} if attack != "none" else {},
           "defense": defense, "defense_options": opts, "patch_area": area,
           "threat": {"shape": shape, "placement": list(placement) if isinstance(placement, tuple)
                      else placement, "aspect": aspect},
           "adaptive": adaptive, "n": 300, "labels": {"defense": label or defense, "attack": attack}}
    m = {"clean": clean, "irrelevant": irrelevant, "relevant": 0.3, "n_queries": 90, "k": 10,
         "keyword": keyword, "seconds": 1.0,
         "eot_samples": opts.get("eot_samples", 7 if defense == "pair" else 1) if attack != "none"
         else None}
    key = json.dumps([defense, attack, adaptive, opts, label, attack_options, keyword, area, shape,
                      placement])
    return CellRecord(key=hashlib.sha1(key.encode()).hexdigest()[:20], config=cfg, metrics=m,
                      status="done")


def test_the_view_averages_keywords_orders_rows_and_lists_ablations_table_4_and_attackers():
    from patchbench.bench.report import Report
    from patchbench.bench.views import CellNamer, view_for
    view = view_for("text-image")
    assert view.TASK == "text-image"
    recs = [_record("none", "none", keyword=kw, clean=c) for kw, c in (("coat", 0.8), ("blue", 0.6))]
    recs += [_record("none", irrelevant=v, keyword=kw) for kw, v in (("coat", 0.9), ("blue", 0.7))]
    recs += [_record("pair", "none", keyword=kw, clean=0.69) for kw in ("coat", "blue")]
    recs += [_record("pair", adaptive=a, irrelevant=0.02, keyword=kw)
             for kw in ("coat", "blue") for a in (False, True)]
    recs += [_record("pair", adaptive=True, irrelevant=0.3, options={"eot_samples": 28}),
             _record("pair", adaptive=True, irrelevant=0.6, options={"mask": "fixed"},
                     label="fixed mask"),
             _record("jpeg", "none"), _record("jpeg", irrelevant=0.8)]
    # Table 4: the same context and attack under other threats (one keyword)
    for area, shape, place, aspect in ((0.0459, "square", (1.0, 0.0), 1.0),
                                       (0.1276, "rectangle", (1.0, 0.0), 4.0),
                                       (0.1268, "circle", (1.0, 0.0), 1.0),
                                       (0.1276, "square", "random", 1.0)):
        kw = dict(area=area, shape=shape, placement=place, aspect=aspect)
        recs += [_record("none", irrelevant=0.95, **kw), _record("pair", irrelevant=0.01, **kw),
                 _record("pair", adaptive=True, irrelevant=0.2 if shape == "circle" else 0.03,
                         **kw)]
    rep = Report("t")
    view.render(rep, recs, CellNamer(r.config for r in recs))
    page = rep.render()
    t1 = page[page.index("<caption>Table 1"):]
    t1 = t1[:t1.index("</table>")]
    assert "mean over the keywords blue, coat" in t1
    assert t1.index("Undefended") < t1.index("JPEG") < t1.index("PAIR") and "fixed mask" not in t1
    # the undefended irrelevant R@10 is the mean of the keywords' 90 % and 70 %, range shown
    assert "<b>80.0</b>" in t1 and "70.0–90.0" in t1
    assert "PAIR clean R@10 69.0% vs undefended 70.0%: 1.0 points lower (target ≤ 3 points lower): met" in page
    assert "PAIR ablations (Table 3" in page and "Per keyword" in page
    strong = page[page.index("under stronger TTH attackers"):]
    strong = strong[:strong.index("</table>")]
    row = next(r for r in strong.split("<tr>") if "strongest" in r)
    assert "EOT 28" in row
    assert "undefended TTH irrelevant R@10 80.0% (target ≥ 80%): met" in page
    assert "PAIR under the adaptive attacker (EOT 7) irrelevant 2.0% (target ≤ 5%): met" in page
    t4 = page[page.index("<caption>Table 4"):]
    t4 = t4[:t4.index("</table>")]
    for text in ("square 48×48 of 224", "rectangle 40×160 of 224", "circle radius 45 of 224",
                 "random position", "top-right"):
        assert text in t4, text
    # PAIR Table 4's row order: sizes, the rectangle, the circle, random positions
    rows = [t4.index(t) for t in ("square 48×48", "square 78×78", "rectangle 40×160",
                                  "circle radius 45", "random position")]
    assert rows == sorted(rows)
    assert "NOT met at circle radius 45 of 224" in page


# ---- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize("old,new,kind,where", [
    ('keywords = ["coat"]', 'keywords = ["horse"]', LookupError, "grid.keywords[0]"),
    ('keywords = ["coat"]', 'keywords = []', ValueError, "grid.keywords"),
    ('keywords = ["coat"]\n', '', ValueError, "grid.keywords"),
    ('keywords = ["coat"]', 'keywords = [3]', TypeError, "grid.keywords[0]"),
    ("ads = { n = 3 }", "ads = { n = 0 }", ValueError, "grid.datasets[0].ads.n"),
    ("ads = { n = 3 }", "ads = { n = 3, size = 2 }", ValueError, "grid.datasets[0].ads"),
    ('train = { split = "train", n = 300 }', 'train = { split = "test" }', LookupError,
     "grid.datasets[0].train.split"),
    ('train = { split = "train", n = 300 }', 'train = { n = 20000 }', ValueError,
     "grid.datasets[0].train.n"),
    ('name = "fmnist-scenes"', 'name = "fmnist-objects"', LookupError, "grid.datasets[0]"),
    ("n = 24,", "n = 5000,", ValueError, "grid.datasets[0].n"),
    ("k = 5", "k = 0", ValueError, "grid.k"),
    ("k = 5", "k = 25", ValueError, "grid.k"),
    ("k = 5", "k = 5\ntargets = [3]", ValueError, "grid.targets"),
    ('"none", { name = "tth"', '"none", { name = "advhash" }, { name = "tth"', ValueError,
     "grid.attacks[1]"),
    ('{ name = "tth", iterations = 2 }', '{ name = "tth", iterations = 0 }', ValueError,
     "grid.attacks[1]"),
    ('{ name = "jpeg", quality = 75 }', '"patchcleanser"', ValueError, "grid.defenses[1]"),
    (f'models = ["{MODEL}"]', 'models = ["csq_fmnist_objects_64"]', LookupError, "grid.models[0]"),
    (f'models = ["{MODEL}"]', f'models = [{{ name = "{MODEL}", weights = 3 }}]', TypeError,
     "grid.models[0].weights"),
    ("k = 5", "k = 5\nthreats = [{ area = 2.0 }]", ValueError, "grid.threats[0]"),
])
def test_config_errors_name_the_table_path(tmp_path, old, new, kind, where):
    assert old in EXP
    with pytest.raises(kind) as e:
        _load(tmp_path, EXP.replace(old, new))
    assert f": {where}" in str(e.value), str(e.value)


def test_threats_default_to_tth_and_keywords_are_an_axis_only_of_text_image_grids(tmp_path):
    exp = _load(tmp_path, EXP.replace('keywords = ["coat"]', 'keywords = ["coat", "Blue"]')
                + 'threats = [{}, { shape = "circle", area = 0.1268 }, { placement = "random" }]\n')
    cells = expand(exp)
    assert {c.config["keyword"] for c in cells} == {"coat", "blue"}
    threats = {(c.config["patch_area"], c.config["threat"]["shape"],
                str(c.config["threat"]["placement"])) for c in cells}
    assert threats == {(0.1225, "square", "[1.0, 0.0]"), (0.1268, "circle", "[1.0, 0.0]"),
                       (0.1225, "square", "random")}
    # the keyword is in the key, and an override may select it
    assert len({c.key for c in cells}) == len(cells) == 2 * 3 * 5
    skip = '[[override]]\nwhere = { keyword = "blue" }\nset = { skip = true }\n'
    kept = expand(_load(tmp_path, EXP.replace('keywords = ["coat"]', 'keywords = ["coat", "blue"]')
                        + skip, "s.toml"))
    assert {c.config["keyword"] for c in kept} == {"coat"} and len(kept) == 5
    cls = """
[experiment]
name = "c"
[grid]
models = ["fmnist_cnn_small"]
datasets = [{ name = "fashion-mnist", split = "test", n = 4 }]
keywords = ["coat"]
"""
    with pytest.raises(ValueError, match=r"grid\.keywords: only text-image grids"):
        _load(tmp_path, cls, "c.toml")


def test_the_dry_run_estimates_the_text_image_cells(tmp_path):
    exp = _load(tmp_path)
    lines = []
    summary = run_experiment(exp, tmp_path / "dry", dry_run=True, log=lines.append)
    assert summary.total == 5 and summary.ran == 0
    costs = {c.label: runner.estimate_passes(c.config) for c in expand(exp)}
    # 24 gallery images + 3 ads per benign cell; the adaptive cell pays 2 iterations × 3 ads × 2
    assert min(costs.values()) == 27.0
    assert any("keyword=coat" in label for label in costs)
    assert any("estimated cost" in line for line in lines)


def test_the_bundled_retrieval_experiment_has_the_text_image_tables(tmp_path):
    exp = C.load("retrieval")
    cells = [c for c in expand(exp) if c.config["task"] == "text-image"]
    assert {c.config["model"] for c in cells} == {"dual_encoder_fmnist_scenes"}
    blue = [c for c in cells if c.config["keyword"] == "blue"]      # Table 1s alone have "blue"
    t1 = [c for c in blue if c.config["attack"] == "none"
          or c.config["attack_options"]["patches"] == "universal"]
    assert {c.config["defense"] for c in t1} == {"none", "patchzero", "sac", "mae-defense", "lgs",
                                                 "jpeg", "pair"} and len(t1) == 7 + 7 + 6
    # Table 1 under the stronger per-ad TTH (benign cells shared): undefended DO, JPEG and PAIR
    # DO + adaptive, PAIR from the scenes generator with the dual encoder's D
    per_ad = [c for c in blue if c not in t1]
    assert len(per_ad) == 5 and {c.config["attack_options"]["targets"] for c in per_ad} == {
        "clusters"}
    assert {c.config["defense_options"].get("checkpoint") for c in per_ad
            if c.config["defense"] == "pair"} == {"@pair_scenes"}
    # Table 4: PAIR's six patch sizes / shapes / placements, plus TTH's own threat
    threats = {(round(c.config["patch_area"], 4), c.config["threat"]["shape"],
                str(c.config["threat"]["placement"])) for c in cells}
    assert threats == {(0.1225, "square", "[1.0, 0.0]"), (0.0459, "square", "[1.0, 0.0]"),
                       (0.1276, "square", "[1.0, 0.0]"), (0.25, "square", "[1.0, 0.0]"),
                       (0.1276, "rectangle", "[1.0, 0.0]"), (0.1268, "circle", "[1.0, 0.0]"),
                       (0.1276, "square", "random")}
    # the stronger attackers on PAIR: EOT 1 / 7 / 28, BPDA and 3× iterations
    strong = [c for c in cells if c.config["defense"] == "pair" and c.config["adaptive"] and
              c.config["patch_area"] == 0.1225 and c.config["keyword"] == "coat" and
              c.config["labels"]["defense"] == "pair" and c not in per_ad
              and c.config["attack_options"]["patches"] == "universal"]
    assert len(strong) == 5
    lines = []
    run_experiment(exp, tmp_path / "dry", dry_run=True, log=lines.append)
    assert sum("keyword=coat" in line for line in lines) == len(cells) - len(blue)
