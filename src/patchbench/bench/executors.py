"""Where cells are computed: in this process (``local``) or as Ray tasks on a cluster (``ray``).

Both call :func:`patchbench.bench.runner.run_cell` on each cell's config and hand the finished record to
the driver's ``on_result`` callback, which alone writes the results store. The same seeds give the same
numbers on both (each cell seeds its own generator; torch's CPU kernels give the same results for any
thread count on this code).

Ray (``pip install 'patchbench[ray]'``) is imported only when asked for: one task per cell with the
experiment's ``num_cpus``/``num_gpus``; ``address="auto"`` (or ``HOST:PORT``) joins a running cluster,
no address starts a local one for the run and stops it afterwards. Artifacts are built by the driver
before any task starts and reach the workers as file paths (on a multi-machine cluster, point
``PATCHBENCH_HOME`` at a shared folder).
"""
from __future__ import annotations

import sys
import time
from typing import Callable, List, Optional

from .grid import Cell

EXECUTORS = ("local", "ray")


def make_executor(name: str, address: Optional[str] = None, threads: int = 1):
    """An executor by name (``LookupError`` for an unknown one; ``ImportError`` naming the extra
    when Ray is asked for and not installed)."""
    from .._registry import normalize_name
    key = normalize_name(name)
    if key == "local":
        if address:
            raise ValueError("--address: only the ray executor joins a cluster (use --executor ray)")
        return LocalExecutor(threads=threads)
    if key == "ray":
        return RayExecutor(address=address)
    raise LookupError(f"--executor: unknown executor {name!r}; available: {', '.join(EXECUTORS)}")


def _eta(done: int, total: int, elapsed: float) -> str:
    if not done:
        return "?"
    left = elapsed / done * (total - done)
    return f"{left / 60:.1f} min" if left >= 90 else f"{left:.0f} s"


class LocalExecutor:
    """Cells one after another in this process, with ``threads`` torch threads, and a progress line
    (cells done / total, the current cell, ETA) on stderr."""

    def __init__(self, threads: int = 1):
        self.threads = threads

    def run(self, cells: List[Cell], settings: dict, on_result: Callable, log: Callable = print):
        import torch
        from tqdm.auto import tqdm

        from .runner import run_cell

        if not cells:
            return
        old = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        bar = tqdm(total=len(cells), unit="cell", file=sys.stderr, dynamic_ncols=True,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} cells [{elapsed}<{remaining}] {postfix}")
        try:
            for cell in cells:
                bar.set_postfix_str(cell.label, refresh=True)
                rec = run_cell(cell.config, settings)
                on_result(cell, rec)
                bar.update(1)
        finally:
            bar.close()
            torch.set_num_threads(old)


def _ray_cell(cfg: dict, settings: dict, threads: int):
    """The Ray task: one cell on a worker, with as many torch threads as CPUs it was given."""
    import torch

    from .runner import run_cell
    torch.set_num_threads(max(1, threads))
    return run_cell(cfg, settings)


def shared_attack_group(cell: Cell):
    """The key of the non-adaptive attack a cell shares with other cells, or ``None``."""
    cfg = cell.config
    if cfg.get("attack", "none") == "none" or cfg.get("adaptive"):
        return None
    from .runner import _attack_key
    return _attack_key(cfg)


class RayExecutor:
    """One Ray task per cell; rows come back to the driver, which writes them as they finish."""

    def __init__(self, address: Optional[str] = None):
        try:
            import ray  # noqa: F401
        except ImportError as e:
            raise ImportError("--executor ray needs Ray: pip install 'patchbench[ray]' "
                              f"(import failed: {e})") from None
        self.address = address

    def run(self, cells: List[Cell], settings: dict, on_result: Callable, log: Callable = print):
        import ray

        if not cells:
            return
        started_here = not ray.is_initialized()
        if started_here:
            if self.address:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
        try:
            task = ray.remote(_ray_cell)
            pending = {}

            def submit(cell: Cell) -> None:
                ref = task.options(num_cpus=cell.num_cpus, num_gpus=cell.num_gpus).remote(
                    cell.config, settings, int(max(1, cell.num_cpus)))
                pending[ref] = cell

            # Cells that share one non-adaptive attack (every defense of one model, data, attack,
            # threat and seed) wait for the first of their group: it leaves the attack in the run's
            # cache folder, so no two workers compute the same attack; other cells fill the workers
            # meanwhile.
            waiting = {}
            for cell in cells:
                group = shared_attack_group(cell)
                if group is None or group not in waiting:
                    submit(cell)
                    if group is not None:
                        waiting[group] = []
                else:
                    waiting[group].append(cell)
            t0, done = time.time(), 0
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    cell = pending.pop(ref)
                    try:
                        rec = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - a lost worker fails its cell, not the run
                        from .runner import failed_record
                        rec = failed_record(cell.config, f"the Ray task failed: {e!r}")
                    on_result(cell, rec)
                    for follower in waiting.pop(shared_attack_group(cell), []):
                        submit(follower)
                    done += 1
                    log(f"[{done}/{len(cells)}] {cell.label} ({rec.status}; ETA "
                        f"{_eta(done, len(cells), time.time() - t0)})")
        finally:
            if started_here:
                ray.shutdown()
