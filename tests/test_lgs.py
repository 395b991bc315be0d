"""LGS (Naseer et al. 2019) and the ELGS variants SLGS (eq. 10) and WLGS (eq. 12)."""
import pytest
import torch
from torch import nn

from patchbench.defenses import LGS, SLGS, WLGS
from patchbench.defenses.lgs import (binarize_at_mean, block_mask, dilate, erode,
                                     gradient_magnitude, normalized_gradient, saliency_mask,
                                     standardized_saliency, top_k_saliency)
from patchbench.models.base import ImageClassifier

S = 48
PATCH = (slice(6, 22), slice(26, 42))     # a 16×16 patch in the top-right corner, as in ELGS §4.1


def ramp_with_patch(seed=0):
    """A smooth horizontal ramp (low frequency) with a uniform-noise patch (high frequency)."""
    ramp = torch.linspace(0.2, 0.8, S).view(1, 1, 1, S).expand(1, 3, S, S).clone()
    g = torch.Generator().manual_seed(seed)
    x = ramp.clone()
    x[..., PATCH[0], PATCH[1]] = torch.rand(1, 3, 16, 16, generator=g)
    return ramp, x


class RegionModel(nn.Module):
    """A linear classifier that only looks at ``rows × cols`` (so its saliency lives there)."""

    def __init__(self, rows=slice(4, 12), cols=slice(4, 12)):
        super().__init__()
        self.rows, self.cols = rows, cols
        g = torch.Generator().manual_seed(0)
        h, w = rows.stop - rows.start, cols.stop - cols.start
        self.w = nn.Parameter(torch.randn(3, 3, h, w, generator=g))

    def forward(self, x):
        return torch.einsum("nchw,kchw->nk", x[..., self.rows, self.cols], self.w)


def classifier(net):
    return ImageClassifier(net, [0.0] * 3, [1.0] * 3, None, ["a", "b", "c"], 3, "region").eval()


def test_lgs_leaves_a_constant_image_unchanged():
    x = torch.full((2, 3, S, S), 0.4)
    assert torch.equal(LGS()(x), x)


def test_lgs_leaves_smooth_regions_unchanged_and_damps_a_high_frequency_patch():
    ramp, x = ramp_with_patch()
    out = LGS()(x)
    far = (slice(30, S), slice(0, 20))                    # smooth region far from the patch
    assert (out - x)[..., far[0], far[1]].abs().max() < 1e-6
    energy = lambda z: z[..., PATCH[0], PATCH[1]].pow(2).mean()
    assert energy(out) < 0.3 * energy(x)                  # the patch loses most of its energy
    hf = lambda z: gradient_magnitude(z)[..., 7:21, 27:41].pow(2).mean()
    assert hf(out) < 0.7 * hf(x)
    assert out.min() >= 0 and out.max() <= 1


def test_larger_smoothing_factor_removes_more():
    _, x = ramp_with_patch()
    changes = [(LGS(smoothing_factor=lam)(x) - x).abs().sum() for lam in (1.5, 2.3, 3.5)]
    assert changes[0] < changes[1] < changes[2]


def test_normalized_gradient_and_block_mask():
    _, x = ramp_with_patch()
    g = normalized_gradient(x)
    assert g.shape == (1, 1, S, S)
    assert g.min() >= 0 and float(g.max()) == pytest.approx(1.0, abs=1e-5)
    m = block_mask(g, window=15, overlap=5, threshold=0.1)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert m[..., PATCH[0], PATCH[1]].all()               # the patch's blocks are kept
    assert not m[..., 35:, :15].any()                     # smooth blocks are dropped
    # a block is kept iff its mean reaches the threshold: raise the threshold → fewer pixels
    assert block_mask(g, 15, 5, 0.3).sum() <= m.sum()


def test_lgs_is_differentiable_exactly():
    torch.manual_seed(0)
    x = (torch.rand(1, 1, 8, 8, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    lgs = LGS(window=5, overlap=2, threshold=0.25, smoothing_factor=0.8)
    assert lgs.gradient == "exact"
    assert torch.autograd.gradcheck(lgs.purify, (x,), eps=1e-6, atol=1e-4)


def test_slgs_mask_pipeline_binarise_at_mean_erode_twice_dilate_three_times():
    s = torch.zeros(1, 1, 24, 24)
    s[..., 5:11, 5:11] = 1.0      # a 6×6 salient blob
    s[..., 18, 18] = 1.0          # an isolated outlier
    s[..., 2, 20] = 0.01          # scattered weak saliency below the mean
    b = binarize_at_mean(s)
    assert b.sum() == 36 + 1
    e = erode(b, 2)
    expected_e = torch.zeros_like(s)
    expected_e[..., 7:9, 7:9] = 1.0          # 6×6 → 4×4 → 2×2; the outlier vanishes
    assert torch.equal(e, expected_e)
    d = saliency_mask(s)
    expected_d = torch.zeros_like(s)
    expected_d[..., 4:12, 4:12] = 1.0        # 2×2 grown by 3 pixels on each side
    assert torch.equal(d, expected_d)
    assert torch.equal(dilate(e, 3), d)


def test_morphology_matches_scipy_in_the_interior():
    ndimage = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(2)
    m = (torch.rand(1, 1, 30, 30, generator=g) > 0.4).float()
    st = torch.ones(3, 3).bool().numpy()
    ref_e = ndimage.binary_erosion(m[0, 0].bool().numpy(), st, border_value=1)
    ref_d = ndimage.binary_dilation(m[0, 0].bool().numpy(), st)
    assert (erode(m)[0, 0].bool().numpy() == ref_e).all()
    assert (dilate(m)[0, 0].bool().numpy() == ref_d).all()


def test_top5_saliency_lives_where_the_model_looks():
    model = classifier(RegionModel())
    _, x = ramp_with_patch()
    sal = top_k_saliency(model, x, k=5)       # k is capped at the 3 classes
    assert sal.shape == (1, 1, S, S)
    assert sal[..., 4:12, 4:12].min() > 0
    inside = torch.zeros_like(sal, dtype=torch.bool)
    inside[..., 4:12, 4:12] = True
    assert sal[~inside].abs().max() == 0


def test_slgs_smooths_only_the_high_frequency_region_the_model_looks_at():
    model = classifier(RegionModel(*PATCH))          # the model "looks at" the patch
    _, x = ramp_with_patch()
    texture = (slice(30, 46), slice(4, 20))          # a benign textured object the model ignores
    x[..., texture[0], texture[1]] = torch.rand(1, 3, 16, 16,
                                                generator=torch.Generator().manual_seed(5))
    slgs = SLGS(model)
    out, lgs_out = slgs(x), LGS(threshold=0.2)(x)
    region = torch.zeros(1, 1, S, S, dtype=torch.bool)
    region[..., 5:23, 25:43] = True                  # the patch, eroded 2× and dilated 3×
    changed = (out != x).any(1, keepdim=True)
    assert changed[region].float().mean() > 0.5     # the patch is smoothed ...
    assert not changed[~region].any()                # ... and nothing else,
    assert (lgs_out != x)[..., texture[0], texture[1]].any()   # while plain LGS hits the texture
    d = saliency_mask(top_k_saliency(model, x))
    expected = (x * (1 - 2.3 * d * slgs.gradient_map(x))).clamp(0, 1)
    torch.testing.assert_close(out, expected)


def test_wlgs_weights_are_the_standardised_saliency_and_clamp_clips_them():
    s = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    w = standardized_saliency(s)
    torch.testing.assert_close(w.mean(dim=(2, 3)), torch.zeros(2, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(w.std(dim=(2, 3)), torch.ones(2, 1))
    wc = standardized_saliency(s, clamp=True)
    assert wc.min() >= 0 and wc.max() <= 1
    torch.testing.assert_close(wc, w.clamp(0, 1))
    model = classifier(RegionModel())
    _, x = ramp_with_patch()
    for clamp in (False, True):
        wlgs = WLGS(model, clamp=clamp, smoothing_factor=2.7)
        weights = standardized_saliency(top_k_saliency(model, x), clamp)
        expected = (x * (1 - 2.7 * weights * wlgs.gradient_map(x))).clamp(0, 1)
        torch.testing.assert_close(wlgs(x), expected)


def test_wlgs_second_order_gradient_is_exact_and_first_order_holds_saliency_fixed():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6 * 6, 3), nn.Tanh()).double()
    model = ImageClassifier(net, [0.0], [1.0], None, list("abc"), 1).double().eval()
    x = (torch.rand(1, 1, 6, 6, dtype=torch.float64) * 0.6 + 0.2).requires_grad_(True)
    exact = WLGS(model, second_order=True, window=4, overlap=1, threshold=0.05,
                 smoothing_factor=0.3)
    assert exact.gradient == "exact" and WLGS(model).gradient == "bpda-constant"
    assert torch.autograd.gradcheck(exact.purify, (x,), eps=1e-6, atol=1e-4)
    fixed = WLGS(model, window=4, overlap=1, threshold=0.05, smoothing_factor=0.3)
    g1 = torch.autograd.grad(exact.purify(x).sum(), x)[0]
    g2 = torch.autograd.grad(fixed.purify(x).sum(), x)[0]
    assert not torch.allclose(g1, g2)


def test_saliency_defenses_need_a_model():
    with pytest.raises(TypeError, match="model"):
        SLGS("vgg16")
    with pytest.raises(TypeError, match="model"):
        WLGS(None)
