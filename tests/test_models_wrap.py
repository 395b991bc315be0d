"""Any model: ``pb.models.wrap`` and the specs ``pb.models.load`` takes beyond the zoo (torchvision:,
timm:, module:function, file.py:function), with fake torchvision / timm packages in sys.modules so the
real dispatch code runs without the real (here broken) packages."""
import importlib.machinery
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import patchbench as pb
from patchbench.models import sources
from patchbench.models.base import IMAGENET_MEAN, IMAGENET_STD


def _net(k=5, c=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(c, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, k))


# ---------------------------------------------------------------- wrap
def test_wrap_defaults_infer_classes_and_use_imagenet_statistics():
    m = pb.models.wrap(_net(5))
    assert m.num_classes == 5 and m.class_names == ["0", "1", "2", "3", "4"]
    assert m.input_size == (224, 224) and m.channels == 3 and not m.training
    assert torch.allclose(m.normalize.mean.flatten(), torch.tensor(IMAGENET_MEAN))
    assert torch.allclose(m.normalize.std.flatten(), torch.tensor(IMAGENET_STD))
    big = pb.models.wrap(_net(1000))
    assert big.class_names[:2] == list(pb.models.imagenet_class_names()[:2])


def test_the_wrapper_normalises_and_resizes_inside():
    net = _net(3)
    m = pb.models.wrap(net, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), input_size=16)
    x = torch.rand(2, 3, 40, 30, generator=torch.Generator().manual_seed(1))
    xr = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    assert torch.allclose(m(x), net((xr - mean) / 0.2), atol=1e-6)
    labels, conf = m.predict(x)
    assert labels.shape == (2,) and bool(((conf > 0) & (conf <= 1)).all())


def test_wrap_takes_channels_from_mean_and_any_size_with_none():
    m = pb.models.wrap(_net(4, c=1), mean=(0.5,), std=(0.25,), input_size=None,
                       class_names=list("abcd"))
    assert m.channels == 1 and m.input_size is None and m.class_names == list("abcd")
    assert m(torch.rand(1, 1, 9, 13)).shape == (1, 4)


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(net="resnet"), TypeError, ("net", "nn.Module")),
    (dict(net=lambda: None), TypeError, ("call the factory",)),
    (dict(mean=(0.5, 0.5)), ValueError, ("mean, std", "2 means and 3 stds")),
    (dict(std=(0.2, 0.0, 0.2)), ValueError, ("std", "positive")),
    (dict(mean=(0.5, float("nan"), 0.5)), ValueError, ("mean", "finite")),
    (dict(mean="rgb"), TypeError, ("mean",)),
    (dict(mean=(0.5,), std=(0.5,)), ValueError, ("dummy input 1×1×224×224", "channels")),
    (dict(num_classes=7), ValueError, ("num_classes", "returns 5 logits")),
    (dict(class_names=["a", "b"]), ValueError, ("class_names", "expected 5")),
    (dict(input_size=(0, 4)), ValueError, ("input_size",)),
    (dict(input_size="224"), TypeError, ("input_size",)),
])
def test_wrap_bad_arguments_are_named(kwargs, exc, words):
    kwargs = {"net": _net(5), **kwargs}
    with pytest.raises(exc) as e:
        pb.models.wrap(**kwargs)
    for w in words:
        assert w in str(e.value)


def test_wrap_refuses_a_classifier_and_a_network_without_logits():
    with pytest.raises(TypeError, match="already an ImageClassifier"):
        pb.models.wrap(pb.models.wrap(_net()))
    with pytest.raises(ValueError, match="1×num_classes"):
        pb.models.wrap(nn.Conv2d(3, 2, 3))


# ---------------------------------------------------------------- user factories
FACTORY = '''
import torch.nn as nn
import patchbench as pb

def make(num_classes=3, width=4):
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))

def make_wrapped():
    return pb.models.wrap(make(2), mean=(0.5,) * 3, std=(0.5,) * 3, input_size=32,
                          class_names=["cat", "dog"])

def not_a_module():
    return 42
'''


@pytest.fixture
def factory_file(tmp_path):
    f = tmp_path / "my_nets.py"
    f.write_text(FACTORY)
    return f


def test_a_file_factory_is_called_with_the_options_seeded_and_wrapped(factory_file):
    m = pb.models.load(f"{factory_file}:make", num_classes=6, seed=3)
    assert m.num_classes == 6 and m.input_size == (224, 224) and not m.training
    again = pb.models.load(f"{factory_file}:make", num_classes=6, seed=3)
    other = pb.models.load(f"{factory_file}:make", num_classes=6, seed=4)
    x = torch.rand(1, 3, 20, 20)
    assert torch.equal(m(x), again(x)) and not torch.equal(m(x), other(x))
    w = pb.models.load(f"{factory_file}:make_wrapped")
    assert w.class_names == ["cat", "dog"] and w.input_size == (32, 32)


def test_a_module_factory_and_weights_from_a_file(factory_file, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_nets", raising=False)
    m = pb.models.load("my_nets:make", num_classes=2, seed=1)
    torch.save(m.net.state_dict(), tmp_path / "w.pt")
    loaded = pb.models.load("my_nets:make", num_classes=2, seed=9, weights=tmp_path / "w.pt")
    x = torch.rand(1, 3, 24, 24)
    assert torch.equal(loaded(x), m(x))
    with pytest.raises(ValueError, match="w.pt"):
        pb.models.load("my_nets:make", num_classes=3, weights=tmp_path / "w.pt")


@pytest.mark.parametrize("spec, options, exc, words", [
    ("{f}:mak", {}, LookupError, ("no function 'mak'", "did you mean 'make'")),
    ("{f}:not_a_module", {}, TypeError, ("returned int", "nn.Module")),
    ("{f}:make", {"depth": 3}, TypeError, ("depth",)),
    ("{d}/absent.py:make", {}, FileNotFoundError, ("absent.py",)),
    ("no_such_module_xyz:make", {}, LookupError, ("no module 'no_such_module_xyz'",)),
    ("{f}:", {}, ValueError, ("module:function",)),
    ("torchvision:", {}, ValueError, ("torchvision:NAME",)),
])
def test_bad_factory_specs_are_clear(factory_file, spec, options, exc, words):
    spec = spec.format(f=factory_file, d=factory_file.parent)
    with pytest.raises(exc) as e:
        pb.models.load(spec, **options)
    for w in words:
        assert w in str(e.value)


def test_check_spec_validates_without_building(factory_file):
    assert pb.models.check_spec("Tiny-CNN") == "tiny_cnn"
    assert pb.models.check_spec(f"{factory_file}:make") == f"{factory_file}:make"
    with pytest.raises(LookupError, match="did you mean"):
        pb.models.check_spec("tiny_cnnn")
    with pytest.raises(TypeError, match="model"):
        pb.models.check_spec(3)


# ---------------------------------------------------------------- torchvision / timm, faked
def _fake_package(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


@pytest.fixture
def fake_torchvision(monkeypatch):
    calls = []

    class Weights:
        meta = {"categories": [f"thing {i}" for i in range(1000)]}

        def transforms(self):
            return types.SimpleNamespace(crop_size=[96])

    def get_model(name, weights=None, **kw):
        calls.append((name, weights, kw))
        return _net(kw.get("num_classes", 1000))

    models = types.SimpleNamespace(list_models=lambda: ["resnet18", "resnet34", "vgg11"],
                                   get_model=get_model,
                                   get_model_weights=lambda n: types.SimpleNamespace(DEFAULT=Weights()))
    monkeypatch.setitem(sys.modules, "torchvision", _fake_package("torchvision", models=models))
    return calls


def test_torchvision_prefix_goes_through_get_model(fake_torchvision):
    m = pb.models.load("torchvision:resnet18")
    name, weights, _ = fake_torchvision[-1]
    assert name == "resnet18" and weights is not None             # the pretrained default
    assert m.num_classes == 1000 and m.class_names[3] == "thing 3" and m.input_size == (96, 96)
    r = pb.models.load("torchvision:resnet18", weights=False, num_classes=4)
    assert fake_torchvision[-1][1] is None and r.num_classes == 4 and r.input_size == (224, 224)
    assert pb.models.check_spec("TorchVision:resnet18") == "torchvision:resnet18"
    with pytest.raises(LookupError, match="did you mean 'resnet18'"):
        pb.models.load("torchvision:resnet19")


def test_timm_prefix_reads_the_models_own_preprocessing(monkeypatch):
    seen = {}

    def create_model(name, pretrained=False, **kw):
        seen.update(name=name, pretrained=pretrained)
        net = _net(kw.get("num_classes", 10))
        net.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                              "input_size": (3, 64, 48)}
        return net

    monkeypatch.setitem(sys.modules, "timm", _fake_package(
        "timm", is_model=lambda n: n == "tiny_vit", list_models=lambda: ["tiny_vit", "tiny_vim"],
        create_model=create_model))
    m = pb.models.load("timm:tiny_vit")
    assert seen == {"name": "tiny_vit", "pretrained": True}
    assert m.input_size == (64, 48) and m.num_classes == 10
    assert torch.allclose(m.normalize.std.flatten(), torch.full((3,), 0.25))
    with pytest.raises(LookupError, match="tiny_vit"):
        pb.models.load("timm:tiny_vt")


def test_a_broken_torchvision_is_an_actionable_error(tmp_path, monkeypatch):
    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    with pytest.raises(ImportError) as e:
        pb.models.load("torchvision:resnet18")
    msg = str(e.value)
    assert "does not import" in msg and "torchvision::nms" in msg and "install" in msg
    assert isinstance(e.value, LookupError) and "torchvision" not in sys.modules


def test_an_absent_package_is_named_before_anything_is_built(monkeypatch):
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(pb.models.MissingPackageError, match="timm, which is not installed"):
        pb.models.check_spec("timm:resnet18")


def test_another_prefix_is_one_table_entry(monkeypatch):
    monkeypatch.setitem(sources.SOURCES, "fakelib", None)      # restored afterwards
    pb.models.register_source(pb.models.Source(
        "fakelib", lambda name, weights, device, seed, options: pb.models.wrap(_net(3), name=name),
        None, "pip install fakelib", "models of fakelib"))
    assert pb.models.load("FakeLib:any").num_classes == 3
    assert ("fakelib:NAME", "models of fakelib") in pb.models.spec_forms()
