"""Held-out scoring of universal patches, repeated placements and prediction-referenced labels in
classification grids.

A universal patch (Brown et al. 2017, "Adversarial Patch", §2 eq. (1)–(2): one patch for every image,
trained by expectation over images, placements and transformations) is an attack that *learns*: its
success on the images it was trained on says little about new images. A classification dataset
entry may therefore name the patch's training images apart from the scored ones::

    datasets = [{ name = "photos", split = "test", n = 24,            # the scored (held-out) photos
                  train = { split = "train", n = 30 },               # the patch's training photos
                  placements = 3 }]                                  # each scored at 3 placements

* ``train``: ``split`` (default ``"train"``), ``offset`` (0), ``n`` (default: the rest of the split).
  The patch is fitted there (``attack.fit``) and pasted on the scored images (``attack.apply``); the
  ranges must not overlap when both name the same split, and a split called ``"all"`` overlaps every
  other one, so it cannot be paired with one. Every attack of the grid must then be universal
  (``per_image = False``: ``universal-patch``), the attacker non-adaptive, and no sticker or
  corruption given (they would touch the scored images only).
* ``placements`` (an integer >= 1, default 1): each scored image is pasted on at that many random
  placements (independent draws); robust accuracy and attack success count photo × placement trials
  (``n`` = photos × placements; their Wilson intervals treat the trials as independent, so they are
  narrower than an interval over photos would be), clean accuracy counts the photos (``photos``).
  Benign cells ignore it.

Labels ``-1`` (a photo with no defensible ImageNet class, :func:`patchbench.data.photos`) mean
"reference = the model's own clean prediction": the cell replaces them by the bare model's clean
class before anything else and records how many it replaced (``reference_by_prediction``; the others
are ``reference_by_label``). Attack success is, as everywhere in patchbench, counted over the images
the model classifies correctly (``asr_n`` of them: the prediction-referenced ones always, the
labelled ones where the model is right); ``robust_acc_correct`` is the robust accuracy over the same
images (1 − success for an untargeted attack).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from .._validation import check_int, check_positive_int

#: a split that holds every other one (``photos``' ``"all"``): never disjoint from them
ALL_SPLIT = "all"
_TRAIN_DEFAULTS = {"split": "train", "offset": 0, "n": None}
#: the label of a photo whose reference is the model's own clean prediction
PREDICTION_LABEL = -1


# ---- validation (experiment files) ---------------------------------------------------------------
def check_dataset(c, e, where: str, info: dict, size_of):
    """A classification entry with ``train`` (normalised: every default filled in, so it is part
    of the cells' keys) and ``placements`` checked; errors name ``where`` and the key."""
    opts = dict(e.options)
    if "placements" in opts:
        opts["placements"] = c.wrap(where, check_positive_int, opts["placements"], "placements")
    if "train" in opts:
        path = f"{where}.train"
        t = c.table(opts["train"], path)
        c.keys(t, path, set(_TRAIN_DEFAULTS))
        spec = {**_TRAIN_DEFAULTS, **t}
        if not isinstance(spec["split"], str) or spec["split"] not in info.get("splits", []):
            c.fail(f"{path}.split", f"expected one of {info.get('splits')}, got {spec['split']!r}",
                   LookupError)
        spec["offset"] = c.wrap(path, check_int, spec["offset"], "offset", 0)
        if spec["n"] is not None:
            spec["n"] = c.wrap(path, check_int, spec["n"], "n", 1)
        size = size_of(e.name, spec["split"])
        if size is not None and spec["offset"] >= size:
            c.fail(f"{path}.offset", f"the {e.name!r} {spec['split']} split has {size} images, got "
                                     f"offset={spec['offset']}")
        if size is not None and spec["n"] is not None and spec["offset"] + spec["n"] > size:
            c.fail(f"{path}.n", f"the {e.name!r} {spec['split']} split has {size} images, got "
                                f"n={spec['n']}" + (f" from offset={spec['offset']}"
                                                    if spec["offset"] else ""))
        _check_disjoint(c, path, opts, spec)
        opts["train"] = spec
    return type(e)(e.name, opts, e.label)


def _check_disjoint(c, path: str, opts: dict, train: dict) -> None:
    """The training images must not be scored: other splits (neither of them ``"all"``), or
    disjoint ranges of one split."""
    split = opts.get("split", "test")
    if split != train["split"]:
        if ALL_SPLIT in (split, train["split"]):
            c.fail(f"{path}.split", f"split {ALL_SPLIT!r} holds every image, so training on "
                                    f"{train['split']!r} and scoring {split!r} would score training "
                                    f"images; use 'train' and 'test'")
        return
    inf = float("inf")
    lo_a = int(opts.get("offset", 0))
    hi_a = lo_a + opts["n"] if isinstance(opts.get("n"), int) else inf
    lo_b = train["offset"]
    hi_b = lo_b + train["n"] if train["n"] is not None else inf
    if lo_a < hi_b and lo_b < hi_a:
        c.fail(path, f"the training images ({split!r} from {lo_b}, n={train['n']}) overlap the "
                     f"scored ones (from {lo_a}, n={opts.get('n')}); a held-out score needs "
                     f"another split or disjoint offsets")


def check_grid(c, g, where: str) -> None:
    """A classification grid whose datasets name ``train`` images: universal attacks only, a
    non-adaptive attacker, no stickers or corruptions."""
    with_train = [j for j, d in enumerate(g.datasets) if "train" in d.options]
    if not with_train:
        return
    j = with_train[0]
    attacks = [a for a in g.attacks if a.name != "none"]
    if not attacks:
        c.fail(f"{where}.datasets[{j}].train", "training images are for a universal attack "
                                               "(e.g. 'universal-patch'), but this grid has none")
    from .config import _is_ref, build_attack
    for a in attacks:
        plain = {k: v for k, v in a.options.items() if not _is_ref(v)}
        if getattr(build_attack(a.name, plain), "per_image", True):
            c.fail(f"{where}.attacks", f"{a.display()!r} is a per-image attack, but "
                                       f"datasets[{j}].train names training images (they are for "
                                       f"universal attacks such as 'universal-patch'); put it in "
                                       f"a [[grid]] of its own")
    if any(g.adaptive):
        c.fail(f"{where}.adaptive", "a universal patch scored on held-out images is trained on the "
                                    "bare model here (adaptive = [false])")
    if any(s.name != "none" for s in g.stickers) or any(x["name"] != "none" for x in g.corruptions):
        c.fail(where, "grids with training images (datasets[].train) take no stickers or "
                      "corruptions")


# ---- the cell --------------------------------------------------------------------------------------
def train_spec(cfg: dict) -> Optional[dict]:
    """The cell's ``train`` table (normalised), or None."""
    spec = (cfg.get("dataset_options") or {}).get("train")
    return dict(spec) if isinstance(spec, dict) else None


def placements_of(cfg: dict) -> int:
    """Placements per scored image (1 for benign cells: a clean image has no patch to place)."""
    if cfg.get("attack", "none") == "none":
        return 1
    return int((cfg.get("dataset_options") or {}).get("placements", 1) or 1)


def repeat(x: Tensor, p: int) -> Tensor:
    """``p`` copies of a batch, copy after copy (row ``i + k·N`` is image ``i``, placement ``k``)."""
    return x if p == 1 else x.repeat(p, *([1] * (x.dim() - 1)))


def rows(total_images: int, n: int, p: int) -> Tensor:
    """The rows of a ``p``-fold repeated pool of ``total_images`` that hold its first ``n``."""
    return (torch.arange(p).view(-1, 1) * total_images + torch.arange(n).view(1, -1)).reshape(-1)


@torch.no_grad()
def with_reference(model, x: Tensor, y: Tensor, batch_size: int = 64):
    """``(labels, replaced)``: ``y`` with every ``-1`` replaced by ``model``'s clean class on that
    image, and the boolean mask of the replaced rows (None when there were none: ``y`` unchanged)."""
    if not isinstance(y, Tensor) or y.dtype == torch.bool or not bool((y == PREDICTION_LABEL).any()):
        return y, None
    from .._io import predict_batched
    replaced = y == PREDICTION_LABEL
    pred = predict_batched(model, x[replaced], batch_size, reduce=lambda z: z.argmax(-1))
    out = y.clone()
    out[replaced] = pred.to(y.device)
    return out, replaced


def fit_and_apply(attack, model, x_train: Tensor, y_train: Tensor, x: Tensor, y: Tensor, threat,
                  placements: int, generator: torch.Generator):
    """Brown et al.'s patch fitted on ``(x_train, y_train)``, then pasted on ``placements`` copies
    of ``x`` (fresh placements each), all with one generator: the result on the scored trials, its
    ``history`` the patch's mean objective per epoch and ``info`` the success of the same patch on
    its own training images (``train_success`` / ``train_eligible``, one row per training image ×
    placement)."""
    patch = attack.fit(model, (x_train, y_train), threat, generator=generator)
    res = attack.apply(model, repeat(x, placements), repeat(y, placements), threat, patch,
                       generator=generator)
    own = attack.apply(model, repeat(x_train, placements), repeat(y_train, placements), threat,
                       patch, generator=generator)
    res.history = list(getattr(attack, "history_", []))
    res.info = {**(res.info or {}), "train_success": own.success.detach().cpu(),
                "train_eligible": own.eligible.detach().cpu()}
    return res


def cell_metrics(ev, y: Tensor, n: int, p: int, replaced: Optional[Tensor], res,
                 train: Optional[dict]) -> Dict:
    """What a cell adds to :meth:`patchbench.evaluation.Evaluation.metrics` (``y``: the labels of
    its scored trials, the first ``n`` being the photos themselves; module doc): the
    reference counts, photos and placements, the robust accuracy over the correctly classified
    images and, for a held-out universal patch, its training split and success there."""
    from ..metrics.classification import Rate
    out: Dict[str, object] = {}
    if replaced is not None:
        k = int(replaced[:n].sum())
        out.update(reference_by_prediction=k, reference_by_label=n - k)
    if ev.pred_adv is not None and ev.result is not None:
        ok = ev.pred_clean.to(y.device) == y
        still = (ev.pred_adv.to(y.device) == y) & ok
        rate = Rate.of(int(still.sum()), int(ok.sum()))
        out["robust_acc_correct"], out["robust_acc_correct_ci"] = rate.value, [rate.lo, rate.hi]
    if p > 1 or train is not None:
        clean = Rate.of(int((ev.pred_clean[:n].to(y.device) == y[:n]).sum()), n)
        out.update(photos=n, placements=p, clean_acc=clean.value, clean_acc_ci=[clean.lo, clean.hi])
    if train is not None and res is not None:
        info = res.info or {}
        s, e = info.get("train_success"), info.get("train_eligible")
        out.update(train_split=train["split"], train_offset=train["offset"])
        if isinstance(s, Tensor) and isinstance(e, Tensor):
            rate = Rate.of(int((s & e).sum()), int(e.sum()))
            out.update(train_n=int(s.numel()) // max(p, 1), train_asr=rate.value,
                       train_asr_ci=[rate.lo, rate.hi], train_asr_n=rate.n)
        if res.history:
            out["train_loss_last"] = float(res.history[-1])
    return out


__all__ = ["check_dataset", "check_grid", "train_spec", "placements_of", "repeat", "rows",
           "with_reference", "fit_and_apply", "cell_metrics", "PREDICTION_LABEL", "ALL_SPLIT"]
