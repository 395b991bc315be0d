"""Issue 12 regressions for defenses and detection / segmentation metrics: every public entry point
gives a clear error (naming the argument) for bad input, and never a NaN or a silently wrong result."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from patchbench.defenses import (JPEG, LGS, SLGS, WLGS, Defended, GaussianFilter, GTMaskOracle,
                                 MedianFilter, PatchCleanser, PatchZero, binarize, bpda,
                                 differentiable_jpeg, get, jpeg_roundtrip)
from patchbench.metrics.detection import afbeta, count_patch_detections, precision_recall
from patchbench.metrics.segmentation import PixelConfusion, benign_false_positives, pixel_scores
from patchbench.models.base import ImageClassifier
from patchbench.models.unet import UNet

INF, NAN = math.inf, math.nan


def tiny_model(channels=3, classes=4):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(16, classes))
    return ImageClassifier(net, [0.5] * channels, [0.25] * channels, None,
                           [f"c{i}" for i in range(classes)], channels, "tiny").eval()


def images(n=2, c=3, s=16):
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(0))


def tiny_unet():
    torch.manual_seed(0)
    return UNet(1, base=2, depth=1, input_size=(16, 16)).eval()


# ---- item 5: Inf / NaN no longer pass "> 0" checks ----------------------------------------------
@pytest.mark.parametrize("lam", [INF, NAN, -INF, 0.0, -1.0, 1e300])
def test_lgs_smoothing_factor_must_be_finite_and_positive(lam):
    for build in (lambda: LGS(smoothing_factor=lam),
                  lambda: SLGS(tiny_model(), smoothing_factor=lam),
                  lambda: WLGS(tiny_model(), smoothing_factor=lam)):
        with pytest.raises(ValueError, match="smoothing_factor"):
            build()


def test_lgs_at_the_largest_smoothing_factor_stays_finite():
    x = images()
    out = LGS(smoothing_factor=1000.0)(x)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("threshold", [NAN, INF, -INF, "0.5", None])
def test_binarize_threshold_must_be_a_finite_number(threshold):
    with pytest.raises((ValueError, TypeError), match="threshold"):
        binarize(torch.rand(4), threshold)


@pytest.mark.parametrize("temperature", [0.0, -1.0, NAN, INF])
def test_binarize_temperature_must_be_finite_positive(temperature):
    with pytest.raises(ValueError, match="temperature"):
        binarize(torch.rand(4), 0.5, "bpda-sigmoid", temperature)


def test_binarize_and_bpda_reject_non_tensors():
    with pytest.raises(TypeError, match="p must be"):
        binarize([0.1, 0.9])
    with pytest.raises(TypeError, match="floating"):
        binarize(torch.tensor([0, 1]))
    with pytest.raises(LookupError, match="mode"):
        binarize(torch.rand(3), 0.5, "soft")
    with pytest.raises(TypeError, match="surrogate"):
        bpda(torch.zeros(3), [0.0, 0.0, 0.0])


@pytest.mark.parametrize("kw", [dict(sigma=INF), dict(sigma=NAN), dict(sigma=0), dict(sigma=-1),
                                dict(truncate=INF), dict(truncate=NAN), dict(truncate=0),
                                dict(sigma=1e6)])
def test_gaussian_filter_parameters_must_be_finite_positive(kw):
    with pytest.raises(ValueError, match="sigma|truncate"):
        GaussianFilter(**kw)


def test_gaussian_filter_with_a_tiny_sigma_is_the_identity_not_nan():
    x = images()
    torch.testing.assert_close(GaussianFilter(sigma=1e-300)(x), x)


def test_gaussian_kernel_is_unchanged_for_ordinary_sigma():
    k = GaussianFilter(sigma=1.0).kernel()
    t = torch.arange(-4, 5, dtype=torch.float32)
    ref = torch.exp(-0.5 * (t / 1.0) ** 2)
    assert torch.equal(k, ref / ref.sum())


@pytest.mark.parametrize("fn", [differentiable_jpeg, jpeg_roundtrip])
@pytest.mark.parametrize("quality", [0, -5, 101, 2.5, NAN, "75", None, True])
def test_jpeg_functions_take_an_integer_quality_in_1_100(fn, quality):
    with pytest.raises((ValueError, TypeError), match="quality"):
        fn(images(1), quality)


def test_jpeg_quality_100_is_valid_and_jpeg_defense_keeps_1_95():
    x = images(1, 1)                    # grey: no chroma subsampling, so q=100 is near-lossless
    for fn in (differentiable_jpeg, jpeg_roundtrip):
        y = fn(x, 100)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        assert (y - x).abs().max() < 0.02
    with pytest.raises(ValueError, match="quality"):
        JPEG(quality=96)
    with pytest.raises(ValueError, match="quality"):
        JPEG(quality=0)
    assert JPEG(quality=1)(images(1)).shape == (1, 3, 16, 16)


# ---- item 3: non-tensor / wrong-kind images at every entry --------------------------------------
@pytest.mark.parametrize("fn", [differentiable_jpeg, jpeg_roundtrip, JPEG()])
def test_jpeg_helpers_reject_non_tensors_and_bad_images(fn):
    x = images(1)
    with pytest.raises(TypeError, match="x"):
        fn(x.numpy())
    with pytest.raises(TypeError, match="x"):
        fn(x.tolist())
    with pytest.raises(TypeError, match="uint8"):
        fn((x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(x * 255)
    with pytest.raises(ValueError, match="channels"):
        fn(torch.rand(1, 2, 8, 8))
    with pytest.raises(ValueError, match="meta"):
        fn(torch.zeros(1, 3, 8, 8, device="meta"))
    with pytest.raises(ValueError, match="NaN"):
        fn(x.masked_fill(x > 0.5, NAN))


def test_every_purifier_rejects_bad_images_with_a_named_argument():
    model = tiny_model()
    oracle = GTMaskOracle().with_mask(torch.zeros(1, 1, 16, 16))
    for d in (LGS(), SLGS(model), WLGS(model), JPEG(), MedianFilter(), GaussianFilter(), oracle):
        with pytest.raises(TypeError, match="input x"):
            d(None)
        with pytest.raises(TypeError, match="uint8"):
            d(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
        with pytest.raises(ValueError, match="meta"):
            d(torch.zeros(1, 3, 16, 16, device="meta"))


def test_float64_images_work_through_patchzero():
    pz = PatchZero(tiny_unet())
    x = torch.rand(2, 1, 16, 16)
    out = pz(x.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), pz(x))


def test_gt_mask_oracle_checks_its_mask():
    x = images(2, 3, 8)
    oracle = GTMaskOracle()
    with pytest.raises(ValueError, match="0 or 1"):
        oracle(x, mask=torch.full((2, 1, 8, 8), 0.5))
    with pytest.raises(ValueError, match="0 or 1"):
        oracle.with_mask(torch.full((2, 1, 8, 8), NAN))
    with pytest.raises(ValueError, match="mask"):
        oracle(x, mask=torch.zeros(2, 1, 4, 4))
    with pytest.raises(TypeError, match="mask"):
        oracle(x, mask=np.zeros((2, 1, 8, 8)))
    with pytest.raises(ValueError, match="mask"):
        oracle.with_mask(torch.zeros(2, 1, 4, 4))(x)
    torch.testing.assert_close(GTMaskOracle()(x, mask=torch.zeros(8, 8)), x)
    with pytest.raises(ValueError, match="fill"):
        GTMaskOracle(fill=[])
    with pytest.raises(ValueError, match="fill"):
        GTMaskOracle(fill=[0.1, NAN, 0.2])


# ---- constructors store validated parameters only ------------------------------------------------
def test_constructors_validate_every_parameter():
    model = tiny_model()
    with pytest.raises(TypeError, match="clamp"):
        WLGS(model, clamp="false")
    with pytest.raises(TypeError, match="second_order"):
        WLGS(model, second_order=None)
    with pytest.raises(ValueError, match="erosions"):
        SLGS(model, erosions=10 ** 6)
    with pytest.raises(TypeError, match="k"):
        MedianFilter(k=2.5)
    with pytest.raises(TypeError, match="quality"):
        JPEG(quality=75.5)
    with pytest.raises(ValueError, match="fill"):
        PatchCleanser(2, 8, fill=NAN)
    with pytest.raises(TypeError, match="image_size"):
        PatchCleanser(2, "8")
    with pytest.raises(ValueError, match="patch_size"):
        PatchCleanser(NAN, 8)
    with pytest.raises(ValueError, match="k="):
        PatchCleanser(1, 224, k=1000)
    with pytest.raises(ValueError, match="temperature"):
        PatchZero(tiny_unet(), temperature=INF)
    with pytest.raises(ValueError, match="threshold"):
        PatchZero(tiny_unet(), threshold=NAN)
    with pytest.raises(TypeError, match="input_size"):
        PatchZero(tiny_unet(), input_size="16x16")
    with pytest.raises(TypeError, match="name"):
        get(3)


# ---- item 5 (Defended and gradient rules) --------------------------------------------------------
def test_defended_validates_its_arguments_and_keeps_behaviour():
    model = tiny_model()
    with pytest.raises(ValueError, match="eot_samples"):
        Defended(model, LGS(), eot_samples=0)
    with pytest.raises(TypeError, match="eot_samples"):
        Defended(model, LGS(), eot_samples=2.5)
    with pytest.raises(TypeError, match="model"):
        Defended(None, LGS())
    with pytest.raises(TypeError, match="defense"):
        Defended(model, "lgs")
    target = Defended(model, LGS())
    with pytest.raises(TypeError, match="attack_mode"):
        target.attack_mode = "yes"
    with pytest.raises(ValueError, match="batch_size"):
        target.predict(images(), batch_size=0)
    with pytest.raises(TypeError, match="x"):
        target(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="channels"):
        target(images(1, 1))
    x = images()
    torch.testing.assert_close(target(x), model(LGS()(x)))
    target.attack_mode = False
    assert target.attack_mode is False and not target._attacking()


# ---- item 2: PatchZero.load ----------------------------------------------------------------------
def test_patchzero_load_garbage_missing_and_corrupt_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 50)
    with pytest.raises(ValueError, match="not a PatchZero checkpoint") as e:
        PatchZero.load(garbage)
    assert "garbage.pt" in str(e.value)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pt"):
        PatchZero.load(tmp_path / "empty.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        PatchZero.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="directory"):
        PatchZero.load(tmp_path)
    with pytest.raises(TypeError, match="path"):
        PatchZero.load(None)

    pz = PatchZero(tiny_unet())
    good = torch.load(pz.save(tmp_path / "good.pt"), weights_only=True)

    def write(name, **changes):
        ck = dict(good, **changes)
        torch.save(ck, tmp_path / name)
        return tmp_path / name

    sd = {k: v.clone() for k, v in good["state_dict"].items()}
    sd["head.weight"][0, 0] = NAN
    with pytest.raises(ValueError, match="NaN") as e:
        PatchZero.load(write("nan.pt", state_dict=sd))
    assert "nan.pt" in str(e.value) and "head.weight" in str(e.value)

    bigger = dict(good["config"], base=4)
    with pytest.raises(ValueError, match="shape") as e:
        PatchZero.load(write("arch.pt", config=bigger))
    assert "arch.pt" in str(e.value)
    sd = dict(good["state_dict"])
    sd.pop("head.bias")
    with pytest.raises(ValueError, match="head.bias"):
        PatchZero.load(write("missing_key.pt", state_dict=sd))
    with pytest.raises(ValueError, match="kind"):
        PatchZero.load(write("kind.pt", kind="resnet"))
    ck = dict(good)
    ck.pop("threshold")
    torch.save(ck, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="threshold"):
        PatchZero.load(tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="bad_threshold.pt"):
        PatchZero.load(write("bad_threshold.pt", threshold=NAN))
    with pytest.raises(TypeError, match="colour"):
        PatchZero.load(tmp_path / "good.pt", colour=0.2)
    with pytest.raises(ValueError, match="dilation"):
        PatchZero.load(tmp_path / "good.pt", dilation=-1)
    with pytest.raises(ValueError, match="device"):
        PatchZero.load(tmp_path / "good.pt", device="tpu")
    back = PatchZero.load(tmp_path / "good.pt")
    x = torch.rand(1, 1, 16, 16)
    assert torch.equal(back(x), pz(x))


def test_patchzero_save_refuses_meta_it_could_not_load(tmp_path):
    pz = PatchZero(tiny_unet())
    with pytest.raises(TypeError, match="meta"):
        pz.save(tmp_path / "a.pt", config=object())
    with pytest.raises(ValueError, match="directory"):
        pz.save(tmp_path)


def test_shipped_patchzero_asset_loads():
    pz = PatchZero.load("fmnist_do")
    assert pz.input_size == (28, 28) and pz.channels == 1


# ---- item 4: detection and segmentation metrics --------------------------------------------------
GT = [torch.tensor([[0.0, 0, 10, 10]])]


def test_detection_dict_without_scores_or_boxes_names_the_key():
    with pytest.raises(ValueError, match="'scores'"):
        precision_recall([{"boxes": torch.tensor([[0.0, 0, 10, 10]])}], GT)
    with pytest.raises(ValueError, match="'boxes'"):
        precision_recall([{"scores": torch.tensor([0.9])}], GT)


def test_detection_metrics_reject_bad_boxes_scores_and_arguments():
    det = [(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([0.995]))]
    with pytest.raises(ValueError, match="finite"):
        precision_recall([(torch.tensor([[0.0, NAN, 10, 10]]), torch.tensor([0.9]))], GT)
    with pytest.raises(ValueError, match="negative width"):
        precision_recall([(torch.tensor([[10.0, 0, 0, 10]]), torch.tensor([0.9]))], GT)
    with pytest.raises(ValueError, match="scores"):
        precision_recall([(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([NAN]))], GT)
    with pytest.raises(ValueError, match="gts"):
        precision_recall(det, [torch.tensor([[0.0, 0, INF, 10]])])
    with pytest.raises(ValueError, match="one entry per image"):
        precision_recall(det * 2, GT)
    with pytest.raises(TypeError, match="dets"):
        precision_recall(None, GT)
    with pytest.raises(TypeError, match=r"dets\[0\]"):
        precision_recall([None], GT)
    for delta in (-0.1, 1.5, NAN):
        with pytest.raises(ValueError, match="delta"):
            precision_recall(det, GT, delta=delta)
    for beta in (0, -1, NAN, INF, 1e200):
        with pytest.raises(ValueError, match="beta"):
            afbeta(det, GT, beta)
    with pytest.raises(ValueError, match="iou_threshold"):
        precision_recall(det, GT, iou_threshold=0)
    with pytest.raises(ValueError, match="thresholds"):
        afbeta(det, GT, 0.1, thresholds=[0.0, NAN])
    with pytest.raises(TypeError, match="patch_boxes"):
        count_patch_detections(det, None)
    assert precision_recall(det, GT) == (1.0, 1.0)
    assert precision_recall([{"boxes": [[0, 0, 10, 10]], "scores": [0.995]}], GT) == (1.0, 1.0)


def test_segmentation_metrics_reject_nan_and_negative_masks():
    t = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="NaN"):
        pixel_scores(torch.full((1, 1, 4, 4), NAN), t)
    with pytest.raises(ValueError, match="target"):
        pixel_scores(t, -torch.ones(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="same shape"):
        pixel_scores(t, torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="zero_division"):
        PixelConfusion(zero_division=2)
    with pytest.raises(TypeError, match="zero_division"):
        PixelConfusion(zero_division="warn")
    with pytest.raises(ValueError, match="meta"):
        benign_false_positives(torch.zeros(1, 1, 4, 4, device="meta"))
    assert math.isnan(pixel_scores(t, t, zero_division=NAN)["precision"])


def test_gt_mask_oracle_moves_like_any_module():
    """``GTMaskOracle._apply`` used to shadow ``nn.Module._apply``, so ``.to(device)`` crashed."""
    oracle = GTMaskOracle(fill=0.5).to("cpu").double().float()
    x = images(1, 3, 8)
    m = torch.zeros(1, 1, 8, 8)
    m[..., :2, :2] = 1
    out = oracle(x, mask=m)
    assert (out[m.expand_as(x) == 1] == 0.5).all() and torch.equal(out[m.expand_as(x) == 0],
                                                                   x[m.expand_as(x) == 0])
