"""Pixel segmentation metrics (PatchZero §4.4, Table 5) on hand-made masks."""
import math

import pytest
import torch

from patchbench.metrics.segmentation import PixelConfusion, benign_false_positives, pixel_scores


def _masks():
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, :2, :2] = 1          # 4 true patch pixels in image 0
    pred = torch.zeros(2, 1, 4, 4)
    pred[0, 0, :2, :1] = 1            # 2 hits
    pred[0, 0, 3, 3] = 1              # 1 false alarm
    pred[1, 0, 0, 0] = 1              # 1 false alarm on image 1
    return pred, target


def test_hand_counted_precision_recall_f1():
    pred, target = _masks()
    s = pixel_scores(pred, target)
    assert (s["tp"], s["fp"], s["fn"], s["tn"]) == (2, 2, 2, 26)
    assert s["precision"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(0.5)
    assert s["accuracy"] == pytest.approx(28 / 32)


def test_perfect_prediction_scores_one_and_bool_int_float_agree():
    _, target = _masks()
    for m in (target, target.bool(), target.long()):
        s = pixel_scores(m, target)
        assert s["f1"] == s["precision"] == s["recall"] == s["accuracy"] == 1.0


def test_micro_average_accumulates_over_batches():
    pred, target = _masks()
    conf = PixelConfusion()
    conf.update(pred[:1], target[:1]).update(pred[1:], target[1:])
    assert conf.scores() == pixel_scores(pred, target)


def test_empty_prediction_uses_zero_division():
    _, target = _masks()
    s = pixel_scores(torch.zeros_like(target), target)
    assert s["precision"] == 0.0 and s["recall"] == 0.0 and s["f1"] == 0.0
    s = pixel_scores(torch.zeros_like(target), target, zero_division=float("nan"))
    assert math.isnan(s["precision"]) and s["recall"] == 0.0


def test_benign_false_positive_rates():
    pred, _ = _masks()
    fp = benign_false_positives(torch.cat([pred, torch.zeros(2, 1, 4, 4)]))
    assert fp["image_fp_rate"] == pytest.approx(0.5)
    assert fp["pixel_fp_rate"] == pytest.approx((3 / 16 + 1 / 16) / 4)


def test_bad_masks_are_rejected():
    pred, target = _masks()
    with pytest.raises(ValueError, match="same shape"):
        pixel_scores(pred[:1], target)
    with pytest.raises(ValueError, match="N×1×H×W"):
        pixel_scores(pred.repeat(1, 3, 1, 1), target.repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pixel_scores(pred * 2, target)
    with pytest.raises(TypeError):
        pixel_scores(pred.numpy(), target)
