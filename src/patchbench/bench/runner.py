"""Run an experiment: build its artifacts, expand its grid, compute the cells that are not yet done,
store each one as it finishes, export and summarise.

``run_experiment`` is what ``patchbench run`` calls. A cell is computed by :func:`compute_cell`, a plain
function of the cell's config and the run's settings, so the local executor and a Ray worker run the
same code and get the same numbers for the same seeds.

Non-adaptive attacks only depend on the bare model, the images, the threat and the seed, so every
defense of one (model, data pool, attack, threat, seed) shares one attack run (PatchZero §3.3's
downstream-only attacker): it is computed once on the whole pool (the dataset entry's ``n``), kept in
``DIR/cache/attacks/`` (memory too), and each cell scores its first ``n`` images (the cell's own ``n``,
from an override). Benign and adaptive cells evaluate the pool's first ``n`` images themselves.

Retrieval cells (hashers under AdvHash, PAIR Table 2) are :mod:`.retrieval_cell`: the same group
sharing of the DO attack, on the cell's own queries. Text-image cells (dual encoders under TTH, PAIR
Tables 1, 3, 4) are :mod:`.text_image_cell`: one DO patch per keyword shared by every defense.

Classification pools (:mod:`.heldout`): ``-1`` labels (photos without a human label) are replaced by
the bare model's clean prediction and counted (``reference_by_prediction``); with ``placements`` each
scored image is pasted on that many times; a ``train`` table fits a universal patch on those images
and scores it on the held-out pool. A per-image DO attack runs ``attack_batch`` images at a time and
records each image's first successful iterate (``asr_by_step``, :mod:`.steps`).

Defense extras: a defense that counts its forward passes (PatchCleanser's ``last_forward_counts``)
adds ``forward_equivalents_last`` (per image, of its last prediction call in the cell), and one built
with ``certify = true`` adds ``certified_acc`` (with ``certified_acc_ci``) to its benign cells.
"""
from __future__ import annotations

import json
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .._io import atomic_save, atomic_write_text, config_fingerprint
from .artifacts import artifact_path, build_artifacts  # noqa: F401  (re-exported)
from .config import Experiment, as_dict
from .grid import Cell, expand, select
from .store import CellRecord, ResultsStore


# ---- one cell ----------------------------------------------------------------------------------
_MODELS: "OrderedDict[str, object]" = OrderedDict()
_DATA: "OrderedDict[str, tuple]" = OrderedDict()
_ATTACKS: "OrderedDict[str, object]" = OrderedDict()
_PREPARED: "OrderedDict[str, object]" = OrderedDict()
_REFS: "OrderedDict[str, tuple]" = OrderedDict()


def _remember(cache: OrderedDict, key: str, make: Callable, size: int = 4):
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = make()
    cache[key] = value
    while len(cache) > size:
        cache.popitem(last=False)
    return value


def _resolve(value, paths: Dict[str, str]):
    if isinstance(value, str) and value.startswith("@"):
        return paths[value[1:]]
    return value


def _model_key(cfg: dict, paths: Dict[str, str], device: str):
    """``(cache key, weights, builder options)`` of a zoo model cell (``weights = false``: an
    untrained, seeded model)."""
    opts = dict(cfg["model_options"])
    weights = _resolve(opts.pop("weights", None), paths)
    kwargs = dict(opts.pop("options", {}))
    return json.dumps([cfg["model"], weights, kwargs, device], sort_keys=True), weights, kwargs


def _load_model(cfg: dict, paths: Dict[str, str], device: str):
    from ..models import load
    if cfg["task"] == "face-detection":
        from ..models.detectors import load_detector
        kwargs = dict(cfg["model_options"].get("options", {}))
        key = json.dumps([cfg["model"], kwargs, device], sort_keys=True)
        return _remember(_MODELS, key, lambda: load_detector(cfg["model"], device=device, **kwargs))
    key, weights, kwargs = _model_key(cfg, paths, device)
    model = _remember(_MODELS, key, lambda: load(cfg["model"], weights=weights, device=device,
                                                  **kwargs).eval())
    return model.requires_grad_(False)


def _load_pool(cfg: dict, device: str):
    """The cell's pool: the dataset entry's first ``dataset_options.n`` images (all when None)."""
    from ..data import load_dataset
    o = cfg["dataset_options"]
    key = json.dumps([cfg["dataset"], o, device], sort_keys=True)
    own = _own_options(o)

    def load():
        x, y = load_dataset(cfg["dataset"], split=o["split"], n=o.get("n"), offset=o["offset"],
                            **own)
        return x.to(device), ([b.to(device) for b in y] if isinstance(y, list) else y.to(device))
    return _remember(_DATA, key, load)


def _own_options(o: dict) -> dict:
    """A dataset entry's own options (``size=``), without the keys the harness reads itself."""
    from .config import _HARNESS_DATASET_KEYS
    return {k: v for k, v in o.items() if k not in _HARNESS_DATASET_KEYS}


def _train_pool(cfg: dict, model, model_key: str, device: str):
    """A held-out universal cell's training images (:mod:`.heldout`), ``-1`` labels replaced by the
    model's clean predictions."""
    from ..data import load_dataset
    from .heldout import with_reference
    t = cfg["dataset_options"]["train"]
    own = _own_options(cfg["dataset_options"])
    key = json.dumps([cfg["dataset"], t, own, device, model_key], sort_keys=True)

    def load():
        x, y = load_dataset(cfg["dataset"], split=t["split"], n=t.get("n"), offset=t["offset"],
                            **own)
        x, y = x.to(device), y.to(device)
        return x, with_reference(model, x, y)[0]
    return _remember(_DATA, key, load)


def _referenced_pool(cfg: dict, model, model_key: str, x, y, device: str):
    """``(y, replaced)``: the pool's ``-1`` labels replaced by the bare model's clean predictions
    (:func:`.heldout.with_reference`), kept per model and pool."""
    from .heldout import PREDICTION_LABEL, with_reference
    if not isinstance(y, torch.Tensor) or not bool((y == PREDICTION_LABEL).any()):
        return y, None
    key = json.dumps(["reference", cfg["dataset"], cfg["dataset_options"], model_key, device],
                     sort_keys=True)
    return _remember(_REFS, key, lambda: with_reference(model, x, y))


def _prepared_pool(cfg: dict, model, paths: Dict[str, str], device: str):
    """The pool with the cell's sticker and corruption (:mod:`.cells`), kept in memory so the
    models of one prepared pool share it."""
    from .cells import prepare, prepare_key
    x, y = _load_pool(cfg, device)
    extra = prepare_key(cfg)
    if extra is None:
        return x, y
    key = json.dumps([cfg["dataset"], cfg["dataset_options"], extra, device], sort_keys=True)
    return _remember(_PREPARED, key, lambda: prepare(cfg, model, x, y, paths), size=2), y


def _first(x, y, n: Optional[int]):
    """The first ``n`` images of a pool (all of it for ``None``)."""
    if n is None or n == x.shape[0]:
        return x, y
    if n > x.shape[0]:
        raise ValueError(f"n: the cell asks for {n} images, its pool holds {x.shape[0]}")
    return x[:n], y[:n]


def _threat(cfg: dict):
    from ..patches import Threat
    t = cfg["threat"]
    placement = t["placement"]
    if isinstance(placement, list):
        placement = tuple(placement)
    return Threat(area=cfg["patch_area"], shape=t["shape"], placement=placement, aspect=t["aspect"])


def _attack_key(cfg: dict) -> str:
    """What a non-adaptive attack depends on: the bare model (and its weights' artifact), the pool,
    the attack, the threat and the seed — not the defense, nor the cell's own ``n`` (retrieval: also
    the target class and the cell's ``n``, since its attack runs on the cell's own queries)."""
    keep = ("model", "model_options", "dataset", "dataset_options", "attack", "attack_options",
            "patch_area", "threat", "seed", "task", "sticker", "corruption")
    refs = [v[1:] for v in cfg["model_options"].values() if isinstance(v, str) and v.startswith("@")]
    what = {**{k: cfg.get(k) for k in keep}, "schema": cfg.get("schema"),
            "model_artifacts": {r: cfg["artifacts"].get(r, r) for r in refs}}
    if cfg.get("task") == "retrieval":   # AdvHash's target, on the cell's own queries (no slicing)
        what.update(target=cfg.get("target"), n=cfg.get("n"))
    if cfg.get("task") == "text-image":  # TTH's keyword (its ads and e_t) and the gallery's k
        what.update(keyword=cfg.get("keyword"), k=cfg.get("k"))
    if cfg.get("attack_batch"):          # absent otherwise: older caches keep their keys
        what["attack_batch"] = cfg["attack_batch"]
    return config_fingerprint(what)


def _shared_attack(cfg: dict, settings: dict, attack, model, x, y, threat, train=None):
    """The non-adaptive attack of this cell's group on the whole pool ``x``: from memory, from the
    run's cache folder, or run now (with the generator :func:`patchbench.evaluate` would make, so a
    cell's numbers equal ``pb.evaluate``'s on the same images) and kept in both. With several
    placements the pool is repeated (:func:`.heldout.repeat`); with ``train = (x, y)`` a universal
    patch is fitted there and scored on the pool (:func:`.heldout.fit_and_apply`); a per-image
    attack runs ``attack_batch`` images at a time and records each image's first successful
    iterate (:func:`.steps.run_chunked`)."""
    from .._validation import make_generator
    from .heldout import fit_and_apply, placements_of, repeat
    from .steps import run_chunked
    p = placements_of(cfg)

    key = _attack_key(cfg)
    folder = settings.get("cache_dir")

    def load_or_run():
        if folder:
            from ..models.weights import load_cache
            data = load_cache(Path(folder) / f"{key}.pt", "attack cache",
                              map_location=settings["device"])
            if isinstance(data, dict) and "result" in data:
                return _as_result(data["result"])
        g = make_generator(cfg["seed"], device="cuda" if x.device.type == "cuda" else "cpu")
        if train is not None:
            res = fit_and_apply(attack, model, train[0], train[1], x, y, threat, p, g)
        else:
            res = run_chunked(attack, model, repeat(x, p), repeat(y, p), threat, g,
                              cfg.get("attack_batch"))
        if folder:
            atomic_save({"result": _result_dict(res)}, Path(folder) / f"{key}.pt")
        return res

    return _remember(_ATTACKS, key, load_or_run, size=4)


def _sliced(res, n: int):
    """An attack result on a pool, cut to its first ``n`` images (per-image tensors and lists of
    ``info`` too; a universal patch and the loss history stay whole)."""
    from ..attacks.base import AttackResult
    total = res.x_adv.shape[0]
    if n == total:
        return res

    def cut(v):
        if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == total:
            return v[:n]
        if isinstance(v, (list, tuple)) and len(v) == total:
            return type(v)(v[:n])
        return v

    patch = res.patch
    if isinstance(patch, torch.Tensor) and patch.dim() == 4 and patch.shape[0] == total:
        patch = patch[:n]
    return AttackResult(x_adv=res.x_adv[:n], patch=patch, mask=res.mask[:n], success=res.success[:n],
                        history=list(res.history), info={k: cut(v) for k, v in (res.info or {}).items()},
                        eligible=None if res.eligible is None else res.eligible[:n])


def _as_result(d: dict):
    from ..attacks.base import AttackResult
    return AttackResult(**d)


def _result_dict(res) -> dict:
    keep = ("x_adv", "patch", "mask", "success", "history", "info", "eligible")
    return {k: getattr(res, k) for k in keep if hasattr(res, k)}


def compute_cell(cfg: dict, settings: dict) -> Tuple[dict, Optional[dict]]:
    """Compute one cell: ``(metrics, gallery or None)``. ``settings``: ``device``, ``artifacts``
    (name → path), ``cache_dir`` (DO attack cache, or None), ``gallery`` (images to keep),
    ``batch_size`` (images per prediction batch, default 64). Classification cells first replace
    ``-1`` labels by the model's clean prediction, score ``placements`` copies of their images
    and train a universal patch on their ``train`` images where given (:mod:`.heldout`)."""
    import patchbench as pb

    device = settings.get("device", "cpu")
    paths = settings.get("artifacts", {})
    model = _load_model(cfg, paths, device)
    if cfg["task"] == "face-detection":
        return _face_cell(cfg, settings, model, paths, device)
    if cfg["task"] == "retrieval":
        from .retrieval_cell import retrieval_cell
        return retrieval_cell(cfg, settings, model, _model_key(cfg, paths, device)[0], paths,
                              device)
    if cfg["task"] == "text-image":
        from .text_image_cell import text_image_cell
        return text_image_cell(cfg, settings, model, _model_key(cfg, paths, device)[0], paths,
                               device)
    from . import heldout
    from .config import build_attack
    model_key = _model_key(cfg, paths, device)[0]
    x_pool, y_pool = _prepared_pool(cfg, model, paths, device)
    y_pool, replaced = _referenced_pool(cfg, model, model_key, x_pool, y_pool, device)
    x, y = _first(x_pool, y_pool, cfg["n"])
    n_images, p = x.shape[0], heldout.placements_of(cfg)
    train = heldout.train_spec(cfg)
    threat = _threat(cfg)
    attack = None if cfg["attack"] == "none" else build_attack(cfg["attack"], cfg["attack_options"])
    defense, certify = _build_defense(cfg, model, x, paths, device)
    t0 = time.perf_counter()
    reuse = None
    if attack is not None and not cfg["adaptive"]:
        data = None if train is None else _train_pool(cfg, model, model_key, device)
        pooled = _shared_attack(cfg, settings, attack, model, x_pool, y_pool, threat, data)
        reuse = _rows(pooled, heldout.rows(x_pool.shape[0], n_images, p))
    if attack is not None:
        x, y = heldout.repeat(x, p), heldout.repeat(y, p)
    ev = pb.evaluate(model, x, y, attack=attack, defense=defense, threat=threat,
                     adaptive=cfg["adaptive"], generator=cfg["seed"], task=cfg["task"],
                     attack_result=reuse, batch_size=int(settings.get("batch_size", 64)))
    metrics = dict(ev.metrics())
    metrics.update(heldout.cell_metrics(ev, y, n_images, p, replaced, ev.result, train))
    metrics.update(_step_metrics(ev, y, cfg))
    metrics.update(_defense_extras(defense, model, x, y, certify and attack is None))
    metrics["seconds"] = round(time.perf_counter() - t0, 4)
    gallery = _gallery(model, defense, x, y, ev.result, settings.get("gallery", 0))
    if gallery is not None and replaced is not None:   # "y" there is the model's own prediction
        rep = heldout.repeat(replaced[:n_images], p if attack is not None else 1)
        gallery["by_prediction"] = rep[:gallery["clean"].shape[0]].cpu()
    return metrics, gallery


def _build_defense(cfg: dict, model, x, paths: Dict[str, str], device: str):
    """``(defense or None, certify)``: the cell's defense built from its context (image size,
    dataset mean fill, patch area, artifacts), in eval mode on ``device``."""
    from ..data import dataset_info
    from ..defenses import BuildContext, build
    info = dataset_info(cfg["dataset"])
    ctx = BuildContext(model=model, image_size=tuple(x.shape[-2:]), channels=int(x.shape[1]),
                       fill=tuple(info.get("mean", (0.5,) * x.shape[1])), patch_area=cfg["patch_area"],
                       device=device, artifacts=dict(paths))
    options = dict(cfg["defense_options"])
    certify = bool(options.pop("certify", False))
    defense = None if cfg["defense"] == "none" else build(cfg["defense"], ctx, **options)
    return (None if defense is None else defense.to(device).eval()), certify


def _rows(res, idx: torch.Tensor):
    """The shared result on the cell's rows ``idx`` (its first ``n`` images at each placement)."""
    if idx.numel() == res.x_adv.shape[0] and bool((idx == torch.arange(idx.numel())).all()):
        return res
    if bool((idx == torch.arange(idx.numel())).all()):
        return _sliced(res, idx.numel())
    from ..attacks.base import AttackResult
    total = res.x_adv.shape[0]

    def take(v):
        if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == total:
            return v[idx.to(v.device)]
        return v

    patch = res.patch
    if isinstance(patch, torch.Tensor) and patch.dim() == 4 and patch.shape[0] == total:
        patch = take(patch)
    return AttackResult(x_adv=take(res.x_adv), patch=patch, mask=take(res.mask),
                        success=take(res.success), history=list(res.history),
                        info={k: take(v) for k, v in (res.info or {}).items()},
                        eligible=None if res.eligible is None else take(res.eligible))


def _step_metrics(ev, y, cfg: dict) -> dict:
    """``asr_by_step`` (:mod:`.steps`): the success rate over the correctly classified images
    after 0 … steps iterations, where the attack's iterates were recorded."""
    from .steps import asr_by_step
    res = ev.result
    step = (res.info or {}).get("success_step") if res is not None else None
    if step is None or ev.pred_clean is None or cfg["defense"] != "none":   # the bare model's
        return {}
    ok = (ev.pred_clean.to(y.device) == y).cpu()
    curve = asr_by_step(step, ok, int(cfg["attack_options"].get("steps", 0) or 0))
    return {} if curve is None else {"asr_by_step": curve}


def _face_cell(cfg: dict, settings: dict, detector, paths: Dict[str, str], device: str):
    """A face-detection cell (:func:`.cells.face_cell`): ``(metrics, gallery)``."""
    import patchbench as pb
    from .cells import face_cell, face_gallery, face_parts
    if cfg["defense"] != "none" or cfg["adaptive"]:
        raise ValueError("face-detection cells take no defense and no adaptive attacker yet")
    x_pool, y_pool = _load_pool(cfg, device)
    x, y = _first(x_pool, y_pool, cfg["n"])
    opts = {k: _resolve(v, paths) for k, v in cfg["attack_options"].items()}
    attack = None if cfg["attack"] == "none" else pb.attacks.get(cfg["attack"], **opts)
    t0 = time.perf_counter()
    parts = face_parts(cfg, x, y)
    metrics, evs, pooled, gts = face_cell(cfg, detector, attack, parts,
                                          int(settings.get("batch_size", 64)))
    metrics = dict(metrics)
    if attack is not None and getattr(attack, "fixed_patch_", None) is None:
        metrics["train_loss_last"] = (evs[0].result.history or [None])[-1]
    metrics["seconds"] = round(time.perf_counter() - t0, 4)
    return metrics, face_gallery(parts, evs, pooled, gts, int(settings.get("gallery", 0)))


def _defense_extras(defense, model, x, y, certify: bool) -> dict:
    """``forward_equivalents_last`` (images through the model per image, in the defense's last
    prediction call) and, asked for, ``certified_acc`` (PatchCleanser Algorithm 2 on ``x``)."""
    out = {}
    counts = getattr(defense, "last_forward_counts", None)
    if isinstance(counts, torch.Tensor) and counts.numel():
        out["forward_equivalents_last"] = float(counts.float().mean())
    if certify:
        from ..metrics.classification import Rate
        ok = defense.certify(model, x, y)
        rate = Rate.of(int(ok.sum()), int(ok.numel()))
        out["certified_acc"], out["certified_acc_ci"] = rate.value, [rate.lo, rate.hi]
    return out


def _u8(t: torch.Tensor) -> torch.Tensor:
    return (t.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


@torch.no_grad()
def _gallery(model, defense, x, y, res, k: int) -> Optional[dict]:
    if not k:
        return None
    k = min(int(k), x.shape[0])
    xs, ys = x[:k], y[:k]
    g = {"clean": _u8(xs), "y": ys.cpu(), "class_names": list(getattr(model, "class_names", []))}
    g["pred_clean"], g["conf_clean"] = _top(model, xs)
    if res is not None:
        xa = res.x_adv[:k]
        g.update(adv=_u8(xa), mask=_u8(res.mask[:k]))
        g["pred_adv"], g["conf_adv"] = _top(model, xa)
        if isinstance(res.patch, torch.Tensor) and res.patch.dim() == 3:   # one universal patch
            g["patch"] = _u8(res.patch)
        if defense is not None and getattr(defense, "output", "image") == "image":
            # the GT-mask oracle repaints these images' own masks (with_mask is the identity
            # for every other defense)
            pur = defense.with_mask(res.mask[:k])(xa)
            g["purified"] = _u8(pur)
            g["pred_purified"], g["conf_purified"] = _top(model, pur)
    return g


def _top(model, x: torch.Tensor):
    """The model's class and its softmax confidence on each image (for gallery captions)."""
    p = torch.softmax(model(x).float(), dim=1)
    conf, pred = p.max(1)
    return pred.cpu(), conf.cpu()


def run_cell(cfg: dict, settings: dict) -> CellRecord:
    """:func:`compute_cell` wrapped into a stored record; an exception becomes a failed record with
    its traceback (the sweep goes on)."""
    from .. import __version__
    started = time.time()
    t0 = time.perf_counter()
    try:
        if settings.get("imports"):          # a Ray worker's first cell: the user's registrations
            from .imports import load_imports
            load_imports(settings["imports"])
        metrics, gallery = compute_cell(cfg, settings)
        rec = CellRecord(key="", config=cfg, metrics=metrics, status="done", seed=cfg["seed"],
                         version=__version__)
        rec.gallery = gallery               # carried to the driver, saved next to the store
    except Exception:  # noqa: BLE001 - a failing cell is data, not a crash
        rec = CellRecord(key="", config=cfg, metrics={}, status="failed",
                         error=traceback.format_exc(limit=20), seed=cfg["seed"], version=__version__)
        rec.gallery = None
    rec.started, rec.finished = started, time.time()
    rec.seconds = round(time.perf_counter() - t0, 4)
    return rec


def failed_record(cfg: dict, error: str) -> CellRecord:
    """A failed cell that never reached :func:`run_cell` (e.g. a lost Ray worker)."""
    from .. import __version__
    now = time.time()
    rec = CellRecord(key="", config=cfg, metrics={}, status="failed", error=error, started=now,
                     finished=now, seconds=0.0, seed=cfg.get("seed"), version=__version__)
    rec.gallery = None
    return rec


# ---- the run -----------------------------------------------------------------------------------
@dataclass
class Summary:
    total: int
    done: int
    failed: int
    ran: int
    out_dir: Path
    wall: float = 0.0
    compute: float = 0.0
    failures: List[str] = field(default_factory=list)

    def line(self) -> str:
        return f"cells total={self.total} done={self.done} failed={self.failed} ran={self.ran}"


def _cell_n(cfg: dict, pool: bool = False, n_default: int = 1000) -> int:
    """Images of a cell (``pool=True``: of its pool), the split's size when the file says all."""
    from .config import dataset_size
    o = cfg.get("dataset_options") or {}
    n = o.get("n") if pool else (cfg["n"] if cfg["n"] is not None else o.get("n"))
    if n is None:
        size = dataset_size(cfg["dataset"], o.get("split", "test"))
        n = n_default if size is None else size - int(o.get("offset", 0))
    return int(n)


def _forwards_per_prediction(cfg: dict) -> float:
    """Model passes per image of one defended prediction: PatchCleanser's k² one-mask images (its
    second round, on disagreeing masks, comes on top), 1 otherwise."""
    if cfg["defense"] == "patchcleanser":
        return float(cfg["defense_options"].get("k", 6)) ** 2
    return 1.0


def estimate_passes(cfg: dict, n_default: int = 1000, shared_attack: bool = True) -> float:
    """Model forward(+backward) passes one cell costs, roughly: clean + defended predictions
    (PatchCleanser: k² masked images each), plus ``steps × restarts × EOT`` per image for the
    attack (×2 when an adaptive attacker differentiates through the defense, × the defense's
    forwards per step), plus PatchCleanser's certification (k²(k²+1)/2 two-mask images per image).
    A non-adaptive attack runs once per group on the pool: ``shared_attack=False`` charges this
    cell with it (the first of its group), ``True`` does not."""
    if cfg.get("task") == "retrieval":
        from .retrieval_cell import estimate_passes as retrieval_passes
        return retrieval_passes(cfg, shared_attack, n_default)
    if cfg.get("task") == "text-image":
        from .text_image_cell import estimate_passes as text_image_passes
        return text_image_passes(cfg, shared_attack, n_default)
    n = _cell_n(cfg, n_default=n_default)
    f = _forwards_per_prediction(cfg)
    passes = n * f * (1 if cfg["attack"] == "none" else 2)
    placements = int((cfg.get("dataset_options") or {}).get("placements", 1) or 1)
    if cfg["attack"] != "none":
        passes *= placements
    if cfg["attack"] != "none" and (cfg["adaptive"] or not shared_attack):
        o = cfg["attack_options"]
        steps = o.get("steps", o.get("epochs", 1))
        work = steps * (o.get("restarts", 1) or 1) * (o.get("eot_samples", 1) or 1)
        train = (cfg.get("dataset_options") or {}).get("train")
        if isinstance(train, dict):      # fitted on the training images, then applied (forwards)
            from .config import dataset_size
            size = dataset_size(cfg["dataset"], train["split"])
            n_train = train.get("n") or ((size - int(train.get("offset", 0))) if size else n_default)
            passes += n_train * (work + placements) \
                + _cell_n(cfg, pool=True, n_default=n_default) * placements
        else:
            passes += (n * placements * work * (1 + f) if cfg["adaptive"]
                       else _cell_n(cfg, pool=True, n_default=n_default) * placements * work)
    if cfg["attack"] == "none" and cfg["defense_options"].get("certify"):
        passes += n * f * (f + 1) / 2
    return float(passes)


def run_experiment(exp: Experiment, out_dir, executor: str = "local", address: Optional[str] = None,
                   only: Optional[str] = None, dry_run: bool = False,
                   log: Callable = print) -> Summary:
    """Run ``exp`` into ``out_dir`` (resuming whatever is already there) and return the summary."""
    from .executors import make_executor

    out = Path(out_dir)
    if dry_run:
        return _dry_run(exp, out, only, log)
    executor_obj = make_executor(executor, address=address, threads=exp.threads)   # checks ray early
    t_start = time.time()
    with ResultsStore(out) as store:
        names = sorted({r for c in select(expand(exp), only) for r in c.artifacts})
        arts = build_artifacts(exp, names, log)
        cells = select(expand(exp, {k: fp for k, (_, fp) in arts.items()}), only)
        status = store.statuses()
        todo = _ordered([c for c in cells if status.get(c.key) != "done"])
        log(f"{exp.name}: {len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to "
            f"compute ({executor} executor)")
        settings = {"device": exp.device, "artifacts": {k: p for k, (p, _) in arts.items()},
                    "cache_dir": str(out / "cache" / "attacks"), "gallery": exp.gallery,
                    "batch_size": exp.batch_size, "imports": list(exp.imports)}
        (out / "cache" / "attacks").mkdir(parents=True, exist_ok=True)
        meta = {**as_dict(exp), "artifact_paths": dict(settings["artifacts"])}
        atomic_write_text(out / "experiment.json",
                          json.dumps(meta, indent=1, sort_keys=True, default=str))
        ran = [0]
        compute = [0.0]

        def on_result(cell: Cell, rec: CellRecord) -> None:
            rec.key = cell.key
            gallery = getattr(rec, "gallery", None)
            if gallery is not None:
                atomic_save(gallery, out / "gallery" / f"{cell.key}.pt")
            store.record(rec)
            ran[0] += 1
            compute[0] += rec.seconds
            if rec.status == "failed":
                last = (rec.error or "").strip().splitlines()[-1:] or ["?"]
                log(f"FAILED {cell.label}: {last[0]}")

        executor_obj.run(todo, settings, on_result, log=log)
        store.export([c.key for c in cells])
        final = store.statuses()
        done = sum(final.get(c.key) == "done" for c in cells)
        failed = sum(final.get(c.key) == "failed" for c in cells)
        summary = Summary(len(cells), done, failed, ran[0], out, time.time() - t_start, compute[0])
    return summary


def _ordered(cells: List[Cell]) -> List[Cell]:
    """Cells that share a prepared pool (sticker, corruption) run one after the other, so each is
    prepared once (a stable sort: the file's order otherwise)."""
    from .cells import prepare_key
    if not any(prepare_key(c.config) for c in cells):
        return cells
    first: Dict[str, int] = {}
    keys = []
    for c in cells:
        k = json.dumps([c.config["dataset"], c.config["dataset_options"], prepare_key(c.config)],
                       sort_keys=True)
        keys.append(first.setdefault(k, len(first)))
    return [c for _, c in sorted(zip(keys, cells), key=lambda t: t[0])]


def _dry_run(exp: Experiment, out: Path, only: Optional[str], log: Callable) -> Summary:
    cells = select(expand(exp), only)
    names = sorted({r for c in cells for r in c.artifacts})
    done = {}
    per_pass = None
    if (out / "results.db").is_file():
        with ResultsStore(out, readonly=True) as store:
            recs = store.records("done")
            done = {r.key for r in recs}
            passes = sum(estimate_passes(r.config) for r in recs)
            secs = sum(float(r.metrics.get("seconds", r.seconds)) for r in recs)
            per_pass = secs / passes if passes and secs else None
    for name in names:
        spec = exp.artifacts[name]
        log(f"artifact {name}: {spec.kind} " + (f"from {spec.source}" if spec.source else
                                                 "trained from its config (cached by hash)"))
    total = todo = 0.0
    attacks = set()                 # one shared DO attack per group, charged to its first cell
    for c in cells:
        first = c.config["attack"] != "none" and not c.config["adaptive"] and \
            _attack_key(c.config) not in attacks
        if first:
            attacks.add(_attack_key(c.config))
        p = estimate_passes(c.config, shared_attack=not first)
        total += p
        todo += 0 if c.key in done else p
        log(f"  {'done ' if c.key in done else 'to do'} {c.key}  {c.label}  ~{p:,.0f} passes")
    eta = f", about {todo * per_pass / 60:.1f} min at this run's measured speed" if per_pass else ""
    log(f"{len(cells)} cells, {len(names)} artifacts; estimated cost ~{todo:,.0f} model passes "
        f"still to do of ~{total:,.0f}{eta}")
    in_cells = sum(c.key in done for c in cells)
    return Summary(len(cells), in_cells, 0, 0, out)


__all__ = ["run_experiment", "compute_cell", "run_cell", "build_artifacts", "artifact_path",
           "Summary", "estimate_passes"]

