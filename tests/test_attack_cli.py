"""``patchbench attack`` as a tool: class sub-folders as labels, one warning for the skipped files,
original-size outputs, masks, the printable patch (DPI, NPS), results.json, the --out rule and the
refusals. A small wrapped network from a factory file (the user's-model path) at 32 px, few steps."""
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from patchbench.attack_cli import (SkippedFilesWarning, check_area, map_folders, resolve_target,
                                   run_attack_command)
from patchbench.cli import main

FACTORY = '''
import torch, torch.nn as nn
import patchbench as pb

def make():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(32, 4))
    return pb.models.wrap(net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=32,
                          class_names=["Egyptian Mau", "tabby cat", "espresso", "missile"])
'''


def _photo(path, w, h, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "nets.py").write_text(FACTORY)
    root = tmp_path / "photos"
    for d in ("egyptian_mau", "2", "zebra"):
        (root / d).mkdir(parents=True)
    _photo(root / "loose.png", 60, 40, 0)
    _photo(root / "egyptian_mau" / "a.jpg", 50, 70, 1)
    _photo(root / "egyptian_mau" / "b.png", 48, 48, 2)
    _photo(root / "2" / "cup.png", 90, 45, 3)
    _photo(root / "zebra" / "z.png", 33, 41, 4)
    (root / "notes.txt").write_text("not a photo")
    (root / "zebra" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return tmp_path, root, f"{tmp_path / 'nets.py'}:make"


def _run(setup, out, **kw):
    tmp, root, model = setup
    args = dict(model=model, attack="masked-pgd", area=0.1, shape="square", images=root, out=out,
                steps=2, seed=0)
    args.update(kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_attack_command(**args)
    return json.loads((out / "results.json").read_text()), [
        w for w in caught if issubclass(w.category, SkippedFilesWarning)]


def test_folders_labels_skipped_files_and_results_fields(setup):
    tmp, root, model = setup
    out = tmp / "run"
    res, warned = _run(setup, out)
    assert len(warned) == 1                                  # ONE warning lists every bad file
    msg = str(warned[0].message)
    assert "notes.txt (not an image file)" in msg and "broken.png (cannot be decoded" in msg
    assert {s["file"].split("/")[-1] for s in res["skipped"]} == {"notes.txt", "broken.png"}
    assert res["complete"] and res["tool"] == "patchbench attack" and res["seed"] == 0
    assert set(res["versions"]) >= {"patchbench", "torch", "python"}
    assert set(res["parameters"]) >= {"model", "attack", "area", "shape", "images", "out", "steps",
                                      "seed", "device", "overwrite", "print_size_cm"}
    assert res["attack_options"]["steps"] == 2
    folders = {f["folder"]: f for f in res["folders"]}
    assert folders["egyptian_mau"]["class"] == 0 and folders["egyptian_mau"]["how"] == "name"
    assert folders["2"]["class"] == 2 and folders["2"]["how"] == "index"
    assert folders["zebra"]["class"] is None and folders["zebra"]["how"] == "unmatched"
    by_file = {r["file"]: r for r in res["images"]}
    assert set(by_file) == {"loose.png", "egyptian_mau/a.jpg", "egyptian_mau/b.png", "2/cup.png",
                            "zebra/z.png"}
    assert by_file["egyptian_mau/a.jpg"]["reference"] == {"class": 0, "name": "Egyptian Mau",
                                                         "source": "label"}
    for f in ("loose.png", "zebra/z.png"):                  # no label: the clean prediction
        r = by_file[f]
        assert r["reference"]["source"] == "prediction"
        assert r["reference"]["class"] == r["clean"]["class"] and r["eligible"]
    for r in res["images"]:
        for part in ("clean", "adversarial", "adversarial_saved"):
            assert 0 < r[part]["confidence"] <= 1 and 0 <= r[part]["reference_confidence"] <= 1
        assert r["success"] == (r["adversarial"]["class"] != r["reference"]["class"])
        assert r["eligible"] == (r["clean"]["class"] == r["reference"]["class"])
    s = res["summary"]
    assert s["n_images"] == 5 and s["n_labelled"] == 3 and s["n_reference_prediction"] == 2
    eligible = [r for r in res["images"] if r["eligible"]]
    assert s["success"]["n"] == len(eligible) and s["success"]["k"] == sum(r["success"] for r in eligible)
    html = (out / "index.html").read_text()
    assert "zebra" in html and "notes.txt" in html and "clean prediction" in html


def test_outputs_are_at_the_original_size_and_only_the_mask_changes(setup):
    tmp, root, model = setup
    out = tmp / "run"
    res, _ = _run(setup, out, area=0.2)
    for r in res["images"]:
        orig = np.asarray(Image.open(root / r["file"]).convert("RGB")).astype(int)
        adv = np.asarray(Image.open(out / r["outputs"]["adversarial"])).astype(int)
        mask = np.asarray(Image.open(out / r["outputs"]["mask"])) > 127
        assert adv.shape == orig.shape and mask.shape == orig.shape[:2]
        assert r["original_size"] == list(orig.shape[:2])
        assert np.array_equal(adv[~mask], orig[~mask])          # outside the mask: the photo
        # the mask covers ~area of the centre crop the model saw (shorter side × shorter side)
        side = min(orig.shape[:2])
        assert abs(mask.sum() / side ** 2 - 0.2) < 0.08
        assert np.abs(adv[mask] - orig[mask]).mean() > 1          # the patch is there
        small = np.asarray(Image.open(out / r["outputs"]["model_input"]))
        assert small.shape == (32, 32, 3)                           # what the model saw
    pngs = sorted(p.name for p in (out / "adversarial").iterdir())
    assert pngs == ["2__cup.png", "egyptian_mau__a.png", "egyptian_mau__b.png", "loose.png",
                    "zebra__z.png"]


def test_per_image_patches_are_printable_pngs_with_dpi_and_nps(setup):
    tmp, root, model = setup
    out = tmp / "run"
    res, _ = _run(setup, out, print_size_cm=2.54)
    for r in res["images"]:
        info = r["patch"]
        with Image.open(out / r["outputs"]["patch"]) as img:
            img.load()
        dpi = img.info["dpi"][0]
        assert abs(dpi - info["dpi"]) < 0.5 and dpi >= 299.5   # pHYs stores whole pixels per metre
        assert abs(max(img.size) / dpi - 1.0) < 0.01             # 2.54 cm = 1 inch on paper
        assert max(info["print_size_cm"]) == pytest.approx(2.54, abs=0.01)
        assert 0 < info["nps"] and "not a measured" in info["nps_palette"]


def test_a_universal_patch_is_one_png_whose_nps_matches_its_pixels(setup):
    from patchbench.patches import nps_loss
    tmp, root, model = setup
    out = tmp / "run"
    res, _ = _run(setup, out, attack="universal-patch", steps=1, print_size_cm=5.0)
    info = res["patch"]
    with Image.open(out / "patch.png") as img:
        img.load()
    assert img.size[::-1] == tuple(info["saved_pixels"])
    assert max(img.size) / img.info["dpi"][0] * 2.54 == pytest.approx(5.0, abs=0.02)
    k = info["saved_pixels"][0] // info["pixels"][0]
    px = torch.from_numpy(np.asarray(img.convert("RGB"))[::k, ::k].copy()).permute(2, 0, 1) / 255.0
    assert float(nps_loss(px)) == pytest.approx(info["nps"], abs=0.02)
    assert not (out / "patches").exists() and (out / "masks").is_dir()


def test_out_refuses_foreign_folders_and_overwrite_removes_stale_files(setup, capsys):
    tmp, root, model = setup
    foreign = tmp / "mine"
    foreign.mkdir()
    (foreign / "thesis.pdf").write_text("keep")
    base = ["attack", "--model", model, "--images", str(root), "--steps", "1", "--area", "0.1"]
    for extra in ([], ["--overwrite"]):
        assert main(base + ["--out", str(foreign)] + extra) == 2
        assert "not empty" in capsys.readouterr().err
    out = tmp / "run"
    assert main(base + ["--out", str(out)]) == 0
    (out / "notes_of_mine.txt").write_text("keep too")
    assert main(base + ["--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    (root / "loose.png").unlink()                               # the next run has one image fewer
    assert main(base + ["--out", str(out), "--overwrite"]) == 0
    assert not (out / "adversarial" / "loose.png").exists()     # no stale PNG of the old run
    assert not (out / "masks" / "loose.png").exists()
    assert (out / "notes_of_mine.txt").read_text() == "keep too"
    assert len(json.loads((out / "results.json").read_text())["images"]) == 4


@pytest.mark.parametrize("value, words", [("5", "did you mean 0.05"), ("50", "did you mean 0.5"),
                                          ("0.6", "half the image"), ("0", "(0, 0.5]"),
                                          ("-0.1", "(0, 0.5]"), ("nan", "(0, 0.5]")])
def test_area_outside_the_range_is_refused_with_the_reason(setup, capsys, value, words):
    tmp, root, model = setup
    assert main(["attack", "--images", str(root), "--out", str(tmp / "o"), "--area", value]) == 2
    err = capsys.readouterr().err
    assert "--area" in err and words in err and not (tmp / "o").exists()
    assert check_area(0.5) == 0.5


def test_target_by_name_or_index_and_close_matches():
    names = ["Egyptian Mau", "tabby cat", "espresso", "missile", "missile"]
    assert resolve_target("egyptian_mau", names, "m") == 0
    assert resolve_target("2", names, "m") == 2 == resolve_target(2, names, "m")
    with pytest.raises(LookupError, match="did you mean 'espresso'"):
        resolve_target("expresso", names, "m")
    with pytest.raises(LookupError, match="indices 3, 4"):
        resolve_target("Missile", names, "m")
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        resolve_target("7", names, "m")
    m = map_folders(["TABBY-CAT", "missile", "9"], names)
    assert m["TABBY-CAT"]["class"] == 1 and m["missile"]["how"] == "ambiguous"
    assert m["9"]["class"] is None


def test_a_targeted_run_records_the_target(setup, capsys):
    tmp, root, model = setup
    out = tmp / "run"
    res, _ = _run(setup, out, target="Espresso", steps=1)
    assert res["target"] == {"class": 2, "name": "espresso"}
    assert all(r["reference"]["class"] != 2 and r["clean"]["class"] != 2 for r in res["images"])
    for r in res["images"]:
        assert r["success"] == (r["adversarial"]["class"] == 2)
    assert main(["attack", "--model", model, "--images", str(root), "--out", str(tmp / "o"),
                 "--target", "espreso"]) == 2
    assert "did you mean 'espresso'" in capsys.readouterr().err


def test_a_folder_of_only_corrupt_images_is_an_error(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"nope")
    (tmp_path / "nets.py").write_text(FACTORY)
    assert main(["attack", "--model", f"{tmp_path / 'nets.py'}:make", "--images",
                 str(tmp_path / "bad"), "--out", str(tmp_path / "o")]) == 2
    assert "could be decoded" in capsys.readouterr().err


def test_version_and_help(capsys):
    from patchbench import __version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"patchbench {__version__}"
    with pytest.raises(SystemExit):
        main(["attack", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for word in ("mobilenet_v2", "fmnist_cnn_small", "torchvision:NAME", "timm:NAME",
                 "module:function", "file.py:function", "(default: masked-pgd)", "universal-patch",
                 "(default: 0.05)", "--print-size-cm", "--overwrite"):
        assert word in out, word
    assert main(["list", "models"]) == 0
    assert "torchvision:NAME" in capsys.readouterr().out
