"""Differentiable pasting of a patch into images, with the exact mask of where it landed.

``paste(images, patch, shape_mask, params)`` returns ``images·(1−m) + warped_patch·m`` and ``m``. The
warp is the placement homography (:meth:`PlacementParams.homography`) applied with ``grid_sample``:
bilinear for the patch pixels (differentiable wrt patch and images) and nearest-neighbour for the shape
mask, so ``m`` is exactly 0/1 and follows the same geometry as the pixels. Where ``m == 0`` the output
is bit-identical to the input. This is the "apply" half of the kornia-style split (STYLE.md); the
patch model itself is that of Brown et al. (2017, Sec. 2: a patch applied at a location with a
transformation) and of the masked attacks of PatchZero (Xu et al. WACV 2023, Sec. 3.1,
``x' = (1 − M)⊙x + M⊙δ``).

When every sample is an integer translation inside the image (the common case in attack inner
loops), an exact path gathers and scatters the ``h×w`` window instead of warping the whole image.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .physical import apply_photometric
from .placement import PlacementParams


def _check_inputs(images, patch, shape_mask, params) -> Tensor:
    """Structural checks only (no value scan: paste runs in attack inner loops). Returns the patch
    as N×C×h×w (a broadcast view for a universal C×h×w patch)."""
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"paste: images must be a float tensor N×C×H×W, got {got}")
    if not isinstance(params, PlacementParams):
        raise TypeError(f"paste: params must be PlacementParams (from a placement's or Threat's "
                        f"sample()), got {type(params).__name__}")
    if not isinstance(patch, Tensor) or patch.dim() not in (3, 4) or not patch.is_floating_point():
        got = tuple(patch.shape) if isinstance(patch, Tensor) else type(patch).__name__
        raise ValueError(f"paste: patch must be a float tensor C×h×w or N×C×h×w, got {got}")
    n, c, H, W = images.shape
    p = patch.unsqueeze(0).expand(n, *patch.shape) if patch.dim() == 3 else patch
    if p.shape[0] != n:
        raise ValueError(f"paste: {n} images but {p.shape[0]} patches (use one C×h×w patch to "
                         f"share it)")
    if p.shape[1] != c:
        if c == 1:
            raise ValueError(f"paste: the images are greyscale (1 channel) but the patch has "
                             f"{p.shape[1]} channels; use a 1-channel patch")
        if p.shape[1] != 1:
            raise ValueError(f"paste: the images have {c} channels but the patch has {p.shape[1]}")
        p = p.expand(n, c, *p.shape[2:])
    if tuple(p.shape[2:]) != tuple(params.patch_hw):
        raise ValueError(f"paste: the patch is {tuple(p.shape[2:])} but the placement was sampled "
                         f"for a {tuple(params.patch_hw)} patch")
    if not isinstance(shape_mask, Tensor) or tuple(shape_mask.shape[-2:]) != tuple(params.patch_hw) \
            or shape_mask.numel() != params.patch_hw[0] * params.patch_hw[1]:
        got = tuple(shape_mask.shape) if isinstance(shape_mask, Tensor) else type(shape_mask).__name__
        raise ValueError(f"paste: shape_mask must be h×w = {tuple(params.patch_hw)}, got {got}")
    if params.n != n or tuple(params.image_hw) != (H, W):
        raise ValueError(f"paste: params are for {params.n} images of {tuple(params.image_hw)}, "
                         f"got {n} images of {(H, W)}")
    return p


def _window_index(origin: Tensor, size: Tuple[int, int], c: int, image_hw, device) -> Tensor:
    """Flat indices into an N×c×H×W tensor of each sample's integer window (N·c·hc·wc, in
    N×c×hc×wc order): one gather (``take``) and one ``index_copy`` are far cheaper than broadcast
    advanced indexing or warping the whole image."""
    (hc, wc), (H, W) = size, image_hw
    n = origin.shape[0]
    origin = origin.to(device)
    rows = origin[:, 1].view(n, 1, 1, 1) + torch.arange(hc, device=device).view(1, 1, hc, 1)
    cols = origin[:, 0].view(n, 1, 1, 1) + torch.arange(wc, device=device).view(1, 1, 1, wc)
    plane = (torch.arange(n, device=device).view(n, 1, 1, 1) * c
             + torch.arange(c, device=device).view(1, c, 1, 1))
    return ((plane * H + rows) * W + cols).reshape(-1)


def _sampling_grid(params: PlacementParams, origin: Tensor, size, device) -> Tuple[Tensor, Tensor]:
    """grid_sample grid (N×hc×wc×2, patch coordinates normalised to [−1, 1]) for the pixel centres
    of each sample's window, and a N×1×hc×wc flag of points in front of the camera."""
    (hc, wc), (h, w) = size, params.patch_hw
    inv = torch.linalg.inv(params.homography().to(device))                # image -> patch
    o = origin.to(device=device, dtype=torch.float64)
    ar = torch.arange(max(hc, wc), device=device, dtype=torch.float64) + 0.5
    gy = (o[:, 1].view(-1, 1, 1) + ar[:hc].view(1, hc, 1)).expand(-1, hc, wc)
    gx = (o[:, 0].view(-1, 1, 1) + ar[:wc].view(1, 1, wc)).expand(-1, hc, wc)
    pts = torch.stack([gx, gy, torch.ones_like(gx)], -1)                  # N×hc×wc×3
    q = torch.einsum("nij,nhwj->nhwi", inv, pts)
    front = q[..., 2] > 0
    z = torch.where(front, q[..., 2], torch.ones_like(q[..., 2]))
    grid = q[..., :2] / z.unsqueeze(-1) / q.new_tensor([w, h]) * 2 - 1
    return grid.float(), front.unsqueeze(1)


def _warp_window(params: PlacementParams, sm: Tensor, patch, device):
    """The shape mask (and patch, if given) resampled into each sample's window: nearest for the
    mask (exact 0/1), bilinear with border padding for the patch. Returns (mask, patch) windows."""
    origin, size = params.window()
    n = params.n
    if params.is_integer_translation:
        return sm.expand(n, 1, *sm.shape[-2:]), patch
    grid, front = _sampling_grid(params, origin, size, device)
    m = F.grid_sample(sm.expand(n, 1, *sm.shape[-2:]), grid.to(sm.dtype), mode="nearest",
                      padding_mode="zeros", align_corners=False) * front
    if patch is None:
        return m, None
    warped = F.grid_sample(patch, grid.to(patch.dtype), mode="bilinear", padding_mode="border",
                           align_corners=False)
    return m, warped


def render_mask(shape_mask: Tensor, params: PlacementParams, device=None) -> Tensor:
    """The N×1×H×W mask (exactly 0/1) of where :func:`paste` puts the patch, without pasting.

    Inner-loop helper: the argument types and shapes are checked, the mask's values are not."""
    if not isinstance(params, PlacementParams):
        raise TypeError(f"render_mask: params must be PlacementParams (from a placement's or Threat's "
                        f"sample()), got {type(params).__name__}")
    if not isinstance(shape_mask, Tensor) or tuple(shape_mask.shape[-2:]) != tuple(params.patch_hw) \
            or shape_mask.dim() not in (2, 3, 4) or shape_mask.numel() != params.patch_hw[0] * \
            params.patch_hw[1]:
        got = tuple(shape_mask.shape) if isinstance(shape_mask, Tensor) else type(shape_mask).__name__
        raise ValueError(f"render_mask: shape_mask must be h×w = {tuple(params.patch_hw)}, got {got}")
    device = device if device is not None else params.center.device
    params = params.to(device)
    sm = shape_mask.to(device=device, dtype=torch.float32)
    n, (H, W) = params.n, params.image_hw
    origin, size = params.window()
    mw, _ = _warp_window(params, sm, None, device)
    flat = _window_index(origin, size, 1, (H, W), device)
    return torch.zeros(n * H * W, device=device).index_copy_(0, flat, mw.reshape(-1)) \
        .view(n, 1, H, W)


def paste(images: Tensor, patch: Tensor, shape_mask: Tensor,
          params: PlacementParams) -> Tuple[Tensor, Tensor]:
    """Paste ``patch`` into ``images`` where ``params`` say; returns ``(patched, mask)``.

    Inner-loop helper (attacks paste every iteration): the arguments' types and shapes are checked,
    their values are not (images and patch should lie in [0, 1]; the shape mask should be 0/1).

    Arguments:
        images: ``N×C×H×W`` float in [0, 1] (not range-checked here: this runs in inner loops).
        patch: ``C×h×w`` (universal, shared by all images) or ``N×C×h×w``; a 1-channel patch is
            broadcast over RGB images; an RGB patch on greyscale images is an error.
        shape_mask: ``h×w`` binary mask of the patch's shape (``shape_mask(...)``).
        params: :class:`PlacementParams` for these N images (their photometric EOT part, if any, is
            applied to the patch pixels first). In a loop, move them to the images' device once
            (``params.to(x.device)``) so derived values are computed once.

    Returns:
        ``patched`` N×C×H×W ``= images·(1−m) + warped·m`` (differentiable wrt patch and images) and
        ``m`` N×1×H×W, exactly 0/1. Untransformed pastes have ``m.sum() == N·shape_mask.sum()``.

    Example::
        >>> params = RandomPlacement().sample(8, (224, 224), (32, 32), torch.Generator().manual_seed(0))
        >>> x_p, m = paste(x, patch, shape_mask("square", 32, 32), params)
    """
    p = _check_inputs(images, patch, shape_mask, params)
    dev = images.device
    params = params.to(dev)
    p = apply_photometric(p, params.photometric).to(images.dtype)
    sm = shape_mask.to(device=dev, dtype=images.dtype)
    n, c, H, W = images.shape
    origin, size = params.window()
    mw, pw = _warp_window(params, sm, p, dev)
    flat = _window_index(origin, size, c, (H, W), dev)
    region = torch.take(images, flat).view(n, c, *size)
    out = images.reshape(-1).index_copy(0, flat, (region * (1 - mw) + pw * mw).reshape(-1))
    flat1 = flat if c == 1 else _window_index(origin, size, 1, (H, W), dev)
    m = images.new_zeros(n * H * W).index_copy_(0, flat1, mw.expand(n, 1, *size).reshape(-1))
    return out.view(images.shape), m.view(n, 1, H, W)
