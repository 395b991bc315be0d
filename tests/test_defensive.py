"""Defensive patches (Wang et al. CVPR 2022): placement, Stage-1 prior, Stage-2 training, I/O."""
import json

import pytest
import torch
from torch import nn

from patchbench.corruptions import corrupt
from patchbench.defensive import (DefensivePatch, DefensivePatchConfig, DefensivePlacement,
                                  apply_defensive_patch, physical_jitter, random_patch_like,
                                  train_class_prior, train_defensive_patch)
from patchbench.defensive.prior import prior_logits
from patchbench.defensive.train import gram_mse
from patchbench.models import ImageClassifier
from patchbench.patches import EOT

torch.set_num_threads(2)
NAMES = tuple(f"class_{i}" for i in range(4))


def tiny(seed=0, classes=4):
    """A tiny untrained conv net that keeps spatial layout (conv-ReLU then a linear layer), so any
    class can be reached by changing border pixels (global-average-pooled nets cannot always)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 256, classes))
    names = NAMES if classes == 4 else tuple(f"c{i}" for i in range(classes))
    return ImageClassifier(net, (0.5,), (0.5,), (16, 16), names, channels=1, name=f"tiny{seed}").eval()


def toy_data(n=96, hw=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, hw, hw, generator=g) * 0.6, torch.randint(0, 4, (n,), generator=g)


def acc(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("placement", [DefensivePlacement("border", width=2),
                                       DefensivePlacement("ring", width=2, margin=1),
                                       DefensivePlacement("corner", size=4),
                                       DefensivePlacement("sticker", size=6, position=(1.0, 0.5))])
def test_pixels_outside_the_placement_are_unchanged(placement):
    x, y = toy_data(8, 28)
    m = placement.mask((28, 28))
    patch = DefensivePatch(torch.rand(4, 1, 28, 28), m, NAMES, placement=placement)
    eot = EOT(rotation=0, scale=1.0, perspective=0)
    for p, photo in ((patch, None), (random_patch_like(patch, 1), eot.sample(8, torch.Generator()))):
        out = apply_defensive_patch(x, y, p, photo)
        assert torch.equal(out[:, :, m == 0], x[:, :, m == 0])
    out = apply_defensive_patch(x, y, patch)
    assert torch.equal(out[:, :, m == 1], patch.patches[y][:, :, m == 1])   # the true class's patch


def test_authors_cifar_ring_is_30x30_minus_26x26():
    m = DefensivePlacement("ring", width=2, margin=1).mask((32, 32))
    assert m.sum() == 30 * 30 - 26 * 26 and m[0].sum() == 0 and m[1, 1:31].all()


@pytest.mark.parametrize("placement", [DefensivePlacement("border", width=14),
                                       DefensivePlacement("border", width=8),
                                       DefensivePlacement("corner", size=14),
                                       DefensivePlacement("sticker", size=24)])
def test_placement_that_leaves_no_room_for_the_object_is_an_error(placement):
    with pytest.raises(ValueError, match="room|covers"):
        placement.mask((28, 28))


def test_stage1_prior_alone_is_read_as_its_class():
    model = tiny(seed=3)
    mask = DefensivePlacement("border", width=2).mask((16, 16))
    prior = train_class_prior([model], mask, range(4), 1, epochs=4, steps_per_epoch=25, lr=5e-2,
                              generator=0)
    assert prior.shape == (4, 1, 16, 16) and prior.min() >= 0 and prior.max() <= 1
    assert torch.equal(prior_logits([model], prior, mask).argmax(1), torch.arange(4))


def test_gram_loss_equals_the_materialised_ring_by_all_pixels_matrix():
    g = torch.Generator().manual_seed(0)
    z_s, z_k = torch.rand(3, 3, 10, 10, generator=g), torch.rand(3, 3, 10, 10, generator=g)
    mask = DefensivePlacement("border", width=1).mask((10, 10))
    sel = mask.reshape(-1) > 0

    def gram(z):
        a = z.reshape(3, 3, -1)
        return a[..., sel].transpose(1, 2) @ a                                  # N×R×HW
    ref = ((gram(z_s) - gram(z_k)) ** 2).mean()
    assert torch.allclose(gram_mse(z_s, z_k, mask), ref, rtol=1e-4)
    assert float(gram_mse(z_s, z_s, mask)) < 1e-6


def test_physical_jitter_is_seeded_and_keeps_shape():
    x, _ = toy_data(4, 16)
    a, b = physical_jitter(x, 5), physical_jitter(x, 5)
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)


def test_training_noise_chances_and_chunks():
    from patchbench.defensive.train import training_noise
    x, y = toy_data(32, 16)
    model = tiny(0)
    same = training_noise(x, y, model, torch.Generator().manual_seed(0), ("contrast",), 8 / 255, 1,
                          probs=(1, 0, 0))
    assert torch.equal(same, x)                                       # "no noise" only
    # corruption only, four chunks: every chunk is corrupted, with its own severity draw
    g = torch.Generator().manual_seed(0)
    chunks = [training_noise(c, yc, model, g, ("contrast",), 8 / 255, 1, probs=(0, 1, 0))
              for c, yc in zip(x.tensor_split(4), y.tensor_split(4))]
    assert all(not torch.allclose(c, xc) for c, xc in zip(chunks, x.tensor_split(4)))
    with pytest.raises(ValueError, match="noise_probs"):
        DefensivePatchConfig(noise_probs=(0, 0, 0))
    with pytest.raises(ValueError, match="noise_chunks"):
        DefensivePatchConfig(noise_chunks=0)


def test_shared_ce_trains_the_shared_patch_on_the_ensemble_cross_entropy(tmp_path):
    x, y = toy_data(64, 16)
    models = [tiny(0), tiny(1)]
    base = dict(models=("tiny_a", "tiny_b"), placement={"kind": "border", "width": 2}, epochs=2,
                batch_size=32, prior_epochs=1, prior_lr=1e-4, lam=0.0, eot=False, seed=0)
    # a weak prior (tiny lr); lam = 0: the Gram loss has no weight, so without shared_ce Stage 2
    # leaves the prior as it is, and with it the shared patch learns the ensemble's classes
    prior_only = train_defensive_patch(DefensivePatchConfig(**base), tmp_path / "a", progress=False,
                                       models=models, data=(x, y))
    with_ce = train_defensive_patch(DefensivePatchConfig(**base, shared_ce=1.0), tmp_path / "b",
                                    progress=False, models=models, data=(x, y))

    def ensemble_ce(patch):
        with torch.no_grad():
            z = apply_defensive_patch(x, y, patch)
            return sum(float(nn.functional.cross_entropy(m(z), y)) for m in models) / len(models)

    assert ensemble_ce(with_ce) < ensemble_ce(prior_only) - 0.1
    for m in models:
        before, after = (acc(m, apply_defensive_patch(x, y, p), y) for p in (prior_only, with_ce))
        assert after > before + 0.3
    with pytest.raises(ValueError, match="shared_ce"):
        DefensivePatchConfig(shared_ce=-1.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp")
    x, y = toy_data(96, 16)
    models = [tiny(0), tiny(1)]
    cfg = DefensivePatchConfig(models=("tiny_a", "tiny_b"), placement={"kind": "border", "width": 2},
                               epochs=3, batch_size=32, prior_epochs=2, prior_lr=5e-2, eot=True,
                               noise_aware=True, corruptions=("gaussian_noise", "contrast"),
                               noise_chunks=2, seed=0)
    patch = train_defensive_patch(cfg, out, progress=False, models=models, data=(x, y))
    return out, cfg, patch, models, (x, y)


def test_training_raises_accuracy_under_a_corruption(trained):
    _, _, patch, models, _ = trained
    x, y = toy_data(96, 16, seed=7)                                   # new images, same classes
    for model in models:
        plain = acc(model, corrupt(x, "gaussian_noise", 3, generator=0), y)
        shielded = acc(model, corrupt(apply_defensive_patch(x, y, patch), "gaussian_noise", 3,
                                      generator=0), y)
        control = acc(model, corrupt(apply_defensive_patch(x, y, random_patch_like(patch, 0)),
                                     "gaussian_noise", 3, generator=0), y)
        assert shielded >= plain + 0.3 and shielded >= control + 0.3


def test_save_load_round_trip_and_resume(trained):
    out, cfg, patch, models, data = trained
    for suffix in (".pt", ".png", ".json"):
        assert (out / f"defensive_patch{suffix}").is_file()
    meta = json.loads((out / "defensive_patch.json").read_text())
    assert meta["classes"] == list(NAMES) and meta["seed"] == 0 and meta["placement"]["kind"] == "border"
    back = DefensivePatch.load(out / "defensive_patch.pt")
    assert torch.equal(back.patches, patch.patches) and torch.equal(back.mask, patch.mask)
    assert back.placement == patch.placement and back.class_ids == patch.class_ids
    again = train_defensive_patch(cfg, out, progress=False, models=models, data=data)   # resumes
    assert torch.equal(again.patches, patch.patches)
    changed = DefensivePatchConfig(**{**cfg.__dict__, "lam": 2.0})
    with pytest.raises(ValueError, match="config"):
        train_defensive_patch(changed, out, progress=False, models=models, data=data)


def test_metadata_that_does_not_match_the_model_is_an_error(trained):
    _, _, patch, _, _ = trained
    patch.check_model(tiny())
    with pytest.raises(ValueError, match="classes"):
        patch.check_model(tiny(classes=5))
    with pytest.raises(LookupError, match="no patch"):
        DefensivePatch(patch.patches[:2], patch.mask, NAMES, class_ids=[0, 1]).rows(torch.tensor([3]))
    with pytest.raises(ValueError, match="images"):
        apply_defensive_patch(torch.rand(2, 1, 20, 20), torch.tensor([0, 1]), patch)


def test_evaluation_rows_controls_and_summary(trained):
    from patchbench.defensive.apply import blank_patch_like
    from patchbench.defensive.evaluate import PATCHES, evaluate_defensive_patch, summarize
    _, _, patch, models, _ = trained
    x, y = toy_data(24, 16, seed=3)
    blank = apply_defensive_patch(x, y, blank_patch_like(patch))
    m = patch.mask.bool()
    assert (blank[..., m] == 0).all() and torch.equal(blank[..., ~m], x[..., ~m])
    rows = evaluate_defensive_patch({"a": models[0], "b": models[1]}, x, y, patch, held_out={"b"},
                                    corruptions=("contrast",), severities=(3,), epsilons=(4 / 255,),
                                    pgd_steps=2, progress=False)
    # per patch: clean + 1 corruption x 1 severity for both models, then fgsm + pgd per model
    assert len(rows) == len(PATCHES) * (2 * 2 + 2 * 2) and {r["patch"] for r in rows} == set(PATCHES)
    for r in rows:
        assert r["held_out"] == (r["model"] == "b") and r["n"] == 24
    s = {d["model"]: d for d in summarize(rows)}
    clean_blank = [r["acc"] for r in rows if r["model"] == "a" and r["patch"] == "blank"
                   and r["noise"] == "clean"][0]
    assert s["a"]["clean_blank"] == clean_blank
    assert s["a"]["corr_gain_blank"] == pytest.approx(100 * (s["a"]["corr_blank"] - s["a"]["corr_none"]))
    with pytest.raises(ValueError, match="value"):
        blank_patch_like(patch, 2.0)
