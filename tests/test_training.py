"""Training: atomic checkpoints restore every RNG, and an interrupted run resumed from its last
finished epoch ends with exactly the weights of an uninterrupted run."""
import random

import numpy as np
import pytest
import torch

from patchbench.training import checkpoint as ck
from patchbench.training import classifier as tc

torch.set_num_threads(1)


def _toy_data(n_train=96, n_test=40, seed=0):
    """Two-class toy images: a bright vertical bar (class 0) or a horizontal bar (class 1)."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.2
    x[y == 0, :, 3:13, 7:9] += 0.8
    x[y == 1, :, 7:9, 3:13] += 0.8
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _train(tmp_path, name, **kw):
    args = dict(epochs=3, batch_size=16, lr=1e-2, seed=0, progress=False, data=_toy_data())
    args.update(kw)
    return tc.train_classifier("tiny_cnn", tmp_path / f"{name}.pt", **args)


def test_atomic_save_leaves_no_temporary_files_and_restores_rng(tmp_path):
    net = torch.nn.Linear(3, 2)
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    ck.save_checkpoint(tmp_path / "c.ckpt", model=net, epoch=4, step=40, config={"a": 1},
                       generators={"data": gen})
    expected = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=gen))
    torch.manual_seed(99)
    gen.manual_seed(99)
    state = ck.load_checkpoint(tmp_path / "c.ckpt", generators={"data": gen})
    got = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=gen))
    assert state["epoch"] == 4 and state["step"] == 40 and state["config"] == {"a": 1}
    assert torch.equal(expected[0], got[0]) and expected[1:3] == got[1:3]
    assert torch.equal(expected[3], got[3])
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]


def test_a_corrupt_checkpoint_is_a_value_error_naming_the_file(tmp_path):
    (tmp_path / "bad.ckpt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="bad.ckpt"):
        ck.load_checkpoint(tmp_path / "bad.ckpt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a patchbench training checkpoint"):
        ck.load_checkpoint(tmp_path / "other.ckpt")


def test_tiny_training_learns_the_toy_task(tmp_path):
    acc = _train(tmp_path, "learn", epochs=15)
    assert acc >= 0.9


def test_resume_continues_from_the_last_finished_epoch_and_matches_an_uninterrupted_run(
        tmp_path, monkeypatch):
    _train(tmp_path, "straight")
    straight = torch.load(tmp_path / "straight.pt", weights_only=True)

    real_epoch = tc._train_one_epoch
    calls = {"n": 0}

    def crash_in_second_epoch(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real_epoch(*a, **k)

    monkeypatch.setattr(tc, "_train_one_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "resumed")
    assert ck.load_checkpoint(tmp_path / "resumed.pt.ckpt", restore_rng=False)["epoch"] == 1
    assert not (tmp_path / "resumed.pt").exists()

    calls["n"] = 10                                   # no more crashes; count the epochs run
    _train(tmp_path, "resumed")
    assert calls["n"] == 12                           # epochs 2 and 3 only
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert set(resumed) == set(straight)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_resume_refuses_a_checkpoint_made_with_another_config(tmp_path):
    _train(tmp_path, "cfg", epochs=1)
    with pytest.raises(ValueError, match="resume=False"):
        _train(tmp_path, "cfg", epochs=1, lr=5e-3)
    _train(tmp_path, "cfg", epochs=1, lr=5e-3, resume=False)   # starting over is allowed


def test_trained_weights_load_through_the_zoo(tmp_path):
    from patchbench import models
    _train(tmp_path, "zoo", epochs=1)
    sd = torch.load(tmp_path / "zoo.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
    model = models.load("tiny_cnn", channels=1, weights=tmp_path / "zoo.pt")
    from_ckpt = models.load("tiny_cnn", channels=1, weights=tmp_path / "zoo.pt.ckpt")
    x = torch.rand(2, 1, 16, 16)
    assert model(x).shape == (2, 10) and torch.equal(model(x), from_ckpt(x))


def test_shift_flip_augmentation_moves_content_without_changing_it():
    x = torch.zeros(8, 1, 12, 12)
    x[:, :, 4:8, 3:9] = torch.rand(8, 1, 4, 6)
    out = tc.random_shift_flip(x, torch.Generator().manual_seed(0))
    again = tc.random_shift_flip(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.allclose(out.sum((1, 2, 3)), x.sum((1, 2, 3)))      # content lies ≥ 2 px inside
    assert not torch.equal(out, x)


def test_the_command_line_requires_an_architecture():
    with pytest.raises(SystemExit):
        tc.main_train_classifier(["--out", "x.pt"])


def test_random_stickers_change_only_their_mask_and_are_seeded():
    from patchbench.training.classifier import random_stickers
    x = torch.rand(400, 1, 28, 28)
    out, mask = random_stickers(x, torch.Generator().manual_seed(0), 0.5, return_mask=True)
    assert torch.equal(out[mask == 0], x[mask == 0])
    covered = mask.flatten(1).amax(1)
    assert 0.4 < float(covered.mean()) < 0.6                        # about p of the images
    cover = mask.flatten(1).mean(1)[covered > 0]
    assert float(cover.min()) > 0 and float(cover.max()) <= 0.5       # stickers, not the whole image
    again = random_stickers(x, torch.Generator().manual_seed(0), 0.5)
    assert torch.equal(again, out)
    assert torch.equal(random_stickers(x, torch.Generator().manual_seed(0), 0.0), x)
    with pytest.raises(ValueError, match="chance"):
        random_stickers(x, torch.Generator(), 1.5)


def test_init_starts_from_given_weights_and_bad_init_is_named(tmp_path):
    _train(tmp_path, "base")
    base = torch.load(tmp_path / "base.pt", weights_only=True)
    _train(tmp_path, "tuned", epochs=1, lr=1e-12, stickers=0.5, init=tmp_path / "base.pt")
    tuned = torch.load(tmp_path / "tuned.pt", weights_only=True)
    for k, v in base.items():
        if v.is_floating_point() and "running" not in k:          # BN statistics move in train mode
            assert torch.allclose(tuned[k], v, atol=1e-6), k
    with pytest.raises(FileNotFoundError, match="init"):
        _train(tmp_path, "missing", init=tmp_path / "nope.pt")
    torch.save({"w": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not fit"):
        _train(tmp_path, "other", init=tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no registered weights"):
        _train(tmp_path, "pre", init="pretrained")
    with pytest.raises(ValueError, match="stickers"):
        _train(tmp_path, "st", stickers=2.0)
