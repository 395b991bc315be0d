"""The face-detection view: universal face-hiding patches (Yang et al., "Design and
Interpretation of Universal Adversarial Patches in Face Detection", ECCV 2020) in the layout of
their Tables 1 and 3, with the Threshold-F_β curves of Fig. 8 (§4.1) and the patches and detections as pictures.

* Tables, one per detector (per test set and seed where those vary): MTCNN first (white-box: the
  face-patch artifacts are trained against it), then the black-box transfer detectors. Rows are the
  experiment's attack labels: the clean baseline (``none``), Table 1's unoptimised patches
  (``epochs = 0`` and no ``patch``: the initialisation is scored as it is), then the optimised ones
  (a ``patch`` from an artifact; Table 3's strategies). Columns: precision and recall at δ (§4.1,
  Criterion 1), detections ≥ δ on the patch (Criterion 2), AF_β for each β of Fig. 8, VOC AP and the
  number of faces; the training time and final loss of an artifact's patch where its file is found.
* Targets (this project's, on the white-box rows): Patch-Combination recall ≤ 0.25 × the clean
  recall with precision ≥ 0.95; Patch-IoU's face-like phenomenon (§3.2, Fig. 2: precision below the
  clean one and detections on the patch) — each stated with the measured numbers, met or NOT met.
* Threshold-F_β (Fig. 8) for MTCNN from the detections every cell keeps in its gallery file
  (``DIR/gallery/<key>.pt``: ``dets_adv``, ``gts``, :func:`patchbench.bench.cells.face_gallery`).
  The x axis is the paper's s = s_p − s_n (footnote 4), for a two-class softmax logit(score).
* The patches, and MTCNN's detections on the first stored images: ground truth green, detections
  ≥ δ red, patch boxes blue.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

from ._common import CellNamer, canonical, display, esc, is_number, user_label, varying
from ._facepics import face_pictures, fbeta_figure, load_face_gallery

TASK = "face-detection"
MAIN_METRICS = ("precision", "recall", "patch_detections", "afbeta_0.1", "ap")
METRIC_LABELS = {"precision": "precision", "recall": "recall",
                 "patch_detections": "detections on the patch", "afbeta_0.1": "AF_0.1", "ap": "AP"}
WHITE_BOX = "mtcnn"
KINDS = ("baseline", "unoptimised", "optimised", "optimised in the cell", "other")
RECALL_FACTOR, MIN_PRECISION = 0.25, 0.95      # the Patch-Combination target
CASCADES = ("haar", "lbp")                     # OpenCV / scikit-image cascades: every score is 1

NOTE = ("Precision and recall of the detections scoring ≥ δ (§4.1, Criterion 1: an attack hides "
        "the faces); “on patch”: detections ≥ δ on a patch box (Criterion 2: the patch itself must "
        "not be detected); AF_β: area under the Threshold-F_β curve (Fig. 8; lower = stronger "
        "attack); AP: VOC average precision. Unoptimised rows score a patch's initialisation "
        "(Table 1's “w/o” rows), optimised rows a patch trained against MTCNN (Table 3).")


def owns_galleries(records) -> set:
    """Keys of the cells whose stored gallery this view shows (every face cell's: boxes and
    curves), so the page's generic galleries skip them."""
    return {r.key for r in records}


def kind_of(config: dict) -> str:
    """``baseline`` (no attack), ``unoptimised`` (``epochs = 0`` and no patch file),
    ``optimised`` (a patch from an artifact or a file), ``optimised in the cell`` (trained by
    the cell itself)."""
    if config.get("attack") in (None, "", "none"):
        return "baseline"
    if config.get("attack") != "face-patch":
        return "other"
    opts = config.get("attack_options") or {}
    if opts.get("patch") not in (None, ""):
        return "optimised"
    return "unoptimised" if opts.get("epochs") == 0 else "optimised in the cell"


def label_of(config: dict) -> str:
    """The row's name: the experiment's attack label, else the strategy (optimised) or the
    initialisation (unoptimised), ``none`` for the baseline."""
    kind = kind_of(config)
    if kind == "baseline":
        return "none"
    own = user_label(config, "attack")
    if own:
        return own
    opts = config.get("attack_options") or {}
    key = "init" if kind == "unoptimised" else "strategy"
    return str(opts.get(key) or config.get("attack"))


def _row_order(config: dict) -> tuple:
    from ...attacks.face import INITS, STRATEGIES
    kind = kind_of(config)
    opts = config.get("attack_options") or {}
    within = {"unoptimised": INITS, "optimised": STRATEGIES,
              "optimised in the cell": STRATEGIES}.get(kind, ())
    key = opts.get("init" if kind == "unoptimised" else "strategy")
    return (KINDS.index(kind), within.index(key) if key in within else len(within),
            label_of(config))


def betas_of(records) -> List[float]:
    """The β of the cells' ``afbeta_<β>`` metrics, in increasing order."""
    out = set()
    for r in records:
        for k in r.metrics:
            if k.startswith("afbeta_"):
                try:
                    out.add(float(k[len("afbeta_"):]))
                except ValueError:
                    pass
    return sorted(out)


def _beta_key(records, beta: float) -> str:
    for r in records:
        for k in r.metrics:
            if k.startswith("afbeta_") and _float(k[7:]) == beta:
                return k
    return f"afbeta_{beta:g}"


def _float(s: str) -> Optional[float]:
    try:
        return float(s)
    except ValueError:
        return None


# ---- grouping -----------------------------------------------------------------------------------
def _context(cfg: dict, namer: CellNamer) -> dict:
    ctx = {"dataset": cfg.get("dataset"), "dataset_options": cfg.get("dataset_options") or {},
           "n": cfg.get("n"), "seed": cfg.get("seed")}
    ctx.update({k: cfg.get(k) for k in namer.extra})
    return ctx


def contexts(records, namer: CellNamer) -> List[dict]:
    """``[{"ctx", "title", "detectors": {model: [records in row order]}}]``: one per test set, seed
    and any other field that varies; detectors white-box first."""
    groups: Dict[str, dict] = {}
    for r in records:
        ctx = _context(r.config, namer)
        g = groups.setdefault(canonical(ctx), {"ctx": ctx, "detectors": {}})
        g["detectors"].setdefault(str(r.config.get("model")), []).append(r)
    shown = varying(g["ctx"] for g in groups.values())
    out = []
    for key in sorted(groups):
        g = groups[key]
        g["title"] = ", ".join(f"{k} {display(g['ctx'][k])}" for k in shown)
        g["detectors"] = {d: sorted(g["detectors"][d], key=lambda r: _row_order(r.config))
                          for d in sorted(g["detectors"], key=lambda d: (d != WHITE_BOX, d))}
        out.append(g)
    return out


# ---- tables -------------------------------------------------------------------------------------
def _num(v, digits: int = 3) -> str:
    if isinstance(v, bool) or v is None:
        return "–"
    if isinstance(v, int):
        return str(v)
    if is_number(v) and not math.isnan(v):
        return f"{v:.{digits}f}"
    return "–"


def _train_info(rec, run_dir, cache: dict) -> dict:
    """``{"train_seconds", "final_loss"}`` of the row's patch: from its artifact file (its
    ``seconds`` and ``history``), or the cell's own ``train_loss_last``."""
    m = rec.metrics
    if is_number(m.get("train_loss_last")):
        return {"final_loss": m["train_loss_last"]}
    ref = (rec.config.get("attack_options") or {}).get("patch")
    if not (isinstance(ref, str) and ref.startswith("@")) or run_dir is None:
        return {}
    name = ref[1:]
    if name not in cache:
        from ._artifacts import artifact_file
        path, _ = artifact_file(run_dir, name, (rec.config.get("artifacts") or {}).get(name))
        info = {}
        if path is not None:
            import torch
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - an unreadable file only costs two columns
                obj = None
            if isinstance(obj, dict):
                if is_number(obj.get("seconds")):
                    info["train_seconds"] = float(obj["seconds"])
                hist = obj.get("history")
                if isinstance(hist, (list, tuple)) and hist and is_number(hist[-1]):
                    info["final_loss"] = float(hist[-1])
        cache[name] = info
    return cache[name]


def table_html(detector: str, records, betas: List[float], caption: str, run_dir=None,
               cache: Optional[dict] = None) -> str:
    """One Tables-1/3 table of ``detector``'s cells (failed ones read “failed”)."""
    cache = {} if cache is None else cache
    keys = [_beta_key(records, b) for b in betas]
    infos = [_train_info(r, run_dir, cache) if r.status == "done" else {} for r in records]
    extra = [k for k in ("train_seconds", "final_loss") if any(k in i for i in infos)]
    heads = (["attack", "kind", "precision", "recall", "on patch"] + [f"AF<sub>{b:g}</sub>"
             for b in betas] + ["AP", "faces"] + [{"train_seconds": "train s",
                                                    "final_loss": "final loss"}[k] for k in extra])
    out = [f"<table class='paper'><caption>{esc(caption)}</caption><tr>"
           + "".join(f"<th class='t'>{h}</th>" if i < 2 else f"<th>{h}</th>"
                     for i, h in enumerate(heads)) + "</tr>"]
    for r, info in zip(records, infos):
        cfg = r.config
        first = (f"<td class='t'>{esc(label_of(cfg))}</td><td class='t'>{esc(kind_of(cfg))}</td>")
        if r.status != "done":
            out.append(f"<tr>{first}<td colspan='{len(heads) - 2}' class='t'>"
                       f"<a class='bad' href='#failed'>failed</a></td></tr>")
            continue
        m = r.metrics
        vals = ([m.get("precision"), m.get("recall"), m.get("patch_detections")]
                + [m.get(k) for k in keys] + [m.get("ap"), m.get("n_faces")])
        cells = [_num(v) for v in vals]
        cells += [_num(info.get(k), 1 if k == "train_seconds" else 4) for k in extra]
        out.append(f"<tr>{first}" + "".join(f"<td><span class='num'>{c}</span></td>"
                                              for c in cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _caption(detector: str, title: str) -> str:
    if detector == WHITE_BOX:
        cap = f"Tables 1/3 layout: {detector.upper()} (white-box)"
    else:
        cap = f"Black-box transfer to {detector.upper()}"
        if detector in CASCADES:
            cap += " (scores are all 1: only P/R are meaningful)"
    return cap + (f" · {title}" if title else "")


# ---- targets ------------------------------------------------------------------------------------
def _by_strategy(rows, strategy: str):
    for r in rows:
        if r.status == "done" and kind_of(r.config) == "optimised" and \
                (r.config.get("attack_options") or {}).get("strategy") == strategy and \
                all(is_number(r.metrics.get(k)) for k in ("precision", "recall",
                                                          "patch_detections")):
            return r
    return None


def targets(rows) -> List[str]:
    """The targets checked on one detector's rows (the white-box ones), stated with the measured
    numbers: Patch-Combination recall ≤ 0.25 × clean with precision ≥ 0.95; Patch-IoU's face-like
    phenomenon (precision below clean and ≥ 1 detection ≥ δ on the patch). ``[]`` without a done
    baseline."""
    clean = next((r for r in rows if r.status == "done" and kind_of(r.config) == "baseline"), None)
    if clean is None:
        return []
    c0 = clean.metrics
    if not all(is_number(c0.get(k)) for k in ("precision", "recall")):
        return []
    lines = []
    comb = _by_strategy(rows, "patch-combination")
    if comb is not None:
        m = comb.metrics
        ok = m["recall"] <= RECALL_FACTOR * c0["recall"] and m["precision"] >= MIN_PRECISION
        lines.append(f"Patch-Combination: recall {m['recall']:.3f} vs clean {c0['recall']:.3f} "
                     f"(target ≤ {RECALL_FACTOR * c0['recall']:.3f}), precision "
                     f"{m['precision']:.3f} (target ≥ {MIN_PRECISION}): "
                     f"{'met' if ok else 'NOT met'}.")
    iou = _by_strategy(rows, "patch-iou")
    if iou is not None:
        m = iou.metrics
        ok = m["precision"] < c0["precision"] and m["patch_detections"] > 0
        lines.append(f"Patch-IoU face-like phenomenon (§3.2: precision below clean, detections on "
                     f"the patch): precision {m['precision']:.3f} vs clean {c0['precision']:.3f}, "
                     f"{m['patch_detections']} detections ≥ δ on the patch: "
                     f"{'met' if ok else 'NOT met'}.")
    return lines


# ---- the page -----------------------------------------------------------------------------------
def _protocol(records) -> str:
    done = [r for r in records if r.status == "done"]
    if not done:
        return ""
    cfg = done[0].config
    o = cfg.get("dataset_options") or {}
    size = o.get("size")
    parts = [f"Test set: {o.get('n', cfg.get('n'))} composites of held-out face identities"
             + (f" ({size}×{size})" if size else "")
             + (" + the real photo(s)" if o.get("photos") else "")
             + f", {done[0].metrics.get('n', '?')} images, "
             f"{done[0].metrics.get('n_faces', '?')} faces"]
    opts = [r.config.get("attack_options") or {} for r in done if kind_of(r.config) != "baseline"]
    alphas = sorted({o["alpha"] for o in opts if is_number(o.get("alpha"))})
    places = sorted({str(o["position"]) for o in opts if o.get("position")})
    if alphas:
        parts.append("patch side α·√(w·h) of each face box with α = "
                     + ", ".join(f"{a:g}" for a in alphas)
                     + (f", {', '.join(places)}" if places else ""))
    deltas = sorted({r.metrics["delta"] for r in done if is_number(r.metrics.get("delta"))})
    if deltas:
        parts.append("δ = " + ", ".join(f"{d:g}" for d in deltas))
    return "; ".join(parts) + "."


def render(report, records, namer: CellNamer, run_dir=None) -> None:
    """Append the face-detection tables, targets, Threshold-F_β curves and pictures of
    ``records`` (failed ones included) to ``report``; ``run_dir`` (the run's folder) gives the
    gallery files and artifacts — without it only the tables and targets are shown."""
    report.heading("Universal face-hiding patches (Yang et al., ECCV 2020)")
    text = _protocol(records)
    if text:
        report.paragraph(text)
    report.paragraph(NOTE, "note")
    cache: dict = {}
    groups = contexts(records, namer)
    betas = betas_of(records)
    for g in groups:
        if g["title"]:
            report.heading(g["title"], 3)
        white = g["detectors"].get(WHITE_BOX)
        for line in targets(white or []):
            report.paragraph("Target — " + line)
        for det, rows in g["detectors"].items():
            report.raw_html(table_html(det, rows, betas, _caption(det, g["title"]), run_dir, cache))
    if run_dir is None:
        report.paragraph("Threshold-F_β curves and pictures need the run folder's gallery files.",
                         "note")
        return
    for g in groups:
        rows = [r for r in g["detectors"].get(WHITE_BOX, []) if r.status == "done"]
        loaded = [(label_of(r.config), kind_of(r.config), load_face_gallery(run_dir, r.key))
                  for r in rows]
        loaded = [(lab, kind, gal) for lab, kind, gal in loaded if gal is not None]
        if not loaded:
            continue
        suffix = f" — {g['title']}" if g["title"] else ""
        report.heading(f"Threshold-F_β (Fig. 8): lower AF_β = stronger attack{suffix}")
        delta = next((r.metrics.get("delta") for r in rows if is_number(r.metrics.get("delta"))),
                     None)
        report.figure(fbeta_figure([(lab, gal) for lab, _, gal in loaded], betas or [0.1], delta),
                      "MTCNN on the held-out faces, one line per attack (flat below "
                      "logit(0.7) ≈ 0.85: MTCNN keeps nothing under its O-Net threshold); dotted: "
                      "the threshold δ of the tables.")
        face_pictures(report, loaded, delta if delta is not None else 0.99, suffix)
