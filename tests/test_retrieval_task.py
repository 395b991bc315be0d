"""The retrieval task (AdvHash's objective, the anchor, PAIR Table 2's metrics), ``Defended`` around
a hasher, and the retrieval cell of ``pb.evaluate``, on a toy hasher; numbers are checked against a
brute-force ``CalcTopMap``."""
from __future__ import annotations

import math

import pytest
import torch

import patchbench as pb
from patchbench import tasks
from patchbench.attacks import AdvHash
from patchbench.attacks.base import AttackResult, PatchAttack
from patchbench.defenses import LGS, Defended, Defense, PatchCleanser
from patchbench.evaluation import evaluate
from patchbench.patches import Threat
from patchbench.tasks import retrieval as R

from retrieval_helpers import BITS, S, ToyHasher, calc_top_map, hadamard, toy_images

pytest.importorskip("patchbench.metrics.retrieval")

TARGET = 2
FIXED = Threat(area=0.1, placement=(0.5, 0.5))
KEYS = {"metric", "k", "n", "n_queries", "clean", "clean_ci", "clean_attacked", "irrelevant",
        "irrelevant_ci", "relevant", "relevant_ci", "target", "asr", "asr_n", "attacker",
        "eot_samples", "patch_side", "shape", "purify_gallery"}


@pytest.fixture(scope="module")
def world():
    h = ToyHasher().eval()
    dbx, dby = toy_images(20, 1)
    qx, qy = toy_images(6, 2)
    return h, dbx, dby, qx, qy


# ---- the task --------------------------------------------------------------------------------------
def test_retrieval_is_a_registered_task():
    t = tasks.get("retrieval")
    assert isinstance(t, R.Retrieval) and "retrieval" in tasks.names()
    assert tasks.get("Retrieval") is t


def test_the_anchor_of_csq_like_codes_is_the_class_centre():
    """Codes scattered around Hadamard centres (each bit flipped with p = 0.2): the component vote
    of a class's codes (DHTA / AdvHash) is that class's centre."""
    g = torch.Generator().manual_seed(0)
    centres = hadamard(32)[:5]
    y = torch.arange(5).repeat_interleave(41)
    flip = torch.rand(len(y), 32, generator=g) < 0.2
    codes = torch.where(flip, -centres[y], centres[y])
    for t in range(5):
        assert torch.equal(R.anchor(codes, y, t), centres[t])


def test_the_anchor_votes_bits_ties_give_plus_one_and_multi_hot_labels_count():
    codes = torch.tensor([[1., 1, -1, -1], [1, -1, -1, 1], [-1, -1, 1, 1]])
    assert torch.equal(R.anchor(codes, torch.tensor([0, 0, 1]), 0), torch.tensor([1., 1, -1, 1]))
    multi = torch.tensor([[1, 0], [1, 1], [0, 1]])
    assert torch.equal(R.anchor(codes, multi, 1), torch.tensor([1., -1, 1, 1]))


def test_anchor_bad_input():
    codes = torch.tensor([[1., -1], [-1, 1]])
    with pytest.raises(ValueError, match="±1|\\+-1|-1"):
        R.anchor(codes * 0.5, torch.tensor([0, 1]), 0)
    with pytest.raises(ValueError, match="no database item has class 3"):
        R.anchor(codes, torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="db_labels"):
        R.anchor(codes, torch.tensor([0, 1, 1]), 0)
    with pytest.raises(ValueError, match="multi-hot"):
        R.anchor(codes, torch.tensor([[0.5, 1], [0, 1]]), 0)


def test_the_objective_is_advhash_loss_per_query():
    """−L = Σ_i Σ_j w_ij tanh(α h_ij) c_j / Σw with w = 1[|tanh h − c| ≥ 0.3]."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(5, 8, generator=g) * 2
    c = torch.tensor([1., -1, 1, 1, -1, -1, 1, -1])
    share, success = tasks.get("retrieval").objective(h, None, c, alpha=0.01)
    w = ((torch.tanh(h) - c).abs() >= 0.3).float()
    want = (w * torch.tanh(0.01 * h) * c).sum(1) / w.sum()
    assert torch.allclose(share, want) and w.sum() < w.numel()
    assert torch.equal(success, ((R.binarize(h) != c).sum(1) <= 2))
    converged = c.expand(3, -1) * 5.0                        # every bit within the margin
    share, success = tasks.get("retrieval").objective(converged, None, c)
    assert torch.equal(share, torch.zeros(3)) and bool(success.all())
    with pytest.raises(ValueError, match="targeted"):
        tasks.get("retrieval").objective(h, None, None)


def _queries(seed=3):
    g = torch.Generator().manual_seed(seed)
    db = torch.where(torch.rand(30, BITS, generator=g) < 0.5, 1.0, -1.0)
    dby = torch.arange(3).repeat(10)
    q = torch.where(torch.rand(9, BITS, generator=g) < 0.5, 1.0, -1.0)
    qy = torch.arange(3).repeat(3)
    return q, qy, db, dby


def test_cell_metrics_are_calc_top_map_of_clean_target_and_true_labels():
    q, qy, db, dby = _queries()
    adv = -q[qy != 1]
    m = tasks.get("retrieval").cell_metrics(q, adv, qy, db, dby, 1, 7, target_code=db[1])
    keep = qy != 1
    assert m["clean"] == pytest.approx(calc_top_map(q, db, qy, dby, 7))
    assert m["clean_attacked"] == pytest.approx(calc_top_map(q[keep], db, qy[keep], dby, 7))
    assert m["irrelevant"] == pytest.approx(calc_top_map(adv, db, torch.ones(6, dtype=torch.long),
                                                         dby, 7))
    assert m["relevant"] == pytest.approx(calc_top_map(adv, db, qy[keep], dby, 7))
    assert (m["metric"], m["k"], m["n"], m["n_queries"], m["target"]) == ("map@k", 7, 9, 6, 1)
    assert m["asr"] == pytest.approx(float((R.hamming(adv, db[1]) <= 2).float().mean()))
    lo, hi = m["irrelevant_ci"]
    assert 0 <= lo <= m["irrelevant"] <= hi <= 1


def test_cell_metrics_with_multi_hot_labels_use_shared_labels():
    q, _, db, _ = _queries()
    g = torch.Generator().manual_seed(4)
    ql = (torch.rand(9, 4, generator=g) < 0.4).long()
    ql[:, 0] = 0
    ql[ql.sum(1) == 0, 1] = 1
    dl = (torch.rand(30, 4, generator=g) < 0.4).long()
    m = tasks.get("retrieval").cell_metrics(q, q, ql, db, dl, 0, 10)
    tl = torch.zeros(9, 4, dtype=torch.long)
    tl[:, 0] = 1
    assert m["clean"] == pytest.approx(calc_top_map(q, db, ql, dl, 10))
    assert m["irrelevant"] == pytest.approx(calc_top_map(q, db, tl, dl, 10))
    assert m["n_queries"] == 9


# ---- Defended around a hasher ----------------------------------------------------------------------
def test_defended_wraps_a_hasher_without_changing_classifiers(world):
    h, _, _, qx, _ = world
    d = Defended(h, LGS())
    assert d.hashing and d.bits == BITS and d.channels == 3 and torch.equal(d.centres, h.centres)
    assert not hasattr(d, "num_classes")
    codes = d.codes(qx)
    assert torch.equal(codes, h.codes(LGS()(qx)))
    with pytest.raises(TypeError, match="hasher"):
        d.predict(qx)
    with pytest.raises(TypeError, match="prediction-level"):
        Defended(h, PatchCleanser(2, 8))


# ---- the evaluation cell ---------------------------------------------------------------------------
def test_clean_retrieval_cell_is_calc_top_map(world):
    h, dbx, dby, qx, qy = world
    ev = evaluate(h, qx, qy, task="retrieval", gallery=(dbx, dby), k=30)
    m = ev.metrics()
    assert m["clean"] == pytest.approx(calc_top_map(h.codes(qx), h.codes(dbx), qy, dby, 30))
    assert m["attacker"] == "none" and m["irrelevant"] is None and m["k"] == 30
    assert ev.clean.value == pytest.approx(m["clean"]) and ev.task == "retrieval"
    by_codes = evaluate(h, qx, qy, task="retrieval", gallery=(h.codes(dbx), dby), k=30).metrics()
    assert by_codes["clean"] == m["clean"]
    default_k = evaluate(h, qx, qy, task="retrieval", gallery=(dbx, dby)).metrics()["k"]
    assert default_k == 80                                         # min(1000, gallery size)


def test_attacked_retrieval_cell_reports_table_2_fields(world):
    h, dbx, dby, qx, qy = world
    xtr, ytr = toy_images(8, 5)
    keep = ytr != TARGET
    adv = AdvHash(iterations=30, epochs=2)
    ev = evaluate(h, qx, qy, attack=adv, threat=FIXED, task="retrieval", target=TARGET,
                  gallery=(dbx, dby), k=40, attack_train=(xtr[keep], ytr[keep]), generator=0)
    m = ev.metrics()
    assert KEYS <= set(m) and m["attacker"] == "DO" and m["n_queries"] == int((qy != TARGET).sum())
    assert (m["eot_samples"], m["shape"], m["purify_gallery"]) == (1, "square", False)
    assert m["patch_side"] == pytest.approx(FIXED.patch_size((S, S))[0] / S)
    db = h.codes(dbx)
    att = qy != TARGET
    codes = h.codes(ev.result.x_adv)
    tl = torch.full((int(att.sum()),), TARGET)
    assert m["irrelevant"] == pytest.approx(calc_top_map(codes, db, tl, dby, 40))
    assert m["relevant"] == pytest.approx(calc_top_map(codes, db, qy[att], dby, 40))
    none = evaluate(h, qx, qy, task="retrieval", target=TARGET, gallery=(dbx, dby), k=40).metrics()
    assert m["irrelevant"] > none["irrelevant"] + 0.05            # the patch pulls to the target
    assert m["clean"] == none["clean"]
    # the same DO result, reused (as the harness shares it across defenses), gives the same numbers
    again = evaluate(h, qx, qy, attack_result=ev.result, task="retrieval", target=TARGET,
                     gallery=(dbx, dby), k=40).metrics()
    assert {k: again[k] for k in ("clean", "irrelevant", "relevant")} == \
        {k: m[k] for k in ("clean", "irrelevant", "relevant")}


class Spy(PatchAttack):
    """A retrieval attack that records its victim and its target; changes nothing."""

    name, task, per_image = "spy", "retrieval", False

    def run(self, model, x, y, threat, *, target=None, target_code=None, generator=None):
        self.seen, self.target, self.code, self.n = model, target, target_code, x.shape[0]
        mask = threat.masks(x, generator=generator)
        return AttackResult(x.clone(), None, mask, torch.zeros(len(x), dtype=torch.bool))


class Shift(Defense):
    """A deterministic purifier that changes codes (brightens the image)."""

    name = "shift"

    def purify(self, x):
        return (x * 0.5 + 0.4).clamp(0, 1)


def test_adaptive_attacks_defended_hasher_non_adaptive_the_bare_one(world):
    h, dbx, dby, qx, qy = world
    spy = Spy()
    evaluate(h, qx, qy, attack=spy, defense=LGS(), threat=FIXED, task="retrieval", target=TARGET,
             gallery=(dbx, dby))
    assert spy.seen is h and spy.target == TARGET and spy.n == int((qy != TARGET).sum())
    assert torch.equal(spy.code, R.anchor(h.codes(dbx), dby, TARGET))
    m = evaluate(h, qx, qy, attack=spy, defense=LGS(), threat=FIXED, adaptive=True,
                 task="retrieval", target=TARGET, gallery=(dbx, dby)).metrics()
    assert isinstance(spy.seen, Defended) and spy.seen.model is h and spy.seen.hashing
    assert m["attacker"].startswith("adaptive")


def test_purify_gallery_is_an_option_and_off_by_default(world):
    h, dbx, dby, qx, qy = world
    kw = dict(task="retrieval", gallery=(dbx, dby), k=30, defense=Shift())
    queries_only = evaluate(h, qx, qy, **kw).metrics()
    both = evaluate(h, qx, qy, purify_gallery=True, **kw).metrics()
    sq = h.codes(Shift()(qx))
    assert queries_only["clean"] == pytest.approx(calc_top_map(sq, h.codes(dbx), qy, dby, 30))
    assert both["clean"] == pytest.approx(calc_top_map(sq, h.codes(Shift()(dbx)), qy, dby, 30))
    assert both["purify_gallery"] and not queries_only["purify_gallery"]


def test_retrieval_cell_bad_input(world):
    h, dbx, dby, qx, qy = world
    with pytest.raises(ValueError, match="gallery"):
        evaluate(h, qx, qy, task="retrieval")
    with pytest.raises(ValueError, match="gallery: 80 database items need 80 labels"):
        evaluate(h, qx, qy, task="retrieval", gallery=(dbx, dby[:-1]))
    with pytest.raises(ValueError, match="gallery codes"):
        evaluate(h, qx, qy, task="retrieval", gallery=(h.codes(dbx) * 0.5, dby))
    with pytest.raises(ValueError, match="16 bits"):
        evaluate(h, qx, qy, task="retrieval", gallery=(torch.ones(80, 8), dby))
    with pytest.raises(ValueError, match="k: the top 81"):
        evaluate(h, qx, qy, task="retrieval", gallery=(dbx, dby), k=81)
    with pytest.raises(ValueError, match="target"):
        evaluate(h, qx, qy, attack=Spy(), task="retrieval", gallery=(dbx, dby))
    with pytest.raises(ValueError, match="every query"):
        only = qy == TARGET
        evaluate(h, qx[only], qy[only], attack=Spy(), task="retrieval", target=TARGET,
                 gallery=(dbx, dby))
    with pytest.raises(ValueError, match="purify_gallery"):
        evaluate(h, qx, qy, defense=Shift(), purify_gallery=True, task="retrieval",
                 gallery=(h.codes(dbx), dby))
    with pytest.raises(TypeError, match="hasher"):
        evaluate(torch.nn.Identity(), qx, qy, task="retrieval", gallery=(dbx, dby))
    with pytest.raises(ValueError, match="format"):
        evaluate(h, qx, qy, task="retrieval", gallery=(dbx, torch.nn.functional.one_hot(dby)))
    with pytest.raises(ValueError, match="only for task='retrieval'"):
        evaluate(h, qx, qy, gallery=(dbx, dby))


def test_mean_score_is_a_mean_with_an_interval():
    s = R.MeanScore.of(torch.tensor([0.0, 0.5, 1.0]))
    assert (s.value, s.n) == (0.5, 3) and 0 <= s.lo < 0.5 < s.hi <= 1
    empty = R.MeanScore.of(torch.zeros(0))
    assert empty.n == 0 and math.isnan(empty.value)
    assert pb.evaluate is evaluate


def test_the_cell_runs_on_the_real_hasher_protocol(world):
    """patchbench.models.hashing.Hasher (normalisation, resizing, a centres buffer) behind a
    randomised defense, attacked adaptively: the cell works and reports the attacker's EOT draws."""
    from patchbench.models.hashing import Hasher, hadamard_centres
    _, dbx, dby, qx, qy = world
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, BITS))
    h = Hasher(net, BITS, [0.5] * 3, [0.25] * 3, (S, S), "tiny-csq",
               centres=hadamard_centres(4, BITS)).eval()

    class Noise(Shift):
        randomized, eot_samples, name = True, 2, "noise"

        def purify(self, x):
            return (x + 0.05 * torch.randn_like(x)).clamp(0, 1)

    m = evaluate(h, qx, qy, attack=AdvHash(iterations=3, epochs=1), defense=Noise(), threat=FIXED,
                 adaptive=True, task="retrieval", target=TARGET, gallery=(dbx, dby), k=20,
                 generator=0).metrics()
    assert KEYS <= set(m) and m["eot_samples"] == 2 and m["attacker"] == "adaptive (exact + EOT)"
    assert 0 <= m["irrelevant"] <= 1 and 0 <= m["relevant"] <= 1
