"""Common corruptions in pure torch (Hendrycks & Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", ICLR 2019 — ImageNet-C definitions).

18 corruptions × 5 severities, batched over ``N×C×H×W`` images in ``[0, 1]`` (grey or RGB, any
size), deterministic given a seed: the 15 ImageNet-C benchmark corruptions without frost (it
needs the benchmark's frost photographs, which are not available offline) plus the paper's extra
speckle noise, Gaussian blur, spatter and saturate. Example::

    from patchbench.corruptions import corrupt, CORRUPTIONS
    x_c = corrupt(x, "motion_blur", severity=3, generator=0)
"""
from .registry import CORRUPTIONS, FAMILIES, MAX_SEVERITY, RANDOM, corrupt, family, get

__all__ = ["CORRUPTIONS", "FAMILIES", "MAX_SEVERITY", "RANDOM", "corrupt", "family", "get"]
