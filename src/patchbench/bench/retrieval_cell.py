"""The retrieval cell of the harness: one :func:`patchbench.evaluate` call with ``task="retrieval"``
(PAIR, ACM MM 2024, §5.1 / Table 2: a hasher behind a defense, attacked by AdvHash, Hu et al. ACM
MM 2021), with what the run can share between cells.

* Queries: the cell's first ``n`` images of its pool (the dataset entry's split, default
  ``"query"``). The gallery (``dataset_options.gallery``) is hashed once per process and hasher
  (``_GALLERY_CODES``); the cell passes those ±1 codes to ``pb.evaluate``, which votes the target
  anchor from them and searches them (unless ``purify_gallery``: then it passes the images).
* AdvHash's training images: the first ``train.n`` images of ``train.split`` from ``train.offset``
  on whose label does not contain the target class.
* Non-adaptive (downstream-only) AdvHash depends only on the bare hasher, its training images, the
  gallery (the anchor), the queries, the threat, the target and the seed: every defense of that group
  shares one run (the runner's ``_attack_key``, memory and ``DIR/cache/attacks/``), computed as the
  undefended ``pb.evaluate`` computes it (same generator), so a DO cell's numbers equal a direct
  ``pb.evaluate(hasher, x, y, attack, defense, ...)``. Unlike classification, the shared attack
  runs on the cell's own ``n`` queries (``n`` is in the key), not on the pool: nothing is sliced.
* A randomised defense that takes a ``seed`` (PAIR, MAEDefense) and is not given one in the file
  gets the cell's seed, so its mask draws — and the cell's numbers — are the same on every run and
  executor.
* Metrics: :meth:`patchbench.tasks.retrieval.Retrieval.cell_metrics` (``clean`` mAP@k, ``irrelevant``
  t-mAP@k, ``relevant`` mAP@k, ``n_queries``, ...) plus ``eot_samples``, ``patch_side``, ``shape``
  and ``task = "hashing"`` (the row field of content-based hashing search; text-to-image search will
  be another), so ``results.json`` rows carry deliverable 7's fields.
* Gallery (``[experiment] gallery = G``): the first ``G`` attacked queries, clean, patched and
  purified (one fresh draw), and the top 5 database items of the clean and of the patched query as
  the system ranks them (behind the defense), with their labels, as 32-px thumbnails.
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import torch

_GALLERY_CODES: "OrderedDict[str, tuple]" = OrderedDict()
_GALLERY_DATA: "OrderedDict[str, tuple]" = OrderedDict()
_TRAIN: "OrderedDict[str, tuple]" = OrderedDict()
TOP = 5             # results shown per query in the gallery
THUMB = 32          # side of a stored database thumbnail


def dataset_own(cfg: dict) -> dict:
    """The dataset's own options (``size``, ``seed``) of a cell: what is not the harness's."""
    return {k: v for k, v in cfg["dataset_options"].items()
            if k not in ("split", "n", "offset", "photos", "gallery", "train")}


def _load_part(cfg: dict, part: str, n: Optional[int] = None):
    from ..data import load_dataset
    spec = cfg["dataset_options"][part]
    return load_dataset(cfg["dataset"], split=spec["split"], n=spec["n"] if n is None else n,
                        offset=spec["offset"], **dataset_own(cfg))


def gallery_data(cfg: dict, remember):
    """``(images uint8 M×C×H×W on the CPU, labels)`` of the cell's gallery, kept per process."""
    key = json.dumps([cfg["dataset"], cfg["dataset_options"]["gallery"], dataset_own(cfg)],
                     sort_keys=True)

    def load():
        x, y = _load_part(cfg, "gallery")
        return (x * 255).round().to(torch.uint8), y
    return remember(_GALLERY_DATA, key, load, 2)


def gallery_codes(cfg: dict, model, model_key: str, device: str, batch_size: int, remember):
    """±1 codes of the gallery under the bare hasher (on ``device``), kept per process."""
    from .._io import predict_batched
    from ..tasks.retrieval import binarize
    key = json.dumps([model_key, cfg["dataset"], cfg["dataset_options"]["gallery"],
                      dataset_own(cfg), device, batch_size], sort_keys=True)

    def codes():
        x, _ = gallery_data(cfg, remember)
        return predict_batched(model, x.to(device).float() / 255, batch_size, reduce=binarize)
    return remember(_GALLERY_CODES, key, codes, 4)


def attack_train(cfg: dict, device: str, remember):
    """AdvHash's training images: the first ``train.n`` of the train split (from its offset) whose
    label does not contain the target class."""
    from ..tasks.retrieval import has_label
    from .config import dataset_size
    spec, target = cfg["dataset_options"]["train"], cfg["target"]
    key = json.dumps([cfg["dataset"], spec, dataset_own(cfg), target, device], sort_keys=True)

    def load():
        size = dataset_size(cfg["dataset"], spec["split"])
        left = None if size is None else size - spec["offset"]
        want = spec["n"]
        m = want if left is None else min(left, want + want // 4 + 16)
        while True:
            x, y = _load_part(cfg, "train", m)
            keep = (~has_label(y, target)).nonzero()[:, 0]
            if keep.numel() >= want or (left is not None and m >= left):
                break
            m = min(2 * m, left) if left is not None else 2 * m
        if keep.numel() < want:
            raise ValueError(f"dataset_options.train.n: the {cfg['dataset']!r} {spec['split']} "
                             f"split holds {keep.numel()} images without class {target} from "
                             f"offset {spec['offset']}, fewer than n={want}")
        keep = keep[:want]
        return x[keep].to(device), y[keep].to(device)
    return remember(_TRAIN, key, load, 2)


def _seeded(defense_name: str, options: dict, seed: int) -> dict:
    """``options`` plus ``seed`` (the cell's) for a defense whose constructor takes one (PAIR's and
    MAEDefense's mask generator) and was not given one."""
    import inspect

    from ..defenses.base import _DEFENSES
    cls = _DEFENSES.lookup(defense_name)
    if "seed" in options or "seed" not in inspect.signature(cls).parameters:
        return options
    return {**options, "seed": int(seed)}


def _portable(res):
    """An AttackResult with only plain data in ``info`` (tensors, numbers, lists): what the disk
    cache can hold under a weights-only load (the placement parameters are dropped)."""
    from ..attacks.base import AttackResult

    def plain(v):
        if isinstance(v, torch.Tensor) or v is None or isinstance(v, (bool, int, float, str)):
            return True
        return isinstance(v, (list, tuple)) and all(plain(u) for u in v)
    info = {k: v for k, v in (res.info or {}).items() if plain(v)}
    return AttackResult(x_adv=res.x_adv, patch=res.patch, mask=res.mask, success=res.success,
                        history=list(res.history), info=info, eligible=res.eligible)


def _shared_attack(cfg, settings, attack, model, x, y, threat, gallery, train, k, remember):
    """The DO AdvHash of this cell's group: from memory, the run's cache folder, or run now by the
    undefended :func:`patchbench.evaluate` (its generator), and kept in both."""
    import patchbench as pb
    from .._io import atomic_save
    from .runner import _ATTACKS, _as_result, _attack_key, _result_dict
    key = _attack_key(cfg)
    folder = settings.get("cache_dir")

    def load_or_run():
        if folder:
            from ..models.weights import load_cache
            data = load_cache(Path(folder) / f"{key}.pt", "attack cache",
                              map_location=settings.get("device", "cpu"))
            if isinstance(data, dict) and "result" in data:
                return _as_result(data["result"])
        ev = pb.evaluate(model, x, y, attack=attack, threat=threat, generator=cfg["seed"],
                         task="retrieval", target=cfg["target"], gallery=gallery, k=k,
                         attack_train=train, batch_size=int(settings.get("batch_size", 64)))
        res = _portable(ev.result)
        if folder:
            atomic_save({"result": _result_dict(res)}, Path(folder) / f"{key}.pt")
        return res
    return remember(_ATTACKS, key, load_or_run, 4)


def retrieval_cell(cfg: dict, settings: dict, model, model_key: str, paths: dict, device: str):
    """One retrieval cell: ``(metrics, gallery or None)`` (module doc)."""
    import patchbench as pb
    from ..data import dataset_info
    from ..defenses import BuildContext, build
    from .runner import _first, _load_pool, _remember, _resolve, _threat

    bs = int(settings.get("batch_size", 64))
    x_pool, y_pool = _load_pool(cfg, device)
    x, y = _first(x_pool, y_pool, cfg["n"])
    info = dataset_info(cfg["dataset"], **dataset_own(cfg))
    db_u8, db_y = gallery_data(cfg, _remember)
    db_y = db_y.to(device)
    purify = bool(cfg.get("purify_gallery"))
    codes = gallery_codes(cfg, model, model_key, device, bs, _remember)
    gallery = ((db_u8.to(device).float() / 255) if purify else codes, db_y)
    opts = {k: _resolve(v, paths) for k, v in cfg["attack_options"].items()}
    attack = None if cfg["attack"] == "none" else pb.attacks.get(cfg["attack"], **opts)
    train = attack_train(cfg, device, _remember) if attack is not None else None
    threat = _threat(cfg)
    ctx = BuildContext(model=model, image_size=tuple(x.shape[-2:]), channels=int(x.shape[1]),
                       fill=tuple(info.get("mean", (0.5,) * x.shape[1])),
                       patch_area=cfg["patch_area"], device=device, artifacts=dict(paths))
    defense = None
    if cfg["defense"] != "none":
        options = _seeded(cfg["defense"], dict(cfg["defense_options"]), cfg["seed"])
        defense = build(cfg["defense"], ctx, **options).to(device).eval()
    k = cfg.get("k")
    t0 = time.perf_counter()
    reuse = None
    if attack is not None and not cfg["adaptive"]:
        reuse = _shared_attack(cfg, settings, attack, model, x, y, threat, (codes, db_y), train,
                               k, _remember)
    ev = pb.evaluate(model, x, y, attack=attack, defense=defense, threat=threat,
                     adaptive=cfg["adaptive"], generator=cfg["seed"], task="retrieval",
                     attack_result=reuse, target=cfg.get("target"), gallery=gallery, k=k,
                     purify_gallery=purify, attack_train=None if reuse is not None else train,
                     batch_size=bs)
    metrics = dict(ev.metrics())
    metrics["task"] = "hashing"
    if ev.result is not None and ev.result.history:
        metrics["train_loss_last"] = float(ev.result.history[-1])
    metrics["seconds"] = round(time.perf_counter() - t0, 4)
    g = retrieval_gallery(ev, defense, x, y, db_u8, int(settings.get("gallery", 0)))
    if g is not None:
        g["class_names"] = class_names(cfg["dataset"], info)
    return metrics, g


def class_names(dataset: str, info: dict) -> list:
    """The dataset's class names (the Fashion-MNIST ones for the fmnist retrieval proxies)."""
    names = info.get("class_names")
    if names:
        return [str(c) for c in names]
    if dataset.startswith("fmnist"):
        from ..data.fashion_mnist import FASHION_MNIST_CLASSES
        return list(FASHION_MNIST_CLASSES)
    return []


def _u8(t: torch.Tensor) -> torch.Tensor:
    return (t.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


@torch.no_grad()
def retrieval_gallery(ev, defense, x, y, db_u8: torch.Tensor, count: int) -> Optional[dict]:
    """The first ``count`` attacked queries (every query without an attack): clean, patched,
    purified (one fresh draw), and the top-:data:`TOP` items the system returns for the clean and
    for the patched query (indices, labels, 32-px thumbnails)."""
    if not count:
        return None
    from ..metrics.retrieval import hamming_topk
    out = ev.outputs
    db_codes, db_labels = out["db_codes"], out["db_labels"]
    top = min(TOP, db_codes.shape[0])
    att = out.get("attacked")
    sel = att.nonzero()[:, 0] if att is not None and ev.result is not None else \
        torch.arange(x.shape[0], device=x.device)
    sel = sel[:count]
    n = int(sel.numel())
    if n == 0:
        return None
    small = torch.nn.functional.interpolate(db_u8.float(), size=(THUMB, THUMB), mode="area")

    def ranked(codes):
        _, idx = hamming_topk(codes, db_codes, top)
        idx = idx.cpu()
        return {"index": idx, "labels": db_labels.cpu()[idx],
                "images": small[idx.flatten()].round().to(torch.uint8).reshape(
                    n, top, *small.shape[1:])}
    g = {"kind": "retrieval", "clean": _u8(x[sel]), "y": y[sel].cpu(), "target": None,
         "before": ranked(out["clean_codes"][sel.to(out["clean_codes"].device)])}
    if ev.result is not None:
        xa = ev.result.x_adv[:n]
        g.update(adv=_u8(xa), target=ev.result.info.get("target"),
                 after=ranked(out["adv_codes"][:n]))
        if defense is not None and getattr(defense, "output", "image") == "image":
            g["purified"] = _u8(defense.for_result(ev.result).purify(xa))
    elif defense is not None:
        g["purified"] = _u8(defense.for_result(None).purify(x[sel]))
    return g


def estimate_passes(cfg: dict, shared_attack: bool, n_default: int = 1000) -> float:
    """Hasher forward(+backward) passes of a retrieval cell, at most: the queries' clean and
    attacked codes, the gallery when it is purified (bare gallery codes are computed once per
    process: not charged), and AdvHash's ``epochs × train.n × iterations`` (its early stops make it
    less) × the EOT draws of a randomised defense for an adaptive attacker (× 2 behind a defense: its
    own passes, roughly). A DO attack is charged to the first cell of its group only."""
    from .config import dataset_size
    from .retrieval_config import gallery_size
    o = cfg.get("dataset_options") or {}
    n = cfg["n"] if cfg["n"] is not None else o.get("n")
    if n is None:
        size = dataset_size(cfg["dataset"], o.get("split", "query"))
        n = n_default if size is None else size - int(o.get("offset", 0))
    defended = cfg["defense"] != "none"
    passes = float(n) * (2 if cfg["attack"] != "none" else 1)
    if cfg.get("purify_gallery") and defended:
        passes += float(gallery_size(cfg["dataset"], o.get("gallery") or {}, dataset_size)
                        or n_default)
    if cfg["attack"] != "none" and (cfg["adaptive"] or not shared_attack):
        a = cfg["attack_options"]
        work = a.get("epochs", 1) * (o.get("train") or {}).get("n", 50) * a.get("iterations", 1)
        if cfg["adaptive"] and defended:
            o_def = cfg["defense_options"]
            eot = 1 if o_def.get("mask", "random") != "random" else (
                o_def.get("eot_samples") or _default_eot(cfg["defense"]))
            work *= 2 * eot
        passes += work
    return passes


def _default_eot(name: str) -> int:
    from ..defenses.base import _DEFENSES
    cls = _DEFENSES.lookup(name)
    return int(getattr(cls, "eot_samples", 1) or 1) if getattr(cls, "randomized", False) else 1


__all__ = ["retrieval_cell", "retrieval_gallery", "estimate_passes", "attack_train",
           "gallery_codes", "gallery_data"]
