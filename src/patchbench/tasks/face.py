"""Face detection: the model scores windows (MTCNN's P-, R- and O-Net "anchors") and returns
detections; the label of an image is its ground-truth face boxes.

Objective: the adversarial sample sets of Yang et al., "Design and Interpretation of Universal
Adversarial Patches in Face Detection", ECCV 2020 (§3.2, §4.2): which scored windows take part
(:func:`select_candidates`) and the loss over them (:func:`adversarial_loss`, Eq. 1/2):

* ``patch-iou`` (§3.2): IoU(A_i, B_i) > 0.6 with a face; Eq. 1, minimise ``(1/N) Σ log S_i``.
* ``patch-score`` (§4.2): S_i > δ − m (= 0.5); Eq. 1.
* ``patch-score-focal`` (§4.2): S_i > δ − m, Eq. 2, weights ``S_i^γ`` (γ = 2).
* ``patch-combination`` (§4.2): S_i > δ − m AND (IoU(A_i, B_i) > λ1 = 0.3 OR IoU(A_i, P) > λ2 = 0.3).

The paper *maximises* ``L_Adv = −(1/N) Σ S_i^γ log S_i`` by gradient ascent (γ = 0 for Eq. 1); the
patch trainer minimises its negative. Two adaptations, both stated where they happen: the focal factor
S^γ is a (detached) per-sample weight — differentiating through it would *raise* scores in
(0.5, e^(−1/γ)), against the paper's intent of "bigger weights to samples with higher scores"; and
MTCNN is a cascade, so the mean is taken per stage (P-, R-, O-Net) and the stage means are added, so
the ~10⁵ P-Net cells do not drown the ~10² O-Net crops whose score is the one compared with δ.

Success (§4.1): an image is attacked successfully when none of its true faces is detected with a score
≥ δ (Criterion 1) and the patch itself is not detected as a face at ≥ δ (Criterion 2).

Cell metrics: precision / recall of the detections scoring ≥ δ, detections on the patch, AF_β for the
β of Fig. 8 and VOC AP (:mod:`patchbench.metrics.detection`), on the clean and the patched images.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..models.nms import box_iou
from .base import Task, register

STRATEGIES = ("patch-iou", "patch-score", "patch-score-focal", "patch-combination")
_DEFAULT_IOU_FACE = {"patch-iou": 0.6, "patch-combination": 0.3}   # §3.2 and λ1 of §4.2
BETAS = (0.001, 0.01, 0.1, 0.5)             # Fig. 8


def _check_option(value, name: str, choices) -> str:
    # ValueError (not LookupError) for backward compatibility: these always raised ValueError.
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def _flatten_boxes(boxes, name: str) -> Tuple[Tensor, Tensor]:
    """List of per-image K_i×4 boxes → (all boxes F×4, image index F)."""
    if isinstance(boxes, Tensor) and boxes.dim() == 2:
        boxes = [boxes]
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(f"{name}: expected a list with one K×4 tensor per image, got {type(boxes).__name__}")
    flat, idx = [], []
    for i, b in enumerate(boxes):
        b = torch.as_tensor(b, dtype=torch.float32)
        if b.numel() == 0:
            continue
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"{name}[{i}]: expected K×4 (x1, y1, x2, y2) boxes, got shape {tuple(b.shape)}")
        flat.append(b)
        idx.append(torch.full((len(b),), i, dtype=torch.long))
    if not flat:
        return torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    return torch.cat(flat), torch.cat(idx)


def _max_iou(boxes: Tensor, image_index: Tensor, others, name: str) -> Tensor:
    """Per candidate, the largest IoU with a box of ``others`` in the same image (0 if none)."""
    ob, oi = _flatten_boxes(others, name)
    if len(ob) == 0 or len(boxes) == 0:
        return boxes.new_zeros(len(boxes))
    iou = box_iou(boxes.detach().float(), ob.to(boxes.device))
    same = image_index[:, None] == oi.to(boxes.device)[None, :]
    return torch.where(same, iou, torch.zeros_like(iou)).amax(1)


def select_candidates(strategy: str, boxes: Tensor, scores: Tensor, face_boxes, patch_boxes=None, *,
                      image_index: Optional[Tensor] = None, delta: float = 0.99, m: float = 0.49,
                      gamma: float = 2.0, iou_face: Optional[float] = None,
                      iou_patch: float = 0.3) -> Tensor:
    """Weights of the adversarial sample set {AS_i} (Yang et al. §3.2, §4.2): 0 = not selected.

    Args:
        strategy: one of ``STRATEGIES`` (see the module docstring for each rule).
        boxes: K×4 candidate windows (x1, y1, x2, y2); scores: K face probabilities.
        face_boxes: ground-truth faces: F×4 for one image, or a list of per-image K_i×4 tensors.
        patch_boxes: bounding boxes of the pasted patches, same layout (only ``patch-combination``).
        image_index: K image ids of the candidates (default: all in image 0).
        delta, m: score rule ``S > δ − m`` (default 0.99 − 0.49 = 0.5).
        gamma: focal exponent of ``patch-score-focal`` (default 2).
        iou_face: face-IoU threshold (default 0.6 for ``patch-iou``, λ1 = 0.3 for ``patch-combination``).
        iou_patch: λ2, patch-IoU threshold of ``patch-combination`` (default 0.3).
    Returns:
        K float weights, detached: 1/0 masks, or ``S^γ`` on the selected samples for the focal rule.

    Example::
        >>> w = select_candidates("patch-score", c.boxes, c.scores, gt_boxes)
    """
    _check_option(strategy, "strategy", STRATEGIES)
    if not isinstance(boxes, Tensor) or not isinstance(scores, Tensor):
        raise TypeError(f"boxes/scores: expected tensors K×4 and K, got {type(boxes).__name__} and "
                        f"{type(scores).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 4 or scores.shape != (boxes.shape[0],):
        raise ValueError(f"boxes/scores: expected K×4 and K, got {tuple(boxes.shape)} and "
                         f"{tuple(scores.shape)}")
    s = scores.detach()
    idx = torch.zeros(len(s), dtype=torch.long, device=s.device) if image_index is None else image_index
    lam1 = _DEFAULT_IOU_FACE.get(strategy, 0.0) if iou_face is None else float(iou_face)
    if strategy == "patch-iou":
        return (_max_iou(boxes, idx, face_boxes, "face_boxes") > lam1).to(s.dtype)
    high = s > (delta - m)
    if strategy == "patch-score":
        return high.to(s.dtype)
    if strategy == "patch-score-focal":
        return torch.where(high, s.pow(gamma), torch.zeros_like(s))
    if patch_boxes is None:
        raise ValueError("patch-combination needs patch_boxes (the pasted patches' bounding boxes)")
    near = (_max_iou(boxes, idx, face_boxes, "face_boxes") > lam1) | \
        (_max_iou(boxes, idx, patch_boxes, "patch_boxes") > float(iou_patch))
    return (high & near).to(s.dtype)


def adversarial_loss(scores: Tensor, weights: Tensor, stage: Optional[Tensor] = None) -> Tensor:
    """``Σ_stage (1/N_s) Σ_i w_i log S_i`` over selected samples (minimised; Yang et al. Eq. 1/2).

    ``N_s`` counts the selected samples of a stage; a stage with none adds 0 (still differentiable).
    """
    stage = torch.zeros_like(weights, dtype=torch.long) if stage is None else stage
    logs = scores.clamp_min(1e-12).log()
    total = scores.sum() * 0.0
    for st in stage.unique().tolist():
        sel = (stage == st) & (weights > 0)
        if sel.any():
            total = total + (weights[sel] * logs[sel]).sum() / sel.sum()
    return total


def _per_image_loss(c, weights: Tensor, n: int) -> Tensor:
    """``−Σ_stage (1/N_s) Σ_{i in image} w_i log S_i`` per image: the images' shares of the batch
    objective (their sum is ``−adversarial_loss`` up to summation order)."""
    logs = c.scores.clamp_min(1e-12).log()
    out = c.scores.new_zeros(n) + c.scores.sum() * 0.0
    for st in c.stage.unique().tolist():
        sel = (c.stage == st) & (weights > 0)
        if sel.any():
            share = weights[sel] * logs[sel] / sel.sum()
            out = out.index_add(0, c.image_index[sel].to(out.device), -share)
    return out


def _window_success(c, face_boxes, patch_boxes, n: int, delta: float) -> Tensor:
    """Per image: no window of the last scored stage reaches ``delta`` on a face (regressed box IoU
    ≥ 0.5) or on the patch (Criteria 1 and 2 of §4.1 on the cascade's last stage, before NMS)."""
    ok = torch.ones(n, dtype=torch.bool, device=c.scores.device)
    if len(c.scores) == 0:
        return ok
    last = c.stage == c.stage.max()
    hit = last & (c.scores.detach() >= delta)
    if not bool(hit.any()):
        return ok
    boxes, idx = c.regressed[hit], c.image_index[hit]
    found = _max_iou(boxes, idx, face_boxes, "face_boxes") >= 0.5
    if patch_boxes is not None:
        found = found | (_max_iou(boxes, idx, patch_boxes, "patch_boxes") >= 0.5)
    ok[idx[found].to(ok.device)] = False
    return ok


@register("face-detection")
class FaceDetection(Task):
    """Face detection (Yang et al., ECCV 2020): the model is a face detector with ``candidates``
    (every scored window, differentiable) and ``detect`` (the final detections); ``y`` is one
    ``K_i×4`` tensor of ground-truth boxes per image."""

    outputs = "Candidates (boxes, scores, image_index, stage, regressed) of a face detector"
    strategies = STRATEGIES

    def objective(self, outputs, y, target=None, *, patch_boxes=None,
                  strategy: str = "patch-combination", delta: float = 0.99, m: float = 0.49,
                  gamma: float = 2.0, iou_face: Optional[float] = None, iou_patch: float = 0.3,
                  n: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        """Per image: its share of ``−L`` (``L`` = :func:`adversarial_loss` over the windows that
        ``strategy`` selects; to maximise) and window-level success (no window of the last stage
        scores ≥ ``delta`` on a face or on the patch).

        ``outputs``: the detector's ``Candidates`` for the patched images; ``y``: per-image face
        boxes; ``patch_boxes``: per-image boxes of the pasted patches; ``n``: number of images
        (default ``len(y)``). Hiding faces is untargeted: ``target`` must be None.

        Inner-loop helper: inputs are not validated.
        """
        if target is not None:
            raise ValueError("target: face hiding is untargeted; pass target=None")
        n = len(y) if n is None else n
        w = self.weights(outputs, y, patch_boxes, strategy=strategy, delta=delta, m=m, gamma=gamma,
                         iou_face=iou_face, iou_patch=iou_patch)
        return _per_image_loss(outputs, w, n), _window_success(outputs, y, patch_boxes, n, delta)

    def weights(self, outputs, y, patch_boxes=None, *, strategy: str = "patch-combination",
                delta: float = 0.99, m: float = 0.49, gamma: float = 2.0,
                iou_face: Optional[float] = None, iou_patch: float = 0.3) -> Tensor:
        """:func:`select_candidates` on a detector's ``Candidates`` (per-image boxes ``y``)."""
        return select_candidates(strategy, outputs.boxes, outputs.scores,
                                 [b.to(outputs.scores.device) for b in y], patch_boxes,
                                 image_index=outputs.image_index, delta=delta, m=m, gamma=gamma,
                                 iou_face=iou_face, iou_patch=iou_patch)

    def loss(self, outputs, y, patch_boxes=None, **options) -> Tuple[Tensor, int]:
        """The batch objective the patch trainer MINIMISES, ``L = Σ_stage (1/N_s) Σ w_i log S_i``
        (Eq. 1/2 with per-stage means), and the number of selected windows."""
        w = self.weights(outputs, y, patch_boxes, **options)
        return adversarial_loss(outputs.scores, w, outputs.stage), int((w > 0).sum())

    def success(self, detections, y, patch_boxes=None, delta: float = 0.99,
                iou_threshold: float = 0.5) -> Tensor:
        """Per image (bool ``N``): no ground-truth face is matched by a detection scoring ≥ ``delta``
        (Criterion 1) and no detection ≥ ``delta`` sits on the patch (Criterion 2)."""
        from ..metrics.detection import count_patch_detections, match_detections
        hidden = []
        for d, g in zip(detections, y):
            keep = d[1] >= delta
            tp = match_detections(d[0][keep], d[1][keep], g, iou_threshold)
            hidden.append(not bool(tp.any()))
        ok = torch.tensor(hidden, dtype=torch.bool)
        if patch_boxes is not None:
            ok &= count_patch_detections(detections, patch_boxes, delta=delta) == 0
        return ok

    def eligible(self, detections, y, delta: float = 0.99, iou_threshold: float = 0.5) -> Tensor:
        """Per image: the clean image has a face to hide — at least one ground-truth face is
        detected at ≥ ``delta`` (and the image has a face at all)."""
        found = ~self.success(detections, y, None, delta, iou_threshold)
        return found & torch.tensor([len(g) > 0 for g in y], dtype=torch.bool)

    def detection_scores(self, dets, gts, patch_boxes, delta: float = 0.99,
                         betas: Sequence[float] = BETAS) -> Dict[str, object]:
        """``{"delta", "n_faces", "precision", "recall", "patch_detections", "afbeta": {β: AF_β},
        "ap"}`` of detections ``dets`` against ``gts`` (the face-patch preset's row layout)."""
        from ..metrics.detection import (afbeta, average_precision, count_patch_detections,
                                         precision_recall)
        p, r = precision_recall(dets, gts, delta=delta)
        return {"delta": delta, "n_faces": sum(len(g) for g in gts), "precision": p, "recall": r,
                "patch_detections": int(count_patch_detections(dets, patch_boxes, delta=delta).sum()),
                "afbeta": {b: afbeta(dets, gts, beta=b) for b in betas},
                "ap": average_precision(dets, gts)}

    def cell_metrics(self, dets_clean, dets_adv, gts, patch_boxes, delta: float = 0.99,
                     attacker: str = "none", betas: Sequence[float] = BETAS) -> Dict[str, object]:
        """Flat metrics of one face cell: ``n`` (images), ``n_faces``, ``delta``, ``clean_precision``,
        ``clean_recall``, ``clean_ap``, ``precision``, ``recall``, ``ap``, ``patch_detections``,
        ``afbeta_<β>`` and ``clean_afbeta_<β>``, ``asr`` / ``asr_ci`` / ``asr_n`` (images whose
        faces were all hidden without the patch being detected, among those with a face found on
        the clean image) and ``attacker``."""
        from ..metrics.classification import Rate
        empty = [torch.zeros(0, 4) for _ in gts]
        clean = self.detection_scores(dets_clean, gts, empty, delta, betas)
        adv = self.detection_scores(dets_adv, gts, patch_boxes, delta, betas)
        ok = self.eligible(dets_clean, gts, delta)
        hit = self.success(dets_adv, gts, patch_boxes, delta) & ok
        asr = Rate.of(int(hit.sum()), int(ok.sum()))
        out = {"n": len(gts), "n_faces": adv["n_faces"], "delta": delta,
               "clean_precision": clean["precision"], "clean_recall": clean["recall"],
               "clean_ap": clean["ap"], "precision": adv["precision"], "recall": adv["recall"],
               "ap": adv["ap"], "patch_detections": adv["patch_detections"]}
        for b in betas:
            out[f"clean_afbeta_{b:g}"] = clean["afbeta"][b]
            out[f"afbeta_{b:g}"] = adv["afbeta"][b]
        out.update(asr=asr.value, asr_ci=[asr.lo, asr.hi], asr_n=asr.n, attacker=attacker)
        return out
