"""Pictures of the defensive-patch view (:mod:`.defensive`): the per-class patch sheet of the
section's artifact file, and the first stored images of one training model side by side — clean,
patched, corrupted, patched + corrupted, random control + corrupted, and under the strongest stored
adversarial noise without and with the patch — each with the model's prediction (✓ = true class).

A classification cell's gallery (``DIR/gallery/<key>.pt``, :mod:`._gallery`) keeps the cell's
prepared images (``clean``: sticker, then corruption) and, for an attacked cell, the attacked ones
(``adv``), with the model's predictions; the pools of one dataset share their first images, so the
panels of one row show the same image.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch

from ..._registry import normalize_name
from ..report import image_data_uri
from ._common import esc, name_of
from ._gallery import MAX_SIDE, MIN_SIDE, _as_image, _caption, gallery_path, load_gallery

MAX_IMAGES = 4
PREFERRED_CORRUPTION, PREFERRED_SEVERITY = "gaussian_noise", 3     # the former preset's gallery


def patch_sheet_section(report, sec: dict) -> None:
    """The per-class patches of the section's artifact (:func:`patchbench.defensive.apply.
    patch_sheet`), or a note saying why the file was not found."""
    from ...defensive.apply import DefensivePatch, patch_sheet
    if sec["path"] is None:
        report.paragraph(f"Per-class patch sheet not shown: {sec['why']}.", "note")
        return
    try:
        patch = DefensivePatch.load(sec["path"])
    except (ValueError, FileNotFoundError, TypeError) as e:
        report.paragraph(f"Per-class patch sheet not shown: {e}", "note")
        return
    report.paragraph("The defensive patches (one per class, shown on mid-grey outside the mask), "
                     "left to right: " + ", ".join(map(str, patch.classes)) + ".")
    uri = image_data_uri(patch_sheet(patch), image_format="png")
    report.raw_html(f"<figure class='plot'><img src='{uri}' alt='per-class patches'>"
                    f"<figcaption>per-class patches</figcaption></figure>")


def _find(records, model: str, sticker: str, corruption: Optional[tuple], attack: Optional[tuple]):
    for r in records:
        c = r.config
        if r.status != "done" or normalize_name(c.get("model")) != model or \
                name_of(c, "defense") != "none":
            continue
        if (c.get("sticker") or {}).get("name", "none") != sticker:
            continue
        corr = c.get("corruption")
        if (None if not corr else (corr["name"], int(corr["severity"]))) != corruption:
            continue
        a = name_of(c, "attack")
        have = None if a == "none" else (a, (c.get("attack_options") or {}).get("eps"))
        if have is None and attack is None or have is not None and attack is not None and \
                have[0] == attack[0] and abs(float(have[1]) - attack[1]) < 1e-6:
            return r
    return None


def _panels(sec: dict) -> tuple:
    """``(model, [(header, sticker, corruption, attack)])`` of the section's gallery."""
    rows = sec["rows"]
    train = [r["model"] for r in rows if not r["held_out"]] or [r["model"] for r in rows]
    if not train:
        return None, []
    model = train[0]
    mine = [r for r in rows if r["model"] == model]
    names = list(dict.fromkeys(r["noise"] for r in mine if r["family"] not in
                               ("clean", "adversarial")))
    panels = [("clean", "none", None, None), ("patched", "defensive", None, None)]
    if names:
        c = PREFERRED_CORRUPTION if PREFERRED_CORRUPTION in names else names[0]
        sevs = sorted({r["severity"] for r in mine if r["noise"] == c})
        s = PREFERRED_SEVERITY if PREFERRED_SEVERITY in sevs else sevs[-1]
        panels += [(f"{c} {s}", "none", (c, s), None),
                   (f"patched + {c} {s}", "defensive", (c, s), None),
                   (f"random + {c} {s}", "random", (c, s), None)]
    for noise, attack in (("pgd", "pgd-linf"), ("fgsm", "fgsm")):
        eps = sorted({r["severity"] for r in mine if r["noise"] == noise})
        if eps:
            e = f"{eps[-1] * 255:.0f}/255"
            panels += [(f"{noise.upper()} {e}", "none", None, (attack, eps[-1])),
                       (f"patched + {noise.upper()} {e}", "defensive", None, (attack, eps[-1]))]
            break
    return model, panels


def stored_gallery(report, sec: dict, run_dir, budget: List[int]) -> None:
    """The section's image table (module doc), within ``budget[0]`` bytes (decreased by what it
    embeds); nothing when no stored gallery matches."""
    model, panels = _panels(sec)
    if model is None:
        return
    model_key = normalize_name(model.split(" + ")[0])
    cols = []
    for header, sticker, corruption, attack in panels:
        rec = _find(sec["records"], model_key, sticker, corruption, attack)
        path = gallery_path(Path(run_dir), rec.key) if rec is not None else None
        if path is None:
            continue
        try:
            g = load_gallery(path)
        except ValueError:
            continue
        key = "adv" if attack is not None else "clean"
        if isinstance(g.get(key), torch.Tensor):
            cols.append((header, g, key, "pred_adv" if attack is not None else "pred_clean"))
    if cols:
        y0 = cols[0][1].get("y")
        cols = [c for c in cols if isinstance(c[1].get("y"), torch.Tensor) and
                isinstance(y0, torch.Tensor) and torch.equal(c[1]["y"][:MAX_IMAGES],
                                                              y0[:MAX_IMAGES])]
    if len(cols) < 2:
        return
    count = min([MAX_IMAGES] + [int(g[key].shape[0]) for _, g, key, _ in cols])
    names = [str(c) for c in cols[0][1].get("class_names") or []]
    rows, size = [], 0
    for i in range(count):
        cells = []
        for _, g, key, pred in cols:
            uri = image_data_uri(_as_image(g[key][i], False), MIN_SIDE, MAX_SIDE)
            size += len(uri)
            cap = _caption(g, "clean" if key == "clean" and not cells else "adv", pred, i, names,
                           g.get("y"))
            cells.append(f"<td><figure><img src='{uri}' alt='{esc(key)} {i}'>"
                         f"<figcaption>{cap}</figcaption></figure></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    if size > budget[0]:
        report.paragraph(f"Stored images of {sec['dataset']} not shown: the page keeps its images "
                         f"under its budget (they are in {Path(run_dir) / 'gallery'}).", "note")
        return
    budget[0] -= size
    head = "".join(f"<th>{esc(h)}</th>" for h, _, _, _ in cols)
    report.raw_html(f"<div style='overflow-x:auto'><table class='thumbs'><caption>"
                    f"{esc(model)}: the first test images, with its prediction</caption>"
                    f"<tr>{head}</tr>" + "".join(rows) + "</table></div>")


__all__ = ["patch_sheet_section", "stored_gallery"]
