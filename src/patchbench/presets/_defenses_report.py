"""The HTML pieces of the defenses preset: a PatchZero-Table-1-style table (benign, then "DO / adaptive"
robust accuracy per attack), the gallery (patched / detected mask / purified / prediction) and the
ELGS λ sweep (table + plot, as ELGS Fig. 5: accuracy with and without attack vs λ).
"""
from __future__ import annotations

import html
from typing import Dict, List, Sequence

import torch

from ..bench.report import GalleryItem, Report
from ._defenses_cells import ATTACK_LABELS

LABELS = {"undefended": "Undefended", "gt-mask": "GT mask", "jpeg": "JPEG", "median-filter": "Median",
          "lgs": "LGS", "slgs": "SLGS", "wlgs": "WLGS", "patchcleanser": "PatchCleanser",
          "patchzero-do": "PatchZero (DO-trained)", "patchzero-two-stage": "PatchZero (two-stage)"}


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def table_html(rows: List[dict], defenses: Sequence[str], attacks: Sequence[str], caption: str) -> str:
    """One table for one (model, area): rows = defenses, columns Benign + each attack; robust cells
    read "DO / adaptive" with the sample count of each in the last column."""
    by = {(r["defense"], r["attack"], bool(r["adaptive"])): r for r in rows}
    head = "".join(f"<th>{ATTACK_LABELS.get(a, a)}<br><small>DO / adaptive</small></th>" for a in attacks)
    out = [f"<table><caption>{html.escape(caption)}</caption><tr><th class='t'>Defense</th>"
           f"<th>Benign</th>{head}<th>Certified</th><th class='t'>n (benign / DO / adaptive), "
           f"adaptive gradient</th></tr>"]
    for d in defenses:
        ben = by.get((d, "none", False))
        if ben is None:
            continue
        cells, n_do, n_ad, grads = [], set(), set(), set()
        for a in attacks:
            do, ad = by.get((d, a, False)), by.get((d, a, True))
            if do:
                n_do.add(do["n"])
            if ad:
                n_ad.add(ad["n"] if ad["steps"] == (do or ad)["steps"] else f"{ad['n']}×{ad['steps']} it")
                grads.add(ad["attacker"].removeprefix("adaptive ").strip("()"))
            if d == "undefended":
                cells.append(pct(do and do["robust_acc"]))
            else:
                cells.append(f"{pct(do and do['robust_acc'])} / {pct(ad and ad['robust_acc'])}")
        cert = pct(ben["certified_acc"]) if "certified_acc" in ben else ""
        ns = f"{ben['n']} / {_ns(n_do)} / {_ns(n_ad) if d != 'undefended' else '='}"
        g = ", ".join(sorted(grads))
        out.append(f"<tr><td class='t'>{html.escape(LABELS.get(d, d))}</td><td>{pct(ben['clean_acc'])}"
                   f"</td>" + "".join(f"<td>{c}</td>" for c in cells) + f"<td>{cert}</td>"
                   f"<td class='t'>{ns}{'; ' + html.escape(g) if g else ''}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _ns(s) -> str:
    return "–" if not s else "/".join(str(v) for v in sorted(s, key=str))


def sweep_rows(rows: List[dict]) -> List[dict]:
    """ELGS-style summary: method, λ, accuracy without and with attack, and their mean."""
    out: Dict[tuple, dict] = {}
    for r in rows:
        lam = r["options"]["smoothing_factor"]
        d = out.setdefault((r["defense"], lam), {"method": LABELS[r["defense"]], "lambda": lam})
        if r["attack"] == "none":
            d["no attack"] = r["clean_acc"]
        else:
            d["with attack"] = r["robust_acc"]
            d["attack"] = ATTACK_LABELS.get(r["attack"], r["attack"])
    res = []
    for d in out.values():
        if "no attack" in d and "with attack" in d:
            d["average"] = (d["no attack"] + d["with attack"]) / 2
        res.append(d)
    return sorted(res, key=lambda d: (d["method"], d["lambda"]))


def sweep_figure(summary: List[dict], title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for method in sorted({d["method"] for d in summary}):
        pts = [d for d in summary if d["method"] == method]
        lam = [d["lambda"] for d in pts]
        line, = axes[0].plot(lam, [d.get("with attack") for d in pts], "o-", label=f"{method} attack")
        axes[0].plot(lam, [d.get("no attack") for d in pts], "s--", color=line.get_color(),
                     label=f"{method} no attack")
        axes[1].plot(lam, [d.get("average") for d in pts], "o-", color=line.get_color(), label=method)
    for ax, t in zip(axes, ("accuracy with (solid) / without (dashed) attack", "average")):
        ax.set_xlabel("smoothing factor λ")
        ax.set_ylabel("top-1 accuracy")
        ax.set_title(t, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def gallery_items(model, x, y, attack: dict, defenses: Dict[str, object], class_names,
                  count: int = 4) -> List[GalleryItem]:
    """Per image and defense: patched image, detected mask, purified image, prediction.

    "Detected mask": PatchZero's binary mask, the true mask for the GT oracle, LGS's suppression map
    λ·G(x) (clipped to [0, 1]) for the LGS family; empty for filters that detect nothing.
    """
    items = []
    xa, true_mask = attack["x_adv"][:count], attack["mask"][:count]
    with torch.no_grad():
        pred_adv = model(xa).argmax(-1)
    for did, d in defenses.items():
        d = d.with_mask(true_mask)   # the GT oracle repaints the true mask; others ignore it
        with torch.no_grad():
            purified = d(xa)
            pred = model(purified).argmax(-1)
            mask = _detected(d, xa, true_mask)
        for i in range(xa.shape[0]):
            ok = "✓" if int(pred[i]) == int(y[i]) else "✗"
            items.append(GalleryItem(xa[i], f"{LABELS.get(did, did)} — patched; undefended: "
                                            f"{class_names[int(pred_adv[i])]} (true "
                                            f"{class_names[int(y[i])]})"))
            items.append(GalleryItem(mask[i], "detected mask"))
            items.append(GalleryItem(purified[i], f"purified → {class_names[int(pred[i])]} {ok}"))
    return items


def _detected(d, x, true_mask):
    if hasattr(d, "predict_mask"):
        return d.predict_mask(x)
    if d.uses_true_mask:
        return true_mask
    if hasattr(d, "suppression_map"):
        with torch.enable_grad():
            return (d.smoothing_factor * d.suppression_map(x)).clamp(0, 1).detach()
    return torch.zeros_like(x[:, :1])


def add_gallery(report: Report, title: str, items: List[GalleryItem]) -> None:
    report.heading(title, 3)
    report.paragraph("Columns: patched image (DO MPGD attack), detected mask, purified image with the "
                     "defended model's prediction on it (✓ = the true label).", "note")
    report.gallery(items, columns=3, min_side=112)
