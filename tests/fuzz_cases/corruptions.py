"""Fuzz cases for the common corruptions' public entry points (``corrupt``, ``get``, ``family``):
every corruption × bad severities, bad and borderline images (dtype, range, NaN, rank, channels,
1–2 px sides), unknown names and bad generators. Borderline-but-valid calls are checked for a
correct result (shape, dtype, range, finiteness; constant images stay constant under the warps
and blurs; severity 0 is an exact copy; equal seeds give equal output)."""
from __future__ import annotations

import functools

import numpy as np
import torch

from . import INF, NAN, Case

from patchbench.corruptions import CORRUPTIONS, FAMILIES, RANDOM, corrupt, family, get

P = "corruptions"
#: corruptions that map a constant image to the same constant (blurs, warps, pixelate, contrast).
KEEP_CONSTANT = ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur",
                 "elastic_transform", "pixelate", "contrast")


@functools.lru_cache(maxsize=None)
def _img(n: int = 2, c: int = 3, h: int = 16, w: int = 16) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(h * 31 + w + c))


def _x(n=2, c=3, h=16, w=16):
    return _img(n, c, h, w).clone()


def _valid(ref: torch.Tensor):
    """Check: same shape, dtype and device as ``ref``, finite, within [0, 1]."""
    def check(y):
        assert isinstance(y, torch.Tensor), type(y)
        assert y.shape == ref.shape and y.dtype == ref.dtype and y.device == ref.device, \
            (tuple(y.shape), y.dtype, tuple(ref.shape), ref.dtype)
        yf = y.float()
        assert torch.isfinite(yf).all()
        assert float(yf.min()) >= 0 and float(yf.max()) <= 1
    return check


def _constant_kept(ref: torch.Tensor):
    def check(y):
        _valid(ref)(y)
        assert torch.allclose(y, ref, atol=1e-5), float((y - ref).abs().max())
    return check


def _copy_of(ref: torch.Tensor):
    def check(y):
        assert torch.equal(y, ref) and y.data_ptr() != ref.data_ptr()
    return check


def _same_as(expected_fn):
    def check(y):
        assert torch.equal(y, expected_fn())
    return check


def _family_of(key: str):
    def check(f):
        assert f in FAMILIES and key in FAMILIES[f], (f, key)
    return check


CASES = []

# ---- every corruption × bad severities -----------------------------------------------------------
BAD_SEVERITIES = (6, -1, 2.5, "3", True, None, NAN, INF, [2])
for name in CORRUPTIONS:
    for sev in BAD_SEVERITIES:
        CASES.append(Case(f"{P}.{name}.severity={sev!r}",
                          lambda name=name, sev=sev: corrupt(_x(), name, sev), ("severity",)))
    # severity 0 is the documented identity (an unchanged copy); integral floats count as ints
    CASES.append(Case(f"{P}.{name}.severity=0", lambda name=name: corrupt(_img(), name, 0),
                      check=_copy_of(_img())))
    CASES.append(Case(f"{P}.{name}.severity=np.int64(2)",
                      lambda name=name: corrupt(_x(), name, np.int64(2), generator=3),
                      check=_same_as(lambda name=name: corrupt(_x(), name, 2, generator=3))))
    CASES.append(Case(f"{P}.{name}.get.severity=7", lambda name=name: get(name)(_x(), 7),
                      ("severity",)))

# ---- every corruption × bad images ---------------------------------------------------------------
for name in CORRUPTIONS:
    bad_images = {
        "uint8": lambda: (_x() * 255).to(torch.uint8),
        "times3": lambda: _x() * 3,
        "nan": lambda: _x().index_fill_(3, torch.tensor([0]), NAN),
        "2channels": lambda: _x(c=2),
    }
    for label, make in bad_images.items():
        CASES.append(Case(f"{P}.{name}.x={label}", lambda name=name, make=make: corrupt(make(), name, 3),
                          ("x:",)))

# ---- every corruption × tiny images (1–2 px sides), grey and RGB: must work ----------------------
for name in CORRUPTIONS:
    for (n, c, h, w) in ((1, 1, 1, 1), (2, 3, 2, 2), (1, 3, 1, 2), (2, 1, 2, 1)):
        CASES.append(Case(f"{P}.{name}.tiny={n}x{c}x{h}x{w}",
                          lambda name=name, s=(n, c, h, w): corrupt(_img(*s), name, 5, generator=1),
                          check=_valid(_img(n, c, h, w))))
for name in KEEP_CONSTANT:
    for side in (1, 2, 7):
        const = torch.full((2, 3, side, side), 0.375)
        CASES.append(Case(f"{P}.{name}.constant{side}px",
                          lambda name=name, const=const: corrupt(const, name, 4, generator=2),
                          check=_constant_kept(const)))

# ---- image kinds that are fine: dtypes, a single image, non-contiguous, requires_grad -------------
for name in CORRUPTIONS:
    CASES.append(Case(f"{P}.{name}.float64", lambda name=name: corrupt(_x().double(), name, 2, 0),
                      check=_valid(_img().double())))
    CASES.append(Case(f"{P}.{name}.single_CHW", lambda name=name: corrupt(_x()[0], name, 2, 0),
                      check=_same_as(lambda name=name: corrupt(_x()[:1], name, 2, 0)[0])))
for name in ("fog", "glass_blur", "jpeg_compression", "spatter", "elastic_transform"):
    CASES.append(Case(f"{P}.{name}.float16", lambda name=name: corrupt(_x().half(), name, 3, 0),
                      check=_valid(_img().half())))
    CASES.append(Case(f"{P}.{name}.bfloat16", lambda name=name: corrupt(_x().bfloat16(), name, 3, 0),
                      check=_valid(_img().bfloat16())))
    CASES.append(Case(f"{P}.{name}.channels_last",
                      lambda name=name: corrupt(_x().to(memory_format=torch.channels_last), name, 3, 4),
                      check=_same_as(lambda name=name: corrupt(_x(), name, 3, 4))))
    CASES.append(Case(f"{P}.{name}.transposed_view",
                      lambda name=name: corrupt(_x(h=12, w=20).transpose(2, 3), name, 3, 4),
                      check=_same_as(lambda name=name: corrupt(
                          _x(h=12, w=20).transpose(2, 3).contiguous(), name, 3, 4))))
    CASES.append(Case(f"{P}.{name}.requires_grad",
                      lambda name=name: corrupt(_x().requires_grad_(), name, 3, 0),
                      check=_valid(_img())))

# ---- malformed images, once (the registry validates them before any corruption runs) --------------
MALFORMED = {
    "numpy": lambda: _x().numpy(),
    "list": lambda: _x().tolist(),
    "None": lambda: None,
    "scalar_tensor": lambda: torch.tensor(0.5),
    "2d": lambda: _x()[0, 0],
    "5d": lambda: _x()[None],
    "empty_batch": lambda: _x()[:0],
    "zero_width": lambda: _x()[..., :0],
    "int64": lambda: (_x() * 255).long(),
    "bool": lambda: _x() > 0.5,
    "complex": lambda: _x().to(torch.complex64),
    "inf": lambda: _x().index_fill_(2, torch.tensor([1]), INF),
    "negative": lambda: _x() - 0.5,
    "4channels": lambda: _x(c=4),
    "meta": lambda: torch.empty(2, 3, 8, 8, device="meta"),
}
for label, make in MALFORMED.items():
    for name in ("gaussian_noise", "elastic_transform"):
        CASES.append(Case(f"{P}.{name}.x={label}", lambda name=name, make=make: corrupt(make(), name, 2),
                          ("x:",)))

# ---- names ---------------------------------------------------------------------------------------
for bad in ("frost", "rain", "", " ", "gaussian", "fog2", "Gaussian_Noisy"):
    CASES.append(Case(f"{P}.name={bad!r}", lambda bad=bad: corrupt(_x(), bad, 1), ("name", "gaussian_noise")))
    CASES.append(Case(f"{P}.get.name={bad!r}", lambda bad=bad: get(bad), ("name", "gaussian_noise")))
    CASES.append(Case(f"{P}.family.name={bad!r}", lambda bad=bad: family(bad), ("name", "gaussian_noise")))
for bad in (None, 3, ["fog"], b"fog", ("fog",), torch.tensor(1)):
    CASES.append(Case(f"{P}.name={type(bad).__name__}", lambda bad=bad: corrupt(_x(), bad, 1), ("name",)))
    CASES.append(Case(f"{P}.get.name={type(bad).__name__}", lambda bad=bad: get(bad), ("name",)))
for alias, key in (("Gaussian-Noise", "gaussian_noise"), (" motion blur ", "motion_blur"),
                   ("JPEG_COMPRESSION", "jpeg_compression")):
    CASES.append(Case(f"{P}.name_alias={alias!r}", lambda alias=alias: corrupt(_x(), alias, 2, 5),
                      check=_same_as(lambda key=key: corrupt(_x(), key, 2, 5))))
    CASES.append(Case(f"{P}.family_alias={alias!r}", lambda alias=alias: family(alias),
                      check=_family_of(key)))

# ---- generators ----------------------------------------------------------------------------------
BAD_GENERATORS = ("x", -1, 2 ** 64, 2 ** 63, 1.5, NAN, INF, [0], True, np.random.default_rng(0),
                  np.random.RandomState(0), torch.tensor([1, 2]), object())
for name in ("gaussian_noise", "glass_blur", "spatter", "brightness"):
    for bad in BAD_GENERATORS:
        label = bad if isinstance(bad, (str, int, float, list)) else type(bad).__name__
        CASES.append(Case(f"{P}.{name}.generator={label!r}",
                          lambda name=name, bad=bad: corrupt(_x(), name, 3, generator=bad), ("generator",)))
for name in RANDOM:
    CASES.append(Case(f"{P}.{name}.generator=np.int64(9)",
                      lambda name=name: corrupt(_x(), name, 3, generator=np.int64(9)),
                      check=_same_as(lambda name=name: corrupt(
                          _x(), name, 3, generator=torch.Generator().manual_seed(9)))))
    CASES.append(Case(f"{P}.{name}.generator=2**63-1",
                      lambda name=name: corrupt(_x(), name, 3, generator=2 ** 63 - 1), check=_valid(_img())))
CASES.append(Case(f"{P}.severity0.generator='x'", lambda: corrupt(_x(), "fog", 0, generator="x"),
                  ("generator",)))
