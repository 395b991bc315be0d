"""The SQLite results store: one transaction per cell, survives kill -9, one writer, refuses foreign
or newer stores without touching them, exports flat JSON/CSV rows."""
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from patchbench.bench.store import SCHEMA_VERSION, CellRecord, ResultsStore, StoreError


def _rec(i, status="done", **metrics):
    return CellRecord(key=f"k{i}", config={"model": "m", "attack": {"name": "masked-pgd", "steps": i}},
                      metrics=metrics or {"clean_acc": 0.5, "robust_acc": i / 10}, status=status,
                      error=None if status == "done" else "Traceback ...\nValueError: boom",
                      started=1.0, finished=2.0 + i, seconds=1.0 + i, seed=i)


def test_records_round_trip_and_counts(tmp_path):
    with ResultsStore(tmp_path) as s:
        s.record(_rec(1))
        s.record(_rec(2, status="failed"))
        s.record(_rec(3, robust_acc=math.nan))
        assert s.status("k1") == "done" and s.status("k2") == "failed" and s.status("nope") is None
        assert s.counts() == {"done": 2, "failed": 1}
        r = s.get("k1")
        assert r.config["attack"] == {"name": "masked-pgd", "steps": 1} and r.seed == 1
        assert r.version  # the package version is stored with every row
        assert math.isnan(s.get("k3").metrics["robust_acc"])
        s.record(_rec(2))                     # a retried cell replaces its failed row
        assert s.counts() == {"done": 3, "failed": 0}
    assert (tmp_path / "results.db").is_file()
    mode = sqlite3.connect(tmp_path / "results.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_export_writes_flat_rows(tmp_path):
    with ResultsStore(tmp_path) as s:
        s.record(_rec(1))
        s.record(_rec(2, status="failed"))
        json_path, csv_path = s.export(keys=["k2", "k1", "missing"])
    rows = json.loads(json_path.read_text())
    assert [r["key"] for r in rows] == ["k2", "k1"]
    assert rows[1]["model"] == "m" and rows[1]["attack.steps"] == 1 and rows[1]["robust_acc"] == 0.1
    assert rows[0]["status"] == "failed" and "ValueError: boom" in rows[0]["error"]
    header = csv_path.read_text().splitlines()[0].split(",")
    assert {"key", "model", "attack.name", "clean_acc", "status"} <= set(header)


def test_a_second_writer_is_refused_and_the_lock_dies_with_its_holder(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from patchbench.bench.store import ResultsStore
        s = ResultsStore({str(tmp_path)!r})
        print("locked", flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match="in use by another patchbench process"):
            ResultsStore(tmp_path)
        with ResultsStore(tmp_path, readonly=True) as r:   # reports may read while a run writes
            assert r.counts() == {"done": 0, "failed": 0}
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with ResultsStore(tmp_path) as s:          # kill -9 released the lock
        s.record(_rec(1))


def test_kill_minus_9_mid_sweep_keeps_every_finished_cell(tmp_path):
    code = textwrap.dedent(f"""
        from patchbench.bench.store import CellRecord, ResultsStore
        s = ResultsStore({str(tmp_path)!r})
        i = 0
        while True:
            s.record(CellRecord(f"k{{i}}", {{"i": i}}, {{"x": "y" * 2000}}, seed=i))
            print(i, flush=True)
            i += 1
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    last = -1
    deadline_lines = 200
    for _ in range(deadline_lines):
        last = int(p.stdout.readline())
    p.send_signal(signal.SIGKILL)
    p.wait()
    with ResultsStore(tmp_path) as s:
        keys = set(s.statuses())
        # every cell reported finished is there, and nothing half-written is
        assert {f"k{i}" for i in range(last + 1)} <= keys
        assert all(r.metrics == {"x": "y" * 2000} for r in s.records())


def test_foreign_and_incompatible_stores_are_refused_untouched(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    con = sqlite3.connect(other / "results.db")
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    con.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    before = (other / "results.db").read_bytes()
    with pytest.raises(StoreError, match=f"schema {SCHEMA_VERSION + 1}"):
        ResultsStore(other)
    assert (other / "results.db").read_bytes() == before

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "results.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a patchbench results store"):
        ResultsStore(garbage)
    assert (garbage / "results.db").read_bytes() == b"this is not sqlite" * 100

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    con = sqlite3.connect(foreign / "results.db")
    con.execute("CREATE TABLE runs (x)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not a patchbench results store"):
        ResultsStore(foreign)

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(StoreError, match="existing file"):
        ResultsStore(a_file)
    with pytest.raises(FileNotFoundError):
        ResultsStore(tmp_path / "nothing", readonly=True)


def test_bad_status_is_refused(tmp_path):
    with ResultsStore(tmp_path) as s:
        with pytest.raises(ValueError, match="status"):
            s.record(_rec(1, status="running"))
        assert s.counts() == {"done": 0, "failed": 0}
