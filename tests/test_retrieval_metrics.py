"""Retrieval metrics (PAIR §5.1; AdvHash's CalcTopMap; TTH's R@K) against plain brute-force loops,
and against torchmetrics where the definitions agree (and where they do not)."""
import numpy as np
import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP, RetrievalRecall

import patchbench.metrics.retrieval as R
from patchbench.metrics.retrieval import (average_precision_at_k, check_codes, hamming_distance,
                                          hamming_topk, irrelevant_recall_at_k, map_at_k,
                                          num_relevant, recall_at_k, relevance,
                                          relevant_recall_at_k, t_average_precision_at_k,
                                          t_map_at_k, target_query_labels)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="no CUDA device"))]


def codes(n, bits, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (n, bits), generator=g) * 2 - 1).float()


# --- brute-force references, written plainly ------------------------------------------------------

def ref_hamming(q, d):
    q, d = q.numpy(), d.numpy()
    return np.array([[int(sum(a != b for a, b in zip(qi, dj))) for dj in d] for qi in q])


def ref_relevant(qi_label, dj_label):
    if np.ndim(qi_label) == 0:
        return qi_label == dj_label
    return any(a > 0 and b > 0 for a, b in zip(qi_label, dj_label))


def ref_ap(q, d, ql, dl, k):
    """CalcTopMap, one query at a time, with a stable sort (ties by database index)."""
    dist = ref_hamming(q, d)
    ql, dl = ql.numpy(), dl.numpy()
    out = []
    for i in range(len(q)):
        order = sorted(range(len(d)), key=lambda j: (dist[i, j], j))[:k]
        found, total = 0, 0.0
        for pos, j in enumerate(order, start=1):
            if ref_relevant(ql[i], dl[j]):
                found += 1
                total += found / pos
        out.append(total / found if found else 0.0)
    return np.array(out)


def ref_hit(sim, rel, k, ties):
    sim, rel = sim.numpy(), rel.numpy()
    out = []
    for i in range(sim.shape[0]):
        def key(j):
            tie = {"index": 0, "relevant_first": 0 if rel[i, j] else 1,
                   "relevant_last": 1 if rel[i, j] else 0}[ties]
            return (-sim[i, j], tie, j)
        top = sorted(range(sim.shape[1]), key=key)[:k]
        out.append(float(any(rel[i, j] for j in top)))
    return np.array(out)


# --- Hamming search ---------------------------------------------------------------------------------

def test_hamming_distance_counts_differing_bits():
    q, d = codes(5, 12, 0), codes(9, 12, 1)
    np.testing.assert_array_equal(hamming_distance(q, d).numpy(), ref_hamming(q, d))
    assert hamming_distance(q, d).dtype == torch.long


@pytest.mark.parametrize("bits,k,batch", [(4, 1, 1024), (4, 17, 3), (6, 40, 7), (16, 40, 1)])
def test_hamming_topk_is_a_stable_sort_with_many_ties(bits, k, batch):
    q, d = codes(11, bits, 2), codes(40, bits, 3)          # 4 bits, 40 items: every distance ties
    dist, idx = hamming_topk(q, d, k, batch_size=batch)
    ref = ref_hamming(q, d)
    order = np.argsort(ref, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(idx.numpy(), order)
    np.testing.assert_array_equal(dist.numpy(), np.take_along_axis(ref, order, 1))
    assert dist.dtype == idx.dtype == torch.long and dist.shape == (11, k)


@pytest.mark.parametrize("n_db,k", [(300, 1), (300, 3), (301, 10), (1000, 7), (2000, 40)])
def test_two_stage_topk_over_group_minima_is_exact(n_db, k):
    q, d = codes(9, 6, 30), codes(n_db, 6, 31)             # 6 bits: hundreds of items per distance
    assert R._group_size(n_db, k) >= 4                     # the grouped path, padded where D % g
    dist, idx = hamming_topk(q, d, k, batch_size=4)
    ref = ref_hamming(q, d)
    order = np.argsort(ref, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(idx.numpy(), order)
    np.testing.assert_array_equal(dist.numpy(), np.take_along_axis(ref, order, 1))


def test_hamming_topk_distances_agree_with_faiss_binary_flat():
    faiss = pytest.importorskip("faiss")
    q, d = codes(30, 16, 32), codes(500, 16, 33)
    index = faiss.IndexBinaryFlat(16)
    index.add(np.packbits((d > 0).numpy().astype(np.uint8), axis=1))
    f_dist, f_idx = index.search(np.packbits((q > 0).numpy().astype(np.uint8), axis=1), 40)
    dist, idx = hamming_topk(q, d, 40)
    np.testing.assert_array_equal(dist.numpy(), f_dist)
    strictly_inside = dist < dist[:, -1:]                  # below the k-th distance: same items
    for r in range(30):
        assert set(idx[r][strictly_inside[r]].tolist()) == set(f_idx[r][strictly_inside[r].numpy()])


def test_hamming_topk_takes_integer_codes_and_the_float64_key_path(monkeypatch):
    q, d = codes(6, 8, 4), codes(25, 8, 5)
    ref = hamming_topk(q, d, 25)
    got = hamming_topk(q.long(), d.to(torch.int8), 25)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    monkeypatch.setitem(R._EXACT, torch.float32, 2 ** 6)  # (b+1)·M > 2^6: keys go to float64
    got64 = hamming_topk(q, d, 25)
    assert all(torch.equal(a, b) for a, b in zip(ref, got64))


# --- mAP@k, t-mAP@k ---------------------------------------------------------------------------------

def test_average_precision_hand_case():
    # database order by distance: item0 (rel), item1 (irrel), item2 (rel) → AP@3 = (1/1 + 2/3) / 2
    q = torch.tensor([[1., 1, 1, 1]])
    d = torch.tensor([[1., 1, 1, 1], [1, 1, 1, -1], [1, 1, -1, -1], [-1, -1, -1, -1]])
    ap = average_precision_at_k(q, d, torch.tensor([0]), torch.tensor([0, 1, 0, 0]), k=3)
    assert ap.tolist() == pytest.approx([(1 + 2 / 3) / 2])
    assert average_precision_at_k(q, d, torch.tensor([0]), torch.tensor([0, 1, 0, 0]), k=1).item() == 1
    assert average_precision_at_k(q, d, torch.tensor([1]), torch.tensor([0, 1, 0, 0]), k=1).item() == 0


@pytest.mark.parametrize("bits,k", [(6, 1), (6, 5), (8, 30), (8, 1000)])   # k=1000 > D: clipped
def test_average_precision_matches_brute_force_single_label(bits, k):
    q, d = codes(13, bits, 6), codes(30, bits, 7)
    g = torch.Generator().manual_seed(8)
    ql, dl = torch.randint(0, 4, (13,), generator=g), torch.randint(0, 4, (30,), generator=g)
    ap = average_precision_at_k(q, d, ql, dl, k, batch_size=4)
    np.testing.assert_allclose(ap.numpy(), ref_ap(q, d, ql, dl, k), rtol=0, atol=1e-12)
    assert map_at_k(q, d, ql, dl, k) == pytest.approx(float(ref_ap(q, d, ql, dl, k).mean()))


def test_average_precision_matches_brute_force_multi_label():
    q, d = codes(12, 6, 9), codes(35, 6, 10)
    g = torch.Generator().manual_seed(11)
    ql = (torch.rand(12, 5, generator=g) < 0.3).float()
    dl = (torch.rand(35, 5, generator=g) < 0.3).to(torch.uint8)
    ql[0] = 0                                             # a query with no label: nothing relevant
    np.testing.assert_allclose(average_precision_at_k(q, d, ql, dl, 10).numpy(),
                               ref_ap(q, d, ql, dl, 10), atol=1e-12)
    expected = ((ql @ dl.float().t()) > 0)
    assert torch.equal(relevance(ql, dl), expected)
    assert torch.equal(num_relevant(ql, dl), expected.sum(1))


def test_query_without_relevant_item_scores_zero_and_still_counts():
    q, d = codes(4, 8, 12), codes(20, 8, 13)
    dl = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(0))
    ql = torch.tensor([0, 1, 2, 7])                       # class 7 is in no database item
    ap = average_precision_at_k(q, d, ql, dl, 20)
    assert ap[3].item() == 0.0 and num_relevant(ql, dl)[3].item() == 0
    assert map_at_k(q, d, ql, dl, 20) == pytest.approx(ap[:3].sum().item() / 4)


def test_t_map_measures_how_far_the_attacker_pulled_queries_into_the_target_class():
    # AdvHash: a query whose code became the target class's code retrieves that class first.
    target_code = torch.ones(1, 8)
    d = torch.cat([target_code.repeat(5, 1), -target_code.repeat(5, 1), codes(10, 8, 14)])
    dl = torch.tensor([3] * 5 + [0] * 5 + [1] * 10)
    adv = target_code.repeat(4, 1)                        # four patched queries, true class 0
    assert t_map_at_k(adv, d, 3, dl, k=5) == 1.0
    assert map_at_k(adv, d, torch.zeros(4, dtype=torch.long), dl, k=5) == 0.0
    per_query = t_average_precision_at_k(adv, d, torch.full((4,), 3), dl, k=5)
    assert per_query.tolist() == [1.0] * 4


def test_t_map_equals_map_with_target_labels_in_both_label_formats():
    q, d = codes(9, 8, 15), codes(30, 8, 16)
    dl = torch.randint(0, 4, (30,), generator=torch.Generator().manual_seed(1))
    assert t_map_at_k(q, d, 2, dl, 7) == pytest.approx(map_at_k(q, d, torch.full((9,), 2), dl, 7))
    hot = torch.nn.functional.one_hot(dl, 4).float()
    assert t_map_at_k(q, d, 2, hot, 7) == pytest.approx(t_map_at_k(q, d, 2, dl, 7))
    assert t_map_at_k(q, d, torch.tensor([[0., 0, 1, 0]]), hot, 7) == \
        pytest.approx(t_map_at_k(q, d, 2, dl, 7))
    assert target_query_labels(torch.tensor(2), 3, hot).tolist() == [[0, 0, 1, 0]] * 3


# --- torchmetrics: where the definitions agree, and where they do not -------------------------------

def _tm_map(scores, rel, k, **kw):
    m = RetrievalMAP(top_k=k, **kw)
    n_q, n_db = scores.shape
    m.update(scores.flatten(), rel.flatten(), torch.arange(n_q).repeat_interleave(n_db))
    return float(m.compute())


def _our_order_scores(q, d):
    """Unique positive scores whose descending order is (distance, index) ascending."""
    dist = hamming_distance(q, d).double()
    n_db = d.shape[0]
    return ((q.shape[1] - dist) * n_db + (n_db - torch.arange(n_db))).float()


def test_torchmetrics_retrieval_map_agrees_given_positive_scores_in_our_order():
    q, d = codes(10, 6, 17), codes(40, 6, 18)
    g = torch.Generator().manual_seed(19)
    ql, dl = torch.randint(0, 5, (10,), generator=g), torch.randint(0, 4, (40,), generator=g)
    ql[0] = 9                                             # no relevant item: 0 under "neg"
    rel = relevance(ql, dl)
    for k in (1, 5, 20):
        assert _tm_map(_our_order_scores(q, d), rel, k) == \
            pytest.approx(map_at_k(q, d, ql, dl, k), abs=1e-6)
    # (1) torchmetrics treats every item scored <= 0 as irrelevant: the natural score -distance
    #     makes all items "irrelevant", so its mAP is 0 while ours is not.
    neg = -hamming_distance(q, d).float()
    assert _tm_map(neg, rel, 5) == 0.0 < map_at_k(q, d, ql, dl, 5)
    # (2) empty_target_action="skip" drops the query without relevant items; CalcTopMap counts it as 0.
    ours = average_precision_at_k(q, d, ql, dl, 5)
    skip = _tm_map(_our_order_scores(q, d), rel, 5, empty_target_action="skip")
    has_relevant = num_relevant(ql, dl) > 0
    assert not has_relevant[0]
    assert skip == pytest.approx(ours[has_relevant].mean().item(), abs=1e-6)
    assert skip != pytest.approx(ours.mean().item(), abs=1e-6)


def test_torchmetrics_divides_by_relevant_items_inside_top_k_as_calctopmap_does():
    # 1 relevant item in the top 2 out of 3 relevant overall: AP@2 = 1 under both, not 1/3 or 1/2.
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    rel = torch.tensor([[True, False, True, True]])
    q = torch.tensor([[1., 1, 1]])
    d = torch.tensor([[1., 1, 1], [1, 1, -1], [1, -1, -1], [-1, -1, -1]])
    ap = average_precision_at_k(q, d, torch.tensor([0]), torch.tensor([0, 1, 0, 0]), k=2)
    assert ap.item() == 1.0 == _tm_map(scores, rel, 2)


# --- R@K --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ties", R.TIES)
@pytest.mark.parametrize("k", [1, 3, 8, 50])
def test_recall_at_k_matches_brute_force_with_ties(ties, k):
    g = torch.Generator().manual_seed(20)
    sim = torch.randint(-3, 4, (15, 12), generator=g).float() / 3   # 7 levels: many ties
    rel = torch.rand(15, 12, generator=g) < 0.15
    rel[0] = False
    got = recall_at_k(sim, rel, k, ties=ties)
    np.testing.assert_array_equal(got.numpy(), ref_hit(sim, rel, k, ties))
    assert got[0].item() == 0.0


def test_recall_at_k_takes_indices_shared_masks_and_distances():
    g = torch.Generator().manual_seed(21)
    sim = torch.randint(0, 5, (6, 9), generator=g).float()
    true = torch.randint(0, 9, (6,), generator=g)
    mask = torch.zeros(6, 9, dtype=torch.bool)
    mask[torch.arange(6), true] = True
    assert torch.equal(recall_at_k(sim, true, 3), recall_at_k(sim, mask, 3))
    shared = torch.zeros(9, dtype=torch.bool)
    shared[[2, 5]] = True
    assert torch.equal(recall_at_k(sim, shared, 2), recall_at_k(sim, shared.expand(6, 9), 2))
    assert torch.equal(recall_at_k(-sim, mask, 3, largest=False), recall_at_k(sim, mask, 3))
    dist = hamming_distance(codes(6, 4, 1), codes(9, 4, 2))
    assert torch.equal(recall_at_k(dist, mask, 3, largest=False),
                       torch.from_numpy(ref_hit(-dist.double(), mask, 3, "index")).float())


def test_tth_forms_break_ties_against_the_defender():
    # gallery: item 0 scores 0.9, items 1 (true image) and 2 (ad) tie at 0.5, item 3 scores 0.1
    sim = torch.tensor([[0.9, 0.5, 0.5, 0.1]])
    ad = torch.tensor([False, False, True, False])
    assert irrelevant_recall_at_k(sim, ad, k=2) == 1.0                  # the ad wins the tie
    assert irrelevant_recall_at_k(sim, ad, k=2, ties="index") == 0.0    # item 1 comes first
    assert relevant_recall_at_k(sim, torch.tensor([1]), k=2) == 0.0     # the true image loses it
    assert relevant_recall_at_k(sim, [1], k=2, ties="index") == 1.0
    assert relevant_recall_at_k(sim, [1], k=3) == 1.0


def test_torchmetrics_recall_agrees_with_one_relevant_item_and_positive_scores():
    g = torch.Generator().manual_seed(22)
    sim = torch.rand(20, 30, generator=g) * 2 - 1                      # cosine-like, in [-1, 1]
    true = torch.randint(0, 30, (20,), generator=g)
    mask = torch.zeros(20, 30, dtype=torch.bool)
    mask[torch.arange(20), true] = True
    idx = torch.arange(20).repeat_interleave(30)
    for k in (1, 5, 10):
        rec = RetrievalRecall(top_k=k)
        rec.update((sim + 2).flatten(), mask.flatten(), idx)            # shifted to be positive
        assert float(rec.compute()) == pytest.approx(relevant_recall_at_k(sim, true, k))
    # RetrievalRecall ignores items scored <= 0: on raw cosines it loses the negative-score hits.
    rec = RetrievalRecall(top_k=20)
    rec.update(sim.flatten(), mask.flatten(), idx)
    negative_hits = recall_at_k(sim, true, 20)[sim[torch.arange(20), true] <= 0].sum()
    assert negative_hits > 0
    assert float(rec.compute()) == pytest.approx(relevant_recall_at_k(sim, true, 20)
                                                 - negative_hits.item() / 20)


def test_several_relevant_items_our_hit_is_torchmetrics_hit_rate_not_its_recall():
    g = torch.Generator().manual_seed(23)
    sim = torch.rand(12, 25, generator=g) + 0.1
    rel = torch.rand(12, 25, generator=g) < 0.3
    idx = torch.arange(12).repeat_interleave(25)
    hr, rc = RetrievalHitRate(top_k=5), RetrievalRecall(top_k=5)
    hr.update(sim.flatten(), rel.flatten(), idx)
    rc.update(sim.flatten(), rel.flatten(), idx)
    ours = float(recall_at_k(sim, rel, 5).mean())
    assert float(hr.compute()) == pytest.approx(ours)
    assert float(rc.compute()) < ours                     # a share of the relevant set, not a hit


# --- bad input --------------------------------------------------------------------------------------

def test_codes_that_are_not_pm1_are_refused():
    good = codes(3, 8, 0)
    with pytest.raises(ValueError, match="not ±1"):
        check_codes(torch.sign(torch.tensor([[0.5, 0.0, -1.0]])), "query_codes")
    with pytest.raises(ValueError, match="db_codes: codes that are not ±1"):
        hamming_topk(good, good * 0.5, 1)
    with pytest.raises(TypeError, match="bool"):
        check_codes(good > 0)
    with pytest.raises(TypeError, match="torch.from_numpy"):
        check_codes(good.numpy())
    with pytest.raises(ValueError, match="2-D"):
        check_codes(good[0])
    with pytest.raises(ValueError, match="16-bit"):
        check_codes(good, bits=16)
    assert check_codes(good.long()).dtype == torch.float32


def test_mismatched_shapes_and_bad_k_are_refused():
    q, d = codes(3, 8, 0), codes(5, 8, 1)
    with pytest.raises(ValueError, match="code lengths differ"):
        hamming_topk(q, codes(5, 16, 1), 1)
    for k in (0, -1):
        with pytest.raises(ValueError, match="k"):
            hamming_topk(q, d, k)
        with pytest.raises(ValueError, match="k"):
            map_at_k(q, d, torch.zeros(3, dtype=torch.long), torch.zeros(5, dtype=torch.long), k)
    with pytest.raises(ValueError, match="batch_size"):
        hamming_topk(q, d, 2, batch_size=0)
    with pytest.raises(ValueError, match="k: 6 exceeds the database size 5"):
        hamming_topk(q, d, 6)
    with pytest.raises(ValueError, match="query_labels: expected labels for 3 items"):
        map_at_k(q, d, torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="one is class indices"):
        map_at_k(q, d, torch.zeros(3, dtype=torch.long), torch.zeros(5, 2), 2)
    with pytest.raises(ValueError, match="only 0 and 1"):
        relevance(torch.full((3, 2), 2.0), torch.zeros(5, 2))
    with pytest.raises(TypeError, match="integers"):
        relevance(torch.zeros(3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        t_map_at_k(q, d, 4, torch.zeros(5, 3), 2)


def test_bad_recall_inputs_are_refused():
    sim = torch.rand(3, 4)
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(sim.masked_fill(sim > 0.5, float("nan")), torch.tensor([0, 1, 2]), 1)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        recall_at_k(sim, torch.tensor([0, 1, 4]), 1)
    with pytest.raises(ValueError, match="relevant"):
        recall_at_k(sim, torch.zeros(3, 5, dtype=torch.bool), 1)
    with pytest.raises(ValueError, match="k"):
        recall_at_k(sim, torch.tensor([0, 1, 2]), 0)
    with pytest.raises(LookupError, match="ties"):
        recall_at_k(sim, torch.tensor([0, 1, 2]), 1, ties="random")
    with pytest.raises(ValueError, match="ad image set is empty"):
        irrelevant_recall_at_k(sim, torch.zeros(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="largest"):
        recall_at_k(sim, torch.tensor([0, 1, 2]), 1, largest="no")


# --- devices ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_results_are_identical_on_every_device(device):
    q, d = codes(20, 16, 24), codes(300, 16, 25)
    dl = torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(2))
    ql = dl[:20]
    dist, idx = hamming_topk(q.to(device), d.to(device), 50, batch_size=8)
    ref = hamming_topk(q, d, 50)
    assert dist.device.type == device
    assert torch.equal(dist.cpu(), ref[0]) and torch.equal(idx.cpu(), ref[1])
    ap = average_precision_at_k(q.to(device), d.to(device), ql.to(device), dl.to(device), 30)
    assert torch.allclose(ap.cpu(), average_precision_at_k(q, d, ql, dl, 30))
    sim = torch.rand(20, 300)
    assert torch.equal(recall_at_k(sim.to(device), ql.to(device), 10).cpu(),
                       recall_at_k(sim, ql, 10))
