"""Reports are self-contained: tables, embedded JPEG/PNG galleries and plots in one HTML file; JSON/CSV
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
    assert html.count('src="data:image/') == 2 and "src=\"http" not in html
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


def test_photos_become_jpeg_thumbnails_and_masks_stay_png():
    import base64
    import io

    from PIL import Image

    from patchbench.bench.report import image_data_uri

    yy, xx = torch.meshgrid(torch.linspace(0, 1, 224), torch.linspace(0, 1, 224), indexing="ij")
    photo = torch.stack([yy, xx, (yy * xx).sqrt()]) * 0.8 + 0.2 * torch.rand(3, 224, 224)
    uri = image_data_uri(photo, max_side=160)
    assert uri.startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert img.size == (160, 160) and len(uri) < 20_000
    png = image_data_uri(photo, max_side=160, image_format="png")
    assert len(png) > 3 * len(uri)           # the reason for JPEG: a ~1 MB report instead of ~5 MB
    mask = torch.zeros(1, 28, 28, dtype=torch.uint8)
    mask[:, 5:12, 5:12] = 255
    assert image_data_uri(mask, min_side=112).startswith("data:image/png;base64,")
    white = image_data_uri(torch.full((3, 8, 8), 255, dtype=torch.uint8), image_format="png")
    pix = Image.open(io.BytesIO(base64.b64decode(white.split(",", 1)[1]))).getpixel((0, 0))
    assert pix == (255, 255, 255)            # uint8 images are taken as 0..255, not clamped to 1
