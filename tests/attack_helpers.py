"""Shared fixtures for the attack tests: a tiny CNN trained for a few seconds on real Fashion-MNIST
images (padded to 32×32), so attacks face a model with real decision boundaries."""
from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import torch
from torch import nn

from patchbench.models.base import ImageClassifier

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _idx(name: str) -> np.ndarray:
    with gzip.open(FMNIST / name, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@functools.lru_cache(maxsize=None)
def fmnist32(split: str = "train", n: int = 2000):
    """First ``n`` images of a split as ``n×1×32×32`` floats in [0, 1] (zero-padded) and labels."""
    pre = "train" if split == "train" else "t10k"
    x = torch.from_numpy(_idx(f"{pre}-images-idx3-ubyte.gz")[:n].copy()).float().div_(255)
    y = torch.from_numpy(_idx(f"{pre}-labels-idx1-ubyte.gz")[:n].astype(np.int64))
    return nn.functional.pad(x[:, None], (2, 2, 2, 2)), y


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Flatten(), nn.Linear(32 * 8 * 8, 10))

    def forward(self, x):
        return self.f(x)


@functools.lru_cache(maxsize=None)
def trained_model() -> ImageClassifier:
    """A tiny CNN trained 2 epochs on 2000 Fashion-MNIST images (≈ 75-80% test accuracy)."""
    torch.manual_seed(0)
    x, y = fmnist32("train", 2000)
    model = ImageClassifier(TinyNet(), (0.286,), (0.353,), None, [str(i) for i in range(10)],
                            channels=1, name="tiny-fmnist")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        for idx in torch.randperm(len(x), generator=g).split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


def correctly_classified(n: int = 16, split: str = "test"):
    """``n`` held-out images the trained model gets right."""
    model = trained_model()
    x, y = fmnist32(split, 400)
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:n], y[ok][:n]
