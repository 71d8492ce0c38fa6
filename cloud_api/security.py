"""Bearer tokens (stored as sha256 hashes), the admin token, per-device rate limiting.

Device tokens are 256-bit random strings, so a fast hash is enough: the database never holds a usable token.
Failures use fixed messages (``protocol.ERRORS``): 401 for a missing or unknown token, 403 for a token that exists
but may not call the endpoint.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

from sqlalchemy import Engine, insert, select

from cloud_api import db

TOKEN_PREFIX = "cdt_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def same_secret(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class DeviceRegistry:
    """Enrolled devices; token hash → (device id, revoked), cached in memory after the first lookup."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._cache: dict[str, tuple[int, bool]] = {}
        self._lock = threading.Lock()

    def enroll(self, name: str) -> tuple[int, str]:
        token = new_token()
        with self.engine.begin() as conn:
            device_id = conn.execute(
                insert(db.devices).values(
                    name=name, token_hash=hash_token(token), created_at=time.time(), revoked=False
                )
            ).inserted_primary_key[0]
        return int(device_id), token

    def lookup(self, token: str) -> tuple[int, bool] | None:
        h = hash_token(token)
        hit = self._cache.get(h)
        if hit is not None:
            return hit
        with self.engine.connect() as conn:
            row = conn.execute(
                select(db.devices.c.id, db.devices.c.revoked).where(db.devices.c.token_hash == h)
            ).first()
        if row is None:
            return None
        with self._lock:
            self._cache[h] = (int(row[0]), bool(row[1]))
        return self._cache[h]


class RateLimiter:
    """Token bucket per key: ``rate`` requests per second sustained, ``burst`` at once."""

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[object, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: object) -> tuple[bool, float]:
        """(allowed, seconds until the next token) for one request under ``key``."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return True, 0.0
            self._buckets[key] = (tokens, now)
            return False, (1.0 - tokens) / self.rate
