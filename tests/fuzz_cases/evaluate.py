"""Fuzz cases for ``pb.evaluate`` (the evaluation cell) and the package's lazy names."""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from . import BAD_COUNT, BAD_SEEDS, Case

import patchbench as pb


@functools.lru_cache(maxsize=None)
def _model():
    from patchbench.models.base import ImageClassifier
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(16, 5))
    return ImageClassifier(net, [0.5] * 3, [0.25] * 3, None, list("abcde"), 3, "fuzz").eval()


def _x(n=3, c=3, s=16, dtype=torch.float32):
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(0)).to(dtype)


def _y(n=3):
    with torch.no_grad():
        return _model()(_x(n)).argmax(1)


def _ev(**kw):
    args = dict(model=_model(), x=_x(), y=_y())
    args.update(kw)
    return pb.evaluate(args.pop("model"), args.pop("x"), args.pop("y"), **args)


def _clean_only_is_right(ev):
    assert ev.clean.n == 3 and ev.clean.k == 3, ev      # labels are the model's own predictions
    assert ev.attack == "none"


def _attack():
    return pb.attacks.MaskedPGD(steps=1)


CASES = [
    Case("evaluate.model=None", lambda: _ev(model=None), ("model",)),
    Case("evaluate.model=str", lambda: _ev(model="mobilenet_v2"), ("model",)),
    Case("evaluate.attack=str", lambda: _ev(attack="masked-pgd"), ("attack",)),
    Case("evaluate.attack=class", lambda: _ev(attack=pb.attacks.MaskedPGD), ("attack",)),
    Case("evaluate.defense=str", lambda: _ev(defense="lgs"), ("defense",)),
    Case("evaluate.defense=fn", lambda: _ev(defense=lambda x: x), ("defense",)),
    Case("evaluate.adaptive=str", lambda: _ev(adaptive="yes"), ("adaptive",)),
    Case("evaluate.adaptive=1", lambda: _ev(adaptive=1), ("adaptive",)),
    Case("evaluate.x=uint8", lambda: _ev(x=(_x() * 255).to(torch.uint8)), ("x",)),
    Case("evaluate.x=0-255 floats", lambda: _ev(x=_x() * 255), ("x",)),
    Case("evaluate.x=nan", lambda: _ev(x=_x().masked_fill(_x() > 0.5, math.nan)), ("x",)),
    Case("evaluate.x=3d", lambda: _ev(x=_x()[0]), ("x",)),
    Case("evaluate.x=1 channel", lambda: _ev(x=_x(c=1)), ("x",)),
    Case("evaluate.x=empty", lambda: _ev(x=_x(n=0), y=torch.zeros(0, dtype=torch.long)), ("x",)),
    Case("evaluate.x=list", lambda: _ev(x=_x().tolist()), ("x",)),
    Case("evaluate.x=meta", lambda: _ev(x=torch.empty(3, 3, 16, 16, device="meta")), ("x",)),
    Case("evaluate.y=short", lambda: _ev(y=_y()[:2]), ("y",)),
    Case("evaluate.y=float", lambda: _ev(y=_y().float()), ("y",)),
    Case("evaluate.y=too large", lambda: _ev(y=torch.tensor([0, 1, 7])), ("y",)),
    Case("evaluate.y=negative", lambda: _ev(y=torch.tensor([0, -1, 2])), ("y",)),
    Case("evaluate.y=str", lambda: _ev(y="abc"), ("y",)),
    Case("evaluate.y=2d", lambda: _ev(y=_y()[None]), ("y",)),
    Case("evaluate.threat=str", lambda: _ev(attack=_attack(), threat="square"), ("threat",)),
    Case("evaluate.x=float64 works", lambda: _ev(x=_x(dtype=torch.float64)), check=_clean_only_is_right),
    Case("evaluate.y=list works", lambda: _ev(y=_y().tolist()), check=_clean_only_is_right),
    Case("evaluate.lazy evaluate twice",
         lambda: (pb.evaluate, pb.evaluate)[1](_model(), _x(), _y()), check=_clean_only_is_right),
]
for v in BAD_COUNT:
    CASES.append(Case(f"evaluate.batch_size={v!r}", lambda v=v: _ev(batch_size=v), ("batch_size",)))
for v in BAD_SEEDS + (object(),):
    CASES.append(Case(f"evaluate.generator={v!r}", lambda v=v: _ev(generator=v), ("generator", "seed")))
for kind, name in (("defenses", "lgs"), ("defenses", "jpeg"), ("attacks", "masked-pgd"),
                   ("attacks", "universal-patch")):
    CASES.append(Case(f"evaluate.registry.{kind}.get({name}, bogus=1)",
                      lambda kind=kind, name=name: getattr(pb, kind).get(name, bogus=1), ("bogus",)))
    CASES.append(Case(f"evaluate.registry.{kind}.get({name!r}.upper())",
                      lambda kind=kind, name=name: getattr(pb, kind).get(name.upper().replace("-", "_")),
                      check=lambda d: None))
