"""One service per database: the lock a ``cooperllm serve`` process holds on its database for as long as it runs.

A service on its own (the default) keeps the open round in memory (quotas, duplicates, completion counts, the closing
state) and is the only writer of rounds and adapters, so a second process on the same database would count a device's
quota twice and could accept a report after the first one read the round for aggregation: it is refused at start with
one line. Workers started with ``shared_database`` count uploads in the database and elect one leader
(``cloud_api.leader``); they hold the lock in shared mode, so any number of them run together, and neither kind starts
beside the other.

PostgreSQL: a session-level advisory lock on a connection the service keeps open; the server releases it when that
connection ends, so a killed service frees its database at once. SQLite: an exclusive ``flock`` on a file beside the
database, released by the kernel when the process ends. An in-memory SQLite database is private to its process and
needs none.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy import Connection, Engine, text

SERVICE_LOCK = 0x43_6F_6F_71  # pg_try_advisory_lock key (the migration lock is another key)


class DatabaseInUse(ValueError):
    """Another service holds the database (a one-line error for the operator)."""


class ServiceLock:
    """Held from :meth:`acquire` until :meth:`release` (or the process's end)."""

    def __init__(self, engine: Engine, shared: bool = False):
        self.engine = engine
        self.shared = shared
        self._conn: Connection | None = None
        self._fd: int | None = None

    def acquire(self) -> ServiceLock:
        where = self.engine.url.render_as_string(hide_password=True)
        if self.engine.dialect.name == "postgresql":
            conn = self.engine.connect()
            take = "pg_try_advisory_lock_shared" if self.shared else "pg_try_advisory_lock"
            held = conn.execute(text(f"SELECT {take}(:key)"), {"key": SERVICE_LOCK}).scalar_one()
            conn.commit()
            if not held:
                conn.close()
                kind = "a cooperllm service that does not share it" if self.shared else "another cooperllm service"
                raise DatabaseInUse(f"{kind} is using the database {where}: stop it first")
            self._conn = conn
            return self
        database = self.engine.url.database
        if not database or database == ":memory:":
            return self
        path = Path(database).with_name(Path(database).name + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatabaseInUse(
                f"another cooperllm service is using the database {where} (it holds {path}): stop it first"
            ) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._conn is not None:
            try:
                release = "pg_advisory_unlock_shared" if self.shared else "pg_advisory_unlock"
                self._conn.execute(text(f"SELECT {release}(:key)"), {"key": SERVICE_LOCK})
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
