"""PAIR (ACM MM 2024) and MAEDefense: the masked autoencoder, the two defenses, SSIM, training."""
import numpy as np
import pytest
import torch

from patchbench.data import registry as data_registry
from patchbench.defenses import BuildContext, Defended, build
from patchbench.defenses.pair import MAEDefense, PAIR
from patchbench.models.base import ImageClassifier
from patchbench.models.mae import (MaskedAutoencoder, fixed_token_mask, load_mae, random_token_mask,
                                   save_mae)
from patchbench.training import pair as tp

TINY = dict(dim=32, depth=1, heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2)


def _mae(size=32, patch=8, channels=3, seed=0, **kw):
    torch.manual_seed(seed)
    return MaskedAutoencoder(image_size=size, patch_size=patch, channels=channels,
                             **{**TINY, **kw}).eval()


def _x(n=3, size=32, channels=3, seed=1):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


class CopyingGenerator(MaskedAutoencoder):
    """The worst generator for a purifier: it copies every visible pixel and paints masked tokens
    a constant grey. Whatever PAIR's output keeps of the input, this one would pass through."""

    def reconstruct(self, x, masked):
        if masked is None:
            return x.clone()
        m = self.pixel_mask(masked).to(x)
        return x * (1 - m) + 0.5 * m


# ---------------------------------------------------------------------- the masked autoencoder
@torch.no_grad()
def test_mae_reconstructs_every_pixel_in_range_at_rgb_and_grey_sizes():
    mae = _mae(64, 8)
    assert mae.num_tokens == 64 and mae.grid == (8, 8)
    out = mae(_x(2, 64), random_token_mask(2, 64, 0.5, generator=0))
    assert out.shape == (2, 3, 64, 64) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert PAIR(_mae()).eval()(_x(2).double()).dtype == torch.float64
    grey = _mae(28, 7, channels=1)
    assert grey(_x(2, 28, 1)).shape == (2, 1, 28, 28) and grey.num_tokens == 16
    t = mae.patchify(_x(2, 64))
    assert t.shape == (2, 64, 192) and torch.equal(mae.unpatchify(t), _x(2, 64))


@pytest.mark.parametrize("encoder_tokens", ["visible", "all"])
@pytest.mark.parametrize("sampling", ["bernoulli", "exact"])
def test_mae_output_does_not_depend_on_masked_tokens(encoder_tokens, sampling):
    mae = _mae(encoder_tokens=encoder_tokens, pos_embed="sincos-2d")
    x = _x(4)
    masked = random_token_mask(4, mae.num_tokens, 0.5, generator=3, sampling=sampling)
    pm = mae.pixel_mask(masked).expand_as(x).bool()
    y = x.clone()
    y[pm] = torch.rand(int(pm.sum()), generator=torch.Generator().manual_seed(9))
    assert torch.equal(mae(x, masked), mae(y, masked))
    assert not torch.equal(mae(x, masked), mae(y, torch.zeros_like(masked)))


def test_padded_bernoulli_batch_matches_images_one_at_a_time():
    mae = _mae()
    x = _x(5)
    masked = random_token_mask(5, mae.num_tokens, 0.5, generator=4)
    assert len(set(masked.sum(1).tolist())) > 1          # unequal counts: the padded path
    batch = mae(x, masked)
    single = torch.cat([mae(x[i:i + 1], masked[i:i + 1]) for i in range(5)])
    assert torch.allclose(batch, single, atol=1e-5)


def test_random_token_mask_respects_the_ratio_and_the_seed():
    exact = random_token_mask(50, 64, 0.25, generator=1, sampling="exact")
    assert exact.dtype == torch.bool and set(exact.sum(1).tolist()) == {16}
    bern = random_token_mask(400, 64, 0.3, generator=1)              # eq. 6, P(masked) = α
    assert abs(float(bern.float().mean()) - 0.3) < 0.01 and len(set(bern.sum(1).tolist())) > 5
    assert torch.equal(bern, random_token_mask(400, 64, 0.3, generator=1))
    assert not torch.equal(bern, random_token_mask(400, 64, 0.3, generator=2))
    for bad in (0, 1, 1.5, -0.2):
        with pytest.raises(ValueError, match="ratio"):
            random_token_mask(2, 64, bad)


def test_mae_bad_inputs():
    with pytest.raises(ValueError, match="patch_size: 5 does not divide"):
        MaskedAutoencoder(image_size=64, patch_size=5)
    mae = _mae()
    with pytest.raises(ValueError, match="built for 3×32×32 images, got 3×64×64"):
        mae(_x(1, 64))
    with pytest.raises(ValueError, match="got 1×32×32"):
        mae(_x(1, 32, 1))
    with pytest.raises(ValueError, match="masked: expected shape 2×16"):
        mae(_x(2), torch.zeros(2, 15, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        mae(_x(2), torch.zeros(2, 16))
    with pytest.raises(ValueError, match="heads"):
        MaskedAutoencoder(image_size=32, patch_size=8, dim=30, heads=4)


# ---------------------------------------------------------------------- PAIR's claims
def test_two_passes_leave_no_input_pixel_even_with_a_copying_generator():
    gen = CopyingGenerator(image_size=32, patch_size=8, **TINY)
    x = _x(3)
    masked = random_token_mask(3, gen.num_tokens, 0.5, generator=5)
    out2 = PAIR(gen, passes=2).apply(x, masked)
    assert torch.equal(out2, torch.full_like(x, 0.5))      # every input pixel is gone (§4.2 Step 3)
    out1 = PAIR(gen, passes=1).apply(x, masked)
    kept = gen.pixel_mask(~masked).expand_as(x).bool()
    assert kept.any() and torch.equal(out1[kept], x[kept])  # one pass lets visible pixels through


def test_pair_discards_the_first_pass_masked_pixels_and_differentiates_both_passes():
    mae = _mae()
    x = _x(2).requires_grad_(True)
    masked = random_token_mask(2, mae.num_tokens, 0.5, generator=6, sampling="exact")
    w = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    (PAIR(mae).apply(x, masked) * w).sum().backward()
    pm = mae.pixel_mask(masked).expand_as(x).bool()
    assert torch.equal(x.grad[pm], torch.zeros_like(x.grad[pm]))    # pixels under M: discarded
    assert float(x.grad[~pm].abs().min()) >= 0 and float(x.grad[~pm].abs().mean()) > 0
    ref = x.detach().clone().requires_grad_(True)
    (mae.reconstruct(mae.reconstruct(ref, masked), ~masked) * w).sum().backward()
    assert torch.allclose(x.grad, ref.grad)                # exact = through both passes


def test_bpda_identity_passes_the_gradient_unchanged_with_the_same_forward():
    mae = _mae()
    x = _x(2).requires_grad_(True)
    d = PAIR(mae, gradient="bpda-identity", seed=3)
    w = torch.randn_like(x)
    out = d.purify(x)
    (out * w).sum().backward()
    assert torch.equal(x.grad, w)
    assert torch.allclose(out, PAIR(mae, seed=3).purify(x.detach()))


def test_pair_is_randomised_seeded_and_eot_draws_fresh_masks():
    mae = _mae()
    x = _x(2)
    d = PAIR(mae, seed=11)
    assert d.randomized and d.eot_samples == 7
    with torch.no_grad():
        a, b = d(x), d(x)
        assert not torch.equal(a, b)                                 # a fresh mask per call
        assert torch.equal(a, PAIR(mae, seed=11)(x))                 # the same seed, the same draws
        assert not torch.equal(a, PAIR(mae, seed=12)(x))
    calls = []
    orig = mae.reconstruct
    mae.reconstruct = lambda z, m: calls.append(m.clone()) or orig(z, m)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
    clf = ImageClassifier(net, [0.5] * 3, [0.25] * 3, None, list("abcd"), 3)
    target = Defended(clf, d)
    target.attack_mode = True
    target(x.requires_grad_(True)).sum().backward()
    assert len(calls) == 14                                         # h_adv = 7 draws × 2 passes
    firsts = calls[0::2]
    assert all(torch.equal(calls[2 * i + 1], ~firsts[i]) for i in range(7))   # inverted (eq. 13)
    assert len({tuple(m.flatten().tolist()) for m in firsts}) == 7


def test_fixed_and_unmasked_ablations_are_deterministic():
    mae = _mae()
    x = _x(2)
    fixed = PAIR(mae, mask="fixed", mask_seed=4)
    assert not fixed.randomized and fixed.eot_samples == 1
    with torch.no_grad():
        assert torch.equal(fixed(x), fixed(x))
        want = fixed_token_mask(mae.num_tokens, 0.5, 4).expand(2, -1)
        assert torch.equal(fixed(x), fixed.apply(x, want))
        plain = PAIR(mae, mask="none")
        assert torch.equal(plain(x), mae(x)) and not plain.randomized and plain.passes == 1


def test_mae_defense_blends_the_complementary_reconstruction_with_the_input():
    gen = CopyingGenerator(image_size=32, patch_size=8, **TINY)
    x = _x(3)
    d = MAEDefense(gen, seed=0)
    masked = d.sample_masks(3)
    # each token comes from the pass that hid it (the grey constant here), then (rec + x) / 2
    assert torch.allclose(d.apply(x, masked), (0.5 + x) / 2)
    mae = _mae()
    first, second = mae(x, masked), mae(x, ~masked)
    m = mae.pixel_mask(masked)
    want = 0.5 * (first * m + second * (1 - m)) + 0.5 * x
    assert torch.allclose(MAEDefense(mae).apply(x, masked), want)
    assert MAEDefense(mae).randomized and MAEDefense(mae).eot_samples == 7


def test_pair_bad_inputs():
    mae = _mae()
    for bad in (0, 1, 1.2):
        with pytest.raises(ValueError, match="mask_ratio"):
            PAIR(mae, mask_ratio=bad)
    with pytest.raises(ValueError, match="passes"):
        PAIR(mae, passes=3)
    with pytest.raises(ValueError, match="passes: mask='none'"):
        PAIR(mae, mask="none", passes=2)
    with pytest.raises(LookupError, match="mask"):
        MAEDefense(mae, mask="none")
    with pytest.raises(LookupError, match="gradient"):
        PAIR(mae, gradient="bpda-sigmoid")
    with pytest.raises(TypeError, match="masked autoencoder"):
        PAIR(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="trained on 32×32 images, got 64×64"):
        PAIR(mae)(_x(1, 64))
    with pytest.raises(ValueError, match="takes 3 channels, got 1"):
        MAEDefense(mae)(_x(1, 32, 1))
    with pytest.raises(ValueError, match="masked: expected shape"):
        PAIR(mae).apply(_x(2), torch.zeros(3, 16, dtype=torch.bool))


# ---------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_settings_and_size_errors(tmp_path):
    mae = _mae()
    path = save_mae(mae, tmp_path / "g.pt", dict(mask="fixed", mask_ratio=0.25, sampling="exact",
                                                 mask_seed=2), note="test")
    ctx = BuildContext(image_size=(32, 32), channels=3, artifacts={"pair": path})
    d = build("pair", ctx, checkpoint="@pair")
    assert (d.mask, d.mask_ratio, d.sampling, d.passes) == ("fixed", 0.25, "exact", 2)
    assert not any(p.requires_grad for p in d.parameters())
    x = _x(2)
    with torch.no_grad():
        assert torch.equal(d(x), PAIR(mae, mask="fixed", mask_ratio=0.25, sampling="exact",
                                      mask_seed=2)(x))
    assert build("pair", ctx, checkpoint="@pair", mask="random").randomized
    none = save_mae(mae, tmp_path / "none.pt", dict(mask="none", mask_ratio=0.5))
    assert PAIR.load(none).passes == 1 and PAIR.load(none, mask="random").passes == 2
    assert build("mae-defense", ctx, checkpoint=path).mask_ratio == 0.25
    assert isinstance(build("pair", ctx, model=mae), PAIR)
    with pytest.raises(ValueError, match="trained for 32×32 images, but 64×64"):
        build("pair", BuildContext(image_size=(64, 64), artifacts={"pair": path}),
              checkpoint="@pair")
    with pytest.raises(ValueError, match="3-channel images, but 1"):
        PAIR.load(path, channels=1)
    with pytest.raises(ValueError, match="context's are 64×64"):
        build("pair", BuildContext(image_size=(64, 64)), model=mae)
    with pytest.raises(ValueError, match="needs a trained masked autoencoder"):
        build("pair", ctx)
    with pytest.raises(TypeError, match="unexpected keyword"):
        PAIR.load(path, window=3)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        PAIR.load(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        PAIR.load(tmp_path / "missing.pt")
    assert load_mae(path)[2]["note"] == "test"
    bad = save_mae(mae, tmp_path / "bad.pt", dict(mask="random", mask_ratio=2.0))
    with pytest.raises(ValueError, match="bad.pt: invalid saved pair setting: mask_ratio"):
        PAIR.load(bad)


# ---------------------------------------------------------------------- SSIM (eqs. 15–16)
def test_ssim_matches_torchmetrics_and_a_per_patch_reference():
    from torchmetrics.image import StructuralSimilarityIndexMeasure
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g)
    y = (x + 0.2 * torch.randn(3, 3, 32, 32, generator=g)).clamp(0, 1)
    ref = StructuralSimilarityIndexMeasure(data_range=1.0)(y, x)
    assert abs(float(tp.ssim(x, y)) - float(ref)) < 1e-5
    assert abs(float(tp.ssim(x, x)) - 1) < 1e-6 and float(tp.ssim(x, 1 - x)) < 0
    a, b, vals = x.double().numpy(), y.double().numpy(), []
    for n, c, i, j in np.ndindex(3, 3, 4, 4):          # eq. 16 on each 8×8 patch, c1/c2 of §5.1
        p, q = a[n, c, 8 * i:8 * i + 8, 8 * j:8 * j + 8], b[n, c, 8 * i:8 * i + 8, 8 * j:8 * j + 8]
        cov = ((p - p.mean()) * (q - q.mean())).mean()
        vals.append((2 * p.mean() * q.mean() + 1e-4) * (2 * cov + 9e-4)
                    / ((p.mean() ** 2 + q.mean() ** 2 + 1e-4) * (p.var() + q.var() + 9e-4)))
    assert abs(float(tp.ssim(x, y, "patch", 8)) - float(np.mean(vals))) < 1e-5
    xr = x.clone().requires_grad_(True)
    tp.ssim(xr, y, "patch", 8).backward()
    assert torch.isfinite(xr.grad).all() and xr.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="patch_size"):
        tp.ssim(x, y, "patch", 5)
    with pytest.raises(ValueError, match="shape"):
        tp.ssim(x, y[:, :, :16])


# ---------------------------------------------------------------------- training
def _squares(split, stop, size=32):
    """Coloured squares on grey canvases: structure a tiny MAE can learn in a few steps."""
    n = stop or 96
    g = torch.Generator().manual_seed(0)
    x = torch.full((n, 3, size, size), 0.4)
    for i in range(n):
        s = int(torch.randint(6, 16, (1,), generator=g))
        r, c = torch.randint(0, size - s, (2,), generator=g).tolist()
        x[i, :, r:r + s, c:c + s] = torch.rand(3, 1, 1, generator=g)
    return x, torch.zeros(n, dtype=torch.long)


@pytest.fixture(scope="module")
def squares():
    data_registry._register_builtins()
    data_registry.register(data_registry.DatasetSpec(
        "pair-test-squares", _squares, {"train": 96}, 3, (32, 32), (0.4,) * 3, (0.2,) * 3, 1))
    yield "pair-test-squares"
    data_registry._DATASETS.pop("pair-test-squares", None)


def _cfg(dataset, **kw):
    base = dict(dataset=dataset, n_train=64, n_val=32, batch_size=16, pretrain_epochs=1, epochs=1,
                mae_options=TINY, semantic_size=32, progress=False, lr_pretrain=3e-3, lr=1e-3)
    return tp.PairTrainConfig(**{**base, **kw})


def test_pretraining_lowers_the_held_out_reconstruction_error(squares, tmp_path):
    path = tp.train_pair(_cfg(squares, pretrain_epochs=4, epochs=0), tmp_path)
    hist = torch.load(tmp_path / "train_state.pt", weights_only=True)["history"]
    assert path.endswith("mae_pretrained.pt") and len(hist) == 4
    assert hist[-1]["val_mse_pass1"] < 0.7 * hist[0]["val_mse_pass1"]
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_resume_after_an_interruption_gives_the_same_weights(squares, tmp_path, monkeypatch):
    cfg = _cfg(squares, pretrain_epochs=1, epochs=2, mask="fixed", semantic_loss_pass=2)
    full = load_mae(tp.train_pair(cfg, tmp_path / "a"))[0].state_dict()
    calls, real = [], tp._run_epoch

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 3:                  # dies in stage 2's second epoch: Adam's state resumes
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tp, "_run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tp.train_pair(cfg, tmp_path / "b")
    monkeypatch.setattr(tp, "_run_epoch", real)
    assert not (tmp_path / "b" / "pair_final.pt").exists()
    argv = ["--out", str(tmp_path / "b"), "--dataset", squares, "--n-train", "64", "--n-val", "32",
            "--batch-size", "16", "--pretrain-epochs", "1", "--epochs", "2", "--mask", "fixed",
            "--semantic-loss-pass", "2", "--semantic-size", "32", "--no-progress"]
    with pytest.raises(ValueError, match="different config"):        # mae_options differ
        tp.main_train_pair(argv)
    toml = tmp_path / "c.toml"
    toml.write_text("[pair]\nmae_options = {dim = 32, depth = 1, heads = 2, decoder_dim = 32, "
                    "decoder_depth = 1, decoder_heads = 2}\nlr_pretrain = 3e-3\nlr = 1e-3\n")
    assert tp.main_train_pair(argv + ["--config", str(toml)]) == 0
    resumed = load_mae(tmp_path / "b" / "pair_final.pt")[0].state_dict()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    d = PAIR.load(tmp_path / "b" / "pair_final.pt")
    assert d.mask == "fixed" and not d.randomized


def test_pair_loss_is_the_paper_sum_and_decreases(squares):
    cfg = _cfg(squares, beta=1.0)
    mae = _mae()
    x = _squares("train", 16)[0]
    sem = tp.SemanticFeatures(size=32)
    masked = random_token_mask(16, mae.num_tokens, 0.5, generator=0)
    loss, l_p, l_s = tp.pair_loss(mae, x, masked, cfg, sem)
    first = mae(x, masked)
    assert torch.allclose(l_p, 1 - tp.ssim(x, first, "patch", 8), atol=1e-6)
    cos = torch.nn.functional.cosine_similarity(sem(first), sem(x)).mean()
    assert torch.allclose(l_s, 1 - cos, atol=1e-6) and torch.allclose(loss, l_p + l_s)
    opt = torch.optim.Adam(mae.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = tp.pair_loss(mae.train(), x, masked, cfg, sem)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_training_config_bad_inputs():
    for kw, match in ((dict(mask_ratio=1.0), "mask_ratio"),
                      (dict(mask="none", semantic_loss_pass=2), "no second pass"),
                      (dict(pretrain_epochs=0, epochs=0), "at least one epoch"),
                      (dict(ssim_window="box"), "ssim_window"), (dict(beta=-1), "beta")):
        with pytest.raises((ValueError, LookupError), match=match):
            tp.PairTrainConfig(**kw)


def test_a_text_image_model_is_d_its_image_tower_embedding():
    """PAIR's D for text-to-image search (§5.1: CLIP's image encoder) is the dual encoder's
    image tower: D(x) = encode_image(x), unit vectors at the tower's own input size."""
    sem = tp.SemanticFeatures("dual_encoder_fmnist_scenes", size=128)
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = sem(x)
        want = sem.clf.encode_image(x)
        grey = sem(x[:, :1])
    assert sem.kind == "text-image" and tuple(got.shape) == (2, sem.clf.embed_dim)
    assert torch.allclose(got, want) and torch.allclose(got.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(grey, sem.clf.encode_image(x[:, :1].expand(-1, 3, -1, -1)))
    assert not any(p.requires_grad for p in sem.parameters())
    sem.train()
    assert not sem.clf.training                         # frozen, BatchNorm statistics too
    xr = x.clone().requires_grad_(True)
    sem(xr).sum().backward()                            # differentiable in the image (eq. 17)
    assert xr.grad is not None and float(xr.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="hasher model"):
        tp.SemanticFeatures("csq_fmnist_objects_64")
