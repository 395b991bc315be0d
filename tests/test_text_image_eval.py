"""The text-image task and its cell (TTH's protocol, PAIR Table 1): R@k semantics on hand-built
similarities, the queries and e_t, and pb.evaluate on a tiny seeded dual encoder."""
import pytest
import torch

import patchbench as pb
from patchbench.attacks.tth import TTH
from patchbench.defenses import JPEG
from patchbench.tasks import text_image as T

from text_image_helpers import FakeDualEncoder, NoisyPurifier, simple_match

TASK = pb.tasks.get("text-image")


@pytest.fixture(autouse=True)
def _match(monkeypatch):
    monkeypatch.setattr(T, "keyword_matches", simple_match)


@pytest.fixture(scope="module")
def model():
    return FakeDualEncoder()


COLORS, ITEMS = ("red", "blue", "green"), ("coat", "dress", "bag", "shoe", "shirt")


@pytest.fixture(scope="module")
def gallery():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(15, 3, 32, 32, generator=g)
    caps = [[f"a {COLORS[i % 3]} {ITEMS[i % 5]}", f"the {ITEMS[i % 5]} on the left",
             f"a little {ITEMS[(i + 1) % 5]} in the scene"] for i in range(15)]
    return x, caps


@pytest.fixture(scope="module")
def ads():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))


TRAIN = ["a red coat", "the coats on the left", "a blue dress", "a green coat and a bag"]


def _hand_built():
    sim_clean = torch.tensor([[0.9, 0.1, 0.2, 0.3],
                              [0.8, 0.5, 0.7, 0.1],
                              [0.1, 0.2, 0.6, 0.6]])
    ads = torch.tensor([[0.95, 0.0], [0.0, 0.0], [0.6, 0.0]])
    mask = torch.tensor([False] * 4 + [True] * 2)
    return sim_clean, torch.cat([sim_clean, ads], 1), mask, torch.tensor([0, 1, 2])


def test_r_at_k_semantics_on_hand_built_similarities():
    sim_clean, sim_pois, mask, true = _hand_built()
    m = TASK.cell_metrics(sim_clean, true, 2, sim_pois, mask, keyword="coat", attacker="DO")
    # clean: q0 first, q1 third (miss), q2 ties its own image with another one at the top (hit)
    assert m["clean"] == pytest.approx(2 / 3)
    # an ad in the top 2 of q0 (above everything) and of q2 (a tie, which the ad wins)
    assert m["irrelevant"] == pytest.approx(2 / 3)
    # own image still in the top 2: q0 only (q2's now loses the three-way tie)
    assert m["relevant"] == pytest.approx(1 / 3)
    assert m["task"] == "text-image" and m["metric"] == "r@2" and m["n_queries"] == 3
    assert m["n_ads"] == 2 and m["n_gallery"] == 4 and m["keyword"] == "coat"
    lo, hi = m["irrelevant_ci"]
    assert lo < 2 / 3 < hi
    k1 = TASK.cell_metrics(sim_clean, true, 1, sim_pois, mask)
    assert k1["clean"] == pytest.approx(1 / 3)          # q2's tie at k=1 goes against it


def test_queries_are_the_captions_with_the_keyword(gallery):
    caps, idx = T.keyword_queries(gallery[1], "coat")
    assert all(simple_match(c, "coat") for c in caps)
    assert all(c in gallery[1][i] for c, i in zip(caps, idx.tolist()))
    n = sum(simple_match(c, "coat") for entry in gallery[1] for c in entry)
    assert len(caps) == n > 0
    with pytest.raises(ValueError, match="keyword.*'hat'"):
        T.keyword_queries(gallery[1], "hat")


def test_target_embedding_is_the_normalised_mean_of_matching_captions(model):
    e = T.target_embedding(model, TRAIN, "coat")
    want = model.encode_text(["a red coat", "the coats on the left", "a green coat and a bag"])
    assert torch.allclose(e, torch.nn.functional.normalize(want.mean(0), dim=0), atol=1e-6)
    sub = T.target_embedding(model, TRAIN, "coat", limit=2, generator=0)
    assert torch.allclose(sub, T.target_embedding(model, TRAIN, "coat", limit=2, generator=0))
    assert not torch.allclose(sub, e)
    with pytest.raises(ValueError, match="keyword"):
        T.target_embedding(model, TRAIN, "shoe")
    with pytest.raises(ValueError, match=r"train_captions\[1\]"):
        T.target_embedding(model, ["a coat", "  "], "coat")


def _brute(sim, ad_mask, true, k):
    top = sim.argsort(1, descending=True)[:, :k]
    irr = ad_mask[top].any(1).float().mean()
    rel = (top == true[:, None]).any(1).float().mean()
    return float(irr), float(rel)


def test_evaluate_undefended_matches_brute_force(model, gallery, ads):
    kw = dict(task="text-image", gallery=gallery, keyword="coat", train_captions=TRAIN, k=5)
    base = pb.evaluate(model, ads, None, generator=0, **kw)
    ev = pb.evaluate(model, ads, None, attack=TTH(iterations=40), generator=0, **kw)
    m = ev.metrics()
    for key in ("task", "metric", "clean", "irrelevant", "relevant", "n_queries", "keyword",
                "eot_samples", "patch_side", "shape"):
        assert key in m
    assert m["metric"] == "r@5" and m["attacker"] == "DO" and m["eot_samples"] == 1
    assert m["patch_side"] == pytest.approx(11 / 32, abs=1e-3) and m["shape"] == "square"
    o = ev.outputs
    irr, rel = _brute(o["sim_poisoned"], o["ad_mask"], o["true_index"], 5)
    assert m["irrelevant"] == pytest.approx(irr) and m["relevant"] == pytest.approx(rel)
    top = o["sim_clean"].argsort(1, descending=True)[:, :5]
    assert m["clean"] == pytest.approx(float((top == o["true_index"][:, None]).any(1).float()
                                             .mean()))
    assert m["clean"] == base.metrics()["clean"]                   # the gallery is the same
    assert m["irrelevant"] > base.metrics()["irrelevant"]         # the patch pulls the ads in
    assert ev.asr.value == m["irrelevant"] and ev.robust.value == m["relevant"]
    assert base.metrics()["attacker"] == "none" and base.metrics()["patch_side"] is None


def test_adaptive_through_defended_jpeg_and_a_randomised_defense(model, gallery, ads):
    kw = dict(task="text-image", gallery=gallery, keyword="coat", train_captions=TRAIN, k=5,
              generator=0)
    ev = pb.evaluate(model, ads, None, attack=TTH(iterations=5), defense=JPEG(quality=50),
                     adaptive=True, **kw)
    assert ev.metrics()["attacker"] == "adaptive (bpda-identity)"
    d = NoisyPurifier()
    ev = pb.evaluate(model, ads, None, attack=TTH(iterations=5), defense=d, adaptive=True, **kw)
    m = ev.metrics()
    assert m["attacker"] == "adaptive (exact + EOT)" and m["eot_samples"] == 3
    # 15 gallery images (1 batch), 5 steps × 3 draws, 2 scoring passes, then the patched ads
    assert d.calls == 1 + 5 * 3 + 2 + 1
    do = pb.evaluate(model, ads, None, attack=TTH(iterations=5), defense=NoisyPurifier(), **kw)
    assert do.metrics()["attacker"] == "DO" and do.metrics()["eot_samples"] == 1


def test_a_patch_trained_on_other_ads_or_precomputed(model, gallery, ads):
    kw = dict(task="text-image", gallery=gallery, keyword="coat", train_captions=TRAIN, k=5,
              generator=0)
    other = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    ev = pb.evaluate(model, ads, None, attack=TTH(iterations=5), attack_train=other, **kw)
    assert ev.result.x_adv.shape == ads.shape and len(ev.result.history) == 5
    again = pb.evaluate(model, ads, None, attack_result=ev.result, **kw)
    assert again.metrics()["irrelevant"] == ev.metrics()["irrelevant"]


def test_bad_inputs(model, gallery, ads):
    kw = dict(task="text-image", gallery=gallery, train_captions=TRAIN, generator=0)
    atk = TTH(iterations=2)
    with pytest.raises(ValueError, match="keyword.*'hat'"):
        pb.evaluate(model, ads, None, attack=atk, keyword="hat", **kw)
    with pytest.raises(ValueError, match="ad image set is empty"):
        pb.evaluate(model, ads[:0], None, attack=atk, keyword="coat", **kw)
    with pytest.raises(ValueError, match="threat"):
        pb.evaluate(model, ads, None, attack=atk, keyword="coat",
                    threat=pb.Threat(area=0.3, shape="rectangle", aspect=8.0), **kw)
    with pytest.raises(ValueError, match="keyword"):
        pb.evaluate(model, ads, None, attack=atk, **kw)
    with pytest.raises(ValueError, match="y"):
        pb.evaluate(model, ads, torch.zeros(3, dtype=torch.long), keyword="coat", **kw)
    with pytest.raises(ValueError, match="purify_gallery"):
        pb.evaluate(model, ads, None, keyword="coat", purify_gallery=True, **kw)
    with pytest.raises(ValueError, match="k"):
        pb.evaluate(model, ads, None, keyword="coat", k=16, **kw)
    with pytest.raises(ValueError, match="train_captions"):
        pb.evaluate(model, ads, None, attack=atk, keyword="coat", task="text-image",
                    gallery=gallery)
    with pytest.raises(ValueError, match=r"gallery captions\[2\]\[0\]"):
        caps = [list(c) for c in gallery[1]]
        caps[2][0] = ""
        pb.evaluate(model, ads, None, keyword="coat", task="text-image", gallery=(gallery[0], caps))
    with pytest.raises(ValueError, match="gallery captions"):
        pb.evaluate(model, ads, None, keyword="coat", task="text-image",
                    gallery=(gallery[0], gallery[1][:3]))
    with pytest.raises(TypeError, match="text-image model"):
        pb.evaluate(torch.nn.Identity(), ads, None, keyword="coat", **kw)
    with pytest.raises(ValueError, match="keyword: only for task='text-image'"):
        pb.evaluate(torch.nn.Identity(), ads, torch.zeros(3, dtype=torch.long), keyword="coat")


def test_keyword_matching_is_the_captions_modules(monkeypatch):
    captions = pytest.importorskip("patchbench.data.captions")
    monkeypatch.undo()
    for cap, kw in (("a red coat", "coat"), ("two coats", "coat"), ("a blue dress", "coat")):
        assert T.keyword_matches(cap, kw) == bool(captions.keyword_matches(cap, kw))
