"""Sweep scaling: the same grid on the local executor (one process, 2 torch threads) and on a local Ray
cluster (2 workers, 1 torch thread each), start-up included on both sides (Ray: ``ray.init`` of a new
local cluster and its worker processes; local: nothing to start).

Prints ``sweep local=Ts ray=Ts speedup=S`` (goal S ≥ 1.5 on 2 cores), then a projection for a cluster:
with ``W`` the one-thread compute of all cells (summed from the Ray workers' records), ``L`` the
longest cell and ``s`` the measured Ray start-up, a sweep on ``w`` one-CPU workers takes about
``s + max(W / w, L)`` (cells are independent but for the shared non-adaptive attack, which its group
waits for; the driver's per-cell work, one SQLite transaction, is milliseconds), so the projected
speedup over the 2-thread local run is ``T_local / that``. The model ignores stragglers and I/O
contention: an upper bound for larger clusters. On 2 cores the ceiling is ``2 T_local / W``: how much
better two processes use the cores than torch's two intra-op threads do.

Usage: ``python perf/sweep_scaling.py [--n 500] [--steps 50]``
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _grid import write_grid  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--steps", type=int, default=50)
    a = p.parse_args()
    import ray

    from patchbench.bench import config as C
    from patchbench.bench.runner import run_experiment
    from patchbench.bench.store import ResultsStore

    quiet = lambda *x, **k: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "l").mkdir()
        (tmp / "r").mkdir()
        local_exp = C.load(write_grid(tmp / "l", 2, a.n, a.steps))   # 2 torch threads, one process
        ray_exp = C.load(write_grid(tmp / "r", 1, a.n, a.steps))     # 1 thread per Ray worker
        with contextlib.redirect_stderr(io.StringIO()):
            t0 = time.perf_counter()
            s_local = run_experiment(local_exp, tmp / "local", log=quiet)
            t_local = time.perf_counter() - t0
            t0 = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            t_start = time.perf_counter() - t0
            try:
                s_ray = run_experiment(ray_exp, tmp / "ray", executor="ray", log=quiet)
            finally:
                ray.shutdown()
            t_ray = time.perf_counter() - t0
        with ResultsStore(tmp / "ray", readonly=True) as s:
            secs = [r.seconds for r in s.records()]
        cells = s_ray.total
        assert s_local.done == s_ray.done == cells, (s_local, s_ray)
    work, longest = sum(secs), max(secs)
    print(f"{cells} cells; Ray start-up {t_start:.1f} s; one-thread compute of all cells {work:.1f} s "
          f"(longest cell {longest:.1f} s); local 2-thread run {t_local:.1f} s, i.e. torch's two "
          f"threads already give {work / t_local:.2f}x on one process")
    for w in (2, 4, 8, 16, 32, 64):
        proj = t_start + max(work / w, longest)
        print(f"  projected with {w:2d} one-CPU workers: {proj:6.1f} s, speedup {t_local / proj:5.2f}x")
    print(f"sweep local={t_local:.1f}s ray={t_ray:.1f}s speedup={t_local / t_ray:.2f}")


if __name__ == "__main__":
    main()
