"""The ``TextImageModel`` protocol: a CLIP-style dual encoder for text-to-image search (issue 15;
Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021,
§2.3, the victim of TTH, Hu, Chen & Li, ICASSP 2023, and of PAIR's Table 1).

A text-image model maps images and captions into one embedding space; search ranks gallery images by
the cosine similarity of their embedding to a caption's. Attacks (TTH), defenses (PAIR's semantic
discriminator) and the text-image task code against this protocol only, so our own dual encoder
(:mod:`patchbench.models.dual_encoder`) and the lazy ``open_clip:`` adapter are interchangeable.

Contract:

* ``encode_image(x)``: ``N×C×H×W`` float images in [0, 1] (the model normalises and resizes inside,
  like every patchbench model) → ``N×D`` L2-normalised embeddings, differentiable in ``x``;
* ``encode_text(captions)``: a list of ``N`` non-empty strings → ``N×D`` L2-normalised embeddings;
  a caption longer than ``context_length`` tokens is handled as the model's ``truncate`` attribute
  says (``True``: cut to the context, ``False``: refused with a ``ValueError``);
* attributes ``embed_dim`` (``D``), ``context_length``, ``input_size`` ``(H, W)``, ``channels``,
  ``name``, ``truncate``.

Example::

    m = pb.models.load("dual_encoder_fmnist_scenes")
    sim = m.encode_text(["a red coat"]) @ m.encode_image(x).T     # 1×N cosine similarities
"""
from __future__ import annotations

from typing import List, Tuple

from torch import Tensor

try:                                    # typing.Protocol is 3.8+; runtime_checkable for isinstance
    from typing import Protocol, runtime_checkable
except ImportError:                     # pragma: no cover
    from typing_extensions import Protocol, runtime_checkable


@runtime_checkable
class TextImageModel(Protocol):
    """What the text-image task, TTH and PAIR's text-image discriminator need (module docstring)."""

    embed_dim: int
    context_length: int
    input_size: Tuple[int, int]
    channels: int
    name: str
    truncate: bool

    def encode_image(self, x: Tensor) -> Tensor: ...

    def encode_text(self, captions: List[str]) -> Tensor: ...


def is_text_image_model(obj) -> bool:
    """True when ``obj`` has the protocol's two encoders and its attributes."""
    return isinstance(obj, TextImageModel)
