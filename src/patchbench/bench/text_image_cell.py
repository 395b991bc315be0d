"""The text-image cell of the harness: one :func:`patchbench.evaluate` call with
``task="text-image"`` (TTH, Hu, Chen & Li, ICASSP 2023; PAIR, ACM MM 2024, §5.1 and Tables 1, 3, 4:
a dual encoder's gallery behind a defense, poisoned by ad images carrying one universal patch).

* Gallery: the dataset entry's first ``n`` images of its split from ``offset`` on, with their five
  captions each (:func:`patchbench.data.captions.scene_captions`); kept per process (uint8, CPU).
  The queries are the captions containing the cell's ``keyword``
  (:mod:`patchbench.evaluation_text_image`).
* Ads: ``dataset_options.ads.n`` held-out ad images lacking the keyword
  (:func:`patchbench.data.captions.ad_images`, at the entry's ``size`` and ``seed``).
* e_t's captions: the captions of ``dataset_options.train`` (split, offset, n) that contain the
  keyword; ``pb.evaluate`` averages up to 500 of them (a seeded random subset when more match).
* Non-adaptive (downstream-only) TTH depends only on the bare model, the ads, e_t, the threat and
  the seed: every defense of the group (same model, data, keyword, attack, threat, seed) shares
  one patch (the runner's ``_attack_key`` with the keyword and ``k``; memory and
  ``DIR/cache/attacks/``), computed by the undefended ``pb.evaluate`` (same generator), so a DO
  cell's numbers equal a direct ``pb.evaluate(model, ads, None, tth, defense, ...)``. Its ``info``
  keeps the undefended cell's success threshold (success is not a metric here).
* Defenses are built from the cell's context (image size, the dataset's mean fill, patch area,
  artifacts) without a classifier (``model=None``): a dual encoder has no class scores, so a
  defense that needs one (SLGS's saliency) says so when it is built.
* A randomised defense that takes a ``seed`` (PAIR, MAEDefense) and is not given one gets the
  cell's seed (:func:`patchbench.bench.retrieval_cell._seeded`).
* Metrics: :meth:`patchbench.tasks.text_image.TextImage.cell_metrics` (``task = "text-image"``,
  ``metric = "r@10"``, ``keyword``, ``n_queries``, ``clean`` / ``irrelevant`` / ``relevant`` with
  their 95 % intervals, ``n_gallery``, ``n_ads``, ``attacker``) plus ``eot_samples``,
  ``patch_side``, ``shape``, ``train_loss_last`` and ``seconds``.
* Gallery (``[experiment] gallery = G``): for the ``G`` keyword queries the ads are closest to
  (:func:`pick_queries`: the same in every DO cell of a keyword), the top ``k`` before (clean
  gallery) and after (ads added) as the deployed system ranks them (behind the defense), each
  result's thumbnail (a gallery image, or the patched ad as indexed) with the ads marked and the
  query's own image flagged; plus the first ads clean, patched and purified (one draw) and the
  patch.
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional

import torch

_GALLERY: "OrderedDict[str, tuple]" = OrderedDict()
_ADS: "OrderedDict[str, torch.Tensor]" = OrderedDict()
_TRAIN_CAPTIONS: "OrderedDict[str, list]" = OrderedDict()
THUMB = 32          # side of a stored result thumbnail
ADS_SHOWN = 3       # ads kept (clean, patched, purified) in a cell's gallery


def dataset_own(cfg: dict) -> dict:
    """The dataset's own options (``size``, ``seed``) of a cell: what is not the harness's."""
    from .config import _HARNESS_DATASET_KEYS
    skip = set(_HARNESS_DATASET_KEYS) | {"ads", "train"}
    return {k: v for k, v in cfg["dataset_options"].items() if k not in skip}


def gallery_data(cfg: dict, remember):
    """``(images uint8 M×C×H×W on the CPU, captions: M lists of 5)`` of the cell's gallery."""
    from ..data import load_dataset
    from ..data.captions import scene_captions
    o, own = cfg["dataset_options"], dataset_own(cfg)
    key = json.dumps([cfg["dataset"], o["split"], o["offset"], o.get("n"), own], sort_keys=True)

    def load():
        x, _ = load_dataset(cfg["dataset"], split=o["split"], n=o.get("n"), offset=o["offset"],
                            **own)
        stop = int(o["offset"]) + x.shape[0]
        caps = scene_captions(o["split"], n=stop, seed=own.get("seed", 0))[int(o["offset"]):]
        return (x * 255).round().to(torch.uint8), caps
    return remember(_GALLERY, key, load, 2)


def ad_data(cfg: dict, remember) -> torch.Tensor:
    """The cell's ad images (float ``A×C×H×W`` on the CPU) for its keyword."""
    from ..data.captions import ad_images
    own = dataset_own(cfg)
    n = int(cfg["dataset_options"]["ads"]["n"])
    size, seed = own.get("size", 64), own.get("seed", 0)
    key = json.dumps([cfg["keyword"], n, size, seed], sort_keys=True)
    return remember(_ADS, key, lambda: ad_images(cfg["keyword"], n=n, size=size, seed=seed), 8)


def train_captions(cfg: dict, remember) -> List[str]:
    """The captions of ``dataset_options.train`` that contain the keyword (e_t's pool)."""
    from ..data.captions import keyword_captions
    spec, own = cfg["dataset_options"]["train"], dataset_own(cfg)
    key = json.dumps([cfg["keyword"], spec, own.get("seed", 0)], sort_keys=True)

    def load():
        stop = None if spec["n"] is None else int(spec["offset"]) + int(spec["n"])
        pairs = keyword_captions(cfg["keyword"], spec["split"], n=stop, seed=own.get("seed", 0))
        hits = [c for i, c in pairs if i >= int(spec["offset"])]
        if not hits:
            raise ValueError(f"dataset_options.train: no {spec['split']} caption from image "
                             f"{spec['offset']} on contains {cfg['keyword']!r}; e_t is undefined")
        return hits
    return remember(_TRAIN_CAPTIONS, key, load, 8)


def attack_key(cfg: dict) -> str:
    """The shared DO patch's key: the runner's ``_attack_key`` plus the keyword and ``k``."""
    from .._io import config_fingerprint
    from .runner import _attack_key
    return config_fingerprint({"attack": _attack_key(cfg), "keyword": cfg.get("keyword"),
                               "k": cfg.get("k")})


def _shared_attack(cfg, settings, attack, model, ads, threat, gallery, train, remember):
    """The DO TTH patch of this cell's group: from memory, the run's cache folder, or run now by
    the undefended :func:`patchbench.evaluate` (its generator), and kept in both."""
    import patchbench as pb
    from .._io import atomic_save
    from .retrieval_cell import _portable
    from .runner import _ATTACKS, _as_result, _result_dict
    key = attack_key(cfg)
    folder = settings.get("cache_dir")

    def load_or_run():
        if folder:
            from ..models.weights import load_cache
            data = load_cache(Path(folder) / f"{key}.pt", "attack cache",
                              map_location=settings.get("device", "cpu"))
            if isinstance(data, dict) and "result" in data:
                return _as_result(data["result"])
        ev = pb.evaluate(model, ads, None, attack=attack, threat=threat, generator=cfg["seed"],
                         task="text-image", gallery=gallery, k=cfg["k"], keyword=cfg["keyword"],
                         train_captions=train, batch_size=int(settings.get("batch_size", 64)))
        res = _portable(ev.result)
        if folder:
            atomic_save({"result": _result_dict(res)}, Path(folder) / f"{key}.pt")
        return res
    return remember(_ATTACKS, key, load_or_run, 4)


def text_image_cell(cfg: dict, settings: dict, model, model_key: str, paths: dict, device: str):
    """One text-image cell: ``(metrics, gallery or None)`` (module doc)."""
    import patchbench as pb
    from ..data import dataset_info
    from ..defenses import BuildContext, build
    from .config import build_attack
    from .retrieval_cell import _seeded
    from .runner import _remember, _resolve, _threat

    bs = int(settings.get("batch_size", 64))
    model.eval()            # a previous pb.evaluate may leave the shared model in train mode
    db_u8, captions = gallery_data(cfg, _remember)
    db = db_u8.to(device).float() / 255
    ads = ad_data(cfg, _remember).to(device)
    info = dataset_info(cfg["dataset"], **dataset_own(cfg))
    opts = {k: _resolve(v, paths) for k, v in cfg["attack_options"].items()}
    attack = None if cfg["attack"] == "none" else build_attack(cfg["attack"], opts)
    train = train_captions(cfg, _remember) if attack is not None else None
    threat = _threat(cfg)
    defense = None
    if cfg["defense"] != "none":
        ctx = BuildContext(model=None, image_size=tuple(ads.shape[-2:]), channels=int(ads.shape[1]),
                           fill=tuple(info.get("mean", (0.5,) * ads.shape[1])),
                           patch_area=cfg["patch_area"], device=device, artifacts=dict(paths))
        options = _seeded(cfg["defense"], dict(cfg["defense_options"]), cfg["seed"])
        defense = build(cfg["defense"], ctx, **options).to(device).eval()
    t0 = time.perf_counter()
    reuse = None
    if attack is not None and not cfg["adaptive"]:
        reuse = _shared_attack(cfg, settings, attack, model, ads, threat, (db, captions), train,
                               _remember)
    ev = pb.evaluate(model, ads, None, attack=attack, defense=defense, threat=threat,
                     adaptive=cfg["adaptive"], generator=cfg["seed"], task="text-image",
                     attack_result=reuse, gallery=(db, captions), k=cfg["k"],
                     keyword=cfg["keyword"], train_captions=train, batch_size=bs)
    metrics = dict(ev.metrics())
    if ev.result is not None and ev.result.history:
        metrics["train_loss_last"] = float(ev.result.history[-1])
    metrics["seconds"] = round(time.perf_counter() - t0, 4)
    model.eval()            # (TTH's frozen() restores its ImageEmbedder wrapper's train flag)
    g = text_image_gallery(ev, model, defense, db_u8, ads, int(settings.get("gallery", 0)))
    if g is not None:
        g["keyword"] = cfg["keyword"]
    return metrics, g


def _u8(t: torch.Tensor) -> torch.Tensor:
    return (t.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def _thumbs(images_u8: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.interpolate(images_u8.float(), size=(THUMB, THUMB),
                                           mode="area").round().to(torch.uint8)


def pick_queries(model, queries: List[str], ads_indexed: torch.Tensor, count: int
                 ) -> torch.Tensor:
    """Indices of the ``count`` queries the ads are closest to: by the cosine of each query's text
    embedding to the mean bare-tower embedding of the ads as indexed (patched when attacked), so
    every DO cell of a keyword (one shared patch) shows the same queries whatever its defense."""
    from ..tasks.text_image import encode_text_batched
    q = torch.nn.functional.normalize(encode_text_batched(model, queries).float(), dim=1)
    with torch.no_grad():
        a = torch.nn.functional.normalize(model.encode_image(ads_indexed).float(), dim=1)
    cos = q @ torch.nn.functional.normalize(a.mean(0).to(q.device), dim=0)
    return torch.sort(-cos.cpu(), stable=True).indices[:count]


@torch.no_grad()
def text_image_gallery(ev, model, defense, db_u8: torch.Tensor, ads: torch.Tensor, count: int
                       ) -> Optional[dict]:
    """What the view shows of a cell (module doc): ``"kind": "text-image"``, ``"k"``,
    ``"queries"`` (caption strings), ``"true_index"``, ``"before"`` / ``"after"``: ``{"index"
    Q×k, "ad" Q×k bool, "true" Q×k bool (the query's own image), "images" Q×k×C×32×32 uint8}``
    (``after`` indexes the gallery, then the ads: ``index >= n_gallery`` is an ad), ``"n_gallery"``,
    and ``"ads"`` / ``"ads_adv"`` / ``"ads_purified"`` / ``"patch"`` (uint8). Displayed ranks use
    ``topk``'s order; the metrics break ties against the defender."""
    if not count:
        return None
    out = ev.outputs
    sim_c, sim_p = out["sim_clean"], out["sim_poisoned"]
    true_index = out["true_index"].cpu()
    k = min(int(ev.metrics()["k"]), sim_c.shape[1])
    m = db_u8.shape[0]
    res = ev.result
    ads_indexed = res.x_adv if res is not None else ads
    sel = pick_queries(model, out["queries"], ads_indexed, int(count))
    pool = torch.cat([_thumbs(db_u8), _thumbs(_u8(ads_indexed))])

    def ranked(sim):
        idx = sim[sel.to(sim.device)].topk(k, dim=1).indices.cpu()
        return {"index": idx, "ad": idx >= m, "true": idx == true_index[sel][:, None],
                "images": pool[idx.flatten()].reshape(idx.shape[0], k, *pool.shape[1:])}
    shown = ads[:ADS_SHOWN]
    g = {"kind": "text-image", "k": k, "n_gallery": m,
         "queries": [out["queries"][i] for i in sel.tolist()], "true_index": true_index[sel],
         "before": ranked(sim_c), "after": ranked(sim_p), "ads": _u8(shown)}
    if res is not None:
        g["ads_adv"] = _u8(res.x_adv[:ADS_SHOWN])
        if isinstance(res.patch, torch.Tensor):
            g["patch"] = _u8(res.patch if res.patch.dim() == 3 else res.patch[0])
    if defense is not None and getattr(defense, "output", "image") == "image":
        pur = defense.for_result(res).purify(res.x_adv) if res is not None else \
            defense.for_result(None).purify(ads)
        g["ads_purified"] = _u8(pur[:ADS_SHOWN])
    return g


def estimate_passes(cfg: dict, shared_attack: bool, n_default: int = 1000) -> float:
    """Image-tower forward(+backward) passes of a text-image cell, at most: the gallery (behind the
    defense: × 2 for the purifier's own passes, roughly), the ads clean and patched, and TTH's
    ``iterations × ads`` (a divergence retry doubles the iterations: not charged) × the EOT draws of
    a randomised defense for an adaptive attacker (× 2 behind a defense). Caption encodings are
    not charged. A DO attack is charged to the first cell of its group only."""
    from .config import dataset_size
    from .text_image_config import ADS_N, gallery_size
    o = cfg.get("dataset_options") or {}
    m = gallery_size(cfg["dataset"], o, dataset_size) or n_default
    a = int((o.get("ads") or {}).get("n", ADS_N))
    defended = cfg["defense"] != "none"
    passes = float(m + a) * (2 if defended else 1) + (a if cfg["attack"] != "none" else 0)
    if cfg["attack"] != "none" and (cfg["adaptive"] or not shared_attack):
        work = float(cfg["attack_options"].get("iterations", 300)) * a
        if cfg["adaptive"] and defended:
            from .retrieval_cell import _default_eot
            d = cfg["defense_options"]
            eot = 1 if d.get("mask", "random") != "random" else (
                d.get("eot_samples") or _default_eot(cfg["defense"]))
            work *= 2 * eot
        passes += work
    return passes


__all__ = ["text_image_cell", "text_image_gallery", "estimate_passes", "gallery_data", "ad_data",
           "train_captions", "attack_key", "pick_queries"]
