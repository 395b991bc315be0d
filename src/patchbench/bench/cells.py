"""What a cell does to its pool before the evaluation, and the face-detection cell.

Classification cells may carry two input axes (both absent = the pool as loaded):

* ``sticker`` (Wang et al., CVPR 2022): the defender sticks the defensive patch of each image's
  *true* class on it (``defensive``), or a control in the same mask: ``random`` (uniform noise, one
  pattern per class, drawn with the seed ``seed + 1``) or ``blank`` (black). It happens first, so
  a corruption degrades the sticker too and an attacker perturbs it (:mod:`patchbench.defensive`).
* ``corruption``: a common corruption at a severity (:func:`patchbench.corruptions.corrupt`, with
  the cell's seed), on the whole pool at once.

Face-detection cells evaluate a detector (:mod:`patchbench.models.detectors`) on one or more
batches (a composites set, plus its real photos with ``photos = true``: images of other sizes),
one :func:`patchbench.evaluate` per batch, and score the pooled detections with the task's
:meth:`~patchbench.tasks.face.FaceDetection.cell_metrics`, so precision, recall, AF_β and AP are
those of all images together.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor


def prepare_key(cfg: dict) -> Optional[dict]:
    """What a prepared pool depends on beyond the loaded one (None: nothing is done to it)."""
    if not cfg.get("sticker") and not cfg.get("corruption"):
        return None
    return {"sticker": cfg.get("sticker"), "corruption": cfg.get("corruption"), "seed": cfg["seed"]}


def prepare(cfg: dict, model, x: Tensor, y: Tensor, paths: dict) -> Tensor:
    """The pool ``x`` with the cell's sticker, then its corruption (module doc)."""
    sticker = cfg.get("sticker")
    if sticker:
        from ..defensive.apply import (DefensivePatch, apply_defensive_patch, blank_patch_like,
                                       random_patch_like)
        patch = DefensivePatch.load(paths[sticker["patch"][1:]], device=x.device)
        patch.check_model(model)
        if sticker["name"] == "random":
            patch = random_patch_like(patch, generator=int(cfg["seed"]) + 1)
        elif sticker["name"] == "blank":
            patch = blank_patch_like(patch)
        x = apply_defensive_patch(x, y, patch)
    corruption = cfg.get("corruption")
    if corruption:
        from ..corruptions import corrupt
        x = corrupt(x, corruption["name"], int(corruption["severity"]), generator=int(cfg["seed"]))
    return x


def face_parts(cfg: dict, x, boxes) -> List[Tuple[Tensor, list]]:
    """The batches of a face cell: its composites, then (``photos = true``) the real photos."""
    parts = [(x, list(boxes))]
    if cfg["dataset_options"].get("photos"):
        from ..data.faces import real_faces
        photo = real_faces()
        parts.append((photo.images.to(x.device), [b.to(x.device) for b in photo.boxes]))
    return parts


def face_cell(cfg: dict, detector, attack, parts, batch_size: int):
    """One face cell over ``parts``: ``(metrics, per-part Evaluations)``."""
    import patchbench as pb
    from .. import tasks
    evs = [pb.evaluate(detector, xp, bp, attack=attack, task="face-detection",
                       generator=cfg["seed"], batch_size=batch_size) for xp, bp in parts]
    gts = [b for _, bp in parts for b in bp]
    pooled = {k: [d for ev in evs for d in ev.outputs[k]]
              for k in ("dets_clean", "dets_adv", "patch_boxes")}
    delta = float(getattr(attack, "delta", 0.99))
    who = "none" if attack is None else "DO"
    metrics = tasks.get("face-detection").cell_metrics(pooled["dets_clean"], pooled["dets_adv"], gts,
                                                       pooled["patch_boxes"], delta, who)
    return metrics, evs, pooled, gts


def _u8(t: Tensor) -> Tensor:
    return (t.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def face_gallery(parts, evs, pooled, gts, k: int) -> Optional[dict]:
    """The first ``k`` composites and the first photo, with their boxes and detections, and
    every image's detections (for the report's Threshold-F_β curves)."""
    def dets_cpu(dets):
        return [(d[0].detach().cpu(), d[1].detach().cpu()) for d in dets]
    g = {"kind": "face", "gts": [b.cpu() for b in gts], "dets_clean": dets_cpu(pooled["dets_clean"]),
         "dets_adv": dets_cpu(pooled["dets_adv"]),
         "patch_boxes": [b.detach().cpu() for b in pooled["patch_boxes"]]}
    if not k:
        return g
    images, index, start = [], [], 0
    for (xp, _), ev in zip(parts, evs):
        take = min(k, xp.shape[0]) if start == 0 else 1
        src = xp if ev.result is None else ev.result.x_adv
        images += [_u8(src[i]) for i in range(take)]
        index += list(range(start, start + take))
        start += xp.shape[0]
    patch = next((ev.result.patch for ev in evs if ev.result is not None), None)
    g.update(images=images, index=index, patch=None if patch is None else _u8(patch))
    return g


__all__ = ["prepare", "prepare_key", "face_parts", "face_cell", "face_gallery"]
