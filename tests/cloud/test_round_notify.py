"""LISTEN/NOTIFY between workers on a real PostgreSQL server: a committed change of round reaches every listener, a
rolled-back one reaches none."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import create_engine

from cloud_api.notify import RoundListener, announce_round_change

pytestmark = pytest.mark.integration


def test_a_committed_round_change_reaches_the_listener_and_a_rolled_back_one_does_not(postgres):
    engine = create_engine(postgres.database("notify"))
    heard = []
    listening, message = threading.Event(), threading.Event()

    def on_change() -> None:
        heard.append(1)
        (message if listening.is_set() else listening).set()  # the first call: connected, nothing missed

    listener = RoundListener(engine, on_change)
    listener.start()
    try:
        assert listening.wait(30)
        with engine.connect() as conn:
            announce_round_change(conn)
            conn.rollback()
        assert not message.wait(1.5)  # NOTIFY leaves with the commit only
        with engine.begin() as conn:
            announce_round_change(conn)
        assert message.wait(30)
        assert len(heard) == 2
    finally:
        listener.stop()
        engine.dispose()
