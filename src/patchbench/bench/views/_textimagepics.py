"""Galleries of text-image cells, one per defense of a Table 1 (TTH, ICASSP 2023, Fig. 1 style): for
one keyword query, the top k the deployed search returns before the ads join the gallery and after,
the ads outlined in red and marked AD, the query's own image marked ✓; then the first ads clean,
patched and purified (one draw of the defense).

The cell's gallery file (``DIR/gallery/<key>.pt``,
:func:`patchbench.bench.text_image_cell.text_image_gallery`): ``"kind": "text-image"``,
``"keyword"``, ``"k"``, ``"queries"``, ``"before"`` / ``"after"`` (``{"index", "ad", "true",
"images"}``), ``"ads"``, ``"ads_adv"``, ``"ads_purified"``, ``"patch"``. The view stops adding
pictures at :data:`PICTURE_BUDGET` bytes.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from ..report import image_data_uri
from ._common import esc
from ._gallery import gallery_path

PICTURE_BUDGET = 400_000
RESULT_SIDE, AD_SIDE = 40, 56
MAX_QUERIES = 1


def load_text_image_gallery(path) -> Optional[dict]:
    """The stored gallery dict of a text-image cell, or None when unreadable / of another kind."""
    try:
        g = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable file only costs its pictures
        return None
    if not isinstance(g, dict) or g.get("kind") != "text-image" or \
            not isinstance(g.get("before"), dict) or not g.get("queries"):
        return None
    return g


def _figure(img, caption: str, side: int, ad: bool = False) -> tuple:
    uri = image_data_uri(img, side, side)
    style = " style='outline:3px solid #c00'" if ad else ""
    return (f"<figure><img src='{uri}' alt=''{style}><figcaption>{caption}</figcaption></figure>",
            len(uri))


def _results(part: dict, i: int) -> tuple:
    html, size = [], 0
    for j in range(part["index"].shape[1]):
        ad, own = bool(part["ad"][i, j]), bool(part["true"][i, j])
        cap = f"{j + 1}" + (" <b class='bad'>AD</b>" if ad else "") + \
            (" <span class='good'>✓</span>" if own else "")
        fig, n = _figure(part["images"][i, j], cap, RESULT_SIDE, ad)
        html.append(fig)
        size += n
    return "<div style='display:flex;gap:2px;flex-wrap:wrap'>" + "".join(html) + "</div>", size


def gallery_html(label: str, g: dict) -> tuple:
    """``(html, bytes)`` of one defense's gallery."""
    rows, size = [], 0
    k = int(g.get("k", g["before"]["index"].shape[1]))
    for i in range(min(MAX_QUERIES, len(g["queries"]))):
        before, n1 = _results(g["before"], i)
        after, n2 = _results(g["after"], i) if isinstance(g.get("after"), dict) else ("", 0)
        size += n1 + n2
        rows.append(f"<tr><td colspan='2'>query: “{esc(g['queries'][i])}”</td></tr>"
                    f"<tr><th>top {k}: clean gallery</th><td>{before}</td></tr>"
                    f"<tr><th>top {k}: ads added</th><td>{after}</td></tr>")
    ads = []
    for key, title in (("ads", "ad"), ("ads_adv", "patched ad"), ("ads_purified", "purified")):
        t = g.get(key)
        if isinstance(t, torch.Tensor):
            for j in range(t.shape[0]):
                fig, n = _figure(t[j], title, AD_SIDE)
                ads.append(fig)
                size += n
    if ads:
        rows.append("<tr><th>ads</th><td><div style='display:flex;gap:2px;flex-wrap:wrap'>"
                    + "".join(ads) + "</div></td></tr>")
    kw = g.get("keyword")
    return (f"<div style='overflow-x:auto'><table class='thumbs'><caption>{esc(label)}"
            + (f" — keyword “{esc(kw)}”" if kw else "") + "</caption>" + "".join(rows)
            + "</table></div>", size)


def gallery_section(report, run_dir, g: dict, rows: List[tuple], labels: Dict[tuple, str],
                    slots: dict, state: Optional[dict] = None) -> None:
    """The galleries of a Table 1 ``g``, one per row (its non-adaptive cell of the first keyword,
    else its adaptive one, else its benign one), within ``state["budget"]`` bytes."""
    state = {"budget": PICTURE_BUDGET} if state is None else state
    parts, skipped = [], 0
    who = {"DO": "non-adaptive attacker", "adaptive": "adaptive attacker", "none": "no attack"}
    for row in rows:
        rec, kind = None, None
        for w in ("DO", "adaptive", "none"):
            done = [r for r in slots.get((row, w)) or () if r.status == "done"]
            if done:
                rec, kind = done[0], w
                break
        path = gallery_path(run_dir, rec.key) if rec is not None else None
        gal = load_text_image_gallery(path) if path is not None else None
        if gal is None:
            continue
        html, size = gallery_html(f"{labels[row]} — {who[kind]}", gal)
        if size > state["budget"]:
            skipped += 1
            continue
        state["budget"] -= size
        parts.append(html)
    if parts:
        report.heading(f"Galleries — {g['title']}", 4)
        report.paragraph("Per defense, for one query containing the keyword: the top k the "
                         "defended search returns on the clean gallery and once the ads are in it "
                         "(ads outlined and marked AD, shown as indexed, i.e. patched; ✓ is the "
                         "query's own image), then the first ads clean, patched and purified "
                         "(one draw). The query is the one the ads (as indexed) are closest to "
                         "under the bare model: the same for every non-adaptive cell of the "
                         "keyword.", "note")
        for html in parts:
            report.raw_html(html)
    if skipped:
        report.paragraph(f"{skipped} galleries not shown: the page keeps its pictures under "
                         f"{PICTURE_BUDGET // 1000} kB (they are in {run_dir}/gallery).", "note")


__all__ = ["gallery_section", "gallery_html", "load_text_image_gallery", "PICTURE_BUDGET"]
