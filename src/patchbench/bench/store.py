"""The results store of an experiment run: ``DIR/results.db``, SQLite (stdlib ``sqlite3``, WAL mode).

One row per cell, keyed by the hash of the cell's full config, holding the config, the metrics,
``status`` (``"done"`` or ``"failed"``), the error text of a failed cell, timings, the seed and the
package version. A cell is written in one transaction when it finishes, so a run killed at any moment
(``kill -9`` included) loses at most the cells it was computing; the next run of the same command skips
every ``done`` cell and retries the ``failed`` ones.

Only one process writes a store: opening it takes an exclusive lock on ``DIR/.results.lock``
(``fcntl.flock``, released by the kernel when the holder dies, so a killed run never leaves a stale
lock), and a second process on the same directory is refused with a message. A store written by an
incompatible schema version is refused and never overwritten.

``export`` writes ``results.json`` and ``results.csv``: a flat list of row dicts (config fields,
metrics, status) for other tools.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from .report import write_csv, write_json

SCHEMA_VERSION = 1
DB_NAME = "results.db"
LOCK_NAME = ".results.lock"
STATUSES = ("done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    key       TEXT PRIMARY KEY,
    config    TEXT NOT NULL,
    metrics   TEXT NOT NULL,
    status    TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    error     TEXT,
    started   REAL NOT NULL,
    finished  REAL NOT NULL,
    seconds   REAL NOT NULL,
    seed      INTEGER,
    version   TEXT NOT NULL
);
"""


class StoreError(ValueError):
    """The store cannot be used: locked by another process, another schema, or not a results store."""


@dataclass
class CellRecord:
    """One stored cell. ``seconds`` is the cell's own compute time (``finished - started`` of its
    work, excluding the harness)."""

    key: str
    config: Dict[str, object]
    metrics: Dict[str, object] = field(default_factory=dict)
    status: str = "done"
    error: Optional[str] = None
    started: float = 0.0
    finished: float = 0.0
    seconds: float = 0.0
    seed: Optional[int] = None
    version: str = ""

    def flat(self) -> Dict[str, object]:
        """Config and metrics as one flat dict (nested dicts joined with dots), plus the status."""
        row: Dict[str, object] = {"key": self.key}
        row.update(_flatten(self.config))
        row.update(_flatten(self.metrics))
        row.update({"status": self.status, "error": self.error, "seconds": self.seconds,
                    "seed": self.seed, "version": self.version})
        return row


def _flatten(d: Dict[str, object], prefix: str = "") -> Dict[str, object]:
    out: Dict[str, object] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def _json(obj) -> str:
    # NaN is legal in our metrics (a rate over 0 images); sqlite stores the text, json reads it back
    return json.dumps(obj, sort_keys=True, default=_default, allow_nan=True)


def _default(o):
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"results store: cannot store a {type(o).__name__} ({o!r}) as JSON")


def _package_version() -> str:
    from .. import __version__
    return __version__


class ResultsStore:
    """The SQLite store of one run directory (see the module docstring).

    Args:
        out_dir: the run directory; created if missing. The store is ``out_dir/results.db``.
        readonly: open an existing store for reading (reports) without taking the writer's lock.

    Use as a context manager, or call :meth:`close`. Example::

        with ResultsStore("runs/quick") as store:
            if store.status(key) != "done":
                store.record(CellRecord(key, config, metrics, seed=0))
            print(store.counts())
    """

    def __init__(self, out_dir, readonly: bool = False):
        self.dir = Path(out_dir)
        if self.dir.exists() and not self.dir.is_dir():
            raise StoreError(f"--out {str(self.dir)!r} is an existing file, not a run directory")
        self.path = self.dir / DB_NAME
        self.readonly = readonly
        self._lock_fd: Optional[int] = None
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"no results store at {str(self.path)!r}")
            self._conn = self._connect(f"file:{self.path}?mode=ro", uri=True)
            self._check_schema(create=False)
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._conn = self._connect(str(self.path))
            self._check_schema(create=True)     # before WAL: a refused file stays byte-identical
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            self._unlock()
            raise

    # ---- opening --------------------------------------------------------------------------------
    def _connect(self, target: str, uri: bool = False) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(target, uri=uri, timeout=30, isolation_level=None)
            conn.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{str(self.path)!r} is not a patchbench results store ({e}); choose "
                             f"another --out directory or move the file away") from e
        return conn

    def _lock(self) -> None:
        import fcntl

        fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = ""
            try:
                holder = os.read(fd, 64).decode(errors="replace").strip()
            except OSError:
                pass
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise StoreError(f"{str(self.dir)!r} is in use by another patchbench process{who}; wait "
                             f"for it to finish or use another --out directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)     # closing the descriptor releases the flock
            self._lock_fd = None

    def _check_schema(self, create: bool) -> None:
        c = self._conn
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" in tables:
            row = c.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            found = row[0] if row else "?"
            if found != str(SCHEMA_VERSION):
                raise StoreError(
                    f"{str(self.path)!r} was written with results-store schema {found}; this "
                    f"patchbench ({_package_version()}) reads and writes schema {SCHEMA_VERSION}. "
                    f"The file was left untouched: use another --out directory, or the patchbench "
                    f"version that wrote it")
            return
        if tables:
            raise StoreError(f"{str(self.path)!r} is an SQLite file but not a patchbench results "
                             f"store (tables: {', '.join(sorted(tables))}); it was left untouched")
        if not create:
            raise StoreError(f"{str(self.path)!r} is empty: not a patchbench results store")
        with self._transaction():
            for statement in _SCHEMA.split(";"):   # not executescript: it would COMMIT first
                if statement.strip():
                    c.execute(statement)
            c.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            c.execute("INSERT INTO meta VALUES ('created', ?)", (repr(time.time()),))
            c.execute("INSERT INTO meta VALUES ('created_by', ?)", (_package_version(),))

    def _transaction(self):
        conn = self._conn

        class _Tx:
            def __enter__(self_):
                conn.execute("BEGIN IMMEDIATE")

            def __exit__(self_, exc_type, exc, tb):
                conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
                return False

        return _Tx()

    # ---- reading and writing --------------------------------------------------------------------
    def record(self, rec: CellRecord) -> None:
        """Write (or replace) one finished cell in a single transaction."""
        if self.readonly:
            raise StoreError(f"{str(self.path)!r} was opened read-only")
        if rec.status not in STATUSES:
            raise ValueError(f"status: expected one of {STATUSES}, got {rec.status!r}")
        values = (rec.key, _json(rec.config), _json(rec.metrics), rec.status, rec.error,
                  float(rec.started), float(rec.finished), float(rec.seconds), rec.seed,
                  rec.version or _package_version())
        with self._transaction():
            self._conn.execute("INSERT OR REPLACE INTO cells VALUES (?,?,?,?,?,?,?,?,?,?)", values)

    def status(self, key: str) -> Optional[str]:
        """``"done"``, ``"failed"`` or ``None`` (never computed)."""
        row = self._conn.execute("SELECT status FROM cells WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def statuses(self) -> Dict[str, str]:
        """``key → status`` of every stored cell."""
        return dict(self._conn.execute("SELECT key, status FROM cells"))

    def get(self, key: str) -> Optional[CellRecord]:
        rows = self._select("WHERE key=?", (key,))
        return rows[0] if rows else None

    def records(self, status: Optional[str] = None) -> List[CellRecord]:
        """All stored cells (optionally of one status), in the order they finished."""
        if status is None:
            return self._select("", ())
        return self._select("WHERE status=?", (status,))

    def _select(self, where: str, args: tuple) -> List[CellRecord]:
        q = ("SELECT key, config, metrics, status, error, started, finished, seconds, seed, version "
             f"FROM cells {where} ORDER BY finished, key")
        return [CellRecord(k, json.loads(cfg), json.loads(met), st, err, s, f, sec, seed, ver)
                for k, cfg, met, st, err, s, f, sec, seed, ver in self._conn.execute(q, args)]

    def counts(self) -> Dict[str, int]:
        out = {s: 0 for s in STATUSES}
        out.update(dict(self._conn.execute("SELECT status, COUNT(*) FROM cells GROUP BY status")))
        return out

    # ---- export ---------------------------------------------------------------------------------
    def export(self, keys: Optional[Iterable[str]] = None) -> List[Path]:
        """Write ``results.json`` and ``results.csv`` next to the store (atomically); ``keys``
        restricts and orders the rows (e.g. the current grid's cells). Returns the two paths."""
        recs = self.records()
        if keys is not None:
            by_key = {r.key: r for r in recs}
            recs = [by_key[k] for k in keys if k in by_key]
        rows = [r.flat() for r in recs]
        paths = [self.dir / "results.json", self.dir / "results.csv"]
        write_json(rows, paths[0])       # NaN (a rate over zero images) becomes null
        write_csv(rows, paths[1])
        return paths

    def close(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
            self._conn = None
        self._unlock()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
