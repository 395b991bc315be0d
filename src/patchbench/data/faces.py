"""Face-detection data that works offline, and a WIDER FACE annotation reader.

Yang et al. (ECCV 2020, §3.1, §4.3) train face patches on WIDER FACE train and test on WIDER FACE val.
WIDER FACE cannot be downloaded here, so besides :func:`load_wider_annotations` (for users who have it)
this module builds a small real-photo stand-in:

* :func:`real_faces` — scikit-image's astronaut (one frontal face) with a hand-checked face box.
* :func:`lfw_faces` — the 100 face crops of ``skimage.data.lfw_subset()`` (25×25 grey LFW crops; the
  other 100 are non-faces). The subset has no identity labels, so each crop is its own identity.
* :func:`composite_faces` — real face crops (upscaled LFW crops and the astronaut's face) pasted at varied
  sizes onto random crops of real photos without human faces, with the paste rectangles as ground truth.
  Train and test are split **by face identity** (identity ``i`` is a test face iff ``i % 4 == 3``), never
  by composite, so a patch trained on the train split is evaluated on faces it has never seen.

Boxes are ``x1, y1, x2, y2`` float pixels (continuous convention: a face pasted at columns
``[x, x + w)`` has ``x1 = x, x2 = x + w``).

Example::
    >>> data = composite_faces(16, split="test", generator=0)
    >>> data.images.shape, data.boxes[0]           # 16×3×256×256, K×4
"""
from __future__ import annotations

import importlib.util
import math
import os
from functools import lru_cache
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .._validation import check_images, check_int, check_labels, check_positive_int, make_generator
from .._config import UnknownNameError
from .transforms import _as_hw

# Astronaut face box, hand-checked on a 3× zoom of skimage.data.astronaut(): cheeks at x ≈ 178 and
# x ≈ 272 at eye level, hairline y ≈ 72, chin y ≈ 180 (WIDER-style forehead-to-chin box). The pretrained
# MTCNN finds [181, 62, 268, 172] here (IoU 0.79 with this box).
ASTRONAUT_FACE_BOX = (178.0, 72.0, 272.0, 180.0)
ASTRONAUT_IDENTITY = 100          # LFW crops take identities 0..99
BACKGROUNDS = ("coffee", "rocket", "brick", "grass", "gravel", "hubble_deep_field", "china", "flower")
SPLITS = ("train", "test", "all")


class FaceSet(NamedTuple):
    """Images with face boxes: ``images`` N×3×H×W in [0, 1]; ``boxes`` list of N tensors K_i×4;
    ``identities`` list of N long tensors K_i (which face crop each box shows)."""
    images: Tensor
    boxes: List[Tensor]
    identities: List[Tensor]


class WiderRecord(NamedTuple):
    """One WIDER FACE image: ``boxes`` K×4 xyxy; ``attributes`` K×6 long (blur, expression, illumination,
    invalid, occlusion, pose); ``skipped``: how many zero-size boxes were dropped."""
    filename: str
    boxes: Tensor
    attributes: Tensor
    skipped: int


def _to_tensor(a: np.ndarray) -> Tensor:
    t = torch.from_numpy(np.array(a, copy=True)).float()
    if a.dtype == np.uint8:
        t = t / 255.0
    if t.dim() == 2:
        t = t[None].expand(3, -1, -1)
    else:
        t = t.permute(2, 0, 1)
    return t.clamp(0, 1).contiguous()


def real_faces() -> FaceSet:
    """The astronaut photo (1×3×512×512) with its hand-checked face box (see ``ASTRONAUT_FACE_BOX``).

    Example::
        >>> x, boxes, ids = real_faces()
    """
    import skimage.data
    img = _to_tensor(skimage.data.astronaut())[None]
    return FaceSet(img, [torch.tensor([ASTRONAUT_FACE_BOX])], [torch.tensor([ASTRONAUT_IDENTITY])])


@lru_cache(maxsize=1)
def _lfw() -> Tensor:
    import skimage.data
    return torch.from_numpy(skimage.data.lfw_subset()[:100]).float()     # first 100 are faces


def lfw_faces() -> Tuple[Tensor, Tensor]:
    """The 100 LFW face crops of ``skimage.data.lfw_subset()`` as 100×3×25×25 (grey repeated to RGB)
    and their identities ``arange(100)`` (no labels exist: each crop is its own identity).

    Example::
        >>> crops, ids = lfw_faces()
    """
    crops = _lfw().clamp(0, 1)[:, None].expand(-1, 3, -1, -1).contiguous()
    return crops, torch.arange(100)


def _face_pool() -> Tuple[List[Tensor], Tensor]:
    crops, ids = lfw_faces()
    astro = real_faces().images[0]
    x1, y1, x2, y2 = (int(v) for v in ASTRONAUT_FACE_BOX)
    faces = list(crops.unbind(0)) + [astro[:, y1:y2, x1:x2].contiguous()]
    return faces, torch.cat([ids, torch.tensor([ASTRONAUT_IDENTITY])])


@lru_cache(maxsize=None)
def _load_background(name: str) -> Tensor:
    if name in ("china", "flower"):
        # scikit-learn's sample JPEGs, read by path: importing sklearn costs seconds.
        spec = importlib.util.find_spec("sklearn")
        if spec is None or not spec.submodule_search_locations:
            raise LookupError(f"backgrounds: {name!r} needs scikit-learn's sample images "
                              f"(pip install scikit-learn)")
        path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "images", f"{name}.jpg")
        with Image.open(path) as im:
            return _to_tensor(np.asarray(im.convert("RGB")))
    import skimage.data
    if name not in BACKGROUNDS:
        raise UnknownNameError(f"backgrounds: unknown name {name!r}; expected one of {BACKGROUNDS} or "
                               f"tensors")
    return _to_tensor(getattr(skimage.data, name)())


def _split_filter(faces: Sequence[Tensor], ids: Tensor, split: str):
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if split == "all":
        keep = torch.ones(len(ids), dtype=torch.bool)
    else:
        keep = (ids % 4 == 3) if split == "test" else (ids % 4 != 3)
    idx = keep.nonzero().flatten().tolist()
    if not idx:
        raise ValueError(f"split {split!r}: no face identity falls in this split (test: id % 4 == 3)")
    return [faces[i] for i in idx], ids[idx]


def _random_background(bg: Tensor, size: Tuple[int, int], g: torch.Generator) -> Tensor:
    """A random crop of ``bg`` (at least half its short side, aspect of ``size``) resized to ``size``."""
    _, h, w = bg.shape
    aspect = size[1] / size[0]
    ch_max = min(h, int(w / aspect))
    ch = int(ch_max * (0.5 + 0.5 * torch.rand((), generator=g).item()))
    cw = max(1, int(ch * aspect))
    y = int(torch.randint(0, h - ch + 1, (), generator=g))
    x = int(torch.randint(0, w - cw + 1, (), generator=g))
    crop = bg[None, :, y:y + ch, x:x + cw]
    return F.interpolate(crop, size=size, mode="bilinear", align_corners=False,
                         antialias=ch > size[0]).clamp(0, 1)[0]


def _place(size, hw_list, g: torch.Generator, tries: int = 50) -> List[Tuple[int, int]]:
    """Non-overlapping top-left corners for rectangles ``hw_list`` (rejection sampling); a face that
    finds no free spot in ``tries`` draws is left out (returned as ``None``)."""
    taken, out = [], []
    for fh, fw in hw_list:
        spot = None
        for _ in range(tries):
            y = int(torch.randint(0, size[0] - fh + 1, (), generator=g))
            x = int(torch.randint(0, size[1] - fw + 1, (), generator=g))
            if all(x >= bx2 or x + fw <= bx1 or y >= by2 or y + fh <= by1 for bx1, by1, bx2, by2 in taken):
                spot = (y, x)
                taken.append((x, y, x + fw, y + fh))
                break
        out.append(spot)
    return out


def composite_faces(n: int, size=(256, 256), faces=None, backgrounds=None,
                    scale_range: Tuple[int, int] = (48, 96), max_faces: int = 3,
                    generator=None, split: str = "train") -> FaceSet:
    """Real faces pasted onto real face-free photos, with exact ground-truth boxes.

    Args:
        n: number of composites.
        size: ``(H, W)`` of each composite (default (256, 256)).
        faces: ``(crops, identities)`` — a list / tensor of 3×h×w face crops in [0, 1] and one integer
            identity each; default: the 100 LFW crops (ids 0–99) and the astronaut's face (id 100).
        backgrounds: names from ``BACKGROUNDS`` and/or 3×H×W tensors (default: all of ``BACKGROUNDS``:
            coffee, rocket, brick, grass, gravel, hubble_deep_field (skimage), china, flower (sklearn);
            none shows a human face).
        scale_range: ``(min, max)`` pasted face height in pixels, drawn uniformly (default (48, 96)).
        max_faces: each composite gets 1..max_faces faces (uniform; fewer if they do not fit).
        generator: seed or ``torch.Generator`` (CPU); same seed → same composites.
        split: ``"train"`` (identities with ``id % 4 != 3``), ``"test"`` (``id % 4 == 3``) or ``"all"``.
    Returns:
        :class:`FaceSet` with N×3×H×W images and per-image boxes / identities.

    Example::
        >>> train = composite_faces(64, split="train", generator=0)
        >>> test = composite_faces(32, split="test", generator=1)
    """
    n = check_positive_int(n, "n")
    max_faces = check_positive_int(max_faces, "max_faces")
    size = _as_hw(size)
    if isinstance(scale_range, (str, bytes)) or not isinstance(scale_range, (tuple, list)) or \
            len(scale_range) != 2:
        raise TypeError(f"scale_range: expected (min, max) face heights in pixels, got {scale_range!r}")
    lo, hi = (check_int(v, "scale_range") for v in scale_range)
    if not isinstance(split, str) or split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if backgrounds is not None and (isinstance(backgrounds, (str, Tensor)) or
                                    not isinstance(backgrounds, (list, tuple)) or not backgrounds):
        raise TypeError(f"backgrounds: expected a non-empty list of names from {BACKGROUNDS} and/or "
                        f"3×H×W tensors, got {backgrounds!r}")
    if not 8 <= lo <= hi or hi > min(size):
        raise ValueError(f"scale_range: expected 8 <= min <= max <= min(size)={min(size)}, got {scale_range}")
    pool, ids = _face_pool() if faces is None else _user_faces(faces)
    pool, ids = _split_filter(pool, ids, split)
    bgs = [_load_background(b) if isinstance(b, str) else check_images(b, "backgrounds", 3, True)[0]
           for b in (BACKGROUNDS if backgrounds is None else backgrounds)]
    g = make_generator(generator)
    images, boxes, idents = [], [], []
    for _ in range(n):
        img = _random_background(bgs[int(torch.randint(len(bgs), (), generator=g))], size, g).clone()
        k = int(torch.randint(1, max_faces + 1, (), generator=g))
        pick = torch.randint(len(pool), (k,), generator=g).tolist()
        heights = torch.randint(lo, hi + 1, (k,), generator=g).tolist()
        hw = [(fh, min(size[1], max(1, round(fh * pool[p].shape[2] / pool[p].shape[1]))))
              for p, fh in zip(pick, heights)]
        b, i = [], []
        for p, (fh, fw), spot in zip(pick, hw, _place(size, hw, g)):
            if spot is None:
                continue
            y, x = spot
            face = F.interpolate(pool[p][None], size=(fh, fw), mode="bilinear", align_corners=False,
                                 antialias=fh < pool[p].shape[1])
            img[:, y:y + fh, x:x + fw] = face[0].clamp(0, 1)
            b.append([x, y, x + fw, y + fh])
            i.append(int(ids[p]))
        images.append(img)
        boxes.append(torch.tensor(b, dtype=torch.float32).reshape(-1, 4))
        idents.append(torch.tensor(i, dtype=torch.long))
    return FaceSet(torch.stack(images), boxes, idents)


def _user_faces(faces) -> Tuple[List[Tensor], Tensor]:
    if not (isinstance(faces, (tuple, list)) and len(faces) == 2):
        raise TypeError("faces: expected (crops, identities) with crops a list/tensor of 3×h×w images")
    crops, ids = faces
    if isinstance(crops, Tensor):
        crops = list(check_images(crops, "faces", channels=3, allow_single=True).unbind(0))
    elif isinstance(crops, (list, tuple)):
        crops = [check_images(c, "faces", channels=3, allow_single=True)[0] for c in crops]
    else:
        raise TypeError(f"faces: expected crops as a list or tensor of 3×h×w images, got "
                        f"{type(crops).__name__}")
    if isinstance(ids, (str, bytes)) or ids is None:
        raise TypeError(f"faces: identities must be integers, got {ids!r}")
    ids = check_labels(torch.as_tensor(ids).flatten(), len(crops), name="faces: identities")
    if len(crops) == 0 or len(ids) != len(crops):
        raise ValueError(f"faces: expected one identity per crop, got {len(crops)} crops and {len(ids)} ids")
    return crops, ids


def _parse_ints(line: str, path: str, lineno: int, count: int) -> List[int]:
    """``count`` whole numbers from ``line`` (``"2.7"`` is an error, not 2; ``inf`` / ``1e400`` /
    absurdly large values too); ``ValueError`` naming ``path:lineno`` otherwise."""
    tokens = line.split()
    why = None if len(tokens) == count else f"{len(tokens)} values"
    vals = []
    for t in tokens if why is None else ():
        try:
            v = float(t)
        except ValueError:
            why = f"{t!r} is not a number"
            break
        if not math.isfinite(v) or abs(v) > _MAX_VALUE:
            why = f"{t!r} is not a finite number of at most {_MAX_VALUE:.0e}"
            break
        if not v.is_integer():
            why = f"{t!r} is not a whole number"
            break
        vals.append(int(v))
    if why is not None:
        raise ValueError(f"{path}:{lineno}: expected {count} integers, got {line.strip()!r} ({why})")
    return vals


_MAX_VALUE = 2.0 ** 31                         # no pixel coordinate or count is larger (float32-safe)


def _is_placeholder(line: str) -> bool:
    parts = line.split()
    return len(parts) == 10 and all(p.lstrip("-").replace(".", "", 1).isdigit() for p in parts)


def load_wider_annotations(txt_path) -> List[WiderRecord]:
    """Read a WIDER FACE ground-truth file (``wider_face_{train,val}_bbx_gt.txt``).

    Format (Yang et al., CVPR 2016 release): a filename line, a count line, then ``count`` lines of
    ``x y w h blur expression illumination invalid occlusion pose``. A count of 0 is followed by one
    all-zero placeholder line, which is consumed. Boxes with ``w <= 0`` or ``h <= 0`` are skipped
    (counted in ``WiderRecord.skipped``). A malformed or missing line raises ``ValueError`` naming the
    file and the 1-based line number.

    Example::
        >>> recs = load_wider_annotations("wider_face_split/wider_face_val_bbx_gt.txt")
        >>> recs[0].filename, recs[0].boxes.shape
    """
    if isinstance(txt_path, bool) or not isinstance(txt_path, (str, os.PathLike)):
        raise TypeError(f"txt_path: expected a file path, got {txt_path!r}")
    path = os.fspath(txt_path)
    if os.path.isdir(path):
        raise ValueError(f"txt_path: {path!r} is a directory, expected a WIDER FACE annotation file")
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); is this a "
                         f"WIDER FACE annotation file?") from None
    lines = text.splitlines()
    records, i = [], 0

    def take():
        nonlocal i
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i >= len(lines):
            raise ValueError(f"{path}:{i + 1}: unexpected end of file (a box line or count is missing)")
        i += 1
        return lines[i - 1], i

    while True:
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i >= len(lines):
            return records
        name, _ = take()
        count_line, ln = take()
        count = _parse_ints(count_line, path, ln, 1)[0]
        if count < 0:
            raise ValueError(f"{path}:{ln}: expected a face count >= 0, got {count}")
        rows = []
        for _ in range(count):
            line, ln = take()
            rows.append(_parse_ints(line, path, ln, 10))
        if count == 0 and i < len(lines) and _is_placeholder(lines[i]):
            i += 1                             # count 0: the official files add one all-zero line
        t = torch.tensor(rows, dtype=torch.float32).reshape(-1, 10)
        ok = (t[:, 2] > 0) & (t[:, 3] > 0)
        boxes = torch.cat([t[ok, :2], t[ok, :2] + t[ok, 2:4]], 1)
        records.append(WiderRecord(name.strip(), boxes, t[ok, 4:].long(), int((~ok).sum())))


#: the generators of the registered ``face-composites`` splits (those of the face-patch experiment)
COMPOSITE_SEEDS = {"train": 0, "test": 1}


def _face_composites(split: str, stop: Optional[int], size: int = 192):
    from ..training.face_patch import scale_range
    side = check_int(size, "size", 24)
    data = composite_faces(1000 if stop is None else stop, size=(side, side), scale_range=scale_range(side), split=split,
                           generator=COMPOSITE_SEEDS[split])
    return data.images, list(data.boxes)


def face_composites_spec():
    """The registered dataset ``face-composites``: :func:`composite_faces` of the train / test face
    identities, ``size``×``size`` px (default 192, faces 3/16–3/8 of the side), generated with the
    fixed generators :data:`COMPOSITE_SEEDS`; ``y`` is the list of per-image face boxes. The
    composites are generated, so a split holds as many as asked for (up to 1000)."""
    from .registry import DatasetSpec
    return DatasetSpec("face-composites", _face_composites, {"train": 1000, "test": 1000}, 3,
                       (192, 192), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 1, task="face-detection",
                       description="LFW faces pasted on face-free photos (train/test identities); "
                                   "y = face boxes; size= sets the side")
