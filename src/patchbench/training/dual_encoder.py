"""Train the CLIP-style dual encoder (:mod:`patchbench.models.dual_encoder`) on ``fmnist-scenes``
and its template captions, resumably; and score text→image R@K.

Recipe (CLIP, Radford et al. 2021): §2.3 / Fig. 3 — each step draws ``batch_size`` training
images, one of each image's captions (uniformly among its five), and minimises the symmetric
InfoNCE of the batch (:func:`~patchbench.models.dual_encoder.clip_loss`) with the learned
temperature; §2.5 — AdamW with decoupled weight decay on every weight that is not a gain, a
bias, an embedding or the temperature, a cosine learning rate (here per epoch,
:func:`~patchbench.training.hasher.epoch_lr`, so a resumed run needs no scheduler state), and the
logit scale clipped at 100 after every step. The image tower starts from the ImageNet MobileNetV2;
its blocks before ``trainable_from`` are frozen, so their outputs are **precomputed** once and
cached in ``out_dir/features.pt``. No image augmentation (a mirror would swap the captions'
"left" and "right"); the training split is large instead (10 000 canvases).

Checkpoints: the full state (model, optimiser, RNGs, config, vocabulary, history) after every
epoch in ``out_dir/train_state.pt`` (atomic); ``resume=True`` continues after the last finished
epoch and draws the same numbers. At the end: ``out_dir/dual_encoder.pt``
(:func:`~patchbench.models.dual_encoder.save_dual_encoder`) and ``out_dir/metrics.json`` with
text→image R@1/5/10 on the database split (:func:`text_to_image_recall`), scored on the stored
(possibly float16) weights.

Example::

    path = train_dual_encoder(DualEncoderTrainConfig(), "runs/dual")   # → runs/dual/dual_encoder.pt
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .._config import config_from_mapping, read_toml
from .._validation import (check_bool, check_choice, check_device, check_images, check_int,
                           check_nonnegative, check_path, check_positive, check_positive_int,
                           check_seed)
from .checkpoint import check_run_settings
from .hasher import epoch_lr

RECALL_KS = (1, 5, 10)


@dataclass
class DualEncoderTrainConfig:
    """Everything that defines a dual-encoder training run (also the keys of ``--config FILE``).

    Args:
        dataset_seed: ``fmnist-scenes``' ``seed=`` (0). image_size: canvas side (64).
        n_train: training canvases (10 000, the whole split), 5 captions each.
        embed_dim (128), width (128), layers (2), heads (4), causal (True), context_length (32),
            truncate (False): the model (:func:`~patchbench.models.dual_encoder.build_dual_encoder`).
        trainable_from: first trained MobileNetV2 block (16: blocks 16–18 and the projection;
            14 trains two more blocks at about twice the step time).
        pretrained: ImageNet backbone (True) or a seeded random one. width_mult: 1.0.
        min_count: a word enters the vocabulary when seen that often in the training captions (1).
        epochs (30), batch_size (256), lr (text tower, projections, temperature; 1e-3),
        backbone_lr (trained MobileNetV2 blocks; 3e-4), weight_decay (0.1).
        n_database: database images scored at the end (2000; 0 skips), 5 captions each.
        name: the model's name (default ``dual_encoder_fmnist_scenes``). store_dtype: "float16"
            (default, under 5 MB) or "float32". seed (0), device, num_threads, progress.
    """

    dataset_seed: int = 0
    image_size: int = 64
    n_train: int = 10000
    embed_dim: int = 128
    width: int = 128
    layers: int = 2
    heads: int = 4
    causal: bool = True
    context_length: int = 32
    truncate: bool = False
    trainable_from: int = 16
    pretrained: bool = True
    width_mult: float = 1.0
    min_count: int = 1
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    backbone_lr: float = 3e-4
    weight_decay: float = 0.1
    n_database: int = 2000
    name: Optional[str] = None
    store_dtype: str = "float16"
    seed: int = 0
    device: str = "cpu"
    num_threads: Optional[int] = None
    progress: bool = True

    def __post_init__(self):
        c = "DualEncoderTrainConfig."
        self.dataset_seed = check_seed(self.dataset_seed, c + "dataset_seed")
        self.image_size = check_positive_int(self.image_size, c + "image_size", minimum=32)
        for k in ("n_train", "embed_dim", "width", "layers", "heads", "epochs", "min_count"):
            setattr(self, k, check_positive_int(getattr(self, k), c + k))
        self.batch_size = check_positive_int(self.batch_size, c + "batch_size", minimum=2)
        self.context_length = check_positive_int(self.context_length, c + "context_length", 3)
        self.n_database = check_int(self.n_database, c + "n_database", minimum=0)
        self.trainable_from = check_int(self.trainable_from, c + "trainable_from", 0, 19)
        for k in ("causal", "truncate", "pretrained"):
            setattr(self, k, check_bool(getattr(self, k), c + k))
        self.width_mult = check_positive(self.width_mult, c + "width_mult")
        if self.pretrained and self.width_mult != 1.0:
            raise ValueError(f"{c}width_mult: the ImageNet weights need 1.0, got {self.width_mult} "
                             f"(set pretrained = false for other widths)")
        if self.width % self.heads:
            raise ValueError(f"{c}width: {self.width} is not a multiple of heads={self.heads}")
        for k in ("lr", "backbone_lr"):
            setattr(self, k, check_positive(getattr(self, k), c + k))
        self.weight_decay = check_nonnegative(self.weight_decay, c + "weight_decay")
        self.store_dtype = check_choice(self.store_dtype, c + "store_dtype", ("float32", "float16"))
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise TypeError(f"{c}name: expected a non-empty string or None, got {self.name!r}")
        check_run_settings(self, c)

    @property
    def model_name(self) -> str:
        return self.name or "dual_encoder_fmnist_scenes"

    def identity(self) -> dict:
        """The fields a resumed run must share (not where it runs, the epochs or the evaluation)."""
        d = dataclasses.asdict(self)
        for k in ("device", "num_threads", "progress", "epochs", "n_database", "store_dtype"):
            d.pop(k)
        return d

    @classmethod
    def from_toml(cls, path) -> "DualEncoderTrainConfig":
        """Read a TOML file: top-level keys or a ``[dual_encoder]`` table with the fields above."""
        data = read_toml(path, "config")
        return config_from_mapping(cls, data.get("dual_encoder", data), str(path),
                                   label="dual-encoder config")


def check_caption_lists(captions, n: int, name: str = "captions") -> List[List[str]]:
    """``n`` non-empty lists of non-empty caption strings (one list per image)."""
    if not isinstance(captions, (list, tuple)) or len(captions) != n:
        got = len(captions) if isinstance(captions, (list, tuple)) else type(captions).__name__
        raise ValueError(f"{name}: expected one list of captions per image ({n}), got {got}")
    from ..models.dual_encoder import check_captions
    return [check_captions(c, f"{name}[{i}]") for i, c in enumerate(captions)]


@torch.no_grad()
def text_to_image_recall(model, images: Tensor, captions: Sequence[Sequence[str]],
                         ks: Sequence[int] = RECALL_KS, batch_size: int = 256) -> Dict[str, float]:
    """Text→image R@K (CLIP §3.1.4's zero-shot retrieval, TTH's clean R@K): every caption of
    ``captions[i]`` is a query whose one relevant gallery item is ``images[i]``; the gallery is
    ``images``, ranked by cosine similarity (ties by index). Returns ``{"r@1": .., "r@5": ..,
    "r@10": .., "n_images", "n_queries"}`` (:func:`~patchbench.metrics.retrieval.recall_at_k`).

    ``model``: a :class:`~patchbench.models.text_image.TextImageModel`; ``images``: ``N×3×H×W``
    in [0, 1]; ``captions``: ``N`` lists of captions."""
    from ..metrics.retrieval import recall_at_k
    x = check_images(images, "images")
    caps = check_caption_lists(list(captions), x.shape[0])
    ks = [check_positive_int(k, "ks") for k in ks]
    bs = check_positive_int(batch_size, "batch_size")
    was = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        dev = next(model.parameters()).device if hasattr(model, "parameters") else x.device
        img = torch.cat([model.encode_image(x[i:i + bs].to(dev)) for i in range(0, len(x), bs)])
        flat = [c for cs in caps for c in cs]
        owner = torch.tensor([i for i, cs in enumerate(caps) for _ in cs], device=img.device)
        txt = torch.cat([model.encode_text(flat[i:i + bs]) for i in range(0, len(flat), bs)])
    finally:
        if was:
            model.train()
    sim = txt @ img.T
    out = {f"r@{k}": float(recall_at_k(sim, owner, k).mean()) for k in ks}
    return {**out, "n_images": int(x.shape[0]), "n_queries": len(flat)}


@torch.no_grad()
def _frozen_features(model, x: Tensor, cfg: DualEncoderTrainConfig, out: Path, dev) -> Tensor:
    """The frozen blocks' outputs for the training images, computed once and cached on disk."""
    from ..models.weights import load_cache
    from .._io import atomic_save
    key = {k: getattr(cfg, k) for k in ("dataset_seed", "image_size", "n_train", "pretrained",
                                        "width_mult", "trainable_from")}
    if not cfg.pretrained:
        key["seed"] = cfg.seed
    path = out / "features.pt"
    cached = load_cache(path, "dual-encoder feature cache")
    if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("z"), Tensor):
        return cached["z"].to(dev)
    tower = model.image.eval()
    zs = [tower.frozen(model.prepare(x[i:i + 256].to(dev))).cpu()
          for i in tqdm(range(0, x.shape[0], 256), desc="frozen features",
                        disable=not cfg.progress, leave=False)]
    z = torch.cat(zs)
    atomic_save({"key": key, "z": z}, path)
    return z.to(dev)


def _optimizer(model, cfg: DualEncoderTrainConfig) -> torch.optim.Optimizer:
    """AdamW groups: trained backbone blocks at ``backbone_lr``, the rest at ``lr``; weight decay
    only on matrices / kernels (CLIP §2.5: not on gains, biases, embeddings, the temperature)."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        backbone = name.startswith("image.features.")
        decay = p.dim() >= 2 and "embedding" not in name
        groups.setdefault((backbone, decay), []).append(p)
    params = []
    for (backbone, decay), ps in sorted(groups.items()):
        base = cfg.backbone_lr if backbone else cfg.lr
        params.append({"params": ps, "lr": base, "base": base,
                       "weight_decay": cfg.weight_decay if decay else 0.0})
    return torch.optim.AdamW(params)


def _epoch(model, opt, z: Tensor, ids: Tensor, cfg: DualEncoderTrainConfig, gen, epoch: int) -> float:
    from ..models.dual_encoder import MAX_LOGIT_SCALE, clip_loss
    model.train()
    order = torch.randperm(z.shape[0], generator=gen)
    pick = torch.randint(ids.shape[1], (z.shape[0],), generator=gen)
    total, steps = 0.0, 0
    starts = range(0, z.shape[0] - 1, cfg.batch_size)   # a batch of one has no negative: skipped
    bar = tqdm(starts, desc=f"dual encoder epoch {epoch + 1}/{cfg.epochs}",
               disable=not cfg.progress, leave=False)
    for s in bar:
        idx = order[s:s + cfg.batch_size]
        if idx.numel() < 2:
            continue
        img = F.normalize(model.image.tail(z[idx.to(z.device)]), dim=-1)
        txt = F.normalize(model.text(ids[idx, pick[idx]].to(z.device)), dim=-1)
        loss = clip_loss(model.logits(img, txt))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ValueError(f"training diverged at epoch {epoch + 1}: the loss became {value}; "
                             f"try a lower lr (this run used lr={cfg.lr:g})")
        total, steps = total + value, steps + 1
        if steps % 10 == 0:
            bar.set_postfix(loss=f"{total / steps:.4f}", refresh=False)
    return total / max(steps, 1)


def _scene_captions(split: str, n: int, seed: int) -> List[List[str]]:
    from ..data.captions import scene_captions      # issue 15's template captions
    return scene_captions(split, n=n, seed=seed)


def train_dual_encoder(config: DualEncoderTrainConfig, out_dir, resume: bool = True,
                       captions: Optional[Sequence[Sequence[str]]] = None,
                       database_captions: Optional[Sequence[Sequence[str]]] = None) -> Path:
    """Train a dual encoder and return the path of ``out_dir/dual_encoder.pt`` (module doc).

    Args:
        config: a :class:`DualEncoderTrainConfig`.
        out_dir: folder of ``features.pt``, ``train_state.pt``, ``dual_encoder.pt``, ``metrics.json``.
        resume: continue from ``train_state.pt`` when it exists (same config; default True).
        captions / database_captions: one list of captions per training / database image
            (default: :func:`patchbench.data.captions.scene_captions` of those splits).
    """
    from ..data import load_dataset
    from ..models.dual_encoder import (Tokenizer, build_dual_encoder, load_dual_encoder,
                                       save_dual_encoder)
    from .checkpoint import load_checkpoint, save_checkpoint
    if not isinstance(config, DualEncoderTrainConfig):
        raise TypeError(f"config: expected a DualEncoderTrainConfig, got {type(config).__name__}")
    cfg = dataclasses.replace(config)
    out = check_path(out_dir, "out_dir", kind="dir", must_exist=False)
    resume = check_bool(resume, "resume")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    dev = check_device(cfg.device, "device")
    opts = dict(size=cfg.image_size, seed=cfg.dataset_seed)
    try:
        x, _ = load_dataset("fmnist-scenes", "train", n=cfg.n_train, **opts)
    except ValueError as e:
        raise ValueError(f"DualEncoderTrainConfig.n_train: {e}") from None
    if captions is None:
        captions = _scene_captions("train", cfg.n_train, cfg.dataset_seed)
    caps = check_caption_lists(list(captions), x.shape[0])
    if len({len(c) for c in caps}) != 1:
        raise ValueError("captions: every image needs the same number of captions")
    tok = Tokenizer.from_captions((c for cs in caps for c in cs), cfg.min_count,
                                  context_length=cfg.context_length, truncate=cfg.truncate)
    ids = torch.stack([tok.encode(cs, f"captions[{i}]") for i, cs in enumerate(caps)])  # N×5×L
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = build_dual_encoder(tok, cfg.image_size, cfg.embed_dim, cfg.width, cfg.layers,
                               cfg.heads, cfg.causal, cfg.trainable_from, cfg.pretrained,
                               cfg.width_mult, cfg.model_name, cfg.seed).to(dev)
    z = _frozen_features(model, x, cfg, out, dev)
    opt = _optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    state_path, start, history = out / "train_state.pt", 0, []
    if resume and state_path.is_file():
        state = load_checkpoint(state_path, model=model, optimizer=opt, generators={"data": gen},
                                map_location=dev)
        if state["config"] != cfg.identity() or state["extra"].get("vocab") != tok.vocab:
            raise ValueError(f"{state_path}: made by another dual-encoder config or other "
                             f"captions ({state['config']}); use another out_dir or resume=False")
        start, history = state["epoch"], list(state["extra"].get("history", []))
    steps_per_epoch = len(range(0, z.shape[0] - 1, cfg.batch_size))
    for epoch in range(start, cfg.epochs):
        for group in opt.param_groups:
            group["lr"] = epoch_lr(group["base"], epoch, cfg.epochs)
        history.append(_epoch(model, opt, z, ids, cfg, gen, epoch))
        save_checkpoint(state_path, model=model, optimizer=opt, epoch=epoch + 1,
                        step=(epoch + 1) * steps_per_epoch, config=cfg.identity(),
                        generators={"data": gen},
                        extra={"history": history, "vocab": tok.vocab})
        if cfg.progress:
            tqdm.write(f"{cfg.model_name} epoch {epoch + 1}/{cfg.epochs}: loss {history[-1]:.4f}, "
                       f"temperature {1 / float(model.logit_scale.detach().exp()):.4f}")
    meta = {"name": cfg.model_name, "config": dataclasses.asdict(cfg), "history": history}
    path = save_dual_encoder(model.eval(), out / "dual_encoder.pt", meta, dtype=cfg.store_dtype)
    shipped = load_dual_encoder(path, dev)              # score what the file holds (maybe rounded)
    metrics = {}
    if cfg.n_database:
        xd, _ = load_dataset("fmnist-scenes", "database", n=cfg.n_database, **opts)
        if database_captions is None:
            database_captions = _scene_captions("database", cfg.n_database, cfg.dataset_seed)
        metrics = text_to_image_recall(shipped, xd, database_captions)
    path = save_dual_encoder(shipped, path, {**meta, "metrics": metrics}, dtype=cfg.store_dtype)
    from .._io import atomic_write_text
    atomic_write_text(out / "metrics.json", json.dumps({"history": history, **metrics}, indent=2))
    return path


_FLAGS = {"dataset_seed": int, "image_size": int, "n_train": int, "embed_dim": int, "width": int,
          "layers": int, "heads": int, "context_length": int, "trainable_from": int,
          "width_mult": float, "min_count": int, "epochs": int, "batch_size": int, "lr": float,
          "backbone_lr": float, "weight_decay": float, "n_database": int, "name": str,
          "store_dtype": str, "seed": int, "device": str, "num_threads": int}


def main_train_dual_encoder(argv: Optional[Sequence[str]] = None) -> int:
    """``patchbench train dual-encoder [--config FILE] [--out DIR] [--epochs N] ... [--no-resume]``."""
    from ..cli import ArgumentParser, config_file_arg, out_dir_arg
    p = ArgumentParser(prog="patchbench train dual-encoder",
                       description="Train a CLIP-style dual encoder on fmnist-scenes and its "
                                   "captions (resumable)")
    p.add_argument("--config", default=None, type=config_file_arg,
                   help="TOML file with DualEncoderTrainConfig fields (flags override it)")
    p.add_argument("--out", default="runs/dual_encoder", type=out_dir_arg, help="output folder")
    for field, kind in _FLAGS.items():
        p.add_argument("--" + field.replace("_", "-"), dest=field, type=kind, default=None,
                       help=f"DualEncoderTrainConfig.{field}")
    p.add_argument("--random-init", action="store_true", help="random backbone (pretrained=False)")
    p.add_argument("--bidirectional", action="store_true", help="no causal mask (causal=False)")
    p.add_argument("--truncate", action="store_true", help="cut long captions (truncate=True)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT holds a run")
    a = p.parse_args(argv)
    cfg = DualEncoderTrainConfig.from_toml(a.config) if a.config else DualEncoderTrainConfig()
    changes = {k: getattr(a, k) for k in _FLAGS if getattr(a, k) is not None}
    for flag, field, value in (("random_init", "pretrained", False), ("bidirectional", "causal", False),
                               ("truncate", "truncate", True), ("no_progress", "progress", False)):
        if getattr(a, flag):
            changes[field] = value
    cfg = dataclasses.replace(cfg, **changes)
    path = train_dual_encoder(cfg, a.out, resume=not a.no_resume)
    metrics = json.loads((Path(path).parent / "metrics.json").read_text())
    if "r@10" in metrics:
        print(f"{cfg.model_name}: text→image R@1 {metrics['r@1']:.4f} R@5 {metrics['r@5']:.4f} "
              f"R@10 {metrics['r@10']:.4f} ({metrics['n_queries']} captions, "
              f"{metrics['n_images']} images) -> {path}")
    else:
        print(f"{cfg.model_name} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_train_dual_encoder())
