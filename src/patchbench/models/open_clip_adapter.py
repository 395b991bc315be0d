"""``open_clip:NAME``: an OpenCLIP model (Ilharco et al., mlfoundations/open_clip; CLIP, Radford et
al. 2021) behind the :class:`~patchbench.models.text_image.TextImageModel` protocol, for users who
have ``open_clip`` and its weights. Lazy: ``open_clip`` is imported only when such a spec is
loaded; where it is absent or does not import (here: it needs torchvision) the error says what to
install (:class:`~patchbench.models.sources.MissingPackageError`).

``pb.models.load("open_clip:ViT-B-32")`` builds ``open_clip.create_model_and_transforms(NAME,
pretrained=TAG)``: ``weights=None`` takes the tag ``pretrained=`` (an option) or, by default,
``"openai"`` where open_clip has it for NAME, else its first listed tag; ``weights=PATH`` a local
checkpoint (open_clip's ``pretrained=PATH``); ``weights=False`` a random initialisation. A NAME not
in ``open_clip.list_models()`` is a ``LookupError`` with close matches.

Preprocessing is open_clip's, on tensors: [0, 1] images are resized (bicubic, antialiased) so
their shorter side is the model's image size, centre-cropped, and normalised with the model's
``visual.image_mean`` / ``image_std`` (OpenAI's mean/std by default) — differentiable, so TTH can
attack it. Captions go through ``open_clip.get_tokenizer(NAME)``, which truncates long captions
to the context (``truncate=True``; with ``truncate=False`` a caption that does not fit is refused
where the tokenizer can count its tokens).
"""
from __future__ import annotations

import os
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Normalize, check_input_for
from .dual_encoder import check_captions
from .sources import Source, _seeded, _unknown, _weights_arg, import_package, register_source

INSTALL = ("pip install open_clip_torch (it needs a torchvision that imports with your torch); "
           "its weights download on first use, or pass weights=PATH to a local checkpoint, or use "
           "the offline dual encoder (patchbench.models.load('dual_encoder_fmnist_scenes'))")
#: OpenAI CLIP's normalisation (open_clip.constants), the default of models without their own
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _image_size(model) -> tuple:
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    size = cfg.get("size") or getattr(model.visual, "image_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    return int(size[0]), int(size[1])


class OpenCLIPModel(nn.Module):
    """An open_clip model as a :class:`~patchbench.models.text_image.TextImageModel` (module doc)."""

    channels = 3

    def __init__(self, model: nn.Module, tokenizer, name: str):
        super().__init__()
        self.model, self.tokenizer, self.name = model, tokenizer, name
        mean = tuple(getattr(model.visual, "image_mean", None) or OPENAI_MEAN)
        std = tuple(getattr(model.visual, "image_std", None) or OPENAI_STD)
        self.normalize = Normalize(mean, std)
        self.input_size = _image_size(model)
        self.context_length = int(getattr(tokenizer, "context_length", None)
                                  or getattr(model, "context_length", 77))
        self.truncate = True
        with torch.no_grad():
            ids = self._tokens(["a photo"]).to(self._device())
            self.embed_dim = int(model.encode_text(ids).shape[-1])

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _tokens(self, captions: List[str]) -> Tensor:
        if not self.truncate and hasattr(self.tokenizer, "encode"):
            for i, c in enumerate(captions):
                n = len(self.tokenizer.encode(c)) + 2
                if n > self.context_length:
                    raise ValueError(f"captions[{i}]: {n} tokens with start and end, more than "
                                     f"the context of {self.context_length}; set truncate=True")
        return self.tokenizer(captions)

    def prepare(self, x: Tensor) -> Tensor:
        """open_clip's Resize(shorter side) + CenterCrop + Normalize on tensors. Unchecked."""
        h, w = self.input_size
        if tuple(x.shape[-2:]) != (h, w):
            s = max(h / x.shape[-2], w / x.shape[-1])
            size = (max(h, round(x.shape[-2] * s)), max(w, round(x.shape[-1] * s)))
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False,
                              antialias=s < 1).clamp(0, 1)
            top, left = (size[0] - h) // 2, (size[1] - w) // 2
            x = x[..., top:top + h, left:left + w]
        return self.normalize(x)

    def encode_image(self, x: Tensor) -> Tensor:
        x = check_input_for(self.model, x, "x", channels=3)
        return F.normalize(self.model.encode_image(self.prepare(x)).float(), dim=-1)

    def encode_text(self, captions: List[str]) -> Tensor:
        ids = self._tokens(check_captions(captions)).to(self._device())
        return F.normalize(self.model.encode_text(ids).float(), dim=-1)


def _default_tag(oc, name: str, spec: str) -> str:
    tags = list(oc.list_pretrained_tags_by_model(name)) if hasattr(
        oc, "list_pretrained_tags_by_model") else []
    if not tags:
        raise LookupError(f"model {spec!r}: open_clip has no pretrained weights for {name!r}; pass "
                          f"weights=PATH (a checkpoint) or weights=False (random)")
    return "openai" if "openai" in tags else tags[0]


def load_open_clip(name: str, weights, device, seed: int, options: dict) -> OpenCLIPModel:
    """The :class:`~patchbench.models.sources.Source` loader of ``open_clip:NAME`` (module doc).
    ``options``: ``pretrained=TAG`` (with ``weights=None``) and any other keyword of
    ``open_clip.create_model_and_transforms``."""
    spec = f"open_clip:{name}"
    how = _weights_arg(weights, spec)
    oc = import_package("open_clip", INSTALL, spec)
    known = list(oc.list_models())
    if name not in known:
        raise _unknown("open_clip", name, known, spec)
    opts = dict(options)
    tag = opts.pop("pretrained", None)
    if how == "pretrained":
        pretrained = tag or _default_tag(oc, name, spec)
    elif how == "file":
        if not os.path.isfile(os.path.expanduser(os.fspath(weights))):
            raise FileNotFoundError(f"weights: {weights!r} does not exist (model {spec!r})")
        pretrained = os.path.expanduser(os.fspath(weights))
    else:
        pretrained = None
    try:
        model = _seeded(lambda: oc.create_model_and_transforms(name, pretrained=pretrained,
                                                               **opts)[0], seed)
    except (OSError, RuntimeError, ValueError) as e:  # no network, a broken cache, a bad tag
        raise LookupError(f"model {spec!r}: open_clip could not load the weights {pretrained!r} "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); download "
                          f"them where there is a network, pass weights=PATH (a local open_clip "
                          f"checkpoint) or weights=False") from e
    return OpenCLIPModel(model.to(device).eval(), oc.get_tokenizer(name), spec)


SOURCE = Source("open_clip", load_open_clip, "open_clip", INSTALL,
                "an OpenCLIP text-image model (e.g. open_clip:ViT-B-32; lazy, needs open_clip_torch "
                "and torchvision, downloads its weights on first use)")


def register_open_clip_source() -> Source:
    """Add ``open_clip:`` to :data:`patchbench.models.sources.SOURCES`."""
    return register_source(SOURCE)
