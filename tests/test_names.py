"""Names and the one home of each I/O piece: one folding rule for every registry, ``pb.list``,
datasets by name, the cache root, atomic writes, fingerprints and batched prediction."""
import hashlib
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import patchbench as pb
from patchbench import _io
from patchbench._registry import KINDS, Registry, list_names, normalize_name, resolve_name
from patchbench.data import dataset_info, dataset_names, load_dataset
from patchbench.data.fashion_mnist import FASHION_MNIST_MEAN, fashion_mnist_available
from patchbench.models.base import IMAGENET_MEAN

needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(),
                                  reason="Fashion-MNIST files not installed")


def variants(canonical: str):
    """Spellings that must all mean ``canonical``: case, ``_`` ↔ ``-``, spaces around and inside."""
    swapped = canonical.replace("_", "\0").replace("-", "_").replace("\0", "-")
    spaced = canonical.replace("_", " ").replace("-", " ")
    return [canonical, canonical.upper(), canonical.title(), swapped, f"  {canonical}\t",
            f" {spaced.upper()} ", swapped.upper()]


# --- the folding rule --------------------------------------------------------------------------

@pytest.mark.parametrize("a,b", [("Masked_PGD", "masked-pgd"), (" Gaussian Noise ", "gaussian-noise"),
                                 ("fmnist_cnn_small", "FMNIST-CNN-SMALL"), ("a  b", "a-b"),
                                 ("Fashion_MNIST", "fashion-mnist")])
def test_one_folding_rule_ignores_case_separators_and_surrounding_spaces(a, b):
    assert normalize_name(a) == normalize_name(b)


def test_folding_keeps_different_names_apart():
    assert normalize_name("masked-pgd") != normalize_name("masked-apgd")
    assert normalize_name("fmnist_cnn_small") != normalize_name("fmnist_cnn_small_stickers")
    with pytest.raises(TypeError, match="name"):
        normalize_name(3)


def _model(name):
    return pb.models.get_spec(name).name


def _attack(name):
    from patchbench.attacks.base import _ATTACKS
    return _ATTACKS.lookup(name).name


def _defense(name):
    from patchbench.defenses.base import _DEFENSES
    return _DEFENSES.lookup(name).name


def _corruption(name):
    return pb.corruptions.get(name).__name__


def _dataset(name):
    return dataset_info(name)["name"]


def _task(name):
    return pb.tasks.get(name).name


def _experiment(name):
    from patchbench.bench.config import resolve
    return resolve(name).name[:-len(".toml")]


RESOLVERS = {"models": _model, "attacks": _attack, "defenses": _defense,
             "corruptions": _corruption, "datasets": _dataset, "tasks": _task,
             "experiments": _experiment}


def test_every_kind_has_a_resolver_here():
    assert set(RESOLVERS) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_every_listed_name_resolves_under_every_spelling_to_itself(kind):
    names = pb.list(kind)
    assert names and all(isinstance(n, str) for n in names)
    assert len({normalize_name(n) for n in names}) == len(names)   # no two fold together
    for name in names:
        for spelling in variants(name):
            assert RESOLVERS[kind](spelling) == name, (kind, spelling)


def test_canonical_display_names_stay_as_they_are():
    assert "fmnist_cnn_small" in pb.list("models")
    assert "gaussian_noise" in pb.list("corruptions")
    assert "masked-pgd" in pb.list("attacks") and "lgs" in pb.list("defenses")
    assert {"fashion-mnist", "imagenet-samples"} <= set(pb.list("datasets"))
    assert pb.list("corruptions") == list(pb.corruptions.CORRUPTIONS)   # the paper's order
    assert pb.list("models") == pb.models.names() and pb.list("attacks") == pb.attacks.names()


def test_corruption_spellings_of_the_issue():
    for spelling in ("Gaussian-Noise", "gaussian_noise", " gaussian noise ", "GAUSSIAN NOISE"):
        assert pb.corruptions.family(spelling) == "noise"
        assert _corruption(spelling) == "gaussian_noise"
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(pb.corruptions.corrupt(x, "Gaussian-Noise", 2, generator=3),
                       pb.corruptions.corrupt(x, "gaussian_noise", 2, generator=3))


# --- unknown names ------------------------------------------------------------------------------

@pytest.mark.parametrize("call,typo,hint,listed", [
    (_model, "fmnist_cnn_smal", "fmnist_cnn_small", "mobilenet_v2"),
    (_attack, "maskd-pgd", "masked-pgd", "lavan"),
    (_defense, "patchzer0", "patchzero", "lgs"),
    (_corruption, "gausian_noise", "gaussian_noise", "fog"),
    (_dataset, "fashion-mnst", "fashion-mnist", "imagenet-samples"),
])
def test_an_unknown_name_lists_the_known_ones_with_close_matches_first(call, typo, hint, listed):
    with pytest.raises(LookupError) as e:
        call(typo)
    msg = str(e.value)
    assert repr(typo) in msg and f"did you mean {hint!r}" in msg and listed in msg
    assert msg.index(hint) < msg.index(listed) or hint == listed


def test_a_name_far_from_all_gets_no_hint_but_the_list():
    with pytest.raises(LookupError) as e:
        _attack("zzzzzz")
    assert "did you mean" not in str(e.value) and "masked-pgd" in str(e.value)


def test_a_non_string_name_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="model name"):
        pb.models.get_spec(3)
    with pytest.raises(TypeError, match="name"):
        load_dataset(None)
    with pytest.raises(TypeError, match="name"):
        pb.corruptions.get(["fog"])


def test_registries_refuse_two_names_that_fold_together():
    reg = Registry("thing")
    reg.register("my-thing")(type("A", (), {}))
    reg.register("my-thing")(type("B", (), {}))          # the same name again replaces it
    assert reg.lookup("MY_THING").__name__ == "B" and reg.names() == ["my-thing"]
    with pytest.raises(ValueError, match="my_thing"):
        reg.register("my_thing")
    spec = pb.models.get_spec("tiny_cnn")
    with pytest.raises(ValueError, match="TINY-CNN"):
        pb.models.register(type(spec)("TINY-CNN", spec.build, spec.preprocess))
    assert pb.models.get_spec("tiny-cnn") is spec


def test_resolve_name_is_the_shared_lookup():
    assert resolve_name(" Quick ", ["quick", "defenses"], "experiment") == "quick"
    with pytest.raises(LookupError, match="^grid: unknown experiment 'quik' \\(did you mean 'quick'"):
        resolve_name("quik", ["quick", "defenses"], "experiment", "grid")


# --- pb.list ------------------------------------------------------------------------------------

def test_pb_list_takes_singular_and_folded_kinds_and_returns_a_fresh_list():
    for kind in KINDS:
        assert pb.list(kind[:-1]) == pb.list(kind.upper()) == list_names(kind)
    a = pb.list("models")
    a.append("x")
    assert "x" not in pb.list("models")


def test_pb_list_is_not_cached_over_the_builtin_in_the_package():
    assert pb.list is list_names
    assert "list" not in vars(pb)           # never bound in the package's globals
    assert isinstance(list(range(2)), list)


def test_an_unknown_kind_lists_the_kinds():
    with pytest.raises(LookupError) as e:
        pb.list("modles")
    msg = str(e.value)
    assert msg.startswith("kind: ") and "did you mean 'models'" in msg
    assert all(k in msg for k in KINDS)
    with pytest.raises(TypeError, match="kind"):
        pb.list(None)


# --- datasets -----------------------------------------------------------------------------------

def test_dataset_info_describes_each_dataset():
    fm = dataset_info("fashion-mnist")
    assert fm["task"] == "classification" and fm["channels"] == 1 and fm["size"] == (28, 28)
    assert fm["mean"] == tuple(FASHION_MNIST_MEAN) and fm["splits"] == ["train", "test"]
    assert fm["sizes"] == {"train": 60000, "test": 10000} and fm["num_classes"] == 10
    im = dataset_info("imagenet-samples")
    assert im["channels"] == 3 and im["size"] == (224, 224) and im["mean"] == tuple(IMAGENET_MEAN)
    assert im["splits"] == ["test"] and im["num_classes"] == 1000
    assert dataset_info("imagenet-samples", size=(32, 48))["size"] == (32, 48)
    fm["splits"].append("x")
    assert dataset_info("fashion-mnist")["splits"] == ["train", "test"]    # a fresh dict each time
    assert dataset_names() == sorted(dataset_names())


@needs_fmnist
def test_load_dataset_fashion_mnist_slices_the_split_in_its_order():
    from patchbench.data import load_fashion_mnist
    x, y = load_dataset("Fashion_MNIST", "test", n=5, offset=7)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    xr, yr = load_fashion_mnist("test", limit=12)
    assert torch.equal(x, xr[7:12]) and torch.equal(y, yr[7:12])
    x_all, _ = load_dataset("fashion-mnist", offset=9990)          # n=None: all from offset on
    assert x_all.shape[0] == 10
    x_tr, _ = load_dataset("fashion-mnist", "train", n=3)
    assert x_tr.shape == (3, 1, 28, 28)


def test_load_dataset_imagenet_samples_are_the_offline_photos():
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    x, y = load_dataset("imagenet-samples", n=2, offset=1, size=32)
    xs, ys = pb.data.samples("imagenet", size=32)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    assert torch.equal(x, xs[1:3]) and torch.equal(y, ys[1:3])


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(n=0), ValueError, "^n: "), (dict(n=-3), ValueError, "^n: "),
    (dict(n=2.5), TypeError, "^n: "), (dict(n=True), TypeError, "^n: "),
    (dict(n="4"), TypeError, "^n: "),
    (dict(n=10001), ValueError, "^n: .*10000 images.*n=10001"),
    (dict(n=10, offset=9995), ValueError, "^n: .*10000 images.*offset=9995.*5 left"),
    (dict(offset=-1), ValueError, "^offset: "), (dict(offset=1.5), TypeError, "^offset: "),
    (dict(offset=10000), ValueError, "^offset: .*10000 images"),
    (dict(split="val"), LookupError, "^split: unknown split 'val'.*train, test"),
    (dict(split=1), TypeError, "^split: "),
    (dict(foo=1), TypeError, "'foo'.*accepts: root"),
])
def test_load_dataset_refuses_bad_arguments_before_reading_files(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_dataset("fashion-mnist", **kwargs)


def test_imagenet_samples_has_only_a_test_split_of_its_photos():
    n = dataset_info("imagenet-samples")["sizes"]["test"]
    with pytest.raises(ValueError, match=f"^n: .*{n} images"):
        load_dataset("imagenet-samples", n=n + 1)
    with pytest.raises(LookupError, match="split"):
        load_dataset("imagenet-samples", "train")
    with pytest.raises(TypeError, match="'root'.*accepts: size"):
        load_dataset("imagenet-samples", root="/tmp")


def test_missing_fashion_mnist_files_are_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", n=1, root=tmp_path)


# --- the cache root -----------------------------------------------------------------------------

def test_cache_root_honours_patchbench_home(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHBENCH_HOME", str(tmp_path / "home"))
    assert _io.cache_root() == tmp_path / "home"
    assert _io.cache_root("weights", "x.pt") == tmp_path / "home" / "weights" / "x.pt"
    assert pb.models.cache_dir() == tmp_path / "home" / "weights"
    assert not (tmp_path / "home").exists()                        # never created by asking
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    monkeypatch.setenv("PATCHBENCH_HOME", "~/pb")
    assert _io.cache_root() == tmp_path / "me" / "pb"
    monkeypatch.delenv("PATCHBENCH_HOME")
    assert _io.cache_root("a") == tmp_path / "me" / ".cache" / "patchbench" / "a"
    assert pb.models.cache_dir() == tmp_path / "me" / ".cache" / "patchbench" / "weights"


def test_the_weights_cache_is_searched_under_patchbench_home(monkeypatch, tmp_path):
    from patchbench.models.zoo import WeightSource, resolve_weights
    monkeypatch.setenv("PATCHBENCH_HOME", str(tmp_path))
    spec = pb.models.get_spec("tiny_cnn")
    spec = type(spec)("cached_net", spec.build, spec.preprocess, WeightSource("cached_net.pt"))
    path, tried = resolve_weights(spec)
    assert path is None and str(tmp_path / "weights") in tried[-1]
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "cached_net.pt").write_bytes(b"x")
    assert resolve_weights(spec)[0] == tmp_path / "weights" / "cached_net.pt"


# --- atomic writes ------------------------------------------------------------------------------

def test_atomic_writes_leave_only_the_file(tmp_path):
    _io.atomic_write_text(tmp_path / "a" / "t.txt", "héllo\n")
    _io.atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
    _io.atomic_save({"w": torch.arange(3)}, tmp_path / "a" / "s.pt")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.bin", "s.pt", "t.txt"]
    assert (tmp_path / "a" / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert torch.equal(torch.load(tmp_path / "a" / "s.pt", weights_only=True)["w"], torch.arange(3))
    mode = (tmp_path / "a" / "t.txt").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask                                  # not mkstemp's 0600


def test_an_exception_mid_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "s.pt"
    _io.atomic_save({"v": 1}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        _io.atomic_save({"t": torch.zeros(1000), "f": lambda: 0}, path)   # pickling fails midway
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["s.pt"]


def test_an_interrupt_before_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "t.txt"
    _io.atomic_write_text(path, "old")

    def boom(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(_io.os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        _io.atomic_write_text(path, "new" * 1000)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_atomic_writes_refuse_bad_paths_and_data(tmp_path):
    with pytest.raises(ValueError, match="^path: .*directory"):
        _io.atomic_write_text(tmp_path, "x")
    with pytest.raises(TypeError, match="^path: "):
        _io.atomic_save({}, 3)
    with pytest.raises(TypeError, match="^text: "):
        _io.atomic_write_text(tmp_path / "t", b"bytes")
    with pytest.raises(TypeError, match="^data: "):
        _io.atomic_write_bytes(tmp_path / "b", "text")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_atomic_save_is_the_shared_one():
    from patchbench.training import atomic_save as lazy
    from patchbench.training.checkpoint import atomic_save
    assert atomic_save is _io.atomic_save and lazy is _io.atomic_save


# --- fingerprints -------------------------------------------------------------------------------

def _fixed_module():
    m = nn.Linear(3, 2)
    with torch.no_grad():
        m.weight.copy_(torch.arange(6.0).view(2, 3) / 7)
        m.bias.copy_(torch.tensor([0.5, -1.0]))
    return m


def test_weights_fingerprint_is_stable_and_follows_the_weights():
    a, b = _fixed_module(), _fixed_module()
    fa = _io.weights_fingerprint(a)
    h = hashlib.sha256()
    for k, v in sorted(a.state_dict().items()):        # the digest the presets recorded
        h.update(k.encode())
        h.update(v.numpy().tobytes())
    assert fa == h.hexdigest()[:16] == _io.weights_fingerprint(b) and len(fa) == 16
    assert fa == "38d1c4427ab9570f"                      # same bytes → same digest, always
    with torch.no_grad():
        b.bias[0] += 1e-3
    assert _io.weights_fingerprint(b) != fa


def test_file_and_config_fingerprints_are_stable(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"patchbench" * 100000)
    full = hashlib.sha256(p.read_bytes()).hexdigest()
    assert _io.file_fingerprint(p) == full[:16] and _io.file_fingerprint(p, length=None) == full
    from patchbench.models.weights import file_sha256
    assert file_sha256(p) == full
    c1 = {"model": "tiny_cnn", "n": 8, "threat": {"shape": "square", "area": 0.05}}
    c2 = {"threat": {"area": 0.05, "shape": "square"}, "n": 8, "model": "tiny_cnn"}
    assert _io.config_fingerprint(c1) == _io.config_fingerprint(c2)
    assert _io.config_fingerprint(c1) == "0c1457f029c23cb81664"
    assert _io.config_fingerprint({**c1, "n": 9}) != _io.config_fingerprint(c1)


# --- batched prediction -------------------------------------------------------------------------

def _tiny():
    return pb.models.load("tiny_cnn", channels=1, num_classes=4, width=4, seed=1)


def test_predict_batched_equals_one_pass_and_restores_the_training_flag():
    model, x = _tiny(), torch.rand(7, 1, 12, 12)
    with torch.no_grad():
        ref = model(x)
    model.train()
    out = _io.predict_batched(model, x, batch_size=3)
    assert model.training and torch.allclose(out, ref, atol=1e-6) and not out.requires_grad
    lab, conf = _io.predict_batched(model, x, 2, reduce=lambda z: z.softmax(-1).max(-1)[::-1])
    assert torch.equal(lab, ref.argmax(-1)) and conf.shape == (7,)
    empty = _io.predict_batched(model, x[:0], 4, reduce=lambda z: z.argmax(-1))
    assert empty.shape == (0,)


def test_every_batched_prediction_agrees():
    from patchbench.metrics import predict_labels
    from patchbench.models.base import predict_in_batches
    from patchbench.training.classifier import accuracy
    model, x = _tiny(), torch.rand(9, 1, 12, 12)
    y = torch.arange(9) % 4
    ref = model(x).argmax(-1)
    lab, conf = model.predict(x, batch_size=4)
    assert torch.equal(lab, ref) and torch.equal(predict_labels(model, x, 2), ref)
    assert torch.equal(predict_in_batches(model, x, 5)[0], ref)
    assert conf.shape == (9,) and bool(((conf > 0) & (conf <= 1)).all())
    assert accuracy(model, x, y, batch_size=4) == int((ref == y).sum()) / 9
    lab0, conf0 = model.predict(x[:0])
    assert lab0.shape == conf0.shape == (0,)
    with pytest.raises(ValueError, match="meta"):
        model.predict(x.to("meta"))


def test_importing_patchbench_stays_lazy():
    code = ("import sys, patchbench; "
            "assert 'patchbench.models' not in sys.modules and 'patchbench.data' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
