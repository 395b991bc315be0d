"""Defensive patches (Wang et al., "Defensive Patches for Robust Recognition in the Physical World",
CVPR 2022): a per-class patch the defender sticks around its own object so that models recognise it
under common corruptions and adversarial noise.

* :mod:`~patchbench.defensive.prior` — Stage 1, the class-specific pattern prior;
* :mod:`~patchbench.defensive.train` — Stage 2, ensemble training with the global feature-correlation
  (Gram) loss, EOT and optional noise-aware training; ``DefensivePatchConfig``, the CLI entry point;
* :mod:`~patchbench.defensive.apply` — placements, :class:`DefensivePatch`, applying it, the random
  and blank (occlusion) controls;
* :mod:`~patchbench.defensive.evaluate` — accuracy with / without / with a control patch under
  corruptions and FGSM / PGD-L∞, on training and held-out models.

Example::

    from patchbench.defensive import DefensivePatch, apply_defensive_patch
    patch = DefensivePatch.load("defensive_patch.pt"); patch.check_model(model)
    acc = (model(apply_defensive_patch(x, y, patch)).argmax(1) == y).float().mean()
"""
from .apply import (DefensivePatch, DefensivePlacement, apply_defensive_patch, blank_patch_like,
                    physical_jitter, random_patch_like)
from .prior import train_class_prior
from .train import DefensivePatchConfig, main_train_defensive_patch, train_defensive_patch

__all__ = ["DefensivePatch", "DefensivePlacement", "apply_defensive_patch", "blank_patch_like",
           "physical_jitter", "random_patch_like", "train_class_prior", "DefensivePatchConfig",
           "main_train_defensive_patch", "train_defensive_patch"]
