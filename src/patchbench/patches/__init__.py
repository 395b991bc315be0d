"""Patch geometry: shapes, placements, differentiable pasting, physical transformations (EOT).

Kornia-style: sample parameters, then apply them, so the same geometry gives the same patched images
and the same ground-truth masks everywhere::

    threat = Threat(area=0.05, shape="circle", placement="random", eot=EOT())
    params = threat.sample(len(x), x.shape[-2:], generator=0)
    x_p, m = threat.paste(x, patch, params)          # patch: C×h×w, (h, w) = threat.patch_size(...)
"""
from .physical import EOT, EOTParams, PhotometricParams, apply_photometric, \
    default_printable_colors, nps_loss, tv_loss
from .placement import (BoxPlacement, CenterPlacement, FixedPlacement, Placement, PlacementParams,
                        RandomPlacement)
from .render import paste, render_mask
from .shapes import SHAPES, ShapeFit, fit_shape, patch_size, shape_mask
from .threat import Threat

__all__ = ["Threat", "SHAPES", "shape_mask", "patch_size", "fit_shape", "ShapeFit", "paste",
           "render_mask", "PlacementParams", "Placement", "FixedPlacement", "CenterPlacement",
           "RandomPlacement", "BoxPlacement", "EOT", "EOTParams", "PhotometricParams",
           "apply_photometric", "default_printable_colors", "nps_loss", "tv_loss"]
