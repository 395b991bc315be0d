"""The defensive-patch view (Wang et al., "Defensive Patches for Robust Recognition in the Physical
World", CVPR 2022): the classification cells that carry a sticker (``config["sticker"]``: the
defensive patch of each image's true class, or the ``random`` / ``blank`` control in its mask), a
common corruption (``config["corruption"]``) or whole-image adversarial noise (``fgsm`` /
``pgd-linf``), laid out like the former ``defensive-patch`` preset.

The cells become the rows of :mod:`patchbench.defensive.evaluate` (``model``, ``held_out``,
``patch``, ``noise``, ``family``, ``severity``, ``n``, ``acc``, ``lo``, ``hi``, plus ``dataset``):
``noise`` is ``clean``, the corruption's name, ``fgsm`` or ``pgd``; ``severity`` 0, 1–5 or ε;
``acc`` the benign accuracy of an attack-free cell (``clean_acc``) or the accuracy under the attack
(``robust_acc``), with its 95% Wilson interval. ``held_out``: the model is not among those the
defensive patch was trained on (the artifact's ``models``). Each dataset × defensive patch gets one
section, rendered with that module's helpers: the summary (:func:`~patchbench.defensive.evaluate.
summarize`), accuracy vs severity, one table per corruption family and one for the adversarial
noise (:func:`~patchbench.defensive.evaluate.family_table`), the per-class patches
(:func:`~patchbench.defensive.apply.patch_sheet` of the artifact file) and the first stored images:
clean, patched, corrupted, patched + corrupted, the random control + corrupted, and under PGD.

Readable on a 1400-px screen (issue 16): the summary is transposed — a row per measure and patch,
a column per model — and accuracy vs severity is one panel per model (≤ 4 lines each). Every
number with the defensive patch is **label-conditional** (Wang et al. stick the patch of the
object's *true* class: the defender is given the label): a banner opens the section and each such
row or line carries :data:`~patchbench.bench.report.LABEL_MARK` (†).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple


from ..report import LABEL_MARK
from ._artifacts import artifact_file, artifact_specs, experiment_order
from ._common import CellNamer, esc, name_of, pct

ADVERSARIAL = {"fgsm": "fgsm", "pgd-linf": "pgd"}      # attack name → the rows' noise name
STICKERS = ("none", "defensive", "random", "blank")
SHORT = {"none": "none", "defensive": "def.", "random": "rand.", "blank": "blank"}
GALLERY_BUDGET = 250_000        # bytes of images the view embeds at most
MAX_IMAGES = 4
BANNER = (f"Label-conditional numbers ({LABEL_MARK}): the defensive patch stuck on each image is the "
          f"one of its TRUE class (Wang et al., CVPR 2022) — the defender is given the label. "
          f"Every accuracy and gain marked {LABEL_MARK} assumes that; without the label a "
          f"defender would have to guess the class first.")
INTRO = ("Wang et al., CVPR 2022. The defender sticks the patch of the object's true class around "
         "it; noise is applied after the patch is in place (the attacker perturbs the patch too). "
         "Controls in the same mask: 'random' = uniform noise, 'blank' = black (what hiding those "
         "pixels costs). Accuracy in %; each cell's 95% Wilson interval is in results.json "
         "(clean_acc_ci, robust_acc_ci).")


def is_marked(config: dict) -> bool:
    """A defensive-patch cell: a sticker, a corruption, or whole-image FGSM / PGD-L∞ noise."""
    return bool(config.get("sticker")) or bool(config.get("corruption")) or \
        name_of(config, "attack") in ADVERSARIAL


def _plain_benign(config: dict) -> bool:
    return name_of(config, "attack") == "none" and not is_marked(config)


def split(records) -> Tuple[list, list]:
    """``(this view's records, the rest)``: the marked cells, plus the plain benign cells (no
    sticker, no corruption, no attack: the "none / clean" row) of a model and dataset that has
    marked cells. Such a benign cell stays in the rest too where the rest has attacked cells of
    that model and dataset (the Table-1 layout's benign column)."""
    marked = {(r.config.get("model"), r.config.get("dataset")) for r in records
              if is_marked(r.config)}
    other = {(r.config.get("model"), r.config.get("dataset")) for r in records
             if not is_marked(r.config) and not _plain_benign(r.config)}
    mine, rest = [], []
    for r in records:
        where = (r.config.get("model"), r.config.get("dataset"))
        if is_marked(r.config) or (_plain_benign(r.config) and where in marked):
            mine.append(r)
        if not is_marked(r.config) and (not _plain_benign(r.config) or where not in marked
                                        or where in other):
            rest.append(r)
    return mine, rest


def owns_galleries(records) -> set:
    """Keys of the cells of ``records`` whose stored gallery only this view uses (the page's
    generic galleries skip them): the cells :func:`split` gives this view and not the rest."""
    mine, rest = split(records)
    shared = {id(r) for r in rest}
    return {r.key for r in mine if id(r) not in shared}


def _family(noise: str) -> str:
    if noise == "clean":
        return "clean"
    if noise in ADVERSARIAL.values():
        return "adversarial"
    from ...corruptions import family
    try:
        return family(noise)
    except (LookupError, StopIteration, ValueError):
        return "other"


def to_row(record, held_out: bool, model: Optional[str] = None) -> Optional[dict]:
    """The :mod:`patchbench.defensive.evaluate` row of a done cell; ``None`` for a failed cell, or
    one no row can hold (another attack, or an attack on a corrupted image)."""
    if record.status != "done":
        return None
    cfg, m = record.config, record.metrics
    attack = name_of(cfg, "attack")
    corruption = cfg.get("corruption") or None
    if attack in ADVERSARIAL and corruption is None:
        noise, metric = ADVERSARIAL[attack], "robust_acc"
        severity = round(float((cfg.get("attack_options") or {}).get("eps")), 6)
    elif attack == "none":
        noise = corruption["name"] if corruption else "clean"
        severity = int(corruption["severity"]) if corruption else 0
        metric = "clean_acc"
    else:
        return None
    ci = m.get(f"{metric}_ci")
    lo, hi = ci if isinstance(ci, (list, tuple)) and len(ci) == 2 else (math.nan, math.nan)
    sticker = cfg.get("sticker") or {}
    return {"model": model or str(cfg.get("model")), "held_out": bool(held_out),
            "patch": str(sticker.get("name", "none")), "noise": noise, "family": _family(noise),
            "severity": severity, "n": m.get("n"), "acc": m.get(metric), "lo": lo, "hi": hi,
            "dataset": str(cfg.get("dataset"))}


# ---- sections -----------------------------------------------------------------------------------
def _patch_ref(config: dict) -> Optional[str]:
    ref = (config.get("sticker") or {}).get("patch")
    return ref[1:] if isinstance(ref, str) and ref.startswith("@") else None


def training_models(run_dir, name: Optional[str], fingerprint: Optional[str] = None
                    ) -> Tuple[Optional[list], Optional[object], str]:
    """``(models the patch was trained on or None, its file or None, why not found)``: the
    artifact's config ``models``, else the file's own metadata (``DefensivePatch.load(path).meta``:
    ``models``, or ``config.models``)."""
    if name is None:
        return None, None, "these cells use no defensive patch"
    spec = artifact_specs(run_dir).get(name) or {}
    models = (spec.get("config") or {}).get("models") if isinstance(spec.get("config"), dict) \
        else None
    path, why = artifact_file(run_dir, name, fingerprint) if run_dir is not None else \
        (None, "the view was given no run folder")
    if models is None and path is not None:
        from ...defensive.apply import DefensivePatch
        try:
            meta = DefensivePatch.load(path).meta
        except (ValueError, FileNotFoundError, TypeError) as e:
            return None, None, f"artifact {name!r}: {e}"
        models = meta.get("models") or (meta.get("config") or {}).get("models")
    return (list(models) if isinstance(models, (list, tuple)) else None), path, why


def sections(records, run_dir=None, namer: Optional[CellNamer] = None) -> List[dict]:
    """One section per dataset × defensive-patch artifact: ``dataset``, ``artifact`` (name or
    None), ``path`` / ``why`` (its file, or why it was not found), ``trained_on`` (models or None),
    ``records``, ``failed`` and ``rows`` (in model, patch, noise, severity order). The plain cells
    of a dataset (no sticker) belong to each of its sections."""
    from ...corruptions import CORRUPTIONS
    from ..._registry import normalize_name
    by_data: Dict[str, dict] = {}
    for r in records:
        d = by_data.setdefault(str(r.config.get("dataset")), {"refs": {}, "plain": []})
        ref = _patch_ref(r.config)
        if ref is None:
            d["plain"].append(r)
        else:
            d["refs"].setdefault(ref, []).append(r)
    order = [normalize_name(m) for m in experiment_order(run_dir)]
    out = []
    for dataset in sorted(by_data):
        d = by_data[dataset]
        for ref in sorted(d["refs"]) or [None]:
            recs = d["refs"].get(ref, []) + d["plain"]
            prints = next((r.config.get("artifacts", {}).get(ref) for r in recs if ref and
                           (r.config.get("artifacts") or {}).get(ref)), None)
            trained, path, why = training_models(run_dir, ref, prints)
            train_set = {normalize_name(m) for m in trained or ()}
            rows = []
            for r in recs:
                held = trained is not None and \
                    normalize_name(r.config.get("model")) not in train_set
                label = str(r.config.get("model"))
                if name_of(r.config, "defense") != "none" and namer is not None:
                    label += f" + {namer.variant(r.config, 'defense')}"
                row = to_row(r, held, label)
                if row is not None:
                    row["_key"] = normalize_name(r.config.get("model"))
                    rows.append(row)
            noise_order = ["clean"] + list(CORRUPTIONS) + ["fgsm", "pgd"]
            rows.sort(key=lambda x: (
                order.index(x["_key"]) if x["_key"] in order else len(order) + x["held_out"],
                x["model"], STICKERS.index(x["patch"]) if x["patch"] in STICKERS else 9,
                noise_order.index(x["noise"]) if x["noise"] in noise_order else 99, x["noise"],
                x["severity"]))
            for x in rows:
                del x["_key"]
            out.append({"dataset": dataset, "artifact": ref, "path": path, "why": why,
                        "trained_on": trained, "records": recs, "rows": rows,
                        "failed": [r for r in recs if r.status != "done"],
                        "skipped": sum(r.status == "done" for r in recs) - len(rows)})
    return out


def _title(sec: dict) -> str:
    rows = sec["rows"]
    n_plain = sorted({r["n"] for r in rows if r["family"] != "adversarial"})
    n_adv = sorted({r["n"] for r in rows if r["family"] == "adversarial"})
    parts = []
    if n_plain:
        parts.append(f"n = {', '.join(map(str, n_plain))}")
    if n_adv:
        parts.append(f"{', '.join(map(str, n_adv))} attacked")
    if sec["trained_on"] is not None:
        parts.append(f"trained on {', '.join(sec['trained_on'])}")
        held = list(dict.fromkeys(r["model"] for r in rows if r["held_out"]))
        parts.append(f"held out: {', '.join(held) if held else 'none'}")
    title = f"{sec['dataset']}" + (f", patch {sec['artifact']}" if sec["artifact"] else "")
    title += f" ({'; '.join(parts)})" if parts else ""
    if (n_plain or n_adv) and max(n_plain + n_adv) < 30:
        title += " — a demonstration, not a benchmark"
    return title


# ---- the page -----------------------------------------------------------------------------------
def render(report, records, namer: CellNamer, run_dir=None) -> None:
    """Append one section per dataset × defensive patch of ``records`` (failed ones are counted
    and listed at the end of the page) to ``report``; ``run_dir`` (the run's folder) gives the
    artifact files and the stored images."""
    from ._defensive_pics import patch_sheet_section, stored_gallery
    report.heading("Defensive patches: corruption and adversarial robustness, with transfer")
    report.banner(BANNER)
    report.paragraph(INTRO)
    budget = [GALLERY_BUDGET]
    for sec in sections(records, run_dir, namer):
        _section(report, sec)
        if sec["artifact"] is not None:
            patch_sheet_section(report, sec)
        if run_dir is not None:
            stored_gallery(report, sec, run_dir, budget)


def _section(report, sec: dict) -> None:
    from ...defensive.evaluate import family_table, summarize
    title = _title(sec)
    report.heading(title)
    rows = sec["rows"]
    if sec["failed"]:
        report.raw_html(f"<p class='bad'>{len(sec['failed'])} cell(s) of this section failed "
                        f"(<a href='#failed'>listed at the end</a>); the tables leave them "
                        f"out.</p>")
    if sec["skipped"]:
        report.paragraph(f"{sec['skipped']} cell(s) are not in these tables: another attack, or an "
                         f"attack on a corrupted image.", "note")
    if sec["trained_on"] is None and sec["artifact"] is not None:
        report.paragraph(f"The patch's training models are unknown ({sec['why']}): no model is "
                         f"marked held out.", "note")
    if not rows:
        report.paragraph("No finished cell.", "note")
        return
    report.raw_html(summary_html(summarize(rows)))
    if any(r["family"] not in ("clean", "adversarial") for r in rows):
        report.figure(severity_figure(rows, title.split(" (")[0]),
                      caption=f"Accuracy vs corruption severity (mean over the corruptions), one "
                              f"panel per model; solid: defensive{LABEL_MARK} (the true class's "
                              f"patch), dashed: none, dotted: random, dash-dot: blank")
    for fam in ("noise", "blur", "weather", "digital"):
        t = family_table(rows, fam)
        if t:
            report.raw_html(table_html(t, f"{fam} corruptions: mean accuracy (%) per severity"))
    eps = sorted({r["severity"] for r in rows if r["family"] == "adversarial"})
    if eps:
        report.raw_html(table_html(family_table(rows, "adversarial", eps),
                                   "Adversarial noise (L∞, whole image including the patch, "
                                   "white-box against each model): accuracy (%) per ε"))


def severity_figure(rows: List[dict], title: str = ""):
    """Accuracy (mean over the corruptions) vs severity, 0 = clean: one panel per model, one
    line per patch (the defensive one marked †), ≤ 4 lines a panel."""
    from ._plots import line_figure
    styles = {"defensive": "-", "none": "--", "random": ":", "blank": "-."}
    colors = {"defensive": "#1f77b4", "none": "#444444", "random": "#ff7f0e", "blank": "#2ca02c"}
    series, look, panels, titles = {}, {}, [], []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        labels = []
        for kind in STICKERS:
            pts = []
            for sev in range(6):
                vals = [r["acc"] for r in mine if r["patch"] == kind and is_num(r["acc"]) and
                        (r["noise"] == "clean" if sev == 0 else
                         r["family"] not in ("clean", "adversarial") and r["severity"] == sev)]
                if vals:
                    pts.append((float(sev), sum(vals) / len(vals)))
            if pts:
                label = f"{model}: {_patch_text(kind)}"
                series[label], labels = pts, labels + [label]
                look[label] = {"color": colors[kind], "linestyle": styles[kind]}
        if labels:
            held = " (held out)" if mine[0]["held_out"] else ""
            panels.append(labels)
            titles.append(f"{model}{held}")
    return line_figure(series, look, "corruption severity (0 = clean)",
                       "accuracy (%, mean over corruptions)", title, panels=panels,
                       panel_titles=titles, xticks=[0, 1, 2, 3, 4, 5])


def is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def _patch_text(kind: str) -> str:
    return f"defensive{LABEL_MARK}" if kind == "defensive" else kind


def summary_html(summary: List[dict]) -> str:
    """The :func:`~patchbench.defensive.evaluate.summarize` rows as one table, transposed to fit
    a 1400-px screen: a column per model; a row per measure (the accuracy (%) clean, over the
    corruptions at severities 3–5 and under PGD-L∞ 4/255) and patch, then the gains over no patch
    (points). The defensive patch's rows are label-conditional (†)."""
    groups = (("clean", "clean", STICKERS, "{}_{}"),
              ("corr", "corruptions, sev 3–5", STICKERS, "{}_{}"),
              ("pgd", "PGD-L∞ 4/255", STICKERS, "{}_{}"),
              ("corr", "corruption gain (points)", STICKERS[1:], "{}_gain_{}"),
              ("pgd", "PGD gain (points)", STICKERS[1:], "{}_gain_{}"))
    head = "".join(f"<th>{esc(s['model'])}<br><small>"
                   f"{'held out' if s.get('held_out') else 'trained on'}</small></th>"
                   for s in summary)
    out = ["<table class='paper'><caption>Summary: accuracy (%) clean, mean over all corruptions "
           f"at severities 3–5, and under PGD-L∞ 4/255, per model; gains in points over no patch; "
           f"{LABEL_MARK} = label-conditional (the true class's patch)</caption>"
           f"<tr><th class='t'>measure</th><th class='t'>patch</th>{head}</tr>"]
    for key, title, kinds, fmt in groups:
        for i, kind in enumerate(kinds):
            gain = "gain" in fmt
            vals = [(_signed(s.get(fmt.format(key, kind))) if gain
                     else pct(s.get(fmt.format(key, kind)))) for s in summary]
            first = f"<td class='t' rowspan='{len(kinds)}'>{esc(title)}</td>" if i == 0 else ""
            mark = f"defensive<span class='lc'>{LABEL_MARK}</span>" if kind == "defensive" \
                else esc(kind)
            out.append(f"<tr>{first}<td class='t'>{mark}</td>"
                       + "".join(f"<td><span class='num'>{v}</span></td>" for v in vals)
                       + "</tr>")
    out.append("</table>")
    return "".join(out)


def table_html(rows: List[dict], caption: str) -> str:
    """:func:`~patchbench.defensive.evaluate.family_table` rows as a table, accuracies in %; the
    defensive patch's rows marked † (label-conditional)."""
    cols = list(rows[0])
    out = [f"<table class='paper'><caption>{esc(caption)}</caption><tr>"
           + "".join(f"<th class='t'>{esc(c)}</th>" if isinstance(rows[0][c], str) else
                     f"<th>{esc(c)}</th>" for c in cols) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(
            (f"<td class='t'>defensive<span class='lc'>{LABEL_MARK}</span></td>"
             if c == "patch" and r[c] == "defensive" else f"<td class='t'>{esc(r[c])}</td>")
            if isinstance(r[c], str) else
            f"<td><span class='num'>{pct(r[c])}</span></td>" for c in cols) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _signed(v) -> str:
    return f"{v:+.1f}" if isinstance(v, float) and v == v else "–"


def rows_of(records, run_dir=None, namer: Optional[CellNamer] = None) -> List[dict]:
    """Every section's rows, one list (the former preset's ``results.json`` rows)."""
    return [row for sec in sections(records, run_dir, namer) for row in sec["rows"]]


__all__ = ["is_marked", "owns_galleries", "split", "to_row", "sections", "rows_of", "render",
           "training_models", "summary_html", "table_html", "severity_figure", "BANNER"]
