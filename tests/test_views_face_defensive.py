"""Report views of the bundled face-patch and defensive-patch experiments: the face view lays out
Yang et al.'s Tables 1/3 with the measured numbers, says whether each target is met, draws the
Threshold-F_β curves of Fig. 8 from the stored detections and the boxes on the stored images; the
defensive view turns cells into the former preset's rows (held-out models from the patch's training
set) and summarises them like Wang et al.'s defensive-patch evaluation; failed cells never break a
page."""
import json
import math
import re
from html import unescape

import pytest
import torch

from patchbench._io import config_fingerprint, file_fingerprint
from patchbench.bench.pages import build_report
from patchbench.bench.report import Report
from patchbench.bench.store import CellRecord, ResultsStore
from patchbench.bench.views import defensive, face_detection as fd, view_for
from patchbench.bench.views._common import CellNamer
from patchbench.bench.views._facepics import draw_boxes, fbeta_figure

BETAS = (0.001, 0.01, 0.1, 0.5)
FACE_OPTS = {"alpha": 0.3, "patch_size": 48, "delta": 0.99, "position": "top-center",
             "batch_size": 8, "lr": 0.1, "init": "noise", "strategy": "patch-combination",
             "epochs": 10, "patch": None}


def _face_cfg(model, label, **opts):
    attack = "none" if label == "none" else "face-patch"
    return {"schema": 2, "experiment": "face", "task": "face-detection", "model": model,
            "model_options": {}, "dataset": "face-composites",
            "dataset_options": {"split": "test", "offset": 0, "n": 4, "size": 192,
                                "photos": True}, "n": 4, "attack": attack,
            "attack_options": {} if attack == "none" else {**FACE_OPTS, **opts},
            "defense": "none", "defense_options": {}, "patch_area": None, "threat": None,
            "adaptive": False, "seed": 0,
            "artifacts": {opts["patch"][1:]: "0" * 16} if opts.get("patch") else {},
            "labels": {"attack": label, "defense": "none", "model": model,
                       "dataset": "face-composites"}}


def _face_metrics(p, r, on_patch=0, af=0.5, ap=0.6, faces=10):
    m = {"precision": p, "recall": r, "patch_detections": on_patch, "ap": ap, "n_faces": faces,
         "n": 5, "delta": 0.99}
    m.update({f"afbeta_{b}": af for b in BETAS})
    return m


def _face_cells(comb=(0.97, 0.15), iou=(0.8, 0.6, 2)):
    """MTCNN and Haar rows: clean P 0.9 / R 0.8; Patch-Combination and Patch-IoU as given."""
    cells = []
    for model, k in (("mtcnn", 1.0), ("haar", 0.9)):
        cells += [
            (_face_cfg(model, "none"), _face_metrics(0.9, 0.8 * k, af=0.88)),
            (_face_cfg(model, "patch-combination", strategy="patch-combination",
                       patch="@patch_combination"), _face_metrics(comb[0], comb[1] * k, af=0.12)),
            (_face_cfg(model, "noise", init="noise", epochs=0), _face_metrics(0.85, 0.6, af=0.7)),
            (_face_cfg(model, "patch-iou", strategy="patch-iou", patch="@patch_iou"),
             _face_metrics(iou[0], iou[1], iou[2], af=0.55)),
        ]
    return cells


def _records(cells):
    return [CellRecord(config_fingerprint(c), c, m, seed=0) for c, m in cells]


def _store(path, cells, failed=()):
    with ResultsStore(path) as s:
        for i, (c, m) in enumerate(cells):
            s.record(CellRecord(config_fingerprint(c), c, m, started=10.0 + i, finished=11.0 + i,
                                seconds=1.0, seed=0))
        for c in failed:
            s.record(CellRecord(config_fingerprint(c), c, {}, "failed",
                                "Traceback\nRuntimeError: detector exploded", seconds=0.1, seed=0))
    return path


def _table_rows(html, caption_start):
    """``{row label: [cell texts]}`` of the table whose caption starts with ``caption_start``."""
    m = re.search(r"<table class='paper'><caption>" + re.escape(caption_start) + r".*?</table>",
                  html, re.S)
    assert m, caption_start
    out = {}
    for row in re.findall(r"<tr>(.*?)</tr>", m.group(0), re.S)[1:]:
        cells = [unescape(re.sub(r"<[^>]+>", "", c)).strip()
                 for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        out[cells[0]] = cells[1:]
    return out


# ---- face detection -----------------------------------------------------------------------------
def test_face_view_is_the_face_detection_tasks_view():
    assert view_for("face-detection") is fd
    assert set(fd.MAIN_METRICS) <= set(_face_metrics(1, 1)) | {f"afbeta_{b}" for b in BETAS}


def test_face_tables_give_the_rows_in_table_order_with_their_numbers():
    recs = _records(_face_cells())
    rep = Report("t")
    fd.render(rep, recs, CellNamer(r.config for r in recs))
    html = rep.render()
    white = _table_rows(html, "Tables 1/3 layout: MTCNN (white-box)")
    assert list(white) == ["none", "noise", "patch-iou", "patch-combination"]
    #            kind,        P,       R,       on patch, AF×4,             AP,      faces
    assert white["patch-combination"] == ["optimised", "0.970", "0.150", "0", "0.120", "0.120",
                                          "0.120", "0.120", "0.600", "10"]
    assert white["noise"][0] == "unoptimised" and white["none"][0] == "baseline"
    haar = _table_rows(html, "Black-box transfer to HAAR (scores are all 1")
    assert haar["none"][1:3] == ["0.900", "0.720"]
    assert html.index("MTCNN (white-box)") < html.index("transfer to HAAR")


def test_targets_say_met_when_the_numbers_meet_them():
    lines = fd.targets(_records(_face_cells())[:4])
    assert len(lines) == 2
    assert "recall 0.150 vs clean 0.800 (target ≤ 0.200)" in lines[0] and \
        lines[0].endswith(": met.")
    assert "precision 0.800 vs clean 0.900, 2 detections" in lines[1] and \
        lines[1].endswith(": met.")


@pytest.mark.parametrize("comb,iou", [((0.97, 0.25), (0.9, 0.6, 2)),    # recall 0.25 > 0.2
                                      ((0.90, 0.10), (0.8, 0.6, 0))])   # P < 0.95; no det
def test_targets_say_not_met_when_a_number_misses(comb, iou):
    lines = fd.targets(_records(_face_cells(comb, iou))[:4])
    assert [ln.endswith("NOT met.") for ln in lines] == [True, True]


def test_kind_and_label_follow_the_attack_options():
    assert fd.kind_of(_face_cfg("mtcnn", "none")) == "baseline"
    assert fd.kind_of(_face_cfg("mtcnn", "x", epochs=0)) == "unoptimised"
    assert fd.kind_of(_face_cfg("mtcnn", "x", patch="@a")) == "optimised"
    assert fd.kind_of(_face_cfg("mtcnn", "x", epochs=3)) == "optimised in the cell"
    cfg = _face_cfg("mtcnn", "face-patch", init="natural", epochs=0)
    assert fd.label_of(cfg) == "natural"          # no label of its own: the initialisation


def test_fbeta_curve_of_a_perfect_detector_steps_at_its_score():
    """One face per image, found with score 0.9: F_β = 1 below logit(0.9) ≈ 2.2, 0 above
    (§4.1: F_β of the detections ≥ t; the x axis is s = logit(score), footnote 4)."""
    box = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    g = {"gts": [box, box], "dets_adv": [(box, torch.tensor([0.9]))] * 2}
    fig = fbeta_figure([("none", g)], [0.1, 0.5], delta=0.99)
    line = fig.axes[0].lines[0]
    x, y = line.get_xdata(), line.get_ydata()
    assert all(v == 1.0 for xv, v in zip(x, y) if xv < math.log(9) - 1e-6)
    assert all(v == 0.0 for xv, v in zip(x, y) if xv > math.log(9) + 1e-6)
    assert fig.axes[0].lines[-1].get_linestyle() == ":"       # logit(δ)
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_boxes_are_drawn_in_their_colours_and_only_detections_above_delta():
    img = torch.zeros(3, 100, 100)
    gt = torch.tensor([[10.0, 10.0, 40.0, 40.0]])
    dets = (torch.tensor([[60.0, 60.0, 90.0, 90.0], [60.0, 10.0, 90.0, 40.0]]),
            torch.tensor([0.995, 0.5]))
    pil = draw_boxes(img, gt, dets, torch.tensor([[20.0, 60.0, 30.0, 70.0]]), 0.99, side=100)
    assert pil.getpixel((10, 25)) == (0, 200, 0)            # ground truth: green
    assert pil.getpixel((60, 75)) == (230, 0, 0)            # detection ≥ δ: red
    assert pil.getpixel((60, 25)) == (0, 0, 0)              # detection < δ: not drawn
    assert pil.getpixel((20, 65)) == (40, 90, 255)          # patch box: blue


def _face_gallery(n_img=2, score=0.995, with_patch=True):
    box = torch.tensor([[20.0, 20.0, 60.0, 60.0]])
    g = {"kind": "face", "gts": [box] * 3, "dets_clean": [(box, torch.tensor([score]))] * 3,
         "dets_adv": [(box, torch.tensor([score]))] * 3, "patch_boxes": [torch.zeros(0, 4)] * 3,
         "images": [torch.full((3, 96, 96), 90, dtype=torch.uint8) for _ in range(n_img)],
         "index": list(range(n_img)),
         "patch": torch.randint(0, 255, (3, 48, 48), dtype=torch.uint8) if with_patch else None}
    return g


def test_face_page_with_galleries_artifact_and_a_failed_cell(tmp_path):
    cells = _face_cells()
    art = tmp_path / "patch.pt"
    torch.save({"patch": torch.rand(3, 48, 48), "seconds": 12.5, "history": [-0.2, -0.75]}, art)
    fp = file_fingerprint(art)
    for c, _ in cells:
        if "patch_iou" in c["artifacts"]:
            c["artifacts"]["patch_iou"] = fp
    failed = _face_cfg("mtcnn", "patch-score", strategy="patch-score", patch="@patch_score")
    run = _store(tmp_path / "run", cells, failed=[failed])
    (run / "experiment.json").write_text(json.dumps({"artifacts": {
        "patch_iou": {"kind": "face-patch", "source": f"file:{art}"},
        "patch_combination": {"kind": "face-patch", "source": f"file:{tmp_path / 'gone.pt'}"}}}))
    (run / "gallery").mkdir()
    for c, _ in cells:
        torch.save(_face_gallery(with_patch=c["attack"] != "none"),
                   run / "gallery" / f"{config_fingerprint(c)}.pt")
    with ResultsStore(run, readonly=True) as s:
        recs = s.records()
    rep = Report("t")
    fd.render(rep, recs, CellNamer(r.config for r in recs), run_dir=run)
    html = rep.render()
    white = _table_rows(html, "Tables 1/3 layout: MTCNN")
    assert white["patch-score"] == ["optimised", "failed"]
    assert white["patch-iou"][-2:] == ["12.5", "-0.7500"]    # from the artifact file
    assert white["patch-combination"][-2:] == ["–", "–"]      # its file is gone
    assert "Threshold-F_β (Fig. 8)" in html
    assert html.count("alt=\"\"") >= 1 + 3 + 4 * 2            # figure, 3 patches, 4 rows × 2
    assert "patch-iou: 1 det ≥ δ, 1 faces" in unescape(html)
    # the whole page, as `patchbench report` builds it today, renders too
    page = build_report(run).read_text()
    assert "Failed cells (1)" in page and "detector exploded" in page
    assert "Tables 1/3 layout: MTCNN" in page


# ---- defensive patches --------------------------------------------------------------------------
E4 = 4 / 255


def _cls_cfg(model, sticker="none", corruption=None, attack="none", eps=None, n=40):
    cfg = {"schema": 2, "experiment": "dp", "task": "classification", "model": model,
           "model_options": {}, "dataset": "fashion-mnist",
           "dataset_options": {"split": "test", "offset": 0, "n": n}, "n": n, "attack": attack,
           "attack_options": {} if attack == "none" else {"eps": eps, "batch_size": 250},
           "defense": "none", "defense_options": {}, "patch_area": 0.05,
           "threat": {"shape": "square", "placement": "random", "aspect": 1.0},
           "adaptive": False, "seed": 0, "artifacts": {},
           "labels": {"attack": attack, "defense": "none", "model": model,
                      "dataset": "fashion-mnist"}}
    if sticker != "none":
        cfg["sticker"] = {"name": sticker, "patch": "@dp"}
        cfg["artifacts"] = {"dp": "dp"}
    if corruption:
        cfg["corruption"] = {"name": corruption[0], "severity": corruption[1]}
    return cfg


def _acc(v, n=40):
    ci = [max(0.0, v - 0.1), min(1.0, v + 0.1)]
    return {"n": n, "clean_acc": v, "clean_acc_ci": ci, "robust_acc": v, "robust_acc_ci": ci}


GAIN = {"none": 0.0, "defensive": 0.2, "random": -0.05, "blank": -0.1}


def _dp_cells(models=("small", "resnet")):
    """Accuracy = base + patch gain (− 0.3 under gaussian noise 3, − 0.4 under fog 5; adversarial:
    − 0.5 under PGD, − 0.3 under FGSM, at 4/255)."""
    cells = []
    for i, model in enumerate(models):
        base = 0.7 - 0.1 * i
        for s, gain in GAIN.items():
            cells.append((_cls_cfg(model, s), _acc(base + gain)))
            cells.append((_cls_cfg(model, s, ("gaussian_noise", 3)), _acc(base + gain - 0.3)))
            cells.append((_cls_cfg(model, s, ("fog", 5)), _acc(base + gain - 0.4)))
            adv = {"pgd-linf": 0.5, "fgsm": 0.3}
            for a, drop in adv.items():
                m = {**_acc(base + gain, 20), "robust_acc": base + gain - drop,
                     "robust_acc_ci": [0.0, 1.0]}
                cells.append((_cls_cfg(model, s, attack=a, eps=E4, n=20), m))
    return cells


def _dp_run(tmp_path, cells, spec=None, failed=()):
    run = _store(tmp_path / "dp", cells, failed)
    spec = spec or {"kind": "defensive-patch", "config": {"models": ["small"]}}
    (run / "experiment.json").write_text(json.dumps({
        "artifacts": {"dp": spec},
        "grids": [{"models": [{"name": "small"}, {"name": "resnet"}]}]}))
    return run


def test_rows_are_the_former_presets_rows(tmp_path):
    cells = _dp_cells()
    rec = _records(cells)
    by = {config_fingerprint(c): r for (c, _), r in zip(cells, rec)}
    fog = by[config_fingerprint(_cls_cfg("resnet", "random", ("fog", 5)))]
    assert defensive.to_row(fog, True) == {
        "model": "resnet", "held_out": True, "patch": "random", "noise": "fog",
        "family": "weather", "severity": 5, "n": 40, "acc": pytest.approx(0.6 - 0.05 - 0.4),
        "lo": pytest.approx(0.05), "hi": pytest.approx(0.25), "dataset": "fashion-mnist"}
    pgd = by[config_fingerprint(_cls_cfg("small", "defensive", attack="pgd-linf", eps=E4, n=20))]
    assert defensive.to_row(pgd, False) == {
        "model": "small", "held_out": False, "patch": "defensive", "noise": "pgd",
        "family": "adversarial", "severity": round(E4, 6), "n": 20, "acc": pytest.approx(0.4),
        "lo": 0.0, "hi": 1.0, "dataset": "fashion-mnist"}
    clean = by[config_fingerprint(_cls_cfg("small"))]
    assert defensive.to_row(clean, False)["noise"] == "clean" and \
        defensive.to_row(clean, False)["severity"] == 0
    # the same keys, in the same order, as patchbench.defensive.evaluate's rows (+ dataset)
    assert list(defensive.to_row(clean, False)) == ["model", "held_out", "patch", "noise",
                                                    "family", "severity", "n", "acc", "lo", "hi",
                                                    "dataset"]


def test_held_out_is_the_model_outside_the_patchs_training_set(tmp_path):
    run = _dp_run(tmp_path, _dp_cells())
    with ResultsStore(run, readonly=True) as s:
        recs = s.records()
    (sec,) = defensive.sections(recs, run)
    assert sec["trained_on"] == ["small"]
    assert {(r["model"], r["held_out"]) for r in sec["rows"]} == {("small", False),
                                                                   ("resnet", True)}
    assert [r["model"] for r in sec["rows"]][:1] == ["small"] and len(sec["rows"]) == 2 * 4 * 5


def test_held_out_from_the_shipped_patchs_own_metadata(tmp_path):
    models = ("fmnist_cnn_small_stickers", "fmnist_resnet_stickers")
    cells = [(_cls_cfg(m, s), _acc(0.8)) for m in models for s in GAIN]
    from patchbench.bench.views._artifacts import artifact_file
    spec = {"kind": "defensive-patch", "source": "asset:defensive_patch_fmnist.pt"}
    run = _dp_run(tmp_path, cells, spec)
    path, why = artifact_file(run, "dp")
    assert path is not None and why == ""
    with ResultsStore(run, readonly=True) as s:
        recs = s.records()
    (sec,) = defensive.sections(recs, run)
    assert {r["model"]: r["held_out"] for r in sec["rows"]} == {
        "fmnist_cnn_small_stickers": False, "fmnist_resnet_stickers": True}
    rep = Report("t")
    defensive.render(rep, recs, CellNamer(r.config for r in recs), run)
    assert "left to right: T-shirt/top, Trouser" in rep.render()      # the patch sheet


def test_summary_numbers(tmp_path):
    from patchbench.defensive.evaluate import summarize
    run = _dp_run(tmp_path, _dp_cells())
    with ResultsStore(run, readonly=True) as s:
        recs = s.records()
    rows = defensive.rows_of(recs, run)
    small, resnet = summarize(rows)
    assert (small["model"], small["held_out"], resnet["held_out"]) == ("small", False, True)
    assert small["clean_defensive"] == pytest.approx(0.9)
    # severities 3–5: gaussian noise 3 and fog 5, mean (0.4 + 0.3) / 2 + gain
    assert small["corr_none"] == pytest.approx(0.35)
    assert small["corr_gain_defensive"] == pytest.approx(20.0)
    assert small["pgd_defensive"] == pytest.approx(0.4)
    assert resnet["pgd_gain_blank"] == pytest.approx(-10.0)
    rep = Report("t")
    defensive.render(rep, recs, CellNamer(r.config for r in recs), run)
    html = rep.render()
    summary = re.search(r"<caption>Summary.*?</table>", html, re.S).group(0)
    rows = [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr)]
            for tr in re.findall(r"<tr>(.*?)</tr>", summary, re.S)[1:]]
    # transposed: a row per measure × patch, a column per model (small, resnet)
    assert rows[0] == ["clean", "none", "70.0", "60.0"] and rows[1] == ["defensive†", "90.0", "80.0"]
    assert rows[4] == ["corruptions, sev 3–5", "none", "35.0", "25.0"] and rows[5][1:] == ["55.0", "45.0"]
    assert rows[12] == ["corruption gain (points)", "defensive†", "+20.0", "+20.0"] and rows[13][1] == "-5.0"
    assert "weather corruptions: mean accuracy (%) per severity" in html
    assert "Adversarial noise" in html and "4/255" in html
    assert "Per-class patch sheet not shown" in html                   # no file for this spec


def test_split_hands_the_defensive_cells_and_their_baselines_to_the_view():
    dp = _records(_dp_cells(("small",)))
    table1 = _records([(_cls_cfg("small", attack="masked-pgd", eps=1.0), _acc(0.3)),
                       (_cls_cfg("wide"), _acc(0.9))])
    mine, rest = defensive.split(dp + table1)
    baseline = [r for r in dp if r.config == _cls_cfg("small")]
    assert set(map(id, mine)) == set(map(id, dp))
    # the small model's benign cell is the Table-1 benign column of its masked-PGD cell too
    assert set(map(id, rest)) == set(map(id, table1 + baseline))
    assert defensive.split(table1) == ([], table1)
    # the view shows the stored images of its own cells; the shared baseline's stay the page's
    assert defensive.owns_galleries(dp + table1) == {r.key for r in dp} - {baseline[0].key}
    assert fd.owns_galleries(_records(_face_cells())) == {r.key for r in _records(_face_cells())}


def test_a_section_with_failed_cells_still_renders(tmp_path):
    bad = _cls_cfg("small", "defensive", ("fog", 3))
    run = _dp_run(tmp_path, _dp_cells(), failed=[bad])
    with ResultsStore(run, readonly=True) as s:
        recs = s.records()
    rep = Report("t")
    defensive.render(rep, recs, CellNamer(r.config for r in recs), run)
    html = rep.render()
    assert "1 cell(s) of this section failed" in html and "href='#failed'" in html
    assert "<caption>Summary" in html
    only_failed = [r for r in recs if r.status != "done"]
    rep = Report("t")
    defensive.render(rep, only_failed, CellNamer(r.config for r in only_failed), None)
    assert "No finished cell." in rep.render()


def test_stored_images_side_by_side(tmp_path):
    cells = _dp_cells()
    run = _dp_run(tmp_path, cells)
    (run / "gallery").mkdir()
    y = torch.tensor([0, 1, 2, 3])
    for c, _ in cells:
        g = {"clean": torch.randint(0, 255, (4, 1, 28, 28), dtype=torch.uint8), "y": y,
             "pred_clean": y, "class_names": [f"c{i}" for i in range(10)]}
        if c["attack"] != "none":
            g.update(adv=g["clean"], mask=torch.ones(4, 1, 28, 28, dtype=torch.uint8),
                     pred_adv=torch.tensor([0, 1, 2, 9]))
        torch.save(g, run / "gallery" / f"{config_fingerprint(c)}.pt")
    with ResultsStore(run, readonly=True) as s:
        recs = s.records()
    rep = Report("t")
    defensive.render(rep, recs, CellNamer(r.config for r in recs), run)
    html = rep.render()
    heads = re.search(r"<table class='thumbs'>.*?</tr>", html, re.S).group(0)
    assert [unescape(h) for h in re.findall(r"<th>(.*?)</th>", heads)] == [
        "clean", "patched", "gaussian_noise 3", "patched + gaussian_noise 3",
        "random + gaussian_noise 3", "PGD 4/255", "patched + PGD 4/255"]
    assert "small: the first test images" in html and "→ c9" in html
