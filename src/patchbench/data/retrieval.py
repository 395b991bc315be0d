"""Retrieval proxies painted from real Fashion-MNIST items: ``fmnist-objects``, ``fmnist-scenes``.

PAIR (ACM MM 2024, §5.1) evaluates content-based retrieval on ImageNet-100 and text-to-image search
on MS-COCO / Flickr30k. None of them installs offline, so these two sets are **proxies** for them,
painted from the Fashion-MNIST items (Xiao et al. 2017; Debian ``dataset-fashion-mnist``) on RGB
canvases. They keep what the retrieval experiments need — real object shapes, classes that share
labels, colour and layout as nuisances, multi-label relevance — and nothing else of the originals.

* ``fmnist-objects`` (stand-in for ImageNet-100): one colourised item per canvas. The grey item is
  the alpha of a colour from :data:`COLOURS` (jittered) over a plain background, dark or light so the
  item contrasts with it, with Gaussian noise (σ ≤ 0.05) on half of the canvases; its side is
  U(0.45, 0.9) of the canvas, at a uniform position. Labels: the class index (``N`` long). Every
  split is exactly class-balanced (image ``i`` of the split's plan has class ``i mod 10`` before a
  seeded shuffle): train 1000, database 200, query 100 per class.
* ``fmnist-scenes`` (stand-in for COCO): 1, 2 or 3 items (each with probability 1/3) per canvas,
  each with a colour name, a size word (``little``: side U(0.28, 0.34) of the canvas; ``big``:
  U(0.44, 0.52)) and a position word (``left``, ``right``, ``top``, ``bottom``, ``centre``: the item's
  centre at 1/4, 3/4 or 1/2 of the canvas, jittered by ±3 %). Items overlap by at most 10 % of the
  smaller one. Labels: an ``N×10`` multi-hot tensor (long 0/1); two images are relevant when
  they share a class. Train split (seed 0): 32.8 / 33.7 / 33.5 % of the scenes hold 1 / 2 / 3
  items, 2.01 items and 1.88 distinct classes per scene on average, each class in 18.2–19.3 % of
  the scenes (items are drawn uniformly from the source range, which Fashion-MNIST balances); the
  database and query splits match within a point (:func:`dataset_statistics` recomputes them).
  :func:`scene_metadata` returns the items of every scene (class, colour, size and position words,
  box, source item) for captions.

Splits (both sets; sizes chosen to train and evaluate in minutes on two CPU cores):

============ ======== =========================================== =================================
split        images   source items (Fashion-MNIST)                role
============ ======== =========================================== =================================
``train``    10 000   ``train`` split, indices 0 .. 39 999        training the hasher / defenses
``database`` 2 000    ``train`` split, indices 40 000 .. 59 999   the gallery searched
``query``    1 000    ``test`` split, indices 0 .. 4 999          the queries (attacked)
============ ======== =========================================== =================================

No source item is in two splits (nor twice in one split). Test items 5 000 .. 9 999 are reserved
(unused here) for sets added later, such as the advertising images of text-to-image search.

Determinism: split ``s`` with ``seed`` is a fixed function of ``(seed, s, index)``: each canvas has
its own ``torch.Generator``, so the first ``n`` images do not depend on how many are loaded, nor on
the thread count. Canvases are quantised to 8 bits (like real photos), and splits rendered in full
are cached under ``$PATCHBENCH_HOME/datasets/`` (uint8, keyed by name, split, seed and size).

Example::

    x, y = load_dataset("fmnist-objects", split="query", n=100)      # 100×3×64×64, y: 100 long
    x, y = load_dataset("fmnist-scenes", split="database", size=96)  # y: 2000×10 multi-hot
    scene_metadata("query", n=1)[0]["items"][0]
    # {'class': 6, 'class_name': 'Shirt', 'colour': 'purple', 'size': 'little', 'position': 'left', ...}
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_choice, check_int, check_positive_int, check_seed

#: Named item colours (RGB in [0, 1]); TTH's colour keywords are among them.
COLOURS: Dict[str, Tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10), "green": (0.10, 0.70, 0.20), "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.10), "pink": (1.00, 0.50, 0.75), "navy": (0.05, 0.05, 0.45),
    "maroon": (0.50, 0.00, 0.10), "orange": (1.00, 0.55, 0.00), "purple": (0.55, 0.15, 0.75),
    "white": (1.00, 1.00, 1.00)}
#: Colours that contrast with a dark background (luminance >= 0.3) and with a light one (<= 0.5).
_LUMA = {c: 0.299 * r + 0.587 * g + 0.114 * b for c, (r, g, b) in COLOURS.items()}   # Rec. 601
_ON_DARK = tuple(c for c in COLOURS if _LUMA[c] >= 0.3)
_ON_LIGHT = tuple(c for c in COLOURS if _LUMA[c] <= 0.5)
SIZES = {"little": (0.28, 0.34), "big": (0.44, 0.52)}
POSITIONS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
             "centre": (0.5, 0.5)}   # (x, y) of the item's centre, fractions of the canvas
#: split → (Fashion-MNIST split, first source index, end, number of canvases)
SPLITS = {"train": ("train", 0, 40000, 10000), "database": ("train", 40000, 60000, 2000),
          "query": ("test", 0, 5000, 1000)}
DATASETS = ("fmnist-objects", "fmnist-scenes")
DEFAULT_SIZE = 64
#: Per-channel mean / std of the first 2 000 train canvases at 64 px, seed 0 (tests re-measure them).
STATS = {"fmnist-objects": ((0.4844, 0.4606, 0.4725), (0.3659, 0.3626, 0.3708)),
         "fmnist-scenes": ((0.4804, 0.4674, 0.4744), (0.3792, 0.3769, 0.3827))}
_MAX_OVERLAP = 0.10
_TRIES = 30


def check_size(size, name: str = "size") -> int:
    """The canvas side: an int >= 16 (or a square ``(s, s)``)."""
    if isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if isinstance(size, (tuple, list)):
        raise ValueError(f"{name}: the canvases are square; expected an int or (s, s), got {size!r}")
    return check_positive_int(size, name, minimum=16)


def _key(seed: int, name: str, split: str, what: str) -> int:
    """A seed in [0, 2**63) for one stream of random draws (a split's plan, or one canvas)."""
    digest = hashlib.sha256(f"{name}/{split}/{seed}/{what}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@lru_cache(maxsize=2)
def _source(fm_split: str, root) -> Tuple[Tensor, Tensor]:
    """A whole Fashion-MNIST split as uint8 ``N×28×28`` items and their labels (kept in memory)."""
    from .fashion_mnist import load_fashion_mnist
    x, y = load_fashion_mnist(fm_split, root=root)
    return (x[:, 0] * 255).round().to(torch.uint8), y


@lru_cache(maxsize=8)
def _plan(name: str, split: str, seed: int) -> Tuple[Tensor, Tensor]:
    """``(first, counts)``: canvas ``i`` takes ``order[first[i] : first[i] + counts[i]]`` of the
    split's source items (``order`` from :func:`_order`)."""
    n = SPLITS[split][3]
    g = torch.Generator().manual_seed(_key(seed, name, split, "counts"))
    counts = torch.ones(n, dtype=torch.long) if name == "fmnist-objects" else \
        torch.randint(1, 4, (n,), generator=g)
    first = torch.cumsum(counts, 0) - counts
    return first, counts


def _order(name: str, split: str, seed: int, labels: Tensor) -> Tensor:
    """Source indices (into the Fashion-MNIST split) in the order the canvases consume them.

    Objects: class ``i mod 10`` for plan slot ``i`` (then shuffled), each class's items in a seeded
    order, so every split is exactly balanced. Scenes: a seeded permutation of the source range."""
    fm_split, lo, hi, n = SPLITS[split]
    g = torch.Generator().manual_seed(_key(seed, name, split, "order"))
    if name == "fmnist-scenes":
        return lo + torch.randperm(hi - lo, generator=g)
    classes = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]
    out = torch.empty(n, dtype=torch.long)
    for c in range(10):
        pool = lo + (labels[lo:hi] == c).nonzero()[:, 0]
        rows = (classes == c).nonzero()[:, 0]
        out[rows] = pool[torch.randperm(pool.numel(), generator=g)[:rows.numel()]]
    return out


def _background(g: torch.Generator) -> dict:
    dark = bool(torch.rand((), generator=g) < 0.5)
    level = float(torch.empty(()).uniform_(0.0, 0.15, generator=g)) if dark else \
        float(torch.empty(()).uniform_(0.75, 0.95, generator=g))
    tint = (torch.rand(3, generator=g) * 0.1 - 0.05).tolist()
    noise = float(torch.empty(()).uniform_(0.0, 0.05, generator=g)) \
        if bool(torch.rand((), generator=g) < 0.5) else 0.0
    return {"dark": dark, "rgb": [min(max(level + t, 0.0), 1.0) for t in tint], "noise": noise}


def _colours(g: torch.Generator, dark: bool, k: int) -> List[str]:
    allowed = _ON_DARK if dark else _ON_LIGHT
    return [allowed[int(i)] for i in torch.randperm(len(allowed), generator=g)[:k]]


def _overlap(a, b) -> float:
    """Intersection of two ``(x0, y0, side)`` boxes over the smaller one's area."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0) / min(a[2], b[2]) ** 2


def _scene_boxes(g: torch.Generator, k: int) -> List[Tuple[str, str, Tuple[float, float, float]]]:
    """``k`` (size word, position word, box in canvas fractions), overlapping by <= 10 %."""
    names = list(POSITIONS)
    for attempt in range(_TRIES + 1):
        if attempt < _TRIES:
            pos = [names[int(i)] for i in torch.randperm(5, generator=g)[:k]]
            sizes = ["big" if bool(torch.rand((), generator=g) < 0.5) else "little" for _ in range(k)]
        else:   # fallback that always fits (overlap 1 %): little items left, right and top
            pos, sizes = ["left", "right", "top"][:k], ["little"] * k
        boxes = []
        for p, s in zip(pos, sizes):
            fixed = attempt == _TRIES          # the fallback: smallest side, no jitter
            side = SIZES[s][0] if fixed else float(torch.empty(()).uniform_(*SIZES[s], generator=g))
            cx, cy = POSITIONS[p] if fixed else (
                c + float(torch.empty(()).uniform_(-0.03, 0.03, generator=g)) for c in POSITIONS[p])
            boxes.append((min(max(cx - side / 2, 0.0), 1 - side),
                          min(max(cy - side / 2, 0.0), 1 - side), side))
        if all(_overlap(boxes[i], boxes[j]) <= _MAX_OVERLAP for i in range(k) for j in range(i)):
            return list(zip(sizes, pos, boxes))
    raise AssertionError("unreachable: the fallback layout always fits")  # pragma: no cover


def _layout(name: str, g: torch.Generator, sources: List[int], labels: Tensor) -> dict:
    """Every random choice of one canvas except its pixel noise (drawn after, in :func:`_paint`)."""
    from .fashion_mnist import FASHION_MNIST_CLASSES
    bg = _background(g)
    k = len(sources)
    colours = _colours(g, bg["dark"], k)
    if name == "fmnist-objects":
        side = float(torch.empty(()).uniform_(0.45, 0.9, generator=g))
        x0, y0 = (float(torch.rand((), generator=g)) * (1 - side) for _ in range(2))
        places = [(None, None, (x0, y0, side))]
    else:
        places = _scene_boxes(g, k)
    items = []
    for src, colour, (size_word, pos_word, box) in zip(sources, colours, places):
        jitter = (torch.randn(3, generator=g) * 0.04).tolist()
        rgb = [min(max(c + j, 0.0), 1.0) for c, j in zip(COLOURS[colour], jitter)]
        item = {"class": int(labels[src]), "class_name": FASHION_MNIST_CLASSES[int(labels[src])],
                "colour": colour, "rgb": rgb, "box_fraction": box, "source_index": int(src)}
        if size_word is not None:
            item.update(size=size_word, position=pos_word)
        items.append(item)
    return {"background": bg, "items": items}


def _paint(layout: dict, g: torch.Generator, images: Tensor, fm_split: str, size: int) -> Tensor:
    """The canvas ``3×size×size`` (uint8) of one layout; draws the background noise from ``g``."""
    bg = layout["background"]
    canvas = torch.tensor(bg["rgb"]).view(3, 1, 1).expand(3, size, size).clone()
    if bg["noise"] > 0:
        canvas += torch.randn(3, size, size, generator=g) * bg["noise"]
    for item in layout["items"]:
        x0, y0, side = item["box_fraction"]
        s = max(int(round(side * size)), 2)
        c0, r0 = min(int(round(x0 * size)), size - s), min(int(round(y0 * size)), size - s)
        grey = images[item["source_index"]].float()[None, None] / 255.0      # 1×1×28×28
        alpha = F.interpolate(grey, size=(s, s), mode="bilinear", align_corners=False,
                              antialias=s < 28)[0].clamp(0, 1)
        alpha = alpha / alpha.max().clamp_min(1e-6)
        region = canvas[:, r0:r0 + s, c0:c0 + s]
        rgb = torch.tensor(item["rgb"]).view(3, 1, 1)
        canvas[:, r0:r0 + s, c0:c0 + s] = region * (1 - alpha) + rgb * alpha
        item["box"] = (r0, c0, s, s)       # (top, left, height, width) in pixels
    return (canvas.clamp(0, 1) * 255).round().to(torch.uint8)


def _check(name, split, stop, seed, size) -> Tuple[str, str, int, int, int]:
    name = check_choice(name, "name", DATASETS)
    split = check_choice(split, "split", tuple(SPLITS))
    total = SPLITS[split][3]
    stop = total if stop is None else check_int(stop, "n", minimum=0, maximum=total)
    return name, split, stop, check_seed(seed), check_size(size)


def _render(name: str, split: str, start: int, stop: int, seed: int, size: int, root,
            with_pixels: bool) -> Tuple[Optional[Tensor], Tensor, List[dict]]:
    fm_split = SPLITS[split][0]
    images, labels = _source(fm_split, None if root is None else str(root))
    first, counts = _plan(name, split, seed)
    order = _order(name, split, seed, labels)
    out = torch.empty(stop - start, 3, size, size, dtype=torch.uint8) if with_pixels else None
    metas = []
    for i in range(start, stop):
        g = torch.Generator().manual_seed(_key(seed, name, split, str(i)))
        sources = order[int(first[i]):int(first[i] + counts[i])].tolist()
        layout = _layout(name, g, sources, labels)
        if with_pixels:
            out[i - start] = _paint(layout, g, images, fm_split, size)
        else:   # the pixel boxes without painting
            for item in layout["items"]:
                x0, y0, side = item["box_fraction"]
                s = max(int(round(side * size)), 2)
                item["box"] = (min(int(round(y0 * size)), size - s),
                               min(int(round(x0 * size)), size - s), s, s)
        layout.update(index=i, split=split, source_split=fm_split)
        metas.append(layout)
    if name == "fmnist-objects":
        y = torch.tensor([m["items"][0]["class"] for m in metas], dtype=torch.long)
    else:
        y = torch.zeros(len(metas), 10, dtype=torch.long)
        for r, m in enumerate(metas):
            for item in m["items"]:
                y[r, item["class"]] = 1
    return out, y, metas


#: part of the cache file names: bump it whenever the rendering changes, or stale canvases load
RENDER_VERSION = 1


def _cache_path(name: str, split: str, seed: int, size: int):
    from .._io import cache_root
    return cache_root("datasets", f"{name}-{split}-seed{seed}-{size}px-v{RENDER_VERSION}.pt")


def load_retrieval(name: str, split: str, stop: Optional[int] = None, size: int = DEFAULT_SIZE,
                   seed: int = 0, root=None) -> Tuple[Tensor, Tensor]:
    """The first ``stop`` canvases of one split (``None``: all) as float32 ``N×3×size×size`` in
    [0, 1] and their labels (``N`` long for objects, ``N×10`` multi-hot long for scenes).

    ``root`` is the Fashion-MNIST folder (default:
    :func:`patchbench.data.fashion_mnist.fashion_mnist_root`).
    A whole split is cached (uint8) under ``$PATCHBENCH_HOME/datasets/``; a prefix is rendered.
    """
    name, split, stop, seed, size = _check(name, split, stop, seed, size)
    if stop == SPLITS[split][3] and root is None:
        from .._io import atomic_save
        from ..models.weights import load_cache
        path = _cache_path(name, split, seed, size)
        cached = load_cache(path, f"{name} cache")
        if not (isinstance(cached, dict) and isinstance(cached.get("x"), Tensor)
                and tuple(cached["x"].shape) == (stop, 3, size, size)):
            x8, y, _ = _render(name, split, 0, stop, seed, size, root, True)
            cached = {"x": x8, "y": y}
            try:
                atomic_save(cached, path)
            except OSError:   # a read-only cache: the split is rendered again next time
                pass
        x8, y = cached["x"], cached["y"]
    else:
        x8, y, _ = _render(name, split, 0, stop, seed, size, root, True)
    return x8.float().div_(255.0), y


def retrieval_metadata(name: str, split: str, n: Optional[int] = None, offset: int = 0,
                       size: int = DEFAULT_SIZE, seed: int = 0, root=None) -> List[dict]:
    """Per-canvas metadata of images ``offset .. offset + n - 1`` (``n=None``: to the end).

    Each entry: ``index``, ``split``, ``source_split`` (Fashion-MNIST's), ``background``
    (``dark``, ``rgb``, ``noise``) and ``items``: one dict per item with ``class``, ``class_name``,
    ``colour`` (a key of :data:`COLOURS`), ``rgb``, ``box`` (top, left, height, width in pixels),
    ``box_fraction`` (x0, y0, side as canvas fractions), ``source_index`` and, for scenes, ``size``
    (``"little"`` / ``"big"``) and ``position`` (a key of :data:`POSITIONS`). Nothing is painted.
    """
    offset = check_int(offset, "offset", minimum=0)
    name, split, _, seed, size = _check(name, split, None, seed, size)
    total = SPLITS[split][3]
    if offset >= total:
        raise ValueError(f"offset: the {name!r} {split} split has {total} images, got {offset}")
    stop = total if n is None else offset + check_positive_int(n, "n")
    if stop > total:
        raise ValueError(f"n: the {name!r} {split} split has {total} images, got n={n} from "
                         f"offset={offset}")
    return _render(name, split, offset, stop, seed, size, root, False)[2]


def scene_metadata(split: str, n: Optional[int] = None, offset: int = 0, size: int = DEFAULT_SIZE,
                   seed: int = 0, root=None) -> List[dict]:
    """:func:`retrieval_metadata` of ``"fmnist-scenes"`` (the items to caption)."""
    return retrieval_metadata("fmnist-scenes", split, n, offset, size, seed, root)


def dataset_statistics(name: str, split: str, n: Optional[int] = None, seed: int = 0) -> dict:
    """Class balance and items per canvas of a split (from the metadata; nothing is painted):
    ``n``, ``class_counts`` (items per class), ``images_per_class`` (canvases holding the class),
    ``items_per_image`` (``{1: count, 2: ..., 3: ...}``), ``mean_items``, ``mean_classes``."""
    metas = retrieval_metadata(name, split, n=n, seed=seed)
    class_counts, images_per_class, per_image = [0] * 10, [0] * 10, {}
    distinct = 0
    for m in metas:
        classes = [it["class"] for it in m["items"]]
        for c in classes:
            class_counts[c] += 1
        for c in set(classes):
            images_per_class[c] += 1
        distinct += len(set(classes))
        per_image[len(classes)] = per_image.get(len(classes), 0) + 1
    return {"n": len(metas), "class_counts": class_counts, "images_per_class": images_per_class,
            "items_per_image": dict(sorted(per_image.items())),
            "mean_items": sum(k * v for k, v in per_image.items()) / max(len(metas), 1),
            "mean_classes": distinct / max(len(metas), 1)}



def retrieval_specs() -> list:
    """The :class:`~patchbench.data.registry.DatasetSpec` of both sets (registered as built-ins)."""
    from .registry import DatasetSpec

    def loader(name: str):
        def load(split: str, stop: Optional[int], size: int = DEFAULT_SIZE, seed: int = 0, root=None):
            return load_retrieval(name, split, stop, size=size, seed=seed, root=root)
        return load

    what = {"fmnist-objects": "one colourised Fashion-MNIST item per canvas, 10 classes (proxy "
                              "for ImageNet-100)",
            "fmnist-scenes": "1-3 colourised Fashion-MNIST items per canvas, multi-hot labels "
                             "(proxy for COCO)"}
    return [DatasetSpec(name, loader(name), {s: SPLITS[s][3] for s in SPLITS}, 3,
                        (DEFAULT_SIZE, DEFAULT_SIZE), STATS[name][0], STATS[name][1], 10,
                        task="retrieval",
                        description=what[name] + "; splits train / database / query from disjoint "
                                                 "source items; size= and seed= options")
            for name in DATASETS]
