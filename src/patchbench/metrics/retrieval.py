"""Retrieval metrics of PAIR (ACM MM 2024, §5.1 "Evaluation metrics"): mAP@k over Hamming ranking for
content-based search (AdvHash, Table 2) and R@K over similarity ranking for text-to-image search
(TTH, Table 1), each in its clean / irrelevant / relevant form, plus a batched, exact Hamming top-k.

* **mAP@k** — the authors' ``CalcTopMap`` (DeepHash-pytorch ``utils/tools.py``, used unchanged by
  AdvHash, Hu et al., ACM MM 2021): rank the database by Hamming distance, keep the top ``k``; the AP
  of a query is the mean, over the relevant items inside the top ``k``, of (their rank among the
  relevant) / (their position). A query with no relevant item in its top ``k`` has AP 0 and still
  counts in the mean (``CalcTopMap`` skips it in the sum but divides by all queries). Relevance is
  "shares a label": equal class indices, or ``(q_L · d_Lᵀ) > 0`` for multi-hot labels.
  Clean = mAP@k of clean queries; relevant = mAP@k of the patched queries with their true labels;
  irrelevant = **t-mAP@k**, the same with the attacker's target label in place of the true one.
* **R@K** (TTH, Hu, Chen & Li, ICASSP 2023): a query *hits* when any item of its relevant set lies in
  its top K. Irrelevant R@K = share of keyword queries with any ad (poisoned) image in their top K;
  relevant R@K = share whose own image stays in the top K with the ads in the gallery.

**Ties.** Hamming distances are small integers, so ties are the rule. ``CalcTopMap`` orders with
``np.argsort`` (quicksort: tie order unspecified); we break ties by database index, ascending — the
order of a stable sort — so results are deterministic and reproducible across devices. For R@K,
``ties`` chooses: ``"index"`` (stable order), ``"relevant_first"`` (relevant items win ties) or
``"relevant_last"`` (they lose). The TTH forms default to the reading that is pessimistic for the
defender: ads win ties in irrelevant R@K, the true image loses them in relevant R@K.

**k.** ``k`` must be an integer ≥ 1; a ``k`` above the database size is clipped to it (as
``CalcTopMap``'s slice ``gnd[0:topk]`` and torchmetrics do), except in :func:`hamming_topk`, whose
output shape is ``Q×k`` and which refuses ``k > D``.

**torchmetrics.** ``RetrievalMAP(top_k=k)`` divides by the relevant items inside the top k too, and
agrees with :func:`map_at_k` when given unique, *positive* scores in our order and the default
``empty_target_action="neg"``. It differs (1) by treating every item scored ``≤ 0`` as irrelevant
(so the natural Hamming score ``−dist`` gives AP 0), (2) with ``empty_target_action="skip"``, which
drops queries with no relevant item in the database, (3) on ties (``torch.topk``, order unspecified).
``RetrievalRecall`` is (relevant in top K) / (all relevant): it equals our hit only with one
relevant item per query (TTH's relevant R@K) and, like ``RetrievalMAP``, ignores items scored ``≤ 0``
(cosine similarities can be negative); ``RetrievalHitRate`` is our hit.

Example::

    >>> ap = average_precision_at_k(q_codes, db_codes, q_labels, db_labels, k=1000)   # Q floats
    >>> t_map_at_k(adv_codes, db_codes, target, db_labels, k=1000)                     # float
    >>> irrelevant_recall_at_k(text_emb @ gallery_emb.T, is_ad, k=10)                  # float
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .._validation import check_bool, check_choice, check_int, check_positive_int, check_tensor_device

TIES = ("index", "relevant_first", "relevant_last")
#: Largest integer every float32 (float64) value up to which is exact: the top-k keys must fit.
_EXACT = {torch.float32: 2 ** 24, torch.float64: 2 ** 53}


# ----------------------------------------------------------------------------------------------------
# codes and Hamming search

def check_codes(codes, name: str = "codes", bits=None) -> Tensor:
    """Validate an ``N×bits`` tensor of ±1 codes (float or integer dtype) and return it as float
    (floating dtypes kept, integers as float32). ``bits`` (optional) is the required code length.

    Raises ``TypeError`` for non-tensors and bool/complex dtypes, ``ValueError`` for a shape other than
    2-D, an empty tensor, a wrong length, or any value other than +1 / −1 (codes that are not ±1:
    ``torch.sign`` maps 0 to 0 — binarise with ``torch.where(h >= 0, 1., -1.)``).
    """
    if not isinstance(codes, Tensor):
        hint = " (convert with torch.from_numpy(a))" if type(codes).__name__ == "ndarray" else ""
        raise TypeError(f"{name}: expected a torch.Tensor N×bits of ±1 codes, got "
                        f"{type(codes).__name__}{hint}")
    check_tensor_device(codes, name)
    if codes.dtype == torch.bool or codes.is_complex():
        raise TypeError(f"{name}: expected ±1 codes of a float or integer dtype, got {codes.dtype} "
                        f"(map bits to ±1 with b.float() * 2 - 1)")
    if codes.dim() != 2:
        hint = " (one code: add the batch axis with codes[None])" if codes.dim() == 1 else ""
        raise ValueError(f"{name}: expected a 2-D tensor N×bits, got shape {tuple(codes.shape)}{hint}")
    if codes.numel() == 0:
        raise ValueError(f"{name}: no codes (shape {tuple(codes.shape)})")
    if bits is not None and codes.shape[1] != check_positive_int(bits, f"{name}: bits"):
        raise ValueError(f"{name}: expected {bits}-bit codes, got {codes.shape[1]} bits")
    bad = codes.detach().abs() != 1
    if bool(bad.any()):
        v = codes.detach()[bad][0].item()
        raise ValueError(f"{name}: codes that are not ±1 (found {v!r}); binarise real outputs with "
                         f"torch.where(h >= 0, 1., -1.) — torch.sign maps 0 to 0")
    return codes if codes.is_floating_point() else codes.float()


def _check_pair(query_codes, db_codes) -> Tuple[Tensor, Tensor]:
    q = check_codes(query_codes, "query_codes")
    d = check_codes(db_codes, "db_codes")
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query_codes and db_codes: code lengths differ ({q.shape[1]} vs "
                         f"{d.shape[1]} bits)")
    if q.device != d.device:
        raise ValueError(f"query_codes and db_codes: on different devices ({q.device} vs {d.device})")
    return q.detach(), d.detach()          # metrics are not differentiable: build no graph


def hamming_distance(query_codes: Tensor, db_codes: Tensor) -> Tensor:
    """``Q×D`` long Hamming distances of ±1 codes, ``(b − q·dᵀ) / 2`` (exact: ±1 products sum to
    integers, which float32 holds exactly up to 2²⁴ bits)."""
    q, d = _check_pair(query_codes, db_codes)
    return _distances(q, d)


def _distances(q: Tensor, d: Tensor) -> Tensor:
    """Unchecked :func:`hamming_distance` (inner helper)."""
    s = q.float() @ d.float().t()
    return ((q.shape[1] - s) / 2).round_().long()


def hamming_topk(query_codes: Tensor, db_codes: Tensor, k: int,
                 batch_size: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """The ``k`` nearest database codes of each query in Hamming distance, ties broken by database
    index ascending (the order of a stable sort of the distances).

    Exact and batched over queries on the codes' device. The key ``dist·M + index`` (``M`` the power
    of two ≥ D) is a unique total order, produced directly by one ``addmm``
    (``b·M/2 + index − (M/2)·q·dᵀ``; ±1 inputs and a power-of-two scale stay exact under TF32/bf16
    matmuls) in float32 when ``(b+1)·M ≤ 2²⁴``, float64 otherwise; ``topk`` on it then needs no
    tie-breaking (two-stage, over group minima first, when ``D ≫ k``: see ``_topk_blocks``).

    Args:
        query_codes: ``Q×b`` ±1. db_codes: ``D×b`` ±1. k: ``1 ≤ k ≤ D``.
        batch_size: queries per block (memory ≈ ``batch_size·D`` keys); ``None`` picks blocks of
            about 2²² keys on CPU (cache-sized: ~1.3× faster than blocks of 1024 queries at
            D = 50k, k = 100–1000 on our 2-core machine) and 1024 queries on CUDA.
    Returns:
        ``(dist, idx)``, both ``Q×k`` long, sorted by ``(dist, idx)``.
    """
    q, d = _check_pair(query_codes, db_codes)
    k = check_positive_int(k, "k")
    if k > d.shape[0]:
        raise ValueError(f"k: {k} exceeds the database size {d.shape[0]}")
    return _topk(q, d, k, _batch(batch_size, d))


def _batch(batch_size, d: Tensor) -> int:
    """The query block size: ``batch_size`` checked, or the device's default for ``None``."""
    if batch_size is None:
        return 1024 if d.device.type == "cuda" else max(1, min(1024, 2 ** 22 // d.shape[0]))
    return check_positive_int(batch_size, "batch_size")


def _topk(q: Tensor, d: Tensor, k: int, batch_size: int) -> Tuple[Tensor, Tensor]:
    """Unchecked :func:`hamming_topk` (inner helper)."""
    dists, idxs = zip(*(block for _, block in _topk_blocks(q, d, k, batch_size)))
    return torch.cat(dists), torch.cat(idxs)


def _group_size(n_db: int, k: int) -> int:
    """Columns per group of the two-stage top-k: a power of two near ``sqrt(D/k)`` (balancing the
    two ``topk`` calls), with at least ``k`` groups; 1 (a single ``topk``) below 4."""
    g = 1 << max(0, round(math.log2(max(1.0, math.sqrt(n_db / k)))))
    while g > 1 and -(-n_db // g) < k:
        g //= 2
    return g if g >= 4 else 1


def _topk_blocks(q: Tensor, d: Tensor, k: int, batch_size: int):
    """Yield ``(start, (dist, idx))`` per block of ``batch_size`` queries (inner helper).

    Two stages when the database is large against ``k``: split each row of keys into groups of
    ``g`` columns, keep the ``k`` groups with the smallest minima, and take the top ``k`` of their
    ``k·g`` keys. Exact: an item of a group outside those ``k`` has ``k`` smaller group minima above
    it, so it is not in the top ``k``. Padding columns (to a multiple of ``g``) have key +inf and
    are never chosen, since the ``k`` groups hold at least ``k`` real items."""
    n_db, b = d.shape
    shift = max(1, math.ceil(math.log2(n_db)))
    m = 1 << shift
    dtype = torch.float32 if (b + 1) * m <= _EXACT[torch.float32] else torch.float64
    if (b + 1) * m > _EXACT[torch.float64]:
        raise ValueError(f"db_codes: {n_db} codes of {b} bits exceed exact float64 keys")
    g = _group_size(n_db, k)
    n = -(-n_db // g) * g
    d = d.to(dtype)
    if n > n_db:
        d = torch.cat([d, d.new_zeros(n - n_db, b)])
    bias = torch.arange(n, device=d.device, dtype=dtype).add_(b * m // 2)
    bias[n_db:] = math.inf
    for s in range(0, q.shape[0], batch_size):
        key = torch.addmm(bias, q[s:s + batch_size].to(dtype), d.t(), alpha=-(m // 2))
        if g > 1:
            groups = key.view(key.shape[0], n // g, g)
            _, best = groups.amin(2).topk(k, dim=1, largest=False, sorted=False)
            key = groups.gather(1, best[:, :, None].expand(-1, -1, g)).view(key.shape[0], k * g)
        v = key.topk(k, dim=1, largest=False, sorted=True)[0].long()
        yield s, (v >> shift, v & (m - 1))


# ----------------------------------------------------------------------------------------------------
# labels and relevance

def check_labels(y, name: str = "labels", n: int = None) -> Tensor:
    """Retrieval labels (for ``n`` items when given): ``N`` class indices (returned as long, >= 0)
    or an ``N×C`` multi-hot tensor of 0/1 (returned as it is)."""
    if not isinstance(y, Tensor):
        raise TypeError(f"{name}: expected N class indices or an N×C multi-hot tensor, got "
                        f"{type(y).__name__}")
    check_tensor_device(y, name)
    if y.dim() not in (1, 2) or y.is_complex():
        raise ValueError(f"{name}: expected N class indices (1-D) or an N×C multi-hot tensor (2-D), "
                         f"got shape {tuple(y.shape)} dtype {y.dtype}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name}: expected labels for {n} items, got {y.shape[0]}")
    if y.dim() == 1:
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(f"{name}: class indices must be integers, got dtype {y.dtype}")
        if y.numel() and int(y.min()) < 0:
            raise ValueError(f"{name}: class indices must be >= 0, got {int(y.min())}")
        return y.long()
    if y.numel() and not bool(((y == 0) | (y == 1)).all()):
        raise ValueError(f"{name}: a multi-hot label tensor must hold only 0 and 1")
    return y


def _check_labels_pair(query_labels, db_labels, n_q: int = None, n_db: int = None):
    ql = check_labels(query_labels, "query_labels", n_q)
    dl = check_labels(db_labels, "db_labels", n_db)
    if ql.dim() != dl.dim():
        raise ValueError(f"query_labels and db_labels: one is class indices, the other multi-hot "
                         f"(shapes {tuple(ql.shape)} and {tuple(dl.shape)})")
    if ql.dim() == 2 and ql.shape[1] != dl.shape[1]:
        raise ValueError(f"query_labels and db_labels: {ql.shape[1]} vs {dl.shape[1]} classes")
    return ql, dl


def _relevance(ql: Tensor, dl: Tensor) -> Tensor:
    """Unchecked :func:`relevance` (inner helper; both on one device)."""
    if ql.dim() == 1:
        return ql[:, None] == dl[None, :]
    return (ql.float() @ dl.float().t()) > 0


def relevance(query_labels: Tensor, db_labels: Tensor) -> Tensor:
    """``Q×D`` bool: item ``j`` is relevant to query ``i`` when they share a label — equal class
    indices (1-D labels), or ``(q_L · d_Lᵀ) > 0`` for ``N×C`` multi-hot labels (``CalcTopMap``)."""
    ql, dl = _check_labels_pair(query_labels, db_labels)
    return _relevance(ql, dl.to(ql.device))


def num_relevant(query_labels: Tensor, db_labels: Tensor) -> Tensor:
    """``Q`` long: relevant items in the whole database per query (0 → that query's AP is 0)."""
    return relevance(query_labels, db_labels).sum(1)


# ----------------------------------------------------------------------------------------------------
# mAP@k and t-mAP@k

def average_precision_at_k(query_codes: Tensor, db_codes: Tensor, query_labels: Tensor,
                           db_labels: Tensor, k: int, batch_size: Optional[int] = None) -> Tensor:
    """Per-query AP@k of Hamming ranking (``CalcTopMap``; module docstring): ``Q`` float64.

    ``AP = (1/R_k) Σ_{j ≤ k, rel_j} (#relevant among the first j) / j`` with ``R_k`` the relevant items
    in the top ``k``; 0 when ``R_k = 0``. Ties by database index (``CalcTopMap``'s ``np.argsort``
    leaves their order unspecified). ``k`` above the database size is clipped to it.
    Labels: ``N`` class indices or ``N×C`` multi-hot, the same kind for queries and database.
    """
    q, d = _check_pair(query_codes, db_codes)
    ql, dl = _check_labels_pair(query_labels, db_labels, q.shape[0], d.shape[0])
    return _average_precision(q, d, ql, dl, k, batch_size)


def _average_precision(q, d, ql, dl, k, batch_size) -> Tensor:
    """:func:`average_precision_at_k` on validated codes and labels (checks ``k``, ``batch_size``)."""
    k = min(check_positive_int(k, "k"), d.shape[0])
    batch_size = _batch(batch_size, d)
    ql, dl = ql.to(q.device), dl.to(q.device)
    pos = torch.arange(1, k + 1, device=q.device, dtype=torch.float64)
    out = []
    for s, (_, idx) in _topk_blocks(q, d, k, batch_size):
        rel = _relevance(ql[s:s + batch_size], dl).gather(1, idx).double()
        out.append((rel * rel.cumsum(1) / pos).sum(1) / rel.sum(1).clamp(min=1))
    return torch.cat(out)


def map_at_k(query_codes: Tensor, db_codes: Tensor, query_labels: Tensor, db_labels: Tensor,
             k: int, batch_size: Optional[int] = None) -> float:
    """mAP@k: the mean of :func:`average_precision_at_k` over all queries (Python float)."""
    return float(average_precision_at_k(query_codes, db_codes, query_labels, db_labels, k,
                                        batch_size).mean())


def target_query_labels(target_labels, n_queries: int, db_labels: Tensor) -> Tensor:
    """Query labels that say the attacker's target, in the format of ``db_labels``.

    ``target_labels``: one class index (int or 0-d tensor) for all queries, ``n_queries`` class
    indices, or — with multi-hot ``db_labels`` — an ``n_queries×C`` (or ``1×C``) multi-hot tensor.
    Class indices become one-hot rows when ``db_labels`` is multi-hot.
    """
    dl = check_labels(db_labels, "db_labels")
    n = check_positive_int(n_queries, "n_queries")
    if not isinstance(target_labels, Tensor) or target_labels.dim() == 0:
        t = check_int(target_labels, "target_labels", minimum=0)
        t = torch.full((n,), t, dtype=torch.long, device=dl.device)
    else:
        t = target_labels.to(dl.device)
        if dl.dim() == 2 and t.dim() == 2 and t.shape[0] == 1:
            t = t.expand(n, -1)
        t = check_labels(t, "target_labels", n)
    if dl.dim() == 1 and t.dim() == 2:
        raise ValueError("target_labels: multi-hot targets need multi-hot db_labels")
    if dl.dim() == 2 and t.dim() == 1:
        if int(t.max()) >= dl.shape[1]:
            raise ValueError(f"target_labels: class {int(t.max())} out of range for multi-hot "
                             f"labels of {dl.shape[1]} classes")
        t = torch.nn.functional.one_hot(t, dl.shape[1]).to(dl.dtype)
    elif dl.dim() == 2 and t.shape[1] != dl.shape[1]:
        raise ValueError(f"target_labels and db_labels: {t.shape[1]} vs {dl.shape[1]} classes")
    return t


def t_average_precision_at_k(query_codes: Tensor, db_codes: Tensor, target_labels, db_labels: Tensor,
                             k: int, batch_size: Optional[int] = None) -> Tensor:
    """Per-query targeted AP@k (AdvHash's "irrelevant"; PAIR §5.1): :func:`average_precision_at_k`
    with the target label (:func:`target_query_labels`) standing in for each query's true label."""
    q, d = _check_pair(query_codes, db_codes)
    tl = target_query_labels(target_labels, q.shape[0], db_labels)
    ql, dl = _check_labels_pair(tl, db_labels, q.shape[0], d.shape[0])
    return _average_precision(q, d, ql, dl, k, batch_size)


def t_map_at_k(query_codes: Tensor, db_codes: Tensor, target_labels, db_labels: Tensor, k: int,
               batch_size: Optional[int] = None) -> float:
    """t-mAP@k: the mean of :func:`t_average_precision_at_k` (Python float)."""
    return float(t_average_precision_at_k(query_codes, db_codes, target_labels, db_labels, k,
                                          batch_size).mean())


# ----------------------------------------------------------------------------------------------------
# R@K

def _check_scores(sim, name: str = "similarity") -> Tensor:
    if not isinstance(sim, Tensor):
        raise TypeError(f"{name}: expected a Q×D tensor of scores, got {type(sim).__name__}")
    check_tensor_device(sim, name)
    if sim.dim() != 2 or sim.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D tensor Q×D (queries × gallery), got "
                         f"shape {tuple(sim.shape)}")
    if sim.dtype == torch.bool or sim.is_complex():
        raise TypeError(f"{name}: expected real scores, got dtype {sim.dtype}")
    sim = sim.detach()
    if sim.is_floating_point() and not bool(torch.isfinite(sim).all()):
        raise ValueError(f"{name}: contains NaN or Inf")
    return sim


def _check_relevant(relevant, shape, name: str) -> Tensor:
    """Q×D bool from a Q×D / D bool mask or Q gallery indices."""
    n_q, n_db = shape
    if not isinstance(relevant, Tensor):
        raise TypeError(f"{name}: expected a bool mask or a tensor of gallery indices, got "
                        f"{type(relevant).__name__}")
    check_tensor_device(relevant, name)
    if relevant.dtype == torch.bool:
        if relevant.shape == (n_db,):
            relevant = relevant.expand(n_q, n_db)
        if relevant.shape != (n_q, n_db):
            raise ValueError(f"{name}: expected a Q×D = {n_q}×{n_db} (or D) bool mask, got shape "
                             f"{tuple(relevant.shape)}")
        return relevant
    if relevant.is_floating_point() or relevant.is_complex() or relevant.shape != (n_q,):
        raise ValueError(f"{name}: expected a bool mask Q×D or {n_q} integer gallery indices, got "
                         f"shape {tuple(relevant.shape)} dtype {relevant.dtype}")
    if n_q and (int(relevant.min()) < 0 or int(relevant.max()) >= n_db):
        raise ValueError(f"{name}: gallery indices must lie in [0, {n_db}), got "
                         f"[{int(relevant.min())}, {int(relevant.max())}]")
    out = torch.zeros(n_q, n_db, dtype=torch.bool, device=relevant.device)
    return out.scatter_(1, relevant.long()[:, None], True)


def best_relevant_rank(similarity: Tensor, relevant: Tensor, ties: str = "index") -> Tensor:
    """``Q`` long: 0-based rank of each query's best-ranked relevant item in the descending order of
    ``similarity`` (``D`` when it has none). Unchecked inner helper of :func:`recall_at_k`.

    Counts, no sort: rank = #(scores above s*) + the tied items placed before it, where s* is the best
    relevant score — none (``relevant_first``), every tied irrelevant item (``relevant_last``), or the
    tied items of lower index (``index``, a stable descending sort)."""
    sim = similarity if similarity.is_floating_point() else similarity.double()
    relevant = relevant.to(sim.device)
    best = torch.where(relevant, sim, torch.full_like(sim, -math.inf)).amax(1, keepdim=True)
    rank = (sim > best).sum(1)
    tied = sim == best
    if ties == "relevant_last":
        rank = rank + (tied & ~relevant).sum(1)
    elif ties == "index":
        first = (tied & relevant).int().argmax(1, keepdim=True)   # argmax: the first maximal index
        cols = torch.arange(sim.shape[1], device=sim.device)
        rank = rank + (tied & (cols < first)).sum(1)
    return torch.where(relevant.any(1), rank, torch.full_like(rank, sim.shape[1]))


def recall_at_k(similarity: Tensor, relevant: Tensor, k: int, *, largest: bool = True,
                ties: str = "index") -> Tensor:
    """Per-query R@K hit (TTH; PAIR §5.1): 1.0 when any relevant item is in the top ``k``, else 0.0.

    Args:
        similarity: ``Q×D`` scores (higher = better, e.g. cosine); ``largest=False`` for distances.
        relevant: ``Q×D`` (or ``D``, shared) bool mask, or ``Q`` gallery indices (one item each).
        k: ``≥ 1``; clipped to ``D``. ties: ``"index"`` | ``"relevant_first"`` | ``"relevant_last"``.
    Returns: ``Q`` float32 of 0/1 (a query with no relevant item scores 0).
    """
    sim = _check_scores(similarity)
    rel = _check_relevant(relevant, tuple(sim.shape), "relevant")
    k = check_positive_int(k, "k")
    ties = check_choice(ties, "ties", TIES)
    if not check_bool(largest, "largest"):
        sim = -(sim if sim.is_floating_point() else sim.double())
    return ((best_relevant_rank(sim, rel, ties) < k) & rel.to(sim.device).any(1)).float()


def irrelevant_recall_at_k(similarity: Tensor, ad_mask: Tensor, k: int = 10,
                           ties: str = "relevant_first") -> float:
    """TTH's "irrelevant" R@K: the share of queries with any ad (poisoned) item in their top ``k``.
    ``ad_mask``: ``D`` (or ``Q×D``) bool marking the ads. Ads win ties by default (pessimistic for
    the defender). An ad set that is empty is refused."""
    if isinstance(ad_mask, Tensor) and ad_mask.dtype != torch.bool:
        raise TypeError(f"ad_mask: expected a bool mask, got dtype {ad_mask.dtype}")
    if isinstance(ad_mask, Tensor) and not bool(ad_mask.any()):
        raise ValueError("ad_mask: the ad image set is empty (no gallery item is marked as an ad)")
    return float(recall_at_k(similarity, ad_mask, k, ties=ties).mean())


def relevant_recall_at_k(similarity: Tensor, true_index: Union[Tensor, list], k: int = 10,
                         ties: str = "relevant_last") -> float:
    """TTH's "relevant" (and clean) R@K: the share of queries whose own gallery item
    (``true_index``, ``Q`` integers) is in their top ``k``. The true item loses ties by default
    (pessimistic for the defender)."""
    if isinstance(true_index, Tensor) and true_index.dtype == torch.bool:
        raise TypeError("true_index: expected Q integer gallery indices, got a bool tensor")
    if not isinstance(true_index, Tensor):
        true_index = torch.as_tensor(true_index)
    return float(recall_at_k(similarity, true_index, k, ties=ties).mean())
