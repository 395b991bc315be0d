"""Fuzz cases for the defenses (every registered one: constructor parameters, bad images), the
BPDA / JPEG helpers, ``Defended``, ``PatchZero.load`` and the detection / segmentation metrics."""
from __future__ import annotations

import atexit
import functools
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import BAD_COUNT, BAD_FRACTION, BAD_POSITIVE, INF, NAN, Case, param_cases

from patchbench import defenses as D
from patchbench.defenses import (JPEG, LGS, SLGS, WLGS, Defended, GaussianFilter, GTMaskOracle,
                                 MedianFilter, PatchCleanser, PatchZero, binarize, bpda,
                                 differentiable_jpeg, jpeg_roundtrip)
from patchbench.metrics import detection as DM
from patchbench.metrics import segmentation as SM
from patchbench.models.base import ImageClassifier
from patchbench.models.unet import UNet

S = 16     # image side of every case


# ---- cheap shared objects ------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _model(channels: int = 3) -> ImageClassifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(16, 4))
    return ImageClassifier(net, [0.5] * channels, [0.25] * channels, None, list("abcd"), channels,
                           "fuzz").eval()


@functools.lru_cache(maxsize=None)
def _unet() -> UNet:
    torch.manual_seed(0)
    return UNet(1, base=2, depth=1, input_size=(S, S)).eval()


def _x(n=2, c=3, s=S, dtype=torch.float32):
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(0)).to(dtype)


@functools.lru_cache(maxsize=None)
def _tmp() -> Path:
    d = Path(tempfile.mkdtemp(prefix="pb_fuzz_defenses_"))
    atexit.register(shutil.rmtree, d, True)
    return d


@functools.lru_cache(maxsize=None)
def _good_ckpt() -> dict:
    path = PatchZero(_unet(), dilation=1, fill=0.3).save(_tmp() / "good.pt")
    return torch.load(path, weights_only=True)


def _good_path() -> Path:
    _good_ckpt()
    return _tmp() / "good.pt"


def _ckpt_file(name: str, **changes) -> Path:
    """A PatchZero checkpoint with some entries changed (``None`` values drop the entry)."""
    ck = dict(_good_ckpt())
    for k, v in changes.items():
        if v is None:
            ck.pop(k)
        else:
            ck[k] = v
    path = _tmp() / name
    torch.save(ck, path)
    return path


def _bytes_file(name: str, data: bytes) -> Path:
    path = _tmp() / name
    path.write_bytes(data)
    return path


def _nan_state() -> dict:
    sd = {k: v.clone() for k, v in _good_ckpt()["state_dict"].items()}
    sd["head.weight"].fill_(NAN)
    return sd


def _inf_state() -> dict:
    sd = {k: v.clone() for k, v in _good_ckpt()["state_dict"].items()}
    sd["head.bias"].fill_(INF)
    return sd


def _drop_key_state() -> dict:
    sd = dict(_good_ckpt()["state_dict"])
    sd.pop("head.bias")
    return sd


# ---- how to build each registered defense --------------------------------------------------------
def _build(name: str, **kw):
    base = {"slgs": lambda: dict(model=_model()), "wlgs": lambda: dict(model=_model()),
            "patchcleanser": lambda: dict(patch_size=4, image_size=S),
            "patchzero": lambda: dict(detector=_unet())}.get(name, dict)()
    base.update(kw)
    return D.get(name, **base)


def _ready(name: str):
    """A defense ready to purify ``_x`` images (the oracle bound to an empty mask)."""
    d = _build(name)
    if name == "gt-mask":
        d = d.with_mask(torch.zeros(1, 1, S, S))
    return d


def _channels(name: str) -> int:
    return 1 if name == "patchzero" else 3


IMAGE_DEFENSES = ("lgs", "slgs", "wlgs", "jpeg", "median-filter", "gaussian-filter", "gt-mask",
                  "patchzero")

PARAMS = {
    "lgs": {"window": BAD_COUNT, "overlap": (-1, 2.5, NAN, "x", None, 15, 100),
            "threshold": BAD_FRACTION, "smoothing_factor": BAD_POSITIVE + (1e300, 1001.0)},
    "slgs": {"model": (None, "vgg16", 3), "top_k": BAD_COUNT,
             "erosions": (-1, 2.5, "x", None, 10 ** 6), "dilations": (-1, NAN, True, 10 ** 6),
             "smoothing_factor": (NAN, INF, 0)},
    "wlgs": {"model": (None, "vgg16"), "clamp": ("false", 1, None), "second_order": ("yes", 0),
             "top_k": (0, 2.5, "x"), "smoothing_factor": (NAN, -INF, -1)},
    "jpeg": {"quality": BAD_COUNT + (96, 101, 10 ** 9, 75.5), "surrogate": ("bilinear", None, 1)},
    "median-filter": {"k": BAD_COUNT + (4, -3)},
    "gaussian-filter": {"sigma": BAD_POSITIVE + (1e6,), "truncate": BAD_POSITIVE},
    "gt-mask": {"fill": (-0.1, 1.5, NAN, INF, "x", True, [], [0.1, NAN], [0.1, 2.0], "0.5",
                         [[0.1]], {"r": 0.5})},
    "patchcleanser": {"patch_size": (0, -1, NAN, INF, 1.5, 0.0, "x", None, True, (1, 2, 3), (0, 2),
                                     (2, "a"), 100),
                      "image_size": (0, -4, 16.5, "16", None, (16,), (16, 0)),
                      "k": BAD_COUNT, "fill": (NAN, -0.1, 2, [], "x"),
                      "batch_size": BAD_COUNT},
    "patchzero": {"detector": (None, "model.pt", 5), "threshold": BAD_FRACTION + (0, 1),
                  "dilation": (-1, 2.5, NAN, "x", None, True),
                  "fill": (NAN, -1, 2, [], (0.1, 0.2), "x"),
                  "input_size": ("16x16", (0, 16), (16,), 5, (16.5, 16)),
                  "gradient": ("bpda-magic", None, 1, "BPDA-SIGMOID"),
                  "temperature": BAD_POSITIVE},
}


def _param_table():
    cases = []
    for name, params in PARAMS.items():
        for param, values in params.items():
            names = (param, "λ") if param == "smoothing_factor" else (param,)
            cases += param_cases(f"defenses.{name}", functools.partial(_build, name), param, values,
                                 names=names)
    return cases


# ---- bad images for every purifier's __call__ ----------------------------------------------------
def _bad_images(c: int):
    x = _x(1, c)
    return {
        "None": None, "ndarray": x.numpy(), "list": x.tolist(), "float": 0.5,
        "uint8": (x * 255).to(torch.uint8), "int64": (x * 255).long(), "bool": x > 0.5,
        "0-255 floats": x * 255, "negative": x - 1, "nan": x.masked_fill(x > 0.5, NAN),
        "inf": x.masked_fill(x > 0.5, INF), "3d": x[0, 0], "5d": x[None], "empty batch": x[:0],
        "meta": torch.zeros(1, c, S, S, device="meta"), "complex": x.to(torch.complex64),
    }


def _image_cases():
    cases = []
    for name in IMAGE_DEFENSES:
        c = _channels(name)
        for label, bad in _bad_images(c).items():
            cases.append(Case(f"defenses.{name}(x={label})",
                              lambda name=name, bad=bad: _ready(name)(bad), ("x", "input")))
        wrong_c = 2 if c == 3 else 3
        if name in ("jpeg", "slgs", "wlgs", "patchzero"):
            cases.append(Case(f"defenses.{name}(x={wrong_c} channels)",
                              lambda name=name, wc=wrong_c: _ready(name)(_x(1, wc)),
                              ("channels", "x")))
        cases.append(Case(f"defenses.{name}(x=float64) keeps dtype and range",
                          lambda name=name, c=c: (_ready(name)(_x(2, c, dtype=torch.float64)), c),
                          check=_same_shape_in_range((2, c, S, S), torch.float64)))
        cases.append(Case(f"defenses.{name}(x=constant) stays in range",
                          lambda name=name, c=c: (_ready(name)(torch.full((1, c, S, S), 0.5)), c),
                          check=_same_shape_in_range((1, c, S, S), torch.float32)))
    return cases


def _same_shape_in_range(shape, dtype):
    def check(out):
        y = out[0].detach()
        assert tuple(y.shape) == shape and y.dtype == dtype, (y.shape, y.dtype)
        assert bool(torch.isfinite(y).all()) and float(y.min()) >= 0 and float(y.max()) <= 1
    return check


# ---- valid borderline inputs with a checked answer -----------------------------------------------
def _close_to(ref, atol=1e-6):
    """Check ``y ≈ ref``; ``ref`` may be a function, evaluated only when the check runs."""
    def check(y):
        r = ref() if callable(ref) else ref
        y = y.detach()
        assert y.shape == r.shape and torch.allclose(y, r, atol=atol), (y - r).abs().max()
    return check


def _in_unit(shape):
    def check(y):
        assert tuple(y.shape) == shape and float(y.min()) >= 0 and float(y.max()) <= 1
        assert bool(torch.isfinite(y).all())
    return check


def _oracle_full(x):
    return GTMaskOracle(fill=0.25)(x, mask=torch.ones(S, S))


def _pc_k1():
    pc = PatchCleanser(4, S, k=1)
    scores = pc.classify(_model(), _x())
    return pc, scores


def _check_pc_k1(out):
    pc, scores = out
    assert pc.num_masks == 1 and tuple(scores.shape) == (2, 4)
    assert pc.last_cases.tolist() == [1, 1]      # one mask: every image agrees with itself


def _pz_dilate_all():
    det = _BoxDetector()
    x = _x(1, 1)
    return PatchZero(det, dilation=10 ** 6, fill=0.3)(x)


class _BoxDetector(nn.Module):
    """Patch logits +5 on one pixel, -5 elsewhere (no parameters)."""
    channels, input_size = 1, (S, S)

    def forward(self, x):
        z = torch.full_like(x[:, :1], -5.0)
        z[..., 3, 3] = 5.0
        return z


class _BadDetector(nn.Module):
    """Returns class logits instead of a patch map."""
    channels, input_size = 1, None

    def forward(self, x):
        return x.flatten(1)[:, :4]


def _borderline_cases():
    x = _x()
    g1 = _x(1, 1)
    return [
        Case("defenses.jpeg_roundtrip(quality=100)", lambda: jpeg_roundtrip(x, 100),
             check=_in_unit(tuple(x.shape))),
        Case("defenses.jpeg_roundtrip(quality=1)", lambda: jpeg_roundtrip(x, 1),
             check=_in_unit(tuple(x.shape))),
        Case("defenses.jpeg_roundtrip(grey, quality=100) is near-lossless",
             lambda: jpeg_roundtrip(g1, 100), check=_close_to(g1, atol=0.02)),
        Case("defenses.differentiable_jpeg(quality=100)", lambda: differentiable_jpeg(x, 100),
             check=_in_unit(tuple(x.shape))),
        Case("defenses.differentiable_jpeg(grey, quality=100) is near-lossless",
             lambda: differentiable_jpeg(g1, 100), check=_close_to(g1, atol=0.02)),
        Case("defenses.differentiable_jpeg(quality=1)", lambda: differentiable_jpeg(x, 1),
             check=_in_unit(tuple(x.shape))),
        Case("defenses.differentiable_jpeg(quality=np.int64(50))",
             lambda: differentiable_jpeg(x, np.int64(50)),
             check=_close_to(lambda: differentiable_jpeg(x, 50), atol=0)),
        Case("defenses.jpeg(quality=95)", lambda: JPEG(quality=95)(x), check=_in_unit(tuple(x.shape))),
        Case("defenses.jpeg(3×3 image)", lambda: JPEG()(_x(1, 3, 3)), check=_in_unit((1, 3, 3, 3))),
        Case("defenses.gt-mask(all-zero mask) is the identity",
             lambda: GTMaskOracle()(x, mask=torch.zeros(2, 1, S, S)), check=_close_to(x, atol=0)),
        Case("defenses.gt-mask(bool mask of zeros) is the identity",
             lambda: GTMaskOracle()(x, mask=torch.zeros(2, 1, S, S, dtype=torch.bool)),
             check=_close_to(x, atol=0)),
        Case("defenses.gt-mask(all-one H×W mask) is the fill", lambda: _oracle_full(x),
             check=_close_to(torch.full_like(x, 0.25))),
        Case("defenses.gaussian-filter(sigma=1e-300) is the identity",
             lambda: GaussianFilter(sigma=1e-300)(x), check=_close_to(x)),
        Case("defenses.gaussian-filter(huge kernel on 2 px)",
             lambda: GaussianFilter(sigma=100.0)(_x(1, 3, 2)), check=_in_unit((1, 3, 2, 2))),
        Case("defenses.median-filter(k=1) is the identity", lambda: MedianFilter(1)(x),
             check=_close_to(x, atol=0)),
        Case("defenses.median-filter(k=31 on 16 px)", lambda: MedianFilter(31)(x),
             check=_in_unit(tuple(x.shape))),
        Case("defenses.median-filter(k=33 on 16 px)", lambda: MedianFilter(33)(x), ("k",)),
        Case("defenses.lgs(smoothing_factor=1000) stays finite",
             lambda: LGS(smoothing_factor=1000.0)(x), check=_in_unit(tuple(x.shape))),
        Case("defenses.lgs(constant image) is the identity",
             lambda: LGS()(torch.full((1, 3, S, S), 0.4)),
             check=_close_to(torch.full((1, 3, S, S), 0.4))),
        Case("defenses.lgs(1×1 image)", lambda: LGS()(_x(1, 3, 1)), check=_in_unit((1, 3, 1, 1))),
        Case("defenses.wlgs(1×1 image) has no NaN", lambda: WLGS(_model())(_x(1, 3, 1)),
             check=_in_unit((1, 3, 1, 1))),
        Case("defenses.slgs(erosions=0, dilations=0)",
             lambda: SLGS(_model(), erosions=0, dilations=0)(x), check=_in_unit(tuple(x.shape))),
        Case("defenses.lgs(window=10**9)", lambda: LGS(window=10 ** 9)(x),
             check=_in_unit(tuple(x.shape))),
        Case("defenses.patchcleanser(k=1)", _pc_k1, check=_check_pc_k1),
        Case("defenses.patchzero(dilation=10**6) repaints everything", _pz_dilate_all,
             check=_close_to(torch.full((1, 1, S, S), 0.3))),
        Case("defenses.patchzero(detector returns class logits)",
             lambda: PatchZero(_BadDetector())(_x(1, 1)), ("detector",)),
        Case("defenses.patchzero.predict_mask(dilated='no')",
             lambda: PatchZero(_unet()).predict_mask(_x(1, 1), dilated="no"), ("dilated",)),
        Case("defenses.patchzero.soft_mask(x=None)",
             lambda: PatchZero(_unet()).soft_mask(None), ("x",)),
        Case("defenses.patchzero(x=28 px for a 16 px detector)",
             lambda: PatchZero(_unet())(_x(1, 1, 28)), ("16×16", "trained on")),
    ]


# ---- binarize / bpda / jpeg functions ------------------------------------------------------------
def _function_cases():
    p = torch.rand(4, generator=torch.Generator().manual_seed(1))
    x = _x(1)
    cases = [
        Case("defenses.binarize(p=list)", lambda: binarize([0.1, 0.9]), ("p",)),
        Case("defenses.binarize(p=None)", lambda: binarize(None), ("p",)),
        Case("defenses.binarize(p=int tensor)", lambda: binarize(torch.tensor([0, 1])), ("p",)),
        Case("defenses.binarize(threshold=-1) is all ones", lambda: binarize(p, -1.0),
             check=_close_to(torch.ones(4), atol=0)),
        Case("defenses.binarize(exact) has exact 0/1 values", lambda: binarize(p, 0.5, "exact"),
             check=_close_to((p >= 0.5).float(), atol=0)),
        Case("defenses.bpda(forward_value=list)", lambda: bpda([1.0], torch.zeros(1)),
             ("forward_value",)),
        Case("defenses.bpda(surrogate=None)", lambda: bpda(torch.zeros(1), None), ("surrogate",)),
        Case("defenses.bpda(shape mismatch)", lambda: bpda(torch.zeros(2), torch.zeros(3)),
             ("shape",)),
    ]
    cases += param_cases("defenses.binarize", lambda threshold: binarize(p, threshold),
                         "threshold", (NAN, INF, -INF, "0.5", None, [0.5]))
    cases += param_cases("defenses.binarize", lambda mode: binarize(p, 0.5, mode), "mode",
                         ("soft", None, 1, "EXACT"))
    cases += param_cases("defenses.binarize", lambda temperature: binarize(p, 0.5, "bpda-sigmoid",
                                                                           temperature),
                         "temperature", BAD_POSITIVE)
    for fname, fn in (("jpeg_roundtrip", jpeg_roundtrip), ("differentiable_jpeg", differentiable_jpeg)):
        cases += param_cases(f"defenses.{fname}", lambda quality, fn=fn: fn(x, quality), "quality",
                             BAD_COUNT + (101, -100, 75.5, [75]))
        for label, bad in _bad_images(3).items():
            cases.append(Case(f"defenses.{fname}(x={label})", lambda fn=fn, bad=bad: fn(bad),
                              ("x",)))
        cases.append(Case(f"defenses.{fname}(x=2 channels)", lambda fn=fn: fn(_x(1, 2)),
                          ("channels",)))
    cases.append(Case("defenses.get(name=3)", lambda: D.get(3), ("name",)))
    cases.append(Case("defenses.get(name='no-such')", lambda: D.get("no-such"), ("no-such",)))
    cases.append(Case("defenses.get('lgs', bogus=1)", lambda: D.get("lgs", bogus=1), ("bogus",)))
    return cases


# ---- Defended and the prediction-level defense ---------------------------------------------------
def _set_attack_mode(attack_mode):
    t = Defended(_model(), LGS())
    t.attack_mode = attack_mode
    return t


def _defended_cases():
    m = _model()
    cases = [
        Case("defenses.Defended(model=None)", lambda: Defended(None, LGS()), ("model",)),
        Case("defenses.Defended(model=Identity)", lambda: Defended(nn.Identity(), LGS()), ("model",)),
        Case("defenses.Defended(model=str)", lambda: Defended("tiny_cnn", LGS()), ("model",)),
        Case("defenses.Defended(defense=None)", lambda: Defended(m, None), ("defense",)),
        Case("defenses.Defended(defense='lgs')", lambda: Defended(m, "lgs"), ("defense",)),
        Case("defenses.Defended(defense=LGS class)", lambda: Defended(m, LGS), ("defense",)),
        Case("defenses.Defended(defense=fn)", lambda: Defended(m, lambda x: x), ("defense",)),
        Case("defenses.Defended(x=1 channel)", lambda: Defended(m, LGS())(_x(1, 1)), ("channels",)),
        Case("defenses.Defended.predict(x=None)", lambda: Defended(m, LGS()).predict(None), ("x",)),
        Case("defenses.Defended(LGS) equals model∘LGS", lambda: Defended(m, LGS())(_x()),
             check=_close_to(lambda: m(LGS()(_x())))),
        Case("defenses.Defended(gt-mask, empty mask) equals the model",
             lambda: Defended(m, GTMaskOracle().with_mask(torch.zeros(1, 1, S, S)))(_x()),
             check=_close_to(lambda: m(_x()))),
    ]
    cases += param_cases("defenses.Defended", lambda eot_samples: Defended(m, LGS(), eot_samples),
                         "eot_samples", tuple(v for v in BAD_COUNT if v is not None))
    cases += param_cases("defenses.Defended.predict",
                         lambda batch_size: Defended(m, LGS()).predict(_x(), batch_size),
                         "batch_size", BAD_COUNT)
    cases += param_cases("defenses.Defended", _set_attack_mode, "attack_mode", ("yes", 1, 0.0, "false"))
    for label, bad in _bad_images(3).items():
        cases.append(Case(f"defenses.Defended(x={label})",
                          lambda bad=bad: Defended(m, LGS())(bad), ("x", "input")))
    pc = lambda: PatchCleanser(4, S)  # noqa: E731
    cases += [
        Case("defenses.patchcleanser.classify(model=None)", lambda: pc().classify(None, _x()),
             ("model",)),
        Case("defenses.patchcleanser.classify(model=str)", lambda: pc().classify("m", _x()),
             ("model",)),
        Case("defenses.patchcleanser.classify(x=8 px)", lambda: pc().classify(m, _x(1, 3, 8)),
             ("16×16", "x")),
        Case("defenses.patchcleanser.classify(x=None)", lambda: pc().classify(m, None), ("x",)),
        Case("defenses.patchcleanser.classify(x=uint8)",
             lambda: pc().classify(m, (_x() * 255).to(torch.uint8)), ("x",)),
        Case("defenses.patchcleanser.classify(fill 2 values, 3 channels)",
             lambda: PatchCleanser(4, S, fill=(0.1, 0.2)).classify(m, _x()), ("fill",)),
        Case("defenses.patchcleanser.certify(labels wrong length)",
             lambda: pc().certify(m, _x(), torch.zeros(3, dtype=torch.long)), ("labels",)),
        Case("defenses.patchcleanser.certify(labels float)",
             lambda: pc().certify(m, _x(), torch.zeros(2)), ("labels",)),
        Case("defenses.patchcleanser.certify(labels >= classes)",
             lambda: pc().certify(m, _x(), torch.tensor([0, 9])), ("labels", "class")),
        Case("defenses.patchcleanser(x) is prediction-level", lambda: pc()(_x()),
             ("prediction-level",)),
    ]
    return cases


# ---- GT-mask oracle masks ------------------------------------------------------------------------
def _oracle_cases():
    x = _x()
    o = GTMaskOracle
    return [
        Case("defenses.gt-mask(mask=ndarray)", lambda: o()(x, mask=np.zeros((2, 1, S, S))), ("mask",)),
        Case("defenses.gt-mask(mask=list)", lambda: o()(x, mask=[[0.0]]), ("mask",)),
        Case("defenses.gt-mask(mask=0.5 values)", lambda: o()(x, mask=torch.full((2, 1, S, S), 0.5)),
             ("mask",)),
        Case("defenses.gt-mask(mask=nan)", lambda: o()(x, mask=torch.full((2, 1, S, S), NAN)),
             ("mask",)),
        Case("defenses.gt-mask(mask=2)", lambda: o()(x, mask=torch.full((2, 1, S, S), 2.0)),
             ("mask",)),
        Case("defenses.gt-mask(mask=wrong H×W)", lambda: o()(x, mask=torch.zeros(2, 1, 8, 8)),
             ("mask",)),
        Case("defenses.gt-mask(mask=wrong N)", lambda: o()(x, mask=torch.zeros(3, 1, S, S)),
             ("mask",)),
        Case("defenses.gt-mask(mask=3 channels)", lambda: o()(x, mask=torch.zeros(2, 3, S, S)),
             ("mask",)),
        Case("defenses.gt-mask(mask=1-D)", lambda: o()(x, mask=torch.zeros(S)), ("mask",)),
        Case("defenses.gt-mask(mask=meta)",
             lambda: o()(x, mask=torch.zeros(2, 1, S, S, device="meta")), ("mask",)),
        Case("defenses.gt-mask(mask=complex)",
             lambda: o()(x, mask=torch.zeros(2, 1, S, S, dtype=torch.complex64)), ("mask",)),
        Case("defenses.gt-mask.with_mask(list)", lambda: o().with_mask([0, 1]), ("mask",)),
        Case("defenses.gt-mask.with_mask(0.5 values)",
             lambda: o().with_mask(torch.full((1, 1, S, S), 0.5)), ("mask",)),
        Case("defenses.gt-mask.with_mask(wrong size) then call",
             lambda: o().with_mask(torch.zeros(1, 1, 8, 8))(x), ("mask",)),
        Case("defenses.gt-mask(no mask set)", lambda: o()(x), ("mask",)),
        Case("defenses.gt-mask(fill 2 values, 3 channels)",
             lambda: o(fill=(0.1, 0.2))(x, mask=torch.zeros(2, 1, S, S)), ("fill",)),
    ]


# ---- PatchZero.load / save -----------------------------------------------------------------------
def _pz_load_cases():
    good = _good_path
    L = PatchZero.load
    cases = [
        Case("defenses.patchzero.load(None)", lambda: L(None), ("path",)),
        Case("defenses.patchzero.load(5)", lambda: L(5), ("path",)),
        Case("defenses.patchzero.load(missing)", lambda: L(_tmp() / "missing.pt"), ("missing.pt",)),
        Case("defenses.patchzero.load(unknown asset)", lambda: L("fmnist_nope"), ("fmnist_nope",)),
        Case("defenses.patchzero.load(directory)", lambda: L(_tmp()), ("directory",)),
        Case("defenses.patchzero.load(garbage bytes)",
             lambda: L(_bytes_file("garbage.pt", b"\x00\x01garbage" * 64)),
             ("not a PatchZero checkpoint",)),
        Case("defenses.patchzero.load(empty file)", lambda: L(_bytes_file("empty.pt", b"")),
             ("empty.pt",)),
        Case("defenses.patchzero.load(text file)",
             lambda: L(_bytes_file("notes.pt", "threshold = 0.5\n".encode())), ("notes.pt",)),
        Case("defenses.patchzero.load(truncated)",
             lambda: L(_bytes_file("trunc.pt", _good_path().read_bytes()[:300])), ("trunc.pt",)),
        Case("defenses.patchzero.load(a list)",
             lambda: (torch.save([1, 2], _tmp() / "list.pt"), L(_tmp() / "list.pt")),
             ("not a PatchZero checkpoint",)),
        Case("defenses.patchzero.load(dict without format)",
             lambda: (torch.save({"x": 1}, _tmp() / "nofmt.pt"), L(_tmp() / "nofmt.pt")),
             ("not a PatchZero checkpoint",)),
        Case("defenses.patchzero.load(other format)",
             lambda: L(_ckpt_file("fmt.pt", format="patchbench.patchzero/99")),
             ("not a PatchZero checkpoint",)),
        Case("defenses.patchzero.load(pickled object)",
             lambda: (torch.save({"format": object()}, _tmp() / "obj.pt"), L(_tmp() / "obj.pt")),
             ("obj.pt",)),
        Case("defenses.patchzero.load(NaN weights)", lambda: L(_ckpt_file("nan.pt",
                                                                          state_dict=_nan_state())),
             ("nan",)),
        Case("defenses.patchzero.load(Inf weights)", lambda: L(_ckpt_file("inf.pt",
                                                                          state_dict=_inf_state())),
             ("inf.pt",)),
        Case("defenses.patchzero.load(missing weight key)",
             lambda: L(_ckpt_file("nokey.pt", state_dict=_drop_key_state())), ("head.bias",)),
        Case("defenses.patchzero.load(other architecture)",
             lambda: L(_ckpt_file("arch.pt", config=dict(_good_ckpt()["config"], base=4))),
             ("arch.pt",)),
        Case("defenses.patchzero.load(other depth)",
             lambda: L(_ckpt_file("depth.pt", config=dict(_good_ckpt()["config"], depth=2))),
             ("depth.pt",)),
        Case("defenses.patchzero.load(unknown kind)", lambda: L(_ckpt_file("kind.pt", kind="pspnet")),
             ("kind", "pspnet")),
        Case("defenses.patchzero.load(config not a dict)",
             lambda: L(_ckpt_file("cfg.pt", config=[1, 2])), ("config",)),
        Case("defenses.patchzero.load(bad config values)",
             lambda: L(_ckpt_file("cfgval.pt", config=dict(_good_ckpt()["config"], in_channels=2))),
             ("cfgval.pt",)),
        Case("defenses.patchzero.load(state_dict not tensors)",
             lambda: L(_ckpt_file("sd.pt", state_dict={"a": 1})), ("state_dict",)),
        Case("defenses.patchzero.load(no threshold entry)",
             lambda: L(_ckpt_file("nothr.pt", threshold=None)), ("threshold",)),
        Case("defenses.patchzero.load(no state_dict entry)",
             lambda: L(_ckpt_file("nosd.pt", state_dict=None)), ("state_dict",)),
        Case("defenses.patchzero.load(saved threshold NaN)",
             lambda: L(_ckpt_file("thr.pt", threshold=NAN)), ("thr.pt",)),
        Case("defenses.patchzero.load(saved dilation -1)",
             lambda: L(_ckpt_file("dil.pt", dilation=-1)), ("dil.pt",)),
        Case("defenses.patchzero.load(saved fill 2)", lambda: L(_ckpt_file("fill.pt", fill=[2.0])),
             ("fill.pt",)),
        Case("defenses.patchzero.load(saved input_size garbage)",
             lambda: L(_ckpt_file("size.pt", input_size="big")), ("size.pt",)),
        Case("defenses.patchzero.load(input_size mismatch)", lambda: L(good(), input_size=(28, 28)),
             ("16×16",)),
        Case("defenses.patchzero.load(input_size='x')", lambda: L(good(), input_size="x"),
             ("input_size",)),
        Case("defenses.patchzero.load(channels mismatch)", lambda: L(good(), channels=3),
             ("channel",)),
        Case("defenses.patchzero.load(channels='1')", lambda: L(good(), channels="1"), ("channels",)),
        Case("defenses.patchzero.load(device='tpu')", lambda: L(good(), device="tpu"), ("device",)),
        Case("defenses.patchzero.load(device='meta')", lambda: L(good(), device="meta"), ("device",)),
        Case("defenses.patchzero.load(device=5)", lambda: L(good(), device=5), ("device",)),
        Case("defenses.patchzero.load(unknown override)", lambda: L(good(), colour=0.1), ("colour",)),
        Case("defenses.patchzero.load(override dilation=-1)", lambda: L(good(), dilation=-1),
             ("dilation",)),
        Case("defenses.patchzero.load(override gradient='magic')", lambda: L(good(), gradient="magic"),
             ("gradient",)),
        Case("defenses.patchzero.load(override temperature=inf)",
             lambda: L(good(), temperature=INF), ("temperature",)),
        Case("defenses.patchzero.load(good) round-trips", lambda: L(good())(_x(1, 1)),
             check=_close_to(lambda: PatchZero(_unet(), dilation=1, fill=0.3)(_x(1, 1)), atol=0)),
        Case("defenses.patchzero.save(path=directory)",
             lambda: PatchZero(_unet()).save(_tmp()), ("directory",)),
        Case("defenses.patchzero.save(path=None)", lambda: PatchZero(_unet()).save(None), ("path",)),
        Case("defenses.patchzero.save(meta=object)",
             lambda: PatchZero(_unet()).save(_tmp() / "m.pt", cfg=object()), ("meta",)),
        Case("defenses.patchzero.save(detector without config)",
             lambda: PatchZero(_BoxDetector()).save(_tmp() / "box.pt"), ("detector",)),
    ]
    return cases


# ---- detection metrics ---------------------------------------------------------------------------
GT = [torch.tensor([[0.0, 0, 10, 10]]), torch.zeros(0, 4)]


def _dets(boxes=((0.0, 0, 10, 10),), scores=(0.995,)):
    return [(torch.tensor(boxes), torch.tensor(scores)), (torch.zeros(0, 4), torch.zeros(0))]


def _pr(dets=None, gts=None, **kw):
    return DM.precision_recall(_dets() if dets is None else dets, GT if gts is None else gts, **kw)


def _det_cases():
    box = torch.tensor([[0.0, 0, 10, 10]])
    sc = torch.tensor([0.995])
    empty = (torch.zeros(0, 4), torch.zeros(0))
    cases = [
        Case("defenses.detection(dict without scores)", lambda: _pr([{"boxes": box}, empty]),
             ("scores",)),
        Case("defenses.detection(dict without boxes)", lambda: _pr([{"scores": sc}, empty]),
             ("boxes",)),
        Case("defenses.detection(dict with neither)", lambda: _pr([{}, empty]), ("boxes", "scores")),
        Case("defenses.detection(dets=None)", lambda: DM.precision_recall(None, GT), ("dets",)),
        Case("defenses.detection(dets=int)", lambda: _pr(dets=3), ("dets",)),
        Case("defenses.detection(dets=tensor)", lambda: _pr(dets=torch.zeros(2, 4)), ("dets",)),
        Case("defenses.detection(dets=dict)", lambda: _pr(dets={"boxes": box, "scores": sc}),
             ("dets",)),
        Case("defenses.detection(dets=generator)", lambda: _pr(dets=(d for d in _dets())), ("dets",)),
        Case("defenses.detection(dets entry None)", lambda: _pr([None, empty]), ("dets[0]",)),
        Case("defenses.detection(dets entry tensor)", lambda: _pr([box, empty]), ("dets[0]",)),
        Case("defenses.detection(dets entry 1-tuple)", lambda: _pr([(box,), empty]), ("dets[0]",)),
        Case("defenses.detection(too few dets)", lambda: _pr(_dets()[:1]), ("dets",)),
        Case("defenses.detection(too many dets)", lambda: _pr(_dets() * 2), ("dets",)),
        Case("defenses.detection(boxes K×3)", lambda: _pr([(box[:, :3], sc), empty]), ("boxes",)),
        Case("defenses.detection(boxes 1-D)", lambda: _pr([(box[0], sc), empty]), ("boxes",)),
        Case("defenses.detection(boxes 3-D)", lambda: _pr([(box[None], sc), empty]), ("boxes",)),
        Case("defenses.detection(boxes NaN)",
             lambda: _pr([(torch.tensor([[0.0, NAN, 10, 10]]), sc), empty]), ("boxes",)),
        Case("defenses.detection(boxes Inf)",
             lambda: _pr([(torch.tensor([[0.0, 0, INF, 10]]), sc), empty]), ("boxes",)),
        Case("defenses.detection(boxes negative width)",
             lambda: _pr([(torch.tensor([[10.0, 0, 0, 10]]), sc), empty]), ("boxes",)),
        Case("defenses.detection(boxes negative height)",
             lambda: _pr([(torch.tensor([[0.0, 10, 10, 0]]), sc), empty]), ("boxes",)),
        Case("defenses.detection(boxes str)", lambda: _pr([("box", sc), empty]), ("boxes",)),
        Case("defenses.detection(boxes None)", lambda: _pr([(None, sc), empty]), ("boxes",)),
        Case("defenses.detection(boxes ragged list)",
             lambda: _pr([([[0, 0, 10, 10], [1, 2]], sc), empty]), ("boxes",)),
        Case("defenses.detection(boxes bool)", lambda: _pr([(box > 0, sc), empty]), ("boxes",)),
        Case("defenses.detection(boxes meta)",
             lambda: _pr([(torch.zeros(1, 4, device="meta"), sc), empty]), ("boxes",)),
        Case("defenses.detection(scores NaN)", lambda: _pr([(box, torch.tensor([NAN])), empty]),
             ("scores",)),
        Case("defenses.detection(scores Inf)", lambda: _pr([(box, torch.tensor([INF])), empty]),
             ("scores",)),
        Case("defenses.detection(scores > 1, logits)", lambda: _pr([(box, torch.tensor([3.2])), empty]),
             ("scores",)),
        Case("defenses.detection(scores < 0)", lambda: _pr([(box, torch.tensor([-0.1])), empty]),
             ("scores",)),
        Case("defenses.detection(scores str)", lambda: _pr([(box, "high"), empty]), ("scores",)),
        Case("defenses.detection(2 scores, 1 box)",
             lambda: _pr([(box, torch.tensor([0.9, 0.8])), empty]), ("scores",)),
        Case("defenses.detection(gts=None)", lambda: DM.precision_recall(_dets(), None), ("gts",)),
        Case("defenses.detection(gts=int)", lambda: _pr(gts=3), ("gts",)),
        Case("defenses.detection(gts=2-D tensor)", lambda: _pr(gts=torch.zeros(2, 4)), ("gts",)),
        Case("defenses.detection(gts NaN)",
             lambda: _pr(gts=[torch.tensor([[0.0, 0, NAN, 10]]), torch.zeros(0, 4)]), ("gts",)),
        Case("defenses.detection(gts K×5)",
             lambda: _pr(gts=[torch.zeros(1, 5), torch.zeros(0, 4)]), ("gts",)),
        Case("defenses.detection(gts negative size)",
             lambda: _pr(gts=[torch.tensor([[5.0, 5, 1, 1]]), torch.zeros(0, 4)]), ("gts",)),
        Case("defenses.detection(dict entries) works",
             lambda: _pr([{"boxes": [[0, 0, 10, 10]], "scores": [0.995]},
                          {"boxes": [], "scores": []}]),
             check=lambda pr: _eq(pr, (1.0, 1.0))),
        Case("defenses.detection(delta=1.0) keeps only score 1", lambda: _pr(delta=1.0),
             check=lambda pr: _eq(pr, (1.0, 0.0))),
        Case("defenses.detection(delta=0.0) keeps everything", lambda: _pr(delta=0.0),
             check=lambda pr: _eq(pr, (1.0, 1.0))),
        Case("defenses.detection(no detections) P=1 R=0",
             lambda: _pr([empty, empty]), check=lambda pr: _eq(pr, (1.0, 0.0))),
        Case("defenses.detection(zero-size box) is a valid miss",
             lambda: _pr([(torch.tensor([[5.0, 5, 5, 5]]), sc), empty]),
             check=lambda pr: _eq(pr, (0.0, 0.0))),
        Case("defenses.detection.afbeta(perfect)=1", lambda: DM.afbeta(_dets(scores=(1.0,)), GT, 0.1),
             check=lambda v: _eq(v, 1.0)),
        Case("defenses.detection.afbeta(2 thresholds)",
             lambda: DM.afbeta(_dets(scores=(1.0,)), GT, 0.1, thresholds=[0.0, 1.0]),
             check=lambda v: _eq(v, 1.0)),
        Case("defenses.detection.average_precision(perfect)=1",
             lambda: DM.average_precision(_dets(), GT), check=lambda v: _eq(v, 1.0)),
        Case("defenses.detection.match_detections(boxes=None)",
             lambda: DM.match_detections(None, sc, box), ("boxes",)),
        Case("defenses.detection.match_detections(scores NaN)",
             lambda: DM.match_detections(box, torch.tensor([NAN]), box), ("scores",)),
        Case("defenses.detection.match_detections(gt K×2)",
             lambda: DM.match_detections(box, sc, torch.zeros(1, 2)), ("gt",)),
        Case("defenses.detection.match_detections(valid)",
             lambda: DM.match_detections(box, sc, box), check=lambda t: _eq(t.tolist(), [True])),
    ]
    cases += param_cases("defenses.detection.precision_recall", lambda delta: _pr(delta=delta),
                         "delta", (-0.1, 1.5, NAN, INF, "x", None, True))
    cases += param_cases("defenses.detection.precision_recall",
                         lambda iou_threshold: _pr(iou_threshold=iou_threshold), "iou_threshold",
                         (0, -0.5, 1.5, NAN, "x", None))
    cases += param_cases("defenses.detection.afbeta", lambda beta: DM.afbeta(_dets(), GT, beta),
                         "beta", BAD_POSITIVE + (1e200,))
    cases += param_cases("defenses.detection.afbeta",
                         lambda thresholds: DM.afbeta(_dets(), GT, 0.1, thresholds=thresholds),
                         "thresholds", ([0.5], [0.5, 0.2], [0.0, NAN], [0.0, INF], [-1.0, 0.5],
                                        [0.5, 2.0], "abc", [0.1, "a"], torch.zeros(2, dtype=torch.bool),
                                        [0.2, 0.2]))
    cases += param_cases("defenses.detection.count_patch_detections",
                         lambda criterion: DM.count_patch_detections(_dets(), torch.zeros(2, 4),
                                                                     criterion=criterion),
                         "criterion", ("overlap", None, 1, "IOU"))
    cpd = DM.count_patch_detections
    cases += param_cases("defenses.detection.count_patch_detections",
                         lambda patch_boxes: cpd(_dets(), patch_boxes), "patch_boxes",
                         (None, "x", 3, {"a": 1}))
    cases += [
        Case("defenses.detection.count_patch_detections(patch_boxes N×3)",
             lambda: cpd(_dets(), torch.zeros(2, 3)), ("patch_boxes",)),
        Case("defenses.detection.count_patch_detections(patch_boxes for 1 image of 2)",
             lambda: cpd(_dets(), [torch.zeros(1, 4)]), ("patch_boxes",)),
        Case("defenses.detection.count_patch_detections(patch_boxes NaN)",
             lambda: cpd(_dets(), torch.full((2, 4), NAN)), ("patch_boxes",)),
    ]
    cases += param_cases("defenses.detection.count_patch_detections",
                         lambda delta: DM.count_patch_detections(_dets(), torch.zeros(2, 4),
                                                                 delta=delta), "delta", (2, NAN))
    cases.append(Case("defenses.detection.count_patch_detections(centre hit)",
                      lambda: DM.count_patch_detections(_dets(), torch.tensor([[2.0, 2, 8, 8],
                                                                               [0, 0, 1, 1]]),
                                                        criterion="center"),
                      check=lambda t: _eq(t.tolist(), [1, 0])))
    return cases


def _eq(got, want):
    assert got == want, (got, want)


# ---- segmentation metrics ------------------------------------------------------------------------
def _seg_cases():
    t = torch.zeros(2, 1, 4, 4)
    t[0, 0, :2, :2] = 1
    ps = SM.pixel_scores
    cases = [
        Case("defenses.segmentation(pred=ndarray)", lambda: ps(t.numpy(), t), ("pred",)),
        Case("defenses.segmentation(target=list)", lambda: ps(t, t.tolist()), ("target",)),
        Case("defenses.segmentation(pred=None)", lambda: ps(None, t), ("pred",)),
        Case("defenses.segmentation(pred NaN)", lambda: ps(torch.full_like(t, NAN), t), ("pred",)),
        Case("defenses.segmentation(target Inf)", lambda: ps(t, torch.full_like(t, INF)), ("target",)),
        Case("defenses.segmentation(pred > 1)", lambda: ps(t * 2, t), ("pred",)),
        Case("defenses.segmentation(pred < 0)", lambda: ps(t - 1, t), ("pred",)),
        Case("defenses.segmentation(target negative int)", lambda: ps(t, -t.long()), ("target",)),
        Case("defenses.segmentation(pred complex)", lambda: ps(t.to(torch.complex64), t), ("pred",)),
        Case("defenses.segmentation(pred meta)", lambda: ps(torch.zeros(2, 1, 4, 4, device="meta"), t),
             ("pred",)),
        Case("defenses.segmentation(shapes differ)", lambda: ps(t[:1], t), ("same shape",)),
        Case("defenses.segmentation(H×W differ)", lambda: ps(t[..., :2], t), ("same shape",)),
        Case("defenses.segmentation(3 channels)", lambda: ps(t.repeat(1, 3, 1, 1), t.repeat(1, 3, 1, 1)),
             ("pred",)),
        Case("defenses.segmentation(2-D masks)", lambda: ps(t[0, 0], t[0, 0]), ("pred",)),
        Case("defenses.segmentation(5-D masks)", lambda: ps(t[None], t[None]), ("pred",)),
        Case("defenses.segmentation.benign(pred=None)", lambda: SM.benign_false_positives(None),
             ("pred",)),
        Case("defenses.segmentation.benign(empty)",
             lambda: SM.benign_false_positives(torch.zeros(0, 1, 4, 4)), ("pred",)),
        Case("defenses.segmentation.benign(NaN)",
             lambda: SM.benign_false_positives(torch.full((1, 1, 4, 4), NAN)), ("pred",)),
        Case("defenses.segmentation.update(pred NaN)",
             lambda: SM.PixelConfusion().update(torch.full_like(t, NAN), t), ("pred",)),
        Case("defenses.segmentation(perfect) F1=1", lambda: ps(t, t),
             check=lambda s: _eq((s["f1"], s["tp"], s["fp"]), (1.0, 4, 0))),
        Case("defenses.segmentation(bool, int, float agree)",
             lambda: (ps(t.bool(), t), ps(t.long(), t), ps(t * 0.9, t)),
             check=lambda r: _eq(r[0], r[1]) or _eq(r[0], r[2])),
        Case("defenses.segmentation(soft 0.5 is background)",
             lambda: ps(torch.full_like(t, 0.5), t),
             check=lambda s: _eq((s["tp"], s["fn"]), (0, 4))),
        Case("defenses.segmentation(N×H×W masks)", lambda: ps(t[:, 0], t),
             check=lambda s: _eq(s["f1"], 1.0)),
        Case("defenses.segmentation(zero_division=nan)",
             lambda: ps(torch.zeros_like(t), torch.zeros_like(t), zero_division=NAN),
             check=lambda s: _eq(math.isnan(s["precision"]), True)),
        Case("defenses.segmentation(empty batch)", lambda: ps(t[:0], t[:0], zero_division=1.0),
             check=lambda s: _eq((s["precision"], s["tp"]), (1.0, 0))),
    ]
    cases += param_cases("defenses.segmentation.PixelConfusion", SM.PixelConfusion, "zero_division",
                         (-1, 2, INF, "warn", None, True))
    return cases


CASES = (_param_table() + _image_cases() + _borderline_cases() + _function_cases()
         + _defended_cases() + _oracle_cases() + _pz_load_cases() + _det_cases() + _seg_cases())
