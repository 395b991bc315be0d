"""Line plots for the views: matplotlib (Agg backend), readable on a 1400-px screen (issue 16).

* At least :data:`MIN_WIDTH_PX` (1000) px wide at the page's 100 dpi, at most ~1300 px.
* At most :data:`MAX_LINES` (6) lines per panel: more series are split into small multiples that
  share their axes — by the part of the label after the last " — " (the attacker: "DO" /
  "adaptive"), then into balanced chunks. A series without that suffix (the undefended model, a
  reference) is drawn in every panel it fits in.
* Fonts of at least 10 pt (legend 10, ticks 10, labels 11, titles 12); each panel has its own
  legend, below the axes when it does not fit inside.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

Point = Tuple[float, float]
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22")
MAX_LINES = 6               # lines per panel
MIN_WIDTH_PX, DPI = 1000, 100
FONTS = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "figure.titlesize": 12}
SEP = " — "


def color_for(name: str, names: Sequence[str]) -> str:
    """The same colour for the same name in every figure of a page."""
    return _COLORS[list(names).index(name) % len(_COLORS)] if name in names else "#444444"


def _chunks(items: List[str], size: int) -> List[List[str]]:
    """``items`` in order, in ``ceil(len / size)`` chunks of balanced length."""
    k = max(1, math.ceil(len(items) / size))
    step = math.ceil(len(items) / k)
    return [items[i:i + step] for i in range(0, len(items), step)]


def split_panels(labels: Sequence[str], max_lines: int = MAX_LINES) -> List[List[str]]:
    """The series of each panel: all of them in one when there are at most ``max_lines``;
    otherwise one group per label suffix (after the last " — ", e.g. the attacker), the labels
    without a suffix (references) added to every group they fit in, and a group still too large
    cut into balanced chunks. Every label is in at least one panel; none has more than
    ``max_lines``."""
    labels = list(dict.fromkeys(labels))
    if len(labels) <= max_lines:
        return [labels] if labels else []
    refs = [lab for lab in labels if SEP not in lab]
    groups: Dict[str, List[str]] = {}
    for lab in labels:
        if SEP in lab:
            groups.setdefault(lab.rsplit(SEP, 1)[1], []).append(lab)
    if not groups:
        return _chunks(labels, max_lines)
    room = max_lines - len(refs)
    panels: List[List[str]] = []
    if room < 1:                               # too many references: they get panels of their own
        panels += _chunks(refs, max_lines)
        refs, room = [], max_lines
    for members in groups.values():
        for chunk in _chunks(members, room):
            panels.append([r for r in labels if r in refs or r in chunk])
    return panels


def line_figure(series: Dict[str, List[Point]], styles: Dict[str, dict], xlabel: str, ylabel: str,
                title: str, logx: bool = False, percent: bool = True, xticks: Optional[list] = None,
                panels: Optional[List[List[str]]] = None, panel_titles: Optional[List[str]] = None):
    """Line plots of ``series`` (label → [(x, y)], NaN/None points dropped); ``styles[label]``
    are extra ``plot`` keywords (color, linestyle, marker). ``panels`` (lists of labels) and
    their ``panel_titles`` choose the small multiples; by default :func:`split_panels`. Rates
    (``percent``) are drawn ×100 on a fixed 0–100 axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = {lab: sorted((x, y) for x, y in pts if y is not None and y == y)
             for lab, pts in series.items()}
    drawn = {lab: pts for lab, pts in drawn.items() if pts}
    panels = [[lab for lab in p if lab in drawn] for p in (panels or split_panels(list(drawn)))]
    panels = [p for p in panels if p] or [[]]
    if panel_titles is None:
        panel_titles = [_panel_title(p) if len(panels) > 1 else "" for p in panels]
    cols = 2 if len(panels) == 4 else min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    width = max(MIN_WIDTH_PX / DPI + 1.0, 4.4 * cols)          # inches; ≥ 1000 px after cropping
    height = 3.2 + 0.25 * max(len(p) for p in panels)
    with plt.rc_context(FONTS):
        fig, axes = plt.subplots(rows, cols, figsize=(width, height * rows), squeeze=False,
                                 sharey=True, layout="constrained")
        for ax, labels, sub in zip(axes.flat, panels, panel_titles):
            for label in labels:
                xs, ys = zip(*drawn[label])
                ax.plot(xs, [100 * y if percent else y for y in ys], label=label, linewidth=1.8,
                        markersize=6, **{"marker": "o", **styles.get(label, {})})
            if logx:
                ax.set_xscale("log")
            if xticks:
                ax.set_xticks(xticks)
                ax.set_xticklabels([f"{t:g}" for t in xticks])
                ax.minorticks_off()
            if percent:
                ax.set_ylim(-3, 103)
            ax.grid(alpha=0.3)
            if sub:
                ax.set_title(sub)
            ax.set_xlabel(xlabel)
            if labels:
                ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False,
                          ncol=1 if cols > 1 else 2)
        for ax in axes[:, 0]:
            ax.set_ylabel(ylabel)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.suptitle(title)
    return fig


def _panel_title(labels: List[str]) -> str:
    suffixes = list(dict.fromkeys(lab.rsplit(SEP, 1)[1] for lab in labels if SEP in lab))
    return ", ".join(suffixes) if len(suffixes) == 1 else ""


def figure_width_px(fig) -> int:
    """The figure's width in px at the page's dpi (before ``bbox_inches="tight"`` cropping)."""
    return round(fig.get_figwidth() * DPI)


def max_lines_per_panel(fig) -> int:
    """The most lines any axes of ``fig`` holds (vertical marker lines included)."""
    return max((len(ax.lines) for ax in fig.axes), default=0)
