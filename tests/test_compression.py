"""JPEG (Guo et al. 2018), median and Gaussian filters: the input-transformation baselines."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from patchbench.defenses import JPEG, GaussianFilter, MedianFilter
from patchbench.defenses.compression import differentiable_jpeg, jpeg_roundtrip


def photo(size=64, grey=False):
    from skimage import data
    img = data.camera() if grey else data.chelsea()
    t = torch.from_numpy(np.ascontiguousarray(img)).float() / 255
    t = t[None, None] if grey else t.permute(2, 0, 1)[None]
    return torch.nn.functional.interpolate(t, size=(size, size), mode="area").clamp(0, 1)


@pytest.mark.parametrize("grey", [False, True])
def test_jpeg_forward_is_a_real_pillow_round_trip(grey):
    x = photo(grey=grey)
    out = JPEG(quality=60)(x)
    arr = (x[0] * 255).round().byte().permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr[..., 0] if grey else arr)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=60)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255
    ref = torch.from_numpy(ref)[None, None] if grey else torch.from_numpy(ref).permute(2, 0, 1)[None]
    torch.testing.assert_close(out, ref)
    assert 0 < (out - x).abs().mean() < 0.05


def test_lower_jpeg_quality_destroys_more():
    x = photo()
    errs = [(jpeg_roundtrip(x, q) - x).abs().mean() for q in (90, 50, 10)]
    assert errs[0] < errs[1] < errs[2]


@pytest.mark.parametrize("grey", [False, True])
def test_differentiable_jpeg_is_close_to_pillow(grey):
    x = photo(grey=grey)
    for q in (50, 75):
        real, approx = jpeg_roundtrip(x, q), differentiable_jpeg(x, q)
        # the surrogate's error is a fraction of JPEG's own distortion
        assert (real - approx).abs().mean() < 0.5 * (real - x).abs().mean()


def test_jpeg_gradient_modes():
    x = photo(32).requires_grad_(True)
    JPEG(75)(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))             # BPDA identity
    x.grad = None
    assert JPEG(75).gradient == "bpda-identity"
    assert JPEG(75, surrogate="differentiable").gradient == "bpda-surrogate"
    JPEG(75, surrogate="differentiable")(x).pow(2).sum().backward()
    assert x.grad.abs().sum() > 0 and not torch.equal(x.grad, torch.ones_like(x))


def test_median_filter_removes_salt_and_pepper_and_keeps_flat_regions():
    x = torch.full((1, 3, 20, 20), 0.5)
    noisy = x.clone()
    noisy[..., 5, 5] = 1.0
    noisy[..., 12, 7] = 0.0
    torch.testing.assert_close(MedianFilter(3)(noisy), x)
    xs = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    med = MedianFilter(5)(xs)
    ref = torch.from_numpy(np.stack([[__import__("scipy.ndimage").ndimage.median_filter(
        c.numpy(), size=5, mode="mirror") for c in im] for im in xs]))
    torch.testing.assert_close(med, ref)


def test_gaussian_filter_matches_scipy_and_smooths_noise():
    ndimage = pytest.importorskip("scipy.ndimage")
    xs = torch.rand(1, 2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = GaussianFilter(sigma=1.2)(xs)
    ref = np.stack([ndimage.gaussian_filter(c.numpy(), 1.2, mode="mirror") for c in xs[0]])
    torch.testing.assert_close(out[0], torch.from_numpy(ref))
    assert out.std() < xs.std()
    x = torch.full((1, 1, 10, 10), 0.3)
    torch.testing.assert_close(GaussianFilter(2.0)(x), x)


def test_filters_run_on_the_inputs_device_and_reject_bad_arguments():
    x = torch.rand(1, 3, 8, 8)
    for d in (JPEG(), MedianFilter(), GaussianFilter()):
        assert d(x).device == x.device and d(x).shape == x.shape
    with pytest.raises(ValueError, match="sigma"):
        GaussianFilter(0)
    with pytest.raises(ValueError, match="too large"):
        MedianFilter(9)(torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        JPEG()(torch.rand(1, 2, 8, 8))
    with pytest.raises(LookupError, match="surrogate"):
        JPEG(surrogate="bilinear")
