"""``photos``: a fixed, versioned pool of real photographs for ImageNet-1k models, none made by us.

The pool ``photos`` version ``v1`` holds 78 distinct photographs (one sample each) that install
offline: the sample photos of scikit-image, scikit-learn and matplotlib (pip), of Debian's
``opencv-doc`` (OpenCV's own test images) and the nature photographs of Debian's ``mate-backgrounds``.
Drawings, renders, calibration boards, logos and near-duplicate frames (stereo right views, the
second frame of a flow pair, the edited copy of a forensics test) were left out. Nothing is vendored:
the files are read where their package installed them, and each is checked against the sha256
recorded in :mod:`._photos_v1` (a changed file is warned about: numbers would not be comparable).

References. A person chose an ImageNet-1k class for each photo where one is defensible (the reason
is recorded, as in :func:`patchbench.data.samples`); ``photo.reference == "label"``. The others
(``reference == "prediction"``) carry the label ``-1`` in tensors: their reference is the model's
own clean prediction (:func:`fill_references`), so for them "attack success" means "the model's
answer changed", never "the model was right then wrong".

Splits (fixed for a version, so numbers stay comparable). ``"all"``: the pool in table order.
``"test"`` / ``"train"``: stratified by reference kind — within the labelled photos and within the
prediction-referenced ones, each in table order, the 2nd and 4th of every 5 (position ``j`` with
``j % 5 in {1, 3}``) go to ``"test"``, the rest to ``"train"``. v1: 31 test (9 labelled), 47 train
(14 labelled). The universal patch of the demo is trained on ``"train"`` and scored on ``"test"``.

Example::

    x, y = photos("test")                      # 31×3×224×224 in [0, 1]; y = -1 where unlabelled
    y_ref = fill_references(model, x, y)       # -1 → the model's clean prediction
    [p.id for p in photo_info("test") if p.reference == "label"]
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from PIL import Image
from torch import Tensor

from .._validation import check_device, check_positive_int
from . import _photos_v1
from .transforms import _as_hw, resize_center_crop, to_tensor

NAME = "photos"
VERSION = "v1"
SPLITS = ("all", "train", "test")
DEFAULT_SIZE = 224

# Where each package puts its files. pip packages: found from the installed module. Debian
# packages: fixed system paths (tests monkeypatch this dict to simulate a missing package).
DEBIAN_ROOTS: Dict[str, Path] = {
    "opencv-doc": Path("/usr/share/doc/opencv-doc/examples"),
    "mate-backgrounds": Path("/usr/share/backgrounds/mate"),
}
_PIP_EXTRA = "pip install 'patchbench[data]'"
# pip packages: (top-level module, data folder inside it); the files sit in the installed wheel.
_PIP_FOLDERS = {"scikit-image": ("skimage", "data"), "scikit-learn": ("sklearn", "datasets/images"),
                "matplotlib": ("matplotlib", "mpl-data/sample_data")}


@dataclass(frozen=True)
class Photo:
    """One photograph of the pool.

    Attributes:
        id: unique short id, ``"<source>:<name>"`` (``"opencv:baboon"``, ``"skimage:chelsea"``).
        package: the pip or Debian package that ships the file; package_version: the version the
            pool was built from (the file's sha256 is what is checked).
        path: the file, relative to the package's data folder; sha256: first 16 hex digits.
        box: ``(left, top, right, bottom)`` crop in the file's pixels, or ``None`` (whole photo).
        label: ImageNet-1k index chosen by a person, or ``None``; class_name: its name or ``None``.
        why: the reason for the label, or for giving none.
        split: ``"train"`` or ``"test"``; index: position in ``"all"``.
        reference: ``"label"`` (scored against :attr:`label`) or ``"prediction"`` (scored against
            the model's own clean prediction; the tensor label is -1).
    """

    id: str
    package: str
    package_version: str
    path: str
    sha256: str
    box: Optional[Tuple[int, int, int, int]]
    label: Optional[int]
    class_name: Optional[str]
    why: str
    split: str
    index: int
    reference: str


def _build_pool() -> Tuple[Photo, ...]:
    counters = {"label": 0, "prediction": 0}
    pool = []
    for index, (pid, pkg, path, sha, box, label, cname, why) in enumerate(_photos_v1.ROWS):
        kind = "label" if label is not None else "prediction"
        split = "test" if counters[kind] % 5 in (1, 3) else "train"
        counters[kind] += 1
        pool.append(Photo(pid, pkg, _photos_v1.PACKAGE_VERSIONS[pkg], path, sha, box, label, cname,
                          why, split, index, kind))
    return tuple(pool)


_POOL = _build_pool()


def _split_photos(split: str) -> List[Photo]:
    if not isinstance(split, str):
        raise TypeError(f"split: expected one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    key = split.strip().lower()
    if key not in SPLITS:
        raise LookupError(f"split: the {NAME!r} pool has splits {', '.join(map(repr, SPLITS))}, "
                          f"got {split!r}")
    return list(_POOL) if key == "all" else [p for p in _POOL if p.split == key]


def split_sizes() -> Dict[str, int]:
    """``{split: number of photos}`` for ``"all"``, ``"train"``, ``"test"``."""
    return {s: len(_split_photos(s)) for s in SPLITS}


def package_root(package: str) -> Path:
    """The folder ``package``'s photo paths are relative to. Raises FileNotFoundError naming the
    package to install when it is missing."""
    if package in DEBIAN_ROOTS:
        root = DEBIAN_ROOTS[package]
        if not root.is_dir():
            raise FileNotFoundError(
                f"photos: the Debian package {package!r} is not installed ({root} is missing); "
                f"install it with `apt-get install {package}` (as root; `make setup` does it)")
        return root
    if package in _PIP_FOLDERS:
        module, sub = _PIP_FOLDERS[package]
        # find_spec locates the package without importing it (importing sklearn costs seconds)
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"photos: the pip package {package!r} is not installed; "
                                      f"install it with {_PIP_EXTRA}")
        return Path(list(spec.submodule_search_locations)[0]) / sub
    raise LookupError(f"package: unknown photo package {package!r}")


def photo_path(photo: Photo) -> Path:
    """The file of ``photo`` on this machine; FileNotFoundError naming the package if absent."""
    path = package_root(photo.package) / photo.path
    if not path.is_file():
        hint = (f"`apt-get install --reinstall {photo.package}`; if it is installed, check that "
                f"/etc/dpkg/dpkg.cfg.d does not exclude its files (slim Docker images drop "
                f"/usr/share/doc)" if photo.package in DEBIAN_ROOTS
                else f"pip install --force-reinstall {photo.package}")
        raise FileNotFoundError(f"photos: {path} ({photo.id}, from {photo.package}) is missing; "
                                f"reinstall with {hint}")
    return path


def check_packages(split: str = "all") -> None:
    """Raise one FileNotFoundError naming every missing Debian package the split needs (with the
    ``apt-get install`` line), or ModuleNotFoundError for a missing pip package."""
    needed = dict.fromkeys(p.package for p in _split_photos(split))
    missing = [pkg for pkg in needed if pkg in DEBIAN_ROOTS and not DEBIAN_ROOTS[pkg].is_dir()]
    if missing:
        raise FileNotFoundError(
            f"photos: the {NAME!r} pool needs the Debian package{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} ({', '.join(str(DEBIAN_ROOTS[m]) for m in missing)} missing); "
            f"install with `apt-get install {' '.join(missing)}` (as root; `make setup` does it)")
    for pkg in needed:
        package_root(pkg)


def _read(index: int) -> Image.Image:
    """The decoded, cropped photo ``index``, its file checked against the recorded sha256."""
    photo = _POOL[index]
    data = photo_path(photo).read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    if digest != photo.sha256:
        warnings.warn(f"photos {VERSION}: {photo.id} ({photo.package} {photo.path}) differs from the "
                      f"file the pool was built from (sha256 {digest} != {photo.sha256}; built with "
                      f"{photo.package} {photo.package_version}); results may not be comparable",
                      UserWarning, stacklevel=4)
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.crop(photo.box) if photo.box is not None else img.copy()


@lru_cache(maxsize=1024)
def _tensor(index: int, hw: Tuple[int, int]) -> Tensor:
    """Photo ``index`` as a ``3×H×W`` tensor, cached per size (callers must not modify it; a
    decoded full-size photo is not kept: the wallpapers are 4-7 Mpixel)."""
    return to_tensor(resize_center_crop(_read(index), hw), "RGB")


def photos(split: str = "all", size=DEFAULT_SIZE, device="cpu",
           n: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """The real-photo pool (``photos`` v1), as tensors.

    Args:
        split: ``"all"`` (78 photos), ``"train"`` (47) or ``"test"`` (31); see the module docstring
            for the fixed rule.
        size: int or ``(height, width)`` (default 224): resized so the photo covers it (PIL
            antialiased bicubic, aspect kept), then centre-cropped.
        device: where the tensors go (default ``"cpu"``).
        n: only the first ``n`` photos of the split (default: all).

    Returns:
        ``(x, y)``: ``x`` float32 ``N×3×H×W`` in [0, 1] (grey photos repeated on 3 channels), ``y``
        long ``N``: the human ImageNet-1k label, or ``-1`` where the reference is the model's own
        clean prediction (see :func:`fill_references`, :func:`photo_info`).

    Raises:
        LookupError: unknown split. TypeError / ValueError: bad ``size`` / ``n``.
        FileNotFoundError: a Debian package is missing (the message says ``apt-get install ...``).
        ModuleNotFoundError: scikit-image / scikit-learn / matplotlib missing.
    """
    chosen = _split_photos(split)
    hw = _as_hw(size)
    device = check_device(device, "device")
    if n is not None:
        n = check_positive_int(n, "n")
        if n > len(chosen):
            raise ValueError(f"n: the {NAME!r} {split} split has {len(chosen)} photos, got n={n}")
    check_packages(split)
    chosen = chosen[:n]
    x = torch.stack([_tensor(p.index, hw) for p in chosen])       # a new tensor: the cache is safe
    y = torch.tensor([-1 if p.label is None else p.label for p in chosen], dtype=torch.long)
    return x.to(device), y.to(device)


def photo_info(split: str = "all", n: Optional[int] = None) -> List[Photo]:
    """One :class:`Photo` per image of :func:`photos` ``(split, n=n)``, in the same order."""
    chosen = _split_photos(split)
    if n is not None:
        n = check_positive_int(n, "n")
    return chosen[:n]


def photo_manifest() -> dict:
    """What identifies the pool, for results files: ``name``, ``version``, ``sizes`` (per split),
    ``labelled`` / ``prediction_referenced`` counts, ``packages`` ``{package: version built from}``
    and ``ids`` (the ``"all"`` order)."""
    return {"name": NAME, "version": VERSION, "sizes": split_sizes(),
            "labelled": sum(p.label is not None for p in _POOL),
            "prediction_referenced": sum(p.label is None for p in _POOL),
            "packages": dict(_photos_v1.PACKAGE_VERSIONS), "ids": [p.id for p in _POOL]}


def fill_references(model, x: Tensor, y: Tensor, batch_size: int = 64) -> Tensor:
    """``y`` with every ``-1`` replaced by ``model``'s clean top-1 prediction on that image (the
    reference of prediction-referenced photos); human labels are kept. Returns a new tensor on
    ``y``'s device."""
    from .._io import predict_batched
    from .._validation import check_images

    x = check_images(x, "x")
    if not isinstance(y, Tensor) or y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"y: expected an integer label tensor (-1 = no human label), got "
                        f"{getattr(y, 'dtype', type(y).__name__)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y: expected a 1-D label tensor of length {x.shape[0]}, got shape "
                         f"{tuple(y.shape)}")
    batch_size = check_positive_int(batch_size, "batch_size")
    y = y.clone()
    missing = (y < 0).nonzero().flatten()
    if missing.numel():
        pred = predict_batched(model, x[missing.to(x.device)], batch_size,
                               reduce=lambda z: z.argmax(-1))
        y[missing] = pred.to(y.device, torch.long)
    return y
