"""One evaluation cell (docs/architecture.md, "The data path"), for any task: the clean metrics, then an
attack on its *target* — the bare model for a non-adaptive (downstream-only, DO) attacker,
``Defended(model, defense)`` for an adaptive one (PatchZero, Xu et al. WACV 2023, §3.3) — then the
defended model's metrics on the adversarial images.

The cell is the one place this happens: the demo, ``patchbench attack``, PatchZero's training-time
evaluation, the defensive-patch evaluation, the defenses preset and the experiment harness all call
:func:`evaluate`. A precomputed ``attack_result`` (a DO attack on the bare model, shared by every
defense of a table) is scored without running the attack again.

The GT-mask oracle (PatchZero Table 1, "GT Mask") learns where the patch is from the attack result
(:meth:`~patchbench.defenses.Defense.for_result`); an adaptive attacker facing it knows the true mask
too: the masks are drawn first, with the cell's generator, exactly as the attack would draw them, so
its placements are those of every other cell.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from ._validation import check_bool, check_images, check_labels, check_positive_int, make_generator


@dataclass
class Evaluation:
    """Numbers of one cell.

    ``clean``/``robust``/``asr`` are :class:`patchbench.metrics.Rate`: for classification the clean
    and robust accuracy and the attack success rate; for face detection the recall (faces found at
    ≥ δ) on the clean and on the attacked images and the rate of images whose faces were all hidden;
    for retrieval the clean mAP@k, the attacked queries' "relevant" mAP@k and "irrelevant" t-mAP@k
    (:class:`patchbench.tasks.retrieval.MeanScore`; ``pred_clean``/``pred_adv`` hold the codes).
    :meth:`metrics` is the task's flat, JSON-able dict (what the results store keeps).
    """

    clean: object
    robust: object
    asr: object
    adaptive: bool
    defense: str
    attack: str
    result: object = field(default=None, repr=False)   # the AttackResult, for galleries
    task: str = "classification"
    attacker: str = "none"
    pred_clean: Optional[Tensor] = field(default=None, repr=False)   # classification labels
    pred_adv: Optional[Tensor] = field(default=None, repr=False)
    _metrics: dict = field(default_factory=dict, repr=False)
    #: the task's raw per-image outputs (face detection: ``dets_clean``, ``dets_adv`` — lists of
    #: ``(boxes, scores)`` — and ``patch_boxes``), for reports that pool several cells
    outputs: dict = field(default_factory=dict, repr=False)

    def metrics(self) -> dict:
        """The cell's flat metrics. Classification: ``{"n", "clean_acc", "clean_acc_ci" [lo, hi],
        "robust_acc", "robust_acc_ci", "asr", "asr_ci", "asr_n" (images the attack could succeed
        on), "attacker": "none" | "DO" | "adaptive (<gradient rule>[ + EOT])"}``; face detection:
        see :meth:`patchbench.tasks.face.FaceDetection.cell_metrics`; retrieval:
        :meth:`patchbench.tasks.retrieval.Retrieval.cell_metrics` plus ``eot_samples`` (the
        attacker's draws per step), ``patch_side`` (patch height / image height), ``shape`` and
        ``purify_gallery``."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._metrics.items()}

    def row(self, **extra) -> dict:
        r = {"defense": self.defense, "attack": self.attack, "adaptive": self.adaptive,
             "n": self.clean.n, "clean_acc": self.clean.value, "robust_acc": self.robust.value,
             "robust_acc_ci": [self.robust.lo, self.robust.hi], "asr": self.asr.value}
        r.update(extra)
        return r

    def __str__(self) -> str:
        mode = "adaptive" if self.adaptive else "non-adaptive"
        return (f"{self.attack} vs {self.defense} ({mode}): clean {self.clean}, robust {self.robust}, "
                f"attack success {self.asr}")


def _name(obj, default: str) -> str:
    if obj is None:
        return default
    return getattr(obj, "name", None) or type(obj).__name__


def _predict(model, x: Tensor, batch_size: int) -> Tensor:
    """Class labels of ``model`` on ``x`` (eval mode, no gradients, ``batch_size`` at a time)."""
    from ._io import predict_batched
    return predict_batched(model, x, batch_size, reduce=lambda z: z.argmax(-1))


def _check_attack(attack) -> None:
    if attack is not None and (isinstance(attack, type) or not callable(getattr(attack, "run", None))):
        raise TypeError(f"attack: expected a patchbench PatchAttack (e.g. "
                        f"pb.attacks.get('masked-pgd')), got {type(attack).__name__}")


def _check_defense(defense) -> None:
    if defense is not None:
        from .defenses.base import Defense
        if not isinstance(defense, Defense):
            raise TypeError(f"defense: expected a patchbench Defense (e.g. pb.defenses.LGS()), got "
                            f"{type(defense).__name__}")


def _check_attack_result(res, x: Tensor, adaptive: bool, defense) -> None:
    from .attacks.base import AttackResult
    if not isinstance(res, AttackResult):
        raise TypeError(f"attack_result: expected a patchbench AttackResult (from attack.run), got "
                        f"{type(res).__name__}")
    if adaptive and defense is not None:
        raise ValueError("attack_result: a precomputed attack ran without seeing the defense "
                         "(downstream-only); an adaptive attack depends on the defense and runs "
                         "here: pass attack= with adaptive=True, or adaptive=False")
    n, _, h, w = x.shape
    xa, m = res.x_adv, res.mask
    if not isinstance(xa, Tensor) or tuple(xa.shape) != tuple(x.shape):
        got = tuple(xa.shape) if isinstance(xa, Tensor) else type(xa).__name__
        raise ValueError(f"attack_result: x_adv must have the images' shape {tuple(x.shape)} (the "
                         f"result of an attack on these images), got {got}")
    if not isinstance(m, Tensor) or tuple(m.shape) != (n, 1, h, w):
        got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
        raise ValueError(f"attack_result: mask must be {n}×1×{h}×{w} for these images, got {got}")
    check_images(xa, "attack_result.x_adv")


def evaluate(model, x: Tensor, y, attack=None, defense=None, threat=None,
             adaptive: bool = False, generator=None, batch_size: int = 64,
             task: str = "classification", attack_result=None, target=None, *, gallery=None,
             k: Optional[int] = None, purify_gallery: bool = False,
             attack_train=None, keyword: Optional[str] = None,
             train_captions=None) -> Evaluation:
    """The metrics of ``model`` (behind ``defense`` if given) before and under ``attack``.

    Args:
        model: a classifier (``[0,1]`` images → logits) or, for ``task="face-detection"``, a face
            detector (``detect`` and ``candidates``, e.g. ``load_mtcnn()``).
        x, y: images ``N×C×H×W`` in [0, 1] and labels: ``N`` classes (classification) or one
            ``K_i×4`` tensor of face boxes per image (face detection).
        attack: a :class:`~patchbench.attacks.PatchAttack` of the task (``None`` → only clean
            numbers, unless ``attack_result`` is given).
        defense: a :class:`~patchbench.defenses.Defense` or ``None`` (undefended).
        threat: the patch threat model (classification default ``Threat(area=0.05)``; the
            face-hiding patch places itself on the face boxes and takes none).
        adaptive: attack ``Defended(model, defense)`` (BPDA/EOT as the defense declares) instead of
            the bare model (classification only).
        generator: seed or ``torch.Generator`` for placements and random starts.
        batch_size: images per forward pass of the metric predictions.
        task: ``"classification"`` (default) or ``"face-detection"`` (:mod:`patchbench.tasks`).
        attack_result: a precomputed ``AttackResult`` of the same attack on the same images ``x``
            (a non-adaptive attack on the bare model, e.g. one DO attack shared by every defense of
            a table); the attack is then not run again, and the numbers equal those of running it.
        target: targeted attacks (classification): ``N`` target classes (or one int) passed to the
            attack; success then means reaching the target. Retrieval: the target class (one int);
            the attack gets ``target`` and ``target_code`` = its anchor voted from the gallery.
        gallery, k, purify_gallery, attack_train: retrieval only (``task="retrieval"``, the model a
            hasher; :mod:`patchbench.evaluation_retrieval`): ``gallery = (database images M×C×H×W
            or ±1 codes M×bits, M labels)``; ``k`` of mAP@k (default min(1000, M), the authors'
            ``CalcTopMap`` top-k); ``purify_gallery`` also passes the database images through the
            defense (default False: PAIR purifies the input query, §4.2); ``attack_train = (x, y)``
            trains a universal patch there and applies it to the queries (AdvHash: 50 training
            images, tested on 100 others). Queries of the target class are not attacked;
            ``attack_result`` must then be the result on ``x[~has target]`` (in order).
        keyword, train_captions: text-image only (``task="text-image"``, the model a
            ``TextImageModel``; :mod:`patchbench.evaluation_text_image`): ``x`` are the ad images,
            ``y`` is ``None``, ``gallery = (images M×C×H×W, captions per image)``, the queries are
            the gallery captions containing ``keyword``, ``k`` of R@k (default 10), the target
            embedding e_t comes from the ``train_captions`` with the keyword (or ``target=e_t``),
            and ``attack_train`` are other ad images to train the patch on.

    Returns:
        an :class:`Evaluation`; ``.metrics()`` is its flat dict, ``.result`` the AttackResult.
    """
    from . import tasks

    t = tasks.get(task)
    _check_attack(attack)
    _check_defense(defense)
    adaptive = check_bool(adaptive, "adaptive")
    batch_size = check_positive_int(batch_size, "batch_size")
    if attack is not None and tasks.get(getattr(attack, "task", "classification")) is not t:
        raise ValueError(f"attack: {_name(attack, 'attack')!r} is an attack on the "
                         f"{getattr(attack, 'task')!r} task, not on {t.name!r}; pass "
                         f"task={getattr(attack, 'task')!r}")
    if t.name == "text-image":
        from .evaluation_text_image import evaluate_text_image
        return evaluate_text_image(t, model, x, y, attack, defense, threat, adaptive, generator,
                                   batch_size, attack_result, target, gallery, k, purify_gallery,
                                   attack_train, keyword, train_captions)
    for key, value in {"keyword": keyword, "train_captions": train_captions}.items():
        if value is not None:
            raise ValueError(f"{key}: only for task='text-image', not {t.name!r}")
    if t.name == "retrieval":
        from .evaluation_retrieval import evaluate_retrieval
        return evaluate_retrieval(t, model, x, y, attack, defense, threat, adaptive, generator,
                                  batch_size, attack_result, target, gallery, k, purify_gallery,
                                  attack_train)
    extra = {"gallery": gallery, "k": k, "attack_train": attack_train}
    for key, value in extra.items():
        if value is not None:
            raise ValueError(f"{key}: only for task='retrieval' or 'text-image', not {t.name!r}")
    if purify_gallery is not False:
        raise ValueError(f"purify_gallery: only for task='retrieval', not {t.name!r}")
    if t.name == "face-detection":
        return _evaluate_faces(t, model, x, y, attack, defense, threat, adaptive, generator,
                               batch_size, attack_result, target)
    if t.name != "classification":
        raise ValueError(f"task: evaluate does not know the {t.name!r} task yet (it knows "
                         f"'classification', 'face-detection' and 'retrieval')")
    if not callable(model):
        raise TypeError(f"model: expected a classifier (an nn.Module returning logits), got "
                        f"{type(model).__name__}")
    x = check_images(x, "x", channels=getattr(model, "channels", None))
    y = check_labels(y, x.shape[0], getattr(model, "num_classes", None), "y").to(x.device)
    if target is not None:
        from .attacks._common import as_targets
        target = as_targets(target, x.shape[0], getattr(model, "num_classes", None), x.device)
    if attack_result is not None:
        _check_attack_result(attack_result, x, adaptive, defense)
    g = make_generator(generator, device=x.device.type if x.device.type == "cuda" else "cpu")
    from .defenses.base import Defended
    uses_mask = defense is not None and bool(defense.uses_true_mask)
    if uses_mask:   # the oracle's mask covers all N images: classify them in one batch
        batch_size = x.shape[0]

    def behind(d):   # eval mode: attacks restore the mode they found (a fresh Module trains)
        return model if d is None else Defended(model, d).eval()

    pred_clean = _predict(behind(None if defense is None else defense.for_result(None)), x,
                          batch_size)
    name = _name(defense, "undefended")
    if attack is None and attack_result is None:
        # no attack: nothing succeeds (success rate 0 over the correct images), robust = clean
        metrics = t.cell_metrics(pred_clean, pred_clean, y, target, "none")
        clean, _, asr = t.rates(pred_clean, pred_clean, y, target)
        return Evaluation(clean, clean, asr, adaptive, name, "none", None, t.name, "none",
                          pred_clean, pred_clean, metrics)
    if attack_result is not None:
        res = attack_result
    else:
        if threat is None:
            from .patches import Threat
            threat = Threat(area=0.05)
        victim = model
        if adaptive and defense is not None:
            victim = behind(defense)
            if uses_mask:
                # An adaptive attacker faces the oracle *with* the true mask (the patch pixels it
                # will repaint). Drawing the masks first with ``g`` is what ``attack.run`` does
                # itself, so the placements (and the random starts drawn after them) are the same
                # as in every other cell.
                if not getattr(attack, "per_image", True):
                    raise ValueError(f"adaptive: the GT-mask oracle must know the patch mask "
                                     f"before the attack runs, but {_name(attack, 'the attack')!r} "
                                     f"draws its placements while it trains; use adaptive=False "
                                     f"(the oracle repaints the true patch either way)")
                if hasattr(threat, "masks"):
                    threat = threat.masks(x, generator=g)
                victim = behind(defense.with_mask(threat))
        kw = {} if target is None else {"target": target}
        res = attack.run(victim, x, y, threat, generator=g, **kw)
    pred_adv = _predict(behind(None if defense is None else defense.for_result(res)),
                        res.x_adv, batch_size)
    who = tasks.classification.attacker_label(attack if attack is not None else res, adaptive,
                                              defense)
    clean, robust, asr = t.rates(pred_clean, pred_adv, y, target)
    metrics = tasks.classification.metrics_of(clean, robust, asr, who)
    return Evaluation(clean, robust, asr, adaptive, name, _name(attack, "attack"), res, t.name,
                      who, pred_clean, pred_adv, metrics)


def _check_face_boxes(y, n: int):
    from .attacks.face import _as_boxes
    if isinstance(y, Tensor) and y.dim() == 3:
        y = list(y)
    if not isinstance(y, (list, tuple)):
        raise TypeError(f"y: expected one K×4 tensor of face boxes per image (a list), got "
                        f"{type(y).__name__}")
    if len(y) != n:
        raise ValueError(f"y: expected one K×4 tensor of face boxes per image ({n}), got {len(y)}")
    return [_as_boxes(b, f"y[{i}]") for i, b in enumerate(y)]


def _patch_boxes(res, n: int, name: str):
    pb = (res.info or {}).get("patch_boxes")
    if not isinstance(pb, (list, tuple)) or len(pb) != n:
        raise ValueError(f"{name}: a face-patch result must carry info['patch_boxes'] (one K×4 tensor "
                         f"of patch boxes per image, as FacePatch.score returns it): Criterion 2 "
                         f"counts the detections on the patch")
    return pb


def _evaluate_faces(t, detector, x, y, attack, defense, threat, adaptive, generator, batch_size,
                    attack_result, target) -> Evaluation:
    """The face-detection cell: detections on the (defended) clean and patched images."""
    from .metrics.classification import Rate
    if not callable(getattr(detector, "detect", None)):
        raise TypeError(f"model: expected a face detector with .detect() (e.g. load_mtcnn()), got "
                        f"{type(detector).__name__}")
    if adaptive:
        raise ValueError("adaptive: face-detection cells have no adaptive attacker (a detector "
                         "behind a defense is not a classifier); use adaptive=False")
    if target is not None:
        raise ValueError("target: hiding faces is untargeted; pass target=None")
    if defense is not None and defense.output != "image":
        raise ValueError(f"defense: a face detector can only sit behind a purifier (image → image), "
                         f"{_name(defense, 'the defense')!r} is a prediction-level defense")
    x = check_images(x, "x", channels=3)
    y = _check_face_boxes(y, x.shape[0])
    if attack_result is not None:
        _check_attack_result(attack_result, x, adaptive, defense)
        _patch_boxes(attack_result, x.shape[0], "attack_result")

    def detect(images, res):
        if defense is not None:
            images = defense.for_result(res)(images)
        out = []
        for i in range(0, images.shape[0], batch_size):
            out += list(detector.detect(images[i:i + batch_size]))
        return out

    delta = float(getattr(attack, "delta", 0.99))
    dets_clean = detect(x, None)
    res = attack_result
    if res is None and attack is not None:
        res = attack.run(detector, x, y, threat, generator=make_generator(generator))
    if res is None:
        dets_adv, pboxes, who = dets_clean, [torch.zeros(0, 4) for _ in y], "none"
    else:
        dets_adv = detect(res.x_adv, res)
        pboxes = _patch_boxes(res, x.shape[0], "attack")
        who = "DO"
    metrics = t.cell_metrics(dets_clean, dets_adv, y, pboxes, delta, who)
    n_faces = metrics["n_faces"]
    clean = Rate.of(round(metrics["clean_recall"] * n_faces), n_faces)
    robust = Rate.of(round(metrics["recall"] * n_faces), n_faces)
    asr = Rate.of(round(metrics["asr"] * metrics["asr_n"]) if metrics["asr_n"] else 0,
                  metrics["asr_n"])
    return Evaluation(clean, robust, asr, False, _name(defense, "undefended"),
                      _name(attack, "attack" if res is not None else "none"), res, t.name, who,
                      None, None, metrics,
                      {"dets_clean": dets_clean, "dets_adv": dets_adv, "patch_boxes": pboxes})
