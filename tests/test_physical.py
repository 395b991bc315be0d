"""EOT (Athalye et al. 2018) for patches, and Sharif et al.'s printability / smoothness losses."""
from dataclasses import replace

import pytest
import torch

from patchbench.patches import (EOT, PlacementParams, Threat, apply_photometric,
                                default_printable_colors, nps_loss, paste, shape_mask, tv_loss)

torch.set_num_threads(1)


def _polygon_area(c):
    x, y = c[..., 0], c[..., 1]
    return 0.5 * (x * y.roll(-1, -1) - x.roll(-1, -1) * y).sum(-1).abs()


def test_eot_photometric_changes_touch_only_patch_pixels():
    x = torch.rand(6, 3, 64, 64)
    t = Threat(area=0.05, shape="circle", eot=EOT(brightness=0.3, contrast=0.3, blur=1.5,
                                                  noise=0.1))
    params = t.sample(6, (64, 64), generator=0)
    xp, m = t.paste(x, torch.rand(3, *t.patch_size((64, 64))), params)
    outside = (m == 0).expand_as(x)
    assert torch.equal(xp[outside], x[outside])
    assert set(m.unique().tolist()) == {0.0, 1.0}


def test_brightness_shifts_every_patch_pixel_by_its_sampled_offset():
    eot = EOT(rotation=0, scale=1.0, perspective=0, brightness=0.2, contrast=0, blur=0, noise=0)
    t = Threat(area=0.1, placement="center", eot=eot)
    params = t.sample(4, (32, 32), generator=1)
    assert params.is_integer_translation          # no geometric change: the exact path is used
    patch = 0.3 + 0.4 * torch.rand(3, *t.patch_size((32, 32)))
    xp, m = t.paste(torch.zeros(4, 3, 32, 32), patch, params)
    got = xp.sum((1, 2, 3)) / m.sum((1, 2, 3)) / 3 - patch.mean()
    assert torch.allclose(got, params.photometric.brightness, atol=1e-5)
    assert params.photometric.brightness.abs().max() <= 0.2


def test_same_seed_gives_the_same_eot_draws_and_images():
    t = Threat(area=0.05, eot=EOT())
    x = torch.rand(3, 3, 48, 48)
    patch = torch.rand(3, *t.patch_size((48, 48)))
    a = t.paste(x, patch, t.sample(3, (48, 48), generator=7))
    b = t.paste(x, patch, t.sample(3, (48, 48), generator=7))
    c = t.paste(x, patch, t.sample(3, (48, 48), generator=8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_geometric_eot_goes_into_the_mask():
    # a fixed 1.5x scale makes the mask 2.25x larger; random placement keeps it inside the image
    eot = EOT(rotation=0, scale=1.5, perspective=0, brightness=0, contrast=0, blur=0, noise=0)
    t = Threat(area=0.04, eot=eot)
    m = t.masks(torch.rand(8, 3, 128, 128), generator=0)
    with_eot = t.sample(8, (128, 128), generator=0)
    area = float(t.shape_mask((128, 128)).sum())
    got = render_sum(t, with_eot)          # sub-pixel offsets move each edge by up to half a pixel
    assert torch.allclose(got, torch.full((8,), 2.25 * area), rtol=0.06)
    assert abs(float(got.mean()) / (2.25 * area) - 1) < 0.02
    assert torch.equal(m.sum((1, 2, 3)), got)                 # masks() shows the same geometry


def render_sum(t, params):
    from patchbench.patches import render_mask
    return render_mask(t.shape_mask(params.image_hw), params).sum((1, 2, 3))


def test_random_placement_with_eot_keeps_the_transformed_patch_inside():
    t = Threat(area=0.1, eot=EOT(rotation=45, scale=(0.8, 1.3), perspective=0.2))
    params = t.sample(200, (48, 64), generator=0)
    c = params.corners()
    assert (c[..., 0] >= -1e-3).all() and (c[..., 0] <= 64 + 1e-3).all()
    assert (c[..., 1] >= -1e-3).all() and (c[..., 1] <= 48 + 1e-3).all()
    # and the mask covers the area of the warped quadrilateral (square shape)
    m = render_sum(t, params)
    assert torch.allclose(m, _polygon_area(c), rtol=0.08)


def test_perspective_warps_patch_and_mask_together():
    sm = shape_mask("square", 16, 16)
    base = PlacementParams.translation(torch.tensor([[32.0, 32.0]]), (16, 16), (64, 64))
    offsets = torch.tensor([[[0.2, 0.1], [-0.1, 0.0], [0.0, -0.2], [0.15, 0.05]]])
    params = replace(base, perspective=offsets)
    corners = params.corners()[0]
    src = torch.tensor([[24.0, 24.0], [40.0, 24.0], [40.0, 40.0], [24.0, 40.0]])
    assert torch.allclose(corners, src + offsets[0] * 16, atol=1e-4)
    xp, m = paste(torch.zeros(1, 3, 64, 64), torch.full((3, 16, 16), 0.5), sm, params)
    assert torch.equal((xp[:, :1] > 0).float(), m)


def test_blur_smooths_and_noise_is_replayable():
    patch = torch.rand(2, 3, 20, 20)
    eot = EOT(rotation=0, scale=1.0, perspective=0, brightness=0, contrast=0, blur=2.0, noise=0)
    ph = eot.sample(2, torch.Generator().manual_seed(0)).photometric
    ph = replace(ph, blur_sigma=torch.tensor([0.0, 2.0]))
    out = apply_photometric(patch, ph)
    assert torch.allclose(out[0], patch[0], atol=1e-6)                 # sigma 0 = identity
    assert tv_loss(out[1]) < 0.6 * tv_loss(patch[1])
    noisy = EOT(rotation=0, scale=1.0, perspective=0, brightness=0, contrast=0, blur=0, noise=0.2)
    pn = noisy.sample(2, torch.Generator().manual_seed(3)).photometric
    flat = torch.full((2, 3, 20, 20), 0.5)
    assert torch.equal(apply_photometric(flat, pn), apply_photometric(flat, pn))
    assert torch.equal(apply_photometric(flat, pn)[1:], apply_photometric(flat[1:], pn.index(1)))
    assert (apply_photometric(flat, pn) != flat).any()


def test_nps_is_zero_on_printable_colours_and_differentiable():
    pal = default_printable_colors()
    assert pal.shape == (27, 3)
    printable = pal[torch.arange(16) % 27].T.reshape(3, 4, 4)
    assert nps_loss(printable) < 1e-4
    patch = torch.rand(3, 8, 8, requires_grad=True)
    loss = nps_loss(patch)
    loss.backward()
    assert loss > 1e-4 and torch.isfinite(patch.grad).all() and patch.grad.abs().sum() > 0
    grey = nps_loss(torch.full((1, 1, 4, 4), 0.25))
    assert grey > 0
    with pytest.raises(ValueError, match="K×3"):
        nps_loss(torch.rand(3, 4, 4), torch.rand(5, 2))


def test_tv_is_zero_for_a_flat_patch_and_grows_with_noise():
    flat = torch.full((3, 16, 16), 0.4, requires_grad=True)
    assert tv_loss(flat) < 1e-5
    tv_loss(flat).backward()
    assert torch.isfinite(flat.grad).all()
    smooth = torch.linspace(0, 1, 16).expand(3, 16, 16)
    assert tv_loss(torch.rand(3, 16, 16)) > tv_loss(smooth) > 0
    with pytest.raises(ValueError):
        tv_loss(torch.rand(16, 16))


@pytest.mark.parametrize("kw", [dict(rotation=-1), dict(rotation=200), dict(scale=(1.2, 0.8)),
                                dict(scale=0), dict(perspective=0.6), dict(contrast=1.0),
                                dict(blur=-1), dict(noise="a")])
def test_bad_eot_arguments_raise(kw):
    with pytest.raises((ValueError, TypeError)):
        EOT(**kw)


def test_threat_rejects_a_non_eot():
    with pytest.raises(TypeError, match="EOT"):
        Threat(eot={"rotation": 10})


def _reference_mask(sm, params):
    """Brute force: map every pixel centre back into the patch and look the shape up."""
    H, W = params.image_hw
    h, w = params.patch_hw
    inv = torch.linalg.inv(params.homography())
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).double()
    q = torch.einsum("nij,hwj->nhwi", inv, pts)
    u, v = q[..., 0] / q[..., 2], q[..., 1] / q[..., 2]
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    ui, vi = u.floor().long().clamp(0, w - 1), v.floor().long().clamp(0, h - 1)
    return (inside & sm.bool()[vi, ui]).float().unsqueeze(1)


def test_mask_matches_a_brute_force_warp_even_when_the_patch_leaves_the_image():
    from patchbench.patches import BoxPlacement, render_mask
    boxes = torch.tensor([[0.0, 0.0, 30.0, 30.0], [40.0, 20.0, 64.0, 48.0], [10.0, 10.0, 50.0, 40.0]])
    t = Threat(area=0.05, shape="octagon", placement=BoxPlacement(boxes, anchor="center", alpha=1.0),
               eot=EOT(rotation=40, scale=(1.0, 1.4), perspective=0.15))
    params = t.sample(3, (48, 64), generator=0)
    sm = t.shape_mask((48, 64))
    ref = _reference_mask(sm, params)
    got = render_mask(sm, params)
    assert ref[0].sum() < float(sm.sum()) * float(params.scale[0]) ** 2   # clipped by the border
    # nearest-neighbour rounding may differ on pixels whose centre maps exactly onto an edge
    assert (got != ref).sum() <= 2
