"""Harness overhead: wall time of ``patchbench run`` over a grid of small cells, divided by the sum of
the cells' own compute (each cell's ``run_cell`` time: model/data/defense set-up and ``pb.evaluate``).

What the ratio charges to the harness: validating the file, expanding the grid, opening the store,
one SQLite transaction per cell, the progress bar, the JSON/CSV export and the run metadata. The run
goes through ``patchbench.cli.main(["run", ...])`` in this process, so the interpreter's and torch's
import time (the same for any tool) is not counted. Repeated ``--reps`` times into fresh folders;
the median ratio is printed.

Last line: ``harness overhead=R`` (goal ≤ 1.05).

Usage: ``python perf/harness_overhead.py [--reps 3] [--n 200] [--steps 20] [--threads 2]``
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _grid import write_grid  # noqa: E402


def one_run(folder: Path, threads: int, n: int, steps: int) -> tuple:
    from patchbench.bench.store import ResultsStore
    from patchbench.cli import main

    path = write_grid(folder, threads, n, steps)
    out = folder / "run"
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(["run", str(path), "--out", str(out)])
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"patchbench run failed with exit code {code}")
    with ResultsStore(out, readonly=True) as s:
        recs = s.records()
    return wall, sum(r.seconds for r in recs), len(recs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    import patchbench.bench.runner  # noqa: F401 - imports paid before timing, as in the CLI
    ratios = []
    for r in range(a.reps):
        with tempfile.TemporaryDirectory() as tmp:
            wall, compute, cells = one_run(Path(tmp), a.threads, a.n, a.steps)
        ratios.append(wall / compute)
        print(f"rep {r}: {cells} cells, wall {wall:.2f} s, cells' compute {compute:.2f} s, "
              f"ratio {wall / compute:.3f}", flush=True)
    print(f"harness overhead={statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
