"""The key numbers of a run's page, per task, for the box at its top (issue 16: "headline first").

Each function here returns plain-text lines, one finding each, with its interval and the images it
is over; :func:`headline_items` turns them into the ``(label html, html)`` items of
:meth:`~patchbench.bench.report.Report.headline`. A view module may define ``headline(records) ->
[(label html, html)]`` itself (the classification view does, for attack-only runs such as the
demo: :mod:`._success`); the classification lines below defer to it when no cell has a defense.

* classification (PatchZero, Xu et al. WACV 2023, §4.1): per model, dataset, attack and patch area,
  the undefended model's attack success rate *over the images it classified correctly*
  (``asr`` over ``asr_n``, Wilson interval) and its robust accuracy over all images, then the
  defense with the highest robust accuracy against that attack (DO and adaptive), the GT-mask
  oracle left out (an upper bound, not a defense);
* defensive patches (Wang et al., CVPR 2022): per model, the accuracy without and with the patch
  clean, over the corruptions at severities 3–5 and under PGD-L∞ 4/255 — marked † and said to be
  label-conditional (the patch is the one of the image's *true* class);
* face detection (Yang et al., ECCV 2020, §4.1): the white-box detector's clean recall and the
  lowest recall an attack left, with the precision and AF_β; the targets, met or NOT met;
* retrieval (PAIR, ACM MM 2024, Table 2): the undefended AdvHash t-mAP and each defense's under the
  adaptive attacker, with the targets.

At most :data:`MAX_LINES` lines per task; the rest is in the tables below (said so).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from ..report import LABEL_MARK
from ._common import (ATTACK_ORDER, DEFENSE_ORDER, ORACLES, CellNamer, area_text, attacker_of,
                      ci_text, esc, is_number, name_of, order_key, pct)

MAX_LINES = 8


def _rate(m: dict, key: str) -> str:
    ci = ci_text(m.get(f"{key}_ci"))
    return f"{pct(m.get(key))}%" + (f" [{ci}]" if ci else "")


def _capped(lines: List[str]) -> List[str]:
    if len(lines) <= MAX_LINES:
        return lines
    return lines[:MAX_LINES - 1] + [f"… {len(lines) - MAX_LINES + 1} more findings in the tables "
                                    f"below."]


# ---- classification -----------------------------------------------------------------------------
def classification(records, namer: CellNamer, run_dir=None) -> List[str]:
    """The classification lines (module doc); the defensive-patch cells get
    :func:`defensive_patch`'s."""
    from . import defensive
    mine, rest = defensive.split(records)
    lines = defensive_patch(mine, namer, run_dir) if mine else []
    done = [r for r in rest if r.status == "done"]
    from . import classification as view
    own = getattr(view, "headline", None)
    if done and callable(own) and all(name_of(r.config, "defense") == "none" for r in rest):
        return _capped(lines + list(own(rest)))        # attack-only (the demo): the view's own
    groups: Dict[tuple, dict] = {}
    for r in done:
        cfg = r.config
        if name_of(cfg, "attack") == "none":
            continue
        key = (str(cfg.get("model")), str(cfg.get("dataset")),
               order_key(name_of(cfg, "attack"), ATTACK_ORDER), namer.variant(cfg, "attack"),
               cfg.get("patch_area") if is_number(cfg.get("patch_area")) else -1.0)
        groups.setdefault(key, {"cfg": cfg, "cells": []})["cells"].append(r)
    if not groups:
        lines += _benign_lines(done)
        return _capped(lines)
    contexts = sorted({k[:2] for k in groups})
    for ctx in contexts:
        keys = sorted(k for k in groups if k[:2] == ctx)
        prefix = "" if len(contexts) == 1 else f"{ctx[0]} on {ctx[1]}, "
        if len(contexts) == 1:
            lines.append(_context_line(ctx, [r for k in keys for r in groups[k]["cells"]]))
        for k in keys:
            lines.append(prefix + _attack_line(groups[k]["cfg"], groups[k]["cells"], namer))
    return _capped(lines)


def _benign_lines(done) -> List[str]:
    out = []
    for r in done:
        if name_of(r.config, "defense") == "none" and is_number(r.metrics.get("clean_acc")):
            out.append(f"{r.config.get('model')} on {r.config.get('dataset')}: benign accuracy "
                       f"{_rate(r.metrics, 'clean_acc')} of {r.metrics.get('n', '?')} images")
    return out


def _biggest(cells):
    return max(cells, key=lambda r: (r.metrics.get("n") if is_number(r.metrics.get("n")) else -1))


def _context_line(ctx: tuple, cells) -> str:
    bare = [r for r in cells if name_of(r.config, "defense") == "none"
            and is_number(r.metrics.get("clean_acc"))]
    text = f"{ctx[0]} on {ctx[1]}"
    if bare:
        m = _biggest(bare).metrics
        text += f": benign accuracy {_rate(m, 'clean_acc')} of {m.get('n', '?')} images"
    return text


def _attack_line(cfg: dict, cells, namer: CellNamer) -> str:
    """``MPGD at 5%: success 88.9% [..] of the 90 images the model got right (robust accuracy
    10.0% of all 100); best defense: DO JPEG 32.5%, adaptive JPEG 16.2%``."""
    parts = []
    bare = [r for r in cells if name_of(r.config, "defense") == "none"]
    if bare:
        m = _biggest(bare).metrics
        text = f"success {_rate(m, 'asr')}"
        if is_number(m.get("asr_n")):
            text += f" of the {m['asr_n']} images the model got right"
        parts.append(text + f" (robust accuracy {_rate(m, 'robust_acc')} of all "
                            f"{m.get('n', '?')})")
    defended = [r for r in cells if name_of(r.config, "defense") not in ("none",) + ORACLES
                and is_number(r.metrics.get("robust_acc"))]
    best = []
    for who in ("DO", "adaptive"):
        mine = [r for r in defended if attacker_of(r.config) == who]
        if not mine:
            continue
        mine.sort(key=lambda r: order_key(name_of(r.config, "defense"), DEFENSE_ORDER))
        top = max(mine, key=lambda r: r.metrics["robust_acc"])     # ties: the paper's order
        best.append(f"{who} {namer.variant(top.config, 'defense')} "
                    f"{_rate(top.metrics, 'robust_acc')}")
    if best:
        parts.append("best defense (robust accuracy): " + ", ".join(best))
    return (f"{namer.variant(cfg, 'attack')} at {area_text(cfg.get('patch_area'))}: "
            + ("; ".join(parts) or "no finished cell"))


# ---- defensive patches --------------------------------------------------------------------------
def defensive_patch(records, namer: CellNamer, run_dir=None) -> List[str]:
    """Per section and model: accuracy without → with the defensive patch (module doc)."""
    from ...defensive.evaluate import summarize
    from .defensive import sections
    out = []
    for sec in sections(records, run_dir, namer):
        if not sec["rows"]:
            continue
        for s in summarize(sec["rows"]):
            parts = []
            for key, what in (("clean", "clean"), ("corr", "corruptions sev 3–5"),
                              ("pgd", "PGD-L∞ 4/255")):
                a, b = s.get(f"{key}_none"), s.get(f"{key}_defensive")
                if is_number(a) and is_number(b) and a == a and b == b:
                    parts.append(f"{what} {pct(a)}% → {pct(b)}%{LABEL_MARK} "
                                 f"({100 * (b - a):+.1f} points)")
            if parts:
                held = " (held out)" if s.get("held_out") else ""
                out.append(f"{s['model']}{held} on {sec['dataset']}, no patch → defensive patch"
                           f"{LABEL_MARK}: " + "; ".join(parts))
    if out:
        out.insert(0, f"{LABEL_MARK} label-conditional: the defensive patch is the one of each "
                      f"image's TRUE class (the defender is given the label).")
    return out


# ---- face detection -----------------------------------------------------------------------------
def face_detection(records, namer: CellNamer, run_dir=None) -> List[str]:
    """The white-box detector's clean recall vs the lowest an attack left, and the targets."""
    from . import face_detection as fd
    out = []
    for g in fd.contexts(records, namer):
        rows = g["detectors"].get(fd.WHITE_BOX) or []
        done = [r for r in rows if r.status == "done" and is_number(r.metrics.get("recall"))]
        clean = next((r for r in done if fd.kind_of(r.config) == "baseline"), None)
        attacked = [r for r in done if fd.kind_of(r.config) != "baseline"]
        where = f"{fd.WHITE_BOX.upper()}" + (f" ({g['title']})" if g["title"] else "")
        if clean is not None and attacked:
            best = min(attacked, key=lambda r: r.metrics["recall"])
            m, c = best.metrics, clean.metrics
            af = next((k for k in ("afbeta_0.1",) if is_number(m.get(k))), None)
            out.append(f"{where}: recall {c['recall']:.3f} clean → {m['recall']:.3f} under "
                       f"{fd.label_of(best.config)} ({fd.kind_of(best.config)}), precision "
                       f"{m.get('precision', float('nan')):.3f}"
                       + (f", AF_0.1 {m[af]:.3f} (clean {c.get(af, float('nan')):.3f})" if af
                          else "") + f", {m.get('n_faces', '?')} faces")
        out += [f"Target — {line}" for line in fd.targets(rows)]
    return _capped(out)


# ---- retrieval ----------------------------------------------------------------------------------
def retrieval(records, namer: CellNamer, run_dir=None) -> List[str]:
    """Per Table 2: the undefended t-mAP, each defense's under the adaptive attacker; targets."""
    from . import retrieval as rv
    out = []
    for g in rv.groups(records, namer):
        if g["attack"] is None:
            continue
        main, _, labels = rv._rows(g["cells"] + g["benign"], namer)
        s = rv.slots(g, namer)
        parts = []
        for row in main:
            r = s.get((row, "DO" if row[1] == "none" else "adaptive"))
            if r is not None and r.status == "done" and is_number(r.metrics.get("irrelevant")):
                parts.append(f"{labels[row]} {pct(r.metrics['irrelevant'])}%")
        if parts:
            out.append(f"{g['title']}: t-mAP@k under AdvHash (lower is better; adaptive attacker "
                       f"on each defense): " + ", ".join(parts))
        out += [f"Target — {line}" for line in rv.target_lines(g, s, main)]
    return _capped(out)


BY_TASK = {"classification": classification, "face-detection": face_detection,
           "retrieval": retrieval}


def key_numbers(task: str, records, namer: CellNamer, run_dir=None) -> list:
    """The headline items of ``task``'s cells: :data:`BY_TASK`'s function, else the view's own
    ``headline(records)``; ``[]`` for a task without either. Items are plain-text lines or
    ``(label html, html)`` pairs."""
    from . import view_for
    fn = BY_TASK.get(task)
    if fn is not None:
        return list(fn(records, namer, run_dir))
    own = getattr(view_for(task), "headline", None)
    return list(own(records)) if callable(own) else []


def headline_items(records, namer: CellNamer, run_dir=None) -> List[Tuple[str, str]]:
    """Every task's items as ``(label html, html)`` pairs (plain lines escaped), tasks in name
    order, the task named when there are several."""
    from . import by_task
    tasks = by_task(records)
    out: List[Tuple[str, str]] = []
    for task in sorted(tasks):
        for item in key_numbers(task, tasks[task], namer, run_dir):
            label, text = item if isinstance(item, tuple) else ("", esc(item))
            if len(tasks) > 1:
                label = esc(task) + (f" · {label}" if label else "")
            out.append((label, text))
    return out


__all__ = ["key_numbers", "headline_items", "classification", "defensive_patch", "face_detection",
           "retrieval", "BY_TASK", "MAX_LINES"]
