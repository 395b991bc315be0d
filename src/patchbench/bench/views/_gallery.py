"""Galleries of stored cells: ``DIR/gallery/<key>.pt`` (written by the runner) → one table per
context × attack × attacker, a row per image: the clean image, the patched one, the patch mask and
each defense's purified image, captioned with the predicted class (✓ / ✗ against the true label).
A DO attack's patched image is the same for every defense, so it is shown once; an adaptive
attacker's differs per defense and gets a column per defense.

The file is a ``torch.save`` dict: ``"clean"``, ``"adv"``, ``"mask"``, optional ``"purified"``
(``uint8`` N×C×H×W, the mask N×1×H×W), ``"y"``, ``"pred_clean"``, ``"pred_adv"``, optional
``"pred_purified"`` (long N), optional ``"conf_clean"``, ``"conf_adv"``, ``"conf_purified"`` (float N:
the softmax probability of the predicted class) and ``"class_names"``. Every image is captioned: a
prediction with its confidence where the file keeps one (``→ Sandal 0.87 ✓``), a mask with the share
of the image it covers. Thumbnails are at most 160 px, JPEG for photos
(see :func:`~patchbench.bench.report.image_data_uri`), and a page stops adding galleries when their
images reach its byte budget, so a report stays under about 1 MB.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from ..report import image_data_uri
from ._common import esc

MAX_IMAGES = 4          # rows per cell
MIN_SIDE, MAX_SIDE = 112, 160
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_PANELS = (("clean", "pred_clean", "clean"), ("adv", "pred_adv", "patched"),
           ("mask", None, "patch mask"), ("purified", "pred_purified", "purified"))


def gallery_path(run_dir: Path, key: str) -> Optional[Path]:
    """``run_dir/gallery/<key>.pt`` if it exists (and the key is a plain file name)."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        return None
    p = Path(run_dir) / "gallery" / f"{key}.pt"
    return p if p.is_file() else None


def load_gallery(path: Path) -> dict:
    """The stored gallery dict; ValueError naming the file when it is not one."""
    try:
        g = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"gallery {str(path)!r}: not a readable torch file ({type(e).__name__}: "
                         f"{e})") from None
    if not isinstance(g, dict) or not isinstance(g.get("clean"), torch.Tensor) \
            or g["clean"].dim() != 4:
        raise ValueError(f"gallery {str(path)!r}: expected a dict with a 'clean' N×C×H×W tensor")
    n = g["clean"].shape[0]
    for k in ("adv", "mask", "purified"):
        t = g.get(k)
        if t is not None and (not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[0] != n):
            raise ValueError(f"gallery {str(path)!r}: {k!r} should be an N×C×H×W tensor with "
                             f"N = {n} like 'clean'")
    return g


def _as_image(t: torch.Tensor, mask: bool) -> torch.Tensor:
    if t.dtype != torch.uint8:
        t = (t.float().clamp(0, 1) * 255).round().to(torch.uint8)
    elif mask and int(t.max()) <= 1:
        t = t * 255            # a 0/1 mask
    return t


def _name(names: list, c) -> str:
    c = int(c)
    return str(names[c]) if 0 <= c < len(names) else str(c)


def _columns(entries: List[Tuple[str, dict]]) -> List[Tuple[str, dict, str, Optional[str]]]:
    """The columns of a group's table: ``(header, gallery, image key, prediction key)``. A panel
    identical in every cell (the clean images; the patched image and mask of a DO attack, shared by
    every defense) is one column, first; the others follow cell by cell (an adaptive attacker's
    patched image next to that defense's purified one), headed by the defense."""
    shared, own = [], []
    for key, pred, title in _PANELS:
        have = [(label, g) for label, g in entries if isinstance(g.get(key), torch.Tensor)]
        first = have[0][1][key] if have else None
        if have and key != "purified" and all(g[key].shape == first.shape and
                                                torch.equal(g[key], first) for _, g in have):
            shared.append((title, have[0][1], key, pred))
        elif have:
            own.append(key)
    cols = list(shared)
    for label, g in entries:
        cols += [(f"{dict((k, t) for k, _, t in _PANELS)[key]}: {label}", g, key,
                  dict((k, p) for k, p, _ in _PANELS)[key])
                 for key in own if isinstance(g.get(key), torch.Tensor)]
    return cols


def gallery_html(entries: List[Tuple[str, dict]], title: str, budget: int) -> Tuple[str, int]:
    """One table for the galleries ``entries`` (``(defense label, gallery dict)``) of cells that show
    the same images (same context, attack and attacker): a row per image, a column per panel. Returns
    the HTML and the bytes of its images; ``("", 0)`` when they would not fit in ``budget`` bytes."""
    names = [str(c) for c in entries[0][1].get("class_names") or []]
    y = entries[0][1].get("y")
    cols = _columns(entries)
    count = min([MAX_IMAGES] + [int(g["clean"].shape[0]) for _, g in entries])
    rows: List[str] = []
    size = 0
    for i in range(count):
        cells = []
        for _, g, key, pred_key in cols:
            uri = image_data_uri(_as_image(g[key][i], key == "mask"), MIN_SIDE, MAX_SIDE)
            size += len(uri)
            cells.append(f"<td><figure><img src='{uri}' alt='{esc(key)} {i}'>"
                         f"<figcaption>{_caption(g, key, pred_key, i, names, y)}</figcaption>"
                         f"</figure></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
        if size > budget:
            return "", 0
    head = "".join(f"<th>{esc(h)}</th>" for h, _, _, _ in cols)
    return (f"<div style='overflow-x:auto'><table class='thumbs'><caption>{esc(title)}</caption>"
            f"<tr>{head}</tr>" + "".join(rows) + "</table></div>", size)


def confidence(g: dict, pred_key: Optional[str], i: int) -> Optional[float]:
    """The stored confidence of prediction ``pred_key`` (``pred_adv`` → ``conf_adv``) of image
    ``i``, or None when the gallery keeps none."""
    if not pred_key or not pred_key.startswith("pred_"):
        return None
    c = g.get("conf_" + pred_key[len("pred_"):])
    if not isinstance(c, torch.Tensor) or c.dim() != 1 or i >= len(c):
        return None
    v = float(c[i])
    return v if v == v else None


def _mask_caption(g: dict, i: int) -> str:
    m = g.get("mask")
    if not isinstance(m, torch.Tensor) or i >= m.shape[0]:
        return ""
    share = float((m[i] > 0).float().mean())
    return f"patch: {100 * share:.1f}% of the image"


def _caption(g: dict, key: str, pred_key: Optional[str], i: int, names: list, y) -> str:
    truth = int(y[i]) if isinstance(y, torch.Tensor) and y.dim() == 1 and i < len(y) else None
    if key == "mask":
        return _mask_caption(g, i)
    pred = g.get(pred_key) if pred_key else None
    if not isinstance(pred, torch.Tensor) or pred.dim() != 1 or i >= len(pred):
        return "" if truth is None or key != "clean" else f"true: {esc(_name(names, truth))}"
    p = int(pred[i])
    mark = "" if truth is None else (" <span class='good'>✓</span>" if p == truth
                                     else " <span class='bad'>✗</span>")
    conf = confidence(g, pred_key, i)
    text = f"→ {esc(_name(names, p))}" + (f" {conf:.2f}" if conf is not None else "") + mark
    if key == "clean" and truth is not None:
        text += f"<br><span class='note'>true: {esc(_name(names, truth))}</span>"
    return text
