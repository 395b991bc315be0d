"""Attack-only classification runs (no defense, like the bundled ``demo``): one table of attack
success with its 95 % Wilson intervals, and success vs patch area and vs iterations.

Attack success is the share of the images the model classifies correctly that the attack makes it
misclassify (:func:`patchbench.metrics.success_rate`; PatchZero, Xu et al. WACV 2023, reports robust
accuracy, which over the correct images is 1 − success). Photos with no human label are scored
against the model's own clean prediction (:mod:`patchbench.bench.heldout`), so they all count as
correct; the table says how many of each kind a cell held. A universal patch (Brown et al. 2017) is
scored on held-out photos at several placements each: its row says so and also gives its success on
its own training photos. Success vs iterations reads each photo's first successful iterate of masked
PGD (:mod:`patchbench.bench.steps`), not a sweep of separate runs.
"""
from __future__ import annotations

from typing import Dict, List

from ._common import (ATTACK_ORDER, CellNamer, area_text, attacker_of, canonical, ci_text, esc,
                      is_number, name_of, order_key, pct)
from ._plots import color_for, line_figure

NOTE = ("Attack success = the share of the photos the model classifies correctly (its “reference”) "
        "that the patch makes it misclassify; the photos it already gets wrong are not counted. "
        "Photos without a human ImageNet label use the model's own clean prediction as the "
        "reference (so they always count as correct). Percentages with their 95% Wilson interval "
        "in grey. A universal patch is scored on held-out photos only, at several random "
        "placements each: its interval counts photo × placement trials as independent, so it is "
        "narrower than one over photos would be.")


def attack_only(records) -> bool:
    """True when no cell has a defense (the table of defenses would have one row)."""
    return bool(records) and all(name_of(r.config, "defense") == "none" for r in records)


def _done_attacked(records):
    return [r for r in records if r.status == "done" and attacker_of(r.config) != "none"]


def _sort_key(r, namer: CellNamer):
    cfg = r.config
    area = cfg.get("patch_area")
    return (str(cfg.get("model")), str(cfg.get("dataset")),
            order_key(name_of(cfg, "attack"), ATTACK_ORDER), namer.key(cfg, "attack"),
            area if is_number(area) else -1.0, canonical(cfg.get("dataset_options")))


def _num(m: dict, key: str) -> str:
    ci = ci_text(m.get(f"{key}_ci"))
    return f"<b>{pct(m.get(key))}</b>" + (f"<div class='ci'>[{ci}]</div>" if ci else "")


def _scored(cfg: dict, m: dict) -> str:
    photos, p = m.get("photos", m.get("n")), m.get("placements", 1)
    train = (cfg.get("dataset_options") or {}).get("train")
    split = (cfg.get("dataset_options") or {}).get("split", "")
    text = f"{photos} photos"
    if isinstance(train, dict):
        text = f"{photos} held-out photos (“{esc(split)}”)"
    if is_number(p) and p > 1:
        text += f" × {p} placements = {m.get('n')} trials"
    if isinstance(train, dict):
        text += (f"<div class='ci'>patch trained on {m.get('train_n', train.get('n', '?'))} "
                 f"“{esc(train.get('split'))}” photos</div>")
    return text


def _reference(m: dict) -> str:
    if "reference_by_prediction" not in m:
        return "labels"
    return (f"{m.get('reference_by_label')} labelled<div class='ci'>{m['reference_by_prediction']}"
            f" by the model's prediction</div>")


def table_html(records, namer: CellNamer) -> str:
    """The success table of the attacked cells (module doc); ``""`` when there are none."""
    rows = sorted(_done_attacked(records), key=lambda r: _sort_key(r, namer))
    if not rows:
        return ""
    train_col = any("train_asr" in r.metrics for r in rows)
    head = ["Model · photos", "Attack", "Patch", "Scored on", "Reference", "Clean accuracy (%)",
            "Robust accuracy (%)", "Attack success (%)<br><small>of the photos classified "
            "correctly</small>"] + (["Success on its training photos (%)"] if train_col else [])
    out = ["<table class='paper'><caption>Attack success over the photos the model classifies "
           "correctly, with 95% intervals</caption><tr>"
           + "".join(f"<th{' class=t' if i < 5 else ''}>{h}</th>" for i, h in enumerate(head))
           + "</tr>"]
    for r in rows:
        cfg, m = r.config, r.metrics
        threat = cfg.get("threat") or {}
        patch = f"{area_text(cfg.get('patch_area'))} {esc(threat.get('shape', ''))}"
        asr = _num(m, "asr")
        if is_number(m.get("asr_n")):
            asr += f"<div class='ci'>of {m['asr_n']}</div>"
        cells = [f"{esc(cfg.get('model'))}<div class='ci'>{esc(cfg.get('dataset'))}</div>",
                 esc(namer.variant(cfg, "attack")), patch, _scored(cfg, m), _reference(m),
                 _num(m, "clean_acc"), _num(m, "robust_acc"), asr]
        if train_col:
            cells.append(_num(m, "train_asr") if "train_asr" in m else "–")
        out.append("<tr>" + "".join(f"<td{' class=t' if i < 5 else ''}>{c}</td>"
                                    for i, c in enumerate(cells)) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _label(cfg: dict, namer: CellNamer) -> str:
    held = isinstance((cfg.get("dataset_options") or {}).get("train"), dict)
    return namer.variant(cfg, "attack") + (" (held-out)" if held else "")


def figures(records, namer: CellNamer) -> List[tuple]:
    """``[(make_figure, caption)]``: success vs patch area (a line per attack) and success vs
    iterations (a line per patch area), per model and dataset."""
    groups: Dict[str, list] = {}
    for r in _done_attacked(records):
        groups.setdefault(canonical([r.config.get("model"), r.config.get("dataset")]), []).append(r)
    out = []
    for recs in groups.values():
        cfg0 = recs[0].config
        where = f"{cfg0.get('model')} on {cfg0.get('dataset')}"
        area_series: Dict[str, list] = {}
        for r in recs:
            if is_number(r.config.get("patch_area")) and is_number(r.metrics.get("asr")):
                area_series.setdefault(_label(r.config, namer), []).append(
                    (100 * r.config["patch_area"], r.metrics["asr"]))
        names = sorted(area_series)
        styles = {k: {"color": color_for(k, names)} for k in names}
        xs = sorted({x for pts in area_series.values() for x, _ in pts})
        if area_series:
            out.append((lambda s=area_series, st=styles, xs=xs, w=where: line_figure(
                s, st, "patch area (% of the image)", "attack success (%)",
                f"{w}: success vs patch area", xticks=xs if len(xs) <= 8 else None),
                f"Attack success (% of the photos classified correctly) vs patch area — {where}."))
        step_series: Dict[str, list] = {}
        for r in sorted(recs, key=lambda r: r.config.get("patch_area") or 0):
            curve = r.metrics.get("asr_by_step")
            if isinstance(curve, list) and len(curve) > 1:
                label = f"{namer.variant(r.config, 'attack')}, {area_text(r.config['patch_area'])}"
                step_series[label] = [(float(t), v) for t, v in enumerate(curve)]
        if step_series:
            names = list(step_series)
            st = {k: {"color": color_for(k, names), "marker": ""} for k in names}
            out.append((lambda s=step_series, st=st, w=where: line_figure(
                s, st, "iterations", "attack success (%)", f"{w}: success vs iterations"),
                f"Attack success vs masked-PGD iterations — {where}: the share of the correctly "
                f"classified photos fooled after t iterations (t = 0: the random start), read from "
                f"each photo's first successful iterate of the one run."))
    return out


def headline(records) -> List[tuple]:
    """``[(title, html)]``: the key numbers of an attack-only run, for a page's headline box:
    each attacked cell's success over the correctly classified photos, with its interval (largest
    patch first; held-out universal patches with their success on their own training photos)."""
    from ._common import attack_label
    rows = sorted(_done_attacked(records), key=lambda r: (-(r.config.get("patch_area") or 0),
                                                          name_of(r.config, "attack")))
    items = []
    for r in rows:
        cfg, m = r.config, r.metrics
        held = isinstance((cfg.get("dataset_options") or {}).get("train"), dict)
        title = (f"{attack_label(name_of(cfg, 'attack'))}, {area_text(cfg.get('patch_area'))}"
                 + (" (held-out photos)" if held else ""))
        what = "trials" if is_number(m.get("placements")) and m["placements"] > 1 else "photos"
        text = (f"attack success <b>{pct(m.get('asr'))}%</b> [{ci_text(m.get('asr_ci'))}] of the "
                f"{m.get('asr_n')} {what} the model classifies correctly; robust accuracy "
                f"{pct(m.get('robust_acc'))}% of all {m.get('n')}")
        if held and "train_asr" in m:
            text += f"; {pct(m['train_asr'])}% on its own training photos"
        items.append((esc(title), text))
    return items


__all__ = ["attack_only", "table_html", "figures", "headline", "NOTE"]
