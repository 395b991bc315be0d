"""Issue 12, attacks and patches: every public entry point gives a clear error for bad input and
never a wrong answer — targeted attacks refuse target == label, success agrees with
``metrics.success_rate``, constructor parameters reject Inf/NaN, and the reported crashes are gone."""
import math

import numpy as np
import pytest
import torch

import patchbench as pb
from patchbench import _validation, attacks, metrics
from patchbench.attacks import LaVAN, MaskedCW, MaskedPGD, UniversalPatch
from patchbench.attacks.face import FacePatch
from patchbench.patches import (EOT, BoxPlacement, FixedPlacement, RandomPlacement, Threat,
                                apply_photometric, fit_shape, shape_mask)

torch.set_num_threads(1)

HW = 16
FAST = {"masked-pgd": dict(steps=2), "masked-apgd": dict(steps=2), "masked-cw": dict(steps=2),
        "lavan": dict(steps=2), "universal-patch": dict(epochs=1, batch_size=4),
        "fgsm": dict(), "pgd-linf": dict(steps=2)}
THREAT = Threat(area=0.1)


@pytest.fixture(scope="module")
def model():
    return pb.models.load("tiny_cnn", channels=3, num_classes=5, seed=3)


@pytest.fixture(scope="module")
def data(model):
    g = torch.Generator().manual_seed(0)      # coloured noise: the untrained net predicts 2 classes
    x = torch.rand(6, 3, 1, 1, generator=g) * 0.8 + 0.2 * torch.rand(6, 3, HW, HW, generator=g)
    with torch.no_grad():
        pred = model(x).argmax(1)
    return x, pred


def fast(name):
    return attacks.get(name, **FAST[name])


def test_every_registered_attack_has_a_fast_setting():
    # these checks are for classification attacks; the face-hiding patch has its own
    # (tests/test_face_attack.py, tests/test_tasks.py)
    classification = {n for n in attacks.names() if attacks.get(n).task == "classification"}
    assert classification <= set(FAST), "add the new attack to FAST"


# ---- item 3: target == label ------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FAST))
def test_a_targeted_attack_refuses_a_target_equal_to_the_label(name, model, data):
    x, pred = data
    with pytest.raises(ValueError, match=r"target.*label for images \[0"):
        fast(name).run(model, x, pred, THREAT, target=pred if name != "universal-patch"
                       else torch.full_like(pred, int(pred[0])))


def test_the_refusal_names_only_the_offending_images(model, data):
    x, pred = data
    target = (pred + 1) % 5
    target[[1, 4]] = pred[[1, 4]]
    with pytest.raises(ValueError, match=r"images \[1, 4\]"):
        MaskedPGD(steps=2).run(model, x, pred, THREAT, target=target)


def test_a_universal_patch_may_train_on_images_of_the_target_class(model, data):
    x, pred = data
    t = int(pred[0])
    patch = UniversalPatch(epochs=1, batch_size=4).fit(model, (x, pred), THREAT, target=t)
    with pytest.raises(ValueError, match="target"):
        UniversalPatch().apply(model, x, pred, THREAT, patch, target=t)
    keep = pred != t
    res = UniversalPatch().apply(model, x[keep], pred[keep], THREAT, patch, target=t)
    assert res.success.shape == (int(keep.sum()),)


def test_metrics_success_rate_leaves_target_equal_label_samples_out():
    y = torch.tensor([0, 1, 2, 3])
    rate = metrics.success_rate(y, torch.tensor([0, 1, 0, 0]), y, target=torch.tensor([0, 1, 0, 0]))
    assert (rate.k, rate.n) == (2, 2)          # samples 0 and 1 (target == label) do not count
    assert math.isnan(metrics.success_rate(y, y, y, target=y).value)
    assert metrics.success_rate(y, torch.tensor([2, 2, 2, 2]), y, target=2).n == 3   # int target


# ---- success agrees with metrics.success_rate ---------------------------------------------------
@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("name", sorted(FAST))
def test_success_is_true_of_x_adv_and_the_rate_agrees_with_metrics(name, targeted, model, data):
    x, pred = data
    y = pred.clone()
    y[::2] = (y[::2] + 2) % 5                      # half the images are misclassified when clean
    target = None
    if targeted:
        free = sorted(set(range(5)) - set(y.tolist()))
        target = (torch.full_like(y, free[0]) if free else (y + 1) % 5)
        if name == "universal-patch" and not free:
            pytest.skip("no class free for a universal target")
    res = fast(name).run(model, x, y, THREAT, target=target, generator=0)
    with torch.no_grad():
        adv = model(res.x_adv).argmax(1)
    assert torch.equal(res.success, adv != y if target is None else adv == target)
    expected = metrics.success_rate(pred, adv, y, target)
    assert (res.rate.k, res.rate.n) == (expected.k, expected.n)
    assert res.rate.n == int((pred == y).sum()) == 3
    assert res.success_rate == expected.value or (math.isnan(res.success_rate)
                                                  and math.isnan(expected.value))
    assert torch.equal(res.eligible, pred == y)


def test_a_hand_made_result_counts_every_image():
    r = attacks.AttackResult(torch.zeros(2, 1, 2, 2), None, torch.zeros(2, 1, 2, 2),
                             torch.tensor([True, False]))
    assert r.success_rate == 0.5 and r.rate.n == 2


# ---- item 5: Inf/NaN and wrong types in constructors ---------------------------------------------
BAD_NUMBERS = {
    "masked-pgd": ("eps", "step"), "masked-apgd": ("eps", "step", "rho", "alpha"),
    "masked-cw": ("confidence", "lr", "l2_weight"), "lavan": ("step", "lr"),
    "universal-patch": ("lr", "tv_weight", "nps_weight"),
}


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, "0.1", None, True])
@pytest.mark.parametrize("name, param", [(n, p) for n, ps in BAD_NUMBERS.items() for p in ps])
def test_constructors_reject_non_finite_and_non_numbers(name, param, value):
    with pytest.raises((ValueError, TypeError), match=param):
        attacks.get(name, **{param: value})


def test_masked_cw_with_an_infinite_l2_weight_is_refused_not_run(model, data):
    x, pred = data
    with pytest.raises(ValueError, match="l2_weight"):
        MaskedCW(l2_weight=float("inf"))
    atk = MaskedCW(steps=2)
    atk.l2_weight = float("nan")                  # changed after construction: run checks again
    with pytest.raises(ValueError, match="l2_weight"):
        atk.run(model, x, pred, THREAT)


@pytest.mark.parametrize("name, param", [(n, p) for n in ("masked-pgd", "masked-apgd", "masked-cw",
                                                           "lavan") for p in ("steps", "restarts")]
                         + [("universal-patch", "epochs"), ("universal-patch", "batch_size")])
def test_counts_must_be_integers_of_at_least_one(name, param):
    for bad in (0, -1, 2.5, "3", math.inf):
        with pytest.raises((ValueError, TypeError), match=param):
            attacks.get(name, **{param: bad})


def test_names_of_losses_and_optimizers_are_looked_up():
    with pytest.raises(LookupError, match="loss"):
        MaskedPGD(loss="hinge")
    with pytest.raises(LookupError, match="optimizer"):
        UniversalPatch(optimizer="sgd")
    with pytest.raises(TypeError, match="random_start"):
        MaskedPGD(random_start="no")               # a truthy string is not False
    with pytest.raises(TypeError, match="eot"):
        LaVAN(eot="rotate")


def test_valid_parameters_are_stored_normalised():
    a = MaskedPGD(eps=1, steps=3.0)
    assert a.eps == 1.0 and isinstance(a.eps, float) and a.steps == 3 and isinstance(a.steps, int)


# ---- the rest of the crashes ------------------------------------------------------------------
@pytest.mark.parametrize("seed", ["3", 2 ** 70, -1, 1.5, np.random.default_rng(0)])
@pytest.mark.parametrize("name", sorted(FAST))
def test_bad_seeds_name_the_generator(name, seed, model, data):
    x, pred = data
    with pytest.raises((TypeError, ValueError), match="generator"):
        fast(name).run(model, x, pred, THREAT, generator=seed)


def test_numpy_integer_seeds_and_targets_work(model, data):
    x, pred = data
    a = MaskedPGD(steps=2).run(model, x, pred, THREAT, generator=np.int64(4))
    b = MaskedPGD(steps=2).run(model, x, pred, THREAT, generator=4)
    assert torch.equal(a.x_adv, b.x_adv)
    free = sorted(set(range(5)) - set(pred.tolist()))[0]
    r = MaskedPGD(steps=2).run(model, x, pred, THREAT, target=np.int64(free))
    assert torch.equal(r.info["targets"], torch.full((len(x),), free))


@pytest.mark.parametrize("name", ["masked-cw", "masked-pgd", "lavan"])
def test_attacks_on_requires_grad_images_match_the_detached_run(name, model, data):
    x, pred = data
    xg = x.clone().requires_grad_(True)
    res = fast(name).run(model, xg, pred, THREAT, generator=1)
    ref = fast(name).run(model, x, pred, THREAT, generator=1)
    assert torch.equal(res.x_adv, ref.x_adv) and not res.x_adv.requires_grad and xg.grad is None


def test_universal_patch_refuses_a_mask_as_the_threat(model, data):
    x, pred = data
    mask = torch.ones(1, 1, HW, HW)
    with pytest.raises(TypeError, match="threat.*mask tensor"):
        UniversalPatch(epochs=1).run(model, x, pred, mask)
    with pytest.raises(TypeError, match="threat"):
        UniversalPatch(epochs=1).fit(model, (x, pred), mask)
    with pytest.raises(TypeError, match="threat"):
        LaVAN(universal=True, epochs=1).run(model, x, pred, mask)


def test_universal_patch_refuses_labels_of_the_wrong_length(model, data):
    x, pred = data
    with pytest.raises(ValueError, match="y: expected 6 labels"):
        UniversalPatch(epochs=1).run(model, x, pred[:2], THREAT)
    with pytest.raises(ValueError, match="labels"):
        UniversalPatch(epochs=1).fit(model, (x, pred[:2]), THREAT)


def test_universal_patch_apply_checks_the_patch_size(model, data):
    x, pred = data
    with pytest.raises(ValueError, match="patch: expected a universal patch 3×"):
        UniversalPatch().apply(model, x, pred, THREAT, torch.rand(3, HW + 4, HW + 4))


def test_the_border_shape_on_one_pixel_images():
    with pytest.raises(ValueError, match="does not fit a 1×1 image"):
        Threat(area=0.5, shape="border").masks(torch.rand(1, 3, 1, 1))
    with pytest.raises(ValueError, match="1×5"):
        Threat(area=0.5, shape="border").masks(torch.rand(1, 3, 1, 5))
    # a (nearly) full-image border is the whole 1-px-high image
    m = Threat(area=0.99, shape="border").masks(torch.rand(2, 3, 1, 50))
    assert torch.equal(m, torch.ones(2, 1, 1, 50))
    assert fit_shape("border", 0.99, (1, 1)).ring_width == 1.0
    assert torch.equal(Threat(area=0.99, shape="border").masks(torch.rand(1, 1, 1, 1)),
                       torch.ones(1, 1, 1, 1))


def test_the_border_shape_keeps_its_sizes_on_ordinary_images():
    assert fit_shape("border", 0.1, (32, 32)) == fit_shape("border", 0.1, (32.0, 32.0))
    assert shape_mask("border", 3, 3).sum() == 8


def test_unknown_keywords_of_a_registered_attack_are_named():
    with pytest.raises(TypeError, match=r"'steps'.*accepts: epochs, batch_size"):
        attacks.get("universal-patch", steps=2)
    with pytest.raises(TypeError, match="'stepz'"):
        attacks.get("masked-pgd", stepz=2)
    with pytest.raises(LookupError, match="available"):
        attacks.get("masked-pdg")
    assert attacks.get("Masked_PGD", steps=3).steps == 3


def test_shapes_placements_and_threats_reject_bad_values():
    with pytest.raises(ValueError, match="area"):
        Threat(area=math.nan)
    with pytest.raises(TypeError, match="area"):
        Threat(area="0.1")
    with pytest.raises(TypeError, match="aspect"):
        Threat(shape="rectangle", aspect="2")      # a string is not a number, even "2"
    with pytest.raises((TypeError, ValueError), match="image_hw"):
        fit_shape("square", 0.1, (32.5, 32))       # not silently truncated to 32
    with pytest.raises(ValueError, match="FixedPlacement x"):
        FixedPlacement(math.nan, 0.5)
    with pytest.raises(TypeError, match="boxes"):
        BoxPlacement("x1 y1 x2 y2")
    with pytest.raises(ValueError, match="does not fit"):
        RandomPlacement().sample(2, (16, 16), (20, 20))        # a patch bigger than the image
    with pytest.raises(TypeError, match="EOT scale"):
        EOT(scale="ab")
    with pytest.raises(ValueError, match="EOT scale"):
        EOT(scale=(0.5, 1.0, 2.0))
    with pytest.raises(ValueError, match="EOT blur"):
        EOT(blur=math.inf)


def test_jitter_helpers_reject_non_tensors_at_their_entry():
    params = EOT().sample(1, generator=0)
    with pytest.raises(TypeError, match="patch"):
        apply_photometric([[0.5]], params.photometric)
    with pytest.raises(TypeError, match="params"):
        apply_photometric(torch.rand(1, 3, 4, 4), "bright")
    with pytest.raises(TypeError, match="params"):
        EOT().apply_photometric(torch.rand(1, 3, 4, 4), None)


class _NoDetector:
    def candidates(self, *a, **k):            # never reached: the checkpoint is read first
        raise AssertionError("the detector ran before the checkpoint was checked")


def test_face_patch_fit_names_a_garbage_checkpoint(tmp_path):
    bad = tmp_path / "patch.ckpt"
    bad.write_bytes(b"\x00garbage, not a torch file" * 10)
    x = torch.rand(1, 3, 32, 32)
    boxes = [torch.tensor([[4.0, 4.0, 28.0, 28.0]])]
    with pytest.raises(ValueError, match=r"checkpoint: .*patch\.ckpt"):
        FacePatch(epochs=1, patch_size=8).fit(_NoDetector(), x, boxes, checkpoint=bad)
    torch.save({"patch": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="missing"):
        FacePatch(epochs=1, patch_size=8).fit(_NoDetector(), x, boxes, checkpoint=bad)
    with pytest.raises(ValueError, match="directory"):
        FacePatch(epochs=1, patch_size=8).fit(_NoDetector(), x, boxes, checkpoint=tmp_path)
    with pytest.raises(TypeError, match="detector"):
        FacePatch(epochs=1).fit(object(), x, boxes)


def test_face_patch_rejects_non_finite_selection_rules():
    for kw in (dict(delta=math.nan), dict(m=1.5), dict(gamma=math.inf), dict(iou_face=-0.1),
               dict(iou_patch="x"), dict(stages=("pnet", "xnet")), dict(stages=())):
        with pytest.raises((ValueError, TypeError), match=next(iter(kw))):
            FacePatch(**kw)


def test_metrics_reject_bad_predictions_clearly():
    y = torch.tensor([0, 1])
    with pytest.raises(TypeError, match="pred"):
        metrics.accuracy("01", y)
    with pytest.raises(TypeError, match="pred"):
        metrics.accuracy(torch.tensor([True, False]), y)
    with pytest.raises(ValueError, match="pred"):
        metrics.accuracy(torch.tensor([-1, 0]), y)
    with pytest.raises(ValueError, match="NaN"):
        metrics.accuracy(torch.tensor([[math.nan, 0.0], [0.0, 1.0]]), y)
    with pytest.raises(ValueError, match="same number"):
        metrics.success_rate(torch.tensor([0, 1, 1]), y, y)
    assert metrics.wilson_interval(np.int64(5), np.int64(10)) == metrics.wilson_interval(5, 10)
    with pytest.raises(TypeError, match="model"):
        metrics.clean_accuracy(3, torch.rand(2, 3, 4, 4), y)


# ---- item 4 of the brief: attack loops trust their validated inputs ----------------------------
class _Recorder(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.trusted = net, []
        self.num_classes, self.channels = net.num_classes, net.channels

    def forward(self, x):
        self.trusted.append(_validation._TRUSTED.get())
        return self.net(x)


@pytest.mark.parametrize("name", sorted(FAST))
def test_attack_loops_run_inside_trusted_inputs(name, model, data):
    x, pred = data
    rec = _Recorder(model)
    fast(name).run(rec, x, pred, THREAT)
    assert rec.trusted and all(rec.trusted)
    assert not _validation._TRUSTED.get()
