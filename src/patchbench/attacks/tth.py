"""TTH: one universal patch that makes advertising images come up for a keyword in text-to-image
search (Hu, Chen & Li, "Towards Making a Trojan-horse Attack on Text-to-Image Retrieval", ICASSP
2023; the attack of PAIR's Table 1, ACM MM 2024 §5.1).

Poisoning threat model: the attacker owns a few ad images (10 per keyword in TTH) whose scenes lack
the keyword, pastes one patch on each and gets them indexed in the gallery; users then search with
captions. The loss, the binarised QR-code start, the distortion penalty, Adam with its step schedule
and the retry rule follow the authors' code (fly-dragon211/tth, ``model/TTH.py``
``tth_patch_multi_carrier`` and ``TTH_attack.py``); where we differ is listed in :class:`TTH`.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._validation import (check_bool, check_choice, check_images, check_int, check_nonnegative,
                           check_number, check_positive, check_positive_int, make_generator)
from ..tasks import text_image as T
from ._common import check_eot, frozen
from .base import AttackResult, PatchAttack, register
from .universal import check_threat

#: TTH's patch: 0.35 of the image side (the authors' ``patch_ratio``), at the top-right corner
SIDE, PLACEMENT = 0.35, (1.0, 0.0)
QR_MODULES = 21          # a version-1 QR symbol is 21×21 modules (ISO/IEC 18004 §6.3.1)


def tth_threat(image_hw=(224, 224)):
    """TTH's threat for ``(H, W)`` images: a ``0.35·H × 0.35·W`` box at the top-right corner (the
    authors' mask ``M[:, :int(0.35 W), -int(0.35 H):]``; a square on square images)."""
    from ..patches import Threat
    h, w = int(image_hw[0]), int(image_hw[1])
    shape = "square" if h == w else "rectangle"
    return Threat(area=SIDE * SIDE, shape=shape, placement=PLACEMENT, aspect=w / h)


def qr_like(h: int, w: int, channels: int = 3, generator=None, modules: int = QR_MODULES,
            device=None) -> Tensor:
    """A binarised QR-LIKE image ``C×h×w`` of exact 0/1 values: a ``modules×modules`` grid of
    random dark/light modules (drawn from ``generator``) with the three 7×7 finder squares and
    their light separators (ISO/IEC 18004 §6.3.3) and the timing rows. It looks like a QR code and
    encodes nothing: it is NOT a real QR code. TTH starts from the binarised picture of an exported
    QR code (``torch.where(p > 0.5, 1, 0)``); this is that kind of start without an image file.
    Dark modules are 0, light ones 1; resized to ``h×w`` by nearest neighbour."""
    modules = check_positive_int(modules, "modules", minimum=21)
    g = make_generator(generator)
    grid = (torch.rand(modules, modules, generator=g, device=g.device) < 0.5).float()
    grid[6, :] = (torch.arange(modules, device=g.device) % 2).float()   # timing patterns
    grid[:, 6] = grid[6, :]
    finder = torch.zeros(9, 9, device=g.device) + 1.0                    # separator: light
    finder[1:8, 1:8] = 0.0
    finder[2:7, 2:7] = 1.0
    finder[3:6, 3:6] = 0.0
    m = modules
    grid[:8, :8] = finder[1:, 1:]            # top-left, separator below and right
    grid[:8, m - 8:] = finder[1:, :8]        # top-right, separator below and left
    grid[m - 8:, :8] = finder[:8, 1:]        # bottom-left, separator above and right
    rows = (torch.arange(h, device=g.device) * modules) // h
    cols = (torch.arange(w, device=g.device) * modules) // w
    img = grid[rows][:, cols]
    return img.expand(channels, h, w).clone().to(device or "cpu")


def check_target_embedding(target, dim: Optional[int] = None, name: str = "target") -> Tensor:
    """The target embedding ``e_t``: ``D`` (or ``1×D``) finite floats, returned normalised; or
    ``K×D`` (``K > 1``) targets, one per ad (``TTH(targets="clusters")``), each row normalised."""
    if not isinstance(target, Tensor) or not target.is_floating_point():
        got = f"dtype {target.dtype}" if isinstance(target, Tensor) else type(target).__name__
        raise TypeError(f"{name}: expected the keyword's target embedding e_t (a float tensor of D "
                        f"values, patchbench.tasks.text_image.target_embedding), got {got}")
    if target.dim() == 2 and target.shape[0] == 1:
        target = target[0]
    if target.dim() not in (1, 2) or target.numel() == 0:
        raise ValueError(f"{name}: expected one embedding (a 1-D tensor of D values) or one per ad "
                         f"(K×D), got shape {tuple(target.shape)}")
    if not bool(torch.isfinite(target).all()) or bool((target.norm(dim=-1) == 0).any()):
        raise ValueError(f"{name}: the embedding must be finite and non-zero")
    if dim is not None and target.shape[-1] != dim:
        raise ValueError(f"{name}: the model embeds in {dim} dimensions, e_t has "
                         f"{target.shape[-1]}")
    return torch.nn.functional.normalize(target.detach().float(), dim=-1)


def assign_targets(clean: Tensor, targets: Tensor) -> Tensor:
    """Which target each ad pursues: ``clean`` ``N×D`` embeddings of the clean ads, ``targets``
    ``N×D`` unit rows → a permutation ``N`` (ad ``i`` takes ``targets[perm[i]]``), greedy on the
    cosine (the closest remaining ad–target pair first; ties by index). Inner helper."""
    sim = torch.nn.functional.normalize(clean.float(), dim=1) @ targets.float().T
    n = sim.shape[0]
    perm = torch.full((n,), -1, dtype=torch.long)
    free = torch.ones_like(sim, dtype=torch.bool)
    for _ in range(n):
        flat = int(torch.where(free, sim, torch.full_like(sim, -math.inf)).argmax())
        i, j = divmod(flat, n)
        perm[i] = j
        free[i, :] = False
        free[:, j] = False
    return perm.to(targets.device)


def diverged(value: float, best: float, reached_floor: bool) -> bool:
    """The retry rule: a NaN/Inf loss, or (the authors' "did not converge") a cosine term more than
    twice its running minimum ``best`` while it has never gone below 1e-4 (``reached_floor``).
    Inner helper (floats in, no checks)."""
    if not math.isfinite(value):
        return True
    return not reached_floor and value - best > best


def _encoder(model):
    """``x → N×D`` of the victim: ``encode_image`` of a text-image model, or the module itself (an
    :class:`~patchbench.tasks.text_image.ImageEmbedder`, or ``Defended`` around one)."""
    enc = getattr(model, "encode_image", None)
    if callable(enc):
        return enc
    if callable(model) and (hasattr(model, "embed_dim") or hasattr(model, "bits")):
        return model
    raise TypeError(f"model: expected a text-image model (encode_image) or its image tower behind "
                    f"a defense (Defended(ImageEmbedder(model), defense)), got {type(model).__name__}")


def _embed_dim(model) -> Optional[int]:
    for attr in ("embed_dim", "bits"):
        if getattr(model, attr, None) is not None:
            return int(getattr(model, attr))
    return None


def _check_outputs(z, n: int, dim: int) -> Tensor:
    if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[0] != n or not z.is_floating_point():
        got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"model: expected N×D image embeddings for {n} images, got {got}")
    if z.shape[1] != dim:
        raise ValueError(f"model: its image embeddings have {z.shape[1]} dimensions, the target "
                         f"embedding {dim}")
    return z


@register("tth")
class TTH(PatchAttack):
    r"""TTH universal Trojan-horse patch on a text-to-image search model (Hu et al., ICASSP 2023).

    Threat model: white-box, poisoning; one patch ``C×h×w`` replaces the pixels under its mask on
    every ad image (default :func:`tth_threat`: 0.35 of the side at the top-right corner; any size,
    shape and placement through a ``Threat``, a random placement being redrawn every iteration:
    EOT over placements). From the binarised QR-like start ``p_0`` (:func:`qr_like`), Adam
    (``lr``, the authors' StepLR: × ``lr_gamma`` every ``lr_step`` steps) minimises

    ``L(p) = mean_i (1 − cos(F_i(x_i ⊕ p), e_t)) + λ‖p − p_0‖² / (H·W)``

    over all ad images at once (the patch is clamped to [0, 1] after each step; ``H·W`` is the
    image's size, as the authors divide the full-image patch tensor). Divergence (the authors'
    rule): the cosine term rises above twice its running minimum before it ever went below
    ``1e-4``, or any loss is NaN/Inf; then the run restarts from ``p_0`` with ``lr / 5`` and twice
    the iterations, up to ``retries`` times. The last run's patch is returned.

    Args:
        iterations (int): Adam steps. Default 300.
        lr (float): Adam learning rate. Default 0.01.
        lam (float): weight λ of the distortion penalty. Default 1.
        lr_step (int), lr_gamma (float): StepLR of the authors' code. Defaults 10, 0.95 (gamma 1 =
            a constant rate).
        retries (int): restarts after a divergence. Default 3 (the authors allow 9: 10 trials).
        retry_lr_divisor (float), retry_iterations_factor (int): per restart. Defaults 5, 2.
        batch_size (int or None): ad images per step (None: all, the authors' setting).
        modules (int): modules per side of the QR-like start. Default 21.
        eot: a ``patchbench.patches.EOT`` for the placements; ``None`` uses the threat's own.
        early_stop (bool): stop once the cosine term has not improved by 1e-4 in ``patience``
            steps. Default False (the authors run every step).
        patience (int): see ``early_stop``. Default 30.
        patches (str): ``"universal"`` (TTH: one patch on every ad) or ``"per-ad"`` (a stronger
            attacker, NOT the paper's: each ad its own patch, ``N×C×h×w``, trained jointly with
            the same loss; the penalty is the mean of the patches' ones). Default "universal".
        targets (str): ``"mean"`` (TTH: one e_t) or ``"clusters"`` (a stronger attacker, NOT the
            paper's: ``target`` holds one embedding per ad, the cell draws them with
            :func:`patchbench.tasks.text_image.target_clusters`, and each ad is matched to one by
            :func:`assign_targets`). ``target`` may be ``K×D`` with either value; this option
            tells the evaluation cell which to compute. Default "mean".

    Where we differ from the authors' code: the start is a seeded QR-like grid, not a picture of a
    real QR code; retries default to 3, not 9; the divergence check runs on every step of a run
    (theirs too) but a NaN/Inf is also a divergence; early stopping is optional.

    The stronger attacker ``TTH(patches="per-ad", targets="clusters")`` exists because on our
    small proxy the paper's objective saturates: even an ad embedding equal to e_t would enter the
    top 10 of only ~24 % of the "coat" queries (a query's cosine to the mean of all keyword
    captions is below its 10th-best gallery image's), while ten ads spread over ten caption
    clusters can reach most of them. Measured on the shipped dual encoder, 300-image gallery,
    300 iterations at lr 0.05: irrelevant R@10 "coat" 0.46 (paper's loss) → 0.77, "blue" → 0.78.

    Shape:
        x: ``N×C×H×W`` ad images in [0, 1]; y: ignored (``None``); target: ``D`` embedding e_t;
        patch ``C×h×w``; result.x_adv ``N×C×H×W``; result.mask ``N×1×H×W``.

    Example:
        >>> e_t = pb.tasks.text_image.target_embedding(model, train_captions, "coat")
        >>> res = TTH().run(model, ads, None, tth_threat(ads.shape[-2:]), target=e_t)
    """

    task = "text-image"
    per_image = False

    def __init__(self, iterations: int = 300, lr: float = 0.01, lam: float = 1.0,
                 lr_step: int = 10, lr_gamma: float = 0.95, retries: int = 3,
                 retry_lr_divisor: float = 5.0, retry_iterations_factor: int = 2,
                 batch_size: Optional[int] = None, modules: int = QR_MODULES, eot=None,
                 early_stop: bool = False, patience: int = 30, patches: str = "universal",
                 targets: str = "mean"):
        self.iterations = iterations
        self.patches = patches
        self.targets = targets
        self.lr = lr
        self.lam = lam
        self.lr_step = lr_step
        self.lr_gamma = lr_gamma
        self.retries = retries
        self.retry_lr_divisor = retry_lr_divisor
        self.retry_iterations_factor = retry_iterations_factor
        self.batch_size = batch_size
        self.modules = modules
        self.eot = eot
        self.early_stop = early_stop
        self.patience = patience
        self._check()

    def _check(self) -> None:
        for name in ("iterations", "lr_step", "retry_iterations_factor", "patience"):
            setattr(self, name, check_positive_int(getattr(self, name), name))
        self.retries = check_int(self.retries, "retries", minimum=0)
        self.modules = check_positive_int(self.modules, "modules", minimum=21)
        if self.batch_size is not None:
            self.batch_size = check_positive_int(self.batch_size, "batch_size")
        self.lr = check_positive(self.lr, "lr")
        self.lam = check_nonnegative(self.lam, "lam")
        self.lr_gamma = check_number(self.lr_gamma, "lr_gamma", 0.0, 1.0, low_inclusive=False)
        self.retry_lr_divisor = check_number(self.retry_lr_divisor, "retry_lr_divisor", 1.0)
        self.early_stop = check_bool(self.early_stop, "early_stop")
        self.patches = check_choice(self.patches, "patches", ("universal", "per-ad"))
        self.targets = check_choice(self.targets, "targets", ("mean", "clusters"))
        check_eot(self.eot)

    @property
    def per_ad(self) -> bool:
        return self.patches == "per-ad"

    # ---- checks ------------------------------------------------------------------------------
    def _setup(self, model, x, threat, target, name: str = "x"):
        self._check()
        _encoder(model)
        x = check_images(x, name, channels=getattr(model, "channels", None)).detach()
        threat = tth_threat(tuple(x.shape[-2:])) if threat is None else check_threat(threat, "TTH")
        try:
            hw = tuple(threat.patch_size(tuple(x.shape[-2:])))
        except ValueError as e:
            raise ValueError(f"threat: its patch does not fit {x.shape[-2]}×{x.shape[-1]} images "
                             f"({e})") from e
        if hw[0] > x.shape[-2] or hw[1] > x.shape[-1]:
            raise ValueError(f"threat: a {hw[0]}×{hw[1]} patch is bigger than the "
                             f"{x.shape[-2]}×{x.shape[-1]} images")
        e_t = check_target_embedding(target, _embed_dim(model)).to(x.device)
        return x, threat, e_t, hw

    # ---- training ----------------------------------------------------------------------------
    def _targets_for(self, encode, x: Tensor, e_t: Tensor,
                     clean: Optional[Tensor] = None) -> Tensor:
        """``e_t`` as the loss uses it: one ``D`` target, or ``N×D`` rows in the ads' order (K×D
        targets, K = N, matched to the ads by :func:`assign_targets` on the clean ads; ``clean``:
        their embeddings when the caller has them already)."""
        if e_t.dim() == 1:
            return e_t
        if e_t.shape[0] != x.shape[0]:
            raise ValueError(f"target: {e_t.shape[0]} target embeddings for {x.shape[0]} ad "
                             f"images; give one per ad (K = N) or a single e_t")
        if clean is None:
            with torch.no_grad():
                clean = _check_outputs(encode(x), x.shape[0], e_t.shape[1])
        return e_t[assign_targets(clean, e_t)]

    def fit(self, model, x: Tensor, threat=None, *, target=None, generator=None) -> Tensor:
        """Train the patch on the ad images ``x`` (``N×C×H×W``; an ``(x, y)`` pair is accepted
        and ``y`` ignored) towards ``target`` = e_t; returns it (``C×h×w``; ``N×C×h×w`` for
        ``patches="per-ad"``) and keeps ``self.patch_``, ``self.init_`` (p_0), ``self.history_``
        (total loss per step of the last run), ``self.lr_`` (its learning rate) and
        ``self.trials_`` (runs made)."""
        if isinstance(x, (tuple, list)) and len(x) == 2 and isinstance(x[0], Tensor):
            x = x[0]
        x, threat, e_t, (h, w) = self._setup(model, x, threat, target, "x")
        g = make_generator(generator)
        init = qr_like(h, w, x.shape[1], g, self.modules, device=x.device)
        if self.per_ad:
            init = init.expand(x.shape[0], -1, -1, -1).clone()
        lr, iters = self.lr, self.iterations
        with frozen(model):
            e_rows = self._targets_for(_encoder(model), x, e_t)
            for trial in range(self.retries + 1):
                patch, history, ok = self._run(model, x, threat, e_rows, init, lr, iters, g)
                if ok:
                    break
                if trial < self.retries:
                    lr, iters = lr / self.retry_lr_divisor, iters * self.retry_iterations_factor
        self.patch_, self.init_, self.history_ = patch, init, history
        self.lr_, self.trials_, self.converged_ = lr, trial + 1, ok
        return patch

    def _run(self, model, x, threat, e_t, init, lr, iters, g) -> Tuple[Tensor, List[float], bool]:
        """One Adam run from ``init``. Returns ``(patch, total loss per step, converged)``."""
        encode, hw = _encoder(model), tuple(x.shape[-2:])
        patch = init.clone().requires_grad_(True)
        opt = torch.optim.Adam([patch], lr=lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.lr_step, gamma=self.lr_gamma)
        kw = {} if self.eot is None else {"eot": self.eot}
        n = x.shape[0]
        bs = min(self.batch_size or n, n)
        per_ad, rows = patch.dim() == 4, e_t.dim() == 2
        # λ‖p − p_0‖²/(HW), per patch: per-ad patches average their penalties
        scale = hw[0] * hw[1] * (patch.shape[0] if per_ad else 1)
        history, best, safe, since = [], math.inf, False, 0
        for it in range(iters):
            s = (it * bs) % n
            idx = (torch.arange(s, s + bs) % n).to(x.device)
            xb = x[idx]
            params = threat.sample(xb.shape[0], hw, generator=g, **kw)
            z = encode(threat.paste(xb, patch[idx] if per_ad else patch, params)[0])
            if it == 0:
                _check_outputs(z, xb.shape[0], e_t.shape[-1])
            perf = (1.0 - T.cosine_to(z, e_t[idx] if rows else e_t)).mean()
            loss = perf + self.lam * (patch - init).pow(2).sum() / scale
            value, cos_term = float(loss.detach()), float(perf.detach())
            history.append(value)
            if not math.isfinite(value):
                return patch.detach().clamp(0, 1), history, False
            safe = safe or cos_term < 1e-4
            since = 0 if cos_term < best - 1e-4 else since + 1
            best = min(best, cos_term)
            if diverged(cos_term, best, safe):
                return patch.detach().clamp(0, 1), history, False
            if self.early_stop and since >= self.patience:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                patch.clamp_(0.0, 1.0)
        return patch.detach(), history, True

    # ---- scoring -----------------------------------------------------------------------------
    def apply(self, model, x: Tensor, y, threat, patch: Tensor, *, target=None,
              threshold: Optional[float] = None, generator=None) -> AttackResult:
        """Paste ``patch`` on each ad image (placements drawn from ``threat``) and score it:
        ``success`` = the patched ad's cosine to its target reaches ``threshold`` (the cell passes
        the k-th best cosine of e_t over the clean gallery; without one: higher than the clean
        ad's); ``eligible`` = the clean ad's cosine was below ``threshold`` (all, without one).
        A per-ad patch set ``N×C×h×w`` fits its own ``N`` ads only. ``info``: ``target`` (e_t,
        or the ``N×D`` targets in the ads' order), ``cos`` and ``cos_clean`` per ad,
        ``threshold``, ``placement``."""
        x, threat, e_t, hw = self._setup(model, x, threat, target)
        patch = check_images(patch, "patch", allow_single=True)
        n_patches = patch.shape[0]
        if (n_patches not in (1, x.shape[0]) or patch.shape[1] != x.shape[1]
                or tuple(patch.shape[-2:]) != hw):
            raise ValueError(f"patch: expected a universal patch {x.shape[1]}×{hw[0]}×{hw[1]} (this "
                             f"threat on {x.shape[-2]}×{x.shape[-1]} images) or one per ad image "
                             f"({x.shape[0]}×{x.shape[1]}×{hw[0]}×{hw[1]}), got shape "
                             f"{tuple(patch.shape)}")
        if threshold is not None:
            threshold = check_number(threshold, "threshold", -1.0, 1.0)
        patch = (patch[0] if n_patches == 1 else patch).to(x.device)
        g = make_generator(generator)
        params = threat.sample(x.shape[0], tuple(x.shape[-2:]), generator=g)
        encode = _encoder(model)
        with torch.no_grad(), frozen(model):
            z_clean = _check_outputs(encode(x), x.shape[0], e_t.shape[-1])
            e_rows = self._targets_for(encode, x, e_t, z_clean)
            clean = T.cosine_to(z_clean, e_rows)
            x_adv, mask = threat.paste(x, patch, params)
            z = encode(x_adv)
            cos, ok = self.task_objective(threshold=threshold, clean_cos=clean)(z, None, e_rows)
            cos = cos + 1.0
        eligible = torch.ones_like(ok) if threshold is None else clean < threshold
        return AttackResult(x_adv=x_adv, patch=patch, mask=mask, success=ok,
                            info={"target": e_rows, "cos": cos, "cos_clean": clean,
                                  "threshold": threshold, "placement": params},
                            eligible=eligible)

    def run(self, model, x: Tensor, y=None, threat=None, *, target=None,
            threshold: Optional[float] = None, generator=None) -> AttackResult:
        """Train the patch on the ad images ``x`` (``fit``) and paste it on them (``apply``): TTH
        is universal over the ads of one keyword. ``y`` is ignored."""
        x, threat, _, _ = self._setup(model, x, threat, target)
        g = make_generator(generator)
        patch = self.fit(model, x, threat, target=target, generator=g)
        res = self.apply(model, x, y, threat, patch, target=target, threshold=threshold,
                         generator=g)
        res.history = list(self.history_)
        res.info.update(init=self.init_, lr=self.lr_, trials=self.trials_,
                        converged=self.converged_)
        return res
