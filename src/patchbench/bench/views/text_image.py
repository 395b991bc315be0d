"""The text-image view: text-to-image search poisoned by TTH ad images (Hu, Chen & Li, ICASSP 2023)
in the layout of PAIR's Tables 1, 3 and 4 (ACM MM 2024, §5.2–5.4), PAIR under stronger TTH
attackers (a table no paper has), and a gallery of one keyword query's results.

* **Table 1**, one per context (model, gallery, ads, k, seed, ...), threat and main attack (an
  attack entry without a label): rows Undefended, PatchZero, SAC, MAEDefense, LGS, JPEG, PAIR (those
  present, the paper's order, others after); columns Clean R@k, then adaptive and non-adaptive,
  each *irrelevant* (queries with an ad in their top k; lower is better) and *relevant* (queries
  whose own image stays in their top k; higher is better), in %. With several keywords each number
  is the **mean over the keywords** (TTH and PAIR average their 23 keywords; small grey text: the
  range over the keywords), and the same table follows **per keyword** (with its 95 % intervals).
  The adaptive column is the paper's attacker: cells whose defense options set neither
  ``eot_samples`` nor ``gradient``.
* **Table 3** (variants): where a defense is given both plainly and with labels, the labelled
  entries (PAIR's ablations) form a second table with the same columns.
* **Table 4** (patch sizes, shapes, placements): where the same context and attack meet several
  threats, one row per threat — the undefended model's irrelevant / relevant, then each defense's
  adaptive and non-adaptive ones.
* **Stronger attackers**: for a defense whose adaptive cells differ in ``eot_samples``,
  ``gradient`` or the attack entry (more iterations), one row per attacker; the strongest (highest
  irrelevant) is marked.
* **Targets** (issue 15, on the proxies): undefended TTH irrelevant ≥ 0.80; PAIR under the adaptive
  EOT attacker irrelevant ≤ 0.05 with clean R@10 within 3 points of undefended; Table 4's PAIR
  adaptive irrelevant ≤ 0.05 at every threat — each stated with the measured numbers.
* **Gallery**: per defense of a Table 1, one keyword query's top k before and after the ads join
  the gallery (ads outlined and marked AD, the query's own image ✓), and the ads clean, patched
  and purified.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

from ._common import (CellNamer, canonical, ci_text, display, esc, is_number, name_of, order_key,
                      pct, varying)

TASK = "text-image"
MAIN_METRICS = ("clean", "irrelevant", "relevant")
METRIC_LABELS = {"clean": "clean R@k", "irrelevant": "irrelevant R@k", "relevant": "relevant R@k"}
#: PAIR Table 1's row order
DEFENSE_ORDER = ("none", "patchzero", "sac", "mae-defense", "lgs", "jpeg", "pair")
#: defense options that change the attacker, not the deployed defense
ATTACKER_OPTIONS = ("eot_samples", "gradient")
TARGET_IRR_UNDEFENDED, TARGET_IRR_PAIR, TARGET_CLEAN_GAP = 0.80, 0.05, 0.03
REFERENCE_SIDE = 224          # PAIR Table 4 gives its patches in pixels of 224×224 images

NOTE = ("R@k in % (TTH's protocol, PAIR Table 1). Queries: the gallery captions that contain "
        "the keyword, each relevant to its own image. Clean: their R@k on the clean gallery (through "
        "the defense). Irrelevant: the share of queries with any ad image in their top k once the "
        "patched ads are in the gallery (lower is better). Relevant: the share whose own image "
        "stays in their top k (higher is better). Non-adaptive: TTH trained on the bare image "
        "tower, one patch shared by every defense; adaptive: on tower∘defense (EOT over a "
        "randomised defense's draws, BPDA where it is not differentiable). The defense purifies "
        "every gallery image, ads included. With several keywords a number is the mean over the "
        "keywords (grey: their range); the per-keyword tables follow.")


def owns_galleries(records) -> set:
    """Every text-image cell's gallery is shown here (its own format)."""
    return {r.key for r in records}


def _opts(cfg: dict) -> dict:
    o = cfg.get("defense_options")
    return o if isinstance(o, dict) else {}


def _strip(cfg: dict) -> dict:
    return {**cfg, "defense_options": {k: v for k, v in _opts(cfg).items()
                                       if k not in ATTACKER_OPTIONS}}


def _attacker_opts(cfg: dict) -> dict:
    return {k: _opts(cfg)[k] for k in ATTACKER_OPTIONS if k in _opts(cfg)}


def _context(cfg: dict, namer: CellNamer) -> dict:
    ctx = {k: cfg.get(k) for k in ("model", "dataset", "seed", "k")}
    ctx.update({k: cfg.get(k) or {} for k in ("model_options", "dataset_options")})
    ctx.update({k: cfg.get(k) for k in namer.extra if k not in ("keyword", "k")})
    return ctx


def _threat_of(cfg: dict) -> dict:
    return {"patch_area": cfg.get("patch_area"), "threat": cfg.get("threat") or {}}


def groups(records, namer: CellNamer) -> List[dict]:
    """One group per context × threat × main attack: ``{"ctx", "threat", "attack" (namer key),
    "title", "cells", "benign"}`` (records of every keyword)."""
    benign: Dict[str, list] = {}
    out: Dict[str, dict] = {}
    for r in records:
        ctx = _context(r.config, namer)
        if name_of(r.config, "attack") == "none":
            benign.setdefault(canonical(ctx), []).append(r)
            continue
        g = out.setdefault(canonical([ctx, _threat_of(r.config)]),
                           {"ctx": ctx, "threat": _threat_of(r.config), "cells": []})
        g["cells"].append(r)
    result = []
    for g in out.values():
        attacks = {namer.key(r.config, "attack") for r in g["cells"]}
        for a in sorted(a for a in attacks if not a[2]) or sorted(attacks):
            result.append({**g, "attack": a, "benign": benign.get(canonical(g["ctx"]), [])})
    for key, recs in benign.items():
        if not any(canonical(g["ctx"]) == key for g in result):
            result.append({"ctx": _context(recs[0].config, namer), "threat": None, "attack": None,
                           "cells": [], "benign": recs})
    shown = varying([g["ctx"] for g in result])
    for g in result:
        g["title"] = _title(g, shown, namer)
    # the fullest table first (Table 1 proper: most defenses, keywords, then cells of its own
    # attack — the paper's attacker has its adaptive cells too), then the others (e.g. Table 4's
    # threats) by title
    result.sort(key=lambda g: (-len({name_of(r.config, "defense") for r in g["cells"]}),
                               -len({r.config.get("keyword") for r in g["cells"]}),
                               -sum(g["attack"] is not None and
                                    namer.key(r.config, "attack") == g["attack"]
                                    for r in g["cells"]), g["title"]))
    return result


def threat_text(t: Optional[dict], image_side: int = 64) -> str:
    """A threat as PAIR's Table 4 names it, in pixels of 224² images and of ours
    (``"square 48×48 of 224 (14×14 px at 64), top-right"``)."""
    if not t:
        return "no patch"
    area, th = t.get("patch_area"), t.get("threat") or {}
    shape, aspect, place = th.get("shape", "square"), float(th.get("aspect", 1.0)), \
        th.get("placement", "random")
    if not is_number(area):
        return str(shape)

    def px(side):
        return f"{REFERENCE_SIDE * side:.0f}", f"{image_side * side:.0f}"
    if shape == "circle":
        r = math.sqrt(area / math.pi)
        a, b = px(r)
        geo = f"circle radius {a} of {REFERENCE_SIDE} ({b} px at {image_side})"
    else:
        h = math.sqrt(area / aspect)
        (ha, hb), (wa, wb) = px(h), px(h * aspect)
        geo = f"{shape} {ha}×{wa} of {REFERENCE_SIDE} ({hb}×{wb} px at {image_side})"
    if isinstance(place, list) and len(place) == 2:
        names = {(1.0, 0.0): "top-right", (0.0, 0.0): "top-left", (0.0, 1.0): "bottom-left",
                 (1.0, 1.0): "bottom-right", (0.5, 0.5): "centre"}
        place = names.get((float(place[0]), float(place[1])), f"at {display(place)}")
    elif place == "random":
        place = "random position"
    return f"{geo}, {place}"


def _image_side(ctx: dict) -> int:
    size = (ctx.get("dataset_options") or {}).get("size", 64)
    return int(size) if is_number(size) else 64


def _title(g: dict, shown: List[str], namer: CellNamer) -> str:
    ctx = g["ctx"]
    cap = f"{ctx['model']} on {ctx['dataset']}"
    if g["threat"] is not None:
        cap += f" — {threat_text(g['threat'], _image_side(ctx))}"
        rec = next(r.config for r in g["cells"] if namer.key(r.config, "attack") == g["attack"])
        cap += f" — {namer.variant(rec, 'attack')}"
    extra = [f"{k}={display(ctx[k])}" for k in shown if k in ctx and k not in ("model", "dataset")]
    return cap + (f" · {', '.join(extra)}" if extra else "")


def _rows(records, namer: CellNamer):
    """``(main row keys, variant row keys, labels)`` of a group's defenses (attacker options
    stripped); a defense given both plainly and with labels keeps the plain one(s) in Table 1."""
    labels: Dict[tuple, str] = {}
    for r in records:
        cfg = _strip(r.config)
        labels[namer.key(cfg, "defense")] = namer.variant(cfg, "defense")
    plain = {k[1] for k in labels if not k[2]}
    main = [k for k in labels if not k[2] or k[1] not in plain]
    variants = [k for k in labels if k[2] and k[1] in plain]
    order = lambda k: (order_key(k[1], DEFENSE_ORDER), k[2:])  # noqa: E731
    return sorted(main, key=order), sorted(variants, key=order), labels


def slots(g: dict, namer: CellNamer, keyword: Optional[str] = None) -> Dict[tuple, list]:
    """``(row key, "none" | "DO" | "adaptive") → records`` (one per keyword, or only ``keyword``'s)
    for Table 1 (the paper's attacker)."""
    out: Dict[tuple, dict] = {}

    def put(slot, r):
        per = out.setdefault(slot, {})
        kw = r.config.get("keyword")
        if kw not in per or (r.status == "done" and per[kw].status != "done"):
            per[kw] = r
    attacked = {r.config.get("keyword") for r in g["cells"]}
    for r in g["benign"]:       # the keywords of the group's attacked cells only (Table 4 rows)
        kw = r.config.get("keyword")
        if (keyword is None or kw == keyword) and (not attacked or kw in attacked):
            put((namer.key(_strip(r.config), "defense"), "none"), r)
    for r in g["cells"]:
        cfg = r.config
        if namer.key(cfg, "attack") != g["attack"] or _attacker_opts(cfg) or \
                (keyword is not None and cfg.get("keyword") != keyword):
            continue
        put((namer.key(_strip(cfg), "defense"), "adaptive" if cfg.get("adaptive") else "DO"), r)
    return {k: [v[kw] for kw in sorted(v, key=str)] for k, v in out.items()}


def mean_of(recs: Optional[list], metric: str):
    """``(mean, lo, hi, n)`` of ``metric`` over the done records (``None`` when none has it)."""
    vals = [r.metrics.get(metric) for r in recs or () if r.status == "done"]
    vals = [v for v in vals if is_number(v) and v == v]
    if not vals:
        return None
    return sum(vals) / len(vals), min(vals), max(vals), len(vals)


def _num(recs: Optional[list], metric: str) -> str:
    if not recs:
        return "<td>–</td>"
    failed = [r for r in recs if r.status != "done"]
    agg = mean_of(recs, metric)
    if agg is None:
        return ("<td><a class='bad' href='#failed'>failed</a></td>" if failed else "<td>–</td>")
    mean, lo, hi, n = agg
    if len(recs) == 1:
        m = recs[0].metrics
        ci = ci_text(m.get(f"{metric}_ci"))
        tip = f"keyword {m.get('keyword')}, n_queries={m.get('n_queries')}, k={m.get('k')}"
        sub = f"[{ci}]" if ci else ""
    else:
        kws = ", ".join(str(r.metrics.get("keyword")) for r in recs if r.status == "done")
        tip = f"mean over {n} keywords ({kws})"
        sub = f"{pct(lo)}–{pct(hi)}"
    bad = f" <a class='bad' href='#failed'>{len(failed)} failed</a>" if failed else ""
    return (f"<td><span class='num' title='{esc(tip)}'><b>{pct(mean)}</b></span>{bad}"
            + (f"<div class='ci'>{sub}</div>" if sub else "") + "</td>")


def _clean_of(s: dict, row) -> Optional[list]:
    """The benign cells of a row, else the clean R@k every attacked cell also measures."""
    for who in ("none", "DO", "adaptive"):
        recs = s.get((row, who))
        if recs and any(r.status == "done" for r in recs):
            return recs
    return s.get((row, "none"))


def table_html(caption: str, rows: List[tuple], labels: Dict[tuple, str], s: dict) -> str:
    """Table 1's layout for ``rows`` (failed cells read “failed”)."""
    out = [f"<table class='paper'><caption>{esc(caption)}</caption>"
           "<tr><th class='t' rowspan='2'>Defense</th><th rowspan='2'>Clean ↑</th>"
           "<th colspan='2'>Adaptive</th><th colspan='2'>Non-adaptive</th></tr>"
           "<tr><th>Irrelevant ↓</th><th>Relevant ↑</th><th>Irrelevant ↓</th><th>Relevant ↑</th>"
           "</tr>"]
    for row in rows:
        do, ad = s.get((row, "DO")), s.get((row, "adaptive"))
        if row[1] == "none":
            ad = do           # an adaptive attacker on the bare model is the non-adaptive one
        out.append(f"<tr><td class='t'>{esc(labels[row])}</td>{_num(_clean_of(s, row), 'clean')}"
                   + _num(ad, "irrelevant") + _num(ad, "relevant")
                   + _num(do, "irrelevant") + _num(do, "relevant") + "</tr>")
    out.append("</table>")
    return "".join(out)


def keywords_of(g: dict) -> List[str]:
    """The keywords of a group's attacked cells (of its benign ones without an attack)."""
    return sorted({str(r.config.get("keyword")) for r in g["cells"] or g["benign"]})


def target_lines(s: dict, rows: List[tuple]) -> List[str]:
    """The issue's Table 1 targets with their measured numbers (means over the keywords)."""
    out = []

    def val(row, who, metric):
        a = mean_of(s.get((row, who)), metric) if row is not None else None
        return None if a is None else a[0]

    und = next((k for k in rows if k[1] == "none"), None)
    pair = next((k for k in rows if k[1] == "pair"), None)
    v = val(und, "DO", "irrelevant")
    if v is not None:
        out.append(f"undefended TTH irrelevant R@10 {pct(v)}% (target ≥ "
                   f"{pct(TARGET_IRR_UNDEFENDED, 0)}%): "
                   + ("met" if v >= TARGET_IRR_UNDEFENDED else "NOT met"))
    v = val(pair, "adaptive", "irrelevant")
    if v is not None:
        eot = {r.metrics.get("eot_samples") for r in s[(pair, "adaptive")] if r.status == "done"}
        out.append(f"PAIR under the adaptive attacker (EOT {display(sorted(eot, key=str))}) "
                   f"irrelevant {pct(v)}% (target ≤ {pct(TARGET_IRR_PAIR, 0)}%): "
                   + ("met" if v <= TARGET_IRR_PAIR else "NOT met"))
    cu = mean_of(_clean_of(s, und), "clean") if und is not None else None
    cp = mean_of(_clean_of(s, pair), "clean") if pair is not None else None
    if cu is not None and cp is not None:
        gap = cu[0] - cp[0]
        how = f"{100 * gap:.1f} points lower" if gap >= 0 else f"{-100 * gap:.1f} points higher"
        out.append(f"PAIR clean R@10 {pct(cp[0])}% vs undefended {pct(cu[0])}%: {how} "
                   f"(target ≤ {100 * TARGET_CLEAN_GAP:.0f} points lower): "
                   + ("met" if gap <= TARGET_CLEAN_GAP else "NOT met"))
    return out


def render(report, records, namer: CellNamer, run_dir=None) -> None:
    """Tables 1, 3 and 4, stronger attackers, targets and galleries of the text-image cells."""
    from ._textimagepics import PICTURE_BUDGET, gallery_section
    from ._textimagetables import stronger, table4, table4_lines
    report.heading("Text-to-image search under TTH (PAIR Tables 1, 3 and 4 layout)")
    report.paragraph(NOTE, "note")
    state = {"budget": PICTURE_BUDGET}
    all_groups = groups(records, namer)
    for g in all_groups:
        main, variants, labels = _rows(g["cells"] + g["benign"], namer)
        s = slots(g, namer)
        kws = keywords_of(g)
        report.heading(g["title"], 3)
        what = f"mean over the keywords {', '.join(kws)}" if len(kws) > 1 else f"keyword {kws[0]}"
        report.raw_html(table_html(f"Table 1 — {g['title']} — {what}", main, labels, s))
        if variants:
            names = {k[1] for k in variants}
            title = ("PAIR ablations (Table 3; PAIR = random mask + semantic discriminator)"
                     if names == {"pair"} else "Variants")
            rows = [k for k in main if k[1] in names] + variants
            report.raw_html(table_html(f"{title} — {g['title']} — {what}", rows, labels, s))
        if len(kws) > 1:
            parts = [table_html(f"keyword {kw} — {g['title']}", main + variants, labels,
                                slots(g, namer, kw)) for kw in kws]
            report.raw_html("<details><summary>Per keyword</summary>" + "".join(parts)
                            + "</details>")
        for row in main + variants:
            t = stronger(g, row, labels, namer)
            if t:
                report.raw_html(t)
        lines = target_lines(s, main)
        if lines:
            report.paragraph("Targets (issue 15, on the proxies): " + "; ".join(lines) + ".",
                             "note")
        if run_dir is not None:
            gallery_section(report, run_dir, g, main + variants, labels, s, state)
    for caption, html, rows in table4(all_groups, namer):
        report.heading(caption, 3)
        report.raw_html(html)
        lines = table4_lines(rows)
        if lines:
            report.paragraph("Target (issue 15): " + "; ".join(lines) + ".", "note")


__all__ = ["render", "owns_galleries", "groups", "slots", "table_html", "target_lines",
           "threat_text", "mean_of", "TASK", "MAIN_METRICS", "METRIC_LABELS"]
