"""Per-image classification patch attacks: masked PGD / AutoPGD / CW and LaVAN."""
import pytest
import torch
from torch import nn

from attack_helpers import correctly_classified, trained_model
from patchbench import attacks
from patchbench.attacks import AttackResult, LaVAN, MaskedAPGD, MaskedCW, MaskedPGD, UniversalPatch
from patchbench.attacks._common import BestIterate, frozen, objective
from patchbench.attacks.masked_apgd import checkpoints
from patchbench.models.base import ImageClassifier
from patchbench.patches import Threat

torch.set_num_threads(1)

FAST = {
    "masked-pgd": lambda: MaskedPGD(steps=10, step=0.05),
    "masked-apgd": lambda: MaskedAPGD(steps=10, eps=1.0),
    "masked-apgd-dlr": lambda: MaskedAPGD(steps=10, eps=1.0, loss="dlr"),
    "masked-cw": lambda: MaskedCW(steps=10),
    "lavan": lambda: LaVAN(steps=10),
}


@pytest.fixture(scope="module")
def model():
    return trained_model()


@pytest.fixture(scope="module")
def data():
    return correctly_classified(12)


def box_mask(n, top, left, size, hw=32):
    m = torch.zeros(n, 1, hw, hw)
    m[:, :, top:top + size, left:left + size] = 1
    return m


def test_registry_lists_every_classification_attack():
    assert {"masked-pgd", "masked-apgd", "masked-cw", "universal-patch", "lavan"} <= set(attacks.names())
    assert isinstance(attacks.get("masked_pgd", steps=3), MaskedPGD)
    assert attacks.get("lavan").steps == 200


@pytest.mark.parametrize("name", sorted(FAST))
def test_pixels_outside_the_mask_are_bit_identical(name, model, data):
    x, y = data
    res = FAST[name]().run(model, x, y, Threat(area=0.1, placement="random"), generator=3)
    assert isinstance(res, AttackResult)
    out = res.mask.expand_as(x) == 0
    assert torch.equal(res.x_adv[out], x[out])
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.success.shape == (len(x),) and res.success.dtype == torch.bool
    assert len(res.history) == 11


def test_universal_patch_touches_only_its_mask(model, data):
    x, y = data
    res = UniversalPatch(epochs=1, batch_size=6).run(model, x, y, Threat(area=0.1), generator=0)
    out = res.mask.expand_as(x) == 0
    assert torch.equal(res.x_adv[out], x[out])
    assert res.patch.shape == (1, *Threat(area=0.1).patch_size((32, 32)))


@pytest.mark.parametrize("name", ["masked-pgd", "masked-cw", "lavan"])
def test_more_iterations_never_lower_success(name, model, data):
    x, y = data
    mask = box_mask(len(x), 6, 6, 12)
    counts, prev = [], torch.zeros(len(x), dtype=torch.bool)
    for steps in (1, 3, 8, 20):
        atk = FAST[name]()
        atk.steps = steps
        res = atk.run(model, x, y, mask, generator=7)
        assert bool((res.success | ~prev).all()), f"{name}: a success at fewer steps was lost"
        prev = res.success
        counts.append(int(prev.sum()))
    assert counts[-1] > counts[0], counts


@pytest.mark.parametrize("name", sorted(FAST))
def test_full_image_patch_fools_an_undefended_model(name, model, data):
    x, y = data
    atk = FAST[name]()
    atk.steps = 30
    res = atk.run(model, x, y, torch.ones(1, 1, 32, 32), generator=0)
    assert res.success_rate >= 0.9


@pytest.mark.parametrize("name", ["masked-pgd", "masked-apgd"])
def test_targeted_attack_reaches_the_target(name, model, data):
    x, y = data
    target = (y + 3) % 10
    atk = FAST[name]()
    atk.steps = 40
    res = atk.run(model, x, y, box_mask(len(x), 6, 6, 20), target=target, generator=0)
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == target)
    assert res.success_rate >= 0.75


def test_lavan_puts_the_target_logit_above_the_source(model, data):
    # LaVAN maximises Z_target - Z_source only; a third class may still win, so success < 100%.
    x, y = data
    target = (y + 3) % 10
    res = LaVAN(steps=40).run(model, x, y, box_mask(len(x), 6, 6, 20), target=target, generator=0)
    with torch.no_grad():
        z = model(res.x_adv)
    assert (z.gather(1, target[:, None]) > z.gather(1, y[:, None])).all()
    assert res.success_rate >= 0.4
    assert torch.equal(res.success, z.argmax(1) == target)


def test_success_flags_match_the_returned_images(model, data):
    x, y = data
    res = MaskedPGD(steps=10, step=0.05).run(model, x, y, Threat(area=0.15), generator=0)
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)


@pytest.mark.parametrize("name", sorted(FAST))
def test_same_seed_same_numbers(name, model, data):
    x, y = data
    threat = Threat(area=0.1)
    a = FAST[name]().run(model, x, y, threat, generator=11)
    b = FAST[name]().run(model, x, y, threat, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.mask, b.mask) and a.history == b.history
    c = FAST[name]().run(model, x, y, threat, generator=12)
    assert not torch.equal(a.mask, c.mask)


def test_restarts_only_help_and_rerun_unsuccessful_images(model, data):
    x, y = data
    mask = box_mask(len(x), 0, 0, 5)
    one = MaskedPGD(steps=5, step=0.05).run(model, x, y, mask, generator=0)
    three = MaskedPGD(steps=5, step=0.05, restarts=3).run(model, x, y, mask, generator=0)
    assert bool((three.success | ~one.success).all())
    assert (three.info["best_loss"] >= one.info["best_loss"] - 1e-6).all()
    assert 1 <= three.info["restarts_run"] <= 3


def test_early_stop_keeps_per_image_success_and_stops_once_all_are_fooled(model, data):
    x, y = data
    full_image = torch.ones(len(x), 1, 32, 32)            # every image gets fooled early
    full = MaskedPGD(steps=40, step=0.05).run(model, x, y, full_image, generator=0)
    early = MaskedPGD(steps=40, step=0.05, early_stop=True).run(model, x, y, full_image, generator=0)
    assert torch.equal(early.success, full.success) and bool(full.success.all())
    assert len(early.history) < len(full.history) == 41
    small = box_mask(len(x), 0, 0, 5)                     # some images survive: same success, all steps
    full = MaskedPGD(steps=20, step=0.05).run(model, x, y, small, generator=0)
    early = MaskedPGD(steps=20, step=0.05, early_stop=True).run(model, x, y, small, generator=0)
    assert torch.equal(early.success, full.success)
    if not bool(full.success.all()):
        assert len(early.history) == len(full.history)


def test_pgd_respects_the_linf_budget_inside_the_mask(model, data):
    x, y = data
    res = MaskedPGD(eps=0.1, step=0.05, steps=5).run(model, x, y, Threat(area=0.2), generator=0)
    assert (res.x_adv - x).abs().max() <= 0.1 + 1e-6


def test_attack_leaves_model_mode_and_grad_flags_as_found(model, data):
    x, y = data
    model.train()
    model.net.f[0].weight.requires_grad_(False)
    try:
        MaskedPGD(steps=2).run(model, x, y, Threat(area=0.1))
        assert model.training
        assert not model.net.f[0].weight.requires_grad and model.net.f[-1].weight.requires_grad
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.net.f[0].weight.requires_grad_(True)
        model.eval()


def test_apgd_checkpoints_follow_croce_hein():
    # p_1 = 0.22, then gaps shrink by 0.03 down to 0.06: 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99
    assert sorted(checkpoints(100)) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_apgd_at_least_as_strong_as_pgd_at_equal_budget(model, data):
    x, y = data
    mask = box_mask(len(x), 2, 2, 7)
    pgd = MaskedPGD(eps=0.3, step=0.01, steps=20).run(model, x, y, mask, generator=0)
    apgd = MaskedAPGD(eps=0.3, step=0.1, steps=20).run(model, x, y, mask, generator=0)
    assert apgd.success_rate >= pgd.success_rate


def test_objectives_match_their_definitions():
    z = torch.tensor([[3.0, 1.0, 2.5, -1.0], [0.0, 4.0, 1.0, 0.5]])
    y, t = torch.tensor([0, 1]), torch.tensor([2, 3])
    cw, succ = objective("cw", z, y, None, kappa=0.5)          # -max(Z_y - max_{i≠y} Z_i, -κ)
    assert torch.allclose(cw, torch.tensor([-0.5, -3.0])) and not succ.any()
    lm, _ = objective("logit-margin", z, y, t)                  # Z_t - Z_y (LaVAN)
    assert torch.allclose(lm, torch.tensor([-0.5, -3.5]))
    dlr, _ = objective("dlr", z, y, None)                       # -(Z_y - max other)/(π1 - π3)
    assert torch.allclose(dlr, torch.tensor([-0.5 / 2.0, -3.0 / 3.5]))
    ce, _ = objective("ce", z, y, t)
    assert torch.allclose(ce, -nn.functional.cross_entropy(z, t, reduction="none"))


def test_best_iterate_prefers_success_then_loss():
    best = BestIterate(torch.zeros(2, 1, 1, 1))
    best.update(torch.ones(2, 1, 1, 1), torch.tensor([5.0, 1.0]), torch.tensor([False, True]))
    best.update(2 * torch.ones(2, 1, 1, 1), torch.tensor([1.0, 0.5]), torch.tensor([True, False]))
    assert best.x.flatten().tolist() == [2.0, 1.0] and best.success.all()


def test_frozen_restores_requires_grad():
    net = nn.Linear(2, 2)
    with frozen(net):
        assert not any(p.requires_grad for p in net.parameters()) and not net.training
    assert all(p.requires_grad for p in net.parameters()) and net.training


@pytest.mark.parametrize("bad, err", [
    (lambda x, y: (x * 2, y), ValueError),            # images outside [0, 1]
    (lambda x, y: (x[0], y), ValueError),             # wrong rank
    (lambda x, y: (x, y + 10), ValueError),           # labels out of range
    (lambda x, y: (x, y[:3]), ValueError),            # one label per image
    (lambda x, y: (x.numpy(), y), TypeError),         # not a tensor
    (lambda x, y: (x.repeat(1, 3, 1, 1), y), ValueError),  # wrong channels for a 1-channel model
])
def test_bad_inputs_raise_clear_errors(bad, err, model, data):
    x, y = bad(*data)
    with pytest.raises(err):
        MaskedPGD(steps=1).run(model, x, y, Threat(area=0.1))


def test_bad_settings_raise_clear_errors(model, data):
    x, y = data
    with pytest.raises(LookupError, match="available"):
        attacks.get("no-such-attack")
    with pytest.raises(ValueError, match="target"):
        MaskedPGD(steps=1).run(model, x, y, Threat(area=0.1), target=torch.full((len(x),), 99))
    with pytest.raises(ValueError, match="eps"):
        MaskedPGD(eps=0).run(model, x, y, Threat(area=0.1))
    with pytest.raises(TypeError, match="steps"):
        MaskedAPGD(steps=2.5).run(model, x, y, Threat(area=0.1))
    with pytest.raises(LookupError, match="loss"):
        MaskedPGD(loss="hinge").run(model, x, y, Threat(area=0.1))
    with pytest.raises(ValueError, match="threat mask"):
        MaskedCW().run(model, x, y, torch.ones(3, 1, 32, 32))
    with pytest.raises(ValueError, match="0 or 1"):
        LaVAN().run(model, x, y, torch.full((1, 1, 32, 32), 0.5))
    with pytest.raises(ValueError, match="DLR"):
        three = ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(1024, 3)), (0.5,), (0.5,), None,
                                ["a", "b", "c"], channels=1)
        MaskedAPGD(loss="dlr").run(three, x, y % 3, Threat(area=0.1), target=(y + 1) % 3)
    with pytest.raises(TypeError, match="threat"):
        MaskedPGD().run(model, x, y, "square")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_attacks_run_on_the_inputs_device(data):
    model = trained_model()
    x, y = data
    model.cuda()
    try:
        for make in FAST.values():
            res = make().run(model, x.cuda(), y.cuda(), Threat(area=0.1), generator=0)
            assert res.x_adv.is_cuda and res.success.is_cuda
    finally:
        model.cpu()
