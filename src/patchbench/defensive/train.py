"""Stage 2 of defensive patches: training the per-class patch on real images with an ensemble.

Wang et al. (CVPR 2022), as the authors' code does it (``defensive-patch-notes.md``, Stage 2):

* the patch is the Stage-1 prior (:mod:`~patchbench.defensive.prior`) restricted to a placement
  around the object, pasted as ``x·(1−m) + patch[y]·m`` with ``y`` the true label;
* each outer epoch, for every model of the ensemble, a copy of the shared patch is trained one epoch
  with cross-entropy (Adam, lr 0.03), giving model-specific patches; then the shared patch is updated
  with the *global feature correlation* loss only — the MSE between Gram matrices
  ``G(z) = (mask pixels of z)ᵀ × (all pixels of z)`` of the patched input ``z`` made with the shared
  patch and with each model-specific patch, weighted by ``lam`` (default 1);
* Adam lr 0.03 with MultiStepLR milestones [3, 8, 15, 25, 40, 60, 90, 140], gamma 1/3.

Gaps closed here (the notes list them): the physical transformations are *applied* while training
(EOT: photometric changes of the patch pixels from :class:`patchbench.patches.EOT`, then a small random
rotation / scale / shift of the whole patched image, as a camera would see the object), and optional
noise-aware training applies a random common corruption (:mod:`patchbench.corruptions`) or PGD-L∞ noise
(Madry et al. 2018) to the patched image before the cross-entropy step.

Our addition (not in the authors' code): ``shared_ce > 0`` also trains the shared patch directly on the
ensemble's mean cross-entropy (same EOT / noise as the model-specific epochs) next to its Gram loss;
with the authors' recipe the shared patch only follows the model-specific ones through the Gram
matrices. On Fashion-MNIST it adds 0.5–1.7 points of corruption gain (the ``defensive-patch`` experiment).

Example::

    cfg = DefensivePatchConfig(models=("fmnist_cnn_small", "fmnist_cnn_wide"), epochs=8)
    patch = train_defensive_patch(cfg, "runs/defensive")          # a DefensivePatch
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._config import config_from_mapping, name_list, read_toml
from .._validation import (check_bool, check_choice, check_device, check_images, check_int,
                           check_labels, check_nonnegative, check_number, check_path, check_positive,
                           check_positive_int, check_seed, trusted_inputs)
from ..attacks._common import frozen
from ..patches import EOT
from .apply import DefensivePatch, DefensivePlacement, apply_defensive_patch, physical_jitter
from .prior import train_class_prior

MILESTONES = (3, 8, 15, 25, 40, 60, 90, 140)
DATASETS = ("fashion-mnist", "imagenet-samples")


def _sequence(value, name: str, length: Optional[int] = None) -> tuple:
    """``value`` as a tuple (a list or tuple; of ``length`` items when given)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        want = f"a list of {length} numbers" if length else "a list"
        raise TypeError(f"{name}: expected {want}, got {value!r}")
    if length is not None and len(value) != length:
        raise ValueError(f"{name}: expected {length} values, got {len(value)}: {list(value)!r}")
    return tuple(value)


@dataclass
class DefensivePatchConfig:
    """Hyper-parameters of :func:`train_defensive_patch` (defaults: the authors' code, see module doc).

    Args:
        dataset: ``"fashion-mnist"`` (train split) or ``"imagenet-samples"`` (``data.samples``).
        models: registered model names of the training ensemble.
        placement: :class:`DefensivePlacement` fields (default a 2-px border).
        epochs: outer epochs (30). batch_size: 128. lr: Adam lr of all patches (0.03).
        milestones, gamma: MultiStepLR of the shared patch ([3, 8, …, 140], 1/3).
        lam: weight of the Gram (global feature correlation) loss (1.0).
        prior_epochs, prior_steps, prior_batch, prior_lr: Stage 1 (10 epochs of 30 steps, batch 32,
            lr 1e-2; see prior.py).
        repeat: passes over the data per inner epoch (1; >1 for tiny photo sets, with new EOT draws).
        eot: apply physical transformations while training (True); eot_rotation (deg), eot_scale,
            eot_shift (fraction of the image) bound the whole-image jitter.
        noise_aware: add random corruptions / PGD noise while training (False); corruptions: names
            (empty = all); pgd_eps: largest L∞ budget (8/255); pgd_steps: 2; noise_chunks: the batch
            is split into this many parts, each with its own noise draw (1 = one draw per batch), so
            one step sees several corruptions and severities; noise_probs: chances of (no noise,
            a corruption, PGD) per draw ((1/3, 1/3, 1/3)).
        shared_ce: weight of a cross-entropy term (the ensemble's mean, on the same EOT / noise-aware
            images as the model-specific epochs) added to the Gram loss of the shared patch (0 = the
            authors' code: the shared patch follows the model-specific ones through the Gram loss only).
        train_limit: first N training images (None = all). image_size: photo size for imagenet (224).
        seed: 0. device: "cpu".
    """

    dataset: str = "fashion-mnist"
    models: Tuple[str, ...] = ("fmnist_cnn_small", "fmnist_cnn_wide")
    placement: dict = field(default_factory=lambda: {"kind": "border", "width": 2})
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.03
    milestones: Tuple[int, ...] = MILESTONES
    gamma: float = 1 / 3
    lam: float = 1.0
    prior_epochs: int = 10
    prior_steps: int = 30
    prior_batch: int = 32
    prior_lr: float = 1e-2
    repeat: int = 1
    eot: bool = True
    eot_rotation: float = 8.0
    eot_scale: Tuple[float, float] = (0.95, 1.05)
    eot_shift: float = 0.04
    noise_aware: bool = False
    corruptions: Tuple[str, ...] = ()
    pgd_eps: float = 8 / 255
    pgd_steps: int = 2
    noise_chunks: int = 1
    noise_probs: Tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    shared_ce: float = 0.0
    train_limit: Optional[int] = None
    image_size: int = 224
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        c = "DefensivePatchConfig."
        from ..corruptions import CORRUPTIONS
        self.dataset = check_choice(self.dataset, c + "dataset", DATASETS)
        self.models = name_list(self.models, c + "models")
        placement = DefensivePlacement.from_dict(self.placement, c + "placement")  # validates
        # the dict is kept as given: it is part of the recorded config that cached patches match
        self.placement = asdict(placement) if isinstance(self.placement, DefensivePlacement) \
            else dict(self.placement)
        for name in ("epochs", "batch_size", "prior_epochs", "prior_steps", "prior_batch", "repeat",
                     "pgd_steps", "noise_chunks", "image_size"):
            setattr(self, name, check_positive_int(getattr(self, name), c + name))
        for name in ("lr", "prior_lr", "gamma"):
            setattr(self, name, check_positive(getattr(self, name), c + name))
        for name in ("lam", "shared_ce"):
            setattr(self, name, check_nonnegative(getattr(self, name), c + name))
        self.milestones = tuple(check_int(m, c + "milestones", 0)
                                for m in _sequence(self.milestones, c + "milestones"))
        self.eot, self.noise_aware = check_bool(self.eot, c + "eot"), check_bool(self.noise_aware,
                                                                                c + "noise_aware")
        self.eot_rotation = check_number(self.eot_rotation, c + "eot_rotation", 0.0, 180.0)
        scale = _sequence(self.eot_scale, c + "eot_scale", 2)
        self.eot_scale = tuple(check_positive(v, c + "eot_scale") for v in scale)
        if self.eot_scale[0] > self.eot_scale[1]:
            raise ValueError(f"{c}eot_scale: expected (low, high) with low <= high, got {scale!r}")
        self.eot_shift = check_number(self.eot_shift, c + "eot_shift", 0.0, 1.0)
        self.corruptions = name_list(self.corruptions, c + "corruptions", CORRUPTIONS, allow_empty=True)
        self.pgd_eps = check_number(self.pgd_eps, c + "pgd_eps", 0.0, 1.0)
        probs = _sequence(self.noise_probs, c + "noise_probs", 3)
        self.noise_probs = tuple(check_nonnegative(p, c + "noise_probs") for p in probs)
        if not sum(self.noise_probs) > 0:
            raise ValueError(f"{c}noise_probs: expected three non-negative chances (none, corruption, "
                             f"PGD) with a positive sum, got {probs!r}")
        if self.train_limit is not None:
            self.train_limit = check_positive_int(self.train_limit, c + "train_limit")
        self.seed = check_seed(self.seed, c + "seed")
        check_device(self.device, c + "device")

    @classmethod
    def from_toml(cls, path) -> "DefensivePatchConfig":
        """Read a config file whose top-level keys are these fields (``[placement]`` a table).
        Errors name the file and the line (syntax) or the field (values); unknown keys are listed."""
        return config_from_mapping(cls, read_toml(path, "config"), str(path),
                                   label="defensive-patch config")

    def placement_obj(self) -> DefensivePlacement:
        return DefensivePlacement.from_dict(dict(self.placement))

    def eot_obj(self) -> Optional[EOT]:
        """Photometric EOT of the patch pixels (geometry is jittered on the whole image instead)."""
        if not self.eot:
            return None
        return EOT(rotation=0.0, scale=1.0, perspective=0.0, brightness=0.1, contrast=0.15, blur=0.5,
                   noise=0.02)


def load_training_data(config: DefensivePatchConfig) -> Tuple[Tensor, Tensor]:
    """The ``(x, y)`` the config names (Fashion-MNIST train split or the offline ImageNet photos)."""
    if config.dataset == "fashion-mnist":
        from ..data.fashion_mnist import load_fashion_mnist
        try:
            return load_fashion_mnist("train", limit=config.train_limit)
        except ValueError as e:
            if "limit" not in str(e):
                raise
            raise ValueError(f"DefensivePatchConfig.train_limit: {e}") from None
    from ..data import samples
    return samples("imagenet", size=config.image_size)


def load_models(names: Sequence[str], device="cpu") -> list:
    """Registered models by name, in eval mode (every name is checked before any is loaded)."""
    from ..models import zoo
    names = name_list(names, "models")
    device = check_device(device, "device")
    for n in names:
        try:
            zoo.get_spec(n)
        except LookupError as e:
            raise LookupError(f"models: {e}") from e
    return [zoo.load(n, device=device) for n in names]


def _check_data(data, num_classes: int) -> Tuple[Tensor, Tensor]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"data: expected a pair (x, y), got {type(data).__name__}")
    x = check_images(data[0], "data: x")
    return x, check_labels(data[1], x.shape[0], num_classes, "data: y")


def gram_mse(z_s: Tensor, z_k: Tensor, mask: Tensor) -> Tensor:
    """MSE between the global feature-correlation matrices ``G(z) = r(z)ᵀ·a(z)`` of two patched batches
    (notes, Stage 2), with ``r`` the C×R mask pixels and ``a`` the C×HW pixels of each image.

    ``G`` is R×HW per image (too large to materialise for photos), but with C channels
    ``‖G_s − G_k‖² = Σ (r_s r_sᵀ)∘(a_s a_sᵀ) − 2 Σ (r_s r_kᵀ)∘(a_s a_kᵀ)
    + Σ (r_k r_kᵀ)∘(a_k a_kᵀ)``
    uses C×C products only — exact, and cheap. Returns the mean over images and matrix entries.
    """
    n, c = z_s.shape[:2]
    sel = mask.reshape(-1) > 0.5
    a_s, a_k = z_s.reshape(n, c, -1), z_k.reshape(n, c, -1)
    r_s, r_k = a_s[..., sel], a_k[..., sel]

    def corr(u, v):
        return u @ v.transpose(1, 2)                                      # N×C×C

    sq = (corr(r_s, r_s) * corr(a_s, a_s)).sum((1, 2)) - 2 * (corr(r_s, r_k) * corr(a_s, a_k)).sum((1, 2)) \
        + (corr(r_k, r_k) * corr(a_k, a_k)).sum((1, 2))
    return (sq.clamp_min(0) / (r_s.shape[-1] * a_s.shape[-1])).mean()


def training_noise(z: Tensor, y: Tensor, model, g: torch.Generator, corruptions: Sequence[str],
                   pgd_eps: float, pgd_steps: int,
                   probs: Sequence[float] = (1 / 3, 1 / 3, 1 / 3)) -> Tensor:
    """Noise-aware training (beyond the authors' code): per call, with chances ``probs``, no noise, one
    random common corruption at a random severity 1–5 (Hendrycks & Dietterich 2019), or PGD-L∞
    (Madry et al. 2018, Eq. 2) with ε ~ U(0, pgd_eps) against ``model``. The noise is treated as
    additive and constant (BPDA identity, Athalye et al. 2018): gradients reach the patch straight
    through it, so non-differentiable corruptions (JPEG, pixelate) work too."""
    from ..corruptions import CORRUPTIONS, corrupt
    choice = int(torch.multinomial(torch.tensor([float(p) for p in probs]), 1, generator=g))
    if choice == 0:
        return z
    if choice == 1:
        names = list(corruptions) or list(CORRUPTIONS)
        name = names[int(torch.randint(0, len(names), (1,), generator=g))]
        sev = int(torch.randint(1, 6, (1,), generator=g))
        seed = int(torch.randint(0, 2 ** 31, (1,), generator=g))
        zc = corrupt(z.detach().clamp(0, 1), name, sev, generator=seed)
        return z + (zc - z).detach()
    eps = float(torch.rand(1, generator=g)) * pgd_eps
    step = eps / pgd_steps * 1.5
    delta = (torch.rand(z.shape, generator=g) * 2 - 1).to(z) * eps
    for _ in range(pgd_steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model((z.detach() + delta).clamp(0, 1)), y)
        grad, = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
    return (z + delta.detach()).clamp(0, 1)


class _PatchHolder(nn.Module):
    """The shared patch as an ``nn.Module`` so the generic training checkpoint can hold it."""

    def __init__(self, patches: Tensor):
        super().__init__()
        self.patches = nn.Parameter(patches.clone())


def _batches(n: int, batch_size: int, g: torch.Generator, repeat: int = 1):
    out = []
    for _ in range(repeat):
        order = torch.randperm(n, generator=g)
        out += [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return out


def _ce_loss(model, patch: DefensivePatch, xb: Tensor, yb: Tensor, cfg, g, eot) -> Tensor:
    """Cross-entropy of ``model`` on ``xb`` wearing ``patch``, seen through the training-time EOT
    (photometric, then whole-image jitter) and, if noise-aware, random noise per batch chunk."""
    photo = eot.sample(len(yb), g) if eot is not None else None
    z = apply_defensive_patch(xb, yb, patch, photo, check=False)
    if cfg.eot:
        z = physical_jitter(z, g, cfg.eot_rotation, cfg.eot_scale, cfg.eot_shift)
    if cfg.noise_aware:
        z = torch.cat([training_noise(zc, yc, model, g, cfg.corruptions, cfg.pgd_eps, cfg.pgd_steps,
                                      cfg.noise_probs)
                       for zc, yc in zip(z.tensor_split(cfg.noise_chunks),
                                         yb.tensor_split(cfg.noise_chunks)) if len(yc)])
    return F.cross_entropy(model(z), yb)


def _ce_epoch(model, base: DefensivePatch, x, y, cfg, lr: float, g, eot, bar) -> Tuple[Tensor, float]:
    """One epoch of cross-entropy training of a copy of the shared patch against ``model``."""
    p = base.patches.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    dev = p.device
    work = DefensivePatch(p, base.mask, base.classes, base.class_ids, base.placement)
    total, steps = 0.0, 0
    for idx in _batches(len(x), cfg.batch_size, g, cfg.repeat):
        xb, yb = x[idx].to(dev), y[idx].to(dev)
        work.patches = p
        loss = _ce_loss(model, work, xb, yb, cfg, g, eot)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            p.clamp_(0, 1)
        total, steps = total + float(loss.detach()), steps + 1
        bar.update(1)
    return p.detach(), total / max(steps, 1)


def _gram_epoch(holder, opt, shared: DefensivePatch, specific: Sequence[Tensor], x, y, cfg, g,
                bar, models: Sequence[nn.Module], eot) -> float:
    """One epoch of the global feature-correlation update of the shared patch (notes, Stage 2), plus
    ``cfg.shared_ce`` × the ensemble's cross-entropy when that weight is positive."""
    dev = holder.patches.device
    total, steps = 0.0, 0
    for idx in _batches(len(x), cfg.batch_size, g, cfg.repeat):
        xb, yb = x[idx].to(dev), y[idx].to(dev)
        shared.patches = holder.patches
        z_s = apply_defensive_patch(xb, yb, shared, check=False)
        loss = 0.0
        for pk in specific:
            with torch.no_grad():
                z_k = apply_defensive_patch(xb, yb, DefensivePatch(pk, shared.mask, shared.classes,
                                                                   shared.class_ids), check=False)
            loss = loss + cfg.lam * gram_mse(z_s, z_k, shared.mask)
        if cfg.shared_ce > 0:
            loss = loss + cfg.shared_ce * sum(_ce_loss(m, shared, xb, yb, cfg, g, eot)
                                              for m in models) / len(models)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            holder.patches.clamp_(0, 1)
        total, steps = total + float(loss.detach()), steps + 1
        bar.update(1)
    return total / max(steps, 1)


def config_dict(cfg: DefensivePatchConfig) -> dict:
    """The config as plain JSON values (what checkpoints and patch metadata record)."""
    return json.loads(json.dumps(asdict(cfg)))


def train_defensive_patch(config: DefensivePatchConfig, out_dir, resume: bool = True,
                          progress: bool = True, *, models: Optional[list] = None,
                          data: Optional[Tuple[Tensor, Tensor]] = None) -> DefensivePatch:
    """Train a defensive patch (Stage 1 prior, then Stage 2) and save it to ``out_dir``.

    Args:
        config: a :class:`DefensivePatchConfig`.
        out_dir: folder for ``defensive_patch.pt`` (+ ``.png`` sheet, ``.json`` metadata) and the
            resumable checkpoint ``defensive_patch.ckpt`` written after every outer epoch.
        resume: continue from the checkpoint when present (its config must match). Default True.
        progress: tqdm bars (default True).
        models: classifiers to use instead of loading ``config.models`` (tests); data: ``(x, y)``
            instead of ``config.dataset``.

    Returns:
        The trained :class:`DefensivePatch` (classes of the first model; ``class_ids`` = the labels
        present in the training data).
    """
    if not isinstance(config, DefensivePatchConfig):
        raise TypeError(f"config: expected a DefensivePatchConfig, got {type(config).__name__}")
    config = replace(config)                   # re-validates fields changed after construction
    out = check_path(out_dir, "out_dir", kind="dir", must_exist=False)
    resume, progress = check_bool(resume, "resume"), check_bool(progress, "progress")
    dev = check_device(config.device, "DefensivePatchConfig.device")
    if models is not None:
        if not isinstance(models, (list, tuple)) or not models or \
                not all(callable(m) and hasattr(m, "class_names") for m in models):
            raise TypeError("models: expected a non-empty list of classifiers with class_names, got "
                            f"{models!r}")
    else:
        models = load_models(config.models, dev)
    names = list(models[0].class_names)
    if any(list(m.class_names) != names for m in models):
        raise ValueError("train_defensive_patch: the ensemble's models must share their class names")
    x, y = _check_data(data, len(names)) if data is not None else load_training_data(config)
    for m in models:
        ch = getattr(m, "channels", None)
        if ch is not None and ch != x.shape[1]:
            raise ValueError(f"models: {getattr(m, 'name', '?')!r} takes {ch}-channel images, the "
                             f"training data has {x.shape[1]} channels")
    if int(y.max()) >= len(names):
        raise ValueError(f"labels: class index {int(y.max())} out of range for models with "
                         f"{len(names)} classes")
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "defensive_patch.ckpt"
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    ids = sorted(set(y.tolist()))
    placement = config.placement_obj()
    mask = placement.mask(x.shape[-2:], device=dev)
    eot = config.eot_obj()
    meta = {"kind": "defensive", "models": [getattr(m, "name", "?") for m in models], "seed": config.seed,
            "config": config_dict(config)}
    holder = _PatchHolder(torch.zeros(len(ids), x.shape[1], *x.shape[-2:], device=dev))
    opt = torch.optim.Adam(holder.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(config.milestones), config.gamma)
    start, history = 0, []
    if resume and ckpt.is_file():
        from ..training.checkpoint import load_checkpoint
        state = load_checkpoint(ckpt, model=holder, optimizer=opt, scheduler=sched, generators={"g": g},
                                map_location=dev)
        if state["config"] != config_dict(config):
            raise ValueError(f"{ckpt}: made with config {state['config']}, this run asks for "
                             f"{config_dict(config)}; pass resume=False or another out_dir")
        start, history = state["epoch"], list(state["extra"].get("history", []))
    with frozen_all(models), trusted_inputs():    # x was checked once; every iterate stays in [0, 1]
        if start == 0:
            prior = train_class_prior(models, mask, ids, x.shape[1], epochs=config.prior_epochs,
                                      steps_per_epoch=config.prior_steps, batch_size=config.prior_batch,
                                      lr=config.prior_lr, eot=eot, generator=g, progress=progress)
            with torch.no_grad():
                holder.patches.copy_(prior)
        _stage2(holder, opt, sched, models, mask, names, ids, placement, x, y, config, g, eot,
                start, history, ckpt, progress)
    patch = DefensivePatch(holder.patches.detach(), mask, names, ids, placement,
                           {**meta, "history": history})
    patch.save(out / "defensive_patch.pt")
    return patch


def _stage2(holder, opt, sched, models, mask, names, ids, placement, x, y, cfg, g, eot, start,
            history, ckpt, progress) -> None:
    from ..training.checkpoint import save_checkpoint
    n_b = math.ceil(len(x) / cfg.batch_size) * cfg.repeat
    for epoch in range(start, cfg.epochs):
        lr = opt.param_groups[0]["lr"]
        shared = DefensivePatch(holder.patches.detach(), mask, names, ids, placement)
        with tqdm(total=n_b * (len(models) + 1), desc=f"defensive patch {epoch + 1}/{cfg.epochs}",
                  disable=not progress, leave=False) as bar:
            specific, ce = [], []
            for model in models:
                pk, loss = _ce_epoch(model, shared, x, y, cfg, lr, g, eot, bar)
                specific.append(pk)
                ce.append(loss)
            gram = _gram_epoch(holder, opt, shared, specific, x, y, cfg, g, bar, models, eot)
        sched.step()
        history.append({"epoch": epoch + 1, "lr": lr, "ce": ce, "gram": gram})
        save_checkpoint(ckpt, model=holder, optimizer=opt, scheduler=sched, epoch=epoch + 1,
                        step=(epoch + 1) * n_b, config=config_dict(cfg), generators={"g": g},
                        extra={"history": history})
        if progress:
            tqdm.write(f"defensive patch epoch {epoch + 1}/{cfg.epochs}: lr {lr:.4g} "
                       f"ce {[round(c, 4) for c in ce]} gram {gram:.3g}")


class frozen_all:
    """Context: every model frozen (eval, no parameter grads) — gradients flow to the patch only."""

    def __init__(self, models):
        self._ctx = [frozen(m) for m in models]

    def __enter__(self):
        for c in self._ctx:
            c.__enter__()
        return self

    def __exit__(self, *exc):
        for c in reversed(self._ctx):
            c.__exit__(*exc)
        return False


def main_train_defensive_patch(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``patchbench train defensive-patch --config FILE.toml [--out DIR]``."""
    from ..cli import ArgumentParser, config_file_arg, out_dir_arg, threads_arg
    p = ArgumentParser(prog="patchbench train defensive-patch",
                       description="Train a defensive patch (Wang et al. CVPR 2022), resumable.")
    p.add_argument("--config", required=True, type=config_file_arg,
                   help="TOML file with DefensivePatchConfig fields")
    p.add_argument("--out", default="runs/defensive-patch", type=out_dir_arg, help="output folder")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=threads_arg, default=None, help="torch.set_num_threads (CPU)")
    a = p.parse_args(argv)
    cfg = DefensivePatchConfig.from_toml(a.config)
    if a.threads:
        torch.set_num_threads(a.threads)
    patch = train_defensive_patch(cfg, a.out, resume=not a.no_resume, progress=not a.no_progress)
    print(f"defensive patch for {len(patch.class_ids)} classes -> {Path(a.out) / 'defensive_patch.pt'}")
    return 0
