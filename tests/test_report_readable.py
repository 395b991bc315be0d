"""Readable reports (issue 16, Deliver 5): the key numbers come first; tables hold no raw dict or
list; plots are at least 1000 px wide with at most 6 lines a panel and 10-pt legends; every gallery
image is captioned with its prediction and confidence (a mask with its share of the image); the
defensive-patch summary is transposed (a column per model) and its label-conditional numbers are
marked with a banner and †."""
import base64
import io
import re
from html import unescape

import pytest
import torch
from PIL import Image

import test_pages as tp
import test_views_face_defensive as tv
from patchbench.bench.pages import PAGE_BUDGET, build_report
from patchbench.bench.report import LABEL_MARK, Report, figure_data_uri, format_value
from patchbench.bench.store import ResultsStore
from patchbench.bench.views import _headline, defensive
from patchbench.bench.views._common import CellNamer
from patchbench.bench.views._facepics import fbeta_figure
from patchbench.bench.views._plots import (MAX_LINES, line_figure, max_lines_per_panel,
                                           split_panels)


def _png_width(uri: str) -> int:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size[0]


def _cell(fragment: str) -> str:
    return unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


def _text(fragment: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


# ---- Report -------------------------------------------------------------------------------------
def test_the_headline_box_comes_before_any_table_whenever_it_is_added():
    rep = Report("t")
    rep.table([{"a": 1}], caption="first table")
    rep.headline([("robust accuracy", "10.0% [2.0–18.0]"), "one more <finding>"])
    html = rep.render()
    assert html.index("class='headline'") < html.index("first table")
    assert "<b>robust accuracy</b>: 10.0% [2.0–18.0]" in html
    assert "one more &lt;finding&gt;" in html                     # text is escaped


def test_cells_never_show_a_raw_list_or_dict():
    rep = Report("t")
    rep.table([{"success_ci": [0.41234, 0.90321], "eps": {"a": 0.5, "b": 2},
                "names": ["cat", "dog", "fox"], "t": torch.tensor([0.25, 0.75])}])
    body = rep.render().split("<body>", 1)[1]
    assert "[0.412, 0.903]" in body and "a: 0.500, b: 2" in body and "cat, dog, fox" in body
    assert "[0.250, 0.750]" in body
    assert "{" not in body and "'" not in _text(body) and "[0.41234" not in body
    assert format_value(float("nan")) == "–"


def test_a_label_conditional_banner_is_prominent():
    html = Report("t").banner("the true class's patch").render()
    assert "<div class='banner' role='note'>the true class&#x27;s patch</div>" in html


# ---- plots --------------------------------------------------------------------------------------
def _series(n_def=8):
    labels = ["Undefended"] + [f"D{i} — {w}" for i in range(n_def) for w in ("DO", "adaptive")]
    return {lab: [(2.0, 0.6 - 0.01 * i), (5.0, 0.3 - 0.01 * i)] for i, lab in enumerate(labels)}


def test_many_lines_become_small_multiples_of_at_most_six():
    series = _series()
    panels = split_panels(list(series))
    assert all(len(p) <= MAX_LINES for p in panels)
    assert set().union(*panels) == set(series)                   # nothing dropped
    assert all("Undefended" in p for p in panels)                # the reference in every panel
    assert all(len({lab.rsplit(" — ", 1)[1] for lab in p if " — " in lab}) == 1 for p in panels)
    fig = line_figure(series, {}, "patch area (%)", "robust accuracy (%)", "t")
    assert max_lines_per_panel(fig) <= MAX_LINES
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends and all(t.get_fontsize() >= 10 for lg in legends for t in lg.get_texts())
    assert _png_width(figure_data_uri(fig)) >= 1000


def test_a_small_plot_is_still_1000_px_wide_and_one_panel():
    fig = line_figure({"a": [(1, 0.2), (2, 0.3)], "b — DO": [(1, 0.5), (2, 0.6)]}, {}, "x",
                      "y", "t")
    assert len([ax for ax in fig.axes if ax.lines]) == 1
    assert _png_width(figure_data_uri(fig)) >= 1000


def test_fbeta_curves_of_many_attacks_keep_six_lines_a_panel():
    box = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    entries = [(f"attack {i}", {"gts": [box] * 2,
                                "dets_adv": [(box, torch.tensor([0.5 + 0.05 * i]))] * 2})
               for i in range(9)]
    fig = fbeta_figure(entries, [0.001, 0.01, 0.1, 0.5], delta=0.99)
    drawn = [ax for ax in fig.axes if ax.lines]
    assert max_lines_per_panel(fig) <= MAX_LINES and len(drawn) == 8     # 4 β × 2 columns
    labels = {ln.get_label() for ax in drawn for ln in ax.lines}
    assert {f"attack {i}" for i in range(9)} <= labels
    assert all("attack 0" in [ln.get_label() for ln in ax.lines] for ax in drawn)  # baseline
    assert _png_width(figure_data_uri(fig)) >= 1000


# ---- galleries ----------------------------------------------------------------------------------
def test_every_gallery_image_has_its_prediction_and_confidence(tmp_path):
    cells = tp._cells(areas=(0.05,))
    shown = tp._one(cells, attack="masked-pgd", defense="jpeg", adaptive=False)
    g = tp._gallery()
    g.update(conf_clean=torch.tensor([0.91, 0.82, 0.73, 0.64]),
             conf_adv=torch.tensor([0.99, 0.55, 0.5, 0.45]),
             conf_purified=torch.tensor([0.88, 0.77, 0.66, 0.6]))
    run = tp._store(tmp_path / "g", cells, failed=False, gallery={"configs": [shown], "data": g})
    html = build_report(run).read_text()
    gal = html[html.index("<h2>Galleries</h2>"):html.index("id='failed'")]
    caps = [_text(c).split() for c in re.findall(r"<figcaption>(.*?)</figcaption>", gal)]
    assert len(caps) == 16 and all(caps)                          # no image without a caption
    text = _text(gal)
    assert "→ Sandal 0.91 ✓" in text and "→ Trouser 0.99 ✗" in text and "→ Sandal 0.88 ✓" in text
    assert text.count("patch: 6.2% of the image") == 4            # 7×7 of 28×28 pixels
    assert "data:image/png" in gal or "data:image/jpeg" in gal


def test_the_page_keeps_to_its_budget_with_photo_galleries(tmp_path):
    cells = tp._cells()
    run = tp._store(tmp_path / "big", cells, failed=False,
                    gallery={"configs": [c for c, _ in cells],
                             "data": tp._gallery(size=224, channels=3)})
    html = build_report(run).read_text()
    assert len(html.encode()) < 1_000_000 and len(html) < PAGE_BUDGET
    thumbs = re.findall(r"<img src='(data:image/\w+);base64,[^']*' alt='(\w+) \d'>", html)
    photos = [fmt for fmt, key in thumbs if key in ("clean", "adv", "purified")]
    assert len(photos) > 20 and set(photos) == {"data:image/jpeg"}     # photos: JPEG
    assert {fmt for fmt, key in thumbs if key == "mask"} == {"data:image/png"}


# ---- the page's key numbers ---------------------------------------------------------------------
def test_the_run_page_opens_with_its_key_numbers(tmp_path):
    html = build_report(tp._store(tmp_path / "k", tp._cells(areas=(0.05,)), failed=False)
                        ).read_text()
    box = _text(html[html.index("<div class='headline'>"):html.index("</div>",
                                                                     html.index("</dl>"))])
    assert html.index("<div class='headline'>") < html.index("<table")
    assert "benign accuracy 90.0% [82.0–98.0] of 100 images" in box
    # undefended MPGD at 5%: robust 10.0, success over the 90 images the model got right
    assert "MPGD at 5%: success 88.9% [10.0–50.0] of the 90 images the model got right" in box
    assert "robust accuracy 10.0% [2.0–18.0] of all 100" in box
    # the best defense (the oracle is an upper bound, not a defense): JPEG, 32.5 DO, 16.2 adaptive
    assert "DO JPEG 32.5%" in box and "adaptive JPEG 16.2%" in box and "GT mask" not in box
    assert "Experiment quick" in box and "done" in box            # what ran, below the numbers


# ---- defensive patches --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dp_records(tmp_path_factory):
    run = tv._dp_run(tmp_path_factory.mktemp("dp"), tv._dp_cells())
    with ResultsStore(run, readonly=True) as s:
        return run, s.records()


def test_the_defensive_summary_is_transposed_and_marks_the_true_class_patch(dp_records):
    run, recs = dp_records
    rep = Report("t")
    defensive.render(rep, recs, CellNamer(r.config for r in recs), run)
    html = rep.render()
    assert "class='banner'" in html and "TRUE class" in html
    assert html.index("class='banner'") < html.index("<caption>Summary")
    summary = re.search(r"<caption>Summary.*?</table>", html, re.S).group(0)
    heads = [_text(h).split()[0] for h in re.findall(r"<th[^>]*>(.*?)</th>", summary)]
    assert heads == ["measure", "patch", "small", "resnet"]        # a column per model
    rows = [[_cell(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
            for tr in re.findall(r"<tr>(.*?)</tr>", summary, re.S)[1:]]
    assert len(rows) == 3 * 4 + 2 * 3                             # measures × patches + gains
    assert rows[-3] == ["PGD gain (points)", f"defensive{LABEL_MARK}", "+20.0", "+20.0"]
    assert rows[-1] == ["blank", "-10.0", "-10.0"]
    text = _text(summary)
    # small: clean none / def. 70.0 / 90.0; resnet 60.0 / 80.0 — the first rows of the table
    first = [_cell(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", summary, re.S)[:7]]
    assert first == ["clean", "none", "70.0", "60.0", f"defensive{LABEL_MARK}", "90.0", "80.0"]
    assert text.count(f"defensive {LABEL_MARK}") == 5             # each block's defensive row
    fam = re.search(r"<caption>weather corruptions.*?</table>", html, re.S).group(0)
    assert f"defensive<span class='lc'>{LABEL_MARK}</span>" in fam


def test_the_severity_plot_is_one_panel_per_model(dp_records):
    run, recs = dp_records
    (sec,) = defensive.sections(recs, run)
    fig = defensive.severity_figure(sec["rows"], "fashion-mnist")
    drawn = [ax for ax in fig.axes if ax.lines]
    assert [ax.get_title() for ax in drawn] == ["small", "resnet (held out)"]
    assert max_lines_per_panel(fig) == 4
    labels = [ln.get_label() for ln in drawn[0].lines]
    assert f"small: defensive{LABEL_MARK}" in labels
    clean_def = next(ln for ln in drawn[0].lines if ln.get_label() == f"small: defensive{LABEL_MARK}")
    assert clean_def.get_ydata()[0] == pytest.approx(90.0)           # severity 0 = clean, in %


def test_the_defensive_headline_says_label_conditional(dp_records):
    run, recs = dp_records
    lines = _headline.classification(recs, CellNamer(r.config for r in recs), run)
    assert lines[0].startswith(f"{LABEL_MARK} label-conditional")
    small = next(ln for ln in lines if ln.startswith("small on"))
    assert f"clean 70.0% → 90.0%{LABEL_MARK} (+20.0 points)" in small
    assert "resnet (held out)" in " ".join(lines)


def test_the_face_headline_gives_the_white_box_recall_and_targets():
    recs = tv._records(tv._face_cells())
    lines = _headline.face_detection(recs, CellNamer(r.config for r in recs))
    assert lines[0].startswith("MTCNN: recall 0.800 clean → 0.150 under patch-combination")
    assert sum(ln.startswith("Target — ") for ln in lines) == 2
