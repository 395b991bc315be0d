"""`patchbench report`: the page of a run shows the PatchZero Table 1 layout with intervals, plots,
galleries (JPEG thumbnails) and the failed cells; several runs get a comparison page with deltas; a
page with many galleries stays under 1 MB; a folder without a store is a clear error."""
import copy
import re
from html import unescape

import pytest
import torch

from patchbench._io import config_fingerprint
from patchbench.bench.pages import GALLERY_BUDGET, build_report, main_report
from patchbench.bench.store import CellRecord, ResultsStore, StoreError

PGD = {"eps": 1.0, "step_size": 0.01, "steps": 20, "loss": "ce", "restarts": 1}
APGD = {"eps": 0.3, "steps": 20, "loss": "ce", "rho": 0.75}
DEFENSES = {"none": {}, "jpeg": {"quality": 75}, "lgs": {"window": 5, "overlap": 2,
                                                          "smoothing_factor": 2.3},
            "gt-mask": {"fill": None}}
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle boot"]


def _config(attack="none", defense="none", adaptive=False, area=0.05, steps=20, seed=0, n=100,
            model="fmnist_cnn_small", task="classification"):
    opts = {} if attack == "none" else dict(PGD if attack == "masked-pgd" else APGD, steps=steps)
    return {"schema": 1, "experiment": "quick", "task": task, "model": model, "model_options": {},
            "dataset": "fashion-mnist", "dataset_options": {"split": "test", "offset": 0}, "n": n,
            "attack": attack, "attack_options": opts, "defense": defense,
            "defense_options": dict(DEFENSES.get(defense, {})), "patch_area": area,
            "threat": {"shape": "square", "placement": "random", "aspect": 1.0},
            "adaptive": adaptive, "seed": seed, "artifacts": {},
            "labels": {"attack": attack, "defense": defense, "model": model,
                       "dataset": "fashion-mnist"}}


def _metrics(clean, robust, n=100, attacker="DO", lo=0.08):
    ci = lambda v: [max(0.0, v - lo), min(1.0, v + lo)]  # noqa: E731
    m = {"n": n, "clean_acc": clean, "clean_acc_ci": ci(clean), "robust_acc": robust,
         "robust_acc_ci": ci(robust), "asr": 1 - robust / clean, "asr_ci": [0.1, 0.5],
         "asr_n": int(n * clean), "attacker": attacker, "seconds": 1.25}
    return m


def _cells(areas=(0.02, 0.05), steps=(20,)):
    """(config, metrics) of a small PatchZero-Table-1 grid; robust accuracy falls with the area."""
    out = []
    for area in areas:
        for d in DEFENSES:
            clean = {"none": 0.9, "jpeg": 0.88, "lgs": 0.85, "gt-mask": 0.9}[d]
            out.append((_config("none", d, area=area), _metrics(clean, clean, attacker="none")))
            for a in ("masked-pgd", "masked-apgd"):
                for s in steps:
                    drop = area * 6 + (0.001 * s if len(steps) > 1 else 0)
                    robust = {"none": 0.4, "jpeg": 0.625, "lgs": 0.55, "gt-mask": 0.875}[d] - drop
                    out.append((_config(a, d, area=area, steps=s), _metrics(clean, robust)))
                    if d != "none":
                        out.append((_config(a, d, True, area=area, steps=s),
                                    _metrics(clean, robust / 2, n=50,
                                             attacker="adaptive (BPDA identity)")))
    return out


def _store(path, cells, failed=True, gallery=None):
    with ResultsStore(path) as s:
        for i, (cfg, met) in enumerate(cells):
            s.record(CellRecord(config_fingerprint(cfg), cfg, met, started=1000.0 + i,
                                finished=1001.0 + i, seconds=1.0, seed=cfg["seed"]))
        if failed:
            cfg = _config("masked-cw", "patchzero", True)
            s.record(CellRecord(config_fingerprint(cfg), cfg, {}, "failed",
                                "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                                "RuntimeError: the detector <checkpoint> is missing",
                                started=2000.0, finished=2000.5, seconds=0.5, seed=0))
    if gallery is not None:
        (path / "gallery").mkdir(exist_ok=True)
        for cfg in gallery["configs"]:
            torch.save(gallery["data"], path / "gallery" / f"{config_fingerprint(cfg)}.pt")
    return path


def _gallery(n=4, size=28, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([(yy * (k + 1)) % 1 * 0.6 + xx * 0.4 for k in range(channels)])
    clean = ((base.expand(n, -1, -1, -1) * 0.9 + 0.1 * torch.rand(n, channels, size, size,
                                                                    generator=g)) * 255).byte()
    mask = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    mask[:, :, 2:2 + size // 4, 3:3 + size // 4] = 255
    adv = torch.where(mask.bool(), torch.full_like(clean, 250), clean)
    return {"clean": clean, "adv": adv, "mask": mask, "purified": torch.where(mask.bool(), 128, clean),
            "y": torch.tensor([5, 8, 0, 9][:n]), "pred_clean": torch.tensor([5, 8, 0, 7][:n]),
            "pred_adv": torch.tensor([1, 1, 1, 1][:n]), "pred_purified": torch.tensor([5, 8, 2, 9][:n]),
            "class_names": NAMES}


def _one(cells, **kw):
    return next(c for c, _ in cells if all(c[k] == v for k, v in kw.items()))


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    cells = _cells()
    shown = _one(cells, attack="masked-pgd", defense="jpeg", adaptive=False, patch_area=0.05)
    return _store(tmp_path_factory.mktemp("run") / "quick", cells,
                  gallery={"configs": [shown], "data": _gallery()})


def test_page_has_the_table_layout_with_intervals(run_a):
    page = build_report(run_a)
    html = page.read_text()
    assert page == run_a / "index.html"
    # one table per (model, dataset, area), rows = defenses with the oracle last
    assert html.count("<table class='paper'>") == 2
    assert "fmnist_cnn_small on fashion-mnist — patch area 5% (square, random)" in html
    t5 = html[html.index("patch area 5%"):]
    t5 = t5[:t5.index("</table>")]
    rows = re.findall(r"<tr[^>]*><td class='t'>([^<]+)</td>", t5)
    assert rows == ["Undefended", "JPEG", "LGS", "PatchZero", "GT mask (oracle)"]
    assert "<a class='bad' href='#failed'>failed</a>" in t5       # the failed cell's place
    assert "MPGD<br><small>DO / adaptive</small>" in t5 and "MAPGD" in t5
    # JPEG at 5%: DO 62.5 - 30 = 32.5, adaptive half of it; their intervals; n differs (100 / 50)
    assert "<b>32.5</b> / <b>16.2</b>" in t5 or "<b>32.5</b> / <b>16.3</b>" in t5
    assert "[24.5–40.5]" in t5 and "[8.2–24.2] · adaptive n=50<" in t5         # n where it differs
    assert "n = 100 images per cell unless marked" in t5
    assert "<b>88.0</b>" in t5                       # benign accuracy of the JPEG row
    assert "BPDA identity" in t5                      # the adaptive attacker's gradient rule
    assert "{" not in re.sub(r"<style>.*?</style>", "", html, flags=re.S)   # no dict dumped
    # the headline says what ran
    head = html[:html.index("Benign and robust accuracy")]
    assert "quick" in head and "fmnist_cnn_small" in head and "classification" in head
    assert "<b>36</b> done" in head and "<b>1</b> failed" in head and "compute" in head


def test_page_lists_the_failed_cell_with_its_traceback(run_a):
    html = build_report(run_a).read_text()
    failed = html[html.index("id='failed'"):]
    assert "RuntimeError: the detector &lt;checkpoint&gt; is missing" in failed
    assert "<details>" in failed and "most recent call last" in failed
    assert "MCW" in failed and "PatchZero" in failed and "adaptive" in failed


def test_page_has_plots_vs_area_and_a_gallery_with_class_names(run_a):
    html = build_report(run_a).read_text()
    assert "Robust accuracy vs patch area" in html
    assert html.count("<figure class=\"plot\">") == 2          # one per attack
    assert "vs attack steps" not in html                       # one steps value: no plot
    gal = html[html.index("<h2>Galleries</h2>"):html.index("id='failed'")]
    assert gal.count("<img") == 16                             # 4 images × clean/patched/mask/purified
    assert "→ Sandal" in gal and "true: Ankle boot" in gal and "→ Trouser" in gal
    assert "area 5% (square, random) · MPGD DO · seed 0" in gal and "purified: JPEG" in gal


def test_steps_plot_only_when_the_grid_has_several_steps(tmp_path):
    html = build_report(_store(tmp_path / "s", _cells(areas=(0.05,), steps=(10, 100)),
                               failed=False)).read_text()
    assert "Robust accuracy vs attack steps" in html and "vs patch area" not in html
    assert "MPGD (steps=10)" in html and "MPGD (steps=100)" in html    # the varying option labels
    assert not re.search(r"\b(eps|step_size)=", html)      # the shared defaults are not


def test_many_photo_galleries_stay_under_a_megabyte(tmp_path):
    cells = _cells()
    data = _gallery(size=224, channels=3)
    run = _store(tmp_path / "big", cells, failed=False,
                 gallery={"configs": [c for c, _ in cells], "data": data})
    html = build_report(run).read_text()
    assert len(html.encode()) < 1_000_000
    assert "data:image/jpeg;base64," in html                  # photos are JPEG thumbnails
    assert "more galleries not shown" in html
    assert len(html.encode()) > GALLERY_BUDGET * 0.8           # ...and the budget is used


def test_comparison_page_shows_deltas_and_cells_of_one_run(tmp_path):
    cells = _cells(areas=(0.05,))
    a = _store(tmp_path / "a", cells, failed=False)
    changed = copy.deepcopy(cells)
    for cfg, met in changed:
        if cfg["defense"] == "lgs" and cfg["attack"] == "masked-pgd" and not cfg["adaptive"]:
            met["robust_acc"] += 0.2                             # 25.0 → 45.0: beyond the intervals
            met["robust_acc_ci"] = [met["robust_acc"] - 0.08, met["robust_acc"] + 0.08]
        if cfg["defense"] == "jpeg" and cfg["attack"] == "none":
            met["clean_acc"] += 0.01                             # within the intervals
    extra = (_config("masked-pgd", "wlgs"), _metrics(0.8, 0.4))
    b = _store(tmp_path / "b", changed[1:] + [extra], failed=False)
    page = build_report([a, b])
    assert page == tmp_path / "comparison" / "index.html"
    assert (tmp_path / "comparison" / "a" / "index.html").is_file()
    assert not (a / "index.html").exists()                       # the runs are left untouched
    html = page.read_text()
    assert "+20.0 *" in html and "+1.0<" in html
    assert f"{len(cells) - 1} cells in at least two runs (all: model fmnist_cnn_small" in html
    assert "; 2 differ in benign acc, robust acc; 1 by more than their 95% intervals (*)" in html
    assert "The 2 cells that differ" in html and f"All {len(cells) - 1} shared cells" in html
    assert "Only in a: 1 cells" in html and "Only in b: 1 cells" in html and "WLGS" in html
    assert "href='a/index.html'" in html


def test_unknown_task_gets_the_generic_table(tmp_path):
    cfg = _config("masked-pgd", "jpeg", task="segmentation")
    with ResultsStore(tmp_path) as s:
        s.record(CellRecord("k1", cfg, {"n": 8, "map": 0.4375, "seconds": 2.0}, seed=0))
    html = unescape(build_report(tmp_path).read_text())
    assert "No report view for the task 'segmentation'" in html and "0.438" in html


def test_a_folder_without_a_store_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"run_dirs: .*empty.* has no results store"):
        build_report(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report([tmp_path / "nope"])
    with pytest.raises(ValueError, match="at least one"):
        build_report([])
    with pytest.raises(TypeError, match="run_dirs"):
        build_report(3)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="out_dir"):
        build_report(_store(tmp_path / "ok", _cells(areas=(0.05,)), failed=False),
                     out_dir=tmp_path / "file")
    with pytest.raises(ValueError, match="given twice"):
        build_report([tmp_path / "ok", tmp_path / "ok" / "."])
    with pytest.raises(SystemExit) as e:
        main_report([str(tmp_path / "empty")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "DIR:" in err and "empty" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.db").write_text("not sqlite")
    with pytest.raises(StoreError, match="not a patchbench results store"):
        build_report(tmp_path / "bad")


def test_cli_writes_the_page_and_opens_it(tmp_path, monkeypatch, capsys):
    run = _store(tmp_path / "r", _cells(areas=(0.05,)), failed=False)
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    assert main_report([str(run), "--open"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {run / 'index.html'}"
    assert opened == [(run / "index.html").resolve().as_uri()]


def test_views_dispatch_by_task_with_a_generic_fallback():
    from patchbench.bench import views
    from patchbench.bench.views import classification, generic

    assert views.view_for("Classification") is classification
    assert views.view_for("segmentation") is generic and views.view_for("../x") is generic
    assert views.view_for("_common") is generic          # helper modules are not views
    assert views.main_metrics("classification") == ["clean_acc", "robust_acc"]


def test_nan_metrics_read_as_a_dash_not_nan(tmp_path):
    cfg = _config("masked-pgd", "jpeg")
    met = dict(_metrics(0.5, 0.0), asr=float("nan"), asr_ci=[float("nan"), float("nan")],
               robust_acc_ci=[float("nan"), float("nan")])
    with ResultsStore(tmp_path) as s:
        s.record(CellRecord("k1", cfg, met, seed=0))
    html = build_report(tmp_path).read_text()
    body = html[html.index("Benign and robust accuracy"):]       # (the headline names tmp_path)
    assert "nan" not in body.lower() and "<b>0.0</b>" in body and "[42.0–58.0]" in body


def test_report_keeps_the_shared_atomic_writer():
    from patchbench import _io
    from patchbench.bench import report

    assert report.atomic_write_text is _io.atomic_write_text
