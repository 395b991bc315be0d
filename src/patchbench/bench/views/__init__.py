"""Per-task report views, dispatched by the ``"task"`` of the stored cells.

A task's view is one module here, named after the task (``"face-detection"`` →
``face_detection.py``), defining:

* ``TASK``: the task's name (``"classification"``);
* ``MAIN_METRICS``: the metrics a comparison page puts side by side (``("clean_acc", ...)``);
* ``METRIC_LABELS`` (optional): their column titles (``{"clean_acc": "benign acc"}``);
* ``render(report, records, namer, run_dir=None)``: append the task's tables and plots to a
  :class:`~patchbench.bench.report.Report`; ``records`` are the run's ``CellRecord`` of that task,
  failed ones included, ``namer`` a :class:`CellNamer` of the whole run and ``run_dir`` the run's
  folder (its ``gallery/`` files and ``experiment.json``; ``None`` when there is none);
* ``owns_galleries(records)`` (optional): the keys of the cells whose stored gallery the view
  shows itself (the page's generic galleries skip them).

A task without a module gets :mod:`.generic`: one flat table of its cells and numeric metrics.
"""
from __future__ import annotations

import importlib
import re
from types import ModuleType
from typing import Dict, List, Sequence

from ..._registry import normalize_name
from . import generic
from ._common import CellNamer

__all__ = ["CellNamer", "view_for", "render", "main_metrics", "metric_labels", "task_of",
           "owned_galleries"]


def task_of(record) -> str:
    """The task of a stored cell (``"classification"`` when the config does not say)."""
    task = record.config.get("task") if isinstance(record.config, dict) else None
    return normalize_name(task).strip() if task else "classification"


def view_for(task: str) -> ModuleType:
    """The view module of ``task``, or :mod:`.generic` when there is none."""
    name = normalize_name(task).strip()
    module = name.replace("-", "_")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", module):
        return generic
    try:
        mod = importlib.import_module(f"{__name__}.{module}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{module}":
            return generic
        raise
    return mod if getattr(mod, "TASK", None) == name else generic


def by_task(records: Sequence) -> Dict[str, List]:
    out: Dict[str, List] = {}
    for r in records:
        out.setdefault(task_of(r), []).append(r)
    return out


def render(report, records: Sequence, namer: CellNamer, run_dir=None) -> None:
    """Each task's view on its cells, tasks in name order (a heading per task when several);
    ``run_dir``: the run's folder, for the views that read its gallery files or artifacts."""
    tasks = by_task(records)
    for task in sorted(tasks):
        if len(tasks) > 1:
            report.heading(f"Task: {task}")
        view_for(task).render(report, tasks[task], namer, run_dir=run_dir)


def owned_galleries(records: Sequence) -> set:
    """Keys of the cells whose stored gallery their task's view shows itself."""
    out = set()
    for task, recs in by_task(records).items():
        own = getattr(view_for(task), "owns_galleries", None)
        if callable(own):
            out |= set(own(recs))
    return out


def main_metrics(task: str, records: Sequence = ()) -> List[str]:
    """The metrics to compare for ``task``: its view's ``MAIN_METRICS``, else every numeric metric
    of ``records`` but the timing."""
    mod = view_for(task)
    if getattr(mod, "MAIN_METRICS", None):
        return list(mod.MAIN_METRICS)
    return generic.numeric_metrics(records)


def metric_labels(task: str) -> Dict[str, str]:
    """Column titles of ``task``'s metrics (the metric's own name where the view gives none)."""
    return dict(getattr(view_for(task), "METRIC_LABELS", None) or {})
