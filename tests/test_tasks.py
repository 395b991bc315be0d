"""Issue 13, tasks and the one evaluation cell: task objectives (classification, face detection), the
face-hiding patch as a registered attack, ``pb.evaluate(task=..., attack_result=...)`` and its
metrics, the GT-mask oracle reading its mask from the attack result, and defense builders that take
a context."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import patchbench
from patchbench import attacks, defenses, tasks
from patchbench.attacks.base import AttackResult, PatchAttack
from patchbench.evaluation import evaluate
from patchbench.models.base import ImageClassifier
from patchbench.patches import Threat

S = 16
CLS_KEYS = {"n", "clean_acc", "clean_acc_ci", "robust_acc", "robust_acc_ci", "asr", "asr_ci",
            "asr_n", "attacker"}


@functools.lru_cache(maxsize=None)
def _model(channels: int = 3) -> ImageClassifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(24, 5))
    return ImageClassifier(net, [0.5] * channels, [0.25] * channels, None,
                           [f"c{i}" for i in range(5)], channels, "task-cnn").eval()


def _data(n: int = 6, channels: int = 3, size: int = S):
    x = torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = _model(channels)(x).argmax(1)
    return x, y


# ---- the registry --------------------------------------------------------------------------------
def test_tasks_are_registered_and_found_by_any_spelling():
    assert tasks.names() == ["classification", "face-detection", "retrieval", "text-image"]
    assert tasks.get("Face_Detection") is tasks.get("face-detection")
    assert tasks.get("classification").name == "classification"
    t = tasks.get("classification")
    assert tasks.get(t) is t
    with pytest.raises(LookupError, match="classification"):
        tasks.get("segmentation")
    with pytest.raises(TypeError, match="task"):
        tasks.get(3)


# ---- classification objective --------------------------------------------------------------------
def _old_objective(loss, logits, y, target, kappa=0.0):
    """attacks/_common.py objective() as it was before issue 13 (the reference)."""
    def max_other(z, cls):
        return z.scatter(1, cls[:, None], float("-inf")).amax(1)
    pred = logits.argmax(1)
    success = pred != y if target is None else pred == target
    if loss == "ce":
        if target is None:
            return F.cross_entropy(logits, y, reduction="none"), success
        return -F.cross_entropy(logits, target, reduction="none"), success
    z_y = logits.gather(1, y[:, None])[:, 0]
    if loss == "dlr":
        srt = logits.sort(1, descending=True).values
        if target is None:
            return -(z_y - max_other(logits, y)) / (srt[:, 0] - srt[:, 2] + 1e-12), success
        z_t = logits.gather(1, target[:, None])[:, 0]
        return -(z_y - z_t) / (srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + 1e-12), success
    if loss == "cw":
        if target is None:
            f = (z_y - max_other(logits, y)).clamp(min=-kappa)
        else:
            z_t = logits.gather(1, target[:, None])[:, 0]
            f = (max_other(logits, target) - z_t).clamp(min=-kappa)
        return -f, success
    z_t = max_other(logits, y) if target is None else logits.gather(1, target[:, None])[:, 0]
    return z_t - z_y, success


@pytest.mark.parametrize("loss", ["ce", "dlr", "cw", "logit-margin"])
def test_classification_objective_is_the_old_one_bit_for_bit(loss):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 7, generator=g) * 3
    y = torch.randint(0, 7, (32,), generator=g)
    target = (y + 1 + torch.randint(0, 6, (32,), generator=g)) % 7
    task = tasks.get("classification")
    for t in (None, target):
        for kappa in (0.0, 0.5):
            got = task.objective(logits, y, t, loss=loss, kappa=kappa)
            want = _old_objective(loss, logits, y, t, kappa)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (loss, t, kappa)
    from patchbench.attacks._common import objective   # the attacks' import path still works
    assert torch.equal(objective(loss, logits, y, None)[0], _old_objective(loss, logits, y, None)[0])


class SpyTask(tasks.Task):
    """Classification, counting the objective's calls."""

    name = "spy-classification"
    calls = 0

    def objective(self, outputs, y, target=None, **kw):
        SpyTask.calls += 1
        return tasks.get("classification").objective(outputs, y, target, **kw)

    def cell_metrics(self, *a, **k):
        return {}


@pytest.mark.parametrize("name", ["masked-pgd", "masked-apgd", "masked-cw", "lavan", "universal-patch"])
def test_attacks_take_their_objective_from_their_task(name):
    model, (x, y) = _model(), _data(4)
    kw = {"epochs": 1, "batch_size": 4} if name == "universal-patch" else {"steps": 2}
    threat = Threat(area=0.1)
    ref = attacks.get(name, **kw).run(model, x, y, threat, generator=5)
    spy = attacks.get(name, **kw)
    assert spy.task == "classification"
    spy.task = SpyTask()
    SpyTask.calls = 0
    res = spy.run(model, x, y, threat, generator=5)
    assert SpyTask.calls > 0
    assert torch.equal(res.x_adv, ref.x_adv) and torch.equal(res.success, ref.success)


# ---- face detection -------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _detector():
    from patchbench.models.mtcnn import load_mtcnn
    return load_mtcnn()


def _faces():
    """Two 64×64 crops of the astronaut photo (face ≈ 20×24 px) and their face boxes."""
    from patchbench.data.faces import ASTRONAUT_FACE_BOX, real_faces
    x = F.interpolate(real_faces().images, size=(112, 112), mode="area")
    box = torch.tensor([ASTRONAUT_FACE_BOX]) * 112 / 512
    x = torch.cat([x[..., 8:72, 24:88], x[..., 12:76, 28:92]]).contiguous()
    return x, [box - torch.tensor([24.0, 8, 24, 8]), box - torch.tensor([28.0, 12, 28, 12])]


def _face_patch(**kw):
    return attacks.get("face-patch", **{"epochs": 1, "patch_size": 12, "batch_size": 2,
                                        "stages": ("onet",), **kw})


def test_face_patch_is_a_registered_patch_attack_on_the_face_task():
    fp = attacks.get("face_patch")
    assert isinstance(fp, attacks.FacePatch) and isinstance(fp, PatchAttack)
    assert fp.name == "face-patch" and fp.task == "face-detection" and not fp.per_image
    assert "face-patch" in attacks.names()


def test_face_patch_runs_on_a_small_detector_input_and_its_success_is_true_of_the_images():
    det, (x, boxes) = _detector(), _faces()
    fp = _face_patch()
    res = fp.run(det, x, boxes, None, generator=0)
    assert isinstance(res, AttackResult)
    assert res.x_adv.shape == x.shape and res.mask.shape == (2, 1, 64, 64) and res.patch.shape == (3, 12, 12)
    assert torch.equal(res.x_adv[res.mask.expand_as(x) == 0], x[res.mask.expand_as(x) == 0])
    assert len(res.history) == 1 and len(res.info["patch_boxes"]) == 2
    task = tasks.get("face-detection")
    assert torch.equal(res.success, task.success(det.detect(res.x_adv), boxes, res.info["patch_boxes"]))
    assert res.eligible.tolist() == [True, True]          # MTCNN finds both clean faces
    # the patch is the one fit() returns, and score() on it gives the same result
    again = fp.score(det, x, boxes, fp.patch_)
    assert torch.equal(again.x_adv, res.x_adv) and torch.equal(again.success, res.success)
    with pytest.raises(TypeError, match="threat"):
        fp.run(det, x, boxes, Threat(area=0.05))
    with pytest.raises(ValueError, match="target"):
        fp.run(det, x, boxes, None, target=1)


def test_face_objective_splits_the_batch_loss_per_image_and_matches_facepatch_loss():
    det, (x, boxes) = _detector(), _faces()
    fp = _face_patch(stages=("pnet", "onet"))
    patch = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(0))
    loss, count = fp.loss(det, x, boxes, patch)
    from patchbench.attacks.face import adversarial_loss, paste_on_faces, select_candidates
    xp, _, pboxes = paste_on_faces(x, boxes, patch, fp.alpha, fp.position)
    c = det.candidates(xp, stages=fp.stages)
    w = select_candidates(fp.strategy, c.boxes, c.scores, boxes, pboxes, image_index=c.image_index)
    assert torch.equal(loss, adversarial_loss(c.scores, w, c.stage)) and count == int((w > 0).sum())
    per_image, success = tasks.get("face-detection").objective(c, boxes, None, patch_boxes=pboxes)
    assert per_image.shape == (2,) and success.shape == (2,) and success.dtype == torch.bool
    torch.testing.assert_close(per_image.sum(), -loss)
    with pytest.raises(ValueError, match="target"):
        tasks.get("face-detection").objective(c, boxes, torch.zeros(2), patch_boxes=pboxes)


def test_evaluate_face_detection_cell_metrics():
    det, (x, boxes) = _detector(), _faces()
    ev = evaluate(det, x, boxes, _face_patch(), task="face-detection", generator=0)
    m = ev.metrics()
    assert {"n", "n_faces", "delta", "clean_precision", "clean_recall", "precision", "recall", "ap",
            "patch_detections", "afbeta_0.1", "clean_afbeta_0.1", "asr", "asr_n", "attacker"} <= set(m)
    assert m["n"] == 2 and m["n_faces"] == 2 and m["clean_recall"] == 1.0 and m["attacker"] == "DO"
    assert ev.task == "face-detection" and ev.robust.value == m["recall"]
    # reusing the result gives the same numbers; no attack gives the clean numbers twice
    again = evaluate(det, x, boxes, _face_patch(), task="face-detection", attack_result=ev.result)
    assert again.metrics() == m
    clean = evaluate(det, x, boxes, task="face-detection").metrics()
    assert clean["recall"] == clean["clean_recall"] == 1.0 and clean["attacker"] == "none"
    with pytest.raises(ValueError, match="face-detection"):
        evaluate(_model(), *_data(2), _face_patch())          # a face attack on the wrong task
    with pytest.raises(ValueError, match="adaptive"):
        evaluate(det, x, boxes, _face_patch(), defenses.LGS(), task="face-detection", adaptive=True)
    with pytest.raises(ValueError, match="y"):
        evaluate(det, x, boxes[:1], task="face-detection")


# ---- the cell -------------------------------------------------------------------------------------
def test_evaluate_metrics_have_exactly_the_harness_keys():
    model, (x, y) = _model(), _data()
    m = evaluate(model, x, y, attacks.get("masked-pgd", steps=2), defenses.LGS(window=4, overlap=1),
                 Threat(area=0.1), generator=0).metrics()
    assert set(m) == CLS_KEYS and m["attacker"] == "DO" and m["n"] == 6
    assert len(m["clean_acc_ci"]) == len(m["robust_acc_ci"]) == len(m["asr_ci"]) == 2
    assert m["clean_acc"] == 1.0 and m["asr_n"] == 6
    a = evaluate(model, x, y, attacks.get("masked-pgd", steps=2), defenses.JPEG(), Threat(area=0.1),
                 adaptive=True, generator=0).metrics()
    assert a["attacker"] == "adaptive (bpda-identity)"
    n = evaluate(model, x, y).metrics()
    assert set(n) == CLS_KEYS and n["attacker"] == "none" and n["asr"] == 0.0
    assert n["clean_acc"] == n["robust_acc"]
    import json
    json.dumps(m)


@pytest.mark.parametrize("defense", [None, "lgs", "gt-mask"])
def test_a_precomputed_attack_result_gives_the_numbers_of_running_the_attack(defense):
    model, (x, y) = _model(), _data()
    d = None if defense is None else defenses.build(
        defense, defenses.BuildContext(image_size=S), **({"window": 4, "overlap": 1} if defense == "lgs" else {}))
    atk, threat = attacks.get("masked-pgd", steps=3), Threat(area=0.1)
    ran = evaluate(model, x, y, atk, d, threat, generator=7)
    res = atk.run(model, x, y, threat, generator=7)
    reused = evaluate(model, x, y, atk, d, attack_result=res)
    assert reused.metrics() == ran.metrics()
    assert torch.equal(reused.result.x_adv, ran.result.x_adv)
    assert reused.result is res                             # not run again
    assert evaluate(model, x, y, None, d, attack_result=res).metrics() == ran.metrics()


def test_attack_result_is_checked():
    model, (x, y) = _model(), _data()
    res = attacks.get("masked-pgd", steps=1).run(model, x, y, Threat(area=0.1))
    with pytest.raises(TypeError, match="attack_result"):
        evaluate(model, x, y, attack_result={"x_adv": res.x_adv})
    with pytest.raises(ValueError, match="attack_result"):
        evaluate(model, x[:3], y[:3], attack_result=res)
    with pytest.raises(ValueError, match="attack_result"):   # an adaptive attack must run here
        evaluate(model, x, y, defense=defenses.LGS(), adaptive=True, attack_result=res)


def test_targeted_cell_counts_reaching_the_target():
    model, (x, y) = _model(), _data()
    free = sorted(set(range(5)) - set(y.tolist()))
    tgt = free[0] if free else int((y[0] + 1) % 5)
    keep = y != tgt
    x, y = x[keep], y[keep]
    ev = evaluate(model, x, y, attacks.get("masked-pgd", steps=4, step=0.2), None, Threat(area=0.2),
                  generator=0, target=tgt)
    hit = (ev.pred_adv == tgt).sum()
    assert ev.asr.k == int(hit) and ev.asr.n == len(y)


# ---- the GT-mask oracle reads the attack result ----------------------------------------------------
class DarkBlob(nn.Module):
    """Class 1 if some 3×3 neighbourhood is darker than 0.4 on average, else 0."""

    def forward(self, x):
        dark = F.avg_pool2d(1 - x.mean(1, keepdim=True), 3, 1).amax(dim=(1, 2, 3))
        return torch.stack([torch.full_like(dark, 0.6), dark], 1) * 10


class BlackSquare(PatchAttack):
    """Paints the threat's mask black (fools DarkBlob on a bright image)."""

    name = "black-square"

    def run(self, model, x, y, threat, *, target=None, generator=None):
        mask = threat.masks(x, generator=generator) if hasattr(threat, "masks") else threat
        x_adv = x * (1 - mask)
        with torch.no_grad():
            success = model(x_adv).argmax(1) != y
        return AttackResult(x_adv, None, mask, success)


def test_the_oracle_reads_the_mask_of_the_attack_result():
    oracle = defenses.GTMaskOracle(fill=0.9)
    assert not hasattr(oracle, "set_mask") and oracle.uses_true_mask
    model = ImageClassifier(DarkBlob(), [0.0] * 3, [1.0] * 3, None, ["bright", "dark"], 3)
    x, y = torch.full((3, 3, S, S), 0.9), torch.zeros(3, dtype=torch.long)
    res = BlackSquare().run(model, x, y, Threat(area=0.1), generator=0)
    assert res.success.all()
    with pytest.raises(ValueError, match="for_result"):    # a bare oracle knows no mask
        oracle(res.x_adv)
    restored = oracle.for_result(res)(res.x_adv)
    assert torch.allclose(restored, x) and oracle._mask is None   # the oracle itself is unchanged
    assert torch.equal(oracle.for_result(None)(x), x)             # clean images: nothing to repaint
    ev = evaluate(model, x, y, BlackSquare(), oracle, Threat(area=0.1), generator=0)
    assert ev.metrics()["robust_acc"] == 1.0 and ev.metrics()["asr"] == 0.0
    und = evaluate(model, x, y, BlackSquare(), None, attack_result=ev.result)
    assert und.metrics()["robust_acc"] == 0.0
    # an adaptive attacker facing the oracle knows the true mask: the same placements as DO
    ad = evaluate(model, x, y, BlackSquare(), oracle, Threat(area=0.1), adaptive=True, generator=0)
    assert torch.equal(ad.result.mask, ev.result.mask) and ad.metrics()["robust_acc"] == 1.0


def test_an_adaptive_universal_patch_cannot_face_the_oracle_but_a_do_one_can():
    model, (x, y) = _model(), _data(4)
    up = attacks.get("universal-patch", epochs=1, batch_size=4)
    with pytest.raises(ValueError, match="adaptive"):
        evaluate(model, x, y, up, defenses.GTMaskOracle(), Threat(area=0.1), adaptive=True)
    ev = evaluate(model, x, y, up, defenses.GTMaskOracle(), Threat(area=0.1), generator=0)
    assert set(ev.metrics()) == CLS_KEYS


# ---- defenses built from a context ----------------------------------------------------------------
def _pz_asset() -> str:
    return str(Path(patchbench.__file__).parent / "assets" / "patchzero_fmnist_do.pt")


def test_a_build_context_builds_every_registered_defense():
    model = _model(1)
    ctx = defenses.BuildContext(model=model, image_size=(28, 28), channels=1, fill=(0.286,),
                                patch_area=0.05, artifacts={"pz": _pz_asset()})
    from patchbench.models.mae import MaskedAutoencoder
    torch.manual_seed(0)
    mae = MaskedAutoencoder(image_size=28, patch_size=7, channels=1, dim=16, depth=1, heads=2,
                            decoder_dim=16, decoder_depth=1, decoder_heads=2)
    options = {"patchzero": {"checkpoint": "@pz"}, "sac": {"checkpoint": "fmnist"},
               "pair": {"model": mae}, "mae-defense": {"model": mae}}
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for name in defenses.names():
        d = defenses.build(name, ctx, **options.get(name, {}))
        assert isinstance(d, defenses.Defense) and d.name == name, name
        out = defenses.Defended(model, d.for_result(None)).eval()(x)
        assert out.shape == (2, 5), name
    assert defenses.build("none", ctx) is None and defenses.build("None") is None
    # what the context gave
    assert defenses.build("slgs", ctx).model is model
    pc = defenses.build("patchcleanser", ctx, k=3)
    assert pc.image_size == (28, 28) and pc.fill == (0.286,)
    assert pc.patch_size == defenses.PatchCleanser(0.05, (28, 28), k=3).patch_size
    assert defenses.build("gt-mask", ctx).fill == (0.286,)
    assert defenses.build("gt-mask", ctx, fill=0.5).fill == (0.5,)
    pz = defenses.build("patchzero", ctx, checkpoint="@pz", dilation=0)
    assert pz.dilation == 0 and not pz.training
    assert defenses.build("patchzero", ctx, checkpoint="fmnist_do").input_size == (28, 28)


def test_build_errors_name_what_is_wrong():
    ctx = defenses.BuildContext(image_size=16)
    with pytest.raises(LookupError, match="lgs"):
        defenses.build("lgz", ctx)
    with pytest.raises(TypeError, match="windw"):
        defenses.build("lgs", ctx, windw=3)
    with pytest.raises(ValueError, match="context.model"):
        defenses.build("slgs", ctx)
    with pytest.raises(ValueError, match="context.patch_area"):
        defenses.build("patchcleanser", ctx)
    with pytest.raises(ValueError, match="checkpoint"):
        defenses.build("patchzero", ctx)
    with pytest.raises(LookupError, match="@nope"):
        defenses.build("patchzero", ctx, checkpoint="@nope")
    with pytest.raises(TypeError, match="colour"):
        defenses.build("patchzero", ctx, checkpoint="fmnist_do", colour=1)
    with pytest.raises(TypeError, match="none"):
        defenses.build("none", ctx, quality=3)
    with pytest.raises(TypeError, match="context"):
        defenses.build("lgs", {"image_size": 16})
    with pytest.raises(ValueError, match="context.fill"):
        defenses.BuildContext(channels=3, fill=(0.1, 0.2))
    with pytest.raises(TypeError, match="context.image_size"):
        defenses.BuildContext(image_size="28x28")
    with pytest.raises(ValueError, match="context.patch_area"):
        defenses.BuildContext(patch_area=1.5)
    with pytest.raises(TypeError, match="context.artifacts"):
        defenses.BuildContext(artifacts={"pz": 3})


def test_the_defenses_experiment_builds_its_rows_through_the_registry():
    from patchbench.bench.aliases import defenses_experiment
    from patchbench.bench.grid import expand
    model, hw, fill = _model(1), (28, 28), (0.286,)
    ctx = defenses.BuildContext(model=model, image_size=hw, channels=1, fill=fill, patch_area=0.05,
                                artifacts={"pz_do": _pz_asset(), "pz_two_stage": _pz_asset()})
    want = {"gt-mask": defenses.GTMaskOracle, "lgs": defenses.LGS, "slgs": defenses.SLGS,
            "patchcleanser": defenses.PatchCleanser, "patchzero": defenses.PatchZero}
    seen = set()
    for cell in expand(defenses_experiment([])):
        cfg = cell.config
        if cfg["dataset"] != "fashion-mnist" or cfg["defense"] not in want:
            continue
        opts = {k: v for k, v in cfg["defense_options"].items() if k != "certify"}
        assert type(defenses.build(cfg["defense"], ctx, **opts)) is want[cfg["defense"]]
        seen.add(cfg["defense"])
    assert seen == set(want)


def test_a_face_result_without_its_patch_boxes_is_refused():
    det, (x, boxes) = _detector(), _faces()
    res = _face_patch().run(det, x, boxes, None, generator=0)
    bare = AttackResult(res.x_adv, res.patch, res.mask, res.success, eligible=res.eligible)
    with pytest.raises(ValueError, match="patch_boxes"):
        evaluate(det, x, boxes, task="face-detection", attack_result=bare)
