"""Training SAC's patch segmenter: pre-training on downstream patches, then self adversarial training.

Paper: Liu et al., "Segment and Complete: Defending Object Detectors against Adversarial Patch Attacks
with Robust Patch Detection", CVPR 2022 ("Patch segmentation", "Self adversarial training"); the
authors' ``train_coco.py`` and ``train_at_distributed_coco.py`` give the settings.

* Stage 1, pre-training: images carrying adversarial patches made against the *downstream* model
  (the authors' pre-generated PGD patches at random locations; here masked PGD and friends against
  the classifier, cached in ``out_dir/stage1_attacks.pt`` by PatchZero's trainer), and clean images
  with an all-zero target: an image is clean with probability ``p_clean = 0.3`` (the authors' ``-r``).
* Stage 2, self adversarial training: each patched image gets a fresh patch at a random location,
  optimised online against the *current segmenter*: masked sign-gradient ascent of the segmenter's
  BCE on the true mask, started from the clean pixels (the authors' ``mask_pgd_attack``: ε = 1,
  no random start). The downstream model is not involved, so the segmenter is model-agnostic.
  ``sat_init="do"`` starts the attack from the image's stage-1 patch instead (a patch made against
  the classifier, then against the segmenter).
  ``sat_target="defended"`` instead optimises the patch against the classifier behind
  ``SAC(gradient="bpda-straight-through")`` (PatchZero's stage-2 attacks) — an adaptive variant.
* Loss: per-pixel BCE (the authors'; PatchZero's auxiliary heads get weight 0). The optimiser is
  Adam (the authors use RMSprop at 1e-4 on 500-px COCO; a small U-Net from scratch trains faster
  with Adam at 1e-3, as PatchZero's trainer does).

Checkpoints are written atomically after every epoch (``out_dir/train_state.pt``,
:mod:`patchbench.training.checkpoint`); a resumed run continues at the first unfinished epoch. Every
random draw comes from a generator seeded by ``(seed, stage, epoch)``, so a resumed run draws the same
numbers. The shipped file is ``out_dir/sac_final.pt`` (``SAC.load``); ``sac_stage1.pt`` is the
pre-trained segmenter.

Example::

    cfg = SACTrainConfig(n_train=2000, epochs_stage1=6, epochs_stage2=4)
    path = train_sac(cfg, "runs/sac")                  # → runs/sac/sac_final.pt
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._config import config_from_mapping, read_toml
from .._validation import (check_bool, check_choice, check_fraction, check_path, check_positive,
                           check_positive_int, trusted_inputs)
from ..defenses.base import Defended
from ..defenses.sac import SAC, sizes_for_area
from ..metrics.segmentation import PixelConfusion
from . import patchzero as pzt
from .checkpoint import load_checkpoint, save_checkpoint

_SAT_TARGETS = ("segmenter", "defended")
_SAT_INITS = ("clean", "do")
#: PatchZeroTrainConfig fields SACTrainConfig shares, with the same meaning
_SHARED = ("dataset", "classifier", "classifier_kwargs", "n_train", "image_size", "epochs_stage1",
           "epochs_stage2", "batch_size", "attacks", "attack_steps", "attack_kwargs", "area_min",
           "area_max", "shape", "lr", "lr_stage2", "lr_schedule", "pos_weight", "unet_base",
           "unet_depth", "seed", "device", "num_threads", "progress")


@dataclass
class SACTrainConfig:
    """Everything that defines a SAC segmenter training run (also the TOML keys of ``--config``).

    Args:
        dataset, classifier, classifier_kwargs, n_train, image_size: as
            :class:`~patchbench.training.patchzero.PatchZeroTrainConfig` (Fashion-MNIST → U-Net).
        epochs_stage1: pre-training epochs on downstream patches. Default 6.
        epochs_stage2: self adversarial training epochs. Default 4.
        batch_size: images per step. Default 32.
        p_clean: probability that a training image is left clean (target all zero). Default 0.3.
        attacks, attack_steps, attack_kwargs: the stage-1 attacks on the classifier (cached).
            Default masked PGD (the authors' PGD), 20 steps.
        sat_target: ``"segmenter"`` (the paper) or ``"defended"`` (module docstring).
        sat_init: where the ``"segmenter"`` attack starts: ``"clean"`` (the authors': the clean
            pixels) or ``"do"`` (the image's cached stage-1 patch, made against the classifier).
        sat_steps: iterations of each stage-2 attack. Default 10.
        sat_step: sign-step size of the ``"segmenter"`` attack. Default 0.1 (10 steps span [0, 1]).
        area_min, area_max: patch area range (fraction of the image), uniform per image; random
            location. Default 3–8 %.
        shape: patch shape. Default "square".
        patch_area: the threat area whose square sides the saved defense completes by default
            (``from_context`` replaces them with the experiment's). Default 0.05.
        lr, lr_stage2, lr_schedule: Adam's learning rate (stage 2: ``lr_stage2``, None = ``lr``),
            "constant" or "cosine" within each stage. Default 1e-3, None, "constant".
        pos_weight: BCE weight of patch pixels. Default 1.0 (the authors' plain BCE).
        unet_base, unet_depth: U-Net width and down-samplings. Default 16 and 2.
        seed, device, num_threads, progress: as PatchZero's.
    """

    dataset: str = "fashion-mnist"
    classifier: str = "fmnist_cnn_small"
    classifier_kwargs: dict = field(default_factory=dict)
    n_train: int = 2000
    image_size: int = 224
    epochs_stage1: int = 6
    epochs_stage2: int = 4
    batch_size: int = 32
    p_clean: float = 0.3
    attacks: Sequence[str] = ("masked-pgd",)
    attack_steps: int = 20
    attack_kwargs: dict = field(default_factory=dict)
    sat_target: str = "segmenter"
    sat_init: str = "clean"
    sat_steps: int = 10
    sat_step: float = 0.1
    area_min: float = 0.03
    area_max: float = 0.08
    shape: str = "square"
    patch_area: float = 0.05
    lr: float = 1e-3
    lr_stage2: Optional[float] = None
    lr_schedule: str = "constant"
    pos_weight: float = 1.0
    unet_base: int = 16
    unet_depth: int = 2
    seed: int = 0
    device: str = "cpu"
    num_threads: Optional[int] = None
    progress: bool = True

    def __post_init__(self):
        c = "SACTrainConfig."
        self.p_clean = check_fraction(self.p_clean, c + "p_clean", 0.0, 1.0, inclusive=True)
        if self.p_clean == 1.0:
            raise ValueError(f"{c}p_clean: expected a value in [0, 1), got 1.0 (no patched image "
                             f"would ever be seen)")
        self.sat_target = check_choice(self.sat_target, c + "sat_target", _SAT_TARGETS)
        self.sat_init = check_choice(self.sat_init, c + "sat_init", _SAT_INITS)
        self.sat_steps = check_positive_int(self.sat_steps, c + "sat_steps")
        self.sat_step = check_positive(self.sat_step, c + "sat_step")
        self.patch_area = check_fraction(self.patch_area, c + "patch_area")
        pz = self.patchzero_config()
        for k in _SHARED:                     # normalised values (e.g. attacks as a tuple)
            setattr(self, k, getattr(pz, k))

    def patchzero_config(self) -> pzt.PatchZeroTrainConfig:
        """The PatchZero training config whose data, attacks and detector this run shares (its
        errors are re-raised naming ``SACTrainConfig`` fields)."""
        try:
            return pzt.PatchZeroTrainConfig(**{k: getattr(self, k) for k in _SHARED},
                                            adaptive_steps=self.sat_steps, aux_weight=0.0,
                                            dilation=0)
        except (TypeError, ValueError, LookupError) as e:
            raise type(e)(str(e).replace("PatchZeroTrainConfig.", "SACTrainConfig.")) from None

    def identity(self) -> dict:
        """The fields a resumed run must share (not where it runs, nor the epoch counts)."""
        d = dataclasses.asdict(self)
        for k in ("device", "num_threads", "progress", "epochs_stage1", "epochs_stage2"):
            d.pop(k)
        d["attacks"] = list(d["attacks"])
        return d

    @classmethod
    def from_toml(cls, path) -> "SACTrainConfig":
        """Read a TOML file: top-level keys or a ``[sac]`` table with the fields above (and
        ``out_dir``); errors name the file and the field, unknown keys are listed."""
        return config_from_mapping(cls, _config_table(read_toml(path, "config"), path), str(path),
                                   allowed_extra=("out_dir",), label="SAC config")


def _config_table(data: dict, path) -> dict:
    table = data.get("sac", data)
    if not isinstance(table, dict):
        raise TypeError(f"{path}: [sac] must be a table of SACTrainConfig fields, got {table!r}")
    return table


# ---------------------------------------------------------------------- self adversarial patches
def segmenter_attack(detector: nn.Module, x: Tensor, mask: Tensor, steps: int, step: float
                     ) -> Tensor:
    """Patch pixels (``mask`` = 1) pushed to make ``detector`` miss them: ``steps`` sign steps of
    ``step`` up the BCE of its logits against ``mask``, starting from ``x`` (the clean pixels in the
    authors' training), kept in [0, 1] (their ``mask_pgd_attack`` with ε = 1). Inner helper: inputs
    are not validated."""
    was_training = detector.training
    detector.eval()
    x_adv = x.detach().clone()
    try:
        with trusted_inputs():          # iterates stay in [0, 1]: skip the per-call range scan
            for _ in range(steps):
                x_adv.requires_grad_(True)
                loss = F.binary_cross_entropy_with_logits(detector(x_adv), mask)
                (grad,) = torch.autograd.grad(loss, x_adv)
                x_adv = (x_adv.detach() + step * grad.sign() * mask).clamp_(0, 1)
    finally:
        detector.train(was_training)
    return x_adv.detach()


def training_sizes(cfg: SACTrainConfig, image_size: Tuple[int, int]) -> Tuple[int, ...]:
    """Every square side between the smallest and the largest training patch (largest first)."""
    lo = min(sizes_for_area(cfg.area_min, image_size))
    hi = max(sizes_for_area(cfg.area_max, image_size))
    return tuple(range(hi, lo - 1, -1))


def _uses_cache(cfg: SACTrainConfig, stage: int) -> bool:
    """Whether ``stage`` reads the cached stage-1 (downstream) patches."""
    return stage == 1 or (cfg.sat_target == "segmenter" and cfg.sat_init == "do")


def _patched(stage: int, rows: Tensor, detector, classifier, x: Tensor, y: Tensor, cache,
             cfg: SACTrainConfig, pz, g: torch.Generator) -> Tuple[Tensor, Tensor]:
    """Patched images and their masks for training images ``rows``."""
    dev = torch.device(cfg.device)
    if _uses_cache(cfg, stage):
        xa, masks = cache[0][rows].to(dev).float() / 255, cache[1][rows].to(dev).float()
        if stage == 1:
            return xa, masks
    elif cfg.sat_target == "segmenter":
        xa = x[rows].to(dev).float() / 255
        masks = pzt._random_masks(xa, pz, g)
    else:
        xb = x[rows].to(dev).float() / 255
        sac = SAC(detector, square_sizes=training_sizes(cfg, tuple(xb.shape[-2:])))
        return pzt.attack_batch(Defended(classifier, sac).eval(), xb, y[rows].to(dev), pz,
                                cfg.sat_steps, g)
    return segmenter_attack(detector, xa, masks, cfg.sat_steps, cfg.sat_step), masks


def _epoch(stage: int, epoch: int, detector, opt, classifier, x: Tensor, y: Tensor, cache,
           cfg: SACTrainConfig, pz) -> dict:
    """One epoch over the training images; each is clean with probability ``p_clean``."""
    dev = torch.device(cfg.device)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + stage * 10_007 + epoch)
    perm = torch.randperm(x.shape[0], generator=g)
    conf, total, steps = PixelConfusion(), 0.0, 0
    bar = tqdm(range(0, x.shape[0], cfg.batch_size), desc=f"stage {stage} epoch {epoch + 1}",
               disable=not cfg.progress)
    for s in bar:
        idx = perm[s:s + cfg.batch_size]
        patched = torch.rand(idx.numel(), generator=g) >= cfg.p_clean
        inputs = x[idx].to(dev).float() / 255
        target = torch.zeros_like(inputs[:, :1])
        if patched.any():
            xa, ma = _patched(stage, idx[patched], detector, classifier, x, y, cache, cfg, pz, g)
            rows = patched.nonzero()[:, 0].to(dev)
            inputs[rows], target[rows] = xa, ma
        detector.train()
        loss, logits = pzt.detector_loss(detector, inputs, target, pz)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        conf.update(logits.detach() > 0, target)
        total, steps = total + loss.item(), steps + 1
        bar.set_postfix(loss=f"{total / steps:.4f}", f1=f"{conf.scores()['f1']:.3f}")
    sc = conf.scores()
    return dict(stage=stage, epoch=epoch + 1, lr=opt.param_groups[0]["lr"], loss=total / steps,
                train_f1=sc["f1"], train_iou=_iou(sc))


def _iou(scores: dict) -> float:
    denom = scores["tp"] + scores["fp"] + scores["fn"]
    return scores["tp"] / denom if denom else 0.0


def _setup(cfg: SACTrainConfig, pz) -> Tuple[nn.Module, Tensor, Tensor]:
    """The frozen classifier, the uint8 training images and the classifier's labels for them."""
    from .._io import predict_batched
    from ..models import load as load_model
    try:
        classifier = load_model(cfg.classifier, **cfg.classifier_kwargs)
    except TypeError as e:
        raise TypeError(f"SACTrainConfig.classifier_kwargs: {cfg.classifier_kwargs!r} do not fit "
                        f"{cfg.classifier!r} ({e})") from None
    classifier = classifier.to(cfg.device).eval().requires_grad_(False)
    x = pzt._load_data(pz)
    if x.shape[1] != classifier.channels:
        raise ValueError(f"SACTrainConfig.classifier: {cfg.classifier!r} takes "
                         f"{classifier.channels}-channel images, the dataset {cfg.dataset!r} has "
                         f"{x.shape[1]}")
    y = predict_batched(lambda xb: classifier(xb.to(cfg.device).float() / 255), x,
                        reduce=lambda z: z.argmax(-1))
    return classifier, x, y


def train_sac(config: SACTrainConfig, out_dir, resume: bool = True) -> str:
    """Train a SAC segmenter (pre-training, then self adversarial training) and return the path of
    ``out_dir/sac_final.pt``, which loads with ``SAC.load(path)``.

    Args:
        config: a :class:`SACTrainConfig`.
        out_dir: folder for the stage-1 attack cache, ``train_state.pt`` (after every epoch),
            ``sac_stage1.pt`` (the pre-trained segmenter) and ``sac_final.pt``.
        resume: continue from ``train_state.pt`` when it exists (its config must match). Default True.
    """
    if not isinstance(config, SACTrainConfig):
        raise TypeError(f"config: expected a SACTrainConfig, got {type(config).__name__}")
    cfg = dataclasses.replace(config)          # re-validates fields changed after construction
    out = check_path(out_dir, "out_dir", kind="dir", must_exist=False)
    resume = check_bool(resume, "resume")
    pz = cfg.patchzero_config()
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    classifier, x, y = _setup(cfg, pz)
    out.mkdir(parents=True, exist_ok=True)
    hw = tuple(x.shape[-2:])
    detector = pzt._new_detector(pz, x.shape[1], hw).to(cfg.device)
    opt = torch.optim.Adam(detector.parameters(), lr=cfg.lr)
    state_path = out / "train_state.pt"
    stage, done, history = 1, 0, []
    if resume and state_path.is_file():
        saved = load_checkpoint(state_path, model=detector, optimizer=opt, restore_rng=False,
                                map_location=cfg.device)
        if saved["config"] != cfg.identity():
            raise ValueError(f"{out} holds a SAC run with a different config; use another out_dir "
                             f"or resume=False")
        stage, done, history = saved["extra"]["stage"], saved["epoch"], saved["extra"]["history"]

    def defense() -> SAC:
        return SAC(detector, square_sizes=sizes_for_area(cfg.patch_area, hw)).eval()

    for st, epochs in ((1, cfg.epochs_stage1), (2, cfg.epochs_stage2)):
        start = done if stage == st else (0 if stage < st else epochs)
        cache = (pzt.stage1_attacks(pz, classifier, x, y, out)
                 if _uses_cache(cfg, st) and start < epochs else None)
        for epoch in range(start, epochs):
            for group in opt.param_groups:
                group["lr"] = pzt.epoch_lr(pz, st, epoch, epochs)
            history.append(_epoch(st, epoch, detector, opt, classifier, x, y, cache, cfg, pz))
            if st == 1 and epoch == epochs - 1:
                defense().save(out / "sac_stage1.pt", config=dataclasses.asdict(cfg),
                               history=history)
            save_checkpoint(state_path, model=detector, optimizer=opt, epoch=epoch + 1,
                            step=len(history), config=cfg.identity(),
                            extra=dict(stage=st, history=history))
            stage, done = st, epoch + 1
    return defense().save(out / "sac_final.pt", config=dataclasses.asdict(cfg), history=history)


def main_train_sac(argv: Optional[Sequence[str]] = None) -> int:
    """``patchbench train sac --config FILE [--out DIR] [--device D] [--no-resume]``."""
    from ..cli import ArgumentParser, config_file_arg, device_arg, out_dir_arg
    p = ArgumentParser(prog="patchbench train sac",
                       description="SAC patch segmenter: pre-training, then self adversarial "
                                   "training (CVPR 2022)")
    p.add_argument("--config", required=True, type=config_file_arg,
                   help="TOML file with SACTrainConfig fields (top level or a [sac] table)")
    p.add_argument("--out", default=None, type=out_dir_arg,
                   help="output folder (default: out_dir in the config, else runs/sac)")
    p.add_argument("--device", default=None, type=device_arg, help="override the config's device")
    p.add_argument("--no-resume", action="store_true", help="start over even if out holds a run")
    a = p.parse_args(argv)
    cfg = SACTrainConfig.from_toml(a.config)
    if a.device:
        cfg = dataclasses.replace(cfg, device=a.device)
    out = a.out or _config_table(read_toml(a.config, "--config"), a.config).get("out_dir", "runs/sac")
    out = check_path(out, f"{a.config}: out_dir", kind="dir", must_exist=False)
    print(train_sac(cfg, out, resume=not a.no_resume))
    return 0


# ---------------------------------------------------------------------- evaluation
def evaluate_segmenter(defense: SAC, x: Tensor, classifier=None, area: float = 0.05,
                       seed: int = 0, sat_steps: int = 10, sat_step: float = 0.1) -> dict:
    """Pixel IoU / recall of SAC's masks on square patches of ``area`` at random locations.

    Patches: ``"noise"`` (uniform random pixels), ``"sat"`` (the segmenter attack of stage 2,
    against ``defense``'s own segmenter) and, with a ``classifier``, ``"do"`` (masked PGD against the
    classifier, 20 steps). For each: ``iou_raw_K`` / ``recall_raw_K`` of the thresholded segmenter
    mask and ``iou_K`` / ``recall_K`` of the completed mask; plus ``clean_fp_rate``, the fraction of
    clean images where SAC removes anything. Every kind uses the same placements (``seed``).
    """
    from .._validation import check_images
    from ..patches import Threat
    x = check_images(x, "x")
    threat = Threat(area=area, shape="square", placement="random")
    masks = threat.masks(x, generator=seed)
    g = torch.Generator().manual_seed(seed)
    kinds = {"noise": x * (1 - masks) + torch.rand(x.shape, generator=g).to(x) * masks,
             "sat": segmenter_attack(defense.detector, x, masks, sat_steps, sat_step)}
    if classifier is not None:
        res = pzt._attack("masked-pgd", 20, {}).run(classifier, x, classifier.predict(x)[0], masks,
                                                     generator=seed)
        kinds["do"] = res.x_adv.detach()
    out = dict(clean_fp_rate=float((defense.predict_mask(x).flatten(1).sum(1) > 0).float().mean()))
    for k, xk in kinds.items():
        for tag, completed in (("raw_", False), ("", True)):
            sc = PixelConfusion().update(defense.predict_mask(xk, completed=completed), masks).scores()
            out[f"iou_{tag}{k}"], out[f"recall_{tag}{k}"] = _iou(sc), sc["recall"]
    return out
