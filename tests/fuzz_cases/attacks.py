"""Fuzz cases for the attacks, the patch geometry (threats, shapes, placements, pasting, EOT) and the
classification metrics (issue 12). Malformed calls must raise an allowed error naming the argument;
borderline-but-valid ones carry a ``check`` that the answer is right (e.g. pixels outside the mask
unchanged, success true of the returned images)."""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from . import (BAD_COUNT, BAD_FRACTION, BAD_NONNEGATIVE, BAD_POSITIVE, BAD_SEEDS, INF, NAN, Case,
               param_cases)

P = "attacks"
HW = 8
N = 3
BAD_BOOL = ("yes", 1, None)
BAD_NAME = ("hinge", 5, None)


@functools.lru_cache(maxsize=None)
def _model():
    import patchbench as pb
    return pb.models.load("tiny_cnn", channels=3, num_classes=5, seed=3)


@functools.lru_cache(maxsize=None)
def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N, 3, 1, 1, generator=g) * 0.8 + 0.2 * torch.rand(N, 3, HW, HW, generator=g)
    with torch.no_grad():
        pred = _model()(x).argmax(1)
    return x, pred


def _free_class() -> int:
    return sorted(set(range(5)) - set(_data()[1].tolist()))[0]


def _threat():
    from patchbench.patches import Threat
    return Threat(area=0.15)


def _attack(name: str, **kw):
    from patchbench import attacks
    fast = {"universal-patch": dict(epochs=1, batch_size=2)}.get(name, dict(steps=2))
    return attacks.get(name, **{**fast, **kw})


_DEFAULT = object()


def _run(name, x=_DEFAULT, y=_DEFAULT, threat=_DEFAULT, **kw):
    d = _data()
    return _attack(name).run(_model(), d[0] if x is _DEFAULT else x, d[1] if y is _DEFAULT else y,
                             _threat() if threat is _DEFAULT else threat, **kw)


# ---- checks -----------------------------------------------------------------------------------
def _valid_result(x=None, y=None, target=None):
    """A correct AttackResult: shapes, [0, 1], outside-mask pixels unchanged, success true of x_adv
    and its rate equal to metrics.success_rate."""
    def check(res):
        from patchbench import metrics
        xx = _data()[0] if x is None else x
        yy = _data()[1] if y is None else y
        assert res.x_adv.shape == xx.shape and float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
        out = (res.mask == 0).expand_as(xx)
        assert torch.equal(res.x_adv[out], xx[out]), "pixels outside the mask changed"
        with torch.no_grad():
            adv = _model()(res.x_adv.float()).argmax(1)
            clean = _model()(xx.float()).argmax(1)
        t = None if target is None else (torch.full_like(yy, target) if isinstance(target, int)
                                         else torch.as_tensor(target))
        assert torch.equal(res.success, adv != yy if t is None else adv == t)
        r = metrics.success_rate(clean, adv, yy, t)
        assert (res.rate.k, res.rate.n) == (r.k, r.n)
    return check


def _unchanged(res):
    x = _data()[0]
    assert torch.equal(res.x_adv, x) and not bool(res.success.any())


def _eq(expected):
    def check(v):
        assert v == expected, (v, expected)
    return check


# ---- constructors: every registered attack × each parameter ------------------------------------
PARAMS = {
    "masked-pgd": dict(eps=BAD_POSITIVE + (1.5,), step=BAD_POSITIVE + (2.0,), steps=BAD_COUNT,
                       restarts=BAD_COUNT, random_start=BAD_BOOL, early_stop=BAD_BOOL, loss=BAD_NAME),
    "masked-apgd": dict(eps=BAD_POSITIVE, step=BAD_POSITIVE, steps=BAD_COUNT, restarts=BAD_COUNT,
                        rho=BAD_FRACTION, alpha=BAD_FRACTION, random_start=BAD_BOOL, loss=BAD_NAME),
    "masked-cw": dict(confidence=BAD_NONNEGATIVE, lr=BAD_POSITIVE, steps=BAD_COUNT, restarts=BAD_COUNT,
                      l2_weight=BAD_NONNEGATIVE, random_start=BAD_BOOL),
    "universal-patch": dict(epochs=BAD_COUNT, batch_size=BAD_COUNT, lr=BAD_POSITIVE,
                            optimizer=("sgd", 0, None), loss=("dlr", "cw", 3), eot=("x", 5),
                            tv_weight=BAD_NONNEGATIVE, nps_weight=BAD_NONNEGATIVE,
                            printable_colors=("x", torch.rand(3), torch.full((2, 3), 2.0),
                                              torch.full((2, 3), NAN))),
    "lavan": dict(steps=BAD_COUNT, step=BAD_POSITIVE, restarts=BAD_COUNT, epochs=BAD_COUNT,
                  batch_size=BAD_COUNT, lr=BAD_POSITIVE, universal=BAD_BOOL, eot=("x", 5)),
}


def _build(name):
    def build(**kw):
        from patchbench import attacks
        return attacks.get(name, **kw)
    return build


CASES = []
for _name, _params in PARAMS.items():
    for _param, _values in _params.items():
        CASES += param_cases(f"{P}.{_name}", _build(_name), _param, _values)


def _registry_cases():
    from patchbench import attacks
    cs = [Case(f"{P}.get.universal-steps", lambda: _build("universal-patch")(steps=2), ("steps",)),
          Case(f"{P}.get.unknown-kw", lambda: _build("masked-pgd")(stepz=2), ("stepz",)),
          Case(f"{P}.get.unknown-name", lambda: attacks.get("masked-pdg"), ("masked-pdg", "attack")),
          Case(f"{P}.get.name-none", lambda: attacks.get(None), ("attack",)),
          Case(f"{P}.get.name-int", lambda: attacks.get(3), ("attack",)),
          Case(f"{P}.get.normalised-name", lambda: type(attacks.get("MASKED_PGD")).__name__,
               check=_eq("MaskedPGD"))]
    return cs


CASES += _registry_cases()

# ---- run(): bad images, labels, targets, threats, generators ----------------------------------
BAD_X = {
    "numpy": lambda: _data()[0].numpy(),
    "list": lambda: _data()[0].tolist(),
    "uint8": lambda: (_data()[0] * 255).to(torch.uint8),
    "int64": lambda: (_data()[0] * 255).long(),
    "x255": lambda: _data()[0] * 255,
    "negative": lambda: _data()[0] - 0.5,
    "nan": lambda: torch.full_like(_data()[0], NAN),
    "inf": lambda: torch.full_like(_data()[0], INF),
    "3d": lambda: _data()[0][0],
    "5d": lambda: _data()[0][None],
    "1-channel": lambda: _data()[0][:, :1],
    "empty": lambda: _data()[0][:0],
    "meta": lambda: torch.empty(N, 3, HW, HW, device="meta"),
}
BAD_Y = {
    "float": lambda: _data()[1].float(),
    "short": lambda: _data()[1][:1],
    "long": lambda: torch.cat([_data()[1], _data()[1]]),
    "out-of-range": lambda: _data()[1] + 5,
    "negative": lambda: _data()[1] - 10,
    "2d": lambda: _data()[1][:, None],
    "string": lambda: "abc",
    "none": lambda: None,
    "bool": lambda: torch.ones(N, dtype=torch.bool),
}
BAD_TARGET = {
    "equals-label": lambda: _data()[1],
    "out-of-range": lambda: torch.full((N,), 7),
    "negative": lambda: torch.full((N,), -1),
    "float": lambda: torch.full((N,), float(_free_class())),
    "short": lambda: torch.full((1, 2), _free_class()),
    "string": lambda: "3",
    "bool": lambda: True,
    "float-scalar": lambda: 2.5,
}
BAD_THREAT = {
    "string": ("square", ("threat",)),
    "none": (None, ("threat",)),
    "int": (3, ("threat",)),
    "mask-shape": (torch.ones(2, 1, HW, HW), ("threat", "mask")),
    "mask-size": (torch.ones(1, 1, HW + 1, HW), ("threat", "mask")),
    "mask-half": (torch.full((1, 1, HW, HW), 0.5), ("threat", "mask")),
    "mask-nan": (torch.full((1, 1, HW, HW), NAN), ("threat", "mask")),
    "mask-3ch": (torch.ones(1, 3, HW, HW), ("threat", "mask")),
}


def _run_cases():
    cs = []
    for name in PARAMS:
        universal = name == "universal-patch"
        for k, make in BAD_X.items():
            cs.append(Case(f"{P}.{name}.run.x={k}", lambda n=name, m=make: _run(n, x=m()), ("x",)))
        for k, make in BAD_Y.items():
            cs.append(Case(f"{P}.{name}.run.y={k}", lambda n=name, m=make: _run(n, y=m()), ("y",)))
        for k, make in BAD_TARGET.items():
            if universal and k == "equals-label":
                make = (lambda: int(_data()[1][0]))
            cs.append(Case(f"{P}.{name}.run.target={k}",
                           lambda n=name, m=make: _run(n, target=m()), ("target",)))
        for k, (threat, names) in BAD_THREAT.items():
            if universal and k.startswith("mask"):
                names = ("threat",)
            cs.append(Case(f"{P}.{name}.run.threat={k}",
                           lambda n=name, t=threat: _run(n, threat=t), names))
        cs.append(Case(f"{P}.{name}.run.threat=too-big-for-the-image",
                       lambda n=name: _run(n, threat=_big_threat()), ("image", "area", "fit")))
        for s in BAD_SEEDS + (np.random.default_rng(0),):
            cs.append(Case(f"{P}.{name}.run.generator={s!r}",
                           lambda n=name, s=s: _run(n, generator=s), ("generator",)))
        cs.append(Case(f"{P}.{name}.run.model=int", lambda n=name: _attack(n).run(
            3, _data()[0], _data()[1], _threat()), ("model",)))
        # valid borderline inputs: the answer must be right
        cs.append(Case(f"{P}.{name}.run.valid-seeded", lambda n=name: _run(n, generator=5),
                       check=_valid_result()))
        cs.append(Case(f"{P}.{name}.run.valid-numpy-seed",
                       lambda n=name: _run(n, generator=np.int64(5)), check=_valid_result()))
        cs.append(Case(f"{P}.{name}.run.valid-int-target",
                       lambda n=name: _run(n, target=_free_class()),
                       check=lambda r: _valid_result(target=_free_class())(r)))
        cs.append(Case(f"{P}.{name}.run.valid-float64",
                       lambda n=name: _run(n, x=_data()[0].double()),
                       check=lambda r: _valid_result(x=_data()[0].double())(r)))
        cs.append(Case(f"{P}.{name}.run.valid-requires-grad",
                       lambda n=name: _run(n, x=_data()[0].clone().requires_grad_(True)),
                       check=_valid_result()))
        cs.append(Case(f"{P}.{name}.run.valid-misclassified",
                       lambda n=name: _run(n, y=(_data()[1] + 1) % 5),
                       check=lambda r: _valid_result(y=(_data()[1] + 1) % 5)(r)))
        if not universal:
            cs.append(Case(f"{P}.{name}.run.valid-zero-mask",
                           lambda n=name: _run(n, threat=torch.zeros(HW, HW)), check=_unchanged))
            cs.append(Case(f"{P}.{name}.run.valid-hw-mask",
                           lambda n=name: _run(n, threat=_corner_mask()), check=_valid_result()))
            cs.append(Case(f"{P}.{name}.run.valid-bool-mask",
                           lambda n=name: _run(n, threat=_corner_mask().bool()), check=_valid_result()))
    return cs


class _RawNet(torch.nn.Module):
    """A bare network without ``num_classes``: labels are checked against its logits."""

    def __init__(self, out_shape=None):
        super().__init__()
        self.lin = torch.nn.Linear(3 * HW * HW, 4)
        self.out_shape = out_shape

    def forward(self, x):
        z = self.lin(x.flatten(1))
        return z if self.out_shape is None else z.reshape(self.out_shape)


def _raw_cases():
    cs = []
    for name in ("masked-pgd", "masked-apgd", "masked-cw", "lavan"):
        x = _data()[0]
        cs += [
            Case(f"{P}.{name}.run.raw-model.y>=K", lambda n=name, x=x: _attack(n).run(
                _RawNet(), x, torch.full((N,), 6), _threat()), ("y",)),
            Case(f"{P}.{name}.run.raw-model.target>=K", lambda n=name, x=x: _attack(n).run(
                _RawNet(), x, torch.zeros(N, dtype=torch.long), _threat(),
                target=torch.full((N,), 9)), ("target",)),
            Case(f"{P}.{name}.run.raw-model.bad-output", lambda n=name, x=x: _attack(n).run(
                _RawNet(out_shape=(-1,)), x, torch.zeros(N, dtype=torch.long), _threat()),
                ("model",)),
        ]
    return cs


CASES += _raw_cases()


def _big_threat():
    from patchbench.patches import Threat
    return Threat(area=0.95, shape="circle")


def _corner_mask():
    m = torch.zeros(HW, HW)
    m[:3, :3] = 1
    return m


CASES += _run_cases()


# ---- universal fit/apply -----------------------------------------------------------------------
def _universal_cases():
    from patchbench.attacks import UniversalPatch
    x, y = _data()

    def fit(data=None, threat=None, **kw):
        return UniversalPatch(epochs=1, batch_size=2).fit(_model(), (x, y) if data is None else data,
                                                           _threat() if threat is None else threat, **kw)

    def apply(patch, **kw):
        return UniversalPatch().apply(_model(), x, y, _threat(), patch, **kw)

    hw = _threat().patch_size((HW, HW))
    return [
        Case(f"{P}.universal.fit.data=int", lambda: fit(data=5), ("data",)),
        Case(f"{P}.universal.fit.data=short-labels", lambda: fit(data=(x, y[:1])), ("labels",)),
        Case(f"{P}.universal.fit.data=float-labels", lambda: fit(data=(x, y.float())), ("labels",)),
        Case(f"{P}.universal.fit.data=bad-images", lambda: fit(data=(x * 9, y)), ("images",)),
        Case(f"{P}.universal.fit.data=one-shot-iterator",
             lambda: UniversalPatch(epochs=2).fit(_model(), iter([(x, y)]), _threat()), ("data",)),
        Case(f"{P}.universal.fit.data=batches-not-pairs", lambda: fit(data=[x, x, x]), ("data",)),
        Case(f"{P}.universal.fit.threat=mask", lambda: fit(threat=torch.ones(1, 1, HW, HW)), ("threat",)),
        Case(f"{P}.universal.fit.target=mixed", lambda: fit(target=torch.tensor([0, 1, 3])), ("target",)),
        Case(f"{P}.universal.fit.target=out-of-range", lambda: fit(target=9), ("target",)),
        Case(f"{P}.universal.fit.target=string", lambda: fit(target="3"), ("target",)),
        Case(f"{P}.universal.fit.printable_colors=2ch", lambda: UniversalPatch(
            epochs=1, nps_weight=1.0, printable_colors=torch.rand(4, 2)).fit(_model(), (x, y), _threat()),
            ("printable_colors",)),
        Case(f"{P}.universal.fit.valid-target-class-in-data", lambda: fit(target=int(y[0])),
             check=lambda p: (_ for _ in ()).throw(AssertionError(p.shape))
             if p.shape != (3, *hw) or not (0 <= float(p.min()) <= float(p.max()) <= 1) else None),
        Case(f"{P}.universal.apply.patch=wrong-size", lambda: apply(torch.rand(3, HW, HW)), ("patch",)),
        Case(f"{P}.universal.apply.patch=wrong-channels", lambda: apply(torch.rand(1, *hw)), ("patch",)),
        Case(f"{P}.universal.apply.patch=255", lambda: apply(torch.full((3, *hw), 255.0)), ("patch",)),
        Case(f"{P}.universal.apply.patch=list", lambda: apply([[0.5]]), ("patch",)),
        Case(f"{P}.universal.apply.target=label", lambda: apply(torch.rand(3, *hw), target=int(y[0])),
             ("target",)),
        Case(f"{P}.universal.apply.valid", lambda: apply(torch.rand(3, *hw), generator=2),
             check=_valid_result()),
    ]


CASES += _universal_cases()


# ---- FacePatch ---------------------------------------------------------------------------------
class _StubDetector:
    def candidates(self, *a, **k):
        raise AssertionError("the detector should not run for a malformed call")


def _face_cases():
    from patchbench.attacks.face import FacePatch, initial_patch, paste_on_faces, select_candidates
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    boxes = [torch.tensor([[4.0, 4.0, 28.0, 28.0]])]
    cs = []
    face_params = dict(alpha=BAD_FRACTION + (0.0, 1.0), epochs=(-1, 2.5, "3", None), lr=BAD_POSITIVE,
                       batch_size=BAD_COUNT, patch_size=BAD_COUNT, delta=(0.0, 1.5, NAN, "x"),
                       m=(-0.1, 1.0, INF), gamma=(-1, NAN, INF, "x"), iou_face=(-0.1, 1.5, NAN),
                       iou_patch=(-0.1, 1.5, NAN, None), strategy=("x", None, 3),
                       position=("left", None), init=("banana", 0), stages=(("xnet",), (), 5))
    for param, values in face_params.items():
        cs += param_cases(f"{P}.face", lambda **kw: FacePatch(**kw), param, values)

    def fit(path=None, det=None, **kw):
        return FacePatch(epochs=1, patch_size=8).fit(_StubDetector() if det is None else det,
                                                     kw.pop("images", x), kw.pop("boxes", boxes),
                                                     checkpoint=path, **kw)

    def garbage(tmp="/tmp/patchbench_fuzz_face_garbage.ckpt", content=b"\x00not a checkpoint" * 8):
        with open(tmp, "wb") as f:
            f.write(content)
        return tmp

    def wrong_dict(tmp="/tmp/patchbench_fuzz_face_dict.ckpt"):
        torch.save({"weights": torch.zeros(2)}, tmp)
        return tmp

    cs += [
        Case(f"{P}.face.fit.checkpoint=garbage", lambda: fit(garbage()), ("checkpoint", "garbage")),
        Case(f"{P}.face.fit.checkpoint=empty-file", lambda: fit(garbage(
            "/tmp/patchbench_fuzz_face_empty.ckpt", b"")), ("checkpoint",)),
        Case(f"{P}.face.fit.checkpoint=wrong-dict", lambda: fit(wrong_dict()), ("checkpoint",)),
        Case(f"{P}.face.fit.checkpoint=directory", lambda: fit("/tmp"), ("checkpoint",)),
        Case(f"{P}.face.fit.checkpoint=int", lambda: fit(5), ("checkpoint",)),
        Case(f"{P}.face.fit.detector=none", lambda: fit(det=object()), ("detector",)),
        Case(f"{P}.face.fit.images=numpy", lambda: fit(images=x.numpy()), ("images",)),
        Case(f"{P}.face.fit.images=1ch", lambda: fit(images=x[:, :1]), ("images",)),
        Case(f"{P}.face.fit.boxes=int", lambda: fit(boxes=5), ("boxes",)),
        Case(f"{P}.face.fit.boxes=string", lambda: fit(boxes=["abcd"]), ("boxes",)),
        Case(f"{P}.face.fit.boxes=nan", lambda: fit(boxes=[torch.full((1, 4), NAN)]), ("boxes",)),
        Case(f"{P}.face.fit.boxes=k3", lambda: fit(boxes=[torch.zeros(1, 3)]), ("boxes",)),
        Case(f"{P}.face.fit.boxes=count", lambda: fit(boxes=boxes * 2), ("boxes",)),
        Case(f"{P}.face.fit.boxes=outside", lambda: fit(boxes=[torch.tensor([[40., 40., 50., 50.]])]),
             ("boxes",)),
        Case(f"{P}.face.fit.generator='x'", lambda: fit(generator="x"), ("generator",)),
        Case(f"{P}.face.fit.verbose='no'", lambda: fit(verbose="no"), ("verbose",)),
        Case(f"{P}.face.apply.patch=list", lambda: FacePatch().apply(x, boxes, [[0.5]]), ("patch",)),
        Case(f"{P}.face.apply.patch=2ch", lambda: FacePatch().apply(x, boxes, torch.rand(2, 8, 8)),
             ("patch",)),
        Case(f"{P}.face.apply.patch=255", lambda: FacePatch().apply(x, boxes, torch.full((3, 8, 8), 9.)),
             ("patch",)),
        Case(f"{P}.face.apply.valid-no-face", lambda: FacePatch().apply(x, [torch.zeros(0, 4)],
                                                                       torch.rand(3, 8, 8)),
             check=lambda out: torch.equal(out, x) or (_ for _ in ()).throw(AssertionError())),
        Case(f"{P}.face.paste_on_faces.images=list", lambda: paste_on_faces([1], boxes, torch.rand(3, 8, 8)),
             ("images",)),
        Case(f"{P}.face.paste_on_faces.position", lambda: paste_on_faces(x, boxes, torch.rand(3, 8, 8),
                                                                         position="left"), ("position",)),
        Case(f"{P}.face.select_candidates.strategy", lambda: select_candidates(
            "x", torch.zeros(1, 4), torch.zeros(1), boxes), ("strategy",)),
        Case(f"{P}.face.select_candidates.boxes=list", lambda: select_candidates(
            "patch-score", [[0, 0, 1, 1]], torch.zeros(1), boxes), ("boxes",)),
        Case(f"{P}.face.initial_patch.init", lambda: initial_patch("banana", 8), ("init",)),
        Case(f"{P}.face.initial_patch.size=0", lambda: initial_patch("noise", 0), ("size",)),
        Case(f"{P}.face.initial_patch.size=2.5", lambda: initial_patch("noise", 2.5), ("size",)),
        Case(f"{P}.face.initial_patch.generator", lambda: initial_patch("noise", 4, generator="s"),
             ("generator",)),
    ]
    return cs


CASES += _face_cases()


# ---- patches: Threat, shapes, placements, paste, EOT --------------------------------------------
def _patch_cases():
    from patchbench.patches import (EOT, BoxPlacement, FixedPlacement, RandomPlacement, Threat,
                                    apply_photometric, fit_shape, nps_loss, paste, patch_size,
                                    render_mask, shape_mask, tv_loss)
    cs = []
    cs += param_cases(f"{P}.Threat", lambda **kw: Threat(**kw), "area",
                      BAD_FRACTION + (0.0, 1.0, -INF))
    cs += param_cases(f"{P}.Threat", lambda **kw: Threat(**kw), "shape", ("triangle", 3, None, ""))
    cs += param_cases(f"{P}.Threat", lambda **kw: Threat(shape="rectangle", **kw), "aspect",
                      BAD_POSITIVE + ("2",))
    cs += param_cases(f"{P}.Threat", lambda **kw: Threat(shape="ring", **kw), "ring_width",
                      (0.0, -0.1, 1.5, NAN, INF, "x"))
    cs += param_cases(f"{P}.Threat", lambda **kw: Threat(**kw), "placement",
                      ("diagonal", None, 3, (0.5,), (NAN, 0.5), (2.0, 0.5), ("a", "b")),
                      names=("placement", "FixedPlacement"))
    cs += param_cases(f"{P}.Threat", lambda **kw: Threat(**kw), "eot", ("x", 3, {"rotation": 5}))
    cs += [Case(f"{P}.Threat.aspect-for-square", lambda: Threat(shape="square", aspect=2.0), ("aspect",))]

    th = Threat(area=0.1)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    cs += [
        Case(f"{P}.Threat.sample.n=0", lambda: th.sample(0, (16, 16)), ("n",)),
        Case(f"{P}.Threat.sample.n=2.5", lambda: th.sample(2.5, (16, 16)), ("n",)),
        Case(f"{P}.Threat.sample.n='2'", lambda: th.sample("2", (16, 16)), ("n",)),
        Case(f"{P}.Threat.sample.hw=string", lambda: th.sample(2, "16x16"), ("image_hw",)),
        Case(f"{P}.Threat.sample.hw=fraction", lambda: th.sample(2, (16.5, 16)), ("image_hw",)),
        Case(f"{P}.Threat.sample.hw=zero", lambda: th.sample(2, (0, 16)), ("image_hw",)),
        Case(f"{P}.Threat.sample.hw=triple", lambda: th.sample(2, (16, 16, 3)), ("image_hw",)),
        Case(f"{P}.Threat.sample.eot=string", lambda: th.sample(2, (16, 16), eot="x"), ("eot",)),
        Case(f"{P}.Threat.masks.x=list", lambda: th.masks([[1.0]]), ("x",)),
        Case(f"{P}.Threat.masks.x=uint8", lambda: th.masks((x * 255).byte()), ("x",)),
        Case(f"{P}.Threat.masks.tiny-image", lambda: Threat(area=0.5, shape="circle").masks(
            torch.rand(1, 3, 1, 1)), ("image", "area")),
        Case(f"{P}.Threat.paste.params=dict", lambda: th.paste(x, torch.rand(3, 5, 5), {}), ("params",)),
        Case(f"{P}.Threat.paste.x=list", lambda: th.paste([1], torch.rand(3, 5, 5),
                                                          th.sample(2, (16, 16))), ("x",)),
        Case(f"{P}.Threat.paste.patch-size", lambda: th.paste(x, torch.rand(3, 2, 2),
                                                              th.sample(2, (16, 16))), ("patch",)),
    ]
    for seed in BAD_SEEDS:
        cs.append(Case(f"{P}.Threat.sample.generator={seed!r}",
                       lambda s=seed: th.sample(2, (16, 16), generator=s), ("generator",)))
    # border on 1-px images: a clear error, or the whole image when it fits
    for h, w in ((1, 1), (1, 5), (5, 1), (2, 2)):
        cs.append(Case(f"{P}.Threat.border.{h}x{w}.area=0.5", lambda h=h, w=w: Threat(
            area=0.5, shape="border").masks(torch.rand(1, 3, h, w)), ("border", "image", "area")))

    def all_ones(h, w):
        def check(m):
            assert torch.equal(m, torch.ones(1, 1, h, w)), m
        return check

    for h, w in ((1, 1), (1, 50), (40, 1)):
        cs.append(Case(f"{P}.Threat.border.{h}x{w}.area=0.99", lambda h=h, w=w: Threat(
            area=0.99, shape="border").masks(torch.rand(1, 3, h, w)), check=all_ones(h, w)))

    def mask_count(shape, expected):
        def check(m):
            assert int(m.sum()) == expected, (shape, int(m.sum()))
        return check

    cs += [
        Case(f"{P}.shape_mask.shape", lambda: shape_mask("triangle", 4, 4), ("shape",)),
        Case(f"{P}.shape_mask.h=0", lambda: shape_mask("square", 0, 4), ("h",)),
        Case(f"{P}.shape_mask.w=-1", lambda: shape_mask("square", 4, -1), ("w",)),
        Case(f"{P}.shape_mask.h=2.5", lambda: shape_mask("square", 2.5, 4), ("h",)),
        Case(f"{P}.shape_mask.h='4'", lambda: shape_mask("square", "4", 4), ("h",)),
        Case(f"{P}.shape_mask.ring_width=nan", lambda: shape_mask("ring", 4, 4, ring_width=NAN),
             ("ring_width",)),
        Case(f"{P}.shape_mask.ring_width=0", lambda: shape_mask("border", 4, 4, ring_width=0.0),
             ("ring_width",)),
        Case(f"{P}.shape_mask.valid-border-1px", lambda: shape_mask("border", 1, 1),
             check=mask_count("border", 1)),
        Case(f"{P}.shape_mask.valid-border-3x3", lambda: shape_mask("border", 3, 3),
             check=mask_count("border", 8)),
        Case(f"{P}.shape_mask.valid-numpy-ints", lambda: shape_mask("square", np.int64(3), np.int32(2)),
             check=mask_count("square", 6)),
        Case(f"{P}.shape_mask.valid-circle-5", lambda: shape_mask("circle", 5, 5),
             check=mask_count("circle", 21)),
        Case(f"{P}.fit_shape.area=nan", lambda: fit_shape("square", NAN, (16, 16)), ("area",)),
        Case(f"{P}.fit_shape.area=1", lambda: fit_shape("square", 1.0, (16, 16)), ("area",)),
        Case(f"{P}.fit_shape.hw=None", lambda: fit_shape("square", 0.1, None), ("image_hw",)),
        Case(f"{P}.fit_shape.hw=negative", lambda: fit_shape("square", 0.1, (-4, 16)), ("image_hw",)),
        Case(f"{P}.fit_shape.hw=2.7", lambda: fit_shape("square", 0.1, (2.7, 16)), ("image_hw",)),
        Case(f"{P}.fit_shape.aspect=inf", lambda: fit_shape("rectangle", 0.1, (16, 16), INF), ("aspect",)),
        Case(f"{P}.fit_shape.aspect=None", lambda: fit_shape("rectangle", 0.1, (16, 16), None),
             ("aspect",)),
        Case(f"{P}.patch_size.shape", lambda: patch_size(None, 0.1, (16, 16)), ("shape",)),
        Case(f"{P}.patch_size.valid-float-hw", lambda: patch_size("square", 0.02, (224.0, 224.0)),
             check=_eq((31, 32))),
    ]
    # placements
    cs += param_cases(f"{P}.FixedPlacement", lambda **kw: FixedPlacement(**kw), "x",
                      BAD_FRACTION, names=("x",))
    cs += param_cases(f"{P}.FixedPlacement", lambda **kw: FixedPlacement(**kw), "y",
                      BAD_FRACTION, names=("y",))
    box = torch.tensor([[2.0, 2.0, 10.0, 10.0]])
    cs += param_cases(f"{P}.BoxPlacement", lambda **kw: BoxPlacement(box, **kw), "alpha",
                      (0.0, -0.5, 1.5, NAN, INF, "x"))
    cs += param_cases(f"{P}.BoxPlacement", lambda **kw: BoxPlacement(box, **kw), "anchor",
                      ("left", None, 3))
    cs += param_cases(f"{P}.BoxPlacement", lambda **kw: BoxPlacement(**kw), "boxes",
                      ("abc", None, [[1.0, 2.0, 3.0]], [[NAN, 0, 4, 4]], [[4.0, 4.0, 2.0, 8.0]],
                       torch.zeros(0, 4), {"a": 1}), names=("boxes", "box"))
    rp = RandomPlacement()
    cs += [
        Case(f"{P}.RandomPlacement.patch-bigger-than-image", lambda: rp.sample(2, (16, 16), (20, 20)),
             ("fit", "image")),
        Case(f"{P}.RandomPlacement.patch_hw=zero", lambda: rp.sample(2, (16, 16), (0, 4)), ("patch_hw",)),
        Case(f"{P}.RandomPlacement.n=-1", lambda: rp.sample(-1, (16, 16), (4, 4)), ("n",)),
        Case(f"{P}.RandomPlacement.generator=np", lambda: rp.sample(
            2, (16, 16), (4, 4), np.random.default_rng(0)), ("generator",)),
        Case(f"{P}.RandomPlacement.extent=list", lambda: rp.sample(2, (16, 16), (4, 4), extent=[1]),
             ("extent",)),
        Case(f"{P}.RandomPlacement.extent=nan", lambda: rp.sample(
            2, (16, 16), (4, 4), extent=torch.full((2, 4), NAN)), ("extent",)),
        Case(f"{P}.FixedPlacement.patch-bigger-than-image", lambda: FixedPlacement().sample(
            1, (8, 8), (9, 9)), ("fit", "image")),
        Case(f"{P}.BoxPlacement.count", lambda: BoxPlacement(box).sample(3, (16, 16), (4, 4)),
             ("boxes", "images")),
        Case(f"{P}.BoxPlacement.outside", lambda: BoxPlacement(box).sample(1, (8, 8), (4, 4)),
             ("outside",)),
        Case(f"{P}.FixedPlacement.valid-corner", lambda: FixedPlacement(1.0, 0.0).sample(
            1, (16, 16), (4, 4)).top_left.tolist(), check=_eq([[12.0, 0.0]])),
    ]
    # paste / render_mask (inner-loop helpers: structural checks only)
    params = th.sample(2, (16, 16), generator=0)
    ph, pw = th.patch_size((16, 16))
    sm = th.shape_mask((16, 16))

    def outside_unchanged(out):
        xp, m = out
        assert torch.equal(xp[(m == 0).expand_as(x)], x[(m == 0).expand_as(x)])
        assert int(m.sum()) == 2 * int(sm.sum())

    cs += [
        Case(f"{P}.paste.images=list", lambda: paste([1], torch.rand(3, ph, pw), sm, params), ("images",)),
        Case(f"{P}.paste.images=int", lambda: paste(x.long(), torch.rand(3, ph, pw), sm, params),
             ("images",)),
        Case(f"{P}.paste.patch=list", lambda: paste(x, [1.0], sm, params), ("patch",)),
        Case(f"{P}.paste.patch=wrong-size", lambda: paste(x, torch.rand(3, ph + 1, pw), sm, params),
             ("patch",)),
        Case(f"{P}.paste.patch=count", lambda: paste(x, torch.rand(3, 3, ph, pw), sm, params),
             ("patch",)),
        Case(f"{P}.paste.patch=2ch", lambda: paste(x, torch.rand(2, ph, pw), sm, params), ("patch",)),
        Case(f"{P}.paste.shape_mask=wrong", lambda: paste(x, torch.rand(3, ph, pw), torch.ones(2, 2),
                                                          params), ("shape_mask",)),
        Case(f"{P}.paste.shape_mask=stacked", lambda: paste(x, torch.rand(3, ph, pw),
                                                            torch.ones(2, ph, pw), params),
             ("shape_mask",)),
        Case(f"{P}.paste.params=None", lambda: paste(x, torch.rand(3, ph, pw), sm, None), ("params",)),
        Case(f"{P}.paste.params=other-images", lambda: paste(x[:1], torch.rand(3, ph, pw), sm, params),
             ("params",)),
        Case(f"{P}.paste.valid", lambda: paste(x, torch.rand(3, ph, pw), sm, params),
             check=outside_unchanged),
        Case(f"{P}.paste.valid-grey-patch-on-rgb", lambda: paste(x, torch.rand(1, ph, pw), sm, params),
             check=outside_unchanged),
        Case(f"{P}.render_mask.params=None", lambda: render_mask(sm, None), ("params",)),
        Case(f"{P}.render_mask.shape_mask=list", lambda: render_mask([1], params), ("shape_mask",)),
        Case(f"{P}.render_mask.valid", lambda: render_mask(sm, params),
             check=lambda m: _eq(2 * int(sm.sum()))(int(m.sum()))),
    ]
    # EOT and the photometric helpers
    cs += param_cases(f"{P}.EOT", lambda **kw: EOT(**kw), "rotation", (-1, 180, NAN, INF, "x", None),
                      names=("rotation",))
    cs += param_cases(f"{P}.EOT", lambda **kw: EOT(**kw), "scale",
                      (0, -1, NAN, INF, "x", None, (1.2, 0.8), (0.5, 1.0, 2.0), (0.5, NAN), [0.5, "a"]),
                      names=("scale",))
    for prm, hi in (("perspective", 0.5), ("brightness", 1.5), ("contrast", 1.0), ("blur", None),
                    ("noise", 1.5)):
        bad = (-0.1, NAN, INF, "x", None) + (() if hi is None else (hi,))
        cs += param_cases(f"{P}.EOT", lambda **kw: EOT(**kw), prm, bad, names=(prm,))
    eot = EOT()
    ep = eot.sample(2, generator=0)
    cs += [
        Case(f"{P}.EOT.sample.n=0", lambda: eot.sample(0), ("n",)),
        Case(f"{P}.EOT.sample.n='2'", lambda: eot.sample("2"), ("n",)),
        Case(f"{P}.EOT.sample.generator='x'", lambda: eot.sample(2, "x"), ("generator",)),
        Case(f"{P}.EOT.sample.generator=2**64", lambda: eot.sample(2, 2 ** 64), ("generator",)),
        Case(f"{P}.EOT.apply_photometric.params=None", lambda: eot.apply_photometric(
            torch.rand(2, 3, 4, 4), None), ("params",)),
        Case(f"{P}.apply_photometric.patch=list", lambda: apply_photometric([1.0], ep.photometric),
             ("patch",)),
        Case(f"{P}.apply_photometric.patch=int", lambda: apply_photometric(
            torch.ones(2, 3, 4, 4, dtype=torch.long), ep.photometric), ("patch",)),
        Case(f"{P}.apply_photometric.patch=count", lambda: apply_photometric(
            torch.rand(3, 3, 4, 4), ep.photometric), ("patch", "N=2")),
        Case(f"{P}.apply_photometric.params=dict", lambda: apply_photometric(torch.rand(2, 3, 4, 4), {}),
             ("params",)),
        Case(f"{P}.apply_photometric.valid-none", lambda: apply_photometric(x, None),
             check=lambda out: _eq(True)(out is x)),
        Case(f"{P}.tv_loss.patch=list", lambda: tv_loss([1.0]), ("tv_loss", "patch")),
        Case(f"{P}.tv_loss.mask=list", lambda: tv_loss(torch.rand(3, 4, 4), mask=[1]), ("mask",)),
        Case(f"{P}.tv_loss.valid-constant", lambda: float(tv_loss(torch.full((3, 4, 4), 0.5))),
             check=lambda v: _eq(True)(v < 1e-5)),
        Case(f"{P}.nps_loss.patch=int", lambda: nps_loss(torch.ones(3, 4, 4, dtype=torch.long)),
             ("nps_loss", "patch")),
        Case(f"{P}.nps_loss.printable_colors=wrong", lambda: nps_loss(torch.rand(3, 4, 4),
                                                                      torch.rand(5, 2)),
             ("printable_colors",)),
        Case(f"{P}.nps_loss.valid-on-palette", lambda: float(nps_loss(torch.zeros(3, 4, 4))),
             check=lambda v: _eq(True)(v < 1e-4)),
    ]
    from patchbench.patches import default_printable_colors
    cs += [
        Case(f"{P}.default_printable_colors.channels=2", lambda: default_printable_colors(2),
             ("channels",)),
        Case(f"{P}.default_printable_colors.levels=0", lambda: default_printable_colors(3, 0),
             ("levels",)),
        Case(f"{P}.default_printable_colors.levels=x", lambda: default_printable_colors(3, "x"),
             ("levels",)),
    ]
    return cs


CASES += _patch_cases()


# ---- metrics.classification --------------------------------------------------------------------
def _metric_cases():
    from patchbench.metrics import (Rate, accuracy, attack_success_rate, clean_accuracy,
                                    predict_labels, robust_accuracy, success_rate, wilson_interval)
    y = torch.tensor([0, 1, 2, 1])
    x = torch.rand(4, 3, HW, HW, generator=torch.Generator().manual_seed(2))

    def rate(k, n):
        def check(r):
            assert isinstance(r, Rate) and (r.k, r.n) == (k, n), r
        return check

    def nan_rate(r):
        assert r.n == 0 and math.isnan(r.value) and (r.lo, r.hi) == (0.0, 1.0)

    cs = [
        Case(f"{P}.metrics.accuracy.pred=string", lambda: accuracy("0121", y), ("pred",)),
        Case(f"{P}.metrics.accuracy.pred=None", lambda: accuracy(None, y), ("pred",)),
        Case(f"{P}.metrics.accuracy.pred=float", lambda: accuracy(y.float(), y), ("pred",)),
        Case(f"{P}.metrics.accuracy.pred=bool", lambda: accuracy(y > 0, y), ("pred",)),
        Case(f"{P}.metrics.accuracy.pred=negative", lambda: accuracy(y - 5, y), ("pred",)),
        Case(f"{P}.metrics.accuracy.pred=3d", lambda: accuracy(torch.zeros(4, 2, 2), y), ("pred",)),
        Case(f"{P}.metrics.accuracy.pred=nan-logits", lambda: accuracy(torch.full((4, 3), NAN), y),
             ("pred",)),
        Case(f"{P}.metrics.accuracy.pred=no-classes", lambda: accuracy(torch.zeros(4, 0), y), ("pred",)),
        Case(f"{P}.metrics.accuracy.pred=ragged", lambda: accuracy([[0, 1], [2]], y), ("pred",)),
        Case(f"{P}.metrics.accuracy.pred=meta", lambda: accuracy(torch.zeros(4, device="meta",
                                                                             dtype=torch.long), y),
             ("pred",)),
        Case(f"{P}.metrics.accuracy.y=short", lambda: accuracy(y, y[:2]), ("y",)),
        Case(f"{P}.metrics.accuracy.y=float", lambda: accuracy(y, y.float()), ("y",)),
        Case(f"{P}.metrics.accuracy.y=negative", lambda: accuracy(y, y - 3), ("y",)),
        Case(f"{P}.metrics.accuracy.y=string", lambda: accuracy(y, "0121"), ("y",)),
        Case(f"{P}.metrics.accuracy.valid-logits", lambda: accuracy(torch.eye(3)[[0, 1, 2, 2]], y),
             check=rate(3, 4)),
        Case(f"{P}.metrics.accuracy.valid-lists", lambda: accuracy([0, 1, 2, 1], [0, 1, 2, 2]),
             check=rate(3, 4)),
        Case(f"{P}.metrics.accuracy.valid-empty", lambda: accuracy([], []), check=nan_rate),
        Case(f"{P}.metrics.success_rate.lengths", lambda: success_rate(y, y[:3], y), ("clean_pred",)),
        Case(f"{P}.metrics.success_rate.y-length", lambda: success_rate(y, y, y[:3]), ("y",)),
        Case(f"{P}.metrics.success_rate.float-pred", lambda: success_rate(y.float(), y, y),
             ("clean_pred",)),
        Case(f"{P}.metrics.success_rate.adv-string", lambda: success_rate(y, "x", y), ("adv_pred",)),
        Case(f"{P}.metrics.success_rate.target-length", lambda: success_rate(y, y, y, target=y[:2]),
             ("target",)),
        Case(f"{P}.metrics.success_rate.target-float", lambda: success_rate(y, y, y, target=y.float()),
             ("target",)),
        Case(f"{P}.metrics.success_rate.valid-untargeted", lambda: success_rate(
            torch.tensor([0, 1, 0, 1]), torch.tensor([1, 1, 2, 0]), y), check=rate(2, 3)),
        Case(f"{P}.metrics.success_rate.valid-target-equals-label", lambda: success_rate(
            y, torch.tensor([1, 1, 1, 1]), y, target=torch.tensor([1, 1, 1, 1])), check=rate(2, 2)),
        Case(f"{P}.metrics.success_rate.valid-int-target", lambda: success_rate(
            y, torch.tensor([2, 2, 2, 2]), y, target=2), check=rate(3, 3)),
        Case(f"{P}.metrics.success_rate.valid-all-equal", lambda: success_rate(y, y, y, target=y),
             check=nan_rate),
        Case(f"{P}.metrics.success_rate.valid-empty", lambda: success_rate(
            torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.long)), check=nan_rate),
        Case(f"{P}.metrics.wilson.k>n", lambda: wilson_interval(5, 3), ("k",)),
        Case(f"{P}.metrics.wilson.k=-1", lambda: wilson_interval(-1, 3), ("k",)),
        Case(f"{P}.metrics.wilson.k=1.5", lambda: wilson_interval(1.5, 3), ("k",)),
        Case(f"{P}.metrics.wilson.k=str", lambda: wilson_interval("1", 3), ("k",)),
        Case(f"{P}.metrics.wilson.n=None", lambda: wilson_interval(1, None), ("n",)),
        Case(f"{P}.metrics.wilson.z=0", lambda: wilson_interval(1, 3, 0), ("z",)),
        Case(f"{P}.metrics.wilson.z=nan", lambda: wilson_interval(1, 3, NAN), ("z",)),
        Case(f"{P}.metrics.wilson.z=inf", lambda: wilson_interval(1, 3, INF), ("z",)),
        Case(f"{P}.metrics.wilson.z=str", lambda: wilson_interval(1, 3, "2"), ("z",)),
        Case(f"{P}.metrics.wilson.valid-numpy", lambda: wilson_interval(np.int64(5), np.int64(10)),
             check=_eq(wilson_interval(5, 10))),
        Case(f"{P}.metrics.wilson.valid-integral-floats", lambda: wilson_interval(5.0, 10.0),
             check=_eq(wilson_interval(5, 10))),
        Case(f"{P}.metrics.wilson.valid-zero", lambda: wilson_interval(0, 0), check=_eq((0.0, 1.0))),
        Case(f"{P}.metrics.Rate.of.k>n", lambda: Rate.of(3, 2), ("k",)),
        Case(f"{P}.metrics.predict_labels.model=int", lambda: predict_labels(3, x), ("model",)),
        Case(f"{P}.metrics.predict_labels.x=numpy", lambda: predict_labels(_model(), x.numpy()), ("x",)),
        Case(f"{P}.metrics.predict_labels.batch_size=0", lambda: predict_labels(_model(), x, 0),
             ("batch_size",)),
        Case(f"{P}.metrics.predict_labels.batch_size=inf", lambda: predict_labels(_model(), x, INF),
             ("batch_size",)),
        Case(f"{P}.metrics.clean_accuracy.y=out-of-range", lambda: clean_accuracy(_model(), x, y + 5),
             ("y",)),
        Case(f"{P}.metrics.clean_accuracy.y=short", lambda: clean_accuracy(_model(), x, y[:2]), ("y",)),
        Case(f"{P}.metrics.clean_accuracy.x=255", lambda: clean_accuracy(_model(), x * 255, y), ("x",)),
        Case(f"{P}.metrics.clean_accuracy.model=None", lambda: clean_accuracy(None, x, y), ("model",)),
        Case(f"{P}.metrics.robust_accuracy.x_adv=nan", lambda: robust_accuracy(
            _model(), torch.full_like(x, NAN), y), ("x_adv",)),
        Case(f"{P}.metrics.robust_accuracy.y=float", lambda: robust_accuracy(_model(), x, y.float()),
             ("y",)),
        Case(f"{P}.metrics.attack_success_rate.shapes", lambda: attack_success_rate(
            _model(), x, x[:2], y), ("x_adv",)),
        Case(f"{P}.metrics.attack_success_rate.target", lambda: attack_success_rate(
            _model(), x, x, y, target=torch.full((4,), 9)), ("target",)),
        Case(f"{P}.metrics.attack_success_rate.batch_size", lambda: attack_success_rate(
            _model(), x, x, y, batch_size=-2), ("batch_size",)),
        Case(f"{P}.metrics.attack_success_rate.valid-no-change", lambda: attack_success_rate(
            _model(), x, x, _pred(x)), check=rate(0, 4)),
        Case(f"{P}.metrics.clean_accuracy.valid-own-predictions", lambda: clean_accuracy(
            _model(), x, _pred(x), batch_size=3), check=rate(4, 4)),
    ]
    return cs


def _pred(x):
    with torch.no_grad():
        return _model()(x).argmax(1)


CASES += _metric_cases()
