"""Two-stage adversarial training of PatchZero's pixel-level patch detector.

Paper: Xu et al., "PatchZero: Defending against Adversarial Patch Attacks by Detecting and Zeroing the
Patch", WACV 2023, §3.2–3.3 and §4.

* Training data (§3.2): every attack image carries a patch of random size and location, made by an
  attack drawn from MPGD / MAPGD / MCW, and its ground-truth mask; attack and benign images (all-zero
  target mask) are mixed 1:1.
* Loss (§3.2): PSPNet's — a main per-pixel cross-entropy plus two auxiliary terms (PSPNet weights the
  auxiliary loss by 0.4; no class weighting, ``pos_weight = 1``). Adam (§4; the paper's lr 1e-4 is for
  a pretrained PSPNet, a small U-Net trained from scratch uses 1e-3).
* Stage 1 (§3.3): downstream-only (DO) attacks against the bare classifier. They do not depend on the
  detector, so they are generated once and cached in ``out_dir/stage1_attacks.pt``.
* Stage 2 (§3.3): BPDA adaptive attacks against ``Defended(classifier, PatchZero(detector,
  gradient="bpda-sigmoid"))``, regenerated online at every step with the current detector weights.

Checkpoints are written atomically after every epoch (``out_dir/train_state.pt``); a resumed run
continues at the first unfinished epoch of the current stage. Every random draw comes from a generator
seeded by ``(seed, stage, epoch)`` or ``(seed, chunk)``, so a resumed run draws the same numbers.

Example::

    cfg = PatchZeroTrainConfig(n_train=2000, epochs_stage1=6, epochs_stage2=2)
    path = train_patchzero(cfg, "runs/patchzero")        # → runs/patchzero/patchzero_final.pt
"""
from __future__ import annotations

import dataclasses
import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._config import config_from_mapping, name_list, read_toml
from .._validation import (check_bool, check_choice, check_fraction, check_int, check_nonnegative,
                           check_path, check_positive, check_positive_int)
from .checkpoint import check_run_settings
from ..defenses.base import Defended
from ..defenses.patchzero import PatchZero
from ..metrics.segmentation import PixelConfusion
from ..models.weights import load_cache, load_file, load_state_dict_checked

_ATTACK_MODULES = {"masked-pgd": "masked_pgd", "masked-apgd": "masked_apgd", "masked-cw": "masked_cw"}
#: deepest U-Net on 28×28 images: 28 → 14 → 7 → 4 → 2 (padded to a multiple of 2^depth)
MAX_UNET_DEPTH = 4


@dataclass
class PatchZeroTrainConfig:
    """Everything that defines a PatchZero training run (also the TOML keys of ``--config FILE``).

    Args:
        dataset: ``"fashion-mnist"`` (U-Net detector, 28×28) or a folder of images (flat or one
            sub-folder per class; MobileNetV2 segmenter at ``image_size``). Default "fashion-mnist".
        classifier: ``patchbench.models.load`` name of the downstream model. Default "fmnist_cnn_small".
        classifier_kwargs: extra arguments of ``models.load`` (e.g. ``{"channels": 1}``). Default {}.
        n_train: training images. Default 2000.
        image_size: side of the (square) images for a folder dataset. Default 224.
        epochs_stage1, epochs_stage2: epochs of DO and of BPDA training. Default 6 and 2.
        batch_size: attack images per step (plus as many benign ones). Default 32.
        attacks: attacks to draw from per image. Default MPGD, MAPGD, MCW (§4.1).
        attack_steps: iterations of the cached stage-1 attacks. Default 20.
        adaptive_steps: iterations of the online stage-2 BPDA attacks. Default 10.
        attack_kwargs: extra constructor arguments per attack name, e.g. ``{"masked-pgd": {"step": 0.05}}``.
        area_min, area_max: patch area range (fraction of the image), uniform per image. Default 1–10%.
        shape: patch shape. Default "square".
        lr: Adam learning rate. Default 1e-3. aux_weight: weight of each auxiliary loss. Default 0.4.
        lr_stage2: learning rate of stage 2 (None = ``lr``): stage 2 fine-tunes a trained detector.
        lr_schedule: "constant" or "cosine" (within each stage, from the stage's rate down to 5% of
            it at its last epoch; a function of the epoch, so resuming needs no scheduler state).
        pos_weight: BCE weight of patch pixels. Default 1.0 (PSPNet's unweighted loss).
        dilation: mask dilation radius stored with the detector. Default 1.
        unet_base: width of the U-Net. Default 16.
        unet_depth: down-samplings of the U-Net (2: 28 → 14 → 7; 3 adds a 4×4 level, for context
            beyond the patch). Default 2.
        seed: seed of every random draw. Default 0. device: "cpu" or "cuda". Default "cpu".
        num_threads: ``torch.set_num_threads`` for CPU runs (None = leave). progress: tqdm bars.
    """

    dataset: str = "fashion-mnist"
    classifier: str = "fmnist_cnn_small"
    classifier_kwargs: dict = field(default_factory=dict)
    n_train: int = 2000
    image_size: int = 224
    epochs_stage1: int = 6
    epochs_stage2: int = 2
    batch_size: int = 32
    attacks: Sequence[str] = ("masked-pgd", "masked-apgd", "masked-cw")
    attack_steps: int = 20
    adaptive_steps: int = 10
    attack_kwargs: dict = field(default_factory=dict)
    area_min: float = 0.01
    area_max: float = 0.10
    shape: str = "square"
    lr: float = 1e-3
    lr_stage2: Optional[float] = None
    lr_schedule: str = "constant"
    aux_weight: float = 0.4
    pos_weight: float = 1.0
    dilation: int = 1
    unet_base: int = 16
    unet_depth: int = 2
    seed: int = 0
    device: str = "cpu"
    num_threads: Optional[int] = None
    progress: bool = True

    def __post_init__(self):
        c = "PatchZeroTrainConfig."
        from ..models import get_spec
        from ..patches.shapes import SHAPES
        if not isinstance(self.dataset, str) or not self.dataset:
            raise TypeError(f"{c}dataset: expected 'fashion-mnist' or an image folder, got "
                            f"{self.dataset!r}")
        if self.dataset != "fashion-mnist" and not Path(self.dataset).is_dir():
            raise FileNotFoundError(f"{c}dataset: expected 'fashion-mnist' or an existing image "
                                    f"folder, got {self.dataset!r} (no such folder)")
        if not isinstance(self.classifier, str):
            raise TypeError(f"{c}classifier: expected a model name, got {self.classifier!r}")
        try:
            get_spec(self.classifier)
        except LookupError as e:
            raise LookupError(f"{c}classifier: {e}") from None
        for name in ("classifier_kwargs", "attack_kwargs"):
            v = getattr(self, name)
            if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
                raise TypeError(f"{c}{name}: expected a table (dict) of options, got {v!r}")
        self.attacks = name_list(self.attacks, c + "attacks", sorted(_ATTACK_MODULES))
        for k, v in self.attack_kwargs.items():
            name_list(k, f"{c}attack_kwargs", sorted(_ATTACK_MODULES))
            if not isinstance(v, dict):
                raise TypeError(f"{c}attack_kwargs.{k}: expected a table of constructor options, "
                                f"got {v!r}")
        for k in ("n_train", "batch_size", "attack_steps", "adaptive_steps", "unet_base", "image_size"):
            setattr(self, k, check_positive_int(getattr(self, k), c + k))
        self.unet_depth = check_int(self.unet_depth, c + "unet_depth")
        if not 1 <= self.unet_depth <= MAX_UNET_DEPTH:
            raise ValueError(f"{c}unet_depth: expected 1..{MAX_UNET_DEPTH}, got {self.unet_depth}: each "
                             f"level halves the 28×28 Fashion-MNIST image (28 → 14 → 7 → 4 → 2), so "
                             f"more than {MAX_UNET_DEPTH} down-samplings leave a bottleneck under 2×2 "
                             f"pixels (and the width doubles per level: unet_base·2^depth channels)")
        self.epochs_stage1 = check_int(self.epochs_stage1, c + "epochs_stage1", minimum=0)
        self.epochs_stage2 = check_int(self.epochs_stage2, c + "epochs_stage2", minimum=0)
        if self.epochs_stage1 + self.epochs_stage2 == 0:
            raise ValueError(f"{c}epochs_stage1/epochs_stage2: expected at least one epoch in all, "
                             f"got 0 and 0")
        self.area_min = check_fraction(self.area_min, c + "area_min")
        self.area_max = check_fraction(self.area_max, c + "area_max")
        if self.area_min > self.area_max:
            raise ValueError(f"{c}area_min/area_max: expected 0 < area_min <= area_max < 1, got "
                             f"{self.area_min}, {self.area_max}")
        self.shape = check_choice(self.shape, c + "shape", SHAPES)
        self.lr = check_positive(self.lr, c + "lr")
        if self.lr_stage2 is not None:
            self.lr_stage2 = check_positive(self.lr_stage2, c + "lr_stage2")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"{c}lr_schedule: expected 'constant' or 'cosine', got "
                             f"{self.lr_schedule!r}")
        self.aux_weight = check_nonnegative(self.aux_weight, c + "aux_weight")
        self.pos_weight = check_positive(self.pos_weight, c + "pos_weight")
        self.dilation = check_int(self.dilation, c + "dilation", minimum=0)
        check_run_settings(self, c)

    def identity(self) -> dict:
        """The fields a resumed run must share (not where it runs, nor the epoch counts, which a
        resumed run may extend)."""
        d = dataclasses.asdict(self)
        for k in ("device", "num_threads", "progress", "epochs_stage1", "epochs_stage2"):
            d.pop(k)
        d["attacks"] = list(d["attacks"])
        return d

    @classmethod
    def from_toml(cls, path) -> "PatchZeroTrainConfig":
        """Read a TOML file: top-level keys or a ``[patchzero]`` table with the fields above (and
        ``out_dir``). Errors name the file and the line (syntax) or the field (values); unknown keys
        are listed with the known ones."""
        return config_from_mapping(cls, _config_table(read_toml(path, "config"), path), str(path),
                                   allowed_extra=("out_dir",), label="PatchZero config")


def _config_table(data: dict, path) -> dict:
    table = data.get("patchzero", data)
    if not isinstance(table, dict):
        raise TypeError(f"{path}: [patchzero] must be a table of PatchZeroTrainConfig fields, got "
                        f"{table!r}")
    return table


# ---------------------------------------------------------------------- data, models, attacks
def _load_data(cfg: PatchZeroTrainConfig) -> Tensor:
    """``n_train`` images as uint8 ``N×C×H×W`` (8-bit, so cached attack images and benign ones share
    one quantisation and the detector cannot key on it)."""
    if cfg.dataset == "fashion-mnist":
        from ..data.fashion_mnist import load_fashion_mnist
        try:
            x, _ = load_fashion_mnist("train", limit=cfg.n_train)
        except ValueError as e:
            raise ValueError(f"PatchZeroTrainConfig.n_train: {e}") from None
    else:
        from ..data.folders import ImageFolder, image_paths, read_image
        try:
            paths = [p for p, _ in ImageFolder(cfg.dataset).samples]
        except ValueError:
            try:
                paths = image_paths(cfg.dataset)
            except (ValueError, FileNotFoundError) as e:
                raise type(e)(f"PatchZeroTrainConfig.dataset: {e}") from None
        if cfg.n_train > len(paths):
            raise ValueError(f"PatchZeroTrainConfig.n_train: the folder {cfg.dataset!r} has "
                             f"{len(paths)} images, fewer than n_train={cfg.n_train}")
        g = torch.Generator().manual_seed(cfg.seed)
        pick = torch.randperm(len(paths), generator=g)[:cfg.n_train].sort().values
        x = torch.stack([read_image(paths[int(i)], cfg.image_size) for i in pick])
    return (x * 255).round().to(torch.uint8)


def _new_detector(cfg: PatchZeroTrainConfig, channels: int, size: Tuple[int, int]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):   # the initial weights depend on the seed only
        torch.manual_seed(cfg.seed)
        return _build_detector(cfg, channels, size)


def _build_detector(cfg: PatchZeroTrainConfig, channels: int, size: Tuple[int, int]) -> nn.Module:
    if cfg.dataset == "fashion-mnist":
        from ..data.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
        from ..models.unet import UNet
        return UNet(channels, base=cfg.unet_base, depth=cfg.unet_depth, mean=FASHION_MNIST_MEAN,
                    std=FASHION_MNIST_STD, input_size=size)
    from ..models.segmenter import MobileNetV2Segmenter
    return MobileNetV2Segmenter(pretrained=True, input_size=size)


def _fill(cfg: PatchZeroTrainConfig, channels: int) -> List[float]:
    """PatchZero repaints with the dataset mean (§3.2)."""
    if cfg.dataset == "fashion-mnist":
        from ..data.fashion_mnist import FASHION_MNIST_MEAN
        return list(FASHION_MNIST_MEAN)
    from ..models.base import IMAGENET_MEAN
    return list(IMAGENET_MEAN) if channels == 3 else [sum(IMAGENET_MEAN) / 3]


def _attack(name: str, steps: int, kwargs: dict):
    if name not in _ATTACK_MODULES:
        raise LookupError(f"attack {name!r}: expected one of {sorted(_ATTACK_MODULES)}")
    importlib.import_module(f"patchbench.attacks.{_ATTACK_MODULES[name]}")
    from ..attacks.base import get
    return get(name, steps=steps, **kwargs.get(name, {}))


def _random_masks(x: Tensor, cfg: PatchZeroTrainConfig, g: torch.Generator) -> Tensor:
    """One patch mask per image, each with its own area ~ U(area_min, area_max) and location."""
    from ..patches import Threat
    areas = torch.empty(x.shape[0]).uniform_(cfg.area_min, cfg.area_max, generator=g)
    return torch.cat([Threat(area=float(a), shape=cfg.shape, placement="random")
                      .masks(x[i:i + 1], generator=g) for i, a in enumerate(areas)]).to(x.device)


def attack_batch(target, x: Tensor, y: Tensor, cfg: PatchZeroTrainConfig, steps: int,
                 g: torch.Generator) -> Tuple[Tensor, Tensor]:
    """Patch attack images and their masks: random area/location per image, attack drawn per image
    from ``cfg.attacks`` (§3.2), all run against ``target`` (bare model: DO; ``Defended``: adaptive)."""
    masks = _random_masks(x, cfg, g)
    which = torch.randint(len(cfg.attacks), (x.shape[0],), generator=g).to(x.device)
    x_adv = x.clone()
    for k, name in enumerate(cfg.attacks):
        rows = (which == k).nonzero()[:, 0]
        if rows.numel():
            res = _attack(name, steps, cfg.attack_kwargs).run(target, x[rows], y[rows], masks[rows], generator=g)
            x_adv[rows] = res.x_adv.detach()
    return x_adv, masks


def _atomic_save(obj, path: Path) -> None:
    from .._io import atomic_save
    atomic_save(obj, path)


def stage1_attacks(cfg: PatchZeroTrainConfig, classifier, x: Tensor, y: Tensor, out_dir: Path,
                   chunk: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """DO attack images (uint8) and masks (bool) for every training image, cached in
    ``out_dir/stage1_attacks.pt`` and saved after every chunk, so an interrupted run resumes.

    ``chunk`` (images per attack batch; each chunk draws from its own seed): default 256 for
    classifiers that see at most 64×64 pixels (the Fashion-MNIST detectors were trained so), 32 for
    larger inputs such as the ImageNet MobileNetV2 at 224² — 256 of those in one batch needed
    ~20 GB of activations and was killed by the out-of-memory killer."""
    if chunk is None:
        side = getattr(classifier, "input_size", None)
        chunk = 256 if side is None or max(side) <= 64 else 32
    path = out_dir / "stage1_attacks.pt"
    key = {k: v for k, v in cfg.identity().items() if k not in (
        "lr", "lr_stage2", "lr_schedule", "aux_weight", "pos_weight", "dilation", "unet_base", "unet_depth",
        "batch_size",
        "adaptive_steps")}
    cache = load_cache(path, "stage-1 attack cache")
    if not isinstance(cache, dict) or cache.get("key") != key or not {"done", "x_adv", "mask"} <= set(cache):
        cache = dict(key=key, done=0, x_adv=x.clone(), mask=torch.zeros(x.shape[0], 1, *x.shape[-2:],
                                                                      dtype=torch.bool))
    dev = torch.device(cfg.device)
    n = x.shape[0]
    bar = tqdm(total=n, initial=cache["done"], desc="stage 1: DO attacks", disable=not cfg.progress)
    while cache["done"] < n:
        s = cache["done"]
        e = min(n, s + chunk)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + s)
        xb = x[s:e].to(dev).float() / 255
        x_adv, m = attack_batch(classifier, xb, y[s:e].to(dev), cfg, cfg.attack_steps, g)
        cache["x_adv"][s:e] = (x_adv * 255).round().to(torch.uint8).cpu()
        cache["mask"][s:e] = (m > 0.5).cpu()
        cache["done"] = e
        _atomic_save(cache, path)
        bar.update(e - s)
    bar.close()
    return cache["x_adv"], cache["mask"]


# ---------------------------------------------------------------------- training
def detector_loss(detector: nn.Module, x: Tensor, target: Tensor, cfg: PatchZeroTrainConfig
                  ) -> Tuple[Tensor, Tensor]:
    """PSPNet's loss (§3.2): main per-pixel BCE + ``aux_weight`` × each of the two auxiliary BCEs.
    Returns ``(loss, main logits)``."""
    main, aux = detector.forward_with_aux(x)
    pw = torch.tensor(float(cfg.pos_weight), device=x.device)
    loss = F.binary_cross_entropy_with_logits(main, target, pos_weight=pw)
    for a in aux:
        loss = loss + cfg.aux_weight * F.binary_cross_entropy_with_logits(a, target, pos_weight=pw)
    return loss, main


def epoch_lr(cfg: PatchZeroTrainConfig, stage: int, epoch: int, epochs: int) -> float:
    """Learning rate of ``epoch`` (0-based) of ``stage``, which has ``epochs`` epochs."""
    base = float(cfg.lr if stage == 1 or cfg.lr_stage2 is None else cfg.lr_stage2)
    if cfg.lr_schedule == "constant" or epochs <= 1:
        return base
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * epoch / (epochs - 1))))


def _epoch(stage: int, epoch: int, detector, opt, classifier, x: Tensor, y: Tensor, cache,
           cfg: PatchZeroTrainConfig, fill: List[float]) -> dict:
    """One epoch: every image once as an attack image and once as a benign image (1:1, §3.2)."""
    dev = torch.device(cfg.device)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + stage * 10_007 + epoch)
    n = x.shape[0]
    perm, benign = torch.randperm(n, generator=g), torch.randperm(n, generator=g)
    conf, total, steps = PixelConfusion(), 0.0, 0
    bar = tqdm(range(0, n, cfg.batch_size), desc=f"stage {stage} epoch {epoch + 1}",
               disable=not cfg.progress)
    for s in bar:
        idx, bidx = perm[s:s + cfg.batch_size], benign[s:s + cfg.batch_size]
        if stage == 1:   # cached downstream-only attacks (§3.3, stage 1)
            xa, ma = cache[0][idx].to(dev).float() / 255, cache[1][idx].to(dev).float()
        else:            # online BPDA attack on the current detector (§3.3, stage 2)
            target = Defended(classifier, PatchZero(detector, fill=fill, dilation=cfg.dilation,
                                                    gradient="bpda-sigmoid")).eval()
            xa, ma = attack_batch(target, x[idx].to(dev).float() / 255, y[idx].to(dev), cfg,
                                  cfg.adaptive_steps, g)
        xb = x[bidx].to(dev).float() / 255
        inputs = torch.cat([xa, xb])
        target_mask = torch.cat([ma, torch.zeros_like(ma[:xb.shape[0]])])
        detector.train()
        loss, logits = detector_loss(detector, inputs, target_mask, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        conf.update(logits.detach() > 0, target_mask)
        total += loss.item()
        steps += 1
        bar.set_postfix(loss=f"{total / steps:.4f}", f1=f"{conf.scores()['f1']:.3f}")
    return dict(stage=stage, epoch=epoch + 1, lr=opt.param_groups[0]["lr"], loss=total / max(steps, 1),
                train_f1=conf.scores()["f1"])


def train_patchzero(config: PatchZeroTrainConfig, out_dir, resume: bool = True) -> str:
    """Train a PatchZero detector in two stages (§3.3) and return the final checkpoint's path.

    Args:
        config: a :class:`PatchZeroTrainConfig`.
        out_dir: folder for the attack cache, ``train_state.pt`` (after every epoch),
            ``patchzero_stage1.pt`` (the DO-trained detector) and ``patchzero_final.pt``.
        resume: continue from ``train_state.pt`` when it exists (its config must match). Default True.

    The checkpoints load with ``PatchZero.load(path)``.
    """
    if not isinstance(config, PatchZeroTrainConfig):
        raise TypeError(f"config: expected a PatchZeroTrainConfig, got {type(config).__name__}")
    cfg = dataclasses.replace(config)          # re-validates fields changed after construction
    out = check_path(out_dir, "out_dir", kind="dir", must_exist=False)
    resume = check_bool(resume, "resume")
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    dev = torch.device(cfg.device)
    from ..models import load as load_model
    try:
        classifier = load_model(cfg.classifier, **cfg.classifier_kwargs)
    except TypeError as e:
        raise TypeError(f"PatchZeroTrainConfig.classifier_kwargs: {cfg.classifier_kwargs!r} do not "
                        f"fit {cfg.classifier!r} ({e})") from None
    classifier = classifier.to(dev).eval().requires_grad_(False)
    x = _load_data(cfg)
    out.mkdir(parents=True, exist_ok=True)
    if x.shape[1] != classifier.channels:
        raise ValueError(f"classifier {cfg.classifier!r} takes {classifier.channels}-channel images, "
                         f"the dataset {cfg.dataset!r} has {x.shape[1]}")
    # Untargeted attacks on the classifier's own prediction: works for unlabelled folders too.
    y = torch.cat([classifier.predict(x[i:i + 256].to(dev).float() / 255)[0].cpu()
                   for i in range(0, x.shape[0], 256)])
    fill = _fill(cfg, x.shape[1])
    detector = _new_detector(cfg, x.shape[1], tuple(x.shape[-2:])).to(dev)
    opt = torch.optim.Adam(detector.parameters(), lr=cfg.lr)
    state_path = out / "train_state.pt"
    state = dict(stage=1, epoch=0, history=[])
    if resume and state_path.is_file():
        saved = load_file(state_path, "PatchZero training state", map_location=dev)
        keys = ("config", "detector", "optimizer", "stage", "epoch", "history")
        if not isinstance(saved, dict) or not set(keys) <= set(saved):
            raise ValueError(f"{state_path}: not a PatchZero training state (expected the entries "
                             f"{', '.join(keys)}); use another out_dir or resume=False")
        if saved["config"] != cfg.identity():
            raise ValueError(f"{out} holds a PatchZero run with a different config; use another "
                             f"out_dir or resume=False")
        load_state_dict_checked(detector, saved["detector"], state_path, "the PatchZero detector")
        try:
            opt.load_state_dict(saved["optimizer"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise ValueError(f"{state_path}: the optimizer state does not fit this detector "
                             f"({e}); use another out_dir or resume=False") from e
        state = dict(stage=saved["stage"], epoch=saved["epoch"], history=saved["history"])

    def defense() -> PatchZero:
        return PatchZero(detector, dilation=cfg.dilation, fill=fill)

    for stage, epochs in ((1, cfg.epochs_stage1), (2, cfg.epochs_stage2)):
        start = state["epoch"] if state["stage"] == stage else (0 if state["stage"] < stage else epochs)
        cache = stage1_attacks(cfg, classifier, x, y, out) if stage == 1 and start < epochs else None
        for epoch in range(start, epochs):
            for group in opt.param_groups:
                group["lr"] = epoch_lr(cfg, stage, epoch, epochs)
            state["history"].append(_epoch(stage, epoch, detector, opt, classifier, x, y, cache,
                                           cfg, fill))
            if stage == 1 and epoch == epochs - 1:
                defense().save(out / "patchzero_stage1.pt", config=dataclasses.asdict(cfg),
                               history=state["history"])
            state.update(stage=stage, epoch=epoch + 1)
            _atomic_save(dict(config=cfg.identity(), stage=stage, epoch=epoch + 1,
                              detector=detector.state_dict(), optimizer=opt.state_dict(),
                              history=state["history"]), state_path)
    return defense().save(out / "patchzero_final.pt", config=dataclasses.asdict(cfg),
                          history=state["history"])


def main_train_patchzero(argv: Optional[Sequence[str]] = None) -> int:
    """``patchbench train patchzero --config FILE [--out DIR] [--device D] [--no-resume]``."""
    from ..cli import ArgumentParser, config_file_arg, device_arg, out_dir_arg
    p = ArgumentParser(prog="patchbench train patchzero",
                       description="Two-stage PatchZero detector training (WACV 2023, §3.3)")
    p.add_argument("--config", required=True, type=config_file_arg,
                   help="TOML file with PatchZeroTrainConfig fields")
    p.add_argument("--out", default=None, type=out_dir_arg,
                   help="output folder (default: out_dir in the config, else runs/patchzero)")
    p.add_argument("--device", default=None, type=device_arg,
                   help="override the config's device (cpu, cuda)")
    p.add_argument("--no-resume", action="store_true", help="start over even if out holds a run")
    a = p.parse_args(argv)
    cfg = PatchZeroTrainConfig.from_toml(a.config)
    if a.device:
        cfg = dataclasses.replace(cfg, device=a.device)
    out = a.out
    if out is None:
        out = _config_table(read_toml(a.config, "--config"), a.config).get("out_dir", "runs/patchzero")
        if not isinstance(out, str) or not out:
            raise TypeError(f"{a.config}: out_dir: expected a folder path, got {out!r}")
        check_path(out, f"{a.config}: out_dir", kind="dir", must_exist=False)
    print(train_patchzero(cfg, out, resume=not a.no_resume))
    return 0


# ---------------------------------------------------------------------- evaluation (Tables 1, 2, 5)
def evaluate_patchzero(defense: PatchZero, classifier, x: Tensor, y: Tensor, area: float = 0.05,
                       attack: str = "masked-pgd", steps: int = 100, seed: int = 0,
                       adaptive: Sequence[str] = ("bpda-sigmoid", "bpda-straight-through"),
                       attack_kwargs: Optional[dict] = None) -> dict:
    """PatchZero's evaluation (§4.1 Tables 1–2, §4.4 Table 5) on ``x, y``.

    Accuracy rows: undefended, GT-mask oracle (the attack's true mask repainted with the fill — a
    perfect detector) and PatchZero; under no attack, the downstream-only (DO) attack and each BPDA
    adaptive attack in ``adaptive`` (``Defended(classifier, PatchZero(gradient=mode))``). Every
    attack uses the same seed, hence the same square patch placements. Also: pixel precision /
    recall / F1 of the detector's thresholded output (and F1 / recall of the dilated mask) on DO and
    adaptive images, and the benign false-positive rates of the dilated mask.

    Returns a flat dict of floats, e.g. ``acc_do_patchzero``, ``acc_do_gt_mask``, ``f1_do``,
    ``acc_adaptive_patchzero`` (the worst over ``adaptive``), ``benign_image_fp_rate``.

    Every accuracy is one evaluation cell (:func:`patchbench.evaluate`): the attack runs once per
    attacker (DO on the bare classifier, each BPDA mode on the defended one) and the undefended and
    GT-mask rows score that same ``AttackResult``.
    """
    from ..defenses.oracle import GTMaskOracle
    from ..evaluation import evaluate
    from ..metrics.segmentation import benign_false_positives, pixel_scores
    from ..patches import Threat
    threat = Threat(area=area, shape="square", placement="random")
    atk = _attack(attack, steps, attack_kwargs or {})
    oracle = GTMaskOracle(fill=defense.fill.flatten().tolist())

    def acc(pred: Tensor) -> float:
        return float((pred == y).float().mean())

    def rows(tag: str, res, ev_patchzero) -> dict:
        s = pixel_scores(defense.predict_mask(res.x_adv, dilated=False), res.mask)
        s_dil = pixel_scores(defense.predict_mask(res.x_adv), res.mask)
        score = {d: evaluate(classifier, x, y, atk, d, attack_result=res).pred_adv
                 for d in (None, oracle)}
        return {f"acc_{tag}_undefended": acc(score[None]), f"acc_{tag}_gt_mask": acc(score[oracle]),
                f"acc_{tag}_patchzero": acc(ev_patchzero.pred_adv), f"precision_{tag}": s["precision"],
                f"recall_{tag}": s["recall"], f"f1_{tag}": s["f1"], f"f1_dilated_{tag}": s_dil["f1"],
                f"recall_dilated_{tag}": s_dil["recall"], f"attack_success_{tag}": res.success_rate}

    do = evaluate(classifier, x, y, atk, None, threat, generator=seed)
    do_pz = evaluate(classifier, x, y, atk, defense, attack_result=do.result)
    out = dict(acc_benign_undefended=acc(do.pred_clean), acc_benign_patchzero=acc(do_pz.pred_clean))
    fp = benign_false_positives(defense.predict_mask(x))
    out.update(benign_image_fp_rate=fp["image_fp_rate"], benign_pixel_fp_rate=fp["pixel_fp_rate"])
    out.update(rows("do", do.result, do_pz))
    gradient = defense.gradient
    for mode in adaptive:
        defense.gradient = mode
        try:
            ev = evaluate(classifier, x, y, atk, defense, threat, adaptive=True, generator=seed)
        finally:
            defense.gradient = gradient
        out.update(rows(mode, ev.result, ev))
    if adaptive:
        out["acc_adaptive_patchzero"] = min(out[f"acc_{m}_patchzero"] for m in adaptive)
    return out
