"""Fidelity to the reference ImageNet-C code (issue 12): every corruption at every severity,
our PSNR against the clean photo next to the reference's.

Reference: ``imagecorruptions==1.1.2`` (Bethge lab's packaging of the authors' code; a dev
dependency), on 224² crops of scikit-image photos — the size where ImageNet-C's constants hold.
Its code predates numpy 2 and scikit-image 0.19, so two shims are applied while this module
runs: ``skimage.filters.gaussian(multichannel=True)`` is passed on as ``channel_axis=-1``, and
``np.float_`` is ``np.float64``.

Statistic: PSNR of the mean squared error over the photos and draws (noisy corruptions: several
seeded draws of both), with our output quantised as the reference stores its own
(``np.uint8(255·y)``, i.e. floored); without that, corruptions that shift every pixel one way
(brightness, saturate) would differ by the 0.5-level rounding bias alone (0.25 dB).

Tolerances (|ours − reference| in dB; for the noisy ones about 3σ of the difference, measured
over 4–6 sets of seeds, in parentheses):

- exact re-implementations (brightness, contrast, saturate, Gaussian blur, JPEG): 0.05;
- defocus (disk discretisation) 0.3 (measured ≤ 0.11); zoom 0.4 (``imagecorruptions`` crops
  its zooms from the top-left, not the centre: 0.06–0.26);
- noise, 4 draws: 0.3 (σ ≤ 0.08); motion blur, 8 draws: 0.5 (σ ≤ 0.14); snow, 6 draws: 0.35
  (σ ≤ 0.12); glass blur, one draw (the reference's Python loop takes seconds): 0.35
  (σ ≤ 0.12; before issue 12's fix ours was 0.4–2.5 dB milder); fog, 24 draws: 0.9 (σ ≤ 0.29);
- spatter: water 1, 32 draws: 1.5 (σ 0.50; its few small blobs make the MSE heavy-tailed);
  water 2, 24 draws: 0.55 (σ ≤ 0.18); water 3 and mud, 16 draws: 0.4 (σ ≤ 0.12). The tint
  itself is compared exactly, on a shared liquid layer, with the reference's OpenCV steps;
- pixelate, the documented deviation (exact-area box weights): severities 2 and 5 (integer
  ratios) 0.05; 1, 3, 4 ours milder by 0.3–1.6 dB (measured 0.7–1.3);
- elastic: ``imagecorruptions`` rewrote it (other parameters, no affine part), so ours is
  compared with ImageNet-C's own ``elastic_transform``, written here from its definition,
  12 draws each: 0.75 (σ ≤ 0.23).

Frost is not ours (it needs the benchmark's frost photographs) and is not compared.
"""
from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ic = pytest.importorskip("imagecorruptions")
    icc = pytest.importorskip("imagecorruptions.corruptions")
    cv2 = pytest.importorskip("cv2")

from patchbench.corruptions import CORRUPTIONS, corrupt  # noqa: E402
from patchbench.corruptions import weather  # noqa: E402

SEVERITIES = (1, 2, 3, 4, 5)


@pytest.fixture(scope="module", autouse=True)
def _reference_shims():
    gaussian = icc.gaussian

    def gaussian_compat(*args, multichannel=None, **kwargs):
        if multichannel:
            kwargs["channel_axis"] = -1
        return gaussian(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(icc, "gaussian", gaussian_compat)
        mp.setattr(np, "float_", np.float64, raising=False)
        yield


@functools.lru_cache(maxsize=None)
def _photo(name: str, size: int = 224) -> np.ndarray:
    from PIL import Image
    from skimage import data
    a = getattr(data, name)()
    h, w = a.shape[:2]
    s = min(h, w)
    a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3]
    return np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)).copy()


def _psnr(mse: float) -> float:
    return 10 * math.log10(255.0 ** 2 / mse)


def _reference_psnr(name, severity, photos, draws, seed=0, fn=None) -> float:
    mse = []
    for p in photos:
        im = _photo(p)
        for k in range(draws):
            np.random.seed(seed + k)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = ic.corrupt(im, corruption_name=name, severity=severity) if fn is None \
                    else fn(im, severity, np.random)
            mse.append(np.mean((out.astype(np.float64) - im) ** 2))
    return _psnr(float(np.mean(mse)))


def _our_psnr(name, severity, photos, draws, seed=0) -> float:
    x = torch.stack([torch.from_numpy(_photo(p)).permute(2, 0, 1).float() / 255 for p in photos])
    x = x.repeat_interleave(draws, 0)                 # every copy gets its own draw
    y = corrupt(x, name, severity, generator=seed)
    stored = torch.floor(y.double() * 255 + 1e-3).clamp(0, 255)    # np.uint8(255·y)
    return _psnr(float(((stored - x.double() * 255) ** 2).mean()))


#: name → (photos, draws, tolerance in dB); see the module docstring.
EXACT = 0.05
SPEC = {
    "gaussian_noise": (("astronaut",), 4, 0.3), "shot_noise": (("astronaut",), 4, 0.3),
    "impulse_noise": (("astronaut",), 4, 0.3), "speckle_noise": (("astronaut",), 4, 0.3),
    "defocus_blur": (("astronaut", "chelsea"), 1, 0.3),
    "glass_blur": (("astronaut",), 1, 0.35),
    "motion_blur": (("astronaut",), 8, 0.5),
    "zoom_blur": (("astronaut", "chelsea"), 1, 0.4),
    "snow": (("astronaut",), 6, 0.35), "fog": (("astronaut",), 24, 0.9),
    "brightness": (("astronaut", "chelsea"), 1, EXACT), "contrast": (("astronaut", "chelsea"), 1, EXACT),
    "saturate": (("astronaut", "chelsea"), 1, EXACT),
    "gaussian_blur": (("astronaut", "chelsea"), 1, EXACT),
    "jpeg_compression": (("astronaut", "chelsea"), 1, EXACT),
}
SPATTER = {1: (32, 1.5), 2: (24, 0.55), 3: (16, 0.4), 4: (16, 0.4), 5: (16, 0.4)}
PIXELATE_FRACTIONAL = (1, 3, 4)         # 224·c is 134, 89, 67 px: not an integer ratio


def test_every_corruption_is_compared():
    assert set(SPEC) | {"spatter", "pixelate", "elastic_transform"} == set(CORRUPTIONS)


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", sorted(SPEC))
def test_psnr_matches_the_reference(name, severity):
    photos, draws, tol = SPEC[name]
    ours = _our_psnr(name, severity, photos, draws)
    ref = _reference_psnr(name, severity, photos, draws)
    assert abs(ours - ref) <= tol, (name, severity, f"ours {ours:.2f} dB, reference {ref:.2f} dB")


@pytest.mark.parametrize("severity", SEVERITIES)
def test_spatter_psnr_matches_the_reference(severity):
    draws, tol = SPATTER[severity]
    ours = _our_psnr("spatter", severity, ("astronaut",), draws)
    ref = _reference_psnr("spatter", severity, ("astronaut",), draws)
    assert abs(ours - ref) <= tol, (severity, f"ours {ours:.2f} dB, reference {ref:.2f} dB")


@pytest.mark.parametrize("severity", (1, 2, 3))
def test_water_tint_equals_the_reference_pipeline_on_the_same_liquid(severity):
    """Given the same liquid layer, the water tint is the reference's OpenCV pipeline (Canny,
    distance transform, 8-bit blur, equalisation, emboss): the 22–48 % too strong tint of
    issue 12 came from skipping its 8-bit flooring and Canny's edge placement."""
    loc, scale, sigma, thr, intensity, _ = weather.SPATTER[severity - 1]
    rng = np.random.default_rng(severity)
    liquid = icc.gaussian(rng.normal(size=(2, 224, 224), loc=loc, scale=scale), sigma=sigma,
                          channel_axis=0)
    liquid[liquid < thr] = 0
    ref = []
    for layer in liquid:                               # the reference's water branch, verbatim steps
        u8 = (layer * 255).astype(np.uint8)
        dist = cv2.distanceTransform(255 - cv2.Canny(u8, 50, 150), cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        dist = cv2.filter2D(dist, cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
        m = u8 * cv2.blur(dist, (3, 3)).astype(np.float32)
        ref.append(m / m.max() * intensity)
    ref = np.stack(ref)
    x = torch.zeros(2, 1, 224, 224, dtype=torch.float64)
    tint = weather._water(x, torch.from_numpy(liquid)[:, None], intensity, 1.0)[:, 0]
    grey = sum(w * c for w, c in zip((0.299, 0.587, 0.114), weather.WATER_RGB))
    ours = tint.numpy() / grey
    wet = liquid > 0
    # equal up to float rounding; a rare pixel may floor to the next 8-bit level (chamfer sums
    # in another order): at most 0.1 % of the pixels, and the mean tint on wet pixels within 0.1 %
    assert np.mean(np.abs(ours - ref) > 1e-5) <= 1e-3, np.abs(ours - ref).max()
    assert abs(ours[wet].mean() / ref[wet].mean() - 1) < 1e-3


@pytest.mark.parametrize("severity", SEVERITIES)
def test_pixelate_deviates_only_where_documented(severity):
    photos = ("astronaut", "chelsea")
    ours = _our_psnr("pixelate", severity, photos, 1)
    ref = _reference_psnr("pixelate", severity, photos, 1)
    if severity in PIXELATE_FRACTIONAL:
        assert 0.3 <= ours - ref <= 1.6, (severity, ours, ref)    # milder, about 1 dB
    else:
        assert abs(ours - ref) <= EXACT, (severity, ours, ref)


#: ImageNet-C's elastic_transform table: (alpha, sigma, affine jitter) in px, written as
#: multiples of 244 there (the authors' typo for 224, kept).
IMAGENET_C_ELASTIC = ((244 * 2, 244 * 0.7, 244 * 0.1), (244 * 2, 244 * 0.08, 244 * 0.2),
                      (244 * 0.05, 244 * 0.01, 244 * 0.02), (244 * 0.07, 244 * 0.01, 244 * 0.02),
                      (244 * 0.12, 244 * 0.01, 244 * 0.02))


def _imagenet_c_elastic(im: np.ndarray, severity: int, rng) -> np.ndarray:
    """ImageNet-C's own elastic transform (``make_imagenet_c.py``), from its definition: move
    three points at ±min(H, W)//3 around the centre by U(−jitter, jitter) and warp by that
    affine (cv2, reflect-101 borders); then displace every pixel by Gaussian-smoothed
    U(−1, 1) noise × alpha (skimage, reflect, truncate 3) with bilinear sampling (reflect)."""
    from scipy.ndimage import map_coordinates
    alpha, sigma, jitter = IMAGENET_C_ELASTIC[severity - 1]
    x = im.astype(np.float32) / 255
    h, w = x.shape[:2]
    c = np.float32([h, w]) // 2
    sq = min(h, w) // 3
    src = np.float32([c + sq, [c[0] + sq, c[1] - sq], c - sq])
    dst = src + rng.uniform(-jitter, jitter, size=src.shape).astype(np.float32)
    x = cv2.warpAffine(x, cv2.getAffineTransform(src, dst), (w, h), borderMode=cv2.BORDER_REFLECT_101)
    dx, dy = (icc.gaussian(rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3) * alpha
              for _ in range(2))
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.stack([map_coordinates(x[..., ch], [yy + dy, xx + dx], order=1, mode="reflect")
                    for ch in range(x.shape[2])], -1)
    return np.uint8(np.clip(out, 0, 1) * 255)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_elastic_matches_imagenet_c_own_statistics(severity):
    ours = _our_psnr("elastic_transform", severity, ("astronaut",), 12)
    ref = _reference_psnr("elastic_transform", severity, ("astronaut",), 12, fn=_imagenet_c_elastic)
    assert abs(ours - ref) <= 0.75, (severity, f"ours {ours:.2f} dB, ImageNet-C {ref:.2f} dB")
