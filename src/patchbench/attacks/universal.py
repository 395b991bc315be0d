"""Universal adversarial patch (Brown et al. 2017) trained with Expectation over Transformation.

Brown, Mané, Roy, Abadi, Gilmer, "Adversarial Patch", arXiv:1712.09665 (2017), eq. (1)-(2): one
patch ``p`` maximises ``E_{x∼X, t∼T, l∼L} log Pr(ŷ | A(p, x, l, t))`` over images, placements and
transformations (Athalye et al. 2018 EOT); we apply it with the shared ``Threat.paste`` so the same
patch means the same thing everywhere in patchbench.
"""
from __future__ import annotations

import numbers
from typing import Iterable, Iterator, Optional, Tuple

import torch
from torch import Tensor

from .._validation import (check_choice, check_images, check_labels, check_nonnegative,
                           check_positive, make_generator)
from ._common import (check_common, check_eot, check_model, check_target_differs, clean_predictions,
                      eligible, frozen, prepare, uniform)
from .base import AttackResult, PatchAttack, register

OPTIMIZERS = ("adam", "sign")
UNIVERSAL_LOSSES = ("ce", "logit-margin")


def universal_target(target, num_classes) -> Optional[int]:
    """A universal patch has one target class: ``None``, an int, or ``N`` equal class indices."""
    if target is None:
        return None
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        t = check_labels(torch.tensor([int(target)]), 1, num_classes, name="target")
    else:
        if isinstance(target, (str, bytes)):
            raise TypeError(f"target: expected a class index or N equal class indices, got {target!r}")
        try:
            n = torch.as_tensor(target).numel()
        except Exception as e:  # noqa: BLE001 - anything torch cannot read is not a target
            raise TypeError(f"target: expected a class index or N equal class indices, got "
                            f"{type(target).__name__}") from e
        t = check_labels(target, n, num_classes, name="target")
        if t.numel() == 0 or bool((t != t[0]).any()):
            raise ValueError(f"target: a universal patch has one target class; got {t.unique().tolist()}")
    return int(t[0])


def check_threat(threat, who: str = "UniversalPatch"):
    """A universal patch needs a placement distribution: a :class:`patchbench.patches.Threat`."""
    if isinstance(threat, Tensor):
        raise TypeError(f"threat: {who} needs a patchbench.patches.Threat (it draws a placement for "
                        f"its one C×h×w patch on every image), got a mask tensor; for a fixed region "
                        f"per image use a per-image attack such as MaskedPGD or LaVAN with that mask")
    if not all(hasattr(threat, a) for a in ("patch_size", "sample", "paste")):
        raise TypeError(f"threat: {who} needs a patchbench.patches.Threat, got {type(threat).__name__}")
    return threat


def check_printable_colors(colors, name: str = "printable_colors") -> Optional[Tensor]:
    """``None`` or a ``K×C`` float palette with values in [0, 1]."""
    if colors is None:
        return None
    if not isinstance(colors, Tensor) or colors.dim() != 2 or colors.shape[0] == 0 \
            or not colors.is_floating_point():
        got = tuple(colors.shape) if isinstance(colors, Tensor) else type(colors).__name__
        raise TypeError(f"{name}: expected a K×C float tensor of colours in [0, 1], got {got}")
    if not bool(torch.isfinite(colors).all()) or float(colors.min()) < 0 or float(colors.max()) > 1:
        raise ValueError(f"{name}: colours must lie in [0, 1]")
    return colors


def _is_pair(data) -> bool:
    """``(x, y)`` with ``x`` an image batch (as opposed to an iterable of such pairs)."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor) \
        and data[0].dim() == 4


def iterate_batches(data, batch_size: int, generator: torch.Generator) -> Iterator[Tuple[Tensor, Tensor]]:
    """``(x, y)`` tensors → shuffled mini-batches; any other iterable of ``(x, y)`` is passed through.

    Inner helper: the pair's lengths are not checked here (:meth:`UniversalPatch.fit` does it)."""
    if _is_pair(data) and isinstance(data[1], Tensor):
        x, y = data
        order = torch.randperm(x.shape[0], generator=generator, device=generator.device).to(x.device)
        for i in range(0, x.shape[0], batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]
        return
    if not isinstance(data, Iterable):
        raise TypeError(f"data: expected (x, y) tensors or an iterable of (x, y) batches, got "
                        f"{type(data).__name__}")
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"data: each batch must be an (x, y) pair, got {type(batch).__name__}")
        yield batch[0], batch[1]


@register("universal-patch")
class UniversalPatch(PatchAttack):
    r"""Universal adversarial patch with EOT (Brown et al. 2017).

    Threat model: white-box, physical; one patch ``C×h×w`` (size from ``threat.patch_size``) is pasted
    on every image at a random placement (and random EOT transform) and fully replaces the pixels
    under its shape mask. Targeted: maximise ``log p(target)`` (Brown et al. eq. (2)); untargeted:
    maximise the cross-entropy of the true label. Optional total-variation and non-printability
    (Sharif et al. 2016) penalties. ``fit`` trains on a data stream, ``apply`` evaluates a patch on
    (held-out) images, ``run`` does both on the same images.

    Args:
        epochs (int): passes over the data. Default 10.
        batch_size (int): mini-batch size when ``data`` is a pair of tensors. Default 32.
        lr (float): learning rate (Adam) or step size (sign-SGD). Default 0.05.
        optimizer (str): ``"adam"`` (default) or ``"sign"`` (signed-gradient ascent).
        loss (str): ``"ce"`` (default, Brown et al.) or ``"logit-margin"`` (LaVAN).
        eot: a ``patchbench.patches.EOT`` for training transforms; ``None`` uses the threat's own.
        tv_weight (float): weight of ``patches.tv_loss``. Default 0.
        nps_weight (float): weight of ``patches.nps_loss``. Default 0.
        printable_colors: ``K×3`` palette for the NPS term (``None``: the patches default).

    Shape:
        x: ``N×C×H×W`` in [0, 1]; y: ``N``; target: int or ``N`` equal indices; patch ``C×h×w``;
        result.x_adv ``N×C×H×W``; result.mask ``N×1×H×W``.

    Example:
        >>> up = UniversalPatch(epochs=5); patch = up.fit(model, (x_train, y_train), threat, target=3)
        >>> up.apply(model, x_test, y_test, threat, patch, target=3).success_rate
    """

    per_image = False

    def __init__(self, epochs: int = 10, batch_size: int = 32, lr: float = 0.05, optimizer: str = "adam",
                 loss: str = "ce", eot=None, tv_weight: float = 0.0, nps_weight: float = 0.0,
                 printable_colors: Optional[Tensor] = None):
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.loss = loss
        self.eot = eot
        self.tv_weight = tv_weight
        self.nps_weight = nps_weight
        self.printable_colors = printable_colors
        self._check()

    def _check(self) -> None:
        """Validate the hyper-parameters (at construction, and again in ``fit``/``run``)."""
        check_common(self, "epochs", "batch_size")
        self.lr = check_positive(self.lr, "lr")
        check_choice(self.optimizer, "optimizer", OPTIMIZERS)
        check_choice(self.loss, "loss", UNIVERSAL_LOSSES)
        check_eot(self.eot)
        self.tv_weight = check_nonnegative(self.tv_weight, "tv_weight")
        self.nps_weight = check_nonnegative(self.nps_weight, "nps_weight")
        check_printable_colors(self.printable_colors)

    def _penalty(self, patch: Tensor) -> Tensor:
        from ..patches import nps_loss, tv_loss   # lazy: geometry is only needed when training
        pen = patch.new_zeros(())
        if self.tv_weight:
            pen = pen + self.tv_weight * tv_loss(patch)
        if self.nps_weight:
            pen = pen + self.nps_weight * nps_loss(patch, self.printable_colors)
        return pen

    def fit(self, model, data, threat, *, target=None, generator=None) -> Tensor:
        """Train the patch on ``data`` ((x, y) tensors or an iterable of (x, y) batches, re-iterable
        once per epoch); returns it (``C×h×w``) and keeps ``self.patch_`` / ``self.history_``
        (mean objective per epoch). Images whose label is the target may be part of the training
        data (``apply``/``run``, which score success, refuse them)."""
        self._check()
        check_model(model)
        check_threat(threat)
        g = make_generator(generator)
        num_classes = getattr(model, "num_classes", None)
        tgt = universal_target(target, num_classes)
        if _is_pair(data):
            xs = check_images(data[0], "data: images", channels=getattr(model, "channels", None))
            data = (xs, check_labels(data[1], xs.shape[0], num_classes, name="data: labels")
                    .to(xs.device))
        patch, opt, history = None, None, []
        with frozen(model):
            for epoch in range(int(self.epochs)):
                total, count = None, 0
                for xb, yb in iterate_batches(data, int(self.batch_size), g):
                    xb, yb, _, _ = prepare(model, xb, yb, None, g)
                    if patch is None:
                        patch, opt = self._init_patch(xb, threat, g)
                    obj = self._step(model, xb, yb, tgt, threat, patch, opt, g)
                    total = obj * xb.shape[0] if total is None else total + obj * xb.shape[0]
                    count += xb.shape[0]
                if count == 0:
                    raise ValueError(f"data: epoch {epoch} yielded no batches (pass a re-iterable such "
                                     f"as a list or DataLoader, not a one-shot iterator)")
                history.append(total / count)
        if not bool(torch.isfinite(patch).all()):
            raise ValueError(f"lr={self.lr}, tv_weight={self.tv_weight}, nps_weight={self.nps_weight}: "
                             f"training diverged (the patch has NaN/Inf values); lower them")
        self.patch_ = patch.detach()
        self.history_ = torch.stack(history).tolist()
        return self.patch_

    def _init_patch(self, x: Tensor, threat, g: torch.Generator):
        h, w = threat.patch_size(tuple(x.shape[-2:]))
        if self.nps_weight and self.printable_colors is not None \
                and self.printable_colors.shape[1] != x.shape[1]:
            raise ValueError(f"printable_colors: expected K×{x.shape[1]} colours for {x.shape[1]}-channel "
                             f"images, got shape {tuple(self.printable_colors.shape)}")
        patch = uniform((x.shape[1], h, w), g, x.device).requires_grad_(True)
        opt = torch.optim.Adam([patch], lr=float(self.lr)) if self.optimizer == "adam" else None
        return patch, opt

    def _step(self, model, x, y, tgt, threat, patch, opt, g) -> Tensor:
        """One EOT sample per image (Brown et al. eq. (2)), one ascent step on the patch."""
        kw = {} if self.eot is None else {"eot": self.eot}
        params = threat.sample(x.shape[0], tuple(x.shape[-2:]), generator=g, **kw)
        x_p, _ = threat.paste(x, patch, params)
        target = None if tgt is None else torch.full_like(y, tgt)
        obj, _ = self.task_objective(loss=self.loss)(model(x_p), y, target)
        obj = obj.mean()
        grad, = torch.autograd.grad(obj - self._penalty(patch), patch)
        with torch.no_grad():
            if opt is None:
                patch.add_(float(self.lr) * grad.sign())
            else:
                patch.grad = -grad
                opt.step()
            patch.clamp_(0.0, 1.0)
        return obj.detach()

    def apply(self, model, x: Tensor, y: Tensor, threat, patch: Tensor, *, target=None,
              generator=None) -> AttackResult:
        """Paste ``patch`` on each image of ``x`` at a placement drawn from ``threat`` and score it.

        ``target`` (one class) must differ from every label (``ValueError`` naming the images)."""
        x, y, target, g = self._prepare_scoring(model, x, y, threat, target, generator)
        patch = check_images(patch, "patch", allow_single=True)
        hw = tuple(threat.patch_size(tuple(x.shape[-2:])))
        if patch.shape[0] != 1 or patch.shape[1] != x.shape[1] or tuple(patch.shape[-2:]) != hw:
            raise ValueError(f"patch: expected a universal patch {x.shape[1]}×{hw[0]}×{hw[1]} (this "
                             f"threat on {x.shape[-2]}×{x.shape[-1]} images), got shape "
                             f"{tuple(patch.shape)}")
        patch = patch[0].to(x.device)
        params = threat.sample(x.shape[0], tuple(x.shape[-2:]), generator=g)
        with torch.no_grad(), frozen(model):
            clean = clean_predictions(model, x, y, target)
            x_adv, mask = threat.paste(x, patch, params)
            _, success = self.task_objective(loss="ce")(model(x_adv), y, target)
        return AttackResult(x_adv=x_adv, patch=patch, mask=mask, success=success,
                            info={"targets": target, "placement": params},
                            eligible=eligible(clean, y, target))

    def _prepare_scoring(self, model, x, y, threat, target, generator):
        """Checks of ``apply``/``run``: images, labels, one target class differing from every label."""
        check_threat(threat)
        x, y, _, g = prepare(model, x, y, None, generator)
        tgt = universal_target(target, getattr(model, "num_classes", None))
        target = None if tgt is None else torch.full_like(y, tgt)
        check_target_differs(y, target)
        return x, y, target, g

    def run(self, model, x: Tensor, y: Tensor, threat, *, target=None, generator=None) -> AttackResult:
        """Train the patch on ``(x, y)`` (``fit``) then paste it on the same images (``apply``)."""
        self._check()
        x, y, _, g = self._prepare_scoring(model, x, y, threat, target, generator)
        patch = self.fit(model, (x, y), threat, target=target, generator=g)
        res = self.apply(model, x, y, threat, patch, target=target, generator=g)
        res.history = list(self.history_)
        return res
