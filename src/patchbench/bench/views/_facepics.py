"""Pictures of the face-detection view: Threshold-F_β curves (Yang et al., ECCV 2020, §4.1 and
Fig. 8) from the detections a face cell keeps in its gallery file, the patches, and the stored
images with their boxes drawn on.

A face cell's gallery (:func:`patchbench.bench.cells.face_gallery`) is a ``torch.save`` dict:
``kind = "face"``; ``gts``, ``dets_clean``, ``dets_adv``, ``patch_boxes`` (one entry per test image:
K×4 boxes, ``(boxes, scores)`` pairs); optional ``images`` (``uint8`` C×H×W, the patched image of an
attacked cell), ``index`` (each image's position in those lists) and ``patch`` (``uint8`` C×h×w).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from ..report import GalleryItem, image_data_uri, tensor_to_pil
from ._gallery import gallery_path
from ._plots import color_for

#: bytes of drawn images the view embeds at most (the rest are named as not shown)
PICTURE_BUDGET = 480_000
SIDE = 192                  # drawn images' longer side, px
LOGIT = (-2.0, 12.0, 141)   # footnote 4: the x axis is s = s_p − s_n = logit(score)
GT, DET, PATCH = (0, 200, 0), (230, 0, 0), (40, 90, 255)
MAX_CURVES = 5              # curves per F_β panel (+ the δ marker: ≤ 6 lines)


def load_face_gallery(run_dir, key: str) -> Optional[dict]:
    """The face gallery of the cell ``key`` in ``run_dir``; ``None`` when there is none or it is not
    a face gallery (a readable dict with ``kind = "face"`` and per-image ``gts`` / ``dets_adv`` /
    ``patch_boxes`` of one length)."""
    path = gallery_path(Path(run_dir), key)
    if path is None:
        return None
    try:
        g = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable file is a missing picture, not a failed page
        return None
    if not isinstance(g, dict) or g.get("kind") != "face":
        return None
    lists = [g.get(k) for k in ("gts", "dets_adv", "patch_boxes")]
    if not all(isinstance(v, list) for v in lists) or len({len(v) for v in lists}) != 1:
        return None
    return g


def fbeta_figure(entries: Sequence[Tuple[str, dict]], betas: Sequence[float],
                 delta: Optional[float] = None):
    """F_β of the detections ≥ t against t on the axis s = logit(t), one line per
    ``(label, gallery)`` (its ``dets_adv`` against its ``gts``), a dotted line at logit(δ); one
    panel per β. At most :data:`MAX_CURVES` curves a panel (≤ 6 lines with δ's): more entries are
    split into columns of panels (the first entry, the clean baseline, in each), one row per β.
    At least 1000 px wide, fonts ≥ 10 pt."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ...metrics.detection import threshold_fbeta_curve
    from ._plots import FONTS, _chunks

    logit = torch.linspace(*LOGIT[:2], LOGIT[2], dtype=torch.float64)
    labels = [lab for lab, _ in entries]
    if len(entries) <= MAX_CURVES:
        chunks = [list(entries)]
    else:
        chunks = [[entries[0]] + c for c in _chunks(list(entries[1:]), MAX_CURVES - 1)]
    if len(chunks) == 1:
        cols = 2 if len(betas) == 4 else len(betas)
        nrows = math.ceil(len(betas) / cols)
        layout = [(beta, chunks[0]) for beta in betas]
    else:
        cols, nrows = len(chunks), len(betas)
        layout = [(beta, chunk) for beta in betas for chunk in chunks]
    with plt.rc_context(FONTS):
        fig, axes = plt.subplots(nrows, cols, figsize=(max(11.0, 4.6 * cols), 3.2 * nrows),
                                 sharey=True, squeeze=False, layout="constrained")
        for ax, (beta, chunk) in zip(axes.flat, layout):
            for lab, g in chunk:
                _, f = threshold_fbeta_curve(g["dets_adv"], g["gts"], beta=beta,
                                             thresholds=torch.sigmoid(logit))
                ax.plot(logit.numpy(), f.numpy(), label=lab, linewidth=1.6,
                        color=color_for(lab, labels))
            if delta is not None and 0 < delta < 1:
                ax.axvline(math.log(delta / (1 - delta)), color="#555", linestyle=":",
                           linewidth=1.2)
            ax.set_title(f"β = {beta:g}")
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(layout):]:
            ax.axis("off")
        for ax in axes[-1]:
            ax.set_xlabel("threshold on s = logit(score)")
        for ax in axes[:, 0]:
            ax.set_ylabel("F_β")
        if len(chunks) == 1:
            handles, names = axes.flat[0].get_legend_handles_labels()
            fig.legend(handles, names, loc="outside right center", frameon=False)
        else:
            for ax in axes[-1]:
                if ax.lines:
                    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    return fig


def draw_boxes(img: torch.Tensor, gts, dets, pboxes, delta: float, side: int = SIDE):
    """The image scaled to ``side`` px on its longer side, with the ground truth (green), the
    detections scoring ≥ δ (red) and the patch boxes (blue)."""
    from PIL import Image, ImageDraw
    pil = tensor_to_pil(img).convert("RGB")
    f = side / max(pil.size)
    pil = pil.resize((round(pil.size[0] * f), round(pil.size[1] * f)), Image.LANCZOS)
    draw = ImageDraw.Draw(pil)
    boxes, scores = dets[0], dets[1]
    keep = torch.as_tensor(scores) >= delta
    for group, colour in ((gts, GT), (pboxes, PATCH), (torch.as_tensor(boxes)[keep], DET)):
        for b in torch.as_tensor(group).reshape(-1, 4).tolist():
            draw.rectangle([v * f for v in b], outline=colour, width=2)
    return pil


def face_pictures(report, loaded: List[Tuple[str, str, dict]], delta: float,
                  suffix: str = "") -> None:
    """The patches of ``loaded`` (``(label, kind, gallery)``, table order) and, per row, its stored
    images with the boxes drawn (within :data:`PICTURE_BUDGET` bytes)."""
    patches = [GalleryItem(g["patch"], f"{lab} ({kind})") for lab, kind, g in loaded
               if isinstance(g.get("patch"), torch.Tensor)]
    if patches:
        report.heading(f"Patches{suffix}")
        report.gallery(patches, columns=max(len(patches), 8), min_side=96)
    rows = [(lab, g) for lab, _, g in loaded if g.get("images")]
    if not rows:
        return
    report.heading(f"MTCNN on the first test images{suffix}: ground truth (green), detections ≥ "
                   f"δ (red), patch (blue)")
    budget, skipped = PICTURE_BUDGET, 0
    width = max(4, max(len(g["images"]) for _, g in rows))     # ≤ SIDE px on the page
    for lab, g in rows:
        items, size = [], 0
        for img, i in zip(g["images"], g.get("index") or range(len(g["images"]))):
            dets = g["dets_adv"][i]
            uri = image_data_uri(draw_boxes(img, g["gts"][i], dets, g["patch_boxes"][i], delta),
                                 image_format="jpeg")
            size += len(uri)
            found = int((torch.as_tensor(dets[1]) >= delta).sum())
            items.append(GalleryItem(uri, f"{lab}: {found} det ≥ δ, {len(g['gts'][i])} faces"))
        if size > budget:
            skipped += 1
            continue
        budget -= size
        report.gallery(items, columns=width)
    if skipped:
        report.paragraph(f"{skipped} more rows of pictures not shown: the page keeps them under "
                         f"{PICTURE_BUDGET // 1000} kB.", "note")


__all__ = ["load_face_gallery", "fbeta_figure", "draw_boxes", "face_pictures", "PICTURE_BUDGET"]
