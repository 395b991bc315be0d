"""CSQ (Yuan et al., CVPR 2020): Hadamard hash centres, the loss, the Hasher protocol, checkpoints,
and the resumable trainer."""
import dataclasses
import json

import pytest
import torch

import patchbench as pb
from patchbench.models import csq as C
from patchbench.models.hashing import (Hasher, csq_loss, hadamard_centres, hadamard_matrix,
                                       multilabel_centres, random_centres, sign_codes)
from patchbench.models.weights import MANIFEST


def hamming(a, b):
    return (a[:, None, :] != b[None, :, :]).sum(-1)


def tiny(size=32, bits=16, seed=0, **kw):
    """A random-init narrow CSQ hasher (fast; the shipped one uses the ImageNet backbone)."""
    return C.build_csq(bits, size, pretrained=False, width_mult=0.25, seed=seed, **kw)


# ---------------------------------------------------------------- centres (§3.2)
@pytest.mark.parametrize("bits", [8, 16, 64])
def test_hadamard_rows_are_pairwise_half_the_bits_apart(bits):
    h = hadamard_matrix(bits)
    assert torch.equal(h @ h.T, bits * torch.eye(bits))
    scipy_linalg = pytest.importorskip("scipy.linalg")
    assert torch.equal(h, torch.from_numpy(scipy_linalg.hadamard(bits)).float())
    c = hadamard_centres(min(10, bits), bits)
    d = hamming(c, c)
    off = ~torch.eye(c.shape[0], dtype=torch.bool)
    assert (d[off] == bits // 2).all() and set(c.unique().tolist()) == {-1.0, 1.0}


def test_up_to_twice_the_bits_classes_use_h_and_minus_h():
    c = hadamard_centres(100, 64)
    assert c.shape == (100, 64) and torch.equal(c[:64], hadamard_matrix(64))
    assert torch.equal(c[64:], -hadamard_matrix(64)[:36])
    d = hamming(c, c)[~torch.eye(100, dtype=torch.bool)]
    assert set(d.unique().tolist()) == {32, 64}                 # 64 only between a row and its negation
    assert int((d == 64).sum()) == 2 * 36


def test_more_classes_get_random_balanced_centres_with_a_minimum_distance():
    c = hadamard_centres(200, 64, seed=1)
    assert c.shape == (200, 64) and (c.sum(1) == 0).all()     # bits/2 entries −1 each
    d = hamming(c, c)[~torch.eye(200, dtype=torch.bool)]
    assert int(d.min()) >= 20
    assert torch.equal(c, hadamard_centres(200, 64, seed=1))
    assert not torch.equal(c, hadamard_centres(200, 64, seed=2))
    r = random_centres(30, 16, min_distance=6, seed=0)
    assert int(hamming(r, r)[~torch.eye(30, dtype=torch.bool)].min()) >= 6
    with pytest.raises(ValueError, match="min_distance"):
        random_centres(40, 16, min_distance=15, max_tries=20)


def test_hadamard_centres_need_a_power_of_two():
    with pytest.raises(ValueError, match=r"bits: Hadamard centres need a power of two .*got 48"):
        hadamard_centres(10, 48)
    with pytest.raises(ValueError, match="power of two"):
        hadamard_matrix(12)
    assert hadamard_centres(100, 48).shape == (100, 48)        # > 2·bits: random, any length


def test_multilabel_centre_is_the_sign_of_the_mean_with_ties_filled():
    c = hadamard_centres(10, 16)
    labels = torch.zeros(3, 10, dtype=torch.long)
    labels[0, 2] = 1
    labels[1, [2, 5]] = 1
    labels[2, [1, 2, 5]] = 1
    t = multilabel_centres(labels, c, ties="random", seed=3)
    assert torch.equal(t[0], c[2])
    agree = c[2] == c[5]
    assert torch.equal(t[1][agree], c[2][agree])                 # where both agree: their bit
    fill = t[1][~agree]
    p = multilabel_centres(labels, c, ties="positive")
    assert (p[1][~agree] == 1).all() and torch.equal(p[1][agree], c[2][agree])
    assert torch.equal(multilabel_centres(labels, c, ties="random", seed=3)[1][~agree], fill)
    assert torch.equal(t[2], sign_codes(c[[1, 2, 5]].sum(0)))    # three labels: no tie possible
    assert torch.equal(multilabel_centres(torch.tensor([4, 0]), c), c[[4, 0]])
    with pytest.raises(ValueError, match=r"labels: image\(s\) \[0\] have no label"):
        multilabel_centres(torch.zeros(1, 10), c)
    with pytest.raises(ValueError, match="labels: expected N×10"):
        multilabel_centres(torch.zeros(2, 7), c)
    with pytest.raises(ValueError, match="0..9"):
        multilabel_centres(torch.tensor([10]), c)


# ---------------------------------------------------------------- loss (§3.3)
def test_csq_loss_is_bce_on_tanh_outputs_plus_quantisation():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(5, 16, generator=g)
    c = hadamard_centres(5, 16)
    u = h.tanh()
    ref = torch.nn.functional.binary_cross_entropy((u + 1) / 2, (c + 1) / 2) + \
        0.3 * ((u.abs() - 1) ** 2).mean()
    assert torch.allclose(csq_loss(h, c, lam=0.3), ref, atol=1e-6)
    ref_lc = torch.nn.functional.binary_cross_entropy((u + 1) / 2, (c + 1) / 2) + \
        0.3 * torch.log(torch.cosh(u.abs() - 1)).mean()
    assert torch.allclose(csq_loss(h, c, lam=0.3, quantization="logcosh"), ref_lc, atol=1e-6)
    assert torch.isfinite(csq_loss(torch.full((2, 16), 60.0), -hadamard_centres(2, 16)))


def test_csq_loss_decreases_and_the_codes_reach_their_centres():
    c = hadamard_centres(4, 16)
    h = torch.zeros(4, 16).normal_(0, 0.1, generator=torch.Generator().manual_seed(0)).requires_grad_()
    opt = torch.optim.Adam([h], lr=0.1)
    losses = []
    for _ in range(60):
        loss = csq_loss(h, c)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.2 * losses[0] and all(b <= a + 1e-6 for a, b in zip(losses, losses[1:]))
    assert torch.equal(sign_codes(h.detach()), c)


def test_csq_loss_refuses_codes_that_are_not_plus_minus_one():
    with pytest.raises(ValueError, match="target_centres: hash codes must be ±1"):
        csq_loss(torch.zeros(2, 4), torch.tensor([[1.0, 0.0, 1.0, -1.0]] * 2))
    with pytest.raises(ValueError, match="target_centres: expected a N×4"):
        csq_loss(torch.zeros(2, 4), hadamard_centres(2, 8))
    with pytest.raises(ValueError, match="one centre per output"):
        csq_loss(torch.zeros(2, 4), hadamard_centres(3, 4))


# ---------------------------------------------------------------- the Hasher protocol
def test_hasher_outputs_codes_and_gradients_wrt_the_image():
    hasher = tiny()
    assert isinstance(hasher, Hasher) and hasher.bits == 16 and hasher.channels == 3
    assert hasher.input_size == (32, 32) and hasher.centres.shape == (10, 16)
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1)).requires_grad_()
    h = hasher(x)
    assert h.shape == (5, 16)
    h.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    codes = hasher.codes(x.detach(), batch_size=2)
    assert codes.shape == (5, 16) and set(codes.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(codes, sign_codes(hasher(x.detach()).detach()))
    assert torch.equal(sign_codes(torch.tensor([0.0, -0.0, -1e-9, 2.0])),
                       torch.tensor([1.0, 1.0, -1.0, 1.0]))
    assert hasher.codes(torch.rand(0, 3, 32, 32)).shape == (0, 16)
    assert hasher(torch.rand(2, 3, 48, 48)).shape == (2, 16)     # other sizes are resized inside


def test_frozen_blocks_stay_in_eval_mode_and_out_of_the_gradient():
    hasher = tiny(trainable_from=10).train()
    net = hasher.net
    assert all(not m.training for i in range(10) for m in net.features[i].modules())
    assert all(m.training for i in range(10, 19) for m in net.features[i].modules())
    assert not any(p.requires_grad for p in net.features[:10].parameters())
    assert all(k.startswith(tuple(f"features.{i}." for i in range(10, 19)) + ("head.",))
               for k in net.trained_keys())


@pytest.mark.parametrize("x,error,match", [
    (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), TypeError, "x: .*uint8"),
    (torch.full((2, 3, 32, 32), 2.0), ValueError, r"x: values must lie in \[0, 1\]"),
    (torch.rand(2, 1, 32, 32), ValueError, "x: expected images N×3×H×W"),
    (torch.rand(3, 32, 32), ValueError, "x: expected .*N×.×H×W, got shape"),
    ([[0.5]], TypeError, "x: expected a torch.Tensor"),
])
def test_bad_images_are_refused_by_forward_and_codes(x, error, match):
    hasher = tiny()
    with pytest.raises(error, match=match):
        hasher(x)
    with pytest.raises(error, match=match):
        hasher.codes(x)
    with pytest.raises(ValueError, match="batch_size"):
        hasher.codes(torch.rand(1, 3, 32, 32), batch_size=0)


# ---------------------------------------------------------------- checkpoints and the zoo
def test_a_saved_hasher_reloads_identically_and_other_sizes_are_refused(tmp_path):
    hasher = tiny(size=64, bits=64, seed=2)
    path = C.save_hasher(hasher, tmp_path / "h.pt", {"name": "t"})
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    again = pb.models.load("csq_fmnist_objects_64", weights=path)
    assert isinstance(again, Hasher) and not again.training
    assert torch.equal(again(x), hasher(x)) and torch.equal(again.centres, hasher.centres)
    small = C.save_hasher(tiny(size=32, bits=64), tmp_path / "small.pt")
    with pytest.raises(ValueError, match=r"small.pt is a hasher for 32×32 images, but 64×64"):
        pb.models.load("csq_fmnist_objects_64", weights=small)
    short = C.save_hasher(tiny(size=64, bits=16), tmp_path / "short.pt")
    with pytest.raises(ValueError, match="16-bit codes, but 64 bits"):
        pb.models.load("csq_fmnist_objects_64", weights=short)
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a patchbench hasher checkpoint"):
        C.load_csq(tmp_path / "plain.pt")
    with pytest.raises(FileNotFoundError):
        C.load_csq(tmp_path / "missing.pt")


def test_a_pretrained_checkpoint_stores_only_the_trained_part(tmp_path):
    hasher = C.build_csq(64, 64, trainable_from=18)            # the ImageNet MobileNetV2 backbone
    path = C.save_hasher(hasher, tmp_path / "h.pt")
    obj = torch.load(path, weights_only=True)
    assert sorted(obj["state_dict"]) == sorted(hasher.net.trained_keys())
    assert obj["backbone_sha256"] == C.KNOWN_SHA256[C.BACKBONE_FILE]
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(C.load_csq(path)(x), hasher(x))
    obj["backbone_sha256"] = "0" * 64
    torch.save(obj, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="trained on a backbone with sha256 0000"):
        C.load_csq(tmp_path / "other.pt")
    obj["backbone_sha256"] = C.KNOWN_SHA256[C.BACKBONE_FILE]
    obj["state_dict"].pop("head.1.bias")
    torch.save(obj, tmp_path / "cut.pt")
    with pytest.raises(ValueError, match="missing key.*head.1.bias"):
        C.load_csq(tmp_path / "cut.pt")


def test_the_shipped_hasher_loads_by_name_and_is_listed_as_a_hasher():
    assert "csq_fmnist_objects_64" in pb.models.names(kind="hasher")
    assert "csq_fmnist_objects_64" not in pb.models.names(kind="classifier")
    assert (MANIFEST.parent / "csq_fmnist_objects_64.pt").is_file(), "the asset is not shipped"
    assert (MANIFEST.parent / "csq_fmnist_objects_64.pt").stat().st_size <= 5_000_000
    hasher = pb.models.load("csq_fmnist_objects_64")
    assert isinstance(hasher, Hasher) and hasher.bits == 64 and hasher.input_size == (64, 64)
    assert torch.equal(hasher.centres, hadamard_centres(10, 64))
    x, y = pb.data.load_dataset("fmnist-objects", split="query", n=40)
    codes = hasher.codes(x)
    # most query codes are nearest to their class's Hadamard centre (0.85 on the 1000 queries)
    assert float((hamming(codes, hasher.centres).argmin(1) == y).float().mean()) > 0.6
    # AdvHash's anchor, the sign of the sum of a class's database codes, is the class's centre
    xd, yd = pb.data.load_dataset("fmnist-objects", split="database", n=300)
    db = hasher.codes(xd)
    anchors = torch.stack([sign_codes(db[yd == c].sum(0)) for c in range(10)])
    assert torch.equal(anchors, hasher.centres)


# ---------------------------------------------------------------- training
def _cfg(**kw):
    from patchbench.training.hasher import HasherTrainConfig
    base = dict(pretrained=False, width_mult=0.25, image_size=32, n_train=48, bits=16,
                trainable_from=12, epochs=2, batch_size=16, n_database=40, n_query=20, map_k=40,
                progress=False, seed=0)
    return HasherTrainConfig(**{**base, **kw})


def test_a_killed_training_run_resumes_to_the_same_weights(tmp_path):
    from patchbench.training.hasher import train_hasher
    full = train_hasher(_cfg(), tmp_path / "full")
    train_hasher(_cfg(epochs=1), tmp_path / "cut")                # "killed" after epoch 1
    resumed = train_hasher(_cfg(), tmp_path / "cut")
    a, b = torch.load(full, weights_only=True), torch.load(resumed, weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["meta"]["history"] == b["meta"]["history"] and len(a["meta"]["history"]) == 2
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert 0 <= metrics["map_query"] <= 1 and metrics["k"] == 40
    with pytest.raises(ValueError, match="another hasher config"):
        train_hasher(_cfg(lr=5e-3), tmp_path / "full")
    loaded = C.load_csq(full, input_size=32, bits=16)
    assert loaded.bits == 16 and loaded.input_size == (32, 32)


def test_the_cli_trains_a_multilabel_hasher(tmp_path, capsys):
    from patchbench.cli import main
    rc = main(["train", "hasher", "--out", str(tmp_path), "--dataset", "fmnist-scenes",
               "--random-init", "--width-mult", "0.25", "--image-size", "32", "--n-train", "32",
               "--bits", "16", "--epochs", "1", "--trainable-from", "14", "--n-database", "30",
               "--n-query", "10", "--no-progress"])
    assert rc == 0 and "mAP@30 query" in capsys.readouterr().out
    assert (tmp_path / "hasher.pt").is_file() and (tmp_path / "train_state.pt").is_file()


@pytest.mark.parametrize("kw,error,match", [
    (dict(dataset="cifar"), LookupError, "HasherTrainConfig.dataset"),
    (dict(bits=0), ValueError, "HasherTrainConfig.bits"),
    (dict(trainable_from=20), ValueError, "HasherTrainConfig.trainable_from"),
    (dict(pretrained=True, width_mult=0.5), ValueError, "HasherTrainConfig.width_mult"),
    (dict(quantization="l1"), LookupError, "HasherTrainConfig.quantization"),
    (dict(image_size=16), ValueError, "HasherTrainConfig.image_size"),
])
def test_bad_training_configs_are_named(kw, error, match):
    with pytest.raises(error, match=match):
        _cfg(**kw)


def test_the_map_helper_matches_a_hand_count():
    from patchbench.training.hasher import calc_top_map as map_at_k
    db = torch.tensor([[1., 1.], [1., -1.], [-1., -1.], [1., 1.]])
    dbl = torch.tensor([0, 1, 1, 0])
    q = torch.tensor([[1., 1.]])
    # ranking: 0 (d 0), 3 (d 0), 1 (d 1), 2 (d 2); relevant class 0 → hits at ranks 1, 2 → AP 1
    assert map_at_k(q, torch.tensor([0]), db, dbl, k=4) == 1.0
    # class 1: hits at ranks 3, 4 → AP = (1/3 + 2/4) / 2
    assert abs(map_at_k(q, torch.tensor([1]), db, dbl, k=4) - (1 / 3 + 2 / 4) / 2) < 1e-6
    assert map_at_k(q, torch.tensor([1]), db, dbl, k=2) == 0.0       # none in the top 2: AP 0
    assert dataclasses.is_dataclass(_cfg())


def test_the_map_helper_agrees_with_the_metrics_module():
    metrics = pytest.importorskip("patchbench.metrics.retrieval")
    from patchbench.training.hasher import calc_top_map
    g = torch.Generator().manual_seed(0)
    q = sign_codes(torch.randn(30, 8, generator=g))
    db = sign_codes(torch.randn(120, 8, generator=g))          # 8 bits: many distance ties
    qy, dy = torch.randint(0, 4, (30,), generator=g), torch.randint(0, 4, (120,), generator=g)
    for k in (5, 50, 120):
        assert abs(calc_top_map(q, qy, db, dy, k) - metrics.map_at_k(q, db, qy, dy, k)) < 1e-6
    qm = (torch.rand(30, 4, generator=g) < 0.4).long()
    qm[:, 0] = 1
    dm = (torch.rand(120, 4, generator=g) < 0.4).long()
    assert abs(calc_top_map(q, qm, db, dm, 50) - metrics.map_at_k(q, db, qm, dm, 50)) < 1e-6
