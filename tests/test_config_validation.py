"""Issue 12, items 5 and 6 and the data-loader crashes: trainers and configs refuse nonsense when they
are built, naming the argument or field (and the file and line for TOML), and data loaders never
list an image twice, read "2.7" faces as 2 or crash on inf — each a regression test."""
import math
import os

import pytest
import torch
from PIL import Image

from patchbench.defensive.apply import (DefensivePatch, DefensivePlacement, apply_defensive_patch,
                                        blank_patch_like, physical_jitter)
from patchbench.defensive.train import DefensivePatchConfig, train_defensive_patch
from patchbench.training import classifier as tc
from patchbench.training.patchzero import PatchZeroTrainConfig, train_patchzero

torch.set_num_threads(1)


def _toy(n=32, classes=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 12, 12, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y, x[:8], y[:8]


def _train(tmp_path, **kw):
    args = dict(epochs=1, batch_size=16, lr=1e-2, progress=False, data=_toy(), augment=False)
    args.update(kw)
    return tc.train_classifier("tiny_cnn", tmp_path / "w.pt", **args)


# ------------------------------------------------------------------ item 5: train_classifier
@pytest.mark.parametrize("lr", [math.inf, math.nan, 0, -1e-3, "x", None])
def test_train_classifier_refuses_a_bad_lr_before_training_and_writes_nothing(tmp_path, lr):
    with pytest.raises((ValueError, TypeError), match="lr"):
        _train(tmp_path, lr=lr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kw, name", [
    (dict(epochs=0), "epochs"), (dict(epochs=2.5), "epochs"), (dict(batch_size=-1), "batch_size"),
    (dict(seed="x"), "seed"), (dict(seed=-1), "seed"), (dict(weight_decay=math.inf), "weight_decay"),
    (dict(stickers=1.5), "stickers"), (dict(device="meta"), "device"), (dict(resume="no"), "resume"),
    (dict(train_limit=0), "train_limit"), (dict(init="/no/such.pt"), "init")])
def test_train_classifier_names_each_bad_argument(tmp_path, kw, name):
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=name):
        _train(tmp_path, **kw)


def test_train_classifier_refuses_unknown_arch_and_a_folder_as_out_path(tmp_path):
    with pytest.raises(LookupError, match="no_such_net"):
        tc.train_classifier("no_such_net", tmp_path / "w.pt", data=_toy(), progress=False)
    with pytest.raises(ValueError, match="out_path"):
        tc.train_classifier("tiny_cnn", tmp_path, data=_toy(), progress=False)


def test_labels_beyond_the_models_classes_are_refused_naming_labels(tmp_path):
    x, y, xt, yt = _toy()
    y = y.clone()
    y[3] = 12                                         # tiny_cnn has 10 classes
    with pytest.raises(ValueError, match="labels"):
        _train(tmp_path, data=(x, y, xt, yt))
    with pytest.raises(ValueError, match="channel"):  # fmnist models take 1 channel
        tc.train_classifier("fmnist_cnn_small", tmp_path / "w.pt", progress=False,
                            data=(torch.rand(4, 3, 28, 28), torch.zeros(4, dtype=torch.long),
                                  torch.rand(4, 3, 28, 28), torch.zeros(4, dtype=torch.long)))


def test_a_diverging_run_fails_naming_the_epoch_and_keeps_the_good_weights(tmp_path):
    _train(tmp_path, resume=False)
    good = (tmp_path / "w.pt").read_bytes()
    with pytest.raises(ValueError, match=r"diverged at epoch 1.*lower lr"):
        _train(tmp_path, lr=1e30, epochs=2, resume=False)
    assert (tmp_path / "w.pt").read_bytes() == good
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


# ------------------------------------------------------------------ item 6: DefensivePatchConfig
@pytest.mark.parametrize("kw, name", [
    (dict(lr=-1), "lr"), (dict(lr="x"), "lr"), (dict(lr=math.nan), "lr"), (dict(lr=math.inf), "lr"),
    (dict(train_limit=0), "train_limit"), (dict(train_limit=2.5), "train_limit"),
    (dict(epochs=0), "epochs"), (dict(gamma=0), "gamma"), (dict(lam=-1), "lam"),
    (dict(pgd_eps=2.0), "pgd_eps"), (dict(eot_scale=(1.1, 0.9)), "eot_scale"),
    (dict(eot="yes"), "eot"), (dict(seed=2 ** 64), "seed"), (dict(models=()), "models"),
    (dict(models=[1, 2]), "models"), (dict(placement={"kind": "border", "width": 0}), "placement.width"),
    (dict(placement={"kind": "border", "wdth": 2}), "placement"), (dict(milestones=[3, -1]), "milestones"),
    (dict(noise_probs=(0.5, math.nan, 0.5)), "noise_probs"), (dict(device="meta"), "device")])
def test_defensive_patch_config_names_the_bad_field(kw, name):
    with pytest.raises((ValueError, TypeError, LookupError), match=name):
        DefensivePatchConfig(**kw)


def test_unknown_corruption_names_are_a_lookup_error_listing_the_known_ones():
    with pytest.raises(LookupError, match="corruptions.*'nope'.*gaussian_noise"):
        DefensivePatchConfig(corruptions=("fog", "nope"))
    with pytest.raises(LookupError, match="dataset"):
        DefensivePatchConfig(dataset="cifar10")


def test_a_bare_model_name_is_one_model_not_its_characters(tmp_path):
    cfg = DefensivePatchConfig(models="fmnist_cnn_small", corruptions="fog")
    assert cfg.models == ("fmnist_cnn_small",) and cfg.corruptions == ("fog",)
    with pytest.raises(LookupError, match="models: unknown model 'no_such_net'"):
        train_defensive_patch(DefensivePatchConfig(models="no_such_net"), tmp_path / "o",
                              progress=False)
    assert not (tmp_path / "o").exists()            # refused before any folder or training


def test_defaults_and_the_presets_recorded_config_are_unchanged():
    from patchbench._config import config_from_mapping
    from patchbench.defensive.train import config_dict
    cfg = DefensivePatchConfig()
    assert cfg.placement == {"kind": "border", "width": 2} and cfg.models == ("fmnist_cnn_small",
                                                                              "fmnist_cnn_wide")
    path = os.path.join(os.path.dirname(tc.__file__), "..", "assets", "defensive_patch_fmnist.pt")
    recorded = DefensivePatch.load(path).meta["config"]
    # the shipped patch's recipe still parses to the same config (so a retrain from it is that run)
    assert config_dict(config_from_mapping(DefensivePatchConfig, recorded, "config")) == recorded
    assert (recorded["epochs"], recorded["train_limit"], recorded["shared_ce"]) == (8, 10000, 1.0)
    assert recorded["models"] == ["fmnist_cnn_small_stickers", "fmnist_cnn_wide_stickers"]


# ------------------------------------------------------------------ item 6: PatchZeroTrainConfig
@pytest.mark.parametrize("kw, name, err", [
    (dict(aux_weight=-0.4), "aux_weight", ValueError), (dict(pos_weight=-1), "pos_weight", ValueError),
    (dict(pos_weight=math.inf), "pos_weight", ValueError), (dict(unet_depth=10), "unet_depth", ValueError),
    (dict(shape="triangle"), "shape", LookupError), (dict(n_train=2.5), "n_train", TypeError),
    (dict(n_train="100"), "n_train", TypeError), (dict(lr=math.nan), "lr", ValueError),
    (dict(area_max=math.nan), "area_max", ValueError), (dict(dilation=-1), "dilation", ValueError),
    (dict(classifier="nope"), "classifier", LookupError), (dict(attacks="fgsm"), "attacks", LookupError),
    (dict(dataset="/no/such/folder"), "dataset", FileNotFoundError),
    (dict(num_threads=-1), "num_threads", ValueError), (dict(progress="false"), "progress", TypeError),
    (dict(attack_kwargs={"fgsm": {}}), "attack_kwargs", LookupError),
    (dict(epochs_stage1=0, epochs_stage2=0), "epochs_stage", ValueError)])
def test_patchzero_config_names_the_bad_field(kw, name, err):
    with pytest.raises(err, match=name):
        PatchZeroTrainConfig(**kw)


def test_unet_depth_error_states_the_range_and_why_and_shapes_are_listed():
    with pytest.raises(ValueError, match=r"1\.\.4.*28") as e:
        PatchZeroTrainConfig(unet_depth=10)
    assert "2×2" in str(e.value)
    with pytest.raises(LookupError, match="square.*circle"):
        PatchZeroTrainConfig(shape="triangle")
    assert PatchZeroTrainConfig(attacks="masked-pgd").attacks == ("masked-pgd",)


def test_fields_changed_after_construction_are_checked_when_training_starts(tmp_path):
    cfg = PatchZeroTrainConfig(classifier="tiny_cnn", classifier_kwargs={"channels": 1})
    cfg.lr = "x"
    with pytest.raises(TypeError, match="lr"):
        train_patchzero(cfg, tmp_path / "o")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ item 6: TOML files
@pytest.mark.parametrize("cls", [DefensivePatchConfig, PatchZeroTrainConfig])
def test_toml_syntax_errors_name_the_file_and_line(tmp_path, cls):
    f = tmp_path / "bad.toml"
    f.write_text("epochs = 3\nlr = = 1\n")
    with pytest.raises(ValueError, match=r"bad\.toml: TOML syntax error.*line 2"):
        cls.from_toml(f)
    f.write_bytes(b"epochs = 3\n# \xff\xfe\n")
    with pytest.raises(ValueError, match=r"bad\.toml:2: not UTF-8"):
        cls.from_toml(f)


@pytest.mark.parametrize("cls", [DefensivePatchConfig, PatchZeroTrainConfig])
def test_toml_type_errors_name_the_field_and_value(tmp_path, cls):
    f = tmp_path / "typ.toml"
    f.write_text('lr = "x"\n')
    with pytest.raises(TypeError, match=r"typ\.toml: \w+\.lr: expected a number, got 'x'"):
        cls.from_toml(f)


@pytest.mark.parametrize("cls", [DefensivePatchConfig, PatchZeroTrainConfig])
def test_toml_unknown_keys_list_the_known_ones_and_directories_are_refused(tmp_path, cls):
    f = tmp_path / "unk.toml"
    f.write_text("lrr = 0.1\n")
    with pytest.raises(ValueError, match=r"'lrr'.*known keys:.*\blr\b"):
        cls.from_toml(f)
    with pytest.raises(ValueError, match="is a directory"):
        cls.from_toml(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        cls.from_toml(tmp_path / "nope.toml")


def test_toml_nested_placement_errors_name_the_field_path(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('models = "fmnist_cnn_small"\n[placement]\nkind = "border"\nwidth = "2"\n')
    with pytest.raises(TypeError, match=r"placement\.width: expected an integer, got '2'"):
        DefensivePatchConfig.from_toml(f)
    f.write_text('[placement]\nkind = "border"\nwidth = 3\n')
    assert DefensivePatchConfig.from_toml(f).placement == {"kind": "border", "width": 3}


# ------------------------------------------------------------------ data loaders
def test_image_folder_follows_a_symlink_loop_once(tmp_path):
    from patchbench.data import ImageFolder
    cls = tmp_path / "cat"
    cls.mkdir()
    Image.new("RGB", (8, 8)).save(cls / "a.png")
    os.symlink(tmp_path, cls / "loop")               # cat/loop -> root: a cycle
    os.symlink(cls / "a.png", cls / "b.png")         # the same file twice
    ds = ImageFolder(tmp_path)
    assert [p.name for p, _ in ds.samples] == ["a.png"]


@pytest.mark.parametrize("line, why", [("1 2 inf 4 0 0 0 0 0 0", "finite"),
                                       ("1 2 1e400 4 0 0 0 0 0 0", "finite"),
                                       ("1 2 nan 4 0 0 0 0 0 0", "finite"),
                                       ("1 2 3.5 4 0 0 0 0 0 0", "whole")])
def test_wider_lines_with_inf_or_fractions_name_the_file_and_line(tmp_path, line, why):
    from patchbench.data.faces import load_wider_annotations
    p = tmp_path / "gt.txt"
    p.write_text(f"a.jpg\n1\n{line}\n")
    with pytest.raises(ValueError, match=rf"gt\.txt:3: .*{why}"):
        load_wider_annotations(p)


def test_wider_counts_must_be_whole_and_files_utf8(tmp_path):
    from patchbench.data.faces import load_wider_annotations
    p = tmp_path / "gt.txt"
    p.write_text("a.jpg\n2.7\n1 2 3 4 0 0 0 0 0 0\n1 2 3 4 0 0 0 0 0 0\n")
    with pytest.raises(ValueError, match=r"gt\.txt:2: .*whole"):
        load_wider_annotations(p)
    p.write_bytes(b"a.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n\xff\xfe\x00\n")
    with pytest.raises(ValueError, match=r"gt\.txt:4: not UTF-8"):
        load_wider_annotations(p)
    p.write_text("a.jpg\n2.0\n1 2 3 4 0 0 0 0 0 0\n5 6 7 8 0 0 0 0 0 0\n")
    assert load_wider_annotations(p)[0].boxes.tolist() == [[1, 2, 4, 6], [5, 6, 12, 14]]


def test_data_functions_check_sizes_counts_and_devices():
    from patchbench.data import samples
    from patchbench.data.faces import composite_faces
    with pytest.raises(ValueError, match="n"):
        samples("imagenet", n=100)                   # there are 8 photos, not 100
    with pytest.raises(ValueError, match="device"):
        samples("imagenet", device="meta")
    with pytest.raises(TypeError, match="size"):
        samples("imagenet", size=2.5)
    with pytest.raises(TypeError, match="name"):
        samples(None)
    with pytest.raises(TypeError, match="size"):
        composite_faces(1, size=200.5)
    with pytest.raises(TypeError, match="scale_range"):
        composite_faces(1, scale_range=(20.5, 40))
    with pytest.raises(TypeError, match="generator|seed"):
        composite_faces(1, generator="x")


def test_fashion_mnist_limit_beyond_the_split_is_an_error():
    from patchbench.data.fashion_mnist import fashion_mnist_available, load_fashion_mnist
    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed")
    with pytest.raises(ValueError, match="limit.*10000"):
        load_fashion_mnist("test", limit=20000)
    with pytest.raises(ValueError, match="limit"):
        load_fashion_mnist("test", limit=2.5)


# ------------------------------------------------------------------ defensive apply / evaluate
def _patch(k=2, c=1, hw=16):
    return DefensivePatch(torch.rand(k, c, hw, hw), DefensivePlacement().mask((hw, hw)),
                          [f"c{i}" for i in range(k)])


def test_defensive_patch_and_placement_check_their_inputs():
    with pytest.raises(ValueError, match="NaN"):
        DefensivePatch(torch.full((2, 1, 12, 12), math.nan), torch.zeros(12, 12), ["a", "b"])
    with pytest.raises(TypeError, match="classes"):
        DefensivePatch(torch.rand(2, 1, 12, 12), torch.zeros(12, 12), "ab")
    with pytest.raises(TypeError, match="class_ids"):
        DefensivePatch(torch.rand(2, 1, 12, 12), torch.zeros(12, 12), ["a", "b"], class_ids=[0.5, 1])
    with pytest.raises(TypeError, match="position"):
        DefensivePlacement("sticker", position="ab")
    with pytest.raises(ValueError, match="position"):
        DefensivePlacement("sticker", position=(math.nan, 0.0))
    with pytest.raises(LookupError, match="kind"):
        DefensivePlacement("triangle")
    with pytest.raises(TypeError, match="hw"):
        DefensivePlacement().mask(28)
    with pytest.raises(ValueError, match="value"):
        blank_patch_like(_patch(), math.nan)


def test_applying_a_patch_checks_images_labels_and_sizes():
    p = _patch()
    with pytest.raises(ValueError, match="patch is for"):
        apply_defensive_patch(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), p)   # patch > image
    with pytest.raises(ValueError, match="leaves no room"):
        DefensivePlacement("border", width=5).mask((8, 8))                        # frame > image
    with pytest.raises(ValueError, match="y"):
        apply_defensive_patch(torch.rand(2, 1, 16, 16), torch.tensor([0, 5]), p)
    with pytest.raises(ValueError, match="x"):
        apply_defensive_patch(torch.rand(2, 1, 16, 16) * 3, torch.tensor([0, 1]), p)
    with pytest.raises(TypeError, match="patch"):
        apply_defensive_patch(torch.rand(2, 1, 16, 16), torch.tensor([0, 1]), "patch.pt")
    with pytest.raises(ValueError, match="rotation"):
        physical_jitter(torch.rand(2, 1, 16, 16), 0, rotation=math.inf)
    with pytest.raises(ValueError, match="scale"):
        physical_jitter(torch.rand(2, 1, 16, 16), 0, scale=(1.1, 0.9))


def test_evaluate_defensive_patch_checks_its_arguments_before_any_attack():
    from patchbench import models
    from patchbench.defensive.evaluate import adversarial_images, evaluate_defensive_patch
    net = models.load("tiny_cnn", channels=1, num_classes=2)
    p = DefensivePatch(torch.rand(2, 1, 16, 16), DefensivePlacement().mask((16, 16)),
                       list(net.class_names))
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 0, 1])
    for kw, name in ((dict(corruptions=("nope",)), "corruptions"), (dict(severities=(0,)), "severities"),
                     (dict(epsilons=(math.nan,)), "epsilons"), (dict(n_adv=0), "n_adv"),
                     (dict(batch_size=0), "batch_size"), (dict(pgd_steps=0), "pgd_steps"),
                     (dict(seed="x"), "seed"), (dict(held_out={"other"}), "held_out")):
        with pytest.raises((ValueError, TypeError, LookupError), match=name):
            evaluate_defensive_patch({"tiny": net}, x, y, p, progress=False, **kw)
    with pytest.raises(TypeError, match="models"):
        evaluate_defensive_patch([net], x, y, p, progress=False)
    with pytest.raises(LookupError, match="attack"):
        adversarial_images(net, x, y, "cw", 0.1)
    with pytest.raises(ValueError, match="eps"):
        adversarial_images(net, x, y, "pgd", -0.1)
