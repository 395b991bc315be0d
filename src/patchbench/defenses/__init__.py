"""Patch defenses: purifiers (image → image) and prediction-level defenses, all usable as adaptive
attack targets through :class:`Defended`.

``get(name, **kw)`` builds a registered defense; ``names()`` lists them.
"""
from .base import GRADIENTS, Defended, Defense, binarize, bpda, get, names, register
from .compression import JPEG, GaussianFilter, MedianFilter, differentiable_jpeg, jpeg_roundtrip
from .lgs import LGS, SLGS, WLGS
from .oracle import GTMaskOracle
from .patchcleanser import PatchCleanser
from .patchzero import PatchZero

__all__ = ["GRADIENTS", "Defense", "Defended", "binarize", "bpda", "get", "names", "register",
           "JPEG", "GaussianFilter", "MedianFilter", "differentiable_jpeg", "jpeg_roundtrip",
           "LGS", "SLGS", "WLGS", "GTMaskOracle", "PatchCleanser", "PatchZero"]
