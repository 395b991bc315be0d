"""Line plots for the views: matplotlib (Agg backend), fonts of at least 10 pt, a legend beside the
axes when there are many lines, a width that fits the page (≤ ~1000 px at 100 dpi)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

Point = Tuple[float, float]
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22")


def color_for(name: str, names: Sequence[str]) -> str:
    """The same colour for the same name in every figure of a page."""
    return _COLORS[list(names).index(name) % len(_COLORS)] if name in names else "#444444"


def line_figure(series: Dict[str, List[Point]], styles: Dict[str, dict], xlabel: str, ylabel: str,
                title: str, logx: bool = False, percent: bool = True, xticks: Optional[list] = None):
    """One figure, one line per entry of ``series`` (label → [(x, y)], NaN/None points dropped);
    ``styles[label]`` are extra ``plot`` keywords (color, linestyle, marker)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11,
                         "legend.fontsize": 10, "xtick.labelsize": 10, "ytick.labelsize": 10}):
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for label, pts in series.items():
            pts = sorted((x, y) for x, y in pts if y is not None and y == y)
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, [100 * y if percent else y for y in ys], label=label, linewidth=1.8,
                    markersize=6, **{"marker": "o", **styles.get(label, {})})
        if logx:
            ax.set_xscale("log")
        if xticks:
            ax.set_xticks(xticks)
            ax.set_xticklabels([f"{t:g}" for t in xticks])
            ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if percent:
            ax.set_ylim(-3, 103)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if len(series) > 4:     # beside the axes; savefig(bbox_inches="tight") widens the image
            ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
        else:
            ax.legend(loc="best")
            fig.tight_layout()
    return fig
