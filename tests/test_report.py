"""Reports are self-contained: tables, embedded PNG galleries and plots in one HTML file; JSON/CSV
writers are atomic and turn NaN into null."""
import json
import math

import torch

from patchbench.bench.report import GalleryItem, Report, png_data_uri, write_csv, write_json


def test_report_embeds_tables_and_images_in_one_file(tmp_path):
    rep = Report("t <1>")
    rep.table([{"model": "m", "acc": 0.5}, {"model": "n", "acc": float("nan")}], caption="c")
    rep.gallery([GalleryItem(torch.rand(3, 8, 8), "x & y"), GalleryItem(torch.rand(1, 8, 8), "g")])
    path = rep.save(tmp_path / "r")
    html = path.read_text()
    assert path.name == "index.html"
    assert html.count("data:image/png;base64,") == 2 and "src=\"http" not in html
    assert "t &lt;1&gt;" in html and "x &amp; y" in html      # user text is escaped
    assert "0.500" in html and "–" in html                    # NaN is shown as a dash


def test_small_images_are_upscaled_with_nearest_neighbour():
    import base64
    import io

    from PIL import Image

    uri = png_data_uri(torch.rand(1, 28, 28), min_side=112)
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert img.size == (112, 112)


def test_json_and_csv_rows(tmp_path):
    rows = [{"a": 1, "b": float("nan"), "c": torch.tensor([1.0, 2.0]), "d": {"0.1": 0.5}}]
    write_json(rows, tmp_path / "r.json")
    back = json.loads((tmp_path / "r.json").read_text())
    assert back == [{"a": 1, "b": None, "c": [1.0, 2.0], "d": {"0.1": 0.5}}]
    write_csv(rows + [{"a": 2, "e": "x"}], tmp_path / "r.csv")
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0] == "a,b,c,d,e" and len(lines) == 3
    assert not math.isnan(back[0]["a"])
