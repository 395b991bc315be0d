"""Patch defenses: purifiers (image → image) and prediction-level defenses, all usable as adaptive
attack targets through :class:`Defended`.

``get(name, **kw)`` builds a registered defense; ``names()`` lists them; ``build(name, context,
**kw)`` builds one from an experiment's :class:`BuildContext` (model, image size, fill, patch area,
checkpoints).
"""
from .base import GRADIENTS, Defended, Defense, binarize, bpda, get, names, register
from .context import BuildContext, build
from .compression import JPEG, GaussianFilter, MedianFilter, differentiable_jpeg, jpeg_roundtrip
from .lgs import LGS, SLGS, WLGS
from .oracle import GTMaskOracle
from .patchcleanser import PatchCleanser
from .pair import MAEDefense, PAIR
from .patchzero import PatchZero
from .sac import SAC

__all__ = ["GRADIENTS", "Defense", "Defended", "binarize", "bpda", "get", "names", "register",
           "BuildContext", "build",
           "JPEG", "GaussianFilter", "MedianFilter", "differentiable_jpeg", "jpeg_roundtrip",
           "LGS", "SLGS", "WLGS", "GTMaskOracle", "PatchCleanser", "PatchZero", "SAC", "PAIR",
           "MAEDefense"]
