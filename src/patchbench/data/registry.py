"""Datasets by name: ``load_dataset(name, split, n, offset)`` → ``(x, y)`` for the experiment harness.

Names fold like every registry name (:func:`patchbench._registry.normalize_name`), so
``"Fashion_MNIST"`` is ``"fashion-mnist"``. Built in:

* ``"fashion-mnist"`` — Xiao, Rasul & Vollgraf 2017, from the idx files (Debian's
  ``dataset-fashion-mnist``; ``root=`` or ``$PATCHBENCH_FASHION_MNIST`` elsewhere), splits
  ``train`` (60 000) and ``test`` (10 000), 1×28×28;
* ``"imagenet-samples"`` — the offline photos of :func:`patchbench.data.samples` ``("imagenet")``
  with human ImageNet-1k labels, split ``test`` only, 3×224×224 (``size=`` resizes);
* ``"photos"`` — the versioned real-photo pool of :func:`patchbench.data.photos` (v1: 78
  photographs from scikit-image, scikit-learn, matplotlib and Debian's ``opencv-doc`` and
  ``mate-backgrounds``), splits ``all`` (78), ``train`` (47), ``test`` (31), 3×224×224 (``size=``).
  Labels are human ImageNet-1k indices, or ``-1`` where the reference is the model's own clean
  prediction (:func:`patchbench.data.photos.fill_references`);
* ``"fmnist-objects"`` / ``"fmnist-scenes"`` — the retrieval proxies of
  :mod:`patchbench.data.retrieval` (task ``"retrieval"``): colourised Fashion-MNIST items on 3×64×64
  canvases, splits ``train`` (10 000), ``database`` (2 000), ``query`` (1 000) from disjoint source
  items; labels are class indices (objects) or ``N×10`` multi-hot (scenes); ``size=`` and ``seed=``.

Example::

    x, y = load_dataset("fashion-mnist", "test", n=64, offset=128)   # images 128..191
    dataset_info("fashion-mnist")["mean"]                            # (0.286,): the fill value
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .._registry import normalize_name, resolve_name
from .._validation import check_int, check_positive_int


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset.

    ``load(split, stop, **options) -> (x, y)`` returns the first ``stop`` images of ``split``
    (``stop=None``: all) as float32 ``N×C×H×W`` in [0, 1] and long labels; its keyword options are
    the ones :func:`load_dataset` accepts. ``splits`` maps each split to its number of images.
    ``mean``/``std``: per-channel statistics (``mean`` is the fill value of defenses that paint a
    region over). ``size``: ``(H, W)`` of the images when no ``size=`` option changes it.
    ``version``: the version of a fixed, versioned set (``"v1"`` for ``"photos"``), else ``""``.
    """

    name: str
    load: Callable[..., Tuple[Tensor, Tensor]]
    splits: Dict[str, int]
    channels: int
    size: Tuple[int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    num_classes: int
    task: str = "classification"
    description: str = ""
    version: str = ""


_DATASETS: Dict[str, DatasetSpec] = {}
_BUILTINS_LOADED = False


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add (or replace) a dataset; a different name folding to a registered one is a ``ValueError``."""
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"register: expected a DatasetSpec, got {type(spec).__name__}")
    for other in _DATASETS:
        if other != spec.name and normalize_name(other) == normalize_name(spec.name):
            raise ValueError(f"register: dataset name {spec.name!r} folds to the same name as the "
                             f"registered {other!r}")
    _DATASETS[spec.name] = spec
    return spec


def _fashion_mnist(split: str, stop: Optional[int], root=None) -> Tuple[Tensor, Tensor]:
    from .fashion_mnist import load_fashion_mnist
    return load_fashion_mnist(split, root=root, limit=stop)


def _imagenet_samples(split: str, stop: Optional[int], size=None) -> Tuple[Tensor, Tensor]:
    from .samples import samples
    return samples("imagenet", size=size, n=stop)


def _photos(split: str, stop: Optional[int], size=None) -> Tuple[Tensor, Tensor]:
    from .photos import DEFAULT_SIZE, photos
    return photos(split, size=DEFAULT_SIZE if size is None else size, n=stop)


def _register_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from ..models.base import IMAGENET_MEAN, IMAGENET_STD
    from .fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD
    from .samples import _IMAGENET

    register(DatasetSpec(
        "fashion-mnist", _fashion_mnist, {"train": 60000, "test": 10000}, 1, (28, 28),
        FASHION_MNIST_MEAN, FASHION_MNIST_STD, len(FASHION_MNIST_CLASSES),
        description="Fashion-MNIST (Xiao et al. 2017), 10 clothing classes, idx files"))
    register(DatasetSpec(
        "imagenet-samples", _imagenet_samples, {"test": len(_IMAGENET)}, 3, (224, 224),
        tuple(IMAGENET_MEAN), tuple(IMAGENET_STD), 1000,
        description="offline photos (scikit-image, scikit-learn, matplotlib) with human "
                    "ImageNet-1k labels; size= resizes"))
    from .photos import NAME as PHOTOS, VERSION as PHOTOS_VERSION, split_sizes
    register(DatasetSpec(
        PHOTOS, _photos, split_sizes(), 3, (224, 224), tuple(IMAGENET_MEAN), tuple(IMAGENET_STD),
        1000, version=PHOTOS_VERSION,
        description=f"{PHOTOS} {PHOTOS_VERSION}: real photographs (scikit-image, scikit-learn, "
                    "matplotlib, Debian opencv-doc and mate-backgrounds); label -1 = reference is "
                    "the model's own clean prediction; size= resizes"))
    from .faces import face_composites_spec
    register(face_composites_spec())
    from .retrieval import retrieval_specs
    for spec in retrieval_specs():
        register(spec)


def _spec(name) -> DatasetSpec:
    _register_builtins()
    return _DATASETS[resolve_name(name, dataset_names(), "dataset", "name")]


def _options(spec: DatasetSpec, options: dict) -> dict:
    """Unknown options → ``TypeError`` naming them and the accepted ones (before anything loads)."""
    accepted = [p for p in inspect.signature(spec.load).parameters if p not in ("split", "stop")]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise TypeError(f"dataset {spec.name!r}: unexpected option{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(map(repr, unknown))}; it accepts: "
                        f"{', '.join(accepted) if accepted else 'no options'}")
    return options


def dataset_names() -> List[str]:
    """Sorted names accepted by :func:`load_dataset`."""
    _register_builtins()
    return sorted(_DATASETS)


def dataset_info(name: str, **options) -> dict:
    """What :func:`load_dataset` ``(name, **options)`` returns, without loading it.

    Returns a new dict: ``name`` (canonical), ``task`` (``"classification"``), ``channels``,
    ``size`` ``(H, W)`` (a ``size=`` option where the dataset takes one), ``mean`` / ``std``
    (per-channel tuples; ``mean`` is the dataset's fill value), ``num_classes``, ``splits`` (list)
    and ``sizes`` (``{split: number of images}``), ``description``, ``version`` (``""`` where
    the dataset is not versioned).

    Raises LookupError (unknown name, listing the known ones), TypeError (unknown option).
    """
    spec = _spec(name)
    _options(spec, options)
    size = spec.size
    if options.get("size") is not None:
        from .transforms import _as_hw
        size = tuple(_as_hw(options["size"]))
    return {"name": spec.name, "task": spec.task, "channels": spec.channels, "size": size,
            "mean": tuple(spec.mean), "std": tuple(spec.std), "num_classes": spec.num_classes,
            "splits": list(spec.splits), "sizes": dict(spec.splits),
            "description": spec.description, "version": spec.version}


def load_dataset(name: str, split: str = "test", n: Optional[int] = None, offset: int = 0,
                 **options) -> Tuple[Tensor, Tensor]:
    """Images ``offset .. offset + n - 1`` of one split of a named classification dataset.

    Args:
        name: one of :func:`dataset_names` (``"fashion-mnist"``, ``"imagenet-samples"``), folded
            like every registry name.
        split: one of ``dataset_info(name)["splits"]`` (default ``"test"``).
        n: how many images (an int >= 1), or ``None`` (default): all from ``offset`` on.
        offset: index of the first image (an int >= 0, default 0), in the split's fixed order.
        **options: the dataset's own options: ``root=`` (folder of the idx files) for
            ``"fashion-mnist"``, ``size=`` (int or ``(H, W)``) for ``"imagenet-samples"`` and
            ``"photos"``.

    Returns:
        ``(x, y)``: ``x`` float32 ``N×C×H×W`` in [0, 1] on the CPU, ``y`` long ``N`` (``-1`` for a
        ``"photos"`` image whose reference is the model's clean prediction).

    Raises:
        LookupError: unknown name or split (the message lists the known ones).
        TypeError: ``n`` / ``offset`` not integers, an unknown option.
        ValueError: ``n < 1``, ``offset < 0``, or more images asked for than the split holds
            (the message names ``n``/``offset`` and the split's size).
        FileNotFoundError: the dataset's files are missing (the message says how to get them).
    """
    spec = _spec(name)
    split = resolve_name(split, list(spec.splits), "split", "split", known=f"{spec.name!r} has")
    offset = check_int(offset, "offset", minimum=0)
    n = None if n is None else check_positive_int(n, "n")
    total = spec.splits[split]
    if offset >= total:
        raise ValueError(f"offset: the {spec.name!r} {split} split has {total} images "
                         f"(indices 0..{total - 1}), got offset={offset}")
    if n is not None and offset + n > total:
        raise ValueError(f"n: the {spec.name!r} {split} split has {total} images, got n={n}"
                         + (f" from offset={offset} ({total - offset} left)" if offset else ""))
    _options(spec, options)
    stop = None if n is None else offset + n
    x, y = spec.load(split, stop, **options)
    if offset or (stop is not None and stop < x.shape[0]):
        x, y = x[offset:stop].clone(), (y[offset:stop].clone() if isinstance(y, Tensor)
                                        else list(y[offset:stop]))
    if spec.task == "face-detection":          # y: one K×4 tensor of face boxes per image
        return x.to(torch.float32).contiguous(), list(y)
    return x.to(torch.float32).contiguous(), y.to(torch.long)
