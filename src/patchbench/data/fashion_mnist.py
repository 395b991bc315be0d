"""Fashion-MNIST from its idx(.gz) files, with strict format checks.

Dataset: Xiao, Rasul & Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms", arXiv:1708.07747 (2017) — 60 000 training and 10 000 test 28×28 greyscale
images of 10 clothing classes, stored in LeCun's idx format (Sec. 2 of the paper; the format is that of
MNIST: big-endian magic ``0x00000801`` for labels, ``0x00000803`` for images, then the dimensions).

On Debian the files come with ``apt-get install dataset-fashion-mnist`` and lie in
``/usr/share/datasets/fashion-mnist/``; ``root=`` or ``$PATCHBENCH_FASHION_MNIST`` point elsewhere.

Example::

    x, y = load_fashion_mnist("test")            # x: 10000×1×28×28 float in [0, 1], y: long
    print(FASHION_MNIST_CLASSES[int(y[0])])
"""
from __future__ import annotations

import gzip
import numbers
import os
import struct
import zlib
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
# Per-pixel mean/std of the 60 000 training images (computed by load_fashion_mnist("train")).
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
# idx type codes (third byte of the magic number) → numpy dtype, big-endian.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read one idx file (optionally gzip-compressed) into a numpy array.

    Checks the magic number (two zero bytes, a known type code, 1–4 dimensions) and that the payload
    has exactly ``prod(dims)`` items; anything else raises ``ValueError`` naming the file.
    """
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected an idx file path, got {path!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path: {str(path)!r} is a directory, expected an idx file")
    if not path.is_file():
        raise FileNotFoundError(f"path: idx file {str(path)!r} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:   # what gzip raises on a corrupt stream
        raise ValueError(f"{path}: not a readable idx{'.gz' if opener is gzip.open else ''} file "
                         f"({e})") from e
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for an idx header ({len(raw)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise ValueError(f"{path}: bad idx magic number 0x{raw[:4].hex()} (expected 0x0000 + type "
                         f"code in {sorted(_IDX_DTYPES)} + 1-4 dimensions)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header says shape {dims} ({expected} bytes of data) but the file "
                         f"holds {len(raw) - header} bytes after the header")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install the dataset with "
        f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or download the four idx .gz files "
        f"from https://github.com/zalandoresearch/fashion-mnist and pass root=DIR "
        f"(or set $PATCHBENCH_FASHION_MNIST)")


def fashion_mnist_root(root=None) -> Path:
    """The dataset folder: ``root`` → ``$PATCHBENCH_FASHION_MNIST`` → ``/usr/share/datasets/fashion-mnist``."""
    if root is not None:
        return Path(root)
    env = os.environ.get("PATCHBENCH_FASHION_MNIST")
    return Path(env) if env else DEFAULT_ROOT


def fashion_mnist_available(root=None) -> bool:
    """True when all four idx files are present (useful to skip tests)."""
    r = fashion_mnist_root(root)
    return all((r / (s + ".gz")).is_file() or (r / s).is_file()
               for img, lab, _ in _FILES.values() for s in (img, lab))


def load_fashion_mnist(split: str = "train", root=None,
                       limit: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Load one split of Fashion-MNIST.

    Args:
        split: ``"train"`` (60 000 images) or ``"test"`` (10 000).
        root: folder with the idx(.gz) files (default: see :func:`fashion_mnist_root`).
        limit: keep only the first ``limit`` images (default ``None`` = all).

    Returns:
        ``(x, y)``: ``x`` float32 ``N×1×28×28`` in [0, 1], ``y`` long ``N`` in ``0..9``.

    Raises:
        ValueError: unknown split, or a corrupt / inconsistent file (the message names it).
        FileNotFoundError: the dataset is missing (the message says how to install it).
    """
    if not isinstance(split, str) or split not in _FILES:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    img_stem, lab_stem, n_expected = _FILES[split]
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1:
            raise ValueError(f"limit: expected a positive int or None, got {limit!r}")
        if limit > n_expected:
            raise ValueError(f"limit: the {split} split has {n_expected} images, got limit={limit}")
        limit = int(limit)
    if root is not None and (isinstance(root, bool) or not isinstance(root, (str, os.PathLike))):
        raise TypeError(f"root: expected a folder path or None, got {root!r}")
    r = fashion_mnist_root(root)
    img_path, lab_path = _find(r, img_stem), _find(r, lab_stem)
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"{img_path}: expected uint8 images N×28×28, got {images.dtype} "
                         f"{images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{lab_path}: expected a 1-D uint8 label vector, got {labels.dtype} "
                         f"{labels.shape}")
    if len(images) != len(labels) or len(images) != n_expected:
        raise ValueError(f"{img_path} / {lab_path}: expected {n_expected} images and labels for the "
                         f"{split} split, got {len(images)} and {len(labels)}")
    if labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{lab_path}: label {int(labels.max())} out of range 0..9")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y
