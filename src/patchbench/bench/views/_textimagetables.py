"""The text-image view's other tables (:mod:`.text_image`): PAIR under stronger TTH attackers and
PAIR's Table 4 (ACM MM 2024, §5.4: patch sizes 48 / 80 / 112 of 224, a 40×160 rectangle, a circle of
radius 45, random positions), each number a mean over the keywords of its cells.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from ._common import CellNamer, canonical, esc, is_number, name_of, order_key, pct
from .text_image import (DEFENSE_ORDER, TARGET_IRR_PAIR, _attacker_opts, _image_side, _num,
                         _rows, _strip, mean_of, slots, threat_text)


def attacker_text(r, namer: CellNamer) -> str:
    """``"adaptive · EOT 7 · exact gradient · TTH"``, or ``"non-adaptive · TTH"``."""
    cfg = r.config
    if not cfg.get("adaptive"):
        return f"non-adaptive · {namer.variant(cfg, 'attack')}"
    eot = r.metrics.get("eot_samples") if r.status == "done" else None
    eot = eot if is_number(eot) else _attacker_opts(cfg).get("eot_samples", "default")
    grad = _attacker_opts(cfg).get("gradient", "the defense's rule")
    if grad == "bpda-identity":
        grad = "BPDA (identity) through the reconstruction"
    elif grad == "exact" or (grad == "the defense's rule" and
                             name_of(cfg, "defense") in ("pair", "mae-defense")):
        grad = "exact gradient"
    return f"adaptive · EOT {eot} · {grad} · {namer.variant(cfg, 'attack')}"


def stronger(g: dict, row, labels: Dict[tuple, str], namer: CellNamer) -> Optional[str]:
    """The stronger-attacker table of one defense row (means over the keywords), or None when it
    met one adaptive attacker only."""
    cells = [r for r in g["cells"] if namer.key(_strip(r.config), "defense") == row]
    by: Dict[str, list] = {}
    for r in cells:
        by.setdefault(canonical([bool(r.config.get("adaptive")), _attacker_opts(r.config),
                                 namer.key(r.config, "attack")]), []).append(r)
    if row[1] == "none" or sum(1 for v in by.values() if v[0].config.get("adaptive")) < 2:
        return None

    def order(recs):
        c = recs[0].config
        return (bool(c.get("adaptive")), (c.get("attack_options") or {}).get("iterations", 0),
                canonical(_attacker_opts(c)), canonical(namer.key(c, "attack")))
    attackers = sorted(by.values(), key=order)
    scored = [(mean_of(v, "irrelevant"), v) for v in attackers]
    scored = [(a[0], v) for a, v in scored if a is not None]
    worst = max(scored, key=lambda t: t[0])[1] if len(scored) > 1 else None
    out = [f"<table class='paper'><caption>{esc(labels[row])} under stronger TTH attackers — "
           f"{esc(g['title'])}</caption><tr><th class='t'>Attacker</th><th>Irrelevant ↓</th>"
           f"<th>Relevant ↑</th><th>keywords</th><th>s</th></tr>"]
    for v in attackers:
        mark = " <b class='bad'>◀ strongest</b>" if v is worst else ""
        secs = [r.metrics.get("seconds") for r in v if r.status == "done"]
        secs = f"{sum(s for s in secs if is_number(s)):.0f}" if secs else "–"
        out.append(f"<tr><td class='t'>{esc(attacker_text(v[0], namer))}{mark}</td>"
                   + _num(v, "irrelevant") + _num(v, "relevant")
                   + f"<td>{len(v)}</td><td>{secs}</td></tr>")
    out.append("</table>")
    if worst is not None:
        out.append(f"<p class='note'>Strongest attacker on {esc(labels[row])}: "
                   f"{esc(attacker_text(worst[0], namer))}, irrelevant R@k "
                   f"{pct(mean_of(worst, 'irrelevant')[0])}%.</p>")
    return "".join(out)


def table4(all_groups: List[dict], namer: CellNamer) -> List[tuple]:
    """``(caption, html, rows)`` of each Table 4: groups of one context and attack that meet two or
    more threats; ``rows`` are ``(threat text, {defense row key: slots})`` for the targets."""
    by: Dict[str, list] = {}
    for g in all_groups:
        if g["threat"] is not None:
            by.setdefault(canonical([g["ctx"], g["attack"]]), []).append(g)
    out = []
    for gs in by.values():
        if len(gs) < 2:
            continue
        shapes = {"square": 0, "rectangle": 1, "circle": 2}   # PAIR Table 4's row order
        gs = sorted(gs, key=lambda g: (g["threat"]["threat"].get("placement") == "random",
                                       shapes.get(g["threat"]["threat"].get("shape"), 3),
                                       str(g["threat"]["threat"].get("shape")),
                                       g["threat"]["patch_area"] or 0))
        labels: Dict[tuple, str] = {}
        keys: List[tuple] = []
        for g in gs:
            main, _, lab = _rows(g["cells"], namer)
            labels.update(lab)
            keys += [k for k in main if k not in keys]
        keys.sort(key=lambda k: (order_key(k[1], DEFENSE_ORDER), k[2:]))
        defended = [k for k in keys if k[1] != "none"]
        und = next((k for k in keys if k[1] == "none"), None)
        head = ("<tr><th class='t' rowspan='2'>Patch</th>"
                + ("<th colspan='2'>Undefended</th>" if und else "")
                + "".join(f"<th colspan='4'>{esc(labels[k])}</th>" for k in defended) + "</tr><tr>"
                + ("<th>Irrelevant ↓</th><th>Relevant ↑</th>" if und else "")
                + "<th>Adaptive irr. ↓</th><th>Adaptive rel. ↑</th><th>Non-adaptive irr. ↓</th>"
                  "<th>Non-adaptive rel. ↑</th>" * len(defended) + "</tr>")
        ctx = gs[0]["ctx"]
        caption = (f"Table 4 — robustness to patch size, shape and position — {ctx['model']} on "
                   f"{ctx['dataset']}")
        body, rows = [], []
        for g in gs:
            s = slots(g, namer)
            text = threat_text(g["threat"], _image_side(ctx))
            cells = ""
            if und:
                cells += _num(s.get((und, "DO")), "irrelevant") + _num(s.get((und, "DO")),
                                                                      "relevant")
            for k in defended:
                cells += "".join(_num(s.get((k, w)), m) for w in ("adaptive", "DO")
                                 for m in ("irrelevant", "relevant"))
            body.append(f"<tr><td class='t'>{esc(text)}</td>{cells}</tr>")
            rows.append((text, s, defended))
        html = (f"<table class='paper'><caption>{esc(caption)}</caption>{head}" + "".join(body)
                + "</table>")
        out.append((caption, html, rows))
    return out


def table4_lines(rows: List[tuple]) -> List[str]:
    """Table 4's target: PAIR's adaptive irrelevant ≤ 0.05 at every threat, or where it is not."""
    values = []
    for text, s, defended in rows:
        for k in defended:
            if k[1] != "pair":
                continue
            a = mean_of(s.get((k, "adaptive")), "irrelevant")
            if a is not None:
                values.append((text, a[0]))
    if not values:
        return []
    missed = [f"{t} ({pct(v)}%)" for t, v in values if v > TARGET_IRR_PAIR]
    return [f"PAIR adaptive irrelevant ≤ {pct(TARGET_IRR_PAIR, 0)}% at every threat: "
            + ("met" if not missed else "NOT met at " + "; ".join(missed))]


__all__ = ["stronger", "attacker_text", "table4", "table4_lines"]
