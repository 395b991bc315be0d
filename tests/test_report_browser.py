"""A report renders in a real browser: a tiny harness experiment (fmnist_cnn_small on 12 real
Fashion-MNIST test images, masked PGD at two patch areas, undefended and behind JPEG) is run in
tmp_path, its page is built by `patchbench report`'s builder and loaded in headless Chromium
(Debian's ``chromium``): no console message, no script error, no broken image, the key numbers
before the first table, a table, a plot at least 1000 px wide, a 1400-px window not overflowed, and
the page under 1 MB. The check itself is shown to fail on a page that breaks each rule.

Skipped only when no Chromium binary exists (``apt-get install -y chromium``)."""
from pathlib import Path

import pytest

from patchbench.bench.browser import assert_renders, check_report, find_chromium

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="no headless Chromium on PATH (apt-get install -y chromium, "
                                       "or set PATCHBENCH_CHROMIUM)")

TINY = """
[experiment]
name = "tiny-browser"
task = "classification"
threads = 1
gallery = 4

[[grid]]
models = ["fmnist_cnn_small"]
datasets = [{ name = "fashion-mnist", split = "test", n = 12 }]
attacks = ["none", { name = "masked-pgd", steps = 5 }]
defenses = ["none", { name = "jpeg", quality = 75 }]
threats = [{ area = 0.02, shape = "square", placement = "random" },
           { area = 0.08, shape = "square", placement = "random" }]
adaptive = [false]
seeds = [0]
"""


@pytest.fixture(scope="module")
def tiny_page(tmp_path_factory):
    from patchbench.bench.config import load
    from patchbench.bench.pages import build_report
    from patchbench.bench.runner import run_experiment

    try:
        from patchbench.data.fashion_mnist import load_fashion_mnist
        load_fashion_mnist("test")
    except (FileNotFoundError, LookupError, OSError) as e:
        pytest.skip(f"Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): {e}")
    root = tmp_path_factory.mktemp("browser")
    (root / "tiny.toml").write_text(TINY)
    summary = run_experiment(load(root / "tiny.toml"), root / "run", log=lambda *a, **k: None)
    assert summary is not None
    return build_report(root / "run")


def test_the_tiny_runs_report_renders_cleanly_in_chromium(tiny_page):
    chk = assert_renders(tiny_page)                        # raises, listing every problem
    assert chk.errors == [] and chk.console == [] and chk.broken_images == []
    assert chk.headline and chk.headline_first             # key numbers before any table
    assert len([t for t in chk.tables if t["cells"]]) >= 3  # 2 accuracy tables + the galleries
    assert chk.plots and all(p["ok"] and p["w"] >= 1000 for p in chk.plots)
    assert chk.page_width <= 1400 and chk.bytes < 1_000_000
    thumbs = [i for i in chk.images if not i["plot"]]
    assert len(thumbs) >= 2 * 4 * 4                         # 2 areas × 4 images × 4 panels
    assert all(i["src"].startswith("data:image/") for i in chk.images)


def test_the_check_fails_on_a_page_that_breaks_each_rule(tmp_path):
    page = tmp_path / "index.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>bad</title></head><body>"
        "<script>console.error('boom from the page')</script>"
        "<img src='missing.png'><img src='data:image/png;base64,AAAA'>"
        "<table style='width:2400px'><tr><td>wide</td></tr></table>"
        "<figure class='plot'><img src='plot.png'></figure>"
        "<div class='headline'>late</div></body></html>")
    from PIL import Image
    Image.new("RGB", (640, 300), "white").save(tmp_path / "plot.png")     # resolves, too narrow
    chk = check_report(tmp_path)
    problems = "\n".join(chk.problems())
    assert "boom from the page" in problems
    assert problems.count("broken image") == 2 and "missing.png" in problems
    assert "plot 'plot.png'… is 640 px wide" in problems
    assert "px wide in a 1400-px window" in problems
    assert "the key-numbers box comes after a table" in problems
    with pytest.raises(AssertionError, match="does not render cleanly"):
        assert_renders(page)


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        check_report(tmp_path / "nothing.html")
    with pytest.raises(TypeError, match="path"):
        check_report(3)
    (tmp_path / "index.html").write_text("<html><body>x</body></html>")
    with pytest.raises(ValueError, match="width"):
        check_report(tmp_path, width=0)
    with pytest.raises(FileNotFoundError, match="chromium"):
        check_report(tmp_path, chromium=str(Path(tmp_path) / "no-such-browser"))


def _defensive_run(root):
    import torch

    import test_views_face_defensive as tv
    from patchbench._io import config_fingerprint
    cells = tv._dp_cells()
    run = tv._dp_run(root, cells)
    (run / "gallery").mkdir()
    y = torch.tensor([0, 1, 2, 3])
    for c, _ in cells:
        g = {"clean": torch.randint(0, 255, (4, 1, 28, 28), dtype=torch.uint8), "y": y,
             "pred_clean": y, "conf_clean": torch.full((4,), 0.9),
             "class_names": [f"c{i}" for i in range(10)]}
        if c["attack"] != "none":
            g.update(adv=g["clean"], mask=torch.ones(4, 1, 28, 28, dtype=torch.uint8),
                     pred_adv=torch.tensor([0, 1, 2, 9]))
        torch.save(g, run / "gallery" / f"{config_fingerprint(c)}.pt")
    return run


def _face_run(root):
    import torch

    import test_views_face_defensive as tv
    from patchbench._io import config_fingerprint
    cells = tv._face_cells()
    run = tv._store(root / "face", cells)
    (run / "gallery").mkdir()
    for c, _ in cells:
        torch.save(tv._face_gallery(with_patch=c["attack"] != "none"),
                   run / "gallery" / f"{config_fingerprint(c)}.pt")
    return run


@pytest.mark.parametrize("make", [_defensive_run, _face_run], ids=["defensive-patch", "face"])
def test_the_defensive_and_face_pages_render_cleanly_too(tmp_path, make):
    from patchbench.bench.pages import build_report
    chk = assert_renders(build_report(make(tmp_path)))
    assert chk.headline_first and chk.page_width <= 1400
