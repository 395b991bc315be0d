"""The retrieval view: content-based hashing search under AdvHash (Hu et al., ACM MM 2021) in the
layout of PAIR's Table 2 (ACM MM 2024, §5.2), its Table 3 ablations, and PAIR under stronger
attackers (a table no paper has).

* **Table 2**, one per context (model, dataset, gallery, target, k, threat, seed, ...) and main attack
  (an attack entry without a label): rows Undefended, PatchZero, SAC, MAEDefense, LGS, JPEG, PAIR
  (those present, the paper's order, others after); columns Clean mAP@k, then adaptive and
  non-adaptive, each with *irrelevant* (t-mAP@k: the target class standing in for the true label;
  lower is better) and *relevant* (mAP@k with the true labels; higher is better), in %. The
  adaptive column is the paper's attacker: the defense's own EOT draws (h_adv = 7 for PAIR /
  MAEDefense) and its gradient rule, i.e. cells whose defense options set neither ``eot_samples`` nor
  ``gradient``.
* **Variants** (Table 3 for PAIR): where a defense is given both plainly and with labels (``{name =
  "pair", mask = "fixed", label = "fixed mask"}``), the labelled entries form a second table with
  the same columns.
* **Stronger attackers**: for a defense whose adaptive cells differ in ``eot_samples``,
  ``gradient`` (defense options that change the attacker only) or the attack entry (more
  iterations), one row per attacker: t-mAP, mAP, the share of queries within Hamming radius 2 of
  the target code (ASR) and the cell's time; the strongest attacker (highest t-mAP) is marked.
* **Targets** (issue 14, on the proxies): undefended AdvHash t-mAP ≥ 0.80; PAIR under the adaptive
  EOT-7 attacker t-mAP ≤ 0.05 with clean mAP within 12 points of undefended — stated with the
  measured numbers, met or NOT met.
* **Galleries** per defense (:mod:`._retrievalpics`).
"""
from __future__ import annotations

from typing import Dict, List, Optional

from ._common import (CellNamer, canonical, ci_text, display, esc, is_number, name_of, order_key,
                      pct, varying)

TASK = "retrieval"
MAIN_METRICS = ("clean", "irrelevant", "relevant")
METRIC_LABELS = {"clean": "clean mAP@k", "irrelevant": "irrelevant t-mAP@k",
                 "relevant": "relevant mAP@k"}
#: PAIR Table 2's row order
DEFENSE_ORDER = ("none", "patchzero", "sac", "mae-defense", "lgs", "jpeg", "pair")
#: defense options that change the attacker, not the deployed defense
ATTACKER_OPTIONS = ("eot_samples", "gradient")
TARGET_TMAP_UNDEFENDED, TARGET_TMAP_PAIR, TARGET_CLEAN_GAP = 0.80, 0.05, 0.12

NOTE = ("mAP@k in % (small grey numbers: 95% intervals). Clean: the clean queries through the "
        "defense. Irrelevant: t-mAP@k of the attacked queries (the target class in place of the "
        "true label: how much of the top k the attacker fills with target items; lower is "
        "better). Relevant: mAP@k of the attacked queries with their true labels (higher is "
        "better). Non-adaptive: AdvHash trained on the bare hasher; adaptive: on hasher∘defense "
        "(EOT over a randomised defense's draws, BPDA where it is not differentiable). Queries of "
        "the target class are scored clean only.")


def owns_galleries(records) -> set:
    """Every retrieval cell's gallery is shown here (its own format)."""
    return {r.key for r in records}


def _strip(cfg: dict) -> dict:
    opts = cfg.get("defense_options") if isinstance(cfg.get("defense_options"), dict) else {}
    return {**cfg, "defense_options": {k: v for k, v in opts.items() if k not in ATTACKER_OPTIONS}}


def _attacker_opts(cfg: dict) -> dict:
    opts = cfg.get("defense_options") if isinstance(cfg.get("defense_options"), dict) else {}
    return {k: opts[k] for k in ATTACKER_OPTIONS if k in opts}


def _context(cfg: dict, namer: CellNamer) -> dict:
    ctx = {k: cfg.get(k) for k in ("model", "dataset", "seed", "target", "k", "purify_gallery")}
    ctx.update({k: cfg.get(k) or {} for k in ("model_options", "dataset_options")})
    ctx.update({k: cfg.get(k) for k in namer.extra if k not in ("target", "k", "purify_gallery")})
    return ctx


def _threat_of(cfg: dict) -> dict:
    return {"patch_area": cfg.get("patch_area"), "threat": cfg.get("threat") or {}}


def groups(records, namer: CellNamer) -> List[dict]:
    """One group per context × threat × main attack variant: ``{"ctx", "threat", "attack" (namer
    key), "title", "cells": [records], "benign": [records]}``."""
    benign: Dict[str, list] = {}
    out: Dict[str, dict] = {}
    for r in records:
        cfg = r.config
        ctx = _context(cfg, namer)
        if name_of(cfg, "attack") == "none":
            benign.setdefault(canonical(ctx), []).append(r)
            continue
        key = canonical([ctx, _threat_of(cfg)])
        g = out.setdefault(key, {"ctx": ctx, "threat": _threat_of(cfg), "cells": []})
        g["cells"].append(r)
    result = []
    for g in out.values():
        attacks = {namer.key(r.config, "attack") for r in g["cells"]}
        main = sorted(a for a in attacks if not a[2]) or sorted(attacks)
        for a in main:
            result.append({**g, "attack": a, "benign": benign.get(canonical(g["ctx"]), [])})
    for key, recs in benign.items():           # benign cells of a context without any attack
        if not any(canonical(g["ctx"]) == key for g in result):
            result.append({"ctx": _context(recs[0].config, namer), "threat": None, "attack": None,
                           "cells": [], "benign": recs})
    shown = varying([{**g["ctx"], **(g["threat"] or {})} for g in result])
    for g in result:
        g["title"] = _title(g, shown, namer)
    result.sort(key=lambda g: g["title"])
    return result


def _title(g: dict, shown: List[str], namer: CellNamer) -> str:
    ctx = g["ctx"]
    cap = f"{ctx['model']} on {ctx['dataset']}"
    if ctx.get("target") is not None:
        cap += f", target class {ctx['target']}"
    if g["threat"] is not None:
        t = g["threat"]
        geometry = ", ".join(str(t["threat"][k]) for k in ("shape", "placement") if k in t["threat"])
        area = t["patch_area"]
        cap += (f" — patch area {100 * area:g}%" if is_number(area) else "") + \
            (f" ({geometry})" if geometry else "")
        rec = next(r.config for r in g["cells"] if namer.key(r.config, "attack") == g["attack"])
        cap += f" — {namer.variant(rec, 'attack')}"
    extra = [f"{k}={display(ctx[k])}" for k in shown
             if k in ctx and k not in ("model", "dataset", "target")]
    return cap + (f" · {', '.join(extra)}" if extra else "")


def _rows(records, namer: CellNamer):
    """``(main row keys, variant row keys, labels)`` of a group's defenses (attacker options
    stripped); a defense given both plainly and with labels keeps the plain one(s) in Table 2."""
    labels: Dict[tuple, str] = {}
    for r in records:
        cfg = _strip(r.config)
        labels[namer.key(cfg, "defense")] = namer.variant(cfg, "defense")
    plain = {k[1] for k in labels if not k[2]}
    main = [k for k in labels if not k[2] or k[1] not in plain]
    variants = [k for k in labels if k[2] and k[1] in plain]
    order = lambda k: (order_key(k[1], DEFENSE_ORDER), k[2:])  # noqa: E731
    return sorted(main, key=order), sorted(variants, key=order), labels


def slots(g: dict, namer: CellNamer) -> Dict[tuple, object]:
    """``(row key, "none" | "DO" | "adaptive") → record`` for Table 2 (the paper's attacker)."""
    out: Dict[tuple, object] = {}
    for r in g["benign"]:
        out.setdefault((namer.key(_strip(r.config), "defense"), "none"), r)
    for r in g["cells"]:
        cfg = r.config
        if namer.key(cfg, "attack") != g["attack"] or _attacker_opts(cfg):
            continue
        who = "adaptive" if cfg.get("adaptive") else "DO"
        slot = (namer.key(_strip(cfg), "defense"), who)
        if slot not in out or (r.status == "done" and out[slot].status != "done"):
            out[slot] = r
    return out


def _num(r, metric: str) -> str:
    if r is None:
        return "<td>–</td>"
    if r.status != "done":
        return "<td><a class='bad' href='#failed'>failed</a></td>"
    m = r.metrics
    ci = ci_text(m.get(f"{metric}_ci"))
    tip = f"n_queries={m.get('n_queries')}, n={m.get('n')}, k={m.get('k')}"
    if is_number(m.get("asr")):
        tip += f", ASR {pct(m['asr'])}% of {m.get('asr_n')}"
    return (f"<td><span class='num' title='{esc(tip)}'><b>{pct(m.get(metric))}</b></span>"
            + (f"<div class='ci'>[{ci}]</div>" if ci else "") + "</td>")


def _clean_of(s: dict, row) -> Optional[object]:
    """The benign cell of a row, else the clean mAP every attacked cell also measures."""
    for who in ("none", "DO", "adaptive"):
        r = s.get((row, who))
        if r is not None and r.status == "done":
            return r
    return s.get((row, "none"))


def table_html(caption: str, rows: List[tuple], labels: Dict[tuple, str], s: dict) -> str:
    """Table 2's layout for ``rows`` (failed cells read “failed”)."""
    out = [f"<table class='paper'><caption>{esc(caption)}</caption>"
           "<tr><th class='t' rowspan='2'>Defense</th><th rowspan='2'>Clean</th>"
           "<th colspan='2'>Adaptive</th><th colspan='2'>Non-adaptive</th></tr>"
           "<tr><th>Irrelevant ↓</th><th>Relevant ↑</th><th>Irrelevant ↓</th><th>Relevant ↑</th>"
           "</tr>"]
    for row in rows:
        do, ad = s.get((row, "DO")), s.get((row, "adaptive"))
        if row[1] == "none":
            ad = do           # an adaptive attacker on the bare hasher is the non-adaptive one
        out.append(f"<tr><td class='t'>{esc(labels[row])}</td>{_num(_clean_of(s, row), 'clean')}"
                   + _num(ad, "irrelevant") + _num(ad, "relevant")
                   + _num(do, "irrelevant") + _num(do, "relevant") + "</tr>")
    out.append("</table>")
    return "".join(out)


def attacker_text(r, namer: CellNamer) -> str:
    """``"adaptive · EOT 7 · exact gradient (both passes) · AdvHash"``, or ``"non-adaptive ·
    AdvHash"``."""
    cfg = r.config
    if not cfg.get("adaptive"):
        return f"non-adaptive · {namer.variant(cfg, 'attack')}"
    eot = r.metrics.get("eot_samples") if r.status == "done" else None
    eot = eot if is_number(eot) else _attacker_opts(cfg).get("eot_samples", "default")
    grad = _attacker_opts(cfg).get("gradient", "the defense's rule")
    if grad == "exact" or (name_of(cfg, "defense") in ("pair", "mae-defense") and
                           grad == "the defense's rule"):
        passes = (cfg.get("defense_options") or {}).get("passes")
        grad = "exact gradient" + (" (both passes)" if name_of(cfg, "defense") == "pair"
                                   and passes in (None, 2) else "")
    elif grad == "bpda-identity":
        grad = "BPDA (identity) through the reconstruction"
    return f"adaptive · EOT {eot} · {grad} · {namer.variant(cfg, 'attack')}"


def stronger(g: dict, row, labels: Dict[tuple, str], namer: CellNamer) -> Optional[str]:
    """The stronger-attacker table of one defense row, or None when it met one attacker only."""
    cells = [r for r in g["cells"] if namer.key(_strip(r.config), "defense") == row]
    adaptive = [r for r in cells if r.config.get("adaptive")]
    if row[1] == "none" or len({canonical([_attacker_opts(r.config), namer.key(r.config, "attack")])
                                for r in adaptive}) < 2:
        return None

    def order(r):
        a = (r.config.get("attack_options") or {})
        return (bool(r.config.get("adaptive")), a.get("iterations", 0),
                canonical(_attacker_opts(r.config)), canonical(namer.key(r.config, "attack")))
    cells.sort(key=order)
    done = [r for r in cells if r.status == "done" and is_number(r.metrics.get("irrelevant"))]
    worst = max(done, key=lambda r: r.metrics["irrelevant"]) if done else None
    out = [f"<table class='paper'><caption>{esc(labels[row])} under stronger attackers — "
           f"{esc(g['title'])}</caption><tr><th class='t'>Attacker</th><th>Irrelevant ↓</th>"
           f"<th>Relevant ↑</th><th>ASR (d<sub>H</sub> ≤ 2)</th><th>queries</th><th>s</th></tr>"]
    for r in cells:
        mark = " <b class='bad'>◀ strongest</b>" if r is worst and len(done) > 1 else ""
        m = r.metrics
        secs = f"{m['seconds']:.0f}" if is_number(m.get("seconds")) else "–"
        out.append(f"<tr><td class='t'>{esc(attacker_text(r, namer))}{mark}</td>"
                   + _num(r, "irrelevant") + _num(r, "relevant")
                   + f"<td>{pct(m.get('asr'))}</td><td>{m.get('n_queries', '–')}</td>"
                   f"<td>{secs}</td></tr>")
    out.append("</table>")
    if worst is not None and len(done) > 1:
        out.append(f"<p class='note'>Strongest attacker on {esc(labels[row])}: "
                   f"{esc(attacker_text(worst, namer))}, t-mAP {pct(worst.metrics['irrelevant'])}%."
                   "</p>")
    return "".join(out)


def target_lines(g: dict, s: dict, rows: List[tuple]) -> List[str]:
    """The issue's targets on this table, each with its measured numbers, met or NOT met."""
    out = []

    def val(row, who, metric):
        r = s.get((row, who))
        v = r.metrics.get(metric) if r is not None and r.status == "done" else None
        return v if is_number(v) else None

    und = next((k for k in rows if k[1] == "none"), None)
    pair = next((k for k in rows if k[1] == "pair"), None)
    if und is not None and val(und, "DO", "irrelevant") is not None:
        v = val(und, "DO", "irrelevant")
        out.append(f"Undefended AdvHash t-mAP {pct(v)}% (target ≥ {pct(TARGET_TMAP_UNDEFENDED, 0)}%): "
                   + ("met" if v >= TARGET_TMAP_UNDEFENDED else "NOT met"))
    if pair is not None and val(pair, "adaptive", "irrelevant") is not None:
        v = val(pair, "adaptive", "irrelevant")
        r = s.get((pair, "adaptive"))
        eot = r.metrics.get("eot_samples")
        out.append(f"PAIR under the adaptive attacker (EOT {eot}) t-mAP {pct(v)}% (target ≤ "
                   f"{pct(TARGET_TMAP_PAIR, 0)}%): " + ("met" if v <= TARGET_TMAP_PAIR else "NOT met"))
    cu = _clean_of(s, und) if und is not None else None
    cp = _clean_of(s, pair) if pair is not None else None
    if cu is not None and cp is not None and cu.status == cp.status == "done" \
            and is_number(cu.metrics.get("clean")) and is_number(cp.metrics.get("clean")):
        gap = cu.metrics["clean"] - cp.metrics["clean"]
        out.append(f"PAIR clean mAP {pct(cp.metrics['clean'])}% vs undefended "
                   f"{pct(cu.metrics['clean'])}%: {100 * gap:.1f} points lower (target ≤ "
                   f"{100 * TARGET_CLEAN_GAP:.0f}): " + ("met" if gap <= TARGET_CLEAN_GAP else
                                                        "NOT met"))
    return out


def render(report, records, namer: CellNamer, run_dir=None) -> None:
    """Table 2 (and Table 3, stronger attackers, targets, galleries) of the retrieval cells."""
    from ._retrievalpics import PICTURE_BUDGET, gallery_section
    report.heading("Hashing retrieval under AdvHash (PAIR Table 2 layout)")
    report.paragraph(NOTE, "note")
    state = {"budget": PICTURE_BUDGET}
    for g in groups(records, namer):
        main, variants, labels = _rows(g["cells"] + g["benign"], namer)
        s = slots(g, namer)
        report.heading(g["title"], 3)
        report.raw_html(table_html(f"Table 2 — {g['title']}", main, labels, s))
        if variants:
            names = {k[1] for k in variants}
            what = ("PAIR ablations (Table 3; PAIR = random mask + semantic discriminator)"
                    if names == {"pair"} else "Variants")
            rows = [k for k in main if k[1] in names] + variants
            report.raw_html(table_html(f"{what} — {g['title']}", rows, labels, s))
        for row in main + variants:
            t = stronger(g, row, labels, namer)
            if t:
                report.raw_html(t)
        lines = target_lines(g, s, main)
        if lines:
            report.paragraph("Targets (issue 14, on the proxies): " + "; ".join(lines) + ".",
                             "note")
        if run_dir is not None:
            gallery_section(report, run_dir, g, main + variants, labels, s, state)


__all__ = ["render", "owns_galleries", "groups", "slots", "table_html", "stronger",
           "attacker_text", "target_lines", "TASK", "MAIN_METRICS", "METRIC_LABELS"]
