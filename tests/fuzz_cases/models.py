"""Fuzz cases for the model zoo (``patchbench.models``): bad images given to every kind of model
(classifiers, segmenters, MTCNN, the cascades), ``predict`` batch sizes, ``models.load`` with bad
names / weights / devices / seeds / options, and the weight and checkpoint loaders given garbage files.

Borderline-but-valid inputs carry a ``check`` that the answer is right (float64 images give the
float32 logits, an empty batch gives empty outputs, ...)."""
from __future__ import annotations

import functools
import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import BAD_COUNT, BAD_SEEDS, Case

from patchbench import models
from patchbench.models import nms as nms_mod
from patchbench.models import zoo
from patchbench.models.cascades import load_cascade
from patchbench.models.mtcnn import MTCNN
from patchbench.models.segmenter import MobileNetV2Segmenter
from patchbench.models.unet import UNet
from patchbench.training import checkpoint as ck

ASSETS = Path(zoo.__file__).resolve().parent.parent / "assets"


# ---------------------------------------------------------------- models, built once
@functools.lru_cache(maxsize=None)
def _model(kind: str):
    torch.manual_seed(0)
    if kind == "tiny3":
        return models.load("tiny_cnn", channels=3, num_classes=4, seed=0)
    if kind == "tiny1":
        return models.load("tiny_cnn", channels=1, num_classes=3, seed=1)
    if kind == "fmnist":
        return models.load("fmnist_cnn_small")
    if kind == "unet":
        return UNet(in_channels=1, base=4, depth=1).eval()
    if kind == "seg":
        return MobileNetV2Segmenter(pretrained=False, decoder_channels=8).eval()
    if kind == "mtcnn":
        try:
            return MTCNN()
        except LookupError:
            return MTCNN(pretrained=False)
    raise KeyError(kind)


CHANNELS = {"tiny3": 3, "tiny1": 1, "fmnist": 1, "unet": 1, "seg": 3, "mtcnn": 3}
SIZE = {"tiny3": 12, "tiny1": 12, "fmnist": 28, "unet": 16, "seg": 32, "mtcnn": 16}


def _x(kind: str, n: int = 2, dtype=torch.float32, channels=None, size=None) -> torch.Tensor:
    c = CHANNELS[kind] if channels is None else channels
    s = SIZE[kind] if size is None else size
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(3)).to(dtype)


def _call(kind: str, x):
    m = _model(kind)
    if kind == "mtcnn":
        return m.detect(x)
    with torch.no_grad():
        return m(x)


def _expect(ok: bool, what) -> None:
    assert ok, what


def _same_as_float32(kind: str, x, exact: bool = True, atol: float = 1e-6):
    def check(out):
        ref = _call(kind, x.detach().float())
        assert out.dtype == ref.dtype and out.shape == ref.shape, (out.dtype, out.shape)
        if exact:
            assert torch.equal(out, ref)
        else:
            assert torch.allclose(out.float(), ref, atol=atol), float((out.float() - ref).abs().max())
    return check


def _empty_output(kind: str):
    def check(out):
        assert out.shape[0] == 0 and out.dim() in (2, 4), out.shape
    return check


# (id, build the input, names the error must mention) — invalid images, for every model
def _bad_images(kind: str):
    c = CHANNELS[kind]
    x = lambda **kw: _x(kind, **kw)  # noqa: E731
    return [
        ("uint8", lambda: (x() * 255).to(torch.uint8), ("x.float() / 255",)),
        ("int64", lambda: (x() * 255).long(), ("dtype",)),
        ("int32", lambda: (x() > 0.5).int(), ("dtype",)),
        ("bool", lambda: x() > 0.5, ("dtype",)),
        ("complex", lambda: x().to(torch.complex64), ("dtype",)),
        ("0-255 floats", lambda: x() * 255, ("divide by 255",)),
        ("negative", lambda: x() - 0.5, ("[0, 1]",)),
        ("normalised", lambda: (x() - 0.5) / 0.25, ("[0, 1]",)),
        ("slightly above 1", lambda: x().index_fill_(-1, torch.tensor([0]), 1.001), ("[0, 1]",)),
        ("nan", lambda: x().masked_fill(x() > 0.7, math.nan), ("nan",)),
        ("+inf", lambda: x().masked_fill(x() > 0.7, math.inf), ("inf",)),
        ("-inf", lambda: x().masked_fill(x() > 0.7, -math.inf), ("inf",)),
        ("float64 out of range", lambda: x(dtype=torch.float64) * 2, ("[0, 1]",)),
        ("2-D", lambda: x()[0, 0], ("shape",)),
        ("5-D", lambda: x()[None], ("shape",)),
        ("0-D", lambda: torch.tensor(0.5), ("shape",)),
        ("wrong channels", lambda: x(channels=c + 1), ("channels", "shape")),
        ("zero width", lambda: x()[..., :0], ("too small", "spatial", "size")),
        ("zero height", lambda: x()[..., :0, :], ("too small", "spatial", "size")),
        ("meta", lambda: torch.empty(2, c, 16, 16, device="meta"), ("meta",)),
        ("numpy", lambda: x().numpy(), ("ndarray",)),
        ("list", lambda: x().tolist(), ("list",)),
        ("None", lambda: None, ("nonetype",)),
        ("int", lambda: 3, ("int",)),
        ("str", lambda: "image.png", ("str",)),
    ]


def _image_cases(kind: str):
    cases = [Case(f"models.{kind}.x={name}", lambda b=build: _call(kind, b()), names)
             for name, build, names in _bad_images(kind)]
    if kind == "mtcnn":
        return cases
    x = _x(kind)
    cases += [
        Case(f"models.{kind}.x=float64 (same as float32)", lambda: _call(kind, x.double()),
             check=_same_as_float32(kind, x.double())),
        Case(f"models.{kind}.x=float16 (close to float32)", lambda: _call(kind, x.half()),
             check=_same_as_float32(kind, x.half(), exact=True)),
        Case(f"models.{kind}.x=bfloat16 (close to float32)", lambda: _call(kind, x.bfloat16()),
             check=_same_as_float32(kind, x.bfloat16(), exact=True)),
        Case(f"models.{kind}.x=non-contiguous", lambda: _call(kind, x.transpose(2, 3)),
             check=_same_as_float32(kind, x.transpose(2, 3).contiguous(), exact=False, atol=1e-5)),
        Case(f"models.{kind}.x=exact 0 and 1", lambda: _call(kind, (x > 0.5).float()),
             check=_same_as_float32(kind, (x > 0.5).float())),
        Case(f"models.{kind}.x=1+1e-7 (rounding noise)", lambda: _call(kind, x.clamp(0, 1) + 1e-7),
             check=_same_as_float32(kind, x + 1e-7)),
        Case(f"models.{kind}.x=empty batch", lambda: _call(kind, x[:0]), check=_empty_output(kind)),
        Case(f"models.{kind}.x=requires_grad float64",
             lambda: _model(kind)(x.double().requires_grad_()).sum().backward(),
             check=lambda out: None),
    ]
    if kind == "seg":   # a MobileNetV2 encoder: keep only the cheapest valid calls
        cases = [c for c in cases if c.check is None or "float64 (same" in c.id or "empty" in c.id]
    return cases


def _predict_cases(kind: str):
    m = lambda: _model(kind)  # noqa: E731
    x = _x(kind, n=5)
    cases = [Case(f"models.{kind}.predict.batch_size={v!r}",
                  lambda v=v: m().predict(x, batch_size=v), ("batch_size",))
             for v in BAD_COUNT + (-64, [8], np.float64(2.5))]

    def same_labels(out):
        labels, conf = out
        with torch.no_grad():
            p = m()(x).softmax(-1)
        assert torch.equal(labels, p.argmax(1)) and torch.allclose(conf, p.max(1).values)

    def empty(out):
        labels, conf = out
        assert labels.shape == conf.shape == (0,) and labels.dtype == torch.long

    cases += [
        Case(f"models.{kind}.predict.batch_size=1", lambda: m().predict(x, batch_size=1), check=same_labels),
        Case(f"models.{kind}.predict.batch_size=np.int64(2)", lambda: m().predict(x, batch_size=np.int64(2)),
             check=same_labels),
        Case(f"models.{kind}.predict.batch_size=1000", lambda: m().predict(x, batch_size=1000),
             check=same_labels),
        Case(f"models.{kind}.predict.x=float64", lambda: m().predict(x.double(), batch_size=2),
             check=same_labels),
        Case(f"models.{kind}.predict.x=empty", lambda: m().predict(x[:0]), check=empty),
        Case(f"models.{kind}.predict.x=empty wrong channels",
             lambda: m().predict(_x(kind, n=0, channels=CHANNELS[kind] + 1)), ("channels", "shape")),
        Case(f"models.{kind}.predict.x=numpy", lambda: m().predict(x.numpy()), ("ndarray",)),
        Case(f"models.{kind}.predict.x=list", lambda: m().predict(x.tolist()), ("list",)),
        Case(f"models.{kind}.predict.x=None", lambda: m().predict(None), ("nonetype",)),
        Case(f"models.{kind}.predict.x=uint8", lambda: m().predict((x * 255).to(torch.uint8)),
             ("x.float() / 255",)),
        Case(f"models.{kind}.predict.x=0-255", lambda: m().predict(x * 255), ("divide by 255",)),
        Case(f"models.{kind}.predict.x=3-D", lambda: m().predict(x[0]), ("shape", "4-d")),
        Case(f"models.{kind}.predict.x=meta", lambda: m().predict(x.to("meta")), ("meta",)),
    ]
    return cases


# ---------------------------------------------------------------- MTCNN
def _mtcnn_cases():
    m = lambda: _model("mtcnn")  # noqa: E731
    x = _x("mtcnn")

    def detections(n):
        def check(out):
            assert isinstance(out, list) and len(out) == n
            for d in out:
                assert d.boxes.shape[1:] == (4,) and d.scores.dim() == 1
        return check

    cases = [
        Case("models.mtcnn.detect.x=float64", lambda: m().detect(x.double()), check=detections(2)),
        Case("models.mtcnn.detect.x=single 3×H×W", lambda: m().detect(x[0]), check=detections(1)),
        Case("models.mtcnn.detect.x=8 px (below P-Net's window)", lambda: m().detect(_x("mtcnn", size=8)),
             check=detections(2)),
        Case("models.mtcnn.detect.x=empty batch", lambda: m().detect(x[:0]), ("empty",)),
        Case("models.mtcnn.candidates.stages=('qnet',)", lambda: m().candidates(x, ("qnet",)), ("stages",)),
        Case("models.mtcnn.candidates.stages=()", lambda: m().candidates(x, ()), ("stages",)),
        Case("models.mtcnn.candidates.stages=3", lambda: m().candidates(x, 3), ("stages",)),
        Case("models.mtcnn.candidates.stages=None", lambda: m().candidates(x, None), ("stages",)),
        Case("models.mtcnn.candidates.x=uint8", lambda: m().candidates((x * 255).to(torch.uint8)),
             ("x.float() / 255",)),
        Case("models.mtcnn.candidates.stages='pnet'", lambda: m().candidates(_x("mtcnn", size=32), "pnet"),
             check=lambda c: _expect(bool((c.stage == 0).all()) and len(c.scores) > 0, c.stage)),
    ]
    bad_init = [
        ("device", "meta"), ("device", "gpu"), ("device", 3), ("device", "cuda:99"),
        ("min_face_size", 5), ("min_face_size", math.nan), ("min_face_size", math.inf),
        ("min_face_size", "20"), ("min_face_size", None), ("min_face_size", True),
        ("thresholds", 0.5), ("thresholds", (0.6, 0.7)), ("thresholds", (0.6, 0.7, 1.5)),
        ("thresholds", (math.nan, 0.7, 0.7)), ("thresholds", "abc"), ("thresholds", None),
        ("factor", 0), ("factor", 1), ("factor", 1.5), ("factor", math.nan), ("factor", "x"),
        ("pretrained", "yes"), ("pretrained", None),
    ]
    if not torch.cuda.is_available():
        bad_init.append(("device", "cuda"))
    for k, v in bad_init:
        cases.append(Case(f"models.mtcnn.init.{k}={v!r}", lambda k=k, v=v: MTCNN(pretrained=False, **{k: v})
                          if k != "pretrained" else MTCNN(**{k: v}), (k,)))
    for name in ("garbage", "empty", "zero", "mismatch", "nan"):
        cases.append(Case(f"models.mtcnn.weights_dir={name}", lambda n=name: MTCNN(weights_dir=_mtcnn_dir(n)),
                          ("pnet.pt", "rnet.pt", "onet.pt")))
    cases += [
        Case("models.mtcnn.weights_dir=a file", lambda: MTCNN(weights_dir=_files()["garbage"]), ("weights_dir",)),
        Case("models.mtcnn.weights_dir=missing", lambda: MTCNN(weights_dir=_tmp() / "absent"), ("pnet.pt",)),
        Case("models.mtcnn.weights_dir=3", lambda: MTCNN(weights_dir=3), ("weights_dir",)),
        Case("models.mtcnn.weights_dir=good copy", lambda: MTCNN(weights_dir=_mtcnn_dir("good")),
             check=lambda det: None),
        Case("models.mtcnn.load_mtcnn(weights_dir=garbage)",
             lambda: models.load_mtcnn(weights_dir=_mtcnn_dir("garbage")), ("pnet.pt",)),
        Case("models.mtcnn.load_mtcnn(colour=1)", lambda: models.load_mtcnn(colour=1), ("colour",)),
    ]
    return cases


# ---------------------------------------------------------------- files, written once
@functools.lru_cache(maxsize=None)
def _tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="pb_fuzz_models_"))


def _flipped(src: Path, dst: Path, offset: int) -> Path:
    b = bytearray(src.read_bytes())
    for i in range(offset, offset + 64):
        b[i] ^= 0xFF
    dst.write_bytes(bytes(b))
    return dst


@functools.lru_cache(maxsize=None)
def _files() -> dict:
    d = _tmp()
    small = ASSETS / "fmnist_cnn_small.pt"
    tiny = models.load("tiny_cnn", seed=0)
    f = {}
    (d / "garbage.pt").write_bytes(b"this is not a checkpoint\n" * 4)
    (d / "nullgarbage.pt").write_bytes(b"\x00garbage")
    (d / "empty.pt").write_bytes(b"")
    (d / "text.pt").write_text("weights = [1, 2, 3]\n")
    (d / "truncated.pt").write_bytes(small.read_bytes()[:40_000])
    f.update({k: d / f"{k}.pt" for k in ("garbage", "nullgarbage", "empty", "text", "truncated")})
    f["flipped_data"] = _flipped(small, d / "flipped_data.pt", small.stat().st_size // 2)
    f["flipped_pickle"] = _flipped(small, d / "flipped_pickle.pt", 400)
    f["flipped_tail"] = _flipped(small, d / "flipped_tail.pt", small.stat().st_size - 200)
    sd = {k: v.clone() for k, v in tiny.net.state_dict().items()}
    sd["features.0.weight"][0, 0, 0, 0] = math.nan
    torch.save(sd, d / "nan.pt")
    sd["features.0.weight"][0, 0, 0, 0] = math.inf
    torch.save(sd, d / "inf.pt")
    torch.save([torch.zeros(1)], d / "list.pt")
    torch.save({}, d / "emptydict.pt")
    torch.save({"w": torch.zeros(1), "n": 3}, d / "mixed.pt")
    torch.save(torch.zeros(3), d / "tensor.pt")
    torch.save(models.load("tiny_cnn", num_classes=5).net.state_dict(), d / "five_classes.pt")
    torch.save(models.load("tiny_cnn", width=4).net.state_dict(), d / "width4.pt")
    torch.save(models.load("tiny_cnn", channels=1).state_dict(), d / "whole_1ch.pt")
    torch.save(tiny.net.state_dict(), d / "tiny_ok.pt")
    torch.save(tiny.state_dict(), d / "tiny_whole.pt")
    torch.save({"model": tiny.net.state_dict(), "epoch": 3}, d / "tiny_ckptlike.pt")
    partial = dict(tiny.net.state_dict())
    partial.pop("classifier.1.bias")
    torch.save(partial, d / "partial.pt")
    torch.save({**tiny.net.state_dict(), "extra.weight": torch.zeros(2)}, d / "extra.pt")
    for k in ("nan", "inf", "list", "emptydict", "mixed", "tensor", "five_classes", "width4", "whole_1ch",
              "tiny_ok", "tiny_whole", "tiny_ckptlike", "partial", "extra"):
        f[k] = d / f"{k}.pt"
    ck.save_checkpoint(d / "run.ckpt", model=tiny, epoch=1, step=1, config={"a": 1})
    f["run"] = d / "run.ckpt"
    f["run_flipped"] = _flipped(d / "run.ckpt", d / "run_flipped.ckpt", (d / "run.ckpt").stat().st_size // 2)
    bad = models.load("tiny_cnn", seed=0)
    with torch.no_grad():
        bad.net.classifier[1].bias[0] = math.nan
    ck.save_checkpoint(d / "run_nan.ckpt", model=bad, epoch=1, step=1, config={})
    f["run_nan"] = d / "run_nan.ckpt"
    ck.save_checkpoint(d / "run_opt.ckpt", model=tiny, optimizer=torch.optim.Adam(tiny.parameters()),
                       epoch=1, step=1, config={})
    f["run_opt"] = d / "run_opt.ckpt"
    return f


@functools.lru_cache(maxsize=None)
def _mtcnn_dir(kind: str) -> Path:
    d = _tmp() / f"mtcnn_{kind}"
    d.mkdir()
    ref = MTCNN(pretrained=False)
    for stage in ("pnet", "rnet", "onet"):
        sd = getattr(ref, stage).state_dict()
        if kind == "garbage":
            (d / f"{stage}.pt").write_bytes(b"\x00garbage")
        elif kind == "empty":
            (d / f"{stage}.pt").write_bytes(b"")
        elif kind == "zero":
            torch.save({}, d / f"{stage}.pt")
        elif kind == "mismatch":
            torch.save(ref.pnet.state_dict(), d / f"{stage}.pt")
            if stage == "pnet":
                torch.save(ref.onet.state_dict(), d / "pnet.pt")
        elif kind == "nan":
            sd = {k: v.clone() for k, v in sd.items()}
            t = next(iter(sd.values()))
            t[(0,) * t.dim()] = math.nan
            torch.save(sd, d / f"{stage}.pt")
        else:
            torch.save(sd, d / f"{stage}.pt")
    return d


# ---------------------------------------------------------------- models.load
def _same_as(ref_kwargs: dict, **load_kwargs):
    def check(model):
        ref = models.load("tiny_cnn", **ref_kwargs)
        x = torch.rand(2, ref.channels, 12, 12, generator=torch.Generator().manual_seed(0))
        assert torch.equal(model(x), ref(x))
    return check


def _load_cases():
    f = lambda k: _files()[k]  # noqa: E731
    cases = []
    for name in ("resnet9000", "", "fmnist_cnn_smal", "tiny cnnn"):
        cases.append(Case(f"models.load.name={name!r}", lambda n=name: models.load(n), ("unknown model",)))
    for name in (None, 3, ["tiny_cnn"], b"tiny_cnn"):
        cases.append(Case(f"models.load.name={name!r}", lambda n=name: models.load(n), ("name",)))
    cases.append(Case("models.load.name='Tiny-CNN' (normalised)", lambda: models.load("Tiny-CNN", seed=0),
                      check=_same_as({"seed": 0})))
    cases.append(Case("models.load.name='tiny cnn' (normalised)", lambda: models.load(" tiny cnn ", seed=0),
                      check=_same_as({"seed": 0})))
    file_errors = {
        "garbage": "not a pytorch checkpoint", "nullgarbage": "not a pytorch checkpoint",
        "empty": "not a pytorch checkpoint", "text": "not a pytorch checkpoint",
        "truncated": "truncated", "flipped_data": "corrupted", "flipped_pickle": "corrupted",
        "flipped_tail": "corrupted", "nan": "nan/inf", "inf": "nan/inf", "list": "state_dict",
        "emptydict": "state_dict", "mixed": "'n' is a int", "tensor": "state_dict",
        "five_classes": "expected [10, 8], found [5, 8]", "width4": "shape mismatch",
        "whole_1ch": "shape mismatch", "partial": "missing key", "extra": "unexpected key",
    }
    for k, what in file_errors.items():
        cases.append(Case(f"models.load.weights={k}", lambda k=k: models.load("tiny_cnn", weights=f(k)),
                          (f"{k}.pt",) if what in ("state_dict",) else (what,)))
        cases.append(Case(f"models.load.weights={k} (names the file)",
                          lambda k=k: models.load("tiny_cnn", weights=f(k)), (f"{k}.pt",)))
    for k, arch in (("tiny_ok", "fmnist_cnn_small"), ("tiny_ok", "fmnist_cnn_wide"), ("tiny_ok", "fmnist_resnet")):
        cases.append(Case(f"models.load.{arch}.weights=tiny_cnn's", lambda k=k, a=arch: models.load(a, weights=f(k)),
                          ("do not fit",)))
    cases.append(Case("models.load.fmnist_cnn_wide.weights=fmnist_cnn_small.pt",
                      lambda: models.load("fmnist_cnn_wide", weights=ASSETS / "fmnist_cnn_small.pt"),
                      ("fmnist_cnn_small.pt",)))
    cases += [
        Case("models.load.weights=missing", lambda: models.load("tiny_cnn", weights=_tmp() / "absent.pt"),
             ("absent.pt",)),
        Case("models.load.weights=a directory", lambda: models.load("tiny_cnn", weights=_tmp()), ("directory",)),
        Case("models.load.weights=''", lambda: models.load("tiny_cnn", weights=""), ("weights",)),
        Case("models.load.weights=True", lambda: models.load("tiny_cnn", weights=True), ("weights",)),
        Case("models.load.weights=3", lambda: models.load("tiny_cnn", weights=3), ("weights",)),
        Case("models.load.weights=[path]", lambda: models.load("tiny_cnn", weights=[str(f("tiny_ok"))]),
             ("weights",)),
        Case("models.load.weights=state_dict", lambda: models.load("tiny_cnn", weights=models.load(
            "tiny_cnn").net.state_dict()), ("weights",)),
        Case("models.load.weights=good file (str)", lambda: models.load("tiny_cnn", weights=str(f("tiny_ok")), seed=9),
             check=_same_as({"seed": 0})),
        Case("models.load.weights=whole classifier", lambda: models.load("tiny_cnn", weights=f("tiny_whole"), seed=9),
             check=_same_as({"seed": 0})),
        Case("models.load.weights=checkpoint-like dict",
             lambda: models.load("tiny_cnn", weights=f("tiny_ckptlike"), seed=9), check=_same_as({"seed": 0})),
        Case("models.load.weights=training checkpoint", lambda: models.load("tiny_cnn", weights=f("run"), seed=9),
             check=_same_as({"seed": 0})),
        Case("models.load.weights=flipped training checkpoint",
             lambda: models.load("tiny_cnn", weights=f("run_flipped")), ("corrupted", "not a pytorch")),
        Case("models.load.weights=training checkpoint with NaN",
             lambda: models.load("tiny_cnn", weights=f("run_nan")), ("nan",)),
    ]
    devices = ["meta", "gpu", "", "cuda:99", 3, None, ["cpu"], "xla"]
    if not torch.cuda.is_available():
        devices.append("cuda")
    for dev in devices:
        cases.append(Case(f"models.load.device={dev!r}", lambda d=dev: models.load("tiny_cnn", device=d), ("device",)))
    cases.append(Case("models.load.device=torch.device('cpu')",
                      lambda: models.load("tiny_cnn", device=torch.device("cpu"), seed=0), check=_same_as({"seed": 0})))
    for seed in BAD_SEEDS + (None, True, np.random.default_rng(0), torch.Generator(), "0"):
        cases.append(Case(f"models.load.seed={type(seed).__name__}:{seed!r}"[:60],
                          lambda s=seed: models.load("tiny_cnn", seed=s), ("seed",)))
    cases += [
        Case("models.load.seed=np.int64(0)", lambda: models.load("tiny_cnn", seed=np.int64(0)), check=_same_as({"seed": 0})),
        Case("models.load.seed=2**63-1", lambda: models.load("tiny_cnn", seed=2 ** 63 - 1),
             check=lambda m: None),
    ]
    bad_options = [
        ("tiny_cnn", {"colour": 3}, ("colour",)), ("tiny_cnn", {"channels": 0}, ("channels",)),
        ("tiny_cnn", {"channels": "3"}, ("channels",)), ("tiny_cnn", {"channels": 2.5}, ("channels",)),
        ("tiny_cnn", {"num_classes": 0}, ("num_classes",)), ("tiny_cnn", {"num_classes": -2}, ("num_classes",)),
        ("tiny_cnn", {"num_classes": None}, ("num_classes",)), ("tiny_cnn", {"width": 0}, ("width",)),
        ("tiny_cnn", {"width": math.nan}, ("width",)), ("tiny_cnn", {"input_size": (0, 5)}, ("input_size",)),
        ("tiny_cnn", {"input_size": "x"}, ("input_size",)), ("tiny_cnn", {"input_size": (8,)}, ("input_size",)),
        ("tiny_cnn", {"input_size": (8, 8, 8)}, ("input_size",)),
        ("fmnist_cnn_small", {"num_classes": 5, "weights": False}, ("num_classes",)),
        ("fmnist_cnn_small", {"in_channels": 3, "weights": False}, ("in_channels",)),
        ("fmnist_cnn_small", {"widths": (8, 8), "weights": False}, ("widths",)),
        ("fmnist_cnn_small", {"widths": (8, 0, 8), "weights": False}, ("widths",)),
        ("fmnist_cnn_small", {"widths": (8, 16, 32)}, ("shape mismatch",)),
        ("fmnist_cnn_wide", {"hidden": 0, "weights": False}, ("hidden",)),
        ("fmnist_resnet", {"widths": "abc", "weights": False}, ("widths",)),
        ("mobilenet_v2", {"num_classes": 10, "weights": False}, ("num_classes",)),
        ("efficientnet_lite0", {"dropout": 0.5, "weights": False}, ("dropout",)),
    ]
    for name, kw, names in bad_options:
        cases.append(Case(f"models.load.{name}.{kw}", lambda n=name, kw=kw: models.load(n, **kw), names))

    def tiny_input_size(m):
        assert m.input_size == (16, 16) and m(torch.rand(1, 3, 40, 40)).shape == (1, 10)

    cases += [
        Case("models.load.tiny_cnn.input_size=[16, 16]", lambda: models.load("tiny_cnn", input_size=[16, 16]),
             check=tiny_input_size),
        Case("models.load.tiny_cnn.x=1 px", lambda: models.load("tiny_cnn")(torch.rand(1, 3, 1, 1)),
             ("too small",)),
        Case("models.load.tiny_cnn.x=2 px", lambda: models.load("tiny_cnn")(torch.rand(1, 3, 2, 2)),
             check=lambda out: _expect(out.shape == (1, 10), out.shape)),
    ]
    return cases


# ---------------------------------------------------------------- read_state_dict / checkpoints
def _loader_cases():
    f = lambda k: _files()[k]  # noqa: E731
    cases = []
    for k in ("garbage", "empty", "truncated", "flipped_data", "nan", "list", "mixed"):
        cases.append(Case(f"models.read_state_dict({k})", lambda k=k: models.read_state_dict(f(k)), (f"{k}.pt",)))
    cases += [
        Case("models.read_state_dict(missing)", lambda: models.read_state_dict(_tmp() / "absent.pt"), ("absent.pt",)),
        Case("models.read_state_dict(None)", lambda: models.read_state_dict(None), ("weights",)),
        Case("models.read_state_dict(whole classifier)", lambda: models.read_state_dict(f("tiny_whole")),
             check=lambda sd: _expect(set(sd) == set(models.load("tiny_cnn").net.state_dict()), sorted(sd))),
    ]
    for k in ("garbage", "nullgarbage", "empty", "truncated", "flipped_data", "tiny_ok", "run_flipped", "run_nan"):
        cases.append(Case(f"models.load_checkpoint({k})", lambda k=k: ck.load_checkpoint(f(k), model=models.load(
            "tiny_cnn")), (Path(f(k)).name,)))
    net = lambda **kw: models.load("tiny_cnn", **kw)  # noqa: E731
    cases += [
        Case("models.load_checkpoint(missing)", lambda: ck.load_checkpoint(_tmp() / "absent.ckpt"), ("absent.ckpt",)),
        Case("models.load_checkpoint(directory)", lambda: ck.load_checkpoint(_tmp()), ("directory",)),
        Case("models.load_checkpoint(model=3 classes)",
             lambda: ck.load_checkpoint(f("run"), model=net(num_classes=3), restore_rng=False),
             ("expected [3, 8], found [10, 8]",)),
        Case("models.load_checkpoint(model=other architecture)",
             lambda: ck.load_checkpoint(f("run"), model=models.load("fmnist_cnn_small", weights=False),
                                        restore_rng=False), ("run.ckpt",)),
        Case("models.load_checkpoint(model='net')", lambda: ck.load_checkpoint(f("run"), model="net"), ("model",)),
        Case("models.load_checkpoint(optimizer for another model)",
             lambda: ck.load_checkpoint(f("run_opt"), model=net(), optimizer=torch.optim.SGD(
                 torch.nn.Linear(2, 2).parameters(), lr=0.1), restore_rng=False), ("optimizer",)),
        Case("models.load_checkpoint(unknown generator)",
             lambda: ck.load_checkpoint(f("run"), generators={"data": torch.Generator()}), ("data",)),
        Case("models.load_checkpoint(good)", lambda: ck.load_checkpoint(f("run"), model=net(seed=5), restore_rng=False),
             check=lambda obj: _expect(obj["epoch"] == 1, obj)),
        Case("models.save_checkpoint(path=directory)",
             lambda: ck.save_checkpoint(_tmp(), model=net(), epoch=1, step=1, config={}), ("directory",)),
        Case("models.save_checkpoint(model=None)",
             lambda: ck.save_checkpoint(_tmp() / "s.ckpt", model=None, epoch=1, step=1, config={}), ("model",)),
        Case("models.save_checkpoint(epoch=-1)",
             lambda: ck.save_checkpoint(_tmp() / "s.ckpt", model=net(), epoch=-1, step=1, config={}), ("epoch",)),
        Case("models.save_checkpoint(step='x')",
             lambda: ck.save_checkpoint(_tmp() / "s.ckpt", model=net(), epoch=1, step="x", config={}), ("step",)),
        Case("models.save_checkpoint(config=None)",
             lambda: ck.save_checkpoint(_tmp() / "s.ckpt", model=net(), epoch=1, step=1, config=None), ("config",)),
        Case("models.save_checkpoint(config=[1])",
             lambda: ck.save_checkpoint(_tmp() / "s.ckpt", model=net(), epoch=1, step=1, config=[1]), ("config",)),
        Case("models.save_weights(module=dict)", lambda: ck.save_weights({}, _tmp() / "w.pt"), ("module",)),
        Case("models.save_weights(path=3)", lambda: ck.save_weights(net(), 3), ("path",)),
    ]
    return cases


# ---------------------------------------------------------------- segmenters, NMS, cascades
def _architecture_cases():
    cases = []
    unet_bad = [("in_channels", 2), ("in_channels", 0), ("in_channels", "1"), ("base", 0), ("base", 2.5),
                ("depth", 0), ("depth", 10), ("depth", "2"), ("mean", (0.5, 0.5)), ("std", (0.0,)),
                ("std", (math.nan,)), ("mean", "x"), ("input_size", (0, 28)), ("input_size", 28.5)]
    for k, v in unet_bad:
        cases.append(Case(f"models.UNet.{k}={v!r}", lambda k=k, v=v: UNet(**{k: v}), (k,)))
    seg_bad = [("input_scale", 0), ("input_scale", 1.5), ("input_scale", math.nan), ("input_scale", "x"),
               ("encoder_stride", 12), ("encoder_stride", "16"), ("output_stride", 16), ("output_stride", 0),
               ("decoder_channels", 0), ("pretrained", "yes"), ("input_size", (224,))]
    for k, v in seg_bad:
        cases.append(Case(f"models.MobileNetV2Segmenter.{k}={v!r}",
                          lambda k=k, v=v: MobileNetV2Segmenter(**{"pretrained": False, k: v}), (k,)))
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    nms_bad = [("iou_threshold", dict(iou_threshold=math.nan)), ("iou_threshold", dict(iou_threshold=1.5)),
               ("iou_threshold", dict(iou_threshold="x")), ("mode", dict(mode="max")),
               ("offset", dict(offset=-1.0)), ("scores", dict(scores=[0.9, 0.8, 0.7])),
               ("boxes", dict(boxes=boxes[:, :3])), ("boxes", dict(boxes=boxes.tolist())),
               ("scores", dict(scores=scores[:2]))]
    for k, kw in nms_bad:
        args = dict(boxes=boxes, scores=scores, iou_threshold=0.5)
        args.update(kw)
        cases.append(Case(f"models.nms.{k}={list(kw.values())[0]!r}"[:70], lambda a=args: nms_mod.nms(**a), (k,)))
    cases.append(Case("models.nms.valid", lambda: nms_mod.nms(boxes, scores, 0.5),
                      check=lambda keep: _expect(keep.tolist() == [0, 2], keep)))
    cases.append(Case("models.box_iou.a=list", lambda: nms_mod.box_iou(boxes.tolist(), boxes), ("a",)))
    cases += [
        Case("models.load_cascade(3)", lambda: load_cascade(3), ("name",)),
        Case("models.load_cascade('viola')", lambda: load_cascade("viola"), ("haar",)),
        Case("models.load_cascade(None)", lambda: load_cascade(None), ("name",)),
    ]
    try:
        import cv2  # noqa: F401
        from patchbench.models.cascades import HaarFaceDetector
        haar = functools.lru_cache(maxsize=None)(HaarFaceDetector)
        x = _x("mtcnn", size=24)
        cases += [
            Case("models.haar.cascade=missing", lambda: HaarFaceDetector(cascade=_tmp() / "absent.xml"),
                 ("absent.xml",)),
            Case("models.haar.cascade=garbage", lambda: HaarFaceDetector(cascade=_files()["garbage"]),
                 ("cascade",)),
            Case("models.haar.scale_factor=nan", lambda: HaarFaceDetector(scale_factor=math.nan), ("scale_factor",)),
            Case("models.haar.min_size=20", lambda: HaarFaceDetector(min_size=20), ("min_size",)),
            Case("models.haar.detect.x=uint8", lambda: haar().detect((x * 255).to(torch.uint8)), ("dtype",)),
            Case("models.haar.detect.x=0-255", lambda: haar().detect(x * 255), ("[0, 1]",)),
            Case("models.haar.detect.x=2 channels", lambda: haar().detect(x[:, :2]), ("channels",)),
            Case("models.haar.detect.x=meta", lambda: haar().detect(x.to("meta")), ("meta",)),
            Case("models.haar.detect.x=float64", lambda: haar().detect(x.double()),
                 check=lambda out: _expect(len(out) == 2, out)),
        ]
    except ImportError:
        pass
    return cases


CASES = []
for _kind in ("tiny3", "tiny1", "fmnist", "unet", "seg", "mtcnn"):
    CASES += _image_cases(_kind)
for _kind in ("tiny3", "fmnist"):
    CASES += _predict_cases(_kind)
CASES += _mtcnn_cases() + _load_cases() + _loader_cases() + _architecture_cases()
