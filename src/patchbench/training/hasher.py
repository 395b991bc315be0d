"""Train a CSQ hasher (Yuan et al., CVPR 2020) on the retrieval proxies, resumably.

Recipe (CSQ §3.3 and the authors' ``train.py``): each training image's target is its class's hash
centre (:func:`~patchbench.models.hashing.hadamard_centres`; the sign of the mean of its labels'
centres for multi-label scenes, :func:`~patchbench.models.hashing.multilabel_centres`), and the
loss is :func:`~patchbench.models.hashing.csq_loss`. The backbone starts from the ImageNet
MobileNetV2 weights; the blocks before ``trainable_from`` stay frozen (the authors train their
backbone at 1 % of the head's rate; we freeze the early blocks and train the last ones at
``backbone_lr``). AdamW, a cosine learning rate over the epochs (a function of the epoch, so a
resumed run needs no scheduler state).

Speed: the frozen blocks see each training image once (and its mirror image, the one
augmentation, ``flip``) — their outputs are **precomputed** and cached in ``out_dir/features.pt``
(keyed by the data and backbone options), and the epochs train the tail on them. Other
augmentations would need the frozen blocks at every step; the training split is large instead
(10 000 canvases, each with its own colour, scale and position).

Checkpoints: the full state (network, optimiser, every RNG, config, history) after every epoch in
``out_dir/train_state.pt`` (atomic); a rerun with ``resume=True`` continues after the last
finished epoch and draws the same numbers. At the end: ``out_dir/hasher.pt`` (the trained part
only, :func:`~patchbench.models.csq.save_hasher`; ``patchbench.models.load(NAME, weights=PATH)``
or :func:`~patchbench.models.csq.load_csq` reads it) and ``out_dir/metrics.json`` with mAP@k of the
query split and of the first training images against the database (:func:`calc_top_map`).

Example::

    path = train_hasher(HasherTrainConfig(), "runs/csq")    # → runs/csq/hasher.pt (the shipped recipe)
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .._config import config_from_mapping, read_toml
from .._validation import (check_bool, check_choice, check_device, check_int, check_nonnegative,
                           check_number, check_path, check_positive, check_positive_int, check_seed)
from ..models.hashing import QUANTIZATIONS, TIES, csq_loss, multilabel_centres
from .checkpoint import check_run_settings

DATASETS = ("fmnist-objects", "fmnist-scenes")


@dataclass
class HasherTrainConfig:
    """Everything that defines a hasher training run (also the keys of ``--config FILE.toml``).

    Args:
        dataset: ``"fmnist-objects"`` (default) or ``"fmnist-scenes"`` (multi-label centres).
        dataset_seed: the proxy's ``seed=`` option (default 0). image_size: canvas side (64).
        n_train: training canvases (default 10 000, the whole split).
        bits: code length (64, PAIR's). pretrained: ImageNet backbone (True) or a seeded random one.
        width_mult: MobileNetV2 width (1.0; others need ``pretrained=False``, for tests).
        trainable_from: first trained block of ``features`` (default 11: blocks 11–18 and the
            head, 2.09 M parameters, 4.2 MB in float16; 0 trains everything). hidden / dropout:
            the head (0 / 0.2).
        epochs (5), batch_size (64), lr (head, 3e-3), backbone_lr (trained blocks, 1e-3),
        weight_decay (1e-4).
        lam: quantisation weight (1e-4). quantization: "squared" | "logcosh". ties: multi-label
            tie rule, "random" | "positive".
        n_database, n_query: images of those splits scored at the end (2000, 1000; 0 skips).
        map_k: the k of mAP@k (1000, AdvHash's ``CalcTopMap``).
        flip: augment with horizontal flips (default True): the frozen features of every image
            and of its mirror are precomputed, and each step picks one of the two per image.
        name: the model's name in the checkpoint (default ``csq_<dataset>_<image_size>``).
        store_dtype: "float16" (default: half the file, under the 5 MB of a shipped asset) or
            "float32"; the metrics are those of the stored (rounded) weights.
        seed: initialisation, shuffling, dropout (0). device, num_threads, progress: where and how.
    """

    dataset: str = "fmnist-objects"
    dataset_seed: int = 0
    image_size: int = 64
    n_train: int = 10000
    bits: int = 64
    pretrained: bool = True
    width_mult: float = 1.0
    trainable_from: int = 11
    hidden: int = 0
    dropout: float = 0.2
    epochs: int = 5
    batch_size: int = 64
    lr: float = 3e-3
    backbone_lr: float = 1e-3
    weight_decay: float = 1e-4
    lam: float = 1e-4
    quantization: str = "squared"
    ties: str = "random"
    n_database: int = 2000
    n_query: int = 1000
    map_k: int = 1000
    flip: bool = True
    name: Optional[str] = None
    store_dtype: str = "float16"
    seed: int = 0
    device: str = "cpu"
    num_threads: Optional[int] = None
    progress: bool = True

    def __post_init__(self):
        c = "HasherTrainConfig."
        self.dataset = check_choice(self.dataset, c + "dataset", DATASETS)
        self.dataset_seed = check_seed(self.dataset_seed, c + "dataset_seed")
        self.image_size = check_positive_int(self.image_size, c + "image_size", minimum=32)
        for k in ("n_train", "bits", "epochs", "batch_size", "map_k"):
            setattr(self, k, check_positive_int(getattr(self, k), c + k))
        for k in ("n_database", "n_query", "hidden"):
            setattr(self, k, check_int(getattr(self, k), c + k, minimum=0))
        self.trainable_from = check_int(self.trainable_from, c + "trainable_from", 0, 19)
        self.pretrained = check_bool(self.pretrained, c + "pretrained")
        self.width_mult = check_positive(self.width_mult, c + "width_mult")
        if self.pretrained and self.width_mult != 1.0:
            raise ValueError(f"{c}width_mult: the ImageNet weights need 1.0, got {self.width_mult} "
                             f"(set pretrained = false for other widths)")
        self.dropout = check_number(self.dropout, c + "dropout", 0.0, 1.0, high_inclusive=False)
        for k in ("lr", "backbone_lr"):
            setattr(self, k, check_positive(getattr(self, k), c + k))
        for k in ("weight_decay", "lam"):
            setattr(self, k, check_nonnegative(getattr(self, k), c + k))
        self.quantization = check_choice(self.quantization, c + "quantization", QUANTIZATIONS)
        self.ties = check_choice(self.ties, c + "ties", TIES)
        self.store_dtype = check_choice(self.store_dtype, c + "store_dtype", ("float32", "float16"))
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise TypeError(f"{c}name: expected a non-empty string or None, got {self.name!r}")
        check_run_settings(self, c)
        self.flip = check_bool(self.flip, c + "flip")

    @property
    def model_name(self) -> str:
        return self.name or f"csq_{self.dataset.replace('-', '_')}_{self.image_size}"

    def identity(self) -> dict:
        """The fields a resumed run must share (not where it runs, nor the epochs or the final
        evaluation, which a resumed run may change)."""
        d = dataclasses.asdict(self)
        for k in ("device", "num_threads", "progress", "epochs", "n_database", "n_query", "map_k",
                  "store_dtype"):
            d.pop(k)
        return d

    @classmethod
    def from_toml(cls, path) -> "HasherTrainConfig":
        """Read a TOML file: top-level keys or a ``[hasher]`` table with the fields above."""
        data = read_toml(path, "config")
        return config_from_mapping(cls, data.get("hasher", data), str(path), label="hasher config")


def calc_top_map(q_codes: Tensor, q_labels: Tensor, db_codes: Tensor, db_labels: Tensor,
             k: int = 1000) -> float:
    """mAP@k by brute force, as AdvHash's ``CalcTopMap``: rank the database by Hamming distance
    (ties by index), AP = mean precision at the relevant items inside the top ``k`` (0 when there
    is none), averaged over all queries. Relevant: the same class (``N`` labels) or a shared one
    (``N×K`` multi-hot). Inner helper of the training report (inputs are codes this module made)."""
    classes = int(max(q_labels.max(), db_labels.max())) + 1 if q_labels.dim() == 1 else 0

    def onehot(y: Tensor) -> Tensor:
        return F.one_hot(y.long(), classes).float() if y.dim() == 1 else y.float()
    qy, dy = onehot(q_labels), onehot(db_labels)
    hamming = 0.5 * (q_codes.shape[1] - q_codes @ db_codes.T)
    order = torch.sort(hamming, dim=1, stable=True).indices[:, :k]
    rel = ((qy @ dy.T) > 0).float().gather(1, order)               # Q×k
    hits = rel.cumsum(1)
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float32)
    ap = (rel * hits / ranks).sum(1) / rel.sum(1).clamp_min(1)
    return float(ap.mean())


def _prepare(hasher, x: Tensor) -> Tensor:
    """What ``hasher.net`` sees: resized and normalised images (``Hasher.forward`` without checks)."""
    if tuple(x.shape[-2:]) != hasher.input_size:
        x = F.interpolate(x, size=hasher.input_size, mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > hasher.input_size[1])
    return hasher.normalize(x)


@torch.no_grad()
def _frozen_features(hasher, x: Tensor, cfg: HasherTrainConfig, out: Path, dev) -> Tensor:
    """The frozen blocks' outputs for the training images, computed once and cached on disk."""
    from ..models.weights import load_cache
    from .._io import atomic_save
    key = {k: v for k, v in cfg.identity().items() if k in (
        "dataset", "dataset_seed", "image_size", "n_train", "pretrained", "width_mult",
        "trainable_from", "flip")}
    if not cfg.pretrained:
        key["seed"] = cfg.seed
    path = out / "features.pt"
    cached = load_cache(path, "hasher feature cache")
    if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("z"), Tensor):
        return cached["z"].to(dev)
    net = hasher.net.eval()
    views = (False, True) if cfg.flip else (False,)
    zs = []
    for i in tqdm(range(0, x.shape[0], 256), desc="frozen features", disable=not cfg.progress,
                  leave=False):
        xb = x[i:i + 256].to(dev)
        zs.append(torch.stack([net.frozen(_prepare(hasher, xb.flip(-1) if f else xb)).cpu()
                               for f in views], 1))
    z = torch.cat(zs)                                   # N×views×C×h×w
    atomic_save({"key": key, "z": z}, path)
    return z.to(dev)


def epoch_lr(base: float, epoch: int, epochs: int) -> float:
    """Cosine from ``base`` at epoch 0 down to 5 % of it at the last epoch."""
    if epochs <= 1:
        return base
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * epoch / (epochs - 1))))


def _epoch(net, opt, z: Tensor, targets: Tensor, cfg: HasherTrainConfig, gen, epoch: int) -> float:
    net.train()
    order = torch.randperm(z.shape[0], generator=gen).to(z.device)
    total, steps = 0.0, 0
    bar = tqdm(range(0, z.shape[0], cfg.batch_size), desc=f"hasher epoch {epoch + 1}/{cfg.epochs}",
               disable=not cfg.progress, leave=False)
    for s in bar:
        idx = order[s:s + cfg.batch_size]
        view = torch.randint(z.shape[1], (idx.numel(),), generator=gen).to(z.device)
        loss = csq_loss(net.tail(z[idx, view]), targets[idx], cfg.lam, cfg.quantization)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ValueError(f"training diverged at epoch {epoch + 1}: the loss became {value}; "
                             f"try a lower lr (this run used lr={cfg.lr:g})")
        total, steps = total + value, steps + 1
        if steps % 20 == 0:
            bar.set_postfix(loss=f"{total / steps:.4f}", refresh=False)
    return total / max(steps, 1)


def evaluate_hasher(hasher, cfg: HasherTrainConfig, x_train: Tensor, y_train: Tensor) -> dict:
    """mAP@k of the query split and of the first ``n_query`` training images (as queries) against
    the first ``n_database`` database images."""
    from ..data import load_dataset
    if not (cfg.n_database and cfg.n_query):
        return {}
    opts = dict(size=cfg.image_size, seed=cfg.dataset_seed)
    xd, yd = load_dataset(cfg.dataset, "database", n=cfg.n_database, **opts)
    xq, yq = load_dataset(cfg.dataset, "query", n=cfg.n_query, **opts)
    dev = next(hasher.parameters()).device
    codes = {k: hasher.codes(v.to(dev)).cpu() for k, v in
             (("db", xd), ("query", xq), ("train", x_train[:cfg.n_query]))}
    k = min(cfg.map_k, cfg.n_database)
    return {"k": k, "n_database": cfg.n_database, "n_query": cfg.n_query,
            "map_query": calc_top_map(codes["query"], yq, codes["db"], yd, k),
            "map_train": calc_top_map(codes["train"], y_train[:cfg.n_query], codes["db"], yd, k)}


def train_hasher(config: HasherTrainConfig, out_dir, resume: bool = True) -> Path:
    """Train a CSQ hasher and return the path of ``out_dir/hasher.pt`` (see the module doc).

    Args:
        config: a :class:`HasherTrainConfig`.
        out_dir: folder of ``features.pt``, ``train_state.pt``, ``hasher.pt``, ``metrics.json``.
        resume: continue from ``train_state.pt`` when it exists (its config must match; default True).
    """
    from ..data import load_dataset
    from ..models.csq import build_csq, load_csq, save_hasher
    from .checkpoint import load_checkpoint, save_checkpoint
    if not isinstance(config, HasherTrainConfig):
        raise TypeError(f"config: expected a HasherTrainConfig, got {type(config).__name__}")
    cfg = dataclasses.replace(config)                  # re-validates fields changed after creation
    out = check_path(out_dir, "out_dir", kind="dir", must_exist=False)
    resume = check_bool(resume, "resume")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    dev = check_device(cfg.device, "device")
    try:
        x, y = load_dataset(cfg.dataset, "train", n=cfg.n_train, size=cfg.image_size,
                            seed=cfg.dataset_seed)
    except ValueError as e:
        raise ValueError(f"HasherTrainConfig.n_train: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    hasher = build_csq(cfg.bits, cfg.image_size, 10, cfg.pretrained, cfg.trainable_from, cfg.hidden,
                       cfg.dropout, cfg.width_mult, cfg.model_name, cfg.seed).to(dev)
    net = hasher.net
    targets = multilabel_centres(y.to(dev), hasher.centres, cfg.ties, cfg.seed)
    z = _frozen_features(hasher, x, cfg, out, dev)
    tail = [p for i, b in enumerate(net.features) if i >= net.trainable_from for p in b.parameters()]
    opt = torch.optim.AdamW([{"params": tail, "lr": cfg.backbone_lr, "base": cfg.backbone_lr},
                             {"params": net.head.parameters(), "lr": cfg.lr, "base": cfg.lr}],
                            weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    state_path, start, history = out / "train_state.pt", 0, []
    if resume and state_path.is_file():
        state = load_checkpoint(state_path, model=net, optimizer=opt, generators={"data": gen},
                                map_location=dev)
        if state["config"] != cfg.identity():
            raise ValueError(f"{state_path}: made by another hasher config ({state['config']}); "
                             f"use another out_dir or resume=False")
        start, history = state["epoch"], list(state["extra"].get("history", []))
    for epoch in range(start, cfg.epochs):
        for group in opt.param_groups:
            group["lr"] = epoch_lr(group["base"], epoch, cfg.epochs)
        history.append(_epoch(net, opt, z, targets, cfg, gen, epoch))
        save_checkpoint(state_path, model=net, optimizer=opt, epoch=epoch + 1,
                        step=(epoch + 1) * -(-z.shape[0] // cfg.batch_size), config=cfg.identity(),
                        generators={"data": gen}, extra={"history": history})
        if cfg.progress:
            tqdm.write(f"{cfg.model_name} epoch {epoch + 1}/{cfg.epochs}: loss {history[-1]:.4f}")
    meta = {"name": cfg.model_name, "config": dataclasses.asdict(cfg), "history": history}
    path = save_hasher(hasher.eval(), out / "hasher.pt", meta, dtype=cfg.store_dtype)
    shipped = load_csq(path, dev)                    # score what the file holds (maybe rounded)
    metrics = evaluate_hasher(shipped, cfg, x, y)
    path = save_hasher(shipped, path, {**meta, "metrics": metrics}, dtype=cfg.store_dtype)
    from .._io import atomic_write_text
    atomic_write_text(out / "metrics.json", json.dumps({"history": history, **metrics}, indent=2))
    return path


_FLAGS = {"dataset": str, "dataset_seed": int, "image_size": int, "n_train": int, "bits": int,
          "width_mult": float, "trainable_from": int, "hidden": int, "dropout": float,
          "epochs": int, "batch_size": int, "lr": float, "backbone_lr": float,
          "weight_decay": float, "lam": float, "quantization": str, "ties": str, "n_database": int,
          "n_query": int, "map_k": int, "name": str, "store_dtype": str, "seed": int, "device": str,
          "num_threads": int}


def main_train_hasher(argv: Optional[Sequence[str]] = None) -> int:
    """``patchbench train hasher [--config FILE] [--out DIR] [--epochs N] ... [--no-resume]``."""
    from ..cli import ArgumentParser, config_file_arg, out_dir_arg
    p = ArgumentParser(prog="patchbench train hasher",
                       description="Train a CSQ hasher (CVPR 2020) on a retrieval proxy (resumable)")
    p.add_argument("--config", default=None, type=config_file_arg,
                   help="TOML file with HasherTrainConfig fields (flags override it)")
    p.add_argument("--out", default="runs/hasher", type=out_dir_arg, help="output folder")
    for field, kind in _FLAGS.items():
        p.add_argument("--" + field.replace("_", "-"), dest=field, type=kind, default=None,
                       help=f"HasherTrainConfig.{field}")
    p.add_argument("--random-init", action="store_true", help="random backbone (pretrained=False)")
    p.add_argument("--no-flip", action="store_true", help="no flip augmentation (flip=False)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT holds a run")
    a = p.parse_args(argv)
    cfg = HasherTrainConfig.from_toml(a.config) if a.config else HasherTrainConfig()
    changes = {k: getattr(a, k) for k in _FLAGS if getattr(a, k) is not None}
    if a.random_init:
        changes["pretrained"] = False
    if a.no_progress:
        changes["progress"] = False
    if a.no_flip:
        changes["flip"] = False
    cfg = dataclasses.replace(cfg, **changes)
    path = train_hasher(cfg, a.out, resume=not a.no_resume)
    metrics = json.loads((Path(path).parent / "metrics.json").read_text())
    if "map_query" in metrics:
        print(f"{cfg.model_name}: mAP@{metrics['k']} query {metrics['map_query']:.4f} "
              f"train {metrics['map_train']:.4f} -> {path}")
    else:
        print(f"{cfg.model_name} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_train_hasher())
