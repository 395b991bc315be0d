"""Timing shared by the perf scripts (imported as a sibling module: scripts run as
``python perf/NAME.py``, which puts ``perf/`` first on ``sys.path``)."""
import statistics
import time


def interleaved_medians(fns: dict, reps: int, sync) -> dict:
    """Median wall time of each callable; one warm-up each, then the callables take turns in every
    repetition so that load from other processes hits all of them alike."""
    for fn in fns.values():
        fn()
    sync()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}
