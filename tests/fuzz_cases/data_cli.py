"""Fuzz cases for the CLI, the trainers' configs, the TOML config files, the data loaders,
``train_classifier`` and the defensive-patch entry points (issue 12).

* ``cli.*`` — ``patchbench ARGV`` variants; every one must end as one ``patchbench: error:`` line
  with exit code 2 *before* any model is loaded or any attack / training runs.
* ``config.*`` — ``DefensivePatchConfig`` / ``PatchZeroTrainConfig`` × every field × bad values, and
  TOML files with syntax, type and key errors (written once into a temporary folder at import).
* ``data.*`` — image folders, idx files, WIDER FACE annotations, samples, composites, and the
  classifier trainer / defensive patches given bad arguments (they fail before training starts).

Borderline-but-valid inputs carry a ``check`` that the answer is right."""
from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import (BAD_COUNT, BAD_FRACTION, BAD_NONNEGATIVE, BAD_POSITIVE, BAD_SEEDS, INF, NAN, Case, cli,
               param_cases)

from patchbench.data import (ImageFolder, image_paths, load_images, read_image, sample_info, samples,
                             stack_batch)
from patchbench.data.faces import composite_faces, load_wider_annotations
from patchbench.data.fashion_mnist import load_fashion_mnist, read_idx
from patchbench.defensive.apply import (DefensivePatch, DefensivePlacement, apply_defensive_patch,
                                        blank_patch_like, physical_jitter, random_patch_like)
from patchbench.defensive.train import DefensivePatchConfig
from patchbench.training import classifier as tc
from patchbench.training.patchzero import PatchZeroTrainConfig

# ---------------------------------------------------------------- files, written once at import
TMP = Path(tempfile.mkdtemp(prefix="pb_fuzz_data_cli_"))
IMGS = TMP / "imgs"
EMPTY = TMP / "empty"
NOIMG = TMP / "noimg"
for _d in (IMGS, EMPTY, NOIMG):
    _d.mkdir()
Image.fromarray(np.zeros((12, 12), np.uint8)).save(IMGS / "a.png")
(NOIMG / "notes.txt").write_text("not an image")
AFILE = TMP / "taken.txt"
AFILE.write_text("an existing file")
OUT = TMP / "out"                       # never created: every case fails first

# class folders: one with a symlink loop and a duplicate link, one with a non-image only
LOOP = TMP / "loop"
(LOOP / "cat").mkdir(parents=True)
Image.new("RGB", (8, 8)).save(LOOP / "cat" / "a.png")
os.symlink(LOOP, LOOP / "cat" / "up")
os.symlink(LOOP / "cat" / "a.png", LOOP / "cat" / "b.png")
BADCLS = TMP / "badcls"
(BADCLS / "dog").mkdir(parents=True)
(BADCLS / "dog" / "x.txt").write_text("no image")
NOCLS = TMP / "nocls"
NOCLS.mkdir()
Image.new("RGB", (8, 8)).save(NOCLS / "flat.png")
BROKEN = TMP / "broken.png"
BROKEN.write_bytes(b"\x89PNG not really")

TOML = {
    "syntax": "epochs = 3\nlr = = 1\n",
    "syntax_eof": "lr = [1,\n",
    "unclosed_table": "[placement\nkind = 'border'\n",
    "type_lr": 'lr = "x"\n',
    "type_epochs": "epochs = 2.5\n",
    "type_seed": 'seed = "zero"\n',
    "bool_for_int": "batch_size = true\n",
    "unknown": "lrr = 0.1\n",
    "unknown_table": "[bogus]\nx = 1\n",
    "neg_lr": "lr = -1.0\n",
    "nan_lr": "lr = nan\n",
    "inf_lr": "lr = inf\n",
}
DP_TOML = dict(TOML, **{
    "placement_type": 'placement = "border"\n',
    "placement_width": '[placement]\nkind = "border"\nwidth = "2"\n',
    "placement_kind": '[placement]\nkind = "triangle"\n',
    "placement_key": '[placement]\nkind = "border"\nwdth = 2\n',
    "corruption": 'corruptions = ["fog", "nope"]\n',
    "models_int": "models = [1, 2]\n",
    "noise_probs": "noise_probs = [0.5, 0.5]\n",
})
PZ_TOML = dict(TOML, **{
    "depth": "[patchzero]\nunet_depth = 10\n",
    "shape": '[patchzero]\nshape = "triangle"\n',
    "n_train": "[patchzero]\nn_train = 2.5\n",
    "table_type": "patchzero = 3\n",
    "attacks": '[patchzero]\nattacks = ["fgsm"]\n',
    "classifier": '[patchzero]\nclassifier = "no_such_net"\n',
    "weights": "[patchzero]\npos_weight = -1.0\naux_weight = -0.4\n",
})
TOMLDIR = TMP / "toml"
TOMLDIR.mkdir()
for _k, _v in {**{f"dp_{k}": v for k, v in DP_TOML.items()},
               **{f"pz_{k}": v for k, v in PZ_TOML.items()}}.items():
    (TOMLDIR / f"{_k}.toml").write_text(_v)
(TOMLDIR / "binary.toml").write_bytes(b"epochs = 3\n\xff\xfe\x00\n")
GOOD_DP = TOMLDIR / "good_dp.toml"
GOOD_DP.write_text('models = "fmnist_cnn_small"\nepochs = 3\n[placement]\nkind = "ring"\nwidth = 2\n')
GOOD_PZ = TOMLDIR / "good_pz.toml"
GOOD_PZ.write_text('[patchzero]\nn_train = 12\nattacks = "masked-pgd"\nout_dir = "runs/x"\n')

WIDER = {
    "inf": "a.jpg\n1\n1 2 inf 4 0 0 0 0 0 0\n",
    "big": "a.jpg\n1\n1 2 1e400 4 0 0 0 0 0 0\n",
    "huge": "a.jpg\n1\n1 2 1e300 4 0 0 0 0 0 0\n",
    "nan": "a.jpg\n1\nnan 2 3 4 0 0 0 0 0 0\n",
    "frac_count": "a.jpg\n2.7\n1 2 3 4 0 0 0 0 0 0\n1 2 3 4 0 0 0 0 0 0\n",
    "frac_box": "a.jpg\n1\n1 2 3.5 4 0 0 0 0 0 0\n",
    "frac_attr": "a.jpg\n1\n1 2 3 4 0.5 0 0 0 0 0\n",
    "neg_count": "a.jpg\n-1\n",
    "inf_count": "a.jpg\ninf\n",
    "short_line": "a.jpg\n1\n1 2 3 4\n",
    "long_line": "a.jpg\n1\n1 2 3 4 0 0 0 0 0 0 7\n",
    "word": "a.jpg\n1\n1 2 three 4 0 0 0 0 0 0\n",
    "eof": "a.jpg\n3\n1 2 3 4 0 0 0 0 0 0\n",
    "no_count": "a.jpg\n",
}
WIDERDIR = TMP / "wider"
WIDERDIR.mkdir()
for _k, _v in WIDER.items():
    (WIDERDIR / f"{_k}.txt").write_text(_v)
(WIDERDIR / "latin1.txt").write_bytes("a.jpg\n1\n1 2 3 4 0 0 0 0 0 0\ncaf\xe9.jpg\n0\n".encode("latin-1"))
(WIDERDIR / "whole_floats.txt").write_text("a.jpg\n2.0\n1 2 3 4 0 0 0 0 0 0\n5.0 6 7 8 0 0 0 0 0 0\n")
IDX = TMP / "idx"
IDX.mkdir()
(IDX / "garbage").write_bytes(b"\x00\x00\x08\x03\x00\x00")
(IDX / "magic").write_bytes(b"\x12\x34\x56\x78" + bytes(16))
(IDX / "short.gz").write_bytes(b"\x1f\x8b not gzip")


# ---------------------------------------------------------------- small objects, built once
@functools.lru_cache(maxsize=None)
def _tiny(channels=1, classes=2):
    from patchbench import models
    return models.load("tiny_cnn", channels=channels, num_classes=classes, seed=0)


@functools.lru_cache(maxsize=None)
def _patch(hw=16, k=2):
    return DefensivePatch(torch.rand(k, 1, hw, hw, generator=torch.Generator().manual_seed(0)),
                          DefensivePlacement().mask((hw, hw)), list(_tiny(1, k).class_names))


def _xy(n=4, hw=16, classes=2):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, hw, hw, generator=g), torch.arange(n) % classes


def _data(n=8):
    x, y = _xy(n, 12)
    return x, y, x[:4], y[:4]


def _eq(expected):
    def check(got):
        assert got == expected, (got, expected)
    return check


CASES: list = []
add = CASES.append


# ================================================================ CLI
def _argv_case(cid, argv, names):
    add(Case(f"cli.{cid}", lambda argv=argv: cli([str(a) for a in argv]), names))


ATTACK = ["attack", "--images", IMGS, "--out", OUT]
for v in ("0", "1", "1.5", "-0.1", "nan", "inf", "x", ""):
    _argv_case(f"attack.area={v!r}", ATTACK + ["--area", v], "--area")
for v in ("0", "-1", "2.5", "x", "nan"):
    _argv_case(f"attack.steps={v!r}", ATTACK + ["--steps", v], "--steps")
for v in ("-1", "x", "1.5"):
    _argv_case(f"attack.target={v!r}", ATTACK + ["--target", v], "--target")
for v in ("-1", "x", str(2 ** 64), "1.5"):
    _argv_case(f"attack.seed={v!r}", ATTACK + ["--seed", v], "--seed")
for v in ("cuda:99", "meta", "tpu", "", "cpu:x"):
    _argv_case(f"attack.device={v!r}", ATTACK + ["--device", v], "--device")
for flag, v in (("--attack", "nope"), ("--attack", ""), ("--shape", "triangle"), ("--shape", ""),
                ("--model", "no_such_net"), ("--model", "")):
    _argv_case(f"attack.{flag[2:]}={v!r}", ATTACK + [flag, v], flag)
_argv_case("attack.out=file", ["attack", "--images", IMGS, "--out", AFILE], "--out")
for name, folder in (("empty", EMPTY), ("missing", TMP / "missing"), ("no_images", NOIMG),
                     ("class_folder_without_images", BADCLS)):
    _argv_case(f"attack.images={name}", ["attack", "--images", folder, "--out", OUT], "--images")
_argv_case("attack.unknown_flag", ATTACK + ["--bogus", "1"], ("unrecognised", "unrecognized"))
_argv_case("attack.no_images_flag", ["attack", "--out", OUT], "--images")
_argv_case("attack.area_twice_bad", ATTACK + ["--area", "0.1", "--area", "2"], "--area")

for v in ("-1", "x"):
    _argv_case(f"demo.seed={v!r}", ["demo", "--out", OUT, "--seed", v], "--seed")
for v in ("cuda:99", "meta"):
    _argv_case(f"demo.device={v!r}", ["demo", "--out", OUT, "--device", v], "--device")
_argv_case("demo.out=file", ["demo", "--out", AFILE], "--out")
_argv_case("demo.unknown_flag", ["demo", "--out", OUT, "--fast"], ("unrecognised", "unrecognized"))
_argv_case("command.missing", [], ("command", "required"))
_argv_case("command.unknown", ["fly"], ("command", "invalid choice"))

CLF = ["train", "classifier", "--arch", "tiny_cnn", "--out", OUT / "w.pt"]
for flag, values in (("--epochs", ("0", "-1", "x", "2.5")), ("--batch-size", ("0", "x")),
                     ("--lr", ("0", "-1", "nan", "inf", "x")), ("--seed", ("-1", "x")),
                     ("--threads", ("-1", "0", "x")), ("--stickers", ("-0.1", "2", "nan")),
                     ("--device", ("meta", "cuda:99"))):
    for v in values:
        _argv_case(f"train.classifier{flag}={v!r}", CLF + [flag, v], flag)
_argv_case("train.classifier.arch=nope", ["train", "classifier", "--arch", "nope", "--out", OUT / "w.pt"],
           "--arch")
_argv_case("train.classifier.out=dir", ["train", "classifier", "--arch", "tiny_cnn", "--out", TMP],
           "--out")
_argv_case("train.classifier.checkpoint=dir", CLF + ["--checkpoint", TMP], "--checkpoint")
_argv_case("train.classifier.no_arch", ["train", "classifier", "--out", OUT / "w.pt"], "--arch")
_argv_case("train.target=nope", ["train", "nope"], "TARGET")

for target, prefix in (("patchzero", "pz"), ("defensive-patch", "dp")):
    base = ["train", target, "--out", OUT]
    _argv_case(f"train.{target}.config=dir", base + ["--config", TMP], "--config")
    _argv_case(f"train.{target}.config=missing", base + ["--config", TMP / "nope.toml"], "--config")
    _argv_case(f"train.{target}.config=syntax", base + ["--config", TOMLDIR / f"{prefix}_syntax.toml"],
               (f"{prefix}_syntax.toml",))
    _argv_case(f"train.{target}.config=type", base + ["--config", TOMLDIR / f"{prefix}_type_lr.toml"],
               ("lr",))
    _argv_case(f"train.{target}.config=unknown", base + ["--config", TOMLDIR / f"{prefix}_unknown.toml"],
               ("lrr",))
    _argv_case(f"train.{target}.out=file", ["train", target, "--config", GOOD_DP, "--out", AFILE], "--out")
    _argv_case(f"train.{target}.no_config", ["train", target, "--out", OUT], "--config")
_argv_case("train.patchzero.device=meta", ["train", "patchzero", "--config", GOOD_PZ, "--out", OUT,
                                           "--device", "meta"], "--device")
_argv_case("train.defensive-patch.threads=-1", ["train", "defensive-patch", "--config", GOOD_DP,
                                                "--out", OUT, "--threads", "-1"], "--threads")

EV = ["evaluate", "--out", OUT, "--preset"]
for preset, flag, v in (
        ("defenses", "--threads", "-1"), ("defenses", "--n", "0"), ("defenses", "--steps", "x"),
        ("defenses", "--areas", "x"), ("defenses", "--areas", "1.5"), ("defenses", "--defenses", "nope"),
        ("defenses", "--model", "no_such_net"), ("defenses", "--seed", "-1"),
        ("defenses", "--patchzero-do", str(TMP / "missing.pt")),
        ("face-patch", "--lr", "nan"), ("face-patch", "--alpha", "2"), ("face-patch", "--size", "0"),
        ("face-patch", "--size", "10"), ("face-patch", "--strategies", "nope"),
        ("face-patch", "--device", "meta"), ("face-patch", "--patch-size", "500"),
        ("face-patch", "--threads", "0"), ("defensive-patch", "--n-test", "0"),
        ("defensive-patch", "--n-test", "20000"), ("defensive-patch", "--epochs", "0"),
        ("defensive-patch", "--threads", "-1"), ("defensive-patch", "--train-limit", "x")):
    _argv_case(f"evaluate.{preset}{flag}={v!r}", EV + [preset, flag, v], flag)
_argv_case("evaluate.preset=nope", EV + ["nope"], "--preset")
_argv_case("evaluate.out=file", ["evaluate", "--out", AFILE, "--preset", "defenses"], "--out")
add(Case("cli.help", lambda: cli(["--help"]), check=_eq(0)))
add(Case("cli.train.help", lambda: cli(["train", "classifier", "--help"]), check=_eq(0)))


# ================================================================ configs × fields × bad values
def _dp(**kw):
    return DefensivePatchConfig(**kw)


def _pz(**kw):
    return PatchZeroTrainConfig(**kw)


for field in ("epochs", "batch_size", "prior_epochs", "prior_steps", "prior_batch", "repeat",
              "pgd_steps", "noise_chunks", "image_size"):
    CASES += param_cases("config.dp", _dp, field, BAD_COUNT)
for field in ("lr", "prior_lr", "gamma"):
    CASES += param_cases("config.dp", _dp, field, BAD_POSITIVE)
for field in ("lam", "shared_ce"):
    CASES += param_cases("config.dp", _dp, field, BAD_NONNEGATIVE)
CASES += param_cases("config.dp", _dp, "pgd_eps", (-0.1, 1.5, NAN, INF, "x", None))
CASES += param_cases("config.dp", _dp, "eot_shift", (-0.1, 1.5, NAN, "x"))
CASES += param_cases("config.dp", _dp, "eot_rotation", (-1, 200, NAN, INF, "x"))
CASES += param_cases("config.dp", _dp, "eot_scale", ((1.1, 0.9), (0, 1), (NAN, 1), 1.0, "ab", (1.0,)))
CASES += param_cases("config.dp", _dp, "noise_probs", ((0, 0, 0), (0.5, 0.5), (-1, 1, 1), (NAN, 1, 1),
                                                        "abc", 1.0))
CASES += param_cases("config.dp", _dp, "train_limit", (0, -1, 2.5, "100", True, INF))
CASES += param_cases("config.dp", _dp, "seed", BAD_SEEDS)
CASES += param_cases("config.dp", _dp, "dataset", ("cifar10", "", None, 3))
CASES += param_cases("config.dp", _dp, "models", ((), [], None, [1, 2], ("",), 3))
CASES += param_cases("config.dp", _dp, "corruptions", (("nope",), ["fog", "Fog"], None, [1], 3))
CASES += param_cases("config.dp", _dp, "milestones", ([3, -1], [2.5], "38", None))
CASES += param_cases("config.dp", _dp, "eot", ("yes", 1, None))
CASES += param_cases("config.dp", _dp, "noise_aware", ("no", 0))
CASES += param_cases("config.dp", _dp, "device", ("meta", "cuda:99", "", 3))
CASES += param_cases("config.dp", _dp, "placement", ("border", {"kind": "triangle"}, {"kind": "border",
                     "width": 0}, {"kind": "border", "wdth": 2}, {"kind": "sticker", "position": "ab"},
                     {"kind": "sticker", "position": (NAN, 0)}, {"kind": "border", "width": 2.5}, None))
add(Case("config.dp.models=bare_string", lambda: _dp(models="fmnist_cnn_small"),
         check=lambda c: _eq(("fmnist_cnn_small",))(c.models)))
add(Case("config.dp.corruptions=bare_string", lambda: _dp(corruptions="fog"),
         check=lambda c: _eq(("fog",))(c.corruptions)))
add(Case("config.dp.epochs=3.0", lambda: _dp(epochs=3.0), check=lambda c: _eq(3)(c.epochs)))
add(Case("config.dp.placement=object", lambda: _dp(placement=DefensivePlacement("ring", width=2)),
         check=lambda c: _eq("ring")(c.placement["kind"])))

for field in ("n_train", "batch_size", "attack_steps", "adaptive_steps", "unet_base", "image_size"):
    CASES += param_cases("config.pz", _pz, field, BAD_COUNT)
CASES += param_cases("config.pz", _pz, "unet_depth", (0, 5, 10, -1, 2.5, "2", None))
for field in ("epochs_stage1", "epochs_stage2"):
    CASES += param_cases("config.pz", _pz, field, (-1, 2.5, "3", None, NAN))
for field in ("lr", "pos_weight"):
    CASES += param_cases("config.pz", _pz, field, BAD_POSITIVE)
CASES += param_cases("config.pz", _pz, "lr_stage2", (0, -1, NAN, INF, "x"))
CASES += param_cases("config.pz", _pz, "aux_weight", BAD_NONNEGATIVE)
CASES += param_cases("config.pz", _pz, "area_min", BAD_FRACTION + (0.5,), names=("area_min", "area_max"))
CASES += param_cases("config.pz", _pz, "area_max", BAD_FRACTION + (0.001,), names=("area_min", "area_max"))
CASES += param_cases("config.pz", _pz, "shape", ("triangle", "", None, 3))
CASES += param_cases("config.pz", _pz, "attacks", ((), ("fgsm",), "fgsm", None, [1]))
CASES += param_cases("config.pz", _pz, "attack_kwargs", ({"fgsm": {}}, {"masked-pgd": 3}, [1], "x"))
CASES += param_cases("config.pz", _pz, "classifier_kwargs", ([1], "x", {1: 2}))
CASES += param_cases("config.pz", _pz, "classifier", ("no_such_net", None, 3))
CASES += param_cases("config.pz", _pz, "dataset", (str(TMP / "missing"), "", None, "fashion_mnist"))
CASES += param_cases("config.pz", _pz, "lr_schedule", ("step", None, ""))
CASES += param_cases("config.pz", _pz, "dilation", (-1, 1.5, "1"))
CASES += param_cases("config.pz", _pz, "seed", BAD_SEEDS)
CASES += param_cases("config.pz", _pz, "device", ("meta", "cuda:99", ""))
CASES += param_cases("config.pz", _pz, "num_threads", (0, -1, 1.5, "2"))
CASES += param_cases("config.pz", _pz, "progress", ("false", 0, None))
add(Case("config.pz.epochs_both_zero", lambda: _pz(epochs_stage1=0, epochs_stage2=0), ("epochs_stage",)))
add(Case("config.pz.unet_depth=4", lambda: _pz(unet_depth=4), check=lambda c: _eq(4)(c.unet_depth)))
add(Case("config.pz.attacks=bare_string", lambda: _pz(attacks="masked-cw"),
         check=lambda c: _eq(("masked-cw",))(c.attacks)))
add(Case("config.pz.epochs_stage2=0", lambda: _pz(epochs_stage2=0), check=lambda c: _eq(0)(c.epochs_stage2)))

# ---------------------------------------------------------------- TOML files
for key in DP_TOML:
    names = {"syntax": ("dp_syntax.toml",), "syntax_eof": ("dp_syntax_eof.toml",),
             "unclosed_table": ("dp_unclosed_table.toml",), "unknown": ("lrr",),
             "unknown_table": ("bogus",), "type_epochs": ("epochs",), "type_seed": ("seed",),
             "bool_for_int": ("batch_size",), "placement_type": ("placement",),
             "placement_width": ("placement.width",), "placement_kind": ("kind",),
             "placement_key": ("wdth",), "corruption": ("corruptions",), "models_int": ("models",),
             "noise_probs": ("noise_probs",)}.get(key, ("lr",))
    add(Case(f"config.toml.dp.{key}", lambda key=key: DefensivePatchConfig.from_toml(
        TOMLDIR / f"dp_{key}.toml"), names))
for key in PZ_TOML:
    names = {"syntax": ("pz_syntax.toml",), "syntax_eof": ("pz_syntax_eof.toml",),
             "unclosed_table": ("pz_unclosed_table.toml",), "unknown": ("lrr",),
             "unknown_table": ("bogus",), "type_epochs": ("epochs",), "type_seed": ("seed",),
             "bool_for_int": ("batch_size",), "depth": ("unet_depth",), "shape": ("shape",),
             "n_train": ("n_train",), "table_type": ("patchzero",), "attacks": ("attacks",),
             "classifier": ("classifier",), "weights": ("weight",)}.get(key, ("lr",))
    add(Case(f"config.toml.pz.{key}", lambda key=key: PatchZeroTrainConfig.from_toml(
        TOMLDIR / f"pz_{key}.toml"), names))
for cls, tag in ((DefensivePatchConfig, "dp"), (PatchZeroTrainConfig, "pz")):
    add(Case(f"config.toml.{tag}.directory", lambda cls=cls: cls.from_toml(TOMLDIR), ("directory",)))
    add(Case(f"config.toml.{tag}.missing", lambda cls=cls: cls.from_toml(TOMLDIR / "nope.toml"),
             ("nope.toml",)))
    add(Case(f"config.toml.{tag}.binary", lambda cls=cls: cls.from_toml(TOMLDIR / "binary.toml"),
             ("binary.toml",)))
    add(Case(f"config.toml.{tag}.path=None", lambda cls=cls: cls.from_toml(None), ("config",)))
add(Case("config.toml.dp.good", lambda: DefensivePatchConfig.from_toml(GOOD_DP),
         check=lambda c: _eq((("fmnist_cnn_small",), 3, "ring"))((c.models, c.epochs, c.placement["kind"]))))
add(Case("config.toml.pz.good", lambda: PatchZeroTrainConfig.from_toml(GOOD_PZ),
         check=lambda c: _eq((12, ("masked-pgd",)))((c.n_train, c.attacks))))


# ================================================================ data loaders
def _wider(name):
    return load_wider_annotations(WIDERDIR / f"{name}.txt")


for key in WIDER:
    add(Case(f"data.wider.{key}", lambda key=key: _wider(key), (f"{key}.txt",)))
add(Case("data.wider.latin1", lambda: _wider("latin1"), ("latin1.txt:4",)))
add(Case("data.wider.directory", lambda: load_wider_annotations(WIDERDIR), ("txt_path",)))
add(Case("data.wider.missing", lambda: load_wider_annotations(WIDERDIR / "nope.txt"), ("nope.txt",)))
add(Case("data.wider.path=None", lambda: load_wider_annotations(None), ("txt_path",)))
add(Case("data.wider.whole_floats", lambda: _wider("whole_floats"),
         check=lambda r: _eq([[1, 2, 4, 6], [5, 6, 12, 14]])(r[0].boxes.tolist())))

add(Case("data.folder.symlink_loop", lambda: ImageFolder(LOOP),
         check=lambda ds: _eq(["a.png"])([p.name for p, _ in ds.samples])))
add(Case("data.folder.root=missing", lambda: ImageFolder(TMP / "missing"), ("missing",)))
add(Case("data.folder.root=file", lambda: ImageFolder(AFILE), ("taken.txt",)))
add(Case("data.folder.root=None", lambda: ImageFolder(None), ("root",)))
add(Case("data.folder.root=3", lambda: ImageFolder(3), ("root",)))
add(Case("data.folder.no_classes", lambda: ImageFolder(NOCLS), ("class",)))
add(Case("data.folder.class_without_images", lambda: ImageFolder(BADCLS), ("dog",)))
add(Case("data.folder.mode=CMYK", lambda: ImageFolder(LOOP, mode="CMYK"), ("mode",)))
add(Case("data.folder.size=0", lambda: ImageFolder(LOOP, size=0), ("size",)))
add(Case("data.folder.size=2.5", lambda: ImageFolder(LOOP, size=2.5), ("size",)))
add(Case("data.folder.extensions=None", lambda: ImageFolder(LOOP, extensions=None), ("extensions",)))
add(Case("data.folder.extensions=[1]", lambda: ImageFolder(LOOP, extensions=[1]), ("extensions",)))
add(Case("data.folder.extensions=()", lambda: ImageFolder(LOOP, extensions=()), ("extensions",)))
add(Case("data.folder.index=5", lambda: ImageFolder(LOOP)[5], ("index",)))
add(Case("data.folder.index=1.0", lambda: ImageFolder(LOOP)[1.0], ("index",)))
add(Case("data.folder.load.indices=x", lambda: ImageFolder(LOOP).load("x"), ("indices",)))
add(Case("data.folder.load.indices=[0.5]", lambda: ImageFolder(LOOP).load([0.5]), ("indices",)))
add(Case("data.folder.load.device=meta", lambda: ImageFolder(LOOP).load(device="meta"), ("device",)))
add(Case("data.paths=None", lambda: image_paths(None), ("paths_or_dir",)))
add(Case("data.paths=[]", lambda: image_paths([]), ("empty",)))
add(Case("data.paths=[None]", lambda: image_paths([None]), ("paths_or_dir",)))
add(Case("data.paths=empty_dir", lambda: image_paths(EMPTY), ("no image",)))
add(Case("data.paths=''", lambda: image_paths(""), ("empty",)))
add(Case("data.load_images.size=-1", lambda: load_images(IMGS, size=-1), ("size",)))
add(Case("data.load_images.size=(8,)", lambda: load_images(IMGS, size=(8,)), ("size",)))
add(Case("data.load_images.mode=x", lambda: load_images(IMGS, mode="x"), ("mode",)))
add(Case("data.load_images.device=cuda:99", lambda: load_images(IMGS, device="cuda:99"), ("device",)))
add(Case("data.load_images.broken", lambda: load_images([BROKEN]), ("broken.png",)))
add(Case("data.read_image.path=None", lambda: read_image(None), ("path",)))
add(Case("data.read_image.dir", lambda: read_image(IMGS), ("imgs",)))
add(Case("data.read_image.size=0", lambda: read_image(IMGS / "a.png", size=0), ("size",)))
add(Case("data.stack_batch.empty", lambda: stack_batch([]), ("empty",)))
for v in (0, -1, 2.5, "3", True, 100, 10 ** 6):
    add(Case(f"data.samples.n={v!r}", lambda v=v: samples("imagenet", n=v), ("n",)))
for v in (0, 2.5, (8,), "x", True, (-1, 4)):
    add(Case(f"data.samples.size={v!r}", lambda v=v: samples("imagenet", size=v), ("size",)))
for v in ("meta", "cuda:99", 3):
    add(Case(f"data.samples.device={v!r}", lambda v=v: samples("imagenet", device=v), ("device",)))
for v in ("cifar", None, 3):
    add(Case(f"data.samples.name={v!r}", lambda v=v: samples(v), ("name",)))
add(Case("data.sample_info.n=20000", lambda: sample_info("fashion-mnist", n=20000), ("n",)))
add(Case("data.samples.n=8", lambda: samples("imagenet", n=8, size=16),
         check=lambda xy: _eq((8, 3, 16, 16))(tuple(xy[0].shape))))
for v in (0, -1, 2.5, "3", True, 20000, INF):
    add(Case(f"data.fmnist.limit={v!r}", lambda v=v: load_fashion_mnist("test", limit=v), ("limit",)))
for v in ("val", None, 1, "TEST"):
    add(Case(f"data.fmnist.split={v!r}", lambda v=v: load_fashion_mnist(v), ("split",)))
add(Case("data.fmnist.root=empty", lambda: load_fashion_mnist("test", root=EMPTY), ("fashion-mnist",)))
add(Case("data.fmnist.root=3", lambda: load_fashion_mnist("test", root=3), ("root",)))
add(Case("data.idx.garbage", lambda: read_idx(IDX / "garbage"), ("garbage",)))
add(Case("data.idx.magic", lambda: read_idx(IDX / "magic"), ("magic",)))
add(Case("data.idx.bad_gzip", lambda: read_idx(IDX / "short.gz"), ("short.gz",)))
add(Case("data.idx.dir", lambda: read_idx(IDX), ("directory",)))
add(Case("data.idx.missing", lambda: read_idx(IDX / "nope"), ("nope",)))
add(Case("data.idx.None", lambda: read_idx(None), ("path",)))
for kw, names in ((dict(n=0), "n"), (dict(n=2.5), "n"), (dict(max_faces=0), "max_faces"),
                  (dict(size=200.5), "size"), (dict(size=(64,)), "size"), (dict(size=0), "size"),
                  (dict(scale_range=(20.5, 40)), "scale_range"), (dict(scale_range=(4, 40)), "scale_range"),
                  (dict(scale_range=(48, 300)), "scale_range"), (dict(scale_range="ab"), "scale_range"),
                  (dict(split="val"), "split"), (dict(split=None), "split"), (dict(generator="x"), "generator"),
                  (dict(generator=-1), "generator"), (dict(backgrounds=["astronaut"]), "backgrounds"),
                  (dict(backgrounds="coffee"), "backgrounds"), (dict(backgrounds=[]), "backgrounds"),
                  (dict(backgrounds=[torch.rand(3, 8, 8) * 4]), "backgrounds"),
                  (dict(faces=(torch.rand(2, 3, 16, 16), [0])), "faces"),
                  (dict(faces=(torch.rand(2, 3, 16, 16), [0.5, 1.5])), "faces"),
                  (dict(faces=(torch.rand(2, 1, 16, 16), [0, 1])), "faces"),
                  (dict(faces="crops"), "faces")):
    add(Case(f"data.composite.{'.'.join(f'{k}={v!r}' for k, v in kw.items())[:60]}",
             lambda kw=kw: composite_faces(1, **{"size": 64, "scale_range": (16, 32), **kw}), (names,)))


# ================================================================ train_classifier (before training)
def _clf(**kw):
    args = dict(epochs=1, batch_size=4, lr=1e-2, progress=False, data=_data(), augment=False)
    args.update(kw)
    return tc.train_classifier("tiny_cnn", OUT / "w.pt", **args)


CASES += param_cases("data.train_classifier", _clf, "lr", BAD_POSITIVE)
CASES += param_cases("data.train_classifier", _clf, "epochs", BAD_COUNT)
CASES += param_cases("data.train_classifier", _clf, "batch_size", BAD_COUNT)
CASES += param_cases("data.train_classifier", _clf, "seed", BAD_SEEDS)
CASES += param_cases("data.train_classifier", _clf, "weight_decay", (-1, NAN, INF, "x"))
CASES += param_cases("data.train_classifier", _clf, "stickers", (-0.1, 1.5, NAN, "x"))
CASES += param_cases("data.train_classifier", _clf, "device", ("meta", "cuda:99", 3))
CASES += param_cases("data.train_classifier", _clf, "resume", ("no", None))
CASES += param_cases("data.train_classifier", _clf, "train_limit", (0, 2.5))
CASES += param_cases("data.train_classifier", _clf, "init", (str(TMP / "nope.pt"), 3))
CASES += param_cases("data.train_classifier", _clf, "root", (str(TMP / "nope"), str(AFILE)))
CASES += param_cases("data.train_classifier", _clf, "checkpoint_path", (str(TMP),))


def _labels(bad):
    x, y, xt, yt = _data()
    y = y.clone()
    y[0] = bad
    return _clf(data=(x, y, xt, yt))


add(Case("data.train_classifier.labels=10", lambda: _labels(10), ("labels", "y_train")))
add(Case("data.train_classifier.labels=-1", lambda: _labels(-1), ("y_train",)))
add(Case("data.train_classifier.labels=float", lambda: _clf(data=(_data()[0], _data()[1].float(),
                                                                 _data()[2], _data()[3])), ("y_train",)))
add(Case("data.train_classifier.x=uint8", lambda: _clf(data=((_data()[0] * 255).to(torch.uint8),
                                                            *_data()[1:])), ("x_train",)))
add(Case("data.train_classifier.x=3ch", lambda: _clf(data=(torch.rand(8, 3, 12, 12), *_data()[1:])),
         ("x_train", "channel")))
add(Case("data.train_classifier.data=pair", lambda: _clf(data=_data()[:2]), ("data",)))
add(Case("data.train_classifier.arch=nope", lambda: tc.train_classifier("nope", OUT / "w.pt",
                                                                        data=_data(), progress=False),
         ("nope",)))
add(Case("data.train_classifier.out=dir", lambda: tc.train_classifier("tiny_cnn", TMP, data=_data(),
                                                                      progress=False), ("out_path",)))
add(Case("data.train_classifier.out=None", lambda: tc.train_classifier("tiny_cnn", None, data=_data(),
                                                                       progress=False), ("out_path",)))
add(Case("data.random_stickers.p=nan", lambda: tc.random_stickers(torch.rand(2, 1, 8, 8),
                                                                  torch.Generator(), NAN), ("p",)))
add(Case("data.random_stickers.x=list", lambda: tc.random_stickers([1], torch.Generator()), ("x",)))
add(Case("data.random_shift_flip.max_shift=-1", lambda: tc.random_shift_flip(
    torch.rand(2, 1, 8, 8), torch.Generator(), -1), ("max_shift",)))
add(Case("data.accuracy.batch_size=0", lambda: tc.accuracy(_tiny(1, 2).net, *_xy(4, 12), batch_size=0),
         ("batch_size",)))


# ================================================================ defensive patches: apply / evaluate
def _apply(x=None, y=None, patch=None, **kw):
    x0, y0 = _xy()
    return apply_defensive_patch(x0 if x is None else x, y0 if y is None else y,
                                 _patch() if patch is None else patch, **kw)


add(Case("data.defensive.apply.x=small", lambda: _apply(x=torch.rand(4, 1, 8, 8)), ("patch is for",)))
add(Case("data.defensive.apply.x=3ch", lambda: _apply(x=torch.rand(4, 3, 16, 16)), ("patch is for",)))
add(Case("data.defensive.apply.x=255", lambda: _apply(x=torch.rand(4, 1, 16, 16) * 255), ("x",)))
add(Case("data.defensive.apply.x=uint8", lambda: _apply(x=torch.zeros(4, 1, 16, 16, dtype=torch.uint8)),
         ("x",)))
add(Case("data.defensive.apply.x=nan", lambda: _apply(x=torch.full((4, 1, 16, 16), NAN)), ("x",)))
add(Case("data.defensive.apply.y=5", lambda: _apply(y=torch.tensor([0, 1, 5, 0])), ("y",)))
add(Case("data.defensive.apply.y=short", lambda: _apply(y=torch.tensor([0, 1])), ("y",)))
add(Case("data.defensive.apply.y=float", lambda: _apply(y=torch.zeros(4)), ("y",)))
add(Case("data.defensive.apply.patch=str", lambda: _apply(patch="patch.pt"), ("patch",)))
add(Case("data.defensive.apply.photometric=3", lambda: _apply(photometric=3), ("photometric",)))
add(Case("data.defensive.apply.ok", lambda: _apply(),
         check=lambda z: _eq(True)(bool(torch.equal(z * (1 - _patch().mask), _xy()[0] * (1 - _patch().mask))))))
add(Case("data.defensive.patch.nan", lambda: DefensivePatch(torch.full((2, 1, 16, 16), NAN),
                                                            torch.zeros(16, 16), ["a", "b"]), ("nan",)))
add(Case("data.defensive.patch.classes=str", lambda: DefensivePatch(torch.rand(2, 1, 16, 16),
                                                                    torch.zeros(16, 16), "ab"), ("classes",)))
add(Case("data.defensive.patch.class_ids=float", lambda: DefensivePatch(
    torch.rand(2, 1, 16, 16), torch.zeros(16, 16), ["a", "b"], class_ids=[0.5, 1]), ("class_ids",)))
add(Case("data.defensive.patch.class_ids=dup", lambda: DefensivePatch(
    torch.rand(2, 1, 16, 16), torch.zeros(16, 16), ["a", "b"], class_ids=[1, 1]), ("class_ids",)))
add(Case("data.defensive.patch.mask=wrong", lambda: DefensivePatch(
    torch.rand(2, 1, 16, 16), torch.zeros(8, 8), ["a", "b"]), ("mask",)))
add(Case("data.defensive.patch.placement=str", lambda: DefensivePatch(
    torch.rand(2, 1, 16, 16), torch.zeros(16, 16), ["a", "b"], placement="border"), ("placement",)))
add(Case("data.defensive.patch.meta=list", lambda: DefensivePatch(
    torch.rand(2, 1, 16, 16), torch.zeros(16, 16), ["a", "b"], meta=[1]), ("meta",)))
add(Case("data.defensive.load=garbage", lambda: DefensivePatch.load(BROKEN), ("broken.png",)))
add(Case("data.defensive.load=dir", lambda: DefensivePatch.load(TMP), ("directory",)))
add(Case("data.defensive.load=missing", lambda: DefensivePatch.load(TMP / "nope.pt"), ("nope.pt",)))
for kw, names in ((dict(kind="triangle"), "kind"), (dict(width=0), "width"), (dict(width=2.5), "width"),
                  (dict(size=-1), "size"), (dict(margin=-1), "margin"), (dict(position="ab"), "position"),
                  (dict(position=(0.5,)), "position"), (dict(position=(1.5, 0)), "position"),
                  (dict(position=(NAN, 0)), "position"), (dict(kind=None), "kind")):
    add(Case(f"data.defensive.placement.{list(kw)[0]}={list(kw.values())[0]!r}",
             lambda kw=kw: DefensivePlacement(**kw), (names,)))
for hw, names in ((28, "hw"), ((28,), "hw"), ((28.5, 28), "hw"), ((0, 28), "hw"), ((8, 8), ("room", "cover"))):
    add(Case(f"data.defensive.mask.hw={hw!r}", lambda hw=hw: DefensivePlacement().mask(hw),
             names if isinstance(names, tuple) else (names,)))
for kw, names in ((dict(rotation=INF), "rotation"), (dict(rotation=-1), "rotation"),
                  (dict(scale=(1.1, 0.9)), "scale"), (dict(scale=(0, 1)), "scale"), (dict(scale=1.0), "scale"),
                  (dict(shift=NAN), "shift"), (dict(shift=2), "shift"), (dict(generator="x"), "generator")):
    add(Case(f"data.defensive.jitter.{list(kw)[0]}={list(kw.values())[0]!r}",
             lambda kw=kw: physical_jitter(_xy()[0], **{"generator": 0, **kw}), (names,)))
add(Case("data.defensive.jitter.x=list", lambda: physical_jitter([1, 2], 0), ("x",)))
add(Case("data.defensive.blank.value=nan", lambda: blank_patch_like(_patch(), NAN), ("value",)))
add(Case("data.defensive.blank.value=2", lambda: blank_patch_like(_patch(), 2), ("value",)))
add(Case("data.defensive.blank.patch=str", lambda: blank_patch_like("p"), ("patch",)))
add(Case("data.defensive.random.generator=x", lambda: random_patch_like(_patch(), "x"), ("generator",)))


def _evaluate(**kw):
    from patchbench.defensive.evaluate import evaluate_defensive_patch
    x, y = _xy()
    return evaluate_defensive_patch({"tiny": _tiny(1, 2)}, x, y, _patch(), **{"progress": False, **kw})


for kw, names in ((dict(corruptions=("nope",)), "corruptions"), (dict(corruptions=None), "corruptions"),
                  (dict(severities=(0,)), "severities"), (dict(severities=(6,)), "severities"),
                  (dict(severities=(2.5,)), "severities"), (dict(severities=3), "severities"),
                  (dict(epsilons=(NAN,)), "epsilons"), (dict(epsilons=(-0.1,)), "epsilons"),
                  (dict(epsilons=(2,)), "epsilons"), (dict(n_adv=0), "n_adv"), (dict(n_adv=1.5), "n_adv"),
                  (dict(batch_size=0), "batch_size"), (dict(pgd_steps=0), "pgd_steps"),
                  (dict(seed="x"), "seed"), (dict(progress="yes"), "progress"),
                  (dict(held_out={"other"}), "held_out")):
    add(Case(f"data.defensive.evaluate.{list(kw)[0]}={list(kw.values())[0]!r}",
             lambda kw=kw: _evaluate(**kw), (names,)))


def _evaluate_call(models=None, x=None, y=None, patch=None):
    from patchbench.defensive.evaluate import evaluate_defensive_patch
    x0, y0 = _xy()
    return evaluate_defensive_patch({"tiny": _tiny(1, 2)} if models is None else models,
                                    x0 if x is None else x, y0 if y is None else y,
                                    _patch() if patch is None else patch, progress=False)


add(Case("data.defensive.evaluate.models=list", lambda: _evaluate_call(models=[_tiny(1, 2)]), ("models",)))
add(Case("data.defensive.evaluate.models={}", lambda: _evaluate_call(models={}), ("models",)))
add(Case("data.defensive.evaluate.model=wrong_classes", lambda: _evaluate_call(models={"t": _tiny(1, 3)}),
         ("classes",)))
add(Case("data.defensive.evaluate.x=small", lambda: _evaluate_call(x=torch.rand(4, 1, 8, 8)), ("patch is for",)))
add(Case("data.defensive.evaluate.y=9", lambda: _evaluate_call(y=torch.tensor([0, 1, 9, 0])), ("y",)))
add(Case("data.defensive.evaluate.patch=None", lambda: _evaluate_call(patch=3), ("patch",)))
for kw, names in ((dict(attack="cw"), "attack"), (dict(eps=-0.1), "eps"), (dict(eps=NAN), "eps"),
                  (dict(steps=0), "steps"), (dict(seed="x"), "seed")):
    def _adv(kw=kw):
        from patchbench.defensive.evaluate import adversarial_images
        x, y = _xy()
        return adversarial_images(_tiny(1, 2), x, y, **{"attack": "pgd", "eps": 0.1, "steps": 1, **kw})
    add(Case(f"data.defensive.adversarial.{list(kw)[0]}={list(kw.values())[0]!r}", _adv, (names,)))


def _prior(**kw):
    from patchbench.defensive.prior import train_class_prior
    args = dict(models=[_tiny(1, 2)], mask=DefensivePlacement().mask((16, 16)), class_ids=[0, 1],
                channels=1, epochs=1, steps_per_epoch=1, batch_size=2)
    args.update(kw)
    return train_class_prior(args.pop("models"), args.pop("mask"), args.pop("class_ids"),
                             args.pop("channels"), **args)


for kw, names in ((dict(lr=INF), "lr"), (dict(lr=0), "lr"), (dict(channels=0), "channels"),
                  (dict(mask=torch.zeros(1, 16, 16)), "mask"), (dict(mask="m"), "mask"),
                  (dict(class_ids=[0.5]), "class_ids"), (dict(class_ids=[0, 7]), "class_ids"),
                  (dict(class_ids=[]), "class_ids"), (dict(class_ids="01"), "class_ids"),
                  (dict(epochs=0), "epochs"), (dict(batch_size=2.5), "batch_size"),
                  (dict(eot="x"), "eot"), (dict(generator="x"), "generator"), (dict(models=[]), "models")):
    add(Case(f"data.defensive.prior.{list(kw)[0]}={list(kw.values())[0]!r}"[:80],
             lambda kw=kw: _prior(**kw), (names,)))
