"""Durable outbox for computed reports: one SQLite file (WAL, ``synchronous=FULL``) in the device's state folder.

A report is committed here (fsync'd) the moment it is computed, before anything touches the network; the uploader
(:mod:`device_runtime.uploader`) drains it. Each row carries an idempotency key derived from (device, run, round,
seed, block, step), so computing the same step again after a crash adds nothing. Rows are grouped into upload
batches whose key is written *before* the first send: a batch that was sent but never acknowledged (the app was
killed, the answer was lost) goes out again with the same key and the same body, and the server answers it from
its store instead of counting it twice.

Row states: ``pending`` (not yet acknowledged), ``acked`` (the server counted it, or had already), ``dropped`` (the
round closed first: the staleness rule), ``rejected`` (the server refused the batch; ``detail`` says why).
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cooperllm.zgr import Report

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    run_id INTEGER NOT NULL,
    round INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    block INTEGER NOT NULL,
    step INTEGER NOT NULL,
    scalar REAL NOT NULL,
    n_examples INTEGER NOT NULL,
    batch TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    detail TEXT,
    created_at REAL NOT NULL,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS reports_state ON reports (state, id);
CREATE INDEX IF NOT EXISTS reports_batch ON reports (batch);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = "seed, block, step, scalar, n_examples"


def report_key(device_id: int, run_id: int, round_: int, r: Report) -> str:
    """The report's idempotency key: the same measurement always gets the same key."""
    return f"d{device_id}-u{run_id}-r{round_}-s{r.seed}-b{r.block}-t{r.step}"


@dataclass(frozen=True)
class Batch:
    """Reports of one round that go out together under one idempotency key."""

    key: str
    round: int
    reports: list[Report]


class Outbox:
    """Thread-safe (one connection behind a lock): the compute loop adds, the uploader thread drains."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / OUTBOX_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before add() returns
        self._db.executescript(_SCHEMA)
        # batch keys must never repeat for this device, even if this file is lost while the token is kept
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('instance', ?)", (secrets.token_hex(4),))
        self.instance = self._db.execute("SELECT value FROM meta WHERE name = 'instance'").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- the compute side -----------------------------------------------------------------------------------------
    def add(self, device_id: int, run_id: int, round_: int, report: Report) -> Report:
        """Commit one report; a report with the same key already there wins (a step recomputed after a crash) and
        is returned, so the caller applies exactly what will be uploaded."""
        key = report_key(device_id, run_id, round_, report)
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO reports (key, run_id, round, seed, block, step, scalar, n_examples, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    run_id,
                    round_,
                    report.seed,
                    report.block,
                    report.step,
                    report.scalar,
                    report.n_examples,
                    time.time(),
                ),
            )
            row = self._db.execute(f"SELECT {_COLUMNS} FROM reports WHERE key = ?", (key,)).fetchone()
        return _report(row)

    # --- the upload side ------------------------------------------------------------------------------------------
    def next_batch(self, device_id: int, limit: int) -> Batch | None:
        """The oldest unacknowledged batch: one already keyed (a send that was never acknowledged, resent as it
        was), else up to ``limit`` pending reports of the oldest round, keyed and committed before returning."""
        with self._lock:
            row = self._db.execute(
                "SELECT batch, round FROM reports WHERE state = 'pending' ORDER BY batch IS NULL, id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            batch, round_ = row
            if batch is None:
                ids = [
                    i
                    for (i,) in self._db.execute(
                        "SELECT id FROM reports WHERE state = 'pending' AND batch IS NULL AND round = ? "
                        "ORDER BY id LIMIT ?",
                        (round_, limit),
                    )
                ]
                batch = f"d{device_id}-{self.instance}-r{round_}-o{ids[0]}-n{len(ids)}"
                self._db.executemany("UPDATE reports SET batch = ? WHERE id = ?", [(batch, i) for i in ids])
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM reports WHERE batch = ? ORDER BY id", (batch,)).fetchall()
        return Batch(batch, round_, [_report(r) for r in rows])

    def settle(self, batch: str, state: str, detail: str | None = None) -> None:
        """Mark every report of ``batch`` ``acked``, ``dropped`` or ``rejected``."""
        if state not in ("acked", "dropped", "rejected"):
            raise ValueError(f"unknown outbox state {state!r}")
        with self._lock:
            self._db.execute(
                "UPDATE reports SET state = ?, detail = ?, done_at = ? WHERE batch = ?",
                (state, detail, time.time(), batch),
            )

    # --- inspection -----------------------------------------------------------------------------------------------
    def pending(self, round_: int | None = None) -> int:
        """Reports not yet settled (of one round, or all)."""
        query, args = "SELECT COUNT(*) FROM reports WHERE state = 'pending'", ()
        if round_ is not None:
            query, args = query + " AND round = ?", (round_,)
        with self._lock:
            return int(self._db.execute(query, args).fetchone()[0])

    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest unsettled report was computed; None when nothing is pending."""
        with self._lock:
            (created,) = self._db.execute("SELECT MIN(created_at) FROM reports WHERE state = 'pending'").fetchone()
        return None if created is None else max(0.0, time.time() - created)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT state, COUNT(*) FROM reports GROUP BY state").fetchall())

    def reports(self, states: Iterable[str] = ("pending", "acked", "dropped", "rejected")) -> list[tuple]:
        """(round, seed, block, step, scalar, n_examples, state) of every row in one of ``states``, oldest first."""
        states = tuple(states)
        marks = ",".join("?" * len(states))
        with self._lock:
            return self._db.execute(
                f"SELECT round, {_COLUMNS}, state FROM reports WHERE state IN ({marks}) ORDER BY id", states
            ).fetchall()


def _report(row) -> Report:
    seed, block, step, scalar, n = row
    return Report(int(seed), int(block), int(step), float(scalar), int(n))
