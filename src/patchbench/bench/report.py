"""Self-contained HTML reports: tables like the papers', matplotlib plots and image galleries, all
embedded as ``data:`` URIs so one ``index.html`` can be mailed or archived; plus atomic JSON/CSV writers.

Readable on a 1400-px screen (issue 16): the page's key numbers come first, in one box under the
title (:meth:`Report.headline`, wherever it is called); the body is at most 1360 px wide and a table
wider than that scrolls inside its own box instead of widening the page; a cell never shows a raw
dict or list (an interval reads ``[0.412, 0.903]``, a dict ``k: v, ...``); a label-conditional
number gets a :meth:`Report.banner` and a † marker (:data:`LABEL_MARK`).

Photos are embedded as JPEG (quality 80) and plots as PNG (palette-quantised when that is smaller):
whichever of the two encodings is smaller is kept for each image, so a 28-pixel image upscaled with
nearest neighbour or a binary mask stays a crisp PNG while a photo becomes a JPEG ~10× smaller.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .._io import atomic_write_text  # noqa: F401  (re-exported: existing callers import it from here)

JPEG_QUALITY = 80
#: the marker of a label-conditional number (e.g. a defensive patch chosen for the true class)
LABEL_MARK = "†"
#: the widest screen a page is laid out for, px (the body is a little narrower)
PAGE_WIDTH = 1400

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1360px;
color:#222;padding:0 1em;line-height:1.4;box-sizing:border-box}
div.scroll{overflow-x:auto;max-width:100%}
table{display:block;overflow-x:auto;max-width:100%;width:max-content}
div.headline{border:2px solid #345;border-radius:6px;background:#f4f8fc;padding:.6em 1em;margin:1em 0}
div.headline h2{margin:0 0 .4em 0;border:0;font-size:1.2em}
div.headline ul{margin:.2em 0;padding-left:1.2em}div.headline li{margin:.15em 0}
div.banner{border:2px solid #b60;background:#fff4e0;padding:.5em 1em;margin:1em 0;font-weight:600}
sup.lc,span.lc{color:#b60;font-weight:700}
h1{font-size:1.6em}h2{font-size:1.3em;margin-top:2em;border-bottom:1px solid #ddd}h3{font-size:1.1em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right;vertical-align:top}th{background:#f3f3f3}
td.t,th.t{text-align:left}caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0}
.gallery{display:grid;gap:.8em;margin:1em 0}
figure{margin:0;font-size:.85em;text-align:center}figure img{width:100%;image-rendering:pixelated;
border:1px solid #ccc}figure.plot{margin:1em 0;text-align:left}
figure.plot img{width:auto;max-width:100%;image-rendering:auto;border:0}
.note{color:#555;font-size:.9em}.bad{color:#b00}.good{color:#070}
.ci{color:#666;font-size:.8em;white-space:nowrap}.num{font-variant-numeric:tabular-nums}
tr.oracle td{background:#fafafa;font-style:italic}details pre{white-space:pre-wrap;font-size:.8em;
background:#f7f7f7;padding:.5em;max-width:100%;overflow-x:auto;text-align:left}
dl.headline{display:grid;grid-template-columns:max-content auto;gap:.2em 1em;margin:1em 0}
dl.headline dt{font-weight:600}dl.headline dd{margin:0}
table.thumbs td{text-align:center;border:0;padding:.2em .4em}
table.thumbs th{border:0;font-weight:600;text-align:center;background:none}
table.thumbs figure img{width:auto;max-width:160px}table.thumbs figcaption{max-width:160px;margin:auto}
td.chg{background:#fff6d5}td.sig{background:#ffe2b3;font-weight:600}code{font-size:.9em}
"""


def tensor_to_pil(img: torch.Tensor) -> Image.Image:
    """``C×H×W`` (C = 1 or 3) or ``H×W`` image → PIL image: float in [0, 1], or ``uint8`` in
    [0, 255] (the stored galleries)."""
    t = img.detach().cpu()
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 3:
        t = t.permute(1, 2, 0)
    if t.dtype == torch.uint8:
        arr = t.contiguous().numpy()
    else:
        arr = (t.float().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr)


def _resized(pil: Image.Image, min_side: int = 0, max_side: Optional[int] = None) -> Image.Image:
    """Upscale with nearest neighbour to ``min_side`` (28-pixel images stay visible and crisp), then
    shrink to at most ``max_side`` on the longer side (thumbnails)."""
    if min_side and min(pil.size) < min_side:
        f = math.ceil(min_side / min(pil.size))
        pil = pil.resize((pil.size[0] * f, pil.size[1] * f), Image.NEAREST)
    if max_side and max(pil.size) > max_side:
        s = max_side / max(pil.size)
        pil = pil.resize((max(1, round(pil.size[0] * s)), max(1, round(pil.size[1] * s))),
                         Image.LANCZOS)
    return pil


def _encode(pil: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        if pil.mode not in ("RGB", "L"):
            pil = pil.convert("RGB")
        pil.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    else:
        pil.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def image_data_uri(img, min_side: int = 0, max_side: Optional[int] = None,
                   image_format: str = "auto") -> str:
    """Embed a tensor / PIL image as a ``data:`` URI.

    Args:
        img: ``C×H×W`` / ``H×W`` tensor (float in [0, 1] or ``uint8``) or a PIL image.
        min_side: upscale with nearest neighbour until the shorter side is at least this.
        max_side: then shrink (Lanczos) until the longer side is at most this (``None``: no limit).
        image_format: ``"jpeg"`` (quality 80), ``"png"``, or ``"auto"``: the smaller of the two —
            a JPEG for a photo, a PNG for a mask or a nearest-upscaled small image (PNG is only
            tried for images of at most 256 colours).
    """
    if image_format not in ("auto", "jpeg", "png"):
        raise ValueError(f"image_format: expected 'auto', 'jpeg' or 'png', got {image_format!r}")
    pil = _resized(img if isinstance(img, Image.Image) else tensor_to_pil(img), min_side, max_side)
    if image_format == "auto":
        cands = [("jpeg", _encode(pil, "jpeg"))]
        if pil.mode in ("1", "L", "P") or pil.getcolors(256) is not None:   # a photo never is
            cands.append(("png", _encode(pil, "png")))
        fmt, data = min(cands, key=lambda fd: len(fd[1]))
    else:
        fmt, data = image_format, _encode(pil, image_format)
    return f"data:image/{fmt};base64," + base64.b64encode(data).decode("ascii")


def png_data_uri(img, min_side: int = 0) -> str:
    """Embed a tensor / PIL image as a ``data:image/png;base64`` URI (upscaled with nearest to
    ``min_side`` so 28-pixel images stay visible)."""
    return image_data_uri(img, min_side, image_format="png")


def figure_data_uri(fig, dpi: int = 100) -> str:
    """A matplotlib figure → PNG data URI (the figure is closed). The PNG is palette-quantised
    (256 colours, no dithering) when that is smaller: a plot has few colours."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    data = buf.getvalue()
    pil = Image.open(io.BytesIO(data)).convert("RGB")
    quant = _encode(pil.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                 dither=Image.Dither.NONE), "png")
    if len(quant) < len(data):
        data = quant
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


@dataclass
class GalleryItem:
    image: object          # tensor C×H×W (float in [0,1] or uint8), PIL image, or a data: URI
    caption: str = ""


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.3f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, torch.Tensor):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        if len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            return f"[{_fmt(v[0])}, {_fmt(v[1])}]"          # an interval
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def format_value(v) -> str:
    """A cell value as text: floats with 3 decimals (NaN → –), a 2-number list as an interval
    ``[lo, hi]``, other lists comma-separated, dicts ``k: v, ...`` — never a raw dict or list."""
    return _fmt(v)


class Report:
    """Build one HTML page section by section, then ``save(dir)`` writes ``dir/index.html``."""

    def __init__(self, title: str):
        self.title = title
        self._parts: List[str] = []
        self._headline: List[str] = []

    def headline(self, items: Sequence, title: str = "Key numbers", escape: bool = True
                 ) -> "Report":
        """The page's key numbers, in one box right under the title (before any table, whenever
        this is called). ``items``: text lines, or ``(label, text)`` pairs (the label in bold);
        ``escape=False`` takes labels and texts as HTML fragments. Several calls add to the one box."""
        lines = []
        for it in items:
            label, text = it if isinstance(it, (tuple, list)) and len(it) == 2 else ("", it)
            text, label = ((html.escape(str(text)), html.escape(str(label))) if escape
                           else (str(text), str(label)))
            lines.append(f"<li>{f'<b>{label}</b>: ' if label else ''}{text}</li>")
        if lines:
            head = "" if self._headline else f"<h2>{html.escape(title)}</h2>"
            self._headline.append(head + "<ul>" + "".join(lines) + "</ul>")
        return self

    def headline_html(self, fragment: str) -> "Report":
        """An HTML fragment added to the key-numbers box (e.g. what ran, below the numbers)."""
        self._headline.append(fragment)
        return self

    def banner(self, text: str) -> "Report":
        """A prominent warning block (e.g. "these numbers are label-conditional")."""
        self._parts.append(f"<div class='banner' role='note'>{html.escape(text)}</div>")
        return self

    def size(self) -> int:
        """Characters of HTML so far (the embedded images dominate): for byte budgets."""
        return sum(map(len, self._parts)) + sum(map(len, self._headline))

    def heading(self, text: str, level: int = 2) -> "Report":
        self._parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
        return self

    def paragraph(self, text: str, cls: str = "") -> "Report":
        c = f' class="{cls}"' if cls else ""
        self._parts.append(f"<p{c}>{html.escape(text)}</p>")
        return self

    def table(self, rows: Sequence[dict], columns: Optional[Sequence[str]] = None,
              caption: str = "", text_columns: Iterable[str] = ()) -> "Report":
        """A table of dict rows; ``columns`` picks and orders keys (default: keys of the first row)."""
        if not rows:
            self.paragraph(f"{caption}: no rows.", "note")
            return self
        cols = list(columns) if columns else list(rows[0].keys())
        tcols = set(text_columns)
        out = ["<div class='scroll'><table>"]
        if caption:
            out.append(f"<caption>{html.escape(caption)}</caption>")
        out.append("<tr>" + "".join(
            f'<th class="{"t" if c in tcols else ""}">{html.escape(c)}</th>' for c in cols) + "</tr>")
        for r in rows:
            out.append("<tr>" + "".join(
                f'<td class="{"t" if (c in tcols or isinstance(r.get(c), str)) else ""}">'
                f'{html.escape(_fmt(r.get(c, "")))}</td>' for c in cols) + "</tr>")
        out.append("</table></div>")
        self._parts.append("".join(out))
        return self

    def gallery(self, items: Sequence[GalleryItem], columns: int = 4, min_side: int = 128,
                max_side: Optional[int] = None, image_format: str = "auto") -> "Report":
        """A grid of captioned images, ``columns`` per row; images are embedded with
        :func:`image_data_uri` (``min_side``, ``max_side``, ``image_format``: see there). An item
        whose image is already a ``data:`` URI is embedded as it is."""
        cells = []
        for it in items:
            src = (it.image if isinstance(it.image, str) and it.image.startswith("data:")
                   else image_data_uri(it.image, min_side, max_side, image_format))
            cells.append(f'<figure><img src="{src}" alt="">'
                         f"<figcaption>{html.escape(it.caption)}</figcaption></figure>")
        self._parts.append(f'<div class="gallery" style="grid-template-columns:repeat({columns},1fr)">'
                           + "".join(cells) + "</div>")
        return self

    def figure(self, fig, caption: str = "") -> "Report":
        """A matplotlib figure as a PNG (closed afterwards), captioned."""
        self._parts.append(f'<figure class="plot"><img src="{figure_data_uri(fig)}" alt="">'
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        return self

    def raw_html(self, fragment: str) -> "Report":
        self._parts.append(fragment)
        return self

    def render(self) -> str:
        return ("<!doctype html><html><head><meta charset='utf-8'>"
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
                f"<h1>{html.escape(self.title)}</h1>"
                + (f"<div class='headline'>{''.join(self._headline)}</div>" if self._headline
                   else "")
                + "\n".join(self._parts) + "</body></html>")

    def save(self, out_dir) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "index.html"
        atomic_write_text(path, self.render())
        return path


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def write_json(rows, path) -> None:
    """Rows (list of dicts) → pretty JSON, atomically; NaN becomes null."""
    atomic_write_text(path, json.dumps(_jsonable(rows), indent=2) + "\n")


def write_csv(rows: Sequence[dict], path) -> None:
    cols: List[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: (json.dumps(_jsonable(v)) if isinstance(v, (dict, list)) else _jsonable(v))
                    for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())
