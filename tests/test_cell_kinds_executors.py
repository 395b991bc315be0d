"""A small fixed-seed cell of each new kind — a face-detection cell (a detector, composites plus a
photo, an unoptimised face patch) and a classification cell with a defensive sticker, a corruption
and whole-image PGD — gives the same numbers through :func:`patchbench.evaluate`, the local executor
and the Ray executor (issue 13, "Parity and resume")."""
from __future__ import annotations

import tomllib

import pytest
import torch

import patchbench as pb
from patchbench.bench import config as C
from patchbench.bench.runner import run_experiment
from patchbench.bench.store import ResultsStore
from patchbench.data.fashion_mnist import fashion_mnist_available

FACES = """
[experiment]
name = "faces-tiny"
task = "face-detection"
[grid]
models = ["haar"]
datasets = [{ name = "face-composites", split = "test", n = 3, size = 96, photos = true }]
attacks = ["none", { name = "face-patch", init = "noise", epochs = 0, alpha = 0.3, patch_size = 16 }]
"""

STICKERS = """
[experiment]
name = "stickers-tiny"
[artifacts.dp]
kind = "defensive-patch"
source = "asset:defensive_patch_fmnist.pt"
[grid]
models = ["fmnist_cnn_small_stickers"]
datasets = [{ name = "fashion-mnist", n = 12 }]
stickers = ["none", { name = "defensive", patch = "@dp" }, { name = "random", patch = "@dp" }]
corruptions = ["none", { name = "fog", severity = 3 }]
attacks = ["none", { name = "pgd-linf", eps = 0.0156862745, steps = 3, batch_size = 5 }]
"""


def _quiet(*a, **k):
    pass


def _rows(out) -> dict:
    with ResultsStore(out, readonly=True) as s:
        return {r.key: (r.status, {k: v for k, v in r.metrics.items() if k != "seconds"})
                for r in s.records()}


def _experiment(text):
    return C.parse(tomllib.loads(text))


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster for the module (starting one takes seconds)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _both(tmp_path, exp, cluster):
    run_experiment(exp, tmp_path / "local", log=_quiet)
    run_experiment(exp, tmp_path / "ray", executor="ray", log=_quiet)
    return _rows(tmp_path / "local"), _rows(tmp_path / "ray")


def test_a_face_cell_is_the_same_through_evaluate_local_and_ray(tmp_path, ray_cluster):
    exp = _experiment(FACES)
    local, ray = _both(tmp_path, exp, ray_cluster)
    assert local == ray and len(local) == 2 and all(s == "done" for s, _ in local.values())
    # pb.evaluate on each batch, the detections pooled: the attacked cell's recall by hand
    from patchbench.data import load_dataset
    from patchbench.data.faces import real_faces
    from patchbench.models.detectors import load_detector
    x, boxes = load_dataset("face-composites", split="test", n=3, size=96)
    photo = real_faces()
    det = load_detector("haar")
    attack = pb.attacks.get("face-patch", init="noise", epochs=0, alpha=0.3, patch_size=16)
    found = total = 0
    for xp, bp in ((x, boxes), (photo.images, list(photo.boxes))):
        ev = pb.evaluate(det, xp, bp, attack=attack, task="face-detection", generator=0)
        found += round(ev.metrics()["recall"] * ev.metrics()["n_faces"])
        total += ev.metrics()["n_faces"]
    attacked = next(m for s, m in local.values() if m["attacker"] == "DO")
    assert attacked["n_faces"] == total and attacked["recall"] == pytest.approx(found / total)


@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST files missing")
def test_a_sticker_corruption_attack_cell_is_the_same_through_evaluate_local_and_ray(tmp_path,
                                                                                  ray_cluster):
    exp = _experiment(STICKERS)
    local, ray = _both(tmp_path, exp, ray_cluster)
    assert local == ray and len(local) == 3 * 2 * 2 and all(s == "done" for s, _ in local.values())
    # the defensive + fog + PGD cell by hand: sticker first, then the corruption, then the attack
    from patchbench.corruptions import corrupt
    from patchbench.data import load_dataset
    from patchbench.defensive.apply import DefensivePatch, apply_defensive_patch
    from patchbench.bench.artifacts import artifact_path
    model = pb.models.load("fmnist_cnn_small_stickers")
    x, y = load_dataset("fashion-mnist", n=12)
    patch = DefensivePatch.load(artifact_path(exp.artifacts["dp"]))
    xs = corrupt(apply_defensive_patch(x, y, patch), "fog", 3, generator=0)
    attack = pb.attacks.get("pgd-linf", eps=0.0156862745, steps=3, batch_size=5)
    ev = pb.evaluate(model, xs, y, attack=attack, generator=0)
    with ResultsStore(tmp_path / "local", readonly=True) as s:
        rec = next(r for r in s.records() if r.config.get("sticker", {}).get("name") == "defensive"
                   and r.config.get("corruption") and r.config["attack"] == "pgd-linf")
    assert rec.metrics["robust_acc"] == ev.metrics()["robust_acc"]
    assert rec.metrics["clean_acc"] == ev.metrics()["clean_acc"]
    assert torch.equal(torch.tensor(rec.metrics["robust_acc_ci"]),
                       torch.tensor(ev.metrics()["robust_acc_ci"]))
