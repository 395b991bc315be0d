"""Training PAIR's generator: masked-autoencoder pretraining, then PAIR's loss on clean images.

Paper: PAIR (ACM MM 2024), §4.3 and §5.1 "Training details".

* Stage 1 — MAE pretraining (He et al. 2022; the paper starts from a pretrained MAE, none exists at
  our image sizes, so we pretrain one): masked reconstruction, the mean squared pixel error on the
  masked tokens plus ``pretrain_visible_weight`` × the error on the visible ones. MAE scores the
  masked tokens only (weight 0); PAIR's output is the decoder's prediction on *every* token
  (eq. 12), so we train both (default weight 1). The stage-1 model is MAEDefense's ("without the
  semantic training"), written to ``mae_pretrained.pt``.
* Stage 2 — PAIR's loss on clean images only (eq. 14): ``L = L_p + β·L_s`` with
  ``L_p = (1/n) Σ_i [1 − SSIM(x_i, x'_i)]`` over the ``n`` tokens (eqs. 15–16: each ``s×s`` patch's
  own mean, variance and covariance, ``c1 = 1e-4``, ``c2 = 9e-4``) and
  ``L_s = 1 − cos(D(x), D(x'))`` (eq. 17), β = 1. ``ssim_window="gaussian"`` is Wang et al.'s
  standard SSIM instead (11×11 Gaussian windows, σ = 1.5), which the authors' code uses.
* D, the semantic discriminator, is frozen (§5.1). For text-to-image search the paper's D is CLIP's
  image encoder: ``semantic_model="dual_encoder_fmnist_scenes"`` (any text-image zoo model) takes
  the dual encoder's image tower, its unit embedding. The default is the real ImageNet MobileNetV2 (a
  general-purpose pretrained network, as CLIP is for the authors), its globally pooled penultimate
  features (1280-d), on the image resized to ``semantic_size`` (default 128: the 64² proxies are
  upsampled 2× towards the scale ImageNet objects have at 224, with a 4×4 final feature map rather
  than 2×2; grey images are repeated to 3 channels).
* Passes (§4.3): "the training of the generator is generated only once" — both terms score the
  first pass (``pixel_loss_pass = semantic_loss_pass = 1``, the paper). The authors' code scores
  the SSIM term on the first pass and the semantic term on the two-pass output
  (``semantic_loss_pass = 2``).
* Table 3's ablations are options of this one trainer: ``mask="none"`` (reconstruction without a
  mask), ``"fixed"`` (one fixed mask), ``"random"``; ``beta=0`` drops the semantic discriminator.
  ``init_checkpoint`` starts from another run's ``mae_pretrained.pt`` (with ``pretrain_epochs=0``).
* Optimiser (§5.1): Adam, batch 32. The paper's 1e-5 fine-tunes a large pretrained MAE; a small one
  trained from scratch uses ``lr_pretrain = 1e-3`` and ``lr = 1e-4``.

A checkpoint is written atomically after every epoch (``out_dir/train_state.pt``); a resumed run
continues at the first unfinished epoch. Every random draw (initial weights, data order, masks)
comes from a generator seeded by ``seed`` and ``(stage, epoch)``, so a resumed run gives the same
weights as an uninterrupted one.

Example::

    cfg = PairTrainConfig(dataset="fmnist-objects", pretrain_epochs=20, epochs=10)
    path = train_pair(cfg, "runs/pair")          # → runs/pair/pair_final.pt (PAIR.load(path))
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._config import config_from_mapping, read_toml
from .._validation import (check_bool, check_choice, check_fraction, check_int, check_nonnegative,
                           check_path, check_positive, check_positive_int, check_seed)
from .checkpoint import check_run_settings
from ..models.mae import (MaskedAutoencoder, _random_token_mask, fixed_token_mask, load_mae,
                          save_mae)

__all__ = ["PairTrainConfig", "SemanticFeatures", "pair_loss", "pretrain_loss", "ssim",
           "train_pair", "main_train_pair"]


@dataclass
class PairTrainConfig:
    """Everything that defines a PAIR training run (also the keys of ``--config FILE.toml``).

    Args:
        dataset: a :func:`patchbench.data.load_dataset` name. Default "fmnist-objects".
        dataset_options: its options (e.g. ``{"size": 64}``). Default {}.
        split: the split to train on. Default "train".
        n_train: training images (the first of the split). Default 5000.
        n_val: held-out images after them, scored every epoch. Default 256.
        patch_size: token side s. Default 8 (8×8 tokens on 64² images).
        mae_options: other :class:`~patchbench.models.mae.MaskedAutoencoder` arguments. Default {}.
        mask: "random" (PAIR), "fixed" or "none" (Table 3). mask_ratio: α. Default 0.5.
        sampling: "bernoulli" (eq. 6) or "exact" (the authors' code). mask_seed: the fixed mask's.
        pretrain_epochs, epochs: epochs of stage 1 and of stage 2. Default 20 and 10.
        batch_size: Default 32 (§5.1). lr_pretrain, lr: Adam's rates per stage. Default 1e-3, 1e-4.
        pretrain_visible_weight: weight of the visible tokens' error in stage 1. Default 1.0.
        beta: β of eq. 14 (0 = no semantic discriminator). Default 1.0.
        ssim_window: "patch" (eqs. 15–16) or "gaussian" (Wang et al.; the authors' code).
        ssim_c1, ssim_c2: SSIM constants. Default 1e-4 and 9e-4 (§5.1).
        pixel_loss_pass, semantic_loss_pass: the pass (1 or 2) each term scores. Default 1 and 1
            (the paper); the authors' code: 1 and 2.
        semantic_model: zoo name of D: a classifier (its ``net.forward_features``) or a
            text-image model (its image tower's embedding; :class:`SemanticFeatures`). Default
            "mobilenet_v2".
        semantic_size: side a classifier D sees. Default 128.
        init_checkpoint: start from this MAE checkpoint instead of a seeded initialisation.
        seed: Default 0. device: "cpu" or "cuda". num_threads: CPU threads (None = leave).
        progress: tqdm bars. Default True.
    """

    dataset: str = "fmnist-objects"
    dataset_options: dict = field(default_factory=dict)
    split: str = "train"
    n_train: int = 5000
    n_val: int = 256
    patch_size: int = 8
    mae_options: dict = field(default_factory=dict)
    mask: str = "random"
    mask_ratio: float = 0.5
    sampling: str = "bernoulli"
    mask_seed: int = 0
    pretrain_epochs: int = 20
    epochs: int = 10
    batch_size: int = 32
    lr_pretrain: float = 1e-3
    lr: float = 1e-4
    pretrain_visible_weight: float = 1.0
    beta: float = 1.0
    ssim_window: str = "patch"
    ssim_c1: float = 1e-4
    ssim_c2: float = 9e-4
    pixel_loss_pass: int = 1
    semantic_loss_pass: int = 1
    semantic_model: str = "mobilenet_v2"
    semantic_size: int = 128
    init_checkpoint: Optional[str] = None
    seed: int = 0
    device: str = "cpu"
    num_threads: Optional[int] = None
    progress: bool = True

    def __post_init__(self):
        c = "PairTrainConfig."
        for k in ("dataset", "split", "semantic_model"):
            if not isinstance(getattr(self, k), str) or not getattr(self, k):
                raise TypeError(f"{c}{k}: expected a name, got {getattr(self, k)!r}")
        for k in ("dataset_options", "mae_options"):
            v = getattr(self, k)
            if not isinstance(v, dict) or not all(isinstance(key, str) for key in v):
                raise TypeError(f"{c}{k}: expected a table (dict) of options, got {v!r}")
        for k in ("n_train", "n_val", "patch_size", "batch_size", "semantic_size"):
            setattr(self, k, check_positive_int(getattr(self, k), c + k))
        for k in ("pretrain_epochs", "epochs"):
            setattr(self, k, check_int(getattr(self, k), c + k, minimum=0))
        if self.pretrain_epochs + self.epochs == 0:
            raise ValueError(f"{c}pretrain_epochs/epochs: expected at least one epoch in all, "
                             f"got 0")
        self.mask = check_choice(self.mask, c + "mask", ("random", "fixed", "none"))
        self.mask_ratio = check_fraction(self.mask_ratio, c + "mask_ratio")
        self.sampling = check_choice(self.sampling, c + "sampling", ("bernoulli", "exact"))
        self.mask_seed = check_seed(self.mask_seed, c + "mask_seed")
        for k in ("lr_pretrain", "lr", "ssim_c1", "ssim_c2"):
            setattr(self, k, check_positive(getattr(self, k), c + k))
        for k in ("pretrain_visible_weight", "beta"):
            setattr(self, k, check_nonnegative(getattr(self, k), c + k))
        self.ssim_window = check_choice(self.ssim_window, c + "ssim_window", ("patch", "gaussian"))
        for k in ("pixel_loss_pass", "semantic_loss_pass"):
            setattr(self, k, check_int(getattr(self, k), c + k, minimum=1, maximum=2))
            if self.mask == "none" and getattr(self, k) == 2:
                raise ValueError(f"{c}{k}: mask='none' has no second pass (no inverted mask); "
                                 f"use 1")
        if self.init_checkpoint is not None:
            check_path(self.init_checkpoint, c + "init_checkpoint", kind="file")
            self.init_checkpoint = str(self.init_checkpoint)
        check_run_settings(self, c)

    def identity(self) -> dict:
        """The fields a resumed run must share (not where it runs, nor the epoch counts, which a
        resumed run may extend)."""
        d = dataclasses.asdict(self)
        for k in ("device", "num_threads", "progress", "pretrain_epochs", "epochs"):
            d.pop(k)
        return d

    def defense_settings(self) -> dict:
        """The PAIR settings a checkpoint of this run is evaluated with (saved in the file)."""
        return dict(mask=self.mask, mask_ratio=self.mask_ratio, sampling=self.sampling,
                    mask_seed=self.mask_seed)

    @classmethod
    def from_toml(cls, path) -> "PairTrainConfig":
        """Read a TOML file: top-level keys or a ``[pair]`` table of the fields above (and
        ``out_dir``); errors name the file and the field."""
        data = read_toml(path, "config")
        table = data.get("pair", data)
        if not isinstance(table, dict):
            raise TypeError(f"{path}: [pair] must be a table of PairTrainConfig fields")
        return config_from_mapping(cls, table, str(path), allowed_extra=("out_dir",),
                                   label="PAIR config")


# ---------------------------------------------------------------------- losses
def ssim(x: Tensor, y: Tensor, window: str = "gaussian", patch_size: Optional[int] = None,
         kernel_size: int = 11, sigma: float = 1.5, c1: float = 1e-4, c2: float = 9e-4) -> Tensor:
    """Mean SSIM of two image batches ``N×C×H×W`` (Wang et al. 2004, PAIR eq. 16), differentiable.

    ``window="gaussian"``: Wang et al.'s standard — local statistics under a ``kernel_size``
    Gaussian window of std ``sigma`` (11, 1.5) at every pixel, the image reflect-padded by
    ``kernel_size // 2`` and the SSIM map averaged over all pixels: torchmetrics'
    ``StructuralSimilarityIndexMeasure`` (``data_range=1``, 1.x) exactly. (Wang et al.'s MATLAB code
    averages the valid region only, and ``pytorch_ssim``, which the authors' code uses,
    zero-pads.) ``window="patch"``: PAIR eqs. 15–16 — each non-overlapping
    ``patch_size×patch_size`` token's own mean, variance and covariance, per channel, then the
    mean over channels and tokens. Variances are population (biased) ones, as in
    torchmetrics. ``c1 = (0.01·L)²``, ``c2 = (0.03·L)²`` for the data range ``L = 1``.
    Returns a 0-d tensor.
    """
    from .._validation import check_images
    x, y = check_images(x, "x"), check_images(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"y: expected the shape of x {tuple(x.shape)}, got {tuple(y.shape)}")
    window = check_choice(window, "window", ("gaussian", "patch"))
    c1, c2 = check_positive(c1, "c1"), check_positive(c2, "c2")
    if window == "patch":
        s = check_positive_int(patch_size, "patch_size") if patch_size is not None else None
        if s is None or x.shape[-2] % s or x.shape[-1] % s:
            raise ValueError(f"patch_size: window='patch' needs a token side dividing the image "
                             f"{x.shape[-2]}×{x.shape[-1]}, got {patch_size!r}")
        return _ssim(x, y, "patch", s, 0, 0.0, c1, c2)
    k = check_positive_int(kernel_size, "kernel_size")
    if k % 2 == 0 or k // 2 >= min(x.shape[-2:]):
        raise ValueError(f"kernel_size: expected an odd size under twice the image side "
                         f"{min(x.shape[-2:])} (reflect padding), "
                         f"got {kernel_size!r}")
    return _ssim(x, y, "gaussian", 0, k, check_positive(sigma, "sigma"), c1, c2)


def _ssim(x: Tensor, y: Tensor, window: str, patch_size: int, kernel_size: int, sigma: float,
          c1: float, c2: float) -> Tensor:
    """:func:`ssim` on validated arguments (inner loop: unchecked)."""
    if window == "patch":
        pool = lambda t: F.avg_pool2d(t, patch_size)             # noqa: E731 - one mean per token
    else:
        r = torch.arange(kernel_size, dtype=x.dtype, device=x.device) - (kernel_size - 1) / 2
        g = torch.exp(-r ** 2 / (2 * sigma ** 2))
        g = g / g.sum()
        c = x.shape[1]
        kernel = (g[:, None] * g[None, :]).expand(c, 1, kernel_size, kernel_size)
        pad = kernel_size // 2
        x, y = (F.pad(t, (pad, pad, pad, pad), mode="reflect") for t in (x, y))
        pool = lambda t: F.conv2d(t, kernel, groups=c)           # noqa: E731
    mx, my = pool(x), pool(y)
    vx = (pool(x * x) - mx ** 2).clamp_min(0)
    vy = (pool(y * y) - my ** 2).clamp_min(0)
    cxy = pool(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * cxy + c2)
    return (num / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))).mean()


class SemanticFeatures(nn.Module):
    """D of eq. 17, frozen. Two kinds of zoo model:

    * a classifier (default ``"mobilenet_v2"``): its pooled penultimate features on ``x`` resized
      to ``size`` (bilinear; grey images repeated to RGB), ImageNet-normalised inside;
    * a text-image model (``patchbench.models.names(kind="text-image")``, e.g. the shipped
      ``"dual_encoder_fmnist_scenes"``): its image tower's unit embedding ``encode_image(x)``,
      at the tower's own input size (``size`` is not used). This is the paper's D for
      text-to-image search (§5.1: CLIP's image encoder) on our proxy.

    ``N×C×H×W`` in [0, 1] → ``N×F``."""

    def __init__(self, name: str = "mobilenet_v2", size: int = 128, device="cpu"):
        super().__init__()
        from ..models import load, zoo
        self.size = check_positive_int(size, "size")
        kind = zoo.get_spec(name).kind if name in zoo.names() else "classifier"
        if kind == "text-image":
            self.kind, self.clf = kind, load(name, device=device).eval().requires_grad_(False)
            return
        if kind != "classifier":
            raise ValueError(f"semantic_model: {name!r} is a {kind} model; D must be a classifier "
                             f"(e.g. 'mobilenet_v2') or a text-image model "
                             f"({', '.join(zoo.names(kind='text-image'))})")
        clf = load(name, device=device)
        if not hasattr(clf.net, "forward_features"):
            raise ValueError(f"semantic_model: {name!r} has no forward_features (pooled features); "
                             f"use 'mobilenet_v2'")
        self.kind, self.clf = kind, clf.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "SemanticFeatures":
        return super().train(False)          # frozen: BatchNorm statistics never move

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1 and self.clf.channels == 3:       # a DualEncoder's channels is 3
            x = x.expand(-1, 3, -1, -1)
        if self.kind == "text-image":
            return self.clf.encode_image(x)
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.size)
        return self.clf.net.forward_features(self.clf.normalize(x))


def pretrain_loss(mae: MaskedAutoencoder, x: Tensor, masked: Optional[Tensor],
                  visible_weight: float = 1.0) -> Tensor:
    """Stage 1: MSE on the masked tokens + ``visible_weight`` × MSE on the visible ones (MAE's loss
    is the first term alone). Inner-loop helper: unchecked."""
    err = (mae.reconstruct(x, masked) - x).pow(2).mean(1, keepdim=True)
    if masked is None:
        return err.mean()
    m = mae.pixel_mask(masked).to(err)
    hidden = (err * m).sum() / m.sum().clamp_min(1)
    shown = (err * (1 - m)).sum() / (1 - m).sum().clamp_min(1)
    return hidden + visible_weight * shown


def pair_loss(mae: MaskedAutoencoder, x: Tensor, masked: Optional[Tensor], cfg: PairTrainConfig,
              semantic: Optional[nn.Module] = None, clean_features: Optional[Tensor] = None
              ) -> tuple:
    """Stage 2, eq. 14: ``(1 − SSIM(x, x')) + β·(1 − cos(D(x), D(x')))`` with ``x'`` the pass
    ``cfg.pixel_loss_pass`` / ``cfg.semantic_loss_pass`` reconstruction. Returns ``(loss, L_p,
    L_s)``; ``L_s`` is 0 when β = 0. Inner-loop helper: unchecked."""
    first = mae.reconstruct(x, masked)
    need_second = 2 in (cfg.pixel_loss_pass, cfg.semantic_loss_pass if cfg.beta else 1)
    second = mae.reconstruct(first, ~masked) if need_second and masked is not None else first
    out = {1: first, 2: second}
    l_p = 1 - _ssim(x, out[cfg.pixel_loss_pass], cfg.ssim_window, mae.patch_size, 11, 1.5,
                    cfg.ssim_c1, cfg.ssim_c2)
    l_s = x.new_zeros(())
    if cfg.beta:
        ref = semantic(x) if clean_features is None else clean_features
        l_s = 1 - F.cosine_similarity(semantic(out[cfg.semantic_loss_pass]), ref, dim=1).mean()
    return l_p + cfg.beta * l_s, l_p, l_s


def _masks(cfg: PairTrainConfig, n: int, num_tokens: int, g: torch.Generator,
           device) -> Optional[Tensor]:
    if cfg.mask == "none":
        return None
    if cfg.mask == "fixed":
        m = fixed_token_mask(num_tokens, cfg.mask_ratio, cfg.mask_seed, cfg.sampling).expand(n, -1)
    else:
        m = _random_token_mask(n, num_tokens, cfg.mask_ratio, g, cfg.sampling)
    return m.to(device)


# ---------------------------------------------------------------------- one epoch, validation
def _run_epoch(stage: int, epoch: int, mae: MaskedAutoencoder, opt, x: Tensor,
               cfg: PairTrainConfig, semantic, feats: Optional[Tensor]) -> dict:
    dev = torch.device(cfg.device)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + stage * 10_007 + epoch)
    perm = torch.randperm(x.shape[0], generator=g)
    totals, steps = {"loss": 0.0, "l_p": 0.0, "l_s": 0.0}, 0
    bar = tqdm(range(0, x.shape[0], cfg.batch_size), disable=not cfg.progress,
               desc=f"{'stage 1: MAE' if stage == 1 else 'stage 2: PAIR'} epoch {epoch + 1}")
    mae.train()
    for s in bar:
        idx = perm[s:s + cfg.batch_size]
        xb = x[idx].to(dev).float() / 255
        masked = _masks(cfg, xb.shape[0], mae.num_tokens, g, dev)
        if stage == 1:
            loss, l_p, l_s = pretrain_loss(mae, xb, masked, cfg.pretrain_visible_weight), None, None
        else:
            loss, l_p, l_s = pair_loss(mae, xb, masked, cfg, semantic,
                                       None if feats is None else feats[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        for k, v in (("loss", loss), ("l_p", l_p), ("l_s", l_s)):
            totals[k] += 0.0 if v is None else float(v.detach())
        bar.set_postfix(loss=f"{totals['loss'] / steps:.4f}")
    out = dict(stage=stage, epoch=epoch + 1, loss=totals["loss"] / max(steps, 1))
    if stage == 2:
        out.update(l_p=totals["l_p"] / max(steps, 1), l_s=totals["l_s"] / max(steps, 1))
    return out


@torch.no_grad()
def validate(mae: MaskedAutoencoder, x: Tensor, cfg: PairTrainConfig, semantic=None,
             batch_size: int = 64) -> dict:
    """Held-out scores with masks seeded by ``cfg.seed``: ``mse_pass1`` (first-pass pixel MSE),
    ``ssim_pass1`` (the pixel term's SSIM), ``mse_pair`` (PAIR's purified output: both passes,
    one for ``mask="none"``) and, with a semantic model, ``cos_pair`` (cosine of D features)."""
    mae.eval()
    g = torch.Generator().manual_seed(cfg.seed + 99_991)
    sums = dict(mse_pass1=0.0, ssim_pass1=0.0, mse_pair=0.0, cos_pair=0.0)
    dev = torch.device(cfg.device)
    for s in range(0, x.shape[0], batch_size):
        xb = x[s:s + batch_size].to(dev).float() / 255
        masked = _masks(cfg, xb.shape[0], mae.num_tokens, g, dev)
        first = mae.reconstruct(xb, masked)
        pure = first if masked is None else mae.reconstruct(first, ~masked)
        k = xb.shape[0]
        sums["mse_pass1"] += float((first - xb).pow(2).mean()) * k
        sums["ssim_pass1"] += float(_ssim(xb, first, cfg.ssim_window, mae.patch_size, 11, 1.5,
                                          cfg.ssim_c1, cfg.ssim_c2)) * k
        sums["mse_pair"] += float((pure - xb).pow(2).mean()) * k
        if semantic is not None:
            sums["cos_pair"] += float(F.cosine_similarity(semantic(pure), semantic(xb)).sum())
    out = {f"val_{k}": v / x.shape[0] for k, v in sums.items()}
    if semantic is None:
        out.pop("val_cos_pair")
    return out


# ---------------------------------------------------------------------- the run
def _load_images(cfg: PairTrainConfig) -> Tensor:
    """``n_train + n_val`` images of the split as uint8 ``N×C×H×W``."""
    from ..data import load_dataset
    try:
        x, _ = load_dataset(cfg.dataset, cfg.split, n=cfg.n_train + cfg.n_val,
                            **cfg.dataset_options)
    except ValueError as e:
        raise ValueError(f"PairTrainConfig.n_train/n_val: {e}") from None
    return (x * 255).round().to(torch.uint8)


def _new_model(cfg: PairTrainConfig, x: Tensor) -> MaskedAutoencoder:
    if cfg.init_checkpoint is not None:
        mae, _, _ = load_mae(cfg.init_checkpoint, device=cfg.device, image_size=tuple(x.shape[-2:]),
                             channels=x.shape[1])
        return mae.train().requires_grad_(True)
    xf = x[:cfg.n_train].float() / 255
    opts = dict(mean=xf.mean((0, 2, 3)).tolist(), std=xf.std((0, 2, 3)).clamp_min(1e-3).tolist(),
                **cfg.mae_options)
    with torch.random.fork_rng(devices=[]):   # the initial weights depend on the seed only
        torch.manual_seed(cfg.seed)
        try:
            mae = MaskedAutoencoder(image_size=tuple(x.shape[-2:]), patch_size=cfg.patch_size,
                                    channels=x.shape[1], **opts)
        except TypeError as e:
            raise TypeError(f"PairTrainConfig.mae_options: {e}") from None
        except ValueError as e:
            raise ValueError(f"PairTrainConfig: {e}") from None
    return mae.to(cfg.device)


@torch.no_grad()
def _clean_features(semantic, x: Tensor, cfg: PairTrainConfig) -> Tensor:
    """D(x) of every training image, once (D is frozen, x is clean: eq. 17's fixed target)."""
    dev = torch.device(cfg.device)
    return torch.cat([semantic(x[s:s + 128].to(dev).float() / 255).cpu()
                      for s in range(0, x.shape[0], 128)])


def train_pair(config: PairTrainConfig, out_dir, resume: bool = True) -> str:
    """Train PAIR's generator (stage 1 MAE pretraining, stage 2 PAIR's loss) and return the path
    of the final checkpoint (``pair_final.pt``; ``mae_pretrained.pt`` after a run without stage 2).

    ``out_dir`` receives ``train_state.pt`` (after every epoch), ``mae_pretrained.pt`` (the stage-1
    model: MAEDefense's) and ``pair_final.pt``; both load with ``PAIR.load`` / ``MAEDefense.load``.
    ``resume``: continue from ``train_state.pt`` when it exists (its config must match).
    """
    from ..models.weights import load_file, load_state_dict_checked
    if not isinstance(config, PairTrainConfig):
        raise TypeError(f"config: expected a PairTrainConfig, got {type(config).__name__}")
    cfg = dataclasses.replace(config)          # re-validates fields changed after construction
    out = check_path(out_dir, "out_dir", kind="dir", must_exist=False)
    resume = check_bool(resume, "resume")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    x_all = _load_images(cfg)
    x, x_val = x_all[:cfg.n_train], x_all[cfg.n_train:]
    mae = _new_model(cfg, x)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "train_state.pt"
    state, saved_opt = dict(stage=1, epoch=0, history=[]), None
    if resume and state_path.is_file():
        saved = load_file(state_path, "PAIR training state", map_location=cfg.device)
        keys = ("config", "model", "optimizer", "stage", "epoch", "history")
        if not isinstance(saved, dict) or not set(keys) <= set(saved):
            raise ValueError(f"{state_path}: not a PAIR training state (expected the entries "
                             f"{', '.join(keys)}); use another out_dir or resume=False")
        if saved["config"] != cfg.identity():
            raise ValueError(f"{out} holds a PAIR run with a different config; use another out_dir "
                             f"or resume=False")
        load_state_dict_checked(mae, saved["model"], state_path, "the masked autoencoder")
        state = dict(stage=saved["stage"], epoch=saved["epoch"], history=list(saved["history"]))
        saved_opt = saved["optimizer"]
    settings = cfg.defense_settings()
    meta = lambda: dict(config=dataclasses.asdict(cfg), history=state["history"])  # noqa: E731
    semantic = None
    for stage, epochs, lr in ((1, cfg.pretrain_epochs, cfg.lr_pretrain), (2, cfg.epochs, cfg.lr)):
        start = (state["epoch"] if state["stage"] == stage
                 else 0 if state["stage"] < stage else epochs)
        if start >= epochs:
            continue
        opt = torch.optim.Adam(mae.parameters(), lr=lr)
        if saved_opt is not None and state["stage"] == stage and start > 0:
            try:
                opt.load_state_dict(saved_opt)
            except (ValueError, KeyError, RuntimeError) as e:
                raise ValueError(f"{state_path}: the optimizer state does not fit ({e}); use "
                                 f"another out_dir or resume=False") from e
        feats = None
        if stage == 2 and cfg.beta > 0 and semantic is None:
            semantic = SemanticFeatures(cfg.semantic_model, cfg.semantic_size, cfg.device)
        if stage == 2 and semantic is not None:
            feats = _clean_features(semantic, x, cfg)
        for epoch in range(start, epochs):
            row = _run_epoch(stage, epoch, mae, opt, x, cfg, semantic, feats)
            row.update(validate(mae, x_val, cfg, semantic if stage == 2 else None))
            state["history"].append(row)
            state.update(stage=stage, epoch=epoch + 1)
            _atomic_save(dict(config=cfg.identity(), stage=stage, epoch=epoch + 1,
                              model=mae.state_dict(), optimizer=opt.state_dict(),
                              history=state["history"]), state_path)
            if stage == 1 and epoch == epochs - 1:
                save_mae(mae, out / "mae_pretrained.pt", settings, stage=1, **meta())
    if cfg.epochs == 0:
        return str(out / "mae_pretrained.pt")
    return save_mae(mae, out / "pair_final.pt", settings, stage=2, **meta())


def _atomic_save(obj, path: Path) -> None:
    from .._io import atomic_save
    atomic_save(obj, path)


# ---------------------------------------------------------------------- command line
_FLAGS = {"dataset": str, "semantic_model": str, "n_train": int, "n_val": int, "patch_size": int,
          "mask": str,
          "mask_ratio": float, "sampling": str, "pretrain_epochs": int, "epochs": int,
          "batch_size": int, "beta": float, "ssim_window": str, "pixel_loss_pass": int,
          "semantic_loss_pass": int, "semantic_size": int, "init_checkpoint": str, "seed": int,
          "num_threads": int}


def main_train_pair(argv: Optional[Sequence[str]] = None) -> int:
    """``patchbench train pair [--config FILE] [--out DIR] [--FIELD VALUE ...] [--no-resume]``:
    flags override the config file's fields (or the defaults without one)."""
    from ..cli import ArgumentParser, config_file_arg, device_arg, out_dir_arg
    p = ArgumentParser(prog="patchbench train pair",
                       description="PAIR generator training: MAE pretraining, then PAIR's loss "
                                   "(ACM MM 2024, §4.3)")
    p.add_argument("--config", default=None, type=config_file_arg,
                   help="TOML file with PairTrainConfig fields (top level or a [pair] table)")
    p.add_argument("--out", default=None, type=out_dir_arg,
                   help="output folder (default: out_dir in the config, else runs/pair)")
    p.add_argument("--device", default=None, type=device_arg, help="cpu or cuda")
    p.add_argument("--no-resume", action="store_true", help="start over even if out holds a run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    for name, kind in _FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                       help=f"PairTrainConfig.{name}")
    a = p.parse_args(argv)
    cfg = PairTrainConfig.from_toml(a.config) if a.config else PairTrainConfig()
    changes = {k: getattr(a, k) for k in _FLAGS if getattr(a, k) is not None}
    if a.device:
        changes["device"] = a.device
    if a.no_progress:
        changes["progress"] = False
    cfg = dataclasses.replace(cfg, **changes)
    out = a.out
    if out is None:
        table = read_toml(a.config, "--config") if a.config else {}
        out = table.get("pair", table).get("out_dir", "runs/pair")
        if not isinstance(out, str) or not out:
            raise TypeError(f"{a.config}: out_dir: expected a folder path, got {out!r}")
    print(train_pair(cfg, out, resume=not a.no_resume))
    return 0
