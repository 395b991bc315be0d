"""Self-contained HTML reports: tables like the papers', matplotlib plots and image galleries, all
embedded (base64 PNG) so one ``index.html`` can be mailed or archived; plus atomic JSON/CSV writers.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.3em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f3f3f3}
td.t,th.t{text-align:left}caption{caption-side:top;text-align:left;font-weight:600;padding:.3em 0}
.gallery{display:grid;gap:.8em;margin:1em 0}
figure{margin:0;font-size:.8em;text-align:center}figure img{width:100%;image-rendering:pixelated;
border:1px solid #ccc}.note{color:#555;font-size:.9em}.bad{color:#b00}.good{color:#070}
"""


def tensor_to_pil(img: torch.Tensor) -> Image.Image:
    """``C×H×W`` (C = 1 or 3) or ``H×W`` float in [0, 1] → PIL image."""
    t = img.detach().float().cpu()
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 3:
        t = t.permute(1, 2, 0)
    arr = (t.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr)


def png_data_uri(img, min_side: int = 0) -> str:
    """Embed a tensor / PIL image as a ``data:image/png;base64`` URI (upscaled with nearest to
    ``min_side`` so 28-pixel images stay visible)."""
    pil = img if isinstance(img, Image.Image) else tensor_to_pil(img)
    if min_side and min(pil.size) < min_side:
        f = math.ceil(min_side / min(pil.size))
        pil = pil.resize((pil.size[0] * f, pil.size[1] * f), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure_data_uri(fig) -> str:
    """A matplotlib figure → PNG data URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class GalleryItem:
    image: object          # tensor C×H×W in [0,1] or PIL image
    caption: str = ""


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.3f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v)


class Report:
    """Build one HTML page section by section, then ``save(dir)`` writes ``dir/index.html``."""

    def __init__(self, title: str):
        self.title = title
        self._parts: List[str] = []

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
        out = ["<table>"]
        if caption:
            out.append(f"<caption>{html.escape(caption)}</caption>")
        out.append("<tr>" + "".join(
            f'<th class="{"t" if c in tcols else ""}">{html.escape(c)}</th>' for c in cols) + "</tr>")
        for r in rows:
            out.append("<tr>" + "".join(
                f'<td class="{"t" if (c in tcols or isinstance(r.get(c), str)) else ""}">'
                f'{html.escape(_fmt(r.get(c, "")))}</td>' for c in cols) + "</tr>")
        out.append("</table>")
        self._parts.append("".join(out))
        return self

    def gallery(self, items: Sequence[GalleryItem], columns: int = 4, min_side: int = 128) -> "Report":
        cells = []
        for it in items:
            cells.append(f'<figure><img src="{png_data_uri(it.image, min_side)}" alt="">'
                         f"<figcaption>{html.escape(it.caption)}</figcaption></figure>")
        self._parts.append(f'<div class="gallery" style="grid-template-columns:repeat({columns},1fr)">'
                           + "".join(cells) + "</div>")
        return self

    def figure(self, fig, caption: str = "") -> "Report":
        self._parts.append(f'<figure style="max-width:640px"><img src="{figure_data_uri(fig)}" alt="">'
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        return self

    def raw_html(self, fragment: str) -> "Report":
        self._parts.append(fragment)
        return self

    def render(self) -> str:
        return ("<!doctype html><html><head><meta charset='utf-8'>"
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
                f"<h1>{html.escape(self.title)}</h1>" + "\n".join(self._parts) + "</body></html>")

    def save(self, out_dir) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "index.html"
        atomic_write_text(path, self.render())
        return path


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace`` (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)   # mkstemp makes 0600 files; reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
