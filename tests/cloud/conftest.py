"""The live server's names for the cloud tests (the ``live`` and ``public_tsv`` fixtures are in tests/conftest.py,
shared with tests/security)."""

from __future__ import annotations

from live_cloud import ADMIN, ENROL, TEST_SEED_KEY, LiveServer, start_server

__all__ = ["ADMIN", "ENROL", "TEST_SEED_KEY", "LiveServer", "start_server"]
