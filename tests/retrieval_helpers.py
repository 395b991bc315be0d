"""Small stand-ins for the retrieval tests: a toy hasher (the ``Hasher`` protocol of
``patchbench.models.hashing``: ``bits``, ``channels``, ``input_size``, ``name``, ``centres``, forward →
``N×bits``, ``codes``), coloured toy images per class, Sylvester-Hadamard centres, and a brute-force
``CalcTopMap`` (the AdvHash authors' mAP@k, written here loop by loop as the reference)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

S = 16          # image side
BITS = 16
CLASSES = 4


def hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


class ToyHasher(nn.Module):
    """Conv → ReLU → conv → ReLU → global max pool → linear to ``bits`` (max pooling lets a small
    patch matter, as a real network's strongest features do)."""

    def __init__(self, bits: int = BITS, seed: int = 0, with_centres: bool = True):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(12, 24, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(24, bits))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.bits, self.channels, self.input_size, self.name = bits, 3, (S, S), "toy-hasher"
        if with_centres:
            self.register_buffer("centres", hadamard(bits)[:CLASSES].clone())

    def forward(self, x):
        return self.net(x) * 3.0

    @torch.no_grad()
    def codes(self, x, batch_size: int = 64):
        h = torch.cat([self(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
        return torch.where(h >= 0, 1.0, -1.0)


def toy_images(n_per_class: int, seed: int, classes: int = CLASSES):
    """Class ``c``: a flat colour of its own plus mild noise; labels ``N`` long."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.8, 0.3], [0.2, 0.3, 0.9], [0.85, 0.85, 0.2],
                            [0.6, 0.2, 0.8], [0.2, 0.8, 0.8]])[:classes]
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = colours[y][:, :, None, None] + 0.15 * torch.randn(len(y), 3, S, S, generator=g)
    return x.clamp(0, 1), y


def calc_top_map(q, db, ql, dl, k: int) -> float:
    """The authors' ``CalcTopMap``: per query, rank the database by Hamming distance (ties by
    index), keep the top ``k``, average precision over the relevant items there (0 if none)."""
    q, db = np.asarray(q, dtype=np.float64), np.asarray(db, dtype=np.float64)
    ql, dl = np.asarray(ql), np.asarray(dl)
    aps = []
    for i in range(q.shape[0]):
        ham = 0.5 * (db.shape[1] - db @ q[i])
        order = np.argsort(ham, kind="stable")[:k]
        if ql.ndim == 1:
            rel = (dl[order] == ql[i]).astype(np.float64)
        else:
            rel = ((dl[order] @ ql[i]) > 0).astype(np.float64)
        if rel.sum() == 0:
            aps.append(0.0)
            continue
        hits = np.cumsum(rel)
        pos = np.arange(1, len(rel) + 1)
        aps.append(float(np.mean(hits[rel == 1] / pos[rel == 1])))
    return float(np.mean(aps))
