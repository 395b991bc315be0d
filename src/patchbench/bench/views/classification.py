"""The classification view: PatchZero (Xu et al., WACV 2023) Table 1 layout, and robust accuracy vs
patch area and vs attack steps.

One table per (model, dataset, patch area) — and per any other context field that varies (threat
geometry, seed, model/dataset options). Rows are defenses (undefended first, the GT-mask oracle last);
columns are the benign accuracy, then per attack "DO / adaptive" robust accuracy: DO = the attack on
the bare classifier, adaptive = the attack on model∘defense, and the certified accuracy where a
defense reports one (PatchCleanser). Each number carries its 95% interval and, where it differs
within a table, its n.

Runs without any defense (the bundled ``demo``) get :mod:`._success` instead: one table of attack
success over the correctly classified images, with intervals, and success vs patch area and vs
iterations.

Option sweeps: where one defense's cells of one table differ in a single numeric option with at least
three values (ELGS's λ sweep of LGS/SLGS/WLGS, Tables 1–2 and Fig. 5), the table keeps the value with
the most cells and a sweep table and plot follow: benign and DO accuracy (and their average) vs the
option.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, Optional

from ._common import (ATTACK_ORDER, DEFENSE_ORDER, CellNamer, area_text, attack_label, attacker_of,
                      canonical, ci_text, esc, is_number, name_of, options_text, order_key, pct,
                      user_label, varying)
from ._plots import color_for, line_figure
from . import _success, defensive

TASK = "classification"
MAIN_METRICS = ("clean_acc", "robust_acc")
METRIC_LABELS = {"clean_acc": "benign acc", "robust_acc": "robust acc", "asr": "ASR"}
MAX_FIGURES = 12
MIN_SWEEP_VALUES = 3        # fewer values: two variants side by side, not a sweep
SWEEP_NAMES = {"smoothing_factor": "λ"}

#: the defensive-patch view shows its cells' stored images itself
owns_galleries = defensive.owns_galleries

NOTE = ("Accuracy in %; small grey numbers: the 95% interval, and the number of images n where it "
        "is not the one in the table's caption. Each attack column reads “DO / adaptive”: DO = the "
        "attack on the bare classifier (the defense is unknown to it); adaptive = the same attack on "
        "model∘defense (its gradient rule is in the last column). The undefended row has one number: "
        "both attackers see the same model. The GT-mask oracle repaints the true patch pixels: an "
        "upper bound of any removal defense.")


def render(report, records, namer: CellNamer, run_dir=None) -> None:
    """Append the tables and plots of the classification cells ``records`` (failed ones included:
    their place in a table reads “failed”) to ``report``. Cells with a sticker, a corruption or
    whole-image FGSM / PGD-L∞ noise (and their plain benign baselines) go to the defensive-patch
    view (:mod:`.defensive`)."""
    mine, records = defensive.split(records)
    if mine:
        defensive.render(report, mine, namer, run_dir)
    if not records:
        return
    if _success.attack_only(records):
        _render_attack_only(report, records, namer)
        return
    main, sweeps = _split_sweeps(records, namer)
    if sweeps:                  # the swept option no longer varies in the main tables' labels
        namer = CellNamer(r.config for r in main)
    tables = _tables(main, namer)
    report.heading("Benign and robust accuracy")
    report.paragraph(NOTE, "note")
    for t in tables:
        report.raw_html(t)
    for sweep in sweeps:
        _render_sweep(report, sweep, namer)
    figures = _area_figures(main, namer) + _steps_figures(main, namer)
    if figures:
        report.heading("Plots")
        for fig, caption in figures[:MAX_FIGURES]:
            report.figure(fig(), caption)
        if len(figures) > MAX_FIGURES:
            report.paragraph(f"{len(figures) - MAX_FIGURES} more plots not shown (the page shows at "
                             f"most {MAX_FIGURES}).", "note")


def _render_attack_only(report, records, namer: CellNamer) -> None:
    """A run without defenses (the demo): the success table and plots of :mod:`._success` instead
    of a one-row defense table per context."""
    report.heading("Attack success")
    report.paragraph(_success.NOTE, "note")
    table = _success.table_html(records, namer)
    if table:
        report.raw_html(table)
    else:
        report.paragraph("No attacked cell is done yet.", "note")
    figures = _success.figures(records, namer)
    if figures:
        report.heading("Plots")
        for fig, caption in figures[:MAX_FIGURES]:
            report.figure(fig(), caption)


#: the key numbers of an attack-only run for a page's headline (``[(title, html)]``)
headline = _success.headline


# ---- option sweeps ------------------------------------------------------------------------------
def _split_sweeps(records, namer: CellNamer):
    """``(records for the main tables, sweeps)``. A sweep is one defense's cells of one context whose
    options differ in exactly one numeric option, with ≥ ``MIN_SWEEP_VALUES`` values (or ≥ 2 where
    another defense of the context sweeps the same option: ELGS sweeps LGS, SLGS and WLGS together).
    The main tables keep the value with the most cells (the table's own, with all its attacks), or
    none when no value has more cells than the others."""
    groups: Dict[str, dict] = {}
    for r in records:
        cfg = r.config
        if name_of(cfg, "defense") == "none":
            continue
        ctx = _context(cfg, namer, True)
        key = canonical([ctx, name_of(cfg, "defense"), user_label(cfg, "defense")])
        groups.setdefault(key, {"ctx": ctx, "records": []})["records"].append(r)
    candidates = []
    for g in groups.values():
        opts = [r.config.get("defense_options") or {} for r in g["records"]]
        keys = varying(opts)
        if len(keys) == 1 and all(is_number(o.get(keys[0])) for o in opts):
            candidates.append((g, keys[0], Counter(o[keys[0]] for o in opts), opts))
    swept = {canonical([g["ctx"], option]) for g, option, values, _ in candidates
             if len(values) >= MIN_SWEEP_VALUES}
    drop = set()
    merged: Dict[str, dict] = {}
    for g, option, values, opts in candidates:
        where = canonical([g["ctx"], option])
        if where not in swept:
            continue
        ranked = values.most_common()
        main = ranked[0][0] if len(ranked) == 1 or ranked[0][1] > ranked[1][1] else None
        drop.update(id(r) for r, o in zip(g["records"], opts) if o[option] != main)
        m = merged.setdefault(where, {"ctx": g["ctx"], "option": option, "records": [],
                                      "main": set()})
        m["records"] += g["records"]
        if main is not None:
            m["main"].add(main)
    main_records = [r for r in records if id(r) not in drop]
    return main_records, [merged[k] for k in sorted(merged)]


def _render_sweep(report, sweep: dict, namer: CellNamer) -> None:
    option, ctx = sweep["option"], sweep["ctx"]
    symbol = SWEEP_NAMES.get(option, option)
    sweep_namer = CellNamer(r.config for r in sweep["records"])
    rows: Dict[tuple, dict] = {}
    attacks: Dict[tuple, str] = {}
    for r in sweep["records"]:
        cfg = r.config
        who = attacker_of(cfg)
        if r.status != "done" or who == "adaptive":
            continue
        defense = {k: v for k, v in namer.options(cfg, "defense").items() if k != option}
        label = namer.variant({**cfg, "defense_options": defense}, "defense")
        value = (cfg.get("defense_options") or {})[option]
        row = rows.setdefault((order_key(name_of(cfg, "defense"), DEFENSE_ORDER), label, value),
                              {"method": label, option: value})
        if who == "none":
            row["benign"] = r.metrics.get("clean_acc")
        else:
            col = sweep_namer.key(cfg, "attack")
            attacks[col] = sweep_namer.variant(cfg, "attack")
            row[col] = r.metrics.get("robust_acc")
    # the attacks the sweep ran (at several values), not those of the main table's value only
    cols = sorted((c for c in attacks if len({k[2] for k, row in rows.items() if c in row}) > 1),
                  key=lambda k: (order_key(k[1], ATTACK_ORDER), k[2:]))
    if not rows or not cols:
        return
    title = f"{ctx['model']} on {ctx['dataset']}, patch area {area_text(ctx.get('patch_area'))}"
    head = "".join(f"<th>{esc(attacks[c])} DO</th>" for c in cols)
    average = len(cols) == 1
    out = [f"<table class='paper'><caption>{esc(title)}: accuracy vs {esc(symbol)}</caption>"
           f"<tr><th class='t'>Defense</th><th>{esc(symbol)}</th><th>Benign</th>{head}"
           + ("<th>Average</th>" if average else "") + "</tr>"]
    series: Dict[str, list] = {}
    styles: Dict[str, dict] = {}
    names = sorted({k[1] for k in rows})
    for key in sorted(rows):
        row = rows[key]
        ben = row.get("benign")
        vals = [row.get(c) for c in cols]
        avg = (ben + vals[0]) / 2 if average and is_number(ben) and is_number(vals[0]) else None
        out.append(f"<tr><td class='t'>{esc(row['method'])}</td><td>{row[option]:g}</td>"
                   f"<td>{pct(ben)}</td>" + "".join(f"<td>{pct(v)}</td>" for v in vals)
                   + (f"<td>{pct(avg)}</td>" if average else "") + "</tr>")
        color = color_for(row["method"], names)
        for label, v, style in ([(f"{row['method']} — benign", ben, "--")]
                                + [(f"{row['method']} — {attacks[c]} DO", val, "-")
                                   for c, val in zip(cols, vals)]):
            series.setdefault(label, []).append((float(row[option]), v))
            styles[label] = {"color": color, "linestyle": style,
                             "marker": "s" if style == "--" else "o"}
    out.append("</table>")
    elgs = option == "smoothing_factor"
    report.heading(f"{'ELGS ' if elgs else ''}{symbol} sweep — {title}", 3)
    shown = ", ".join(f"{v:g}" for v in sorted(sweep["main"]))
    report.paragraph(f"Accuracy in % without and with the attack vs the defense's {option}"
                     + (" (ELGS, ICAART 2022, Tables 1–2 and Fig. 5)" if elgs else "")
                     + (f"; the table above shows {symbol} = {shown}." if shown else "."), "note")
    report.raw_html("".join(out))
    xs = sorted({x for pts in series.values() for x, _ in pts})
    report.figure(line_figure(series, styles, symbol, "accuracy (%)",
                              f"{ctx['model']}: accuracy vs {symbol}",
                              xticks=xs if len(xs) <= 8 else None),
                  f"Accuracy vs {symbol} — {title}. Solid: under the DO attack; dashed: benign.")


# ---- tables -------------------------------------------------------------------------------------
def _context(cfg: dict, namer: CellNamer, attacked: bool) -> dict:
    ctx = {k: cfg.get(k) for k in ("model", "dataset", "seed")}
    ctx.update({k: cfg.get(k) or {} for k in ("model_options", "dataset_options")})
    ctx.update({k: cfg.get(k) for k in namer.extra})
    if attacked:
        ctx["patch_area"] = cfg.get("patch_area")
        ctx["threat"] = cfg.get("threat") or {}
    return ctx


def _base(ctx: dict) -> str:
    return canonical({k: v for k, v in ctx.items() if k not in ("patch_area", "threat")})


def _tables(records, namer: CellNamer) -> List[str]:
    attacked: Dict[str, dict] = {}
    benign: Dict[str, list] = {}
    for r in records:
        is_attacked = name_of(r.config, "attack") != "none"
        ctx = _context(r.config, namer, is_attacked)
        if is_attacked:
            attacked.setdefault(canonical(ctx), {"ctx": ctx, "records": []})["records"].append(r)
        else:
            benign.setdefault(_base(ctx), []).append(r)
    groups = list(attacked.values())
    used = {_base(g["ctx"]) for g in groups}
    for base, recs in benign.items():         # benign cells of a context without any attack
        if base not in used:
            groups.append({"ctx": _context(recs[0].config, namer, False), "records": []})
    groups.sort(key=lambda g: (str(g["ctx"]["model"]), str(g["ctx"]["dataset"]),
                               canonical(g["ctx"].get("seed")),
                               g["ctx"].get("patch_area") if is_number(g["ctx"].get("patch_area"))
                               else -1, canonical(g["ctx"])))
    shown = varying(g["ctx"] for g in groups)
    out = []
    for g in groups:
        # the benign cells of this context; the grid may hold one per threat: the table's own first
        ben = sorted(benign.get(_base(g["ctx"]), []),
                     key=lambda r: canonical(_context(r.config, namer, True)) != canonical(g["ctx"]))
        out.append(_table(g["ctx"], g["records"], ben, namer, shown))
    return out


def _caption(ctx: dict, shown: List[str]) -> str:
    cap = f"{ctx['model']} on {ctx['dataset']}"
    if "patch_area" in ctx:
        threat = ctx.get("threat") or {}
        geometry = ", ".join(str(threat[k]) for k in ("shape", "placement") if k in threat)
        cap += f" — patch area {area_text(ctx['patch_area'])}" + (f" ({geometry})" if geometry else "")
    else:
        cap += " — no attack"
    extra = [f"{k} {ctx[k]}" if k == "seed" else f"{k}={canonical(ctx[k])}" for k in shown
             if k not in ("model", "dataset", "patch_area", "threat") and k in ctx]
    return cap + (f" · {', '.join(extra)}" if extra else "")


def _without_steps(cfg: dict) -> dict:
    opts = cfg.get("attack_options")
    opts = {k: v for k, v in opts.items() if k != "steps"} if isinstance(opts, dict) else opts
    return {**cfg, "attack_options": opts}


def _steps_share_columns(records, namer: CellNamer) -> bool:
    """True when attack steps differ only between the cells of different table positions (fewer
    iterations on an expensive adaptive row): those cells share their attack's column and say their
    steps, as they say their n. A grid of steps (several per position) keeps a column per value."""
    seen: Dict[tuple, set] = {}
    for r in records:
        cfg = r.config
        slot = (namer.key(cfg, "defense"), namer.key(_without_steps(cfg), "attack"),
                attacker_of(cfg))
        seen.setdefault(slot, set()).add(canonical(_steps(cfg)))
    return all(len(v) == 1 for v in seen.values())


def _table(ctx: dict, records, benign, namer: CellNamer, shown: List[str]) -> str:
    rows: Dict[tuple, str] = {}
    cols: Dict[tuple, str] = {}
    slots: Dict[tuple, object] = {}
    collisions = 0
    merge = _steps_share_columns(records, namer)
    for r in records:
        cfg = r.config
        row = namer.key(cfg, "defense")
        rows[row] = namer.variant(cfg, "defense")
        col_cfg = _without_steps(cfg) if merge else cfg
        col = namer.key(col_cfg, "attack")
        cols[col] = namer.variant(col_cfg, "attack")
        slot = (row, col, attacker_of(cfg))
        if slot in slots:
            collisions += 1
            if _rank(r) < _rank(slots[slot]):
                continue
        slots[slot] = r
    for r in benign:                           # the first (the table's own threat) wins
        row = namer.key(r.config, "defense")
        rows[row] = namer.variant(r.config, "defense")
        slots.setdefault((row, None, "none"), r)
    row_keys = sorted(rows, key=lambda k: (order_key(k[1], DEFENSE_ORDER), k[2:]))
    col_keys = sorted(cols, key=lambda k: (order_key(k[1], ATTACK_ORDER), k[2:]))
    ns = Counter(r.metrics.get("n") for r in slots.values() if r.status == "done")
    common_n = ns.most_common(1)[0][0] if ns else None
    steps = Counter(_steps(r.config) for r in slots.values()
                    if attacker_of(r.config) != "none") if merge else Counter()
    common_steps = steps.most_common(1)[0][0] if len(steps) > 1 else None
    certified = any("certified_acc" in r.metrics for r in slots.values())
    head = "".join(f"<th>{esc(cols[c])}<br><small>DO / adaptive</small></th>" for c in col_keys)
    out = [f"<table class='paper'><caption>{esc(_caption(ctx, shown))}"
           + (f" · n = {common_n} images per cell" + (" unless marked" if len(ns) > 1 else "")
              if ns else "")
           + (f" · {common_steps} attack steps unless marked" if common_steps is not None else "")
           + "</caption>"
           f"<tr><th class='t'>Defense</th><th>Benign</th>{head}"
           + ("<th>Certified</th>" if certified else "") + "<th class='t'>adaptive attacker</th></tr>"]
    for row in row_keys:
        ben = slots.get((row, None, "none")) or _fallback_benign(slots, row)
        cells, grads = [], set()
        for col in col_keys:
            do, ad = slots.get((row, col, "DO")), slots.get((row, col, "adaptive"))
            if ad is not None and ad.status == "done":
                g = str(ad.metrics.get("attacker", "adaptive"))
                grads.add(g[len("adaptive"):].strip(" ()") or "adaptive")
            if row[1] == "none":
                cells.append(_cell([do or ad], "robust_acc", common_n, common_steps))
            else:
                cells.append(_cell([do, ad], "robust_acc", common_n, common_steps))
        cls = " class='oracle'" if row[1] == "gt-mask" else ""
        cert = f"<td>{_cell([ben], 'certified_acc', common_n)}</td>" if certified else ""
        out.append(f"<tr{cls}><td class='t'>{esc(rows[row])}</td>"
                   f"<td>{_cell([ben], 'clean_acc', common_n)}</td>"
                   + "".join(f"<td>{c}</td>" for c in cells) + cert
                   + f"<td class='t'>{esc(', '.join(sorted(grads)))}</td></tr>")
    out.append("</table>")
    if collisions:
        out.append(f"<p class='note'>{collisions} cell(s) share a table position with another "
                   f"(e.g. a different n); the one with the most images is shown.</p>")
    return "".join(out)


def _rank(r) -> tuple:
    n = r.metrics.get("n")
    return (r.status == "done", n if is_number(n) else -1, r.finished)


def _fallback_benign(slots: dict, row) -> Optional[object]:
    """Without an attack-free cell, the benign accuracy every attacked cell also measures (its
    clean metrics are computed before the attack), from the cell with the most images."""
    cands = [r for (rw, col, who), r in slots.items() if rw == row and who == "DO" and
             r.status == "done" and "clean_acc" in r.metrics]
    return max(cands, key=_rank) if cands else None


def _cell(recs, metric: str, common_n, common_steps=None) -> str:
    """“62.5 / 40.1” over a grey “[55.0–69.5] / [33.1–47.5]” line (with n where it is not the
    table's ``common_n``, and the attack steps where they are not ``common_steps``), for 1 or 2
    records."""
    values, cis, ns, tips = [], [], [], []
    for r in recs:
        if r is None:
            values.append("–")
            cis.append("")
            continue
        if r.status != "done":
            values.append("<a class='bad' href='#failed'>failed</a>")
            cis.append("")
            tips.append(f"{attacker_of(r.config)}: failed")
            continue
        m = r.metrics
        values.append(f"<b>{pct(m.get(metric))}</b>")
        ci = ci_text(m.get(f"{metric}_ci"))
        cis.append(f"[{ci}]" if ci else "")
        notes = [f"n={m.get('n')}"] if m.get("n") != common_n else []
        if common_steps is not None and _steps(r.config) != common_steps:
            notes.append(f"{_steps(r.config)} steps")
        if notes:
            who = f"{attacker_of(r.config)} " if len(recs) > 1 else ""
            ns.append(who + ", ".join(notes))
        tips.append(_tip(r, metric))
    small = " / ".join(cis) if any(cis) else ""
    if ns:
        small += (" · " if small else "") + ", ".join(ns)
    title = f" title='{esc(' | '.join(tips))}'" if tips else ""
    return (f"<span class='num'{title}>{' / '.join(values)}</span>"
            + (f"<div class='ci'>{small}</div>" if small else ""))


def _tip(r, metric: str) -> str:
    m = r.metrics
    parts = [f"{attacker_of(r.config)}: {metric} {pct(m.get(metric))}% "
             f"[{ci_text(m.get(metric + '_ci'))}]"]
    if is_number(m.get("asr")):
        parts.append(f"ASR {pct(m['asr'])}% of {m.get('asr_n', '?')}")
    parts.append(f"n={m.get('n')}")
    if is_number(m.get("seconds")):
        parts.append(f"{m['seconds']:.1f} s")
    return ", ".join(parts)


# ---- plots --------------------------------------------------------------------------------------
def _series_plots(records, namer: CellNamer, x_of, group_of, xlabel: str, title_of, caption: str,
                  logx: bool = False):
    groups: Dict[str, dict] = {}
    defenses = sorted({name_of(r.config, "defense") for r in records},
                      key=lambda d: order_key(d, DEFENSE_ORDER))
    for r in records:
        cfg = r.config
        if r.status != "done" or attacker_of(cfg) == "none" or not is_number(x_of(cfg)):
            continue
        g = groups.setdefault(canonical(group_of(cfg)), {"cfg": cfg, "series": {}, "styles": {}})
        defense = name_of(cfg, "defense")
        who = attacker_of(cfg)
        label = namer.variant(cfg, "defense") + ("" if defense == "none" else f" — {who}")
        g["series"].setdefault(label, []).append((float(x_of(cfg)), r.metrics.get("robust_acc")))
        g["styles"][label] = {"color": color_for(defense, defenses),
                              "linestyle": "--" if who == "adaptive" else "-",
                              "marker": "s" if who == "adaptive" else "o"}
    out = []
    for g in sorted(groups.values(), key=lambda g: canonical(group_of(g["cfg"]))):
        xs = sorted({x for pts in g["series"].values() for x, _ in pts})
        if not any(len({x for x, _ in pts}) > 1 for pts in g["series"].values()):
            continue            # no line with two x values: nothing to plot against
        title = title_of(g["cfg"])
        out.append(((lambda g=g, title=title, xs=xs: line_figure(
            g["series"], g["styles"], xlabel, "robust accuracy (%)", title, logx=logx and
            xs[-1] / max(xs[0], 1e-12) > 10, xticks=xs if len(xs) <= 8 else None)),
            f"{caption} — {title}. Solid: DO attacker; dashed: adaptive attacker."))
    return out


def _area_figures(records, namer: CellNamer):
    def group(cfg):
        threat = cfg.get("threat") or {}
        return {**_context(cfg, namer, False), "threat": threat,
                "attack": namer.key(cfg, "attack")}

    return _series_plots(records, namer, lambda c: _scaled(c.get("patch_area")), group,
                         "patch area (% of the image)",
                         lambda c: f"{c.get('model')} on {c.get('dataset')}, "
                                   f"{namer.variant(c, 'attack')}",
                         "Robust accuracy vs patch area")


def _scaled(area):
    return 100 * area if is_number(area) else None


def _steps(cfg):
    opts = cfg.get("attack_options")
    return opts.get("steps") if isinstance(opts, dict) else None


def _steps_figures(records, namer: CellNamer):
    def group(cfg):
        opts = {k: v for k, v in namer.options(cfg, "attack").items() if k != "steps"}
        return {**_context(cfg, namer, True), "attack": namer.key(cfg, "attack")[:3] + (opts,)}

    def title(cfg):
        opts = {k: v for k, v in namer.options(cfg, "attack").items() if k != "steps"}
        name = attack_label(name_of(cfg, "attack")) + (f" ({options_text(opts)})" if opts else "")
        return (f"{cfg.get('model')} on {cfg.get('dataset')}, {name}, "
                f"area {area_text(cfg.get('patch_area'))}")

    return _series_plots(records, namer, _steps, group, "attack steps", title,
                         "Robust accuracy vs attack steps", logx=True)
