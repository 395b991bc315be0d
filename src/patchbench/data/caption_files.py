"""Image–caption data on disk, for users who have the real text-to-image sets (MS-COCO, Flickr30k),
the ones TTH (Hu, Chen & Li, ICASSP 2023, §3.1) and PAIR (ACM MM 2024, §5.1, Table 1) search.

Two layouts:

* **a caption folder** (:func:`read_caption_folder`, :func:`load_caption_folder`): image files, each
  with a ``.txt`` of the same stem beside it holding one caption per line (``dog.jpg`` +
  ``dog.txt``); sub-folders are searched with ``recursive=True``. Trailing blank lines are ignored;
  a blank line between captions is an empty caption, and refused.
* **COCO-captions JSON** (:func:`read_coco_captions`, :func:`load_coco_captions`): the
  ``captions_*.json`` of MS-COCO 2014/2017 (Flickr30k's Karpathy split converts to it), i.e.
  ``{"images": [{"id", "file_name"}, ...], "annotations": [{"image_id", "caption"}, ...]}``;
  ``file_name`` is relative to ``image_root`` (default: the JSON's folder). Images keep the
  JSON's order, captions their annotation order; an image without captions is refused.

``read_*`` return ``[(path, [captions])]`` without decoding; ``load_*`` decode the images (RGB,
resized and centre-cropped to ``size`` by :func:`~.folders.read_image`) and return
``(images N×3×H×W float in [0, 1], captions: one list per image)``. Pick queries and target
captions from them with :func:`~.captions.captions_with_keyword`.

Errors name the file: a missing folder, JSON or image (``FileNotFoundError``), an image without its
``.txt``, an empty caption, a JSON that does not parse or lacks the fields, an annotation of an
unknown image (``ValueError``).

Example::

    x, caps = load_caption_folder("my_set/", size=224)
    queries = captions_with_keyword(caps, "dog")          # [(image index, caption), ...]
    x, caps = load_coco_captions("annotations/captions_val2017.json", "val2017/", n=1000)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._validation import check_bool, check_device, check_path, check_positive_int
from .folders import IMG_EXTENSIONS, _check_extensions, _walk_images, read_image
from .transforms import _as_hw

Entries = List[Tuple[Path, List[str]]]


def _read_lines(path: Path) -> List[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"captions: {str(path)!r} is not UTF-8 text: {e}") from e
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ValueError(f"captions: {str(path)!r} holds no caption (one caption per line)")
    for i, line in enumerate(lines):
        if not line:
            raise ValueError(f"captions: line {i + 1} of {str(path)!r} is an empty caption")
    return lines


def read_caption_folder(root, extensions: Sequence[str] = IMG_EXTENSIONS,
                        recursive: bool = False) -> Entries:
    """``[(image path, captions)]`` of a caption folder (module docstring), sorted by path."""
    root = check_path(root, "root", kind="dir")
    exts = _check_extensions(extensions)
    if check_bool(recursive, "recursive"):
        paths = _walk_images(root, exts)
    else:
        paths = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.name.lower().endswith(exts))
    if not paths:
        raise ValueError(f"root: no image files ({', '.join(exts)}) in {str(root)!r}"
                         + ("" if recursive else "; use recursive=True for sub-folders"))
    out = []
    for p in paths:
        txt = p.with_suffix(".txt")
        if not txt.is_file():
            raise FileNotFoundError(f"root: image {str(p)!r} has no caption file {txt.name!r} "
                                    f"beside it (one caption per line)")
        out.append((p, _read_lines(txt)))
    return out


def _field(obj, key: str, kinds, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"{where}: missing the {key!r} field")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        raise ValueError(f"{where}: {key!r} must be a {' or '.join(k.__name__ for k in kinds)}, "
                         f"got {type(value).__name__}")
    return value


def read_coco_captions(annotations, image_root=None, n: Optional[int] = None,
                       check_files: bool = True) -> Entries:
    """``[(image path, captions)]`` of a COCO-captions JSON (module docstring), the first ``n``
    images (``None``: all); ``check_files`` raises for an image file that does not exist."""
    path = check_path(annotations, "annotations")
    root = path.parent if image_root is None else check_path(image_root, "image_root", kind="dir")
    n = None if n is None else check_positive_int(n, "n")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"annotations: {str(path)!r} is not valid JSON: {e}") from e
    where = f"annotations ({path.name})"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object with 'images' and 'annotations', got "
                         f"{type(data).__name__}")
    images = _field(data, "images", list, where)
    notes = _field(data, "annotations", list, where)
    order, files = [], {}
    for k, im in enumerate(images):
        iid = _field(im, "id", (int, str), f"{where}: images[{k}]")
        name = _field(im, "file_name", str, f"{where}: images[{k}]")
        if iid in files:
            raise ValueError(f"{where}: images[{k}] repeats image id {iid!r}")
        files[iid] = name
        order.append(iid)
    captions = {iid: [] for iid in (order if n is None else order[:n])}
    for k, a in enumerate(notes):
        iid = _field(a, "image_id", (int, str), f"{where}: annotations[{k}]")
        text = _field(a, "caption", str, f"{where}: annotations[{k}]")
        if iid not in files:
            raise ValueError(f"{where}: annotations[{k}] names image id {iid!r}, which is not "
                             f"in 'images'")
        if not text.strip():
            raise ValueError(f"{where}: annotations[{k}] (image {iid!r}) is an empty caption")
        if iid in captions:
            captions[iid].append(text.strip())
    if not captions:
        raise ValueError(f"{where}: 'images' is empty")
    out = []
    for iid, caps in captions.items():
        if not caps:
            raise ValueError(f"{where}: image {iid!r} ({files[iid]}) has no caption")
        file = root / files[iid]
        if check_files and not file.is_file():
            raise FileNotFoundError(f"image_root: image {iid!r} is {str(file)!r}, which does not "
                                    f"exist (set image_root= to the images' folder)")
        out.append((file, caps))
    return out


def _decode(entries: Entries, size, device) -> Tuple[Tensor, List[List[str]]]:
    size = _as_hw(size)
    device = check_device(device)
    images = torch.stack([read_image(p, size=size) for p, _ in entries]).to(device)
    return images, [caps for _, caps in entries]


def load_caption_folder(root, size=224, extensions: Sequence[str] = IMG_EXTENSIONS,
                        recursive: bool = False, device="cpu") -> Tuple[Tensor, List[List[str]]]:
    """``(images N×3×size×size in [0, 1], captions)`` of a caption folder (module docstring)."""
    return _decode(read_caption_folder(root, extensions, recursive), size, device)


def load_coco_captions(annotations, image_root=None, n: Optional[int] = None, size=224,
                       device="cpu") -> Tuple[Tensor, List[List[str]]]:
    """``(images N×3×size×size in [0, 1], captions)`` of a COCO-captions JSON (module
    docstring), its first ``n`` images."""
    return _decode(read_coco_captions(annotations, image_root, n), size, device)


__all__ = ["read_caption_folder", "load_caption_folder", "read_coco_captions",
           "load_coco_captions"]
