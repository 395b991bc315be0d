"""The retrieval evaluation cell (``pb.evaluate(..., task="retrieval")``): PAIR's Table 2 protocol
(ACM MM 2024, §3.2, §5.1) for a hasher behind a defense, attacked by AdvHash (Hu et al., ACM MM 2021).

1. the gallery: database codes of the bare hasher (or given ±1 codes), from which the target
   anchor is voted (:func:`patchbench.tasks.retrieval.anchor`); with ``purify_gallery`` the codes the
   system searches are those of the purified database images instead (one draw per image);
2. clean codes of every query behind the defense → ``clean`` mAP@k;
3. the attacked queries — those whose label (set) does not contain the target (AdvHash tests on
   images of other classes) — patched by the attack, which runs on the bare hasher (non-adaptive)
   or on ``Defended(hasher, defense)`` (adaptive: EOT over a randomised defense's draws, PAIR eq. (4),
   BPDA where the defense declares it); a universal patch may be trained on separate images
   (``attack_train``, the paper's 50 training images) or reused (``attack_result``);
4. their codes behind the defense → ``irrelevant`` t-mAP@k and ``relevant`` mAP@k.

Whether the gallery is purified: PAIR's text purifies "the entire input image" before retrieval
(§4.2; Fig. 2: "the adversarial patched image serves as the input" of content-based retrieval), and
its database is clean, so the default purifies the queries only (``purify_gallery=False``). The
authors' code also passes the gallery through PAIR; ``purify_gallery=True`` is that reading.
"""
from __future__ import annotations

import math

from torch import Tensor

from ._validation import check_bool, check_images, check_positive_int, make_generator
from .tasks import retrieval as R


def check_hasher(model) -> int:
    """A hasher (the ``Hasher`` protocol: ``bits``, ``channels``, forward → ``N×bits``); its bits."""
    if not callable(model) or not hasattr(model, "bits"):
        raise TypeError(f"model: expected a hasher (patchbench.models.hashing Hasher protocol: .bits, "
                        f"forward → N×bits) for task='retrieval', got {type(model).__name__}")
    return check_positive_int(getattr(model, "bits"), "model.bits")


def check_gallery(gallery, bits: int, channels, y: Tensor):
    """``(db, db_labels)``: ``db`` images ``M×C×H×W`` or ±1 codes ``M×bits``; labels in the
    queries' format. Returns ``(images or None, codes or None, labels)``."""
    if not isinstance(gallery, (tuple, list)) or len(gallery) != 2:
        raise TypeError(f"gallery: expected (database images or ±1 codes, database labels), got "
                        f"{type(gallery).__name__}")
    db, labels = gallery
    if not isinstance(db, Tensor) or db.dim() not in (2, 4):
        got = tuple(db.shape) if isinstance(db, Tensor) else type(db).__name__
        raise ValueError(f"gallery: expected database images M×C×H×W or ±1 codes M×bits, got {got}")
    images = codes = None
    if db.dim() == 4:
        images = check_images(db, "gallery images", channels=channels)
    else:
        codes = R.check_codes(db, "gallery codes")
        if codes.shape[1] != bits:
            raise ValueError(f"gallery codes: the hasher has {bits} bits, the codes {codes.shape[1]}")
    m = db.shape[0]
    if not isinstance(labels, Tensor) or labels.dim() not in (1, 2) or labels.shape[0] != m:
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"gallery: {m} database items need {m} labels, got {got}")
    labels = R.check_labels(labels, m, "gallery labels")
    if labels.dim() != y.dim() or (y.dim() == 2 and labels.shape[1] != y.shape[1]):
        raise ValueError(f"gallery labels: their format {tuple(labels.shape)} differs from the "
                         f"queries' {tuple(y.shape)} (both class indices, or both N×K multi-hot)")
    return images, codes, labels


def _codes(model, x: Tensor, batch_size: int) -> Tensor:
    """±1 codes of ``model`` (a hasher, or ``Defended``: one draw) on ``x``, batched, no grad."""
    from ._io import predict_batched
    return predict_batched(model, x, batch_size, reduce=R.binarize)


def _patch_side(threat, x: Tensor):
    if threat is None or not hasattr(threat, "patch_size"):
        return None, None
    h, _ = threat.patch_size(tuple(x.shape[-2:]))
    return round(h / x.shape[-2], 4), getattr(threat, "shape", None)


def evaluate_retrieval(t, model, x, y, attack, defense, threat, adaptive, generator, batch_size,
                       attack_result, target, gallery, k, purify_gallery, attack_train):
    """The retrieval cell (see the module docstring); called by :func:`patchbench.evaluate`."""
    from .defenses.base import Defended
    from .evaluation import Evaluation, _check_attack_result, _name
    from .tasks.classification import attacker_label

    bits = check_hasher(model)
    channels = getattr(model, "channels", None)
    x = check_images(x, "x", channels=channels)
    y = R.check_labels(y, x.shape[0], "y").to(x.device)
    if gallery is None:
        raise ValueError("gallery: task='retrieval' needs the database: gallery=(images or ±1 "
                         "codes, labels)")
    db_x, db_codes, db_labels = check_gallery(gallery, bits, channels, y)
    db_labels = db_labels.to(x.device)
    purify_gallery = check_bool(purify_gallery, "purify_gallery")
    if purify_gallery and db_x is None and defense is not None:
        raise ValueError("purify_gallery: the gallery was given as codes; pass its images to "
                         "purify them")
    m = db_labels.shape[0]
    k = min(R.TOPK, m) if k is None else check_positive_int(k, "k")
    if k > m:
        raise ValueError(f"k: the top {k} of a gallery of {m} items; use k <= {m}")
    if (attack is not None or attack_result is not None) and target is None:
        raise ValueError("target: a retrieval attack is targeted; pass target=<target class>")
    if target is not None:
        target = R.check_target_label(target, y, "target")
    if attack_train is not None and attack is None:
        raise ValueError("attack_train: images to train a universal patch on need attack=")
    g = make_generator(generator, device=x.device.type if x.device.type == "cuda" else "cpu")
    uses_mask = defense is not None and bool(defense.uses_true_mask)
    qbs = x.shape[0] if uses_mask else batch_size   # the oracle's masks cover a whole query set

    def behind(d):
        return model if d is None else Defended(model, d).eval()

    bare = _codes(model, db_x, batch_size).to(x.device) if db_codes is None else db_codes.to(x.device)
    search = bare
    if purify_gallery and defense is not None:
        search = _codes(behind(defense.for_result(None)), db_x, batch_size).to(x.device)
    code = None if target is None else R.anchor(bare, db_labels, target)
    clean = _codes(behind(None if defense is None else defense.for_result(None)), x, qbs)
    attacked = None if target is None else t.attackable(y, target)
    res, adv = None, None
    if attack is not None or attack_result is not None:
        if not bool(attacked.any()):
            raise ValueError(f"y: every query's label contains the target class {target}; there is "
                             f"no query to attack")
        xa, ya = x[attacked], y[attacked]
        if attack_result is not None:
            _check_attack_result(attack_result, xa, adaptive, defense)
            res = attack_result
        else:
            res = _run_attack(attack, model, xa, ya, defense, threat, adaptive, g, target, code,
                              attack_train, behind, uses_mask)
        adv = _codes(behind(None if defense is None else defense.for_result(res)), res.x_adv,
                     res.x_adv.shape[0] if uses_mask else batch_size)
    who = "none" if res is None else attacker_label(attack if attack is not None else res,
                                                    adaptive, defense)
    metrics = t.cell_metrics(clean, adv, y, search, db_labels, target, k, attacked=attacked,
                             attacker=who, target_code=code)
    eot = None
    if res is not None:
        eot = Defended(model, defense).eot_samples if (adaptive and defense is not None and
                                                       defense.randomized) else 1
    side, shape = _patch_side(threat if res is not None else None, x)
    metrics.update(eot_samples=eot, patch_side=side, shape=shape, purify_gallery=purify_gallery)
    scores = t.scores(clean, adv, y, search, db_labels, target, k, attacked)
    nan = R.MeanScore(math.nan, 0, math.nan, math.nan)
    robust = scores.get("relevant", scores["clean"])
    asr = scores.get("irrelevant", nan)
    outputs = {"clean_codes": clean, "adv_codes": adv, "db_codes": search, "db_labels": db_labels,
               "attacked": attacked, "target_code": code}
    return Evaluation(scores["clean"], robust, asr, adaptive, _name(defense, "undefended"),
                      _name(attack, "attack" if res is not None else "none"), res, t.name, who,
                      clean, adv, metrics, outputs=outputs)


def _run_attack(attack, model, xa: Tensor, ya: Tensor, defense, threat, adaptive: bool, g,
                target: int, code: Tensor, attack_train, behind, uses_mask: bool):
    """The attack on its victim (bare hasher, or ``Defended`` for an adaptive attacker), trained
    on ``attack_train`` when given (universal patches: ``fit`` there, ``apply`` on the queries)."""
    if threat is None:
        from .patches import Threat
        threat = Threat(area=0.05)   # PAIR §5.1: a square of side 0.22 (5 % of the area)
    victim = model
    if adaptive and defense is not None:
        if uses_mask and not getattr(attack, "per_image", True):
            raise ValueError(f"adaptive: the GT-mask oracle must know the patch mask before the "
                             f"attack runs, but {type(attack).__name__} draws its placements "
                             f"while it trains; use adaptive=False")
        if uses_mask and hasattr(threat, "masks"):
            threat = threat.masks(xa, generator=g)
            victim = behind(defense.with_mask(threat))
        else:
            victim = behind(defense)
    kw = {"target": target, "target_code": code}
    if attack_train is None:
        return attack.run(victim, xa, ya, threat, generator=g, **kw)
    if not (callable(getattr(attack, "fit", None)) and callable(getattr(attack, "apply", None))):
        raise TypeError(f"attack_train: {type(attack).__name__} is not a universal attack with "
                        f"fit/apply; drop attack_train to run it on the queries")
    if not isinstance(attack_train, (tuple, list)) or len(attack_train) != 2:
        raise TypeError("attack_train: expected (images, labels) to train the patch on")
    patch = attack.fit(victim, tuple(attack_train), threat, generator=g, **kw)
    res = attack.apply(victim, xa, ya, threat, patch, generator=g, **kw)
    res.history = list(getattr(attack, "history_", []))
    return res
