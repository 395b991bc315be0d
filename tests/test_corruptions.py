"""Common corruptions (Hendrycks & Dietterich, ICLR 2019, ImageNet-C definitions) in torch."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from patchbench.corruptions import CORRUPTIONS, FAMILIES, RANDOM, corrupt, family, get
from patchbench.corruptions import noise as noise_mod
from patchbench.corruptions.blur import glass_shuffle_sources

torch.set_num_threads(1)

# ImageNet-C's own tables are not ordered by distortion for these two (documented exceptions):
# elastic severities 1–2 are a large random affine, 3–5 a small local elastic warp; saturate
# severities 1–2 desaturate (x0.3, x0.1), 3–5 oversaturate (x2, x5, x20).
NON_MONOTONE = {"elastic_transform", "saturate"}


def _resize(a: np.ndarray, size: int) -> torch.Tensor:
    h, w = a.shape[:2]
    s = min(h, w)
    a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    img = Image.fromarray(a).resize((size, size), Image.BICUBIC)
    t = torch.from_numpy(np.asarray(img).astype(np.float32) / 255)
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1)


@pytest.fixture(scope="module")
def rgb64() -> torch.Tensor:
    from skimage import data
    return torch.stack([_resize(a, 64) for a in (data.astronaut(), data.chelsea(), data.coffee())])


@pytest.fixture(scope="module")
def grey28() -> torch.Tensor:
    """Fashion-MNIST-like: 28×28 grey natural images."""
    from skimage import data
    return torch.stack([_resize(a, 28) for a in (data.camera(), data.moon(), data.coins(), data.horse())])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def test_registry_lists_imagenet_c_without_frost():
    assert len(CORRUPTIONS) == 18 and "frost" not in CORRUPTIONS
    members = [n for names in FAMILIES.values() for n in names]
    assert sorted(members) == sorted(CORRUPTIONS)
    assert family("brightness") == "weather" and family("jpeg-compression") == "digital"
    assert set(RANDOM) <= set(CORRUPTIONS)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_zero_is_an_identity_copy(name, rgb64):
    y = corrupt(rgb64, name, 0)
    assert torch.equal(y, rgb64) and y.data_ptr() != rgb64.data_ptr()


@pytest.mark.parametrize("name", sorted(set(CORRUPTIONS) - NON_MONOTONE))
@pytest.mark.parametrize("images", ["rgb64", "grey28"])
def test_psnr_falls_with_severity(name, images, request):
    x = request.getfixturevalue(images)
    p = [psnr(x, corrupt(x, name, s, generator=0)) for s in range(1, 6)]
    assert all(a >= b for a, b in zip(p, p[1:])), (name, images, p)
    assert p[-1] < 40, (name, images, p)  # severity 5 is a visible corruption


def test_elastic_is_monotone_within_its_two_regimes(rgb64, grey28):
    for x in (rgb64, grey28):
        p = [psnr(x, corrupt(x, "elastic_transform", s, generator=0)) for s in range(1, 6)]
        assert p[0] >= p[1] and p[2] >= p[3] >= p[4], p
        assert max(p) < 35


def _saturation(x: torch.Tensor) -> float:
    v, mn = x.amax(1), x.amin(1)
    return float(torch.where(v > 0, (v - mn) / v.clamp_min(1e-12), torch.zeros_like(v)).mean())


def test_saturate_desaturates_then_oversaturates(rgb64):
    s0 = _saturation(rgb64)
    s = [_saturation(corrupt(rgb64, "saturate", k)) for k in range(1, 6)]
    assert s[1] < s[0] < s0 and s0 < s[2] < s[3] < s[4], (s0, s)
    hue_before = rgb64.argmax(1)[rgb64.amax(1) - rgb64.amin(1) > 0.2]
    after = corrupt(rgb64, "saturate", 3)
    hue_after = after.argmax(1)[rgb64.amax(1) - rgb64.amin(1) > 0.2]
    assert (hue_before == hue_after).float().mean() > 0.97  # hue (dominant channel) kept


def test_saturate_is_identity_on_greyscale(grey28):
    for s in range(1, 6):
        assert torch.equal(corrupt(grey28, "saturate", s), grey28)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_same_seed_same_output_and_seeds_matter_only_when_random(name, grey28):
    a = corrupt(grey28, name, 4, generator=7)
    b = corrupt(grey28, name, 4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    c = corrupt(grey28, name, 4, generator=8)
    assert torch.equal(a, c) == (name not in RANDOM)


@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 20, 36), (1, 3, 9, 7),
                                   (1, 1, 1, 1), (2, 3, 2, 2), (1, 3, 1, 5), (2, 1, 6, 2)])
def test_shape_dtype_range_preserved(name, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    for xx in (x, x.double()):
        y = corrupt(xx, name, 5, generator=0)
        assert y.shape == xx.shape and y.dtype == xx.dtype and y.device == xx.device
        assert float(y.min()) >= 0 and float(y.max()) <= 1 and torch.isfinite(y).all()


def test_single_image_and_half_precision(rgb64):
    y = corrupt(rgb64[0], "fog", 2)
    assert y.shape == rgb64[0].shape
    assert torch.allclose(y, corrupt(rgb64[:1], "fog", 2)[0])
    h = corrupt(rgb64.half(), "motion_blur", 2)
    assert h.dtype == torch.float16 and h.shape == rgb64.shape


def test_get_returns_the_named_corruption(grey28):
    f = get("Gaussian-Noise")
    assert f.__name__ == "gaussian_noise"
    assert torch.equal(f(grey28, 2, generator=3), corrupt(grey28, "gaussian_noise", 2, 3))


def test_bad_names_severities_and_images_are_rejected(grey28):
    with pytest.raises(LookupError, match="gaussian_noise"):
        corrupt(grey28, "frost", 1)
    with pytest.raises(LookupError):
        get("rain")
    for bad in (6, -1):
        with pytest.raises(ValueError, match="severity"):
            corrupt(grey28, "fog", bad)
    for bad in (2.5, True, "3", None):
        with pytest.raises(TypeError, match="severity"):
            corrupt(grey28, "fog", bad)
    assert torch.equal(corrupt(grey28, "fog", 2.0), corrupt(grey28, "fog", 2))  # integral float
    with pytest.raises(TypeError, match="name"):
        corrupt(grey28, 3, 1)
    with pytest.raises(ValueError, match="channels"):
        corrupt(torch.rand(1, 2, 8, 8), "fog", 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        corrupt(grey28 * 3, "fog", 1)
    with pytest.raises(TypeError):
        corrupt(grey28.numpy(), "fog", 1)
    for bad in ("seed", 1.5, [0], np.random.default_rng(0)):
        with pytest.raises(TypeError, match="generator"):
            corrupt(grey28, "fog", 1, generator=bad)
    for bad in (-1, 2 ** 64):
        with pytest.raises(ValueError, match="generator"):
            corrupt(grey28, "fog", 1, generator=bad)
    with pytest.raises(TypeError, match="generator"):   # checked even when nothing is drawn
        corrupt(grey28, "fog", 0, generator="seed")


def test_gaussian_and_speckle_noise_have_the_tabled_std():
    x = torch.full((4, 3, 64, 64), 0.5)
    for s in (1, 3):
        d = corrupt(x, "gaussian_noise", s, generator=0) - x
        assert abs(float(d.std()) - noise_mod.GAUSSIAN_STD[s - 1]) < 0.01
        d = corrupt(x, "speckle_noise", s, generator=0) - x
        assert abs(float(d.std()) - 0.5 * noise_mod.SPECKLE_STD[s - 1]) < 0.01


def test_shot_noise_is_unbiased_and_impulse_hits_the_tabled_fraction():
    x = torch.full((4, 1, 64, 64), 0.3)
    assert abs(float(corrupt(x, "shot_noise", 3, generator=0).mean()) - 0.3) < 0.01
    y = corrupt(x, "impulse_noise", 4, generator=0)
    hit = (y != x).float().mean()
    assert abs(float(hit) - noise_mod.IMPULSE_AMOUNT[3]) < 0.01
    assert set(torch.unique(y[y != x]).tolist()) == {0.0, 1.0}


def test_contrast_and_brightness_follow_their_formulas(grey28):
    y = corrupt(grey28, "contrast", 2)
    mean = grey28.mean((2, 3), keepdim=True)
    assert torch.allclose(y, (grey28 - mean) * 0.3 + mean, atol=1e-6)
    assert torch.allclose(corrupt(grey28, "brightness", 1), (grey28 + 0.1).clamp(0, 1), atol=1e-6)


def test_brightness_on_rgb_raises_value_and_keeps_chroma_ratio(rgb64):
    y = corrupt(rgb64, "brightness", 2)
    v, v2 = rgb64.amax(1), y.amax(1)
    assert torch.allclose(v2, (v + 0.2).clamp(max=1), atol=1e-5)
    ok = v > 0.05
    ratio_before = (rgb64.amin(1) / v.clamp_min(1e-6))[ok]
    ratio_after = (y.amin(1) / v2.clamp_min(1e-6))[ok]
    assert torch.allclose(ratio_before, ratio_after, atol=1e-4)  # saturation unchanged


def test_jpeg_is_a_real_pil_round_trip(rgb64):
    y = corrupt(rgb64, "jpeg_compression", 3)
    arr = (rgb64[1].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=15)
    ref = torch.from_numpy(np.asarray(Image.open(buf)).astype(np.float32) / 255).permute(2, 0, 1)
    assert torch.equal(y[1], ref)


def test_pixelate_makes_blocks():
    x = torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    y = corrupt(x, "pixelate", 5)  # 10×10 low-res image, every block 4×4 constant
    blocks = y.unfold(2, 4, 4).unfold(3, 4, 4)
    assert torch.allclose(blocks.amax((-1, -2)), blocks.amin((-1, -2)))


def test_weather_looks_like_weather(rgb64):
    snowy = corrupt(rgb64, "snow", 3, generator=0)
    foggy = corrupt(rgb64, "fog", 3, generator=0)
    assert snowy.mean() > rgb64.mean() + 0.1   # snow whitens
    assert foggy.std() < rgb64.std()           # fog washes out contrast
    mud = corrupt(rgb64, "spatter", 5, generator=0)
    changed = (mud - rgb64).abs().sum(1) > 1e-4
    brown = mud.permute(0, 2, 3, 1)[changed]
    assert changed.float().mean() > 0.05
    assert torch.allclose(brown, torch.tensor([63, 42, 20]) / 255, atol=0.25)
    water = corrupt(rgb64, "spatter", 2, generator=0)
    assert (water >= rgb64 - 1e-6).all()       # water only adds a light tint


def test_blurs_scale_with_image_size():
    """A smooth image blurred at 56² then upsampled ≈ the same image blurred at 224²: the
    224²-defined lengths are rescaled with the side."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 224), torch.linspace(0, 1, 224), indexing="ij")
    big = ((torch.sin(xx * 25) * torch.cos(yy * 17) + 1) / 2)[None, None]
    small = torch.nn.functional.interpolate(big, size=(56, 56), mode="area")
    for name in ("gaussian_blur", "defocus_blur", "zoom_blur"):
        a = torch.nn.functional.interpolate(corrupt(big, name, 4), size=(56, 56), mode="area")
        b = corrupt(small, name, 4)
        assert psnr(a, b) > psnr(small, b) + 3, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_runs_on_cuda(name, rgb64):
    x = rgb64.cuda()
    y = corrupt(x, name, 3, generator=torch.Generator("cuda").manual_seed(0))
    assert y.is_cuda and y.shape == x.shape
    with pytest.raises(ValueError, match="generator"):
        corrupt(x, name, 3, generator=torch.Generator().manual_seed(0))


def test_glass_blur_pass_is_imagenet_c_sequential_copy_loop():
    """One pass of glass blur's shuffle, resolved without a pixel loop, equals ImageNet-C's loop
    pixel for pixel: rows H-D … D+1 and columns W-D … D+1 visited in descending order, each
    taking ``x[h, w], x[h+dy, w+dx] = x[h+dy, w+dx], x[h, w]`` on an RGB array (which assigns
    through numpy views: a copy, so values are carried on), offsets in [-D, D-1]."""
    g = torch.Generator().manual_seed(0)
    for h, w, reach in [(12, 10, 1), (15, 17, 2), (9, 9, 4), (30, 25, 3)]:
        dy, dx = torch.randint(-reach, reach, (2, 3, h - 2 * reach, w - 2 * reach), generator=g)
        src = glass_shuffle_sources(dy, dx, h, w, reach)
        for k in range(3):
            img = np.arange(h * w * 3).reshape(h, w, 3)
            for r in range(h - reach, reach, -1):
                for c in range(w - reach, reach, -1):
                    a, b = int(dy[k, r - reach - 1, c - reach - 1]), int(dx[k, r - reach - 1, c - reach - 1])
                    img[r, c], img[r + a, c + b] = img[r + a, c + b], img[r, c]
            assert np.array_equal(img[..., 0].reshape(-1) // 3, src[k].numpy()), (h, w, reach, k)


def test_glass_blur_shuffle_carries_values_further_than_one_jump():
    """A visit whose source was visited earlier in the pass (further down, the scan runs
    bottom-up) takes that source's new value, so values travel further than one jump in
    [-delta, delta-1] — but only downwards-to-up: none comes from more than delta rows above."""
    n, h, w, delta = 2, 40, 40, 2
    g = torch.Generator().manual_seed(1)
    dy, dx = torch.randint(-delta, delta, (2, n, h - 2 * delta, w - 2 * delta), generator=g)
    src = glass_shuffle_sources(dy, dx, h, w, delta)
    rows = src // w - torch.arange(h * w) // w
    assert int(rows.min()) >= -delta
    assert int(rows.max()) > delta - 1                 # carried by more than one visit
