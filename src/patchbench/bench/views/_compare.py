"""The comparison page of several runs: the cells they share (same config hash) side by side with the
deltas of each task's main metrics against the first run, then the cells found in one run only.

A delta of a rate is in percentage points; it is marked * (and shaded darker) when the two 95%
intervals do not overlap — a difference larger than the sampling noise of either cell.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

from . import by_task, main_metrics, metric_labels
from ._common import CellNamer, esc, is_number, pct

MAX_ROWS = 500


def _is_rate(metric: str, recs) -> bool:
    return metric.endswith(("_acc", "asr", "_rate")) or any(f"{metric}_ci" in r.metrics for r in recs)


def _value(rec, metric: str, rate: bool) -> str:
    if rec is None:
        return "<td class='note'>—</td>"
    if rec.status != "done":
        return "<td class='bad'>failed</td>"
    v = rec.metrics.get(metric)
    text = pct(v) if rate else (f"{v:.4g}" if is_number(v) else "–")
    return f"<td class='num'>{text}</td>"


def _overlap(a, b) -> bool:
    def ok(ci):
        return isinstance(ci, (list, tuple)) and len(ci) == 2 and all(is_number(c) for c in ci)
    if not (ok(a) and ok(b)):
        return True
    return a[0] <= b[1] and b[0] <= a[1]


def _delta(base, other, metric: str, rate: bool) -> tuple:
    """``(html cell, changed, significant)``."""
    if base is None or other is None or base.status != "done" or other.status != "done":
        return "<td></td>", False, False
    a, b = base.metrics.get(metric), other.metrics.get(metric)
    if not (is_number(a) and is_number(b)) or a != a or b != b:
        return "<td>–</td>", False, False
    d = b - a
    if d == 0:
        return "<td class='num note'>0</td>", False, False
    sig = rate and not _overlap(base.metrics.get(f"{metric}_ci"), other.metrics.get(f"{metric}_ci"))
    text = f"{100 * d:+.1f}" if rate else f"{d:+.4g}"
    return (f"<td class='num {'sig' if sig else 'chg'}'>{text}{' *' if sig else ''}</td>", True, sig)


def render_comparison(report, runs: Sequence[tuple], namer: CellNamer) -> None:
    """``runs``: ``(label, href of its page, run dir, records)`` per run, the first the baseline."""
    labels = [r[0] for r in runs]
    maps = [{rec.key: rec for rec in r[3]} for r in runs]
    keys = sorted({k for m in maps for k in m},
                  key=lambda k: namer.sort_key(next(m[k] for m in maps if k in m).config))
    shared = [k for k in keys if sum(k in m for m in maps) >= 2]
    _runs_table(report, runs)
    report.heading("Cells in several runs")
    if not shared:
        report.paragraph("The runs have no cell in common: no two cells share a config hash (a "
                         "different grid, other options, or retrained artifacts change the hash).",
                         "note")
    groups = by_task([next(m[k] for m in maps if k in m) for k in shared])
    for task in sorted(groups):
        _shared_table(report, task, [r.key for r in groups[task]], maps, labels, namer)
    report.heading("Cells in one run only")
    for label, m in zip(labels, maps):
        only = [k for k in keys if k in m and sum(k in o for o in maps) == 1]
        if not only:
            report.paragraph(f"{label}: none.", "note")
            continue
        rows = [{**namer.columns(m[k].config), "status": m[k].status} for k in only[:MAX_ROWS]]
        report.table(rows, caption=f"Only in {label}: {len(only)} cells"
                     + (f" (first {MAX_ROWS} shown)" if len(only) > MAX_ROWS else ""),
                     text_columns=list(rows[0]))


def _runs_table(report, runs) -> None:
    out = ["<table><caption>Runs compared (Δ columns: each run minus the first)</caption><tr>"
           "<th class='t'>run</th><th class='t'>folder</th><th class='t'>experiment</th>"
           "<th>done</th><th>failed</th><th>compute</th></tr>"]
    for label, href, run_dir, recs in runs:
        exps = sorted({str(r.config.get("experiment", "?")) for r in recs})
        done = sum(r.status == "done" for r in recs)
        out.append(f"<tr><td class='t'><a href='{esc(href)}'>{esc(label)}</a></td>"
                   f"<td class='t'><code>{esc(run_dir)}</code></td><td class='t'>"
                   f"{esc(', '.join(exps) or '–')}</td><td>{done}</td><td>{len(recs) - done}</td>"
                   f"<td>{sum(r.seconds for r in recs) / 60:.1f} min</td></tr>")
    out.append("</table>")
    report.raw_html("".join(out))


def _shared_table(report, task: str, keys: List[str], maps: List[Dict], labels: List[str],
                  namer: CellNamer) -> None:
    recs = [m[k] for k in keys for m in maps if k in m]
    metrics = main_metrics(task, recs)
    names = metric_labels(task)
    rates = {m: _is_rate(m, recs) for m in metrics}
    firsts = {k: next(m[k] for m in maps if k in m) for k in keys}
    described = {k: namer.columns(firsts[k].config) for k in keys}
    cols = list(described[keys[0]])
    same = [c for c in cols if len({described[k].get(c) for k in keys}) == 1]
    cols = [c for c in cols if c not in same]
    sub = []
    for m in metrics:
        name = esc(names.get(m, m))
        sub += [f"<th>{name}<br><small>{esc(lab)}</small></th>" for lab in labels]
        sub += [f"<th>Δ {name}<br><small>{esc(lab)}{' (pp)' if rates[m] else ''}</small></th>"
                for lab in labels[1:]]
    head = "<tr>" + "".join(f"<th class='t'>{esc(c)}</th>" for c in cols) + "".join(sub) + "</tr>"
    rows, changed, significant = {}, [], 0
    for k in keys:
        cells = "".join(f"<td class='t'>{esc(described[k][c])}</td>" for c in cols)
        row_changed = row_sig = False
        for m in metrics:
            cells += "".join(_value(mp.get(k), m, rates[m]) for mp in maps)
            for mp in maps[1:]:
                html, ch, sig = _delta(maps[0].get(k), mp.get(k), m, rates[m])
                cells += html
                row_changed |= ch
                row_sig |= sig
        rows[k] = f"<tr>{cells}</tr>"
        if row_changed:
            changed.append(k)
        significant += row_sig
    common = ", ".join(f"{c} {described[keys[0]][c]}" for c in same if described[keys[0]][c])
    report.paragraph(f"{task}: {len(keys)} cells in at least two runs"
                     + (f" (all: {common})" if common else "") + f"; {len(changed)} differ in "
                     f"{', '.join(names.get(m, m) for m in metrics)}; {significant} by more than "
                     f"their 95% intervals (*). Accuracy in %, deltas in percentage points.")

    def table(ks, caption):
        body = "".join(rows[k] for k in ks[:MAX_ROWS])
        more = f" (first {MAX_ROWS} shown)" if len(ks) > MAX_ROWS else ""
        return f"<table><caption>{esc(caption + more)}</caption>{head}{body}</table>"

    if changed:
        report.raw_html(table(changed, f"The {len(changed)} cells that differ"))
        report.raw_html(f"<details><summary>All {len(keys)} shared cells</summary>"
                        f"{table(keys, 'All shared cells')}</details>")
    else:
        report.raw_html(table(keys, f"All {len(keys)} shared cells (no difference)"))
