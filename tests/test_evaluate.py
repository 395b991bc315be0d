"""patchbench.evaluate: the attacker hits the right target, the GT-mask oracle bounds removal defenses."""
import pytest
import torch
from torch import nn

from patchbench.attacks import MaskedPGD
from patchbench.attacks.base import AttackResult, PatchAttack
from patchbench.defenses import LGS, Defended, GTMaskOracle
from patchbench.evaluation import evaluate
from patchbench.models.base import ImageClassifier
from patchbench.patches import Threat

S = 32


class DarkBlobModel(nn.Module):
    """Class 1 ("dark object") if some 3×3 neighbourhood is darker than 0.4 on average, else 0."""

    def forward(self, x):
        dark = nn.functional.avg_pool2d(1 - x.mean(1, keepdim=True), 3, 1).amax(dim=(1, 2, 3))
        return torch.stack([torch.full_like(dark, 0.6), dark], 1) * 10


def blob_model():
    return ImageClassifier(DarkBlobModel(), [0.0] * 3, [1.0] * 3, None, ["bright", "dark"], 3)


def bright(n=4):
    return torch.full((n, 3, S, S), 0.9), torch.zeros(n, dtype=torch.long)


class Spy(PatchAttack):
    """Records the model it was asked to attack; changes nothing."""

    name = "spy"

    def run(self, model, x, y, threat, *, target=None, generator=None):
        self.seen = model
        mask = threat.masks(x, generator=generator) if hasattr(threat, "masks") else threat
        return AttackResult(x.clone(), None, mask, torch.zeros(len(x), dtype=torch.bool))


def test_non_adaptive_attacks_the_bare_model_adaptive_attacks_model_and_defense():
    model, (x, y) = blob_model(), bright()
    defense = LGS()
    spy = Spy()
    evaluate(model, x, y, spy, defense, Threat(area=0.05), adaptive=False, generator=0)
    assert spy.seen is model
    evaluate(model, x, y, spy, defense, Threat(area=0.05), adaptive=True, generator=0)
    assert isinstance(spy.seen, Defended) and spy.seen.defense is defense and spy.seen.model is model


def test_adaptive_without_a_defense_attacks_the_bare_model():
    model, (x, y) = blob_model(), bright()
    spy = Spy()
    evaluate(model, x, y, spy, None, Threat(area=0.05), adaptive=True, generator=0)
    assert spy.seen is model


def test_patch_attack_fools_the_undefended_model_and_the_gt_mask_restores_accuracy():
    model, (x, y) = blob_model(), bright()
    atk, threat = MaskedPGD(steps=10, step=0.2), Threat(area=0.05)
    und = evaluate(model, x, y, atk, None, threat, generator=0)
    assert und.clean.value == 1.0 and und.robust.value == 0.0
    for adaptive in (False, True):
        gt = evaluate(model, x, y, atk, GTMaskOracle(fill=0.9), threat, adaptive=adaptive, generator=0)
        assert gt.clean.value == 1.0 and gt.robust.value == 1.0, adaptive
        assert gt.defense == "gt-mask"


def test_adaptive_gt_mask_attacker_uses_the_same_placements_as_the_non_adaptive_one():
    model, (x, y) = blob_model(), bright()
    atk, threat = MaskedPGD(steps=2), Threat(area=0.05)
    a = evaluate(model, x, y, atk, GTMaskOracle(fill=0.9), threat, adaptive=False, generator=3)
    b = evaluate(model, x, y, atk, GTMaskOracle(fill=0.9), threat, adaptive=True, generator=3)
    assert torch.equal(a.result.mask, b.result.mask)
    assert not torch.equal(a.result.mask, evaluate(model, x, y, atk, None, threat, generator=4).result.mask)


def test_no_attack_reports_zero_attack_success_and_clean_equals_robust():
    model, (x, y) = blob_model(), bright()
    e = evaluate(model, x, y, None, LGS(), generator=0)
    assert e.attack == "none" and e.asr.value == 0.0 and e.clean == e.robust
    row = e.row(model="blob")
    assert row["clean_acc"] == row["robust_acc"] == 1.0 and row["model"] == "blob"


def test_evaluate_leaves_the_classifier_in_eval_mode():
    model, (x, y) = blob_model(), bright()
    evaluate(model, x, y, MaskedPGD(steps=1), LGS(), Threat(area=0.05), adaptive=True, generator=0)
    assert not model.training


def test_bad_labels_are_rejected():
    model, (x, _) = blob_model(), bright()
    with pytest.raises(ValueError):
        evaluate(model, x, torch.zeros(3, dtype=torch.long))


def test_gt_mask_oracle_works_on_more_images_than_one_prediction_batch():
    model, (x, y) = blob_model(), bright(5)
    e = evaluate(model, x, y, MaskedPGD(steps=5, step=0.2), GTMaskOracle(fill=0.9), Threat(area=0.05),
                 generator=0, batch_size=2)
    assert e.robust.value == 1.0


def test_lazy_public_names_stay_what_they_are_on_every_use():
    """Regression: ``pb.evaluate`` was the function once, then the submodule that import bound over it."""
    import importlib
    import types

    import patchbench as pb

    for _ in range(3):
        assert callable(pb.evaluate) and not isinstance(pb.evaluate, types.ModuleType)
        assert isinstance(pb.Threat, type)
    for name in pb._SUBMODULES:
        assert isinstance(getattr(pb, name), types.ModuleType), name
    for name, (module, attr) in pb._FUNCTIONS.items():
        importlib.import_module(f"patchbench.{module}")
        assert getattr(pb, name) is getattr(importlib.import_module(f"patchbench.{module}"), attr)
        assert not isinstance(getattr(pb, name), types.ModuleType), name
