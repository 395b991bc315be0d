"""TTH (Hu, Chen & Li, ICASSP 2023): the paper's claims on a tiny seeded dual encoder."""
import math

import pytest
import torch

import patchbench as pb
from patchbench.attacks.tth import TTH, diverged, qr_like, tth_threat
from patchbench.defenses import Defended
from patchbench.tasks import text_image as T

from text_image_helpers import FakeDualEncoder, NoisyPurifier, simple_match


@pytest.fixture(autouse=True)
def _match(monkeypatch):
    monkeypatch.setattr(T, "keyword_matches", simple_match)


@pytest.fixture(scope="module")
def model():
    return FakeDualEncoder()


@pytest.fixture(scope="module")
def ads():
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def e_t(model):
    return T.target_embedding(model, ["a red coat", "the coats on the left", "a blue dress"],
                              "coat")


def test_registered_on_the_text_image_task():
    a = pb.attacks.get("tth", iterations=5)
    assert isinstance(a, TTH) and a.task == "text-image" and not a.per_image
    assert "text-image" in pb.tasks.names()


def test_qr_like_start_is_binary_seeded_with_finder_squares():
    a, b, c = qr_like(21, 21, 1, 0)[0], qr_like(21, 21, 1, 0)[0], qr_like(21, 21, 1, 1)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    for r, cc in ((0, 0), (0, 14), (14, 0)):          # the three 7×7 finder squares
        f = a[r:r + 7, cc:cc + 7]
        assert f[0].sum() == 0 and f[:, 0].sum() == 0 and f[6].sum() == 0   # dark ring
        assert f[1, 1:6].eq(1).all() and f[2:5, 2:5].sum() == 0            # light ring, dark core
    assert a[7, :8].eq(1).all() and a[:8, 7].eq(1).all()                  # separator
    big = qr_like(44, 66, 3, 0)
    assert big.shape == (3, 44, 66) and torch.equal(big[0], big[2])


def test_default_patch_lands_top_right_at_035_of_the_side(model, e_t):
    x = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    res = TTH(iterations=3).run(model, x, None, None, target=e_t, generator=0)
    h = int(0.35 * 40)
    assert tuple(res.patch.shape) == (3, h, h)
    box = torch.zeros(1, 40, 40)
    box[:, :h, 40 - h:] = 1
    assert torch.equal(res.mask, box.expand(3, 1, 40, 40))
    assert tth_threat((224, 224)).patch_size((224, 224)) == (78, 78)       # int(0.35·224)
    assert tth_threat((64, 96)).patch_size((64, 96)) == (22, 34)           # 0.35·H × 0.35·W


def test_pixels_outside_the_mask_are_unchanged_and_the_patch_is_universal(model, ads, e_t):
    threat = pb.Threat(area=0.1, shape="circle", placement="random")
    res = TTH(iterations=5).run(model, ads, None, threat, target=e_t, generator=3)
    out = res.mask.expand_as(ads) == 0
    assert torch.equal(res.x_adv[out], ads[out])
    assert res.patch.dim() == 3                                              # one patch C×h×w
    again = threat.paste(ads, res.patch, res.info["placement"])[0]
    assert torch.equal(again, res.x_adv)                                    # the same on every ad


def test_loss_decreases_and_ads_move_towards_the_target(model, ads, e_t):
    res = TTH(iterations=60).run(model, ads, None, None, target=e_t, generator=0)
    assert res.history[-1] < res.history[0] - 0.1
    assert bool((res.info["cos"] > res.info["cos_clean"] + 0.1).all())
    assert res.info["trials"] == 1 and res.info["converged"]
    assert bool(res.success.all())                       # no threshold: closer than the clean ad


def test_loss_is_the_cosine_term_plus_the_init_penalty(model, ads, e_t):
    """history[1] of a 2-step run is L(p_1) = mean(1 − cos) + λ‖p_1 − p_0‖²/(H·W), p_1 the patch
    a 1-step run returns (same seed, same start)."""
    lam = 50.0
    one = TTH(iterations=1, lam=lam, lr=0.05)
    p1 = one.fit(model, ads, None, target=e_t, generator=0)
    two = TTH(iterations=2, lam=lam, lr=0.05)
    two.fit(model, ads, None, target=e_t, generator=0)
    threat = tth_threat((32, 32))
    xp = threat.paste(ads, p1, threat.sample(4, (32, 32)))[0]
    with torch.no_grad():
        cos = T.cosine_to(model.encode_image(xp), e_t)
    want = float((1 - cos).mean() + lam * (p1 - one.init_).pow(2).sum() / (32 * 32))
    assert two.history_[1] == pytest.approx(want, rel=1e-5)
    assert one.history_[0] == pytest.approx(two.history_[0])
    assert float((p1 - one.init_).abs().max()) > 0


def test_the_penalty_keeps_the_patch_near_its_qr_start(model, ads, e_t):
    free = TTH(iterations=30, lam=0.0, lr=0.05)
    tied = TTH(iterations=30, lam=1e4, lr=0.05)
    d_free = (free.fit(model, ads, None, target=e_t, generator=0) - free.init_).pow(2).sum()
    d_tied = (tied.fit(model, ads, None, target=e_t, generator=0) - tied.init_).pow(2).sum()
    assert float(d_tied) < 0.2 * float(d_free)


def test_divergence_rule():
    assert diverged(float("nan"), 0.5, False) and diverged(math.inf, 0.5, True)
    assert diverged(0.21, 0.1, False) and not diverged(0.19, 0.1, False)
    assert not diverged(0.9, 0.1, True)                  # once below 1e-4 it is never "diverged"


class _NaNFirst(torch.nn.Module):
    """An image tower that returns NaN on its first ``bad`` calls (a diverging first run)."""

    def __init__(self, inner, bad=1):
        super().__init__()
        self.inner, self.bad, self.embed_dim, self.channels = inner, bad, inner.embed_dim, 3

    def encode_image(self, x):
        z = self.inner.encode_image(x)
        if self.bad > 0:
            self.bad -= 1
            return z * float("nan")
        return z


def test_a_diverging_run_is_retried_with_a_lower_lr_and_more_steps(model, ads, e_t):
    a = TTH(iterations=10, lr=0.01)
    a.fit(_NaNFirst(model), ads, None, target=e_t, generator=0)
    assert a.trials_ == 2 and a.lr_ == pytest.approx(0.002) and a.converged_
    assert len(a.history_) == 20                         # twice the iterations
    b = TTH(iterations=10, retries=0)
    b.fit(_NaNFirst(model, bad=5), ads, None, target=e_t, generator=0)
    assert b.trials_ == 1 and not b.converged_


def test_adaptive_victim_defended_image_tower_uses_eot(model, ads, e_t):
    d = NoisyPurifier()
    victim = Defended(T.ImageEmbedder(model), d)
    res = TTH(iterations=4).run(victim, ads, None, None, target=e_t, generator=0)
    # 4 steps × 3 EOT draws in attack mode, then one draw for each of the 2 scoring passes
    assert d.calls == 4 * 3 + 2
    assert res.x_adv.shape == ads.shape


def test_threshold_sets_success_and_eligibility(model, ads, e_t):
    res = TTH(iterations=20).run(model, ads, None, None, target=e_t, threshold=0.3, generator=0)
    assert torch.equal(res.success, res.info["cos"] >= 0.3)
    assert torch.equal(res.eligible, res.info["cos_clean"] < 0.3)


def test_bad_inputs(model, ads, e_t):
    a = TTH(iterations=2)
    with pytest.raises(TypeError, match="target"):
        a.run(model, ads, None, None, target=None)
    with pytest.raises(ValueError, match="target"):
        a.run(model, ads, None, None, target=torch.ones(5))
    with pytest.raises(ValueError, match="empty"):
        a.run(model, ads[:0], None, None, target=e_t)
    with pytest.raises(ValueError, match="threat"):
        a.run(model, ads, None, pb.Threat(area=0.3, shape="rectangle", aspect=8.0), target=e_t)
    with pytest.raises(TypeError, match="threat"):
        a.run(model, ads, None, torch.ones(4, 1, 32, 32), target=e_t)
    with pytest.raises(TypeError, match="model"):
        a.run(object(), ads, None, None, target=e_t)
    for kw in ({"lr": 0}, {"retries": -1}, {"iterations": 0}, {"lam": -1}, {"modules": 7},
               {"lr_gamma": 1.5}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            TTH(**kw)
    with pytest.raises(ValueError, match="patch"):
        a.apply(model, ads, None, None, torch.rand(3, 5, 5), target=e_t)


# ---- the stronger attacker: one patch per ad, one target per ad (not the paper's) ---------------
def test_per_ad_patches_differ_and_leave_pixels_outside_their_masks_unchanged(model, ads, e_t):
    res = TTH(iterations=20, lr=0.05, patches="per-ad").run(model, ads, None, None, target=e_t,
                                                             generator=0)
    assert tuple(res.patch.shape) == (4, 3, 11, 11)
    out = res.mask.expand_as(ads) == 0
    assert torch.equal(res.x_adv[out], ads[out])
    assert not torch.equal(res.patch[0], res.patch[1])          # each ad trained its own patch
    again = tth_threat((32, 32)).paste(ads, res.patch, res.info["placement"])[0]
    assert torch.equal(again, res.x_adv)


def test_per_ad_patches_fit_the_target_at_least_as_well_as_one_universal_patch(model, ads, e_t):
    kw = dict(iterations=60, lr=0.05, lam=0.0)
    uni = TTH(**kw).run(model, ads, None, None, target=e_t, generator=0)
    per = TTH(patches="per-ad", **kw).run(model, ads, None, None, target=e_t, generator=0)
    assert float(per.info["cos"].mean()) >= float(uni.info["cos"].mean()) - 1e-3


def test_per_ad_penalty_is_the_mean_of_the_patches_penalties(model, ads, e_t):
    lam = 50.0
    one = TTH(iterations=1, lam=lam, lr=0.05, patches="per-ad")
    p1 = one.fit(model, ads, None, target=e_t, generator=0)
    two = TTH(iterations=2, lam=lam, lr=0.05, patches="per-ad")
    two.fit(model, ads, None, target=e_t, generator=0)
    threat = tth_threat((32, 32))
    xp = threat.paste(ads, p1, threat.sample(4, (32, 32)))[0]
    with torch.no_grad():
        cos = T.cosine_to(model.encode_image(xp), e_t)
    want = float((1 - cos).mean() + lam * (p1 - one.init_).pow(2).sum() / (4 * 32 * 32))
    assert two.history_[1] == pytest.approx(want, rel=1e-5)


def test_assign_targets_is_a_greedy_permutation_on_the_cosine():
    from patchbench.attacks.tth import assign_targets
    t = torch.eye(3)
    clean = torch.tensor([[0.0, 0.9, 0.1], [0.0, 1.0, 0.0], [1.0, 0.0, 0.2]])
    perm = assign_targets(clean, t)
    # ad 1 is the closest pair (target 1), then ad 2 → target 0, ad 0 takes what is left
    assert perm.tolist() == [2, 1, 0]
    assert sorted(assign_targets(torch.randn(6, 3), torch.nn.functional.normalize(
        torch.randn(6, 3), dim=1)).tolist()) == list(range(6))


def test_one_target_per_ad_pulls_each_ad_to_its_own_target(model, ads):
    g = torch.Generator().manual_seed(5)
    targets = torch.nn.functional.normalize(torch.randn(4, model.embed_dim, generator=g), dim=1)
    res = TTH(iterations=80, lr=0.05, lam=0.0, patches="per-ad").run(
        model, ads, None, None, target=targets, generator=0)
    rows = res.info["target"]
    assert tuple(rows.shape) == (4, model.embed_dim)
    match = (rows @ targets.T).argmax(1)                       # a permutation of the targets
    assert sorted(match.tolist()) == [0, 1, 2, 3]
    assert torch.allclose(rows, targets[match], atol=1e-6)
    with torch.no_grad():
        z = model.encode_image(res.x_adv)
    own = (z * rows).sum(1)
    assert bool((own > res.info["cos_clean"]).all())
    assert torch.allclose(res.info["cos"], own, atol=1e-5)
    with pytest.raises(ValueError, match="4 ad images"):
        TTH(iterations=1).run(model, ads, None, None, target=targets[:3], generator=0)


def test_target_clusters_are_unit_centres_of_the_keyword_captions(model):
    caps = ["a red coat", "a red coat on the left", "a blue coat", "the blue coats",
            "a green coat in the scene", "a green coat", "a red dress"]
    c = T.target_clusters(model, caps, "coat", 3, generator=0)
    assert tuple(c.shape) == (3, model.embed_dim)
    assert torch.allclose(c.norm(dim=1), torch.ones(3), atol=1e-5)
    with torch.no_grad():
        emb = torch.nn.functional.normalize(model.encode_text(caps[:6]), dim=1)
    # every keyword caption is closest to one centre, and each centre is the normalised mean of
    # the captions closest to it (k-means' fixed point)
    a = (emb @ c.T).argmax(1)
    for j in range(3):
        if (a == j).any():
            want = torch.nn.functional.normalize(emb[a == j].mean(0), dim=0)
            assert torch.allclose(c[j], want, atol=1e-4)
    assert torch.equal(c, T.target_clusters(model, caps, "coat", 3, generator=0))   # seeded
    with pytest.raises(ValueError, match="at least 7"):
        T.target_clusters(model, caps, "coat", 7)
    with pytest.raises(ValueError, match="none of"):
        T.target_clusters(model, caps, "bag", 2)


def test_stronger_options_are_checked():
    with pytest.raises(LookupError, match="patches"):
        TTH(patches="each")
    with pytest.raises(LookupError, match="targets"):
        TTH(targets="median")


def test_a_per_ad_patch_set_fits_its_own_ads_only(model, ads, e_t):
    a = TTH(iterations=2, patches="per-ad")
    p = a.fit(model, ads, None, target=e_t, generator=0)
    with pytest.raises(ValueError, match="one per ad image"):
        a.apply(model, ads[:3], None, None, p, target=e_t)
