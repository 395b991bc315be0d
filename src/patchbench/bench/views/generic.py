"""The fallback view for a task without its own module: one table of the task's cells, with the
config's short columns and every numeric metric (rates as stored, 3 decimals)."""
from __future__ import annotations

from typing import List, Sequence

from ._common import CellNamer, is_number

TASK = None
MAIN_METRICS = ()
_SKIP = {"seconds"}


def numeric_metrics(records: Sequence) -> List[str]:
    keys: List[str] = []
    for r in records:
        for k, v in r.metrics.items():
            if is_number(v) and k not in _SKIP and k not in keys:
                keys.append(k)
    return keys


def render(report, records, namer: CellNamer, run_dir=None) -> None:
    task = records[0].config.get("task", "?") if records else "?"
    metrics = numeric_metrics(records)
    rows, columns = [], []
    for r in records:
        row = namer.columns(r.config)
        row.update({m: r.metrics.get(m, float("nan")) for m in metrics})
        row["status"] = r.status
        row["seconds"] = r.seconds
        rows.append(row)
        columns += [k for k in row if k not in columns]
    report.heading(f"Cells of task {task!s}")
    report.paragraph(f"No report view for the task {task!r} yet: its cells are listed as stored.",
                     "note")
    text = [c for c in columns if c not in metrics and c != "seconds"]
    report.table(rows, columns, caption=f"{len(rows)} cells", text_columns=text)
