"""Which worker closes rounds: the aggregation leader, elected with a PostgreSQL advisory lock.

Workers that share a database (``Settings.shared_database``) all accept uploads and answer reads; exactly one of them
runs the round clock and the rectifier. Leadership is a session-level ``pg_try_advisory_lock`` on a connection the
leader keeps open: the database frees it the moment that connection ends, so when a leader is killed the next worker
to try takes over, restores the round from the store and finishes it with the same deterministic aggregation. A
service on its own is always its own leader.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)

LEADER_LOCK = 0x43_6F_6F_6C  # the service lock and the migration lock are other keys


class Leadership:
    """``is_leader`` after :meth:`try_lead` won; kept until :meth:`release` or the process's end."""

    def __init__(self, engine: Engine, shared: bool):
        self.engine = engine
        self.shared = shared
        self._conn: Connection | None = None

    @property
    def is_leader(self) -> bool:
        return not self.shared or self._conn is not None

    def try_lead(self) -> bool:
        """True when this worker is (now) the leader. A follower asks on every tick of its clock."""
        if self.is_leader:
            return True
        conn = self.engine.connect()
        try:
            won = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_LOCK}).scalar_one()
            conn.commit()
        except Exception:
            conn.close()
            raise
        if not won:
            conn.close()
            return False
        self._conn = conn
        log.info("this worker is now the aggregation leader")
        return True

    def still_leading(self) -> bool:
        """Whether the leader's lock connection is alive (the database drops the lock with it): a leader that lost it
        stops closing rounds and competes again."""
        if self._conn is None:
            return not self.shared
        try:
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
            return True
        except Exception:
            log.error("the aggregation leader lost its database connection: stepping down")
            self._drop()
            return False

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LEADER_LOCK})
            self._conn.commit()
        except Exception:  # the connection is gone: so is the lock
            log.debug("leader lock released with its connection")
        self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("closing the leader's lock connection failed", exc_info=True)
