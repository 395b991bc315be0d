"""Universal patches (Brown et al. 2017) and universal LaVAN: fit on one set, apply to another."""
import pytest
import torch

from attack_helpers import correctly_classified, fmnist32, trained_model
from patchbench.attacks import LaVAN, UniversalPatch
from patchbench.patches import EOT, Threat

torch.set_num_threads(1)

THREAT = Threat(area=0.1, shape="square", placement="random")


@pytest.fixture(scope="module")
def model():
    return trained_model()


@pytest.fixture(scope="module")
def train_set():
    x, y = fmnist32("train", 2600)
    return x[2000:], y[2000:]           # images the classifier was not trained on


@pytest.fixture(scope="module")
def held_out():
    return correctly_classified(64, split="test")


def random_patch_success(model, x, y, threat, seeds=range(3), target=None):
    h, w = threat.patch_size((32, 32))
    up = UniversalPatch()
    rates = [up.apply(model, x, y, threat, torch.rand(1, h, w, generator=torch.Generator().manual_seed(s)),
                      target=target, generator=5).success_rate for s in seeds]
    return max(rates)


def test_universal_patch_transfers_to_held_out_images(model, train_set, held_out):
    up = UniversalPatch(epochs=3, batch_size=32, lr=0.05)
    patch = up.fit(model, train_set, THREAT, generator=0)
    assert patch.shape == (1, *THREAT.patch_size((32, 32)))
    assert 0 <= patch.min() and patch.max() <= 1
    x, y = held_out
    trained = up.apply(model, x, y, THREAT, patch, generator=5).success_rate
    assert trained > random_patch_success(model, x, y, THREAT) + 0.1
    assert len(up.history_) == 3


def test_targeted_universal_patch_raises_target_rate(model, train_set, held_out):
    threat = Threat(area=0.25, placement="random")
    up = UniversalPatch(epochs=3, lr=0.1)
    patch = up.fit(model, train_set, threat, target=8, generator=0)
    x, y = held_out
    keep = y != 8
    x, y = x[keep], y[keep]
    res = up.apply(model, x, y, threat, patch, target=8, generator=5)
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) == 8)
    assert res.success_rate > random_patch_success(model, x, y, threat, target=8) + 0.1
    assert up.history_[-1] > up.history_[0]     # log p(target) rises during training


def test_fit_accepts_an_iterable_of_batches_with_eot_and_penalties(model, train_set):
    x, y = train_set
    batches = [(x[i:i + 50], y[i:i + 50]) for i in range(0, 200, 50)]
    up = UniversalPatch(epochs=2, optimizer="sign", lr=0.02, eot=EOT(rotation=10, scale=(0.9, 1.1)),
                        tv_weight=0.1, nps_weight=0.1)
    patch = up.fit(model, batches, THREAT, generator=1)
    assert patch.shape == (1, *THREAT.patch_size((32, 32))) and len(up.history_) == 2
    again = UniversalPatch(epochs=2, optimizer="sign", lr=0.02, eot=EOT(rotation=10, scale=(0.9, 1.1)),
                           tv_weight=0.1, nps_weight=0.1).fit(model, batches, THREAT, generator=1)
    assert torch.equal(patch, again)


def test_run_trains_and_applies_on_the_same_images(model, held_out):
    x, y = held_out
    res = UniversalPatch(epochs=2).run(model, x, y, THREAT, generator=0)
    assert res.x_adv.shape == x.shape and res.mask.shape == (len(x), 1, 32, 32)
    assert torch.equal(res.x_adv[res.mask.expand_as(x) == 0], x[res.mask.expand_as(x) == 0])
    assert len(res.history) == 2


def test_universal_lavan_raises_success_over_random(model, train_set, held_out):
    lavan = LaVAN(universal=True, epochs=3)
    patch = lavan.fit(model, train_set, THREAT, generator=0)
    x, y = held_out
    res = lavan.apply(model, x, y, THREAT, patch, generator=5)
    assert res.success_rate > random_patch_success(model, x, y, THREAT) + 0.1


def test_universal_bad_inputs(model, held_out):
    x, y = held_out
    up = UniversalPatch(epochs=1)
    with pytest.raises(ValueError, match="one target class"):
        up.run(model, x, y, THREAT, target=torch.arange(len(x)) % 10)
    with pytest.raises(ValueError, match="patch"):
        up.apply(model, x, y, THREAT, torch.rand(3, 10, 10))
    with pytest.raises(ValueError, match="no batches"):
        UniversalPatch(epochs=2).fit(model, iter([(x, y)]), THREAT)
    with pytest.raises(TypeError, match="data"):
        up.fit(model, 5, THREAT)
    with pytest.raises(LookupError, match="optimizer"):
        UniversalPatch(optimizer="lbfgs").fit(model, (x, y), THREAT)
    with pytest.raises(ValueError, match="range"):
        up.fit(model, (x, y + 10), THREAT)
