"""A tiny, seeded TextImageModel for the TTH and text-image tests (not the shipped dual encoder):
a two-layer conv image tower and a bag-of-words text encoder over a fixed vocabulary."""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from patchbench.defenses import Defense

VOCAB = ("a", "an", "the", "red", "blue", "green", "little", "coat", "coats", "dress", "bag", "shoe",
         "shirt", "on", "in", "left", "right", "of", "and", "with", "scene")


class FakeDualEncoder(nn.Module):
    """``encode_image``: conv → ReLU → 4×4 average pool → linear → unit vector; ``encode_text``:
    the unit mean of per-word vectors (a caption with an unknown word, or longer than
    ``context_length`` words, is refused: ``truncate = False``)."""

    def __init__(self, dim: int = 16, seed: int = 0, channels: int = 3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, dim)
        self.words = nn.Parameter(torch.randn(len(VOCAB), dim, generator=g))
        with torch.no_grad():
            for p in (self.conv.weight, self.conv.bias, self.fc.weight, self.fc.bias):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.embed_dim, self.context_length, self.channels = dim, 12, channels
        self.input_size, self.name, self.truncate = (32, 32), "fake-dual", False
        self.image_calls = 0

    def encode_image(self, x):
        self.image_calls += 1
        z = F.relu(self.conv(x * 2 - 1))
        return F.normalize(self.fc(F.adaptive_avg_pool2d(z, 4).flatten(1)), dim=1)

    def encode_text(self, captions):
        rows = []
        for c in captions:
            toks = re.findall(r"[a-z]+", c.lower())
            if not toks:
                raise ValueError("captions: an empty caption")
            if len(toks) > self.context_length:
                raise ValueError("captions: longer than the context")
            rows.append(self.words[[VOCAB.index(t) for t in toks]].mean(0))
        return F.normalize(torch.stack(rows), dim=1)


def simple_match(caption: str, keyword: str) -> bool:
    """Whole-word match, plural with -s included (the tests' stand-in for the captions module)."""
    return bool(re.search(rf"\b{re.escape(keyword)}s?\b", caption.lower()))


class NoisyPurifier(Defense):
    """A randomised purifier for the EOT path: adds small uniform noise (exact gradient)."""

    gradient, randomized, eot_samples, name = "exact", True, 3, "noisy"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def purify(self, x):
        self.calls += 1
        return (x + 0.02 * (torch.rand_like(x) - 0.5)).clamp(0, 1)


def text_image_contract_setup(device: str = "cpu"):
    """``(model, ads, threat, e_t, threshold)`` for the attack contract of a ``text-image`` attack
    (tests/test_contracts.py): three 32×32 ads, a 10 % square at random places, e_t = the caption
    "a red coat"; ``success`` must equal ``cos(F(x_adv), e_t) >= threshold``."""
    from patchbench.patches import Threat
    model = FakeDualEncoder().to(device)
    ads = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(4)).to(device)
    with torch.no_grad():
        e_t = model.encode_text(["a red coat"])[0]
    return model, ads, Threat(area=0.1, shape="square", placement="random"), e_t, 0.2
