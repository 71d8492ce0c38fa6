"""Workers sharing a PostgreSQL database hear of a change of round at once: ``LISTEN``/``NOTIFY``.

Whoever changes the round in the store (the leader opening, extending, failing or closing one; any worker creating a
run) sends ``NOTIFY`` in the same transaction, so the message leaves only if the change commits. Every worker keeps
one listening connection; a message makes its next look at the store come now rather than at its next poll (every
``FOLLOW_S``), which stays as the fallback when a message is lost with a broken connection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)

CHANNEL = "cooperllm_rounds"


def announce_round_change(conn: Connection) -> None:
    """NOTIFY the other workers, delivered when ``conn``'s transaction commits (a no-op outside PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"NOTIFY {CHANNEL}"))


class RoundListener:
    """A thread that LISTENs on CHANNEL and calls ``on_change`` for every message (reconnecting after an error)."""

    def __init__(self, engine: Engine, on_change: Callable[[], None]):
        self.conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="round-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.on_change()  # anything missed while (re)connecting
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.on_change()
            except psycopg.Error as exc:
                log.warning("round listener: %s; polling the store until it reconnects", exc)
                self._stop.wait(1.0)
