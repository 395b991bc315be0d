"""Hamming top-k search: ``patchbench.metrics.retrieval.hamming_topk`` against faiss-cpu's exhaustive
``IndexBinaryFlat`` on the same random codes (default 50k database codes of 64 bits, 1k queries,
k = 1000; PAIR issue 14 target).

Both sides get their data prepared beforehand (our ±1 float tensors; faiss's ``numpy.packbits``
bytes, already added to the index), use the same thread count, and take turns in every repetition
(one warm-up each, median wall time). Ours includes its input validation (the ±1 scan).

``same_topk`` compares the full ``(distance, index)`` lists after putting faiss's results in the
canonical order (distance, then index, ascending): first the distance arrays exactly, then the
indices. When they differ only in which of the items tied at the k-th distance were kept, the output
says so (faiss may keep another subset of a boundary tie). Our top-k is also checked against a
brute-force stable sort on a few queries.

Last line: ``search patchbench=T1 faiss=T2 ratio=R same_topk=true|false`` (T in seconds for all
queries; goal R ≤ 1.5).

Usage: ``python perf/retrieval_search.py [--db 50000] [--queries 1000] [--bits 64] [--k 1000]
[--threads 1] [--reps 5] [--batch N] [--device cpu] [--single-topk]``
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from _timing import interleaved_medians


def random_codes(n: int, bits: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (n, bits), generator=gen).float().mul_(2).sub_(1)


def pack(codes: torch.Tensor) -> np.ndarray:
    """±1 codes → faiss binary vectors (bit 1 for +1), ``N×bits/8`` uint8."""
    return np.packbits((codes > 0).cpu().numpy().astype(np.uint8), axis=1)


def compare(ours, theirs, k: int) -> tuple:
    """``(identical, note)`` for our ``(dist, idx)`` and faiss's ``(D, I)``, canonically re-sorted."""
    o_d, o_i = (t.cpu().numpy().astype(np.int64) for t in ours)
    f_d, f_i = theirs[0].astype(np.int64), theirs[1].astype(np.int64)
    order = np.lexsort((f_i, f_d), axis=1)
    f_d, f_i = np.take_along_axis(f_d, order, 1), np.take_along_axis(f_i, order, 1)
    if not np.array_equal(o_d, f_d):
        return False, f"distance lists differ in {int((o_d != f_d).any(1).sum())} queries"
    if np.array_equal(o_i, f_i):
        return True, "identical (dist, idx) lists"
    inner = o_d < o_d[:, -1:]                  # strictly below the k-th distance: must be the same
    same_inner = all(np.array_equal(np.sort(o_i[r][inner[r]]), np.sort(f_i[r][inner[r]]))
                     for r in range(len(o_i)))
    rows = int((o_i != f_i).any(1).sum())
    if same_inner:
        return False, (f"faiss keeps another subset of the items tied at the k-th distance in "
                       f"{rows} queries (distances identical)")
    return False, f"indices differ below the k-th distance in {rows} queries"


def stable_reference(q: torch.Tensor, d: torch.Tensor, k: int) -> np.ndarray:
    dist = ((q.shape[1] - (q @ d.t()).numpy()) / 2).round().astype(np.int64)
    return np.argsort(dist, axis=1, kind="stable")[:, :k]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", type=int, default=50_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="torch and faiss OpenMP threads")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=None, help="hamming_topk batch_size (default: its own)")
    p.add_argument("--device", default="cpu", help="device of our search (faiss stays on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--single-topk", action="store_true",
                   help="disable the two-stage selection over group minima (one topk over all keys)")
    a = p.parse_args()
    if a.bits % 8:
        raise SystemExit("--bits must be a multiple of 8 (faiss binary vectors are bytes)")
    import faiss
    import patchbench.metrics.retrieval as retrieval
    from patchbench.metrics.retrieval import hamming_topk

    if a.single_topk:
        retrieval._group_size = lambda n_db, k: 1

    torch.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)

    gen = torch.Generator().manual_seed(a.seed)
    db, q = random_codes(a.db, a.bits, gen), random_codes(a.queries, a.bits, gen)
    index = faiss.IndexBinaryFlat(a.bits)
    index.add(pack(db))
    q_packed = pack(q)
    db_dev, q_dev = db.to(dev), q.to(dev)

    out = {}

    def ours():
        out["ours"] = hamming_topk(q_dev, db_dev, a.k, batch_size=a.batch)

    def theirs():
        out["faiss"] = index.search(q_packed, a.k)

    t = interleaved_medians({"patchbench": ours, "faiss": theirs}, a.reps, sync)
    same, note = compare(out["ours"], out["faiss"], a.k)
    n_ref = min(20, a.queries)
    ref_ok = np.array_equal(out["ours"][1][:n_ref].cpu().numpy(), stable_reference(q[:n_ref], db, a.k))
    ratio = t["patchbench"] / t["faiss"]
    print(f"{a.queries} queries × {a.db} codes of {a.bits} bits, k={a.k}, threads={a.threads}, "
          f"device={dev}, median of {a.reps}, selection: "
          f"{'one topk' if a.single_topk else 'two-stage over group minima'}")
    print(f"patchbench hamming_topk {t['patchbench']:.4f} s, faiss IndexBinaryFlat {t['faiss']:.4f} s")
    print(f"comparison: {note}; ours vs brute-force stable sort on {n_ref} queries: "
          f"{'identical' if ref_ok else 'DIFFERENT'}")
    print(f"search patchbench={t['patchbench']:.4f} faiss={t['faiss']:.4f} ratio={ratio:.3f} "
          f"same_topk={'true' if same else 'false'}")


if __name__ == "__main__":
    main()
