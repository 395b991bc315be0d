"""Galleries of retrieval cells, one per defense of a Table 2 (PAIR, ACM MM 2024, Fig. 1 / Fig. 4
style): per attacked query, the clean query, the patched one, the purified one (one draw of the
defense), then the top-5 database items the system returns for the clean query and for the
patched one, each captioned with its label (✓ shares the query's label, ◎ is the target class).

The cell's gallery file (``DIR/gallery/<key>.pt``, :func:`patchbench.bench.retrieval_cell.
retrieval_gallery`): ``"kind": "retrieval"``, ``"clean"``, ``"adv"``, ``"purified"`` (uint8
N×C×H×W), ``"y"``, ``"target"``, ``"class_names"``, and ``"before"`` / ``"after"``: ``{"index",
"labels", "images"}`` (N×5, N×5[×K], N×5×C×32×32 uint8). Thumbnails are JPEG or PNG, whichever is
smaller, and the view stops adding pictures at :data:`PICTURE_BUDGET` bytes.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from ..report import image_data_uri
from ._common import esc
from ._gallery import gallery_path

PICTURE_BUDGET = 400_000
MAX_QUERIES = 2
QUERY_SIDE, RESULT_SIDE = 64, 40


def load_retrieval_gallery(path) -> Optional[dict]:
    """The stored gallery dict of a retrieval cell, or None when unreadable / of another kind."""
    try:
        g = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable file only costs its pictures
        return None
    if not isinstance(g, dict) or g.get("kind") != "retrieval" or \
            not isinstance(g.get("clean"), torch.Tensor):
        return None
    return g


def label_text(label, names: List[str]) -> str:
    """A class index or a multi-hot set as class names (``"Bag+Sneaker"``)."""
    if isinstance(label, torch.Tensor) and label.dim() == 1:
        idx = label.nonzero()[:, 0].tolist()
    else:
        idx = [int(label)]
    return "+".join(str(names[i]) if 0 <= i < len(names) else str(i) for i in idx) or "∅"


def _has(label, c: int) -> bool:
    if isinstance(label, torch.Tensor) and label.dim() == 1:
        return 0 <= c < label.numel() and bool(label[c] > 0)
    return int(label) == c


def _shares(a, b) -> bool:
    if isinstance(a, torch.Tensor) and a.dim() == 1:
        return bool((a.float() * b.float()).sum() > 0)
    return int(a) == int(b)


def _figure(img, caption: str, side: int) -> tuple:
    uri = image_data_uri(img, side, side)
    return f"<figure><img src='{uri}' alt=''><figcaption>{caption}</figcaption></figure>", len(uri)


def _results(part: dict, i: int, query_label, target, names) -> tuple:
    html, size = [], 0
    for j in range(part["index"].shape[1]):
        lab = part["labels"][i, j]
        mark = (" <span class='good'>✓</span>" if _shares(lab, query_label) else "") + \
            (" <span class='bad'>◎</span>" if target is not None and _has(lab, target) else "")
        fig, n = _figure(part["images"][i, j], esc(label_text(lab, names)) + mark, RESULT_SIDE)
        html.append(fig)
        size += n
    return "<div style='display:flex;gap:2px'>" + "".join(html) + "</div>", size


def gallery_html(label: str, g: dict) -> tuple:
    """``(html, bytes)`` of one defense's gallery table."""
    names = [str(c) for c in g.get("class_names") or []]
    target = g.get("target")
    count = min(MAX_QUERIES, int(g["clean"].shape[0]))
    rows, size = [], 0
    for i in range(count):
        y = g["y"][i]
        cells = []
        for key, title in (("clean", "query"), ("adv", "patched"), ("purified", "purified")):
            if isinstance(g.get(key), torch.Tensor):
                cap = f"{title}: {esc(label_text(y, names))}" if key == "clean" else title
                fig, n = _figure(g[key][i], cap, QUERY_SIDE)
                cells.append(f"<td>{fig}</td>")
                size += n
        for key in ("before", "after"):
            if isinstance(g.get(key), dict):
                html, n = _results(g[key], i, y, target, names)
                cells.append(f"<td>{html}</td>")
                size += n
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for key, h in (("clean", "query"), ("adv", "patched"),
                                                   ("purified", "purified"),
                                                   ("before", "top 5: clean query"),
                                                   ("after", "top 5: patched query"))
                   if key in g)
    return (f"<div style='overflow-x:auto'><table class='thumbs'><caption>{esc(label)}"
            f"</caption><tr>{head}</tr>" + "".join(rows) + "</table></div>", size)


def gallery_section(report, run_dir, g: dict, rows: List[tuple], labels: Dict[tuple, str],
                    slots: dict, state: Optional[dict] = None) -> None:
    """The galleries of a Table 2 ``g``, one per row (its non-adaptive cell, else its adaptive
    one, else its benign one), within ``state["budget"]`` bytes."""
    state = {"budget": PICTURE_BUDGET} if state is None else state
    parts, skipped = [], 0
    for row in rows:
        rec = next((slots[(row, w)] for w in ("DO", "adaptive", "none") if (row, w) in slots
                    and slots[(row, w)].status == "done"), None)
        path = gallery_path(run_dir, rec.key) if rec is not None else None
        gal = load_retrieval_gallery(path) if path is not None else None
        if gal is None:
            continue
        who = {"DO": "non-adaptive", "adaptive": "adaptive", "none": "no attack"}
        kind = "none" if rec.config.get("attack") == "none" else (
            "adaptive" if rec.config.get("adaptive") else "DO")
        html, size = gallery_html(f"{labels[row]} — {who[kind]} attacker", gal)
        if size > state["budget"]:
            skipped += 1
            continue
        state["budget"] -= size
        parts.append(html)
    if parts:
        report.heading(f"Galleries — {g['title']}", 4)
        report.paragraph("Per defense: the query, the patched query, the purified one (one draw), "
                         "then the top 5 of the clean query and of the patched query as the "
                         "defended system returns them (✓ shares the query's label, ◎ is the "
                         "target class).", "note")
        for html in parts:
            report.raw_html(html)
    if skipped:
        report.paragraph(f"{skipped} galleries not shown: the page keeps its pictures under "
                         f"{PICTURE_BUDGET // 1000} kB (they are in {run_dir}/gallery).", "note")


__all__ = ["gallery_section", "gallery_html", "load_retrieval_gallery", "label_text",
           "PICTURE_BUDGET"]
