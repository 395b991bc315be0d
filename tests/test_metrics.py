"""Classification metrics: Wilson intervals, accuracies, and attack success on initially-correct
samples only."""
import math

import pytest
import torch
from torch import nn

from patchbench.metrics import (Rate, accuracy, attack_success_rate, clean_accuracy,
                                predict_labels, robust_accuracy, success_rate, wilson_interval)
from patchbench.models.base import ImageClassifier


class _ChannelMean(nn.Module):
    """Class = the brightest colour channel (red 0, green 1, blue 2)."""

    def forward(self, x):
        return x.mean(dim=(2, 3)) * 10


def _model():
    return ImageClassifier(_ChannelMean(), (0, 0, 0), (1, 1, 1), None, ["red", "green", "blue"])


def _colour(*classes, size=8):
    x = torch.full((len(classes), 3, size, size), 0.1)
    for i, c in enumerate(classes):
        x[i, c] = 0.9
    return x


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    lo, hi = wilson_interval(81, 100)
    assert lo == pytest.approx(0.7222, abs=1e-4) and hi == pytest.approx(0.8749, abs=1e-4)


def test_wilson_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    z = float(stats.norm.ppf(0.975))
    for k, n in [(0, 1), (1, 3), (7, 7), (13, 40), (999, 1000)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = wilson_interval(k, n, z)
        assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)


def test_wilson_interval_contains_estimate_and_shrinks_with_n():
    widths = []
    for n in (10, 100, 1000):
        lo, hi = wilson_interval(3 * n // 10, n)
        assert lo < 0.3 < hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert wilson_interval(3, 10, z=2.58)[1] > wilson_interval(3, 10)[1]   # 99 % is wider


def test_wilson_interval_rejects_bad_counts():
    for k, n in [(4, 3), (-1, 3), (0, -1)]:
        with pytest.raises(ValueError, match="0 <= k <= n"):
            wilson_interval(k, n)
    with pytest.raises(ValueError, match="z"):
        wilson_interval(1, 2, z=0)
    with pytest.raises(TypeError):
        wilson_interval(1.5, 2)


def test_rate_prints_value_interval_and_counts():
    assert str(Rate.of(5, 6)) == "0.833 [0.44, 0.97] (5/6)"
    r = Rate.of(0, 0)
    assert math.isnan(r.value) and (r.lo, r.hi) == (0.0, 1.0) and str(r) == "n/a (0/0)"
    assert float(Rate.of(1, 4)) == 0.25 and Rate.of(1, 4).to_dict()["n"] == 4


def test_accuracy_from_labels_or_logits():
    y = torch.tensor([0, 1, 2, 2])
    assert accuracy(torch.tensor([0, 1, 0, 2]), y).k == 3
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0]])
    r = accuracy(logits, y)
    assert (r.k, r.n, r.value) == (3, 4, 0.75)
    with pytest.raises(ValueError, match="4 labels"):
        accuracy(torch.tensor([0, 1, 0, 2]), y[:3])


def test_clean_and_robust_accuracy_count_all_samples():
    model = _model()
    x, y = _colour(0, 1, 2, 0), torch.tensor([0, 1, 2, 1])      # last one is wrong on clean
    clean = clean_accuracy(model, x, y, batch_size=3)
    assert (clean.k, clean.n) == (3, 4)
    x_adv = _colour(1, 1, 2, 0)                                  # first image flipped
    robust = robust_accuracy(model, x_adv, y)
    assert (robust.k, robust.n) == (2, 4)
    with pytest.raises(ValueError, match="out of range"):
        clean_accuracy(model, x, torch.tensor([0, 1, 2, 3]))


def test_attack_success_counts_only_initially_correct_samples():
    model = _model()
    y = torch.tensor([0, 1, 2, 1])
    x = _colour(0, 1, 2, 0)                 # samples 0-2 correct, sample 3 already wrong
    x_adv = _colour(1, 2, 2, 2)             # 0 and 1 flipped, 2 holds, 3 changes (but was wrong)
    asr = attack_success_rate(model, x, x_adv, y)
    assert (asr.k, asr.n) == (2, 3)         # not 3/4: sample 3 is not an attack success
    assert asr.value == pytest.approx(2 / 3)


def test_targeted_success_needs_the_target_class():
    model = _model()
    y = torch.tensor([0, 1, 2, 1])
    x = _colour(0, 1, 2, 1)
    target = torch.tensor([2, 0, 2, 2])     # sample 2 already is its target: excluded
    x_adv = _colour(2, 2, 2, 2)             # 0 hits its target; 1 is fooled but not into 0
    asr = attack_success_rate(model, x, x_adv, y, target=target)
    assert (asr.k, asr.n) == (2, 3)         # samples 0 and 3 reach the target
    assert success_rate(y, x_adv.mean((2, 3)), y).k == 3


def test_no_initially_correct_sample_gives_nan_not_a_crash():
    model = _model()
    x, y = _colour(0, 0), torch.tensor([1, 2])
    asr = attack_success_rate(model, x, x, y)
    assert asr.n == 0 and math.isnan(asr.value) and str(asr) == "n/a (0/0)"


def test_predict_labels_batches_and_restores_training_mode():
    model = _model().train()
    x = _colour(*([0, 1, 2] * 5))
    assert torch.equal(predict_labels(model, x, batch_size=4), predict_labels(model, x, 64))
    assert model.training
    with pytest.raises(ValueError, match="same shape"):
        attack_success_rate(model, x, x[:3], torch.zeros(15, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        clean_accuracy(model, x * 3, torch.zeros(15, dtype=torch.long))
