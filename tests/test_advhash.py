"""AdvHash (Hu et al., ACM MM 2021) on a toy hasher: the paper's claims on small inputs — one
universal patch that changes nothing outside its mask, trained by AdvHash's loss (tanh(α·H), bit
weights, α switch, sign steps, product-weighted aggregation), pulls the patched queries' codes to
the target anchor; adaptive runs go through ``Defended`` with EOT / BPDA."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from patchbench import attacks
from patchbench.attacks import AdvHash
from patchbench.attacks._common import uniform
from patchbench.defenses import JPEG, Defended, Defense
from patchbench.patches import Threat
from patchbench.tasks import retrieval as R
from patchbench._validation import make_generator

from retrieval_helpers import BITS, S, ToyHasher, calc_top_map, toy_images

FIXED = Threat(area=0.1, placement=(0.5, 0.5))
TARGET = 2


@pytest.fixture(scope="module")
def world():
    h = ToyHasher().eval()
    dbx, dby = toy_images(20, 1)
    db = h.codes(dbx)
    return h, db, dby, R.anchor(db, dby, TARGET)


def _others(n, seed):
    x, y = toy_images(n, seed)
    keep = y != TARGET
    return x[keep], y[keep]


def test_advhash_is_a_registered_universal_retrieval_attack():
    a = attacks.get("advhash")
    assert isinstance(a, AdvHash) and a.task == "retrieval" and a.per_image is False
    # the authors' defaults (patch_attack.py): 1000 iterations per mini-batch of 10, 5 epochs,
    # α 0.01 → 1 above a mean product of 0.9 per bit, margin 0.3, steps of 1/255, last 2 averaged
    assert (a.iterations, a.batch_size, a.epochs, a.average_last) == (1000, 10, 5, 2)
    assert (a.alpha_low, a.alpha_high, a.alpha_switch, a.converged) == (0.01, 1.0, 0.9, 0.3)
    assert a.step == pytest.approx(1 / 255) and a.aggregation == "product"


@pytest.mark.parametrize("threat", [FIXED, Threat(area=0.1)], ids=["fixed", "random"])
def test_pixels_outside_the_mask_are_unchanged_and_one_patch_serves_every_query(world, threat):
    h, _, _, c = world
    x, y = _others(4, 2)
    res = AdvHash(iterations=5, epochs=1).run(h, x, y, threat, target=TARGET, target_code=c,
                                              generator=0)
    outside = (res.mask == 0).expand_as(x)
    assert torch.equal(res.x_adv[outside], x[outside])
    assert res.patch.shape == (3, *threat.patch_size((S, S)))      # one C×h×w patch
    ph, pw = res.patch.shape[-2:]
    tl = res.info["placement"].top_left.round().long()
    for i in range(x.shape[0]):       # every query carries exactly that patch
        x0, y0 = int(tl[i, 0]), int(tl[i, 1])
        assert torch.equal(res.x_adv[i, :, y0:y0 + ph, x0:x0 + pw], res.patch)
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1


def test_same_seed_same_patch(world):
    h, _, _, c = world
    x, y = _others(3, 2)
    a = AdvHash(iterations=4, epochs=1).run(h, x, y, FIXED, target=TARGET, target_code=c, generator=7)
    b = AdvHash(iterations=4, epochs=1).run(h, x, y, FIXED, target=TARGET, target_code=c, generator=7)
    assert torch.equal(a.patch, b.patch) and torch.equal(a.x_adv, b.x_adv)


def _loss_at_alpha_1(h, x, patch, code):
    params = FIXED.sample(x.shape[0], (S, S), generator=0)
    with torch.no_grad():
        shares, _ = R.advhash_shares(h(FIXED.paste(x, patch, params)[0]), code, 1.0)
    return -float(shares.sum())


def test_the_trained_patch_lowers_the_loss_and_pulls_queries_to_the_target(world):
    h, db, dby, c = world
    xtr, ytr = _others(10, 3)          # training images of other classes (the paper: 50)
    xte, yte = _others(10, 4)          # held-out queries (the paper: 100)
    adv = AdvHash(iterations=40, epochs=2)
    patch = adv.fit(h, (xtr, ytr), FIXED, target=TARGET, target_code=c, generator=0)
    rand = uniform(patch.shape, make_generator(11), "cpu")
    assert _loss_at_alpha_1(h, xtr, patch, c) < _loss_at_alpha_1(h, xtr, rand, c) - 0.1
    assert max(adv.products_[-5:]) > adv.products_[0]           # codes agree with c_t more
    res = adv.apply(h, xte, yte, FIXED, patch, target=TARGET, target_code=c, generator=1)
    tl = torch.full((len(yte),), TARGET)
    clean_t = calc_top_map(h.codes(xte), db, tl, dby, 40)
    adv_t = calc_top_map(h.codes(res.x_adv), db, tl, dby, 40)
    rand_t = calc_top_map(h.codes(FIXED.paste(xte, rand, res.info["placement"])[0]), db, tl, dby, 40)
    assert adv_t > clean_t + 0.1 and adv_t > rand_t + 0.1, (clean_t, rand_t, adv_t)
    assert torch.equal(res.success, res.info["hamming"] <= 2)
    assert torch.equal(res.info["hamming"], R.hamming(h.codes(res.x_adv), c))


class FixedOutput(nn.Module):
    """A 'hasher' whose output is one fixed row for every image (plus 0·x, to stay in the graph)."""

    def __init__(self, row):
        super().__init__()
        self.row, self.bits, self.channels = row, row.numel(), 3

    def forward(self, x):
        return self.row.expand(x.shape[0], -1) + 0 * x.mean((1, 2, 3))[:, None]


@pytest.mark.parametrize("agree,alpha", [(31, 1.0), (30, 0.01)])
def test_alpha_is_one_once_the_mean_product_per_bit_exceeds_0_9(monkeypatch, agree, alpha):
    code = torch.ones(32)
    row = torch.full((32,), 0.1)         # |tanh(0.1) − 1| ≥ 0.3: no bit has converged
    row[agree:] = -0.1                   # product per bit (agree − (32 − agree)) / 32: 0.94, 0.88
    seen = []
    real = R.advhash_shares
    monkeypatch.setattr(R, "advhash_shares", lambda h, c, a, m: seen.append(a) or real(h, c, a, m))
    x = torch.rand(2, 3, S, S)
    AdvHash(iterations=3, epochs=1).fit(FixedOutput(row), (x, torch.zeros(2, dtype=torch.long)),
                                        FIXED, target=code, generator=0)
    assert seen == [alpha] * 3


def test_a_batch_whose_codes_all_equal_the_target_stops_at_once(world):
    code = torch.ones(BITS)
    x = torch.rand(3, 3, S, S)
    adv = AdvHash(iterations=50, epochs=3)
    patch = adv.fit(FixedOutput(torch.full((BITS,), 0.2)), (x, torch.zeros(3, dtype=torch.long)),
                    FIXED, target=code, generator=0)
    assert adv.history_ == [] and adv.products_ == [1.0]    # early stop after the first epoch
    g = make_generator(0)
    torch.randperm(3, generator=g)
    assert torch.equal(patch, uniform(patch.shape, g, "cpu"))   # the initial patch, untouched


def test_one_step_is_the_sign_of_the_weighted_gradients(world):
    """patch ← clamp(patch − sign(Σ a_i ∇L_i)/255): a_i = p_i + |min p| + 2 (the authors'
    grad_aggregation) or 1 (mean); with average_last=2 the result is the mean of start and step."""
    h, _, _, c = world
    x, y = _others(2, 5)
    n = x.shape[0]
    g = make_generator(3)
    order = torch.randperm(n, generator=g)
    p0 = uniform((3, *FIXED.patch_size((S, S))), g, "cpu")
    xs = x[order]
    params = FIXED.sample(n, (S, S), generator=0)
    p = p0.clone().requires_grad_(True)
    out = h(FIXED.paste(xs, p, params)[0])
    prod = R.binarize(out.detach()) @ c
    shares, _ = R.advhash_shares(out, c, R.ALPHA_LOW if float(prod.mean()) / BITS <= 0.9 else 1.0)
    grads = [torch.autograd.grad(shares[i], p, retain_graph=True)[0] for i in range(n)]
    weights = {"product": prod + prod.min().abs() + 2, "mean": torch.ones(n)}
    want = {k: (p0 + sum(ai * gi for ai, gi in zip(a, grads)).sign() / 255).clamp(0, 1)
            for k, a in weights.items()}
    assert not torch.equal(want["product"], want["mean"])      # the two rules differ here
    for aggregation, step in want.items():
        for last, expect in ((1, step), (2, (p0 + step) / 2)):
            adv = AdvHash(iterations=1, epochs=1, batch_size=n, aggregation=aggregation,
                          average_last=last)
            got = adv.fit(h, (x, y), FIXED, target=TARGET, target_code=c, generator=3)
            assert torch.allclose(got, expect, atol=1e-6), (aggregation, last)


class CountingNoise(Defense):
    """A randomised toy purifier that counts its calls."""

    randomized, eot_samples, name = True, 3, "counting-noise"

    def __init__(self):
        super().__init__()
        self.calls, self.gen = 0, torch.Generator().manual_seed(0)

    def purify(self, x):
        self.calls += 1
        return (x + torch.rand(x.shape, generator=self.gen) * 0.1 - 0.05).clamp(0, 1)


def test_adaptive_advhash_averages_eot_draws_of_a_randomised_defense(world):
    h, _, _, c = world
    x, y = _others(3, 6)
    d = CountingNoise()
    victim = Defended(h, d)
    assert victim.bits == BITS and victim.channels == 3 and victim.eot_samples == 3
    adv = AdvHash(iterations=6, epochs=1)
    adv.fit(victim, (x, y), FIXED, target=TARGET, target_code=c, generator=0)
    assert d.calls == 3 * len(adv.products_)           # h_adv draws per step (PAIR eq. (4))
    d.calls = 0
    adv.apply(victim, x, y, FIXED, adv.patch_, target=TARGET, target_code=c, generator=0)
    assert d.calls == 2                                # scoring: one deployed draw per pass


def test_adaptive_advhash_passes_a_non_differentiable_defense_by_bpda(world):
    h, _, _, c = world
    x, y = _others(3, 6)
    adv = AdvHash(iterations=3, epochs=1, average_last=1)
    jpeg = adv.fit(Defended(h, JPEG(quality=60)), (x, y), FIXED, target=TARGET, target_code=c,
                   generator=0)
    g = make_generator(0)
    torch.randperm(x.shape[0], generator=g)
    start = uniform(jpeg.shape, g, "cpu")
    assert (jpeg - start).abs().max() > 0.5 / 255      # gradients reached the patch


# ---- bad input -------------------------------------------------------------------------------------
def test_a_query_of_the_target_class_is_refused(world):
    h, _, _, c = world
    x, y = toy_images(2, 2)
    with pytest.raises(ValueError, match=r"target.*images \[4, 5\]"):
        AdvHash(iterations=1, epochs=1).run(h, x, y, FIXED, target=TARGET, target_code=c)
    multi = torch.zeros(len(y), 4)
    multi[0, [0, TARGET]] = 1
    multi[1:, 1] = 1
    with pytest.raises(ValueError, match=r"images \[0\].*contains the target"):
        AdvHash(iterations=1, epochs=1).run(h, x, multi, FIXED, target=TARGET, target_code=c)


def test_bad_targets_raise_clear_errors(world):
    h, _, _, c = world
    x, y = _others(2, 2)
    run = AdvHash(iterations=1, epochs=1).run
    with pytest.raises(ValueError, match="targeted"):
        run(h, x, y, FIXED)
    with pytest.raises(ValueError, match="target_code"):
        run(h, x, y, FIXED, target=TARGET)
    with pytest.raises(ValueError, match="±1"):
        run(h, x, y, FIXED, target=c * 0.5)
    with pytest.raises(ValueError, match="16 bits"):
        run(h, x, y, FIXED, target=TARGET, target_code=torch.ones(8))
    with pytest.raises(ValueError, match="one target class"):
        run(h, x, y, FIXED, target=torch.tensor([2, 3, 2, 2, 2, 2]), target_code=c)
    with pytest.raises(ValueError, match="either"):
        run(h, x, y, FIXED, target=c, target_code=c)


def test_a_patch_bigger_than_the_image_and_bad_options_raise():
    h = ToyHasher()
    x, y = _others(1, 2)
    with pytest.raises(ValueError, match="does not fit"):
        AdvHash(iterations=1, epochs=1).run(h, x, y, Threat(area=0.5, shape="rectangle", aspect=4),
                                            target=torch.ones(BITS))
    with pytest.raises(TypeError, match="Threat"):
        AdvHash(iterations=1, epochs=1).run(h, x, y, torch.ones(1, 1, S, S), target=torch.ones(BITS))
    with pytest.raises(ValueError, match="step"):
        AdvHash(step=0)
    with pytest.raises(LookupError, match="aggregation"):
        AdvHash(aggregation="max")
    with pytest.raises(ValueError, match="iterations"):
        AdvHash(iterations=0)


def test_a_model_with_the_wrong_output_is_refused():
    x, y = _others(1, 2)
    with pytest.raises(ValueError, match="expected 8 bits"):
        AdvHash(iterations=1, epochs=1).run(ToyHasher(bits=8), x, y, FIXED, target=torch.ones(BITS))
    liar = ToyHasher(bits=8)
    liar.bits = BITS                     # says 16, returns 8
    with pytest.raises(ValueError, match="8 bits but the target code has 16"):
        AdvHash(iterations=1, epochs=1).run(liar, x, y, FIXED, target=torch.ones(BITS))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_advhash_runs_on_cuda(world):
    h, _, _, c = world
    x, y = _others(2, 2)
    res = AdvHash(iterations=3, epochs=1).run(ToyHasher().cuda().eval(), x.cuda(), y.cuda(), FIXED,
                                              target=TARGET, target_code=c.cuda(), generator=0)
    assert res.x_adv.device.type == "cuda" and res.patch.device.type == "cuda"
