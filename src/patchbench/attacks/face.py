"""Universal face-hiding patches (Yang et al., "Design and Interpretation of Universal Adversarial
Patches in Face Detection", ECCV 2020): the registered attack ``face-patch`` on the
``face-detection`` task.

One square patch P is pasted on every ground-truth face (side ``α·sqrt(w·h)``, centred horizontally at
the top of the box by default, §3.2) and optimised over training faces with the detector frozen. What
differs between the methods is the *adversarial sample set* {AS_i}: which scored windows ("anchors";
for MTCNN every P-Net cell and every R-/O-Net crop, see :meth:`MTCNN.candidates`) take part —
``patch-iou`` (§3.2), ``patch-score``, ``patch-score-focal`` and ``patch-combination`` (§4.2). The
selection rules and the loss are the task's objective (:mod:`patchbench.tasks.face`, re-exported here
as :func:`select_candidates` and :func:`adversarial_loss`, with the two adaptations stated there: a
detached focal weight, and per-stage means over MTCNN's cascade).

Example::
    >>> fp = FacePatch("patch-combination", epochs=5)
    >>> patch = fp.fit(load_mtcnn(), train.images, train.boxes)
    >>> x_adv = fp.apply(test.images, test.boxes, patch)
    >>> res = fp.run(load_mtcnn(), x, boxes)                # fit + score: an AttackResult
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import (check_bool, check_fraction, check_images, check_nonnegative, check_number,
                           check_path, check_positive_int, make_generator, trusted_inputs)
from ..patches import BoxPlacement, paste, shape_mask
from ..tasks.face import (STRATEGIES, _check_option, _flatten_boxes, _max_iou,  # noqa: F401
                          adversarial_loss, select_candidates)
from .base import AttackResult, PatchAttack, register

INITS = ("noise", "natural", "face")
POSITIONS = ("top-center", "center", "bottom-center")
DETECTOR_STAGES = ("pnet", "rnet", "onet")
_CHECKPOINT_KEYS = ("patch", "optimizer", "epoch", "generator", "history", "config")


def _check_stages(stages) -> Tuple[str, ...]:
    if isinstance(stages, str):
        stages = (stages,)
    try:
        st = tuple(stages)
    except TypeError as e:
        raise TypeError(f"stages: expected a non-empty subset of {DETECTOR_STAGES}, got "
                        f"{stages!r}") from e
    if not st or any(not isinstance(v, str) or v not in DETECTOR_STAGES for v in st):
        raise ValueError(f"stages: expected a non-empty subset of {DETECTOR_STAGES}, got {st!r}")
    return st


def _as_boxes(b, name: str) -> Tensor:
    """One image's boxes as a finite K×4 float tensor (x1, y1, x2, y2)."""
    if isinstance(b, (str, bytes)) or b is None:
        raise TypeError(f"{name}: expected K×4 (x1, y1, x2, y2) boxes, got {b!r}")
    try:
        t = torch.as_tensor(b, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name}: expected K×4 (x1, y1, x2, y2) boxes, got {type(b).__name__}") from e
    if t.numel() % 4 or (t.dim() > 1 and t.shape[-1] != 4) or t.dim() > 2:
        raise ValueError(f"{name}: expected K×4 (x1, y1, x2, y2) boxes, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: boxes contain NaN or Inf")
    return t.reshape(-1, 4)


def clip_boxes(boxes, hw: Tuple[int, int], name: str = "boxes") -> List[Tensor]:
    """Clip per-image boxes to the image; a box with no area left inside it is an error."""
    out = []
    for i, b in enumerate(boxes):
        b = _as_boxes(b, f"{name}[{i}]")
        c = torch.stack([b[:, 0].clamp(0, hw[1]), b[:, 1].clamp(0, hw[0]),
                         b[:, 2].clamp(0, hw[1]), b[:, 3].clamp(0, hw[0])], 1)
        bad = ((c[:, 2] <= c[:, 0]) | (c[:, 3] <= c[:, 1])).nonzero().flatten()
        if bad.numel():
            raise ValueError(f"{name}[{i}]: box {b[bad[0]].tolist()} has no area inside the "
                             f"{hw[0]}×{hw[1]} image (expected x2 > x1, y2 > y1, overlapping the image)")
        out.append(c)
    return out


def paste_on_faces(images: Tensor, boxes: Sequence[Tensor], patch: Tensor, alpha: float = 0.5,
                   position: str = "top-center") -> Tuple[Tensor, Tensor, List[Tensor]]:
    """Paste one universal square ``patch`` (3×s×s) on every face box (§3.2 geometry).

    Returns ``(patched N×3×H×W, mask N×1×H×W, patch boxes: list of per-image K_i×4)``; differentiable
    wrt ``patch``. Images with no face are returned unchanged. Boxes are clipped to the image first.

    Inner-loop helper (it runs every training step): only the structure of the arguments is checked,
    not the pixel values (:meth:`FacePatch.fit` / :meth:`FacePatch.apply` validate those once).
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(f"images: expected float images N×3×H×W, got {got}")
    if not isinstance(patch, Tensor) or patch.dim() != 3 or not patch.is_floating_point():
        got = tuple(patch.shape) if isinstance(patch, Tensor) else type(patch).__name__
        raise TypeError(f"patch: expected a float patch 3×s×s, got {got}")
    if not isinstance(boxes, (list, tuple)) and not (isinstance(boxes, Tensor) and boxes.dim() == 3):
        raise TypeError(f"boxes: expected a list with one K×4 tensor per image, got "
                        f"{type(boxes).__name__}")
    _check_option(position, "position", POSITIONS)
    n, _, H, W = images.shape
    if len(boxes) != n:
        raise ValueError(f"boxes: expected one K×4 tensor per image ({n}), got {len(boxes)}")
    faces, img = _flatten_boxes(clip_boxes(boxes, (H, W)), "boxes")
    rank = torch.zeros_like(img)
    for i in range(len(img)):                      # k-th face of its image: paste in rounds of k
        rank[i] = int((img[:i] == img[i]).sum())
    sm = shape_mask("square", patch.shape[-2], patch.shape[-1], device=images.device)
    x, mask = images, images.new_zeros(n, 1, H, W)
    pboxes = torch.zeros(len(faces), 4)
    for k in range(int(rank.max()) + 1 if len(rank) else 0):
        sel = (rank == k).nonzero().flatten()
        idx = img[sel].to(images.device)
        params = BoxPlacement(faces[sel], anchor=position, alpha=alpha).sample(
            len(sel), (H, W), tuple(patch.shape[-2:]))
        xp, mk = paste(x.index_select(0, idx), patch, sm, params)
        x = x.index_copy(0, idx, xp)
        mask = mask.index_copy(0, idx, torch.maximum(mask.index_select(0, idx), mk))
        c = params.corners().detach().cpu()
        pboxes[sel] = torch.cat([c.amin(1), c.amax(1)], 1)
    pboxes = torch.stack([pboxes[:, 0].clamp(0, W), pboxes[:, 1].clamp(0, H),
                          pboxes[:, 2].clamp(0, W), pboxes[:, 3].clamp(0, H)], 1)
    return x, mask, [pboxes[img == i] for i in range(n)]


def initial_patch(init: str, size: int, generator=None, device="cpu") -> Tensor:
    """Table 1's initialisations: ``"noise"`` (uniform), ``"natural"`` (a crop of skimage's coffee
    cup: a non-face object), ``"face"`` (the astronaut's face crop). Returns 3×size×size in [0, 1]."""
    init = _check_option(init, "init", INITS)
    size = check_positive_int(size, "size")
    if init == "noise":
        g = make_generator(generator)
        return torch.rand(3, size, size, generator=g, device=g.device).to(device)
    import skimage.data
    if init == "natural":
        arr, (x1, y1, x2, y2) = skimage.data.coffee(), (180, 70, 470, 360)      # the cup and saucer
    else:
        from ..data.faces import ASTRONAUT_FACE_BOX
        arr, (x1, y1, x2, y2) = skimage.data.astronaut(), tuple(int(v) for v in ASTRONAUT_FACE_BOX)
    crop = torch.from_numpy(arr[y1:y2, x1:x2].copy()).permute(2, 0, 1).float()[None] / 255.0
    out = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out[0].clamp(0, 1).to(device)


@register("face-patch")
class FacePatch(PatchAttack):
    """Universal adversarial face patch for a face detector (Yang et al., ECCV 2020, §3.2 and §4.2).

    Threat model: white-box detector (frozen); one patch shared by all faces, pasted on each GT face
    box; success = true faces score < δ (Criterion 1) without the patch scoring ≥ δ (Criterion 2).
    A :class:`~patchbench.attacks.PatchAttack` on the ``face-detection`` task: ``run(detector,
    images, boxes)`` trains the patch on the images and scores it on them (``fit`` + ``score``); its
    placement is the face boxes themselves (``alpha``, ``position``), so it takes no ``Threat``.

    Args:
        strategy: ``"patch-iou"`` | ``"patch-score"`` | ``"patch-score-focal"`` |
            ``"patch-combination"`` (default).
        alpha: patch side = ``alpha·sqrt(w·h)`` of the face box (default 0.5, §3.2).
        position: ``"top-center"`` (default, §3.2), ``"center"`` or ``"bottom-center"`` (§3.3).
        init: ``"noise"`` (default), ``"natural"`` or ``"face"`` (Table 1).
        epochs: passes over the training images (default 10); lr: Adam step (default 0.1).
        batch_size: images per step (default 8); patch_size: patch tensor side (default 48).
        delta, m, gamma, iou_face, iou_patch: selection rules, see :func:`select_candidates`.
        stages: MTCNN stages whose windows are attacked (default all three).
        patch: a trained patch to score instead of training one: a file saved by ``patchbench train
            face-patch`` or by a ``face-patch`` experiment artifact (a dict with a ``"patch"``
            3×s×s tensor), or the tensor itself. Then :meth:`run` only pastes and scores it (on any
            detector: this is how a white-box MTCNN patch is transferred to the Haar / LBP
            cascades); ``epochs``, ``lr`` and ``init`` are not used. Default None: train.
    Shapes:
        images N×3×H×W in [0, 1]; boxes: list of N tensors K_i×4; patch 3×s×s.

    Example::
        >>> fp = FacePatch("patch-combination", epochs=10)
        >>> x_adv = fp.apply(x, boxes, fp.fit(load_mtcnn(), x_train, boxes_train))
        >>> res = fp.score(load_mtcnn(), x, boxes, fp.patch_)      # AttackResult on held-out faces
    """

    task = "face-detection"
    per_image = False

    def __init__(self, strategy: str = "patch-combination", alpha: float = 0.5,
                 position: str = "top-center", init: str = "noise", epochs: int = 10,
                 lr: float = 0.1, batch_size: int = 8, patch_size: int = 48, delta: float = 0.99,
                 m: float = 0.49, gamma: float = 2.0, iou_face: Optional[float] = None,
                 iou_patch: float = 0.3, stages: Sequence[str] = ("pnet", "rnet", "onet"),
                 patch=None):
        self.strategy = _check_option(strategy, "strategy", STRATEGIES)
        self.position = _check_option(position, "position", POSITIONS)
        self.init = _check_option(init, "init", INITS)
        self.alpha = check_fraction(alpha, "alpha", 0.0, 1.0, inclusive=False)
        self.epochs = check_positive_int(epochs, "epochs", minimum=0)
        self.lr = check_fraction(lr, "lr", 0.0, 10.0)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.patch_size = check_positive_int(patch_size, "patch_size")
        self.delta = check_number(delta, "delta", 0.0, 1.0, low_inclusive=False)
        self.m = check_number(m, "m", 0.0, 1.0, high_inclusive=False)
        self.gamma = check_nonnegative(gamma, "gamma")
        self.iou_face = None if iou_face is None else check_fraction(iou_face, "iou_face",
                                                                     inclusive=True)
        self.iou_patch = check_fraction(iou_patch, "iou_patch", inclusive=True)
        self.stages = _check_stages(stages)
        self.history_: List[float] = []
        self.patch, self.fixed_patch_ = _fixed_patch(patch)

    def config(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()
                if not k.endswith("_")}

    def apply(self, images: Tensor, boxes, patch: Tensor) -> Tensor:
        """``images`` with ``patch`` pasted on every face box (no gradient bookkeeping needed)."""
        images = check_images(images, "images", channels=3, allow_single=True)
        patch = check_images(patch, "patch", channels=3, allow_single=True)
        if patch.shape[0] != 1:
            raise ValueError(f"patch: expected one 3×s×s patch, got shape {tuple(patch.shape)}")
        return paste_on_faces(images, boxes, patch[0].to(images.device), self.alpha, self.position)[0]

    def loss(self, detector, images: Tensor, boxes, patch: Tensor) -> Tuple[Tensor, int]:
        """The paper's objective on one batch (to minimise) and the number of selected samples."""
        from .. import tasks
        x, _, pboxes = paste_on_faces(images, boxes, patch, self.alpha, self.position)
        c = detector.candidates(x, stages=self.stages)
        return tasks.get(self.task).loss(c, boxes, pboxes, **self._selection())

    def _selection(self) -> dict:
        """The selection-rule options of the task's objective."""
        return dict(strategy=self.strategy, delta=self.delta, m=self.m, gamma=self.gamma,
                    iou_face=self.iou_face, iou_patch=self.iou_patch)

    def run(self, model, x: Tensor, y, threat=None, *, target=None,
            generator=None) -> AttackResult:
        """Train the patch on images ``x`` with face boxes ``y`` against detector ``model``
        (:meth:`fit`), then paste it on the same images and score it (:meth:`score`).

        ``threat`` must be ``None`` (the patch goes on the face boxes: ``alpha``, ``position``) and
        ``target`` too (hiding faces is untargeted). ``generator``: seed or ``torch.Generator``."""
        self._check_run_args(threat, target)
        if self.fixed_patch_ is not None:
            return self.score(model, x, y, self.fixed_patch_.to(x.device))
        patch = self.fit(model, x, y, generator=generator)
        return self.score(model, x, y, patch)

    @staticmethod
    def _check_run_args(threat, target) -> None:
        if threat is not None:
            raise TypeError(f"threat: FacePatch pastes its patch on each face box (alpha, "
                            f"position) and takes no threat; pass threat=None, got "
                            f"{type(threat).__name__}")
        if target is not None:
            raise ValueError("target: a face-hiding patch is untargeted; pass target=None")

    @torch.no_grad()
    def score(self, detector, images: Tensor, boxes, patch: Tensor) -> AttackResult:
        """Paste ``patch`` on every face of ``images`` and score it with ``detector``:

        ``x_adv`` (patched images), ``patch`` (3×s×s), ``mask`` (N×1×H×W), ``success`` (no face
        detected at ≥ δ and no detection ≥ δ on the patch, §4.1), ``eligible`` (a face was found at
        ≥ δ on the clean image), ``info["patch_boxes"]`` (per-image K_i×4 boxes of the patches) and
        ``history`` (the training losses of the last :meth:`fit`)."""
        from .. import tasks
        if not callable(getattr(detector, "detect", None)):
            raise TypeError(f"detector: expected a face detector with .detect() (e.g. "
                            f"load_mtcnn()), got {type(detector).__name__}")
        images = check_images(images, "images", channels=3, allow_single=True)
        patch = check_images(patch, "patch", channels=3, allow_single=True)
        if patch.shape[0] != 1:
            raise ValueError(f"patch: expected one 3×s×s patch, got shape {tuple(patch.shape)}")
        if not isinstance(boxes, (list, tuple)) and not (isinstance(boxes, Tensor) and boxes.dim() == 3):
            raise TypeError(f"boxes: expected a list with one K×4 tensor per image, got "
                            f"{type(boxes).__name__}")
        if len(boxes) != len(images):
            raise ValueError(f"boxes: expected one K×4 tensor per image ({len(images)}), got {len(boxes)}")
        boxes = clip_boxes(boxes, tuple(images.shape[-2:]))
        x_adv, mask, pboxes = paste_on_faces(images, boxes, patch[0].to(images.device), self.alpha,
                                             self.position)
        task = tasks.get(self.task)
        with trusted_inputs():
            clean, adv = detector.detect(images), detector.detect(x_adv)
        return AttackResult(x_adv=x_adv, patch=patch[0], mask=mask,
                            success=task.success(adv, boxes, pboxes, self.delta),
                            history=list(self.history_), info={"patch_boxes": pboxes},
                            eligible=task.eligible(clean, boxes, self.delta))

    def fit(self, detector, images: Tensor, boxes, *, generator=None, checkpoint=None,
            verbose: bool = False) -> Tensor:
        """Optimise the patch over ``images``/``boxes`` (Adam on pixels, clamped to [0, 1]).

        ``checkpoint``: a file path; the state is saved after every epoch and a run with the same
        configuration resumes from it. Returns the patch 3×s×s (also ``self.patch_``); the mean loss of
        each epoch is in ``self.history_``.
        """
        if self.epochs and not callable(getattr(detector, "candidates", None)):
            raise TypeError(f"detector: expected a face detector with .candidates() (e.g. "
                            f"load_mtcnn()), got {type(detector).__name__}")
        images = check_images(images, "images", channels=3, allow_single=True).detach()
        if not isinstance(boxes, (list, tuple)) and not (isinstance(boxes, Tensor) and boxes.dim() == 3):
            raise TypeError(f"boxes: expected a list with one K×4 tensor per image, got "
                            f"{type(boxes).__name__}")
        boxes = clip_boxes(boxes, tuple(images.shape[-2:]))
        if len(boxes) != len(images):
            raise ValueError(f"boxes: expected one K×4 tensor per image ({len(images)}), got {len(boxes)}")
        verbose = check_bool(verbose, "verbose")
        if checkpoint is not None:
            checkpoint = check_path(checkpoint, "checkpoint", kind="file", must_exist=False)
        g = make_generator(generator)
        dev = images.device
        patch = initial_patch(self.init, self.patch_size, g, dev).requires_grad_(True)
        opt = torch.optim.Adam([patch], lr=self.lr)
        start, self.history_ = 0, []
        if checkpoint is not None and checkpoint.is_file():
            state = _read_checkpoint(checkpoint, dev)
            if state.get("config") == self.config():
                start, self.history_ = _resume(checkpoint, state, patch, opt, g, self.epochs)
        with trusted_inputs():
            self._epochs(detector, images, boxes, patch, opt, g, start, checkpoint, verbose)
        self.patch_ = patch.detach()
        return self.patch_

    def _epochs(self, detector, images, boxes, patch, opt, g, start, checkpoint, verbose) -> None:
        dev = images.device
        for epoch in range(start, self.epochs):
            order = torch.randperm(len(images), generator=g, device=g.device).cpu()
            total = 0.0
            for b0 in range(0, len(images), self.batch_size):
                idx = order[b0:b0 + self.batch_size]
                loss, _ = self.loss(detector, images[idx.to(dev)], [boxes[i] for i in idx.tolist()], patch)
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    patch.clamp_(0, 1)
                total += float(loss.detach()) * len(idx)
            self.history_.append(total / len(images))
            if verbose:
                print(f"[{self.strategy}] epoch {epoch + 1}/{self.epochs} loss {self.history_[-1]:.4f}",
                      flush=True)
            if checkpoint is not None:
                self._save(checkpoint, patch, opt, g, epoch + 1)

    def _save(self, path, patch, opt, g, epoch) -> None:
        from ..training.checkpoint import atomic_save
        atomic_save({"patch": patch.detach().cpu(), "optimizer": opt.state_dict(), "epoch": epoch,
                     "generator": g.get_state(), "history": list(self.history_),
                     "config": self.config()}, path)


def _fixed_patch(patch) -> Tuple[Optional[str], Optional[Tensor]]:
    """``(what config() records, the 3×s×s patch)`` of :class:`FacePatch`'s ``patch`` option."""
    if patch is None:
        return None, None
    if isinstance(patch, Tensor):
        p, name = patch.detach(), "tensor"
    else:
        from ..models.weights import load_file
        path = check_path(patch, "patch", kind="file")
        data = load_file(path, "face patch")
        p = data.get("patch") if isinstance(data, dict) else data
        if not isinstance(p, Tensor):
            raise ValueError(f"patch: {str(path)!r} holds no face patch (expected a tensor or a dict "
                             f"with a 'patch' tensor, as 'patchbench train face-patch' writes)")
        name = str(path)
    p = check_images(p.float(), "patch", channels=3, allow_single=True)
    if p.shape[0] != 1:
        raise ValueError(f"patch: expected one 3×s×s patch, got shape {tuple(p.shape)}")
    return name, p[0].cpu()


def _read_checkpoint(path: Path, device) -> dict:
    """The state dict saved by :meth:`FacePatch._save`; ``ValueError`` naming the file otherwise."""
    from ..models.weights import load_file
    state = load_file(path, "checkpoint", map_location=device)
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"checkpoint: {str(path)!r} is not a FacePatch checkpoint (missing "
                         f"{', '.join(missing)})")
    return state


def _resume(path: Path, state: dict, patch: Tensor, opt, g, epochs: int):
    """Load a matching checkpoint's state into ``patch``/``opt``/``g``; returns (epoch, history)."""
    p, epoch = state["patch"], state["epoch"]
    if not isinstance(p, Tensor) or p.shape != patch.shape or not bool(torch.isfinite(p).all()):
        got = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
        raise ValueError(f"checkpoint: {str(path)!r} holds a patch of shape {got} (or non-finite "
                         f"values); this run needs {tuple(patch.shape)}")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= epochs:
        raise ValueError(f"checkpoint: {str(path)!r} has epoch {epoch!r}, expected 0..{epochs}")
    try:
        with torch.no_grad():
            patch.copy_(p)
        opt.load_state_dict(state["optimizer"])
        g.set_state(state["generator"])
        history = [float(v) for v in state["history"]]
    except Exception as e:  # noqa: BLE001 - a damaged optimizer/generator state
        raise ValueError(f"checkpoint: {str(path)!r} has a damaged optimizer/generator state "
                         f"({type(e).__name__}: {e})") from e
    return epoch, history
