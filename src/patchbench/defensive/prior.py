"""Stage 1 of defensive patches: the class-specific pattern prior.

Wang et al. (CVPR 2022), "class-specific identifiable patterns injected into a confined local patch
prior" (abstract); the authors' code (``defensive-patch-notes.md``, Stage 1) learns one pattern per
class, initialised as small noise (``randn/100``), and feeds *only the masked pattern* to the model —
no natural image — minimising cross-entropy towards the pattern's own class (Adam, lr 1e-3, 10 epochs,
batch 32). The prior thus becomes a pattern the model alone already reads as that class, and is the
starting point of Stage 2 (:mod:`patchbench.defensive.train`).

Differences from the authors' code, on purpose: images live in [0, 1] here, so the noise is centred
on mid-grey (``0.5 + randn/100``) and the pattern is clamped to [0, 1] after every step; the loss is
averaged over an *ensemble* of models; an optional :class:`~patchbench.patches.EOT` varies the
pattern's photometry between samples (with no image in the input, it is the only source of variety
within a batch). The default lr is 1e-2 rather than 1e-3 so that the few hundred steps CPU training
affords reach a confident prior.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .._validation import check_bool, check_int, check_positive, check_positive_int, make_generator
from ..patches import EOT, apply_photometric


def _check_models(models) -> list:
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    if not models or not all(callable(m) for m in models):
        raise TypeError(f"models: expected a non-empty list of classifiers, got {models!r}")
    return models


def prior_logits(models: Sequence, priors: Tensor, mask: Tensor) -> Tensor:
    """Mean logits of ``models`` on the masked patterns alone: ``f(prior·m)`` (K×num_classes)."""
    z = priors * mask.to(priors)
    return torch.stack([m(z) for m in models]).mean(0)


def train_class_prior(models, mask: Tensor, class_ids: Sequence[int], channels: int, *,
                      epochs: int = 10, steps_per_epoch: int = 30, batch_size: int = 32,
                      lr: float = 1e-2, eot: Optional[EOT] = None, generator=None,
                      progress: bool = False) -> Tensor:
    """Learn one pattern per class that ``models`` classify as that class from the pattern alone.

    Threat model: none — this is the defender's own optimisation; the models are frozen.

    Args:
        models: a classifier or a list of classifiers (``N×C×H×W`` in [0, 1] → logits), eval mode.
        mask: ``H×W`` 0/1 placement mask (the pattern is seen only through it).
        class_ids: the model class indices that get a pattern (``K`` of them).
        channels: image channels ``C``.
        epochs: default 10 (authors' code). steps_per_epoch: optimiser steps per epoch (default 30).
        batch_size: labels drawn per step (default 32, authors' code).
        lr: Adam learning rate (default 1e-2; the authors use 1e-3, see the module doc).
        eot: optional EOT whose photometric part perturbs each sample's pattern (default None).
        generator: seed or ``torch.Generator`` (default seed 0) for the init and the label draws.
        progress: show a tqdm bar (default False).

    Returns:
        ``K×C×H×W`` patterns in [0, 1] (row ``k`` belongs to ``class_ids[k]``), detached.

    Example::
        >>> prior = train_class_prior([model], DefensivePlacement().mask((28, 28)), range(10), 1)
        >>> prior_logits([model], prior, mask).argmax(1)       # ≈ tensor([0, 1, ..., 9])
    """
    models = _check_models(models)
    epochs, steps = check_positive_int(epochs, "epochs"), check_positive_int(steps_per_epoch,
                                                                             "steps_per_epoch")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr, channels = check_positive(lr, "lr"), check_positive_int(channels, "channels")
    progress = check_bool(progress, "progress")
    if not isinstance(mask, Tensor) or mask.dim() != 2 or not bool(torch.isfinite(mask).all()):
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask: expected a finite H×W 0/1 tensor, got {got}")
    if eot is not None and not isinstance(eot, EOT):
        raise TypeError(f"eot: expected an EOT or None, got {type(eot).__name__}")
    if isinstance(class_ids, (str, bytes)) or not hasattr(class_ids, "__iter__"):
        raise TypeError(f"class_ids: expected a list of class indices, got {class_ids!r}")
    ids = [check_int(i, "class_ids", minimum=0) for i in class_ids]
    if not ids:
        raise ValueError(f"class_ids: expected a non-empty list of class indices, got {class_ids!r}")
    num_classes = min((int(getattr(m, "num_classes", 0)) or 10 ** 9) for m in models)
    if max(ids) >= num_classes:
        raise ValueError(f"class_ids: class index {max(ids)} out of range for models with "
                         f"{num_classes} classes")
    ids = torch.tensor(ids, dtype=torch.long)
    dev = mask.device
    g = make_generator(generator)
    H, W = mask.shape
    init = 0.5 + torch.randn(len(ids), channels, H, W, generator=g, device=g.device) / 100
    prior = init.to(dev).clamp(0, 1).requires_grad_(True)
    opt = torch.optim.Adam([prior], lr=lr)
    m = mask.to(dev).float()
    for _ in tqdm(range(epochs * steps), desc="class prior", disable=not progress, leave=False):
        rows = torch.randint(0, len(ids), (batch_size,), generator=g, device=g.device).to(dev)
        p = prior[rows]
        if eot is not None:
            p = apply_photometric(p, eot.sample(batch_size, g).photometric.to(dev))
        logits = [model(p * m) for model in models]
        loss = torch.stack([F.cross_entropy(lg, ids.to(dev)[rows]) for lg in logits]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            prior.clamp_(0, 1)
    return prior.detach()
