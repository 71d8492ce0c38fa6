"""Bearer tokens and enrolment tokens (stored as sha256 hashes), the admin token, per-key rate limiting.

Device and enrolment tokens are 256-bit random strings, so a fast hash is enough: the database never holds a usable
token. An enrolment token is spent atomically in the store (one UPDATE … WHERE uses_left > 0), so concurrent enrolments
cannot spend one use twice. Revoking a device updates the store and the in-memory cache together, so it takes effect
on the device's next request. Failures use fixed messages (``protocol.ERRORS``): 401 for a missing or unknown token,
403 for a token that exists but may not call the endpoint.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

from sqlalchemy import Engine, insert, select, update

from cloud_api import db

TOKEN_PREFIX = "cdt_"
ENROLMENT_TOKEN_PREFIX = "cet_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str = TOKEN_PREFIX) -> str:
    return prefix + secrets.token_urlsafe(32)


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

    def issue_enrolment_token(self, uses: int, label: str) -> tuple[int, str]:
        """A new enrolment token good for ``uses`` enrolments: (id, token); only its hash is stored."""
        token = new_token(ENROLMENT_TOKEN_PREFIX)
        with self.engine.begin() as conn:
            token_id = conn.execute(
                insert(db.enrolment_tokens).values(
                    token_hash=hash_token(token), label=label, uses_left=uses, created_at=time.time()
                )
            ).inserted_primary_key[0]
        return int(token_id), token

    def spend_enrolment_token(self, token: str) -> bool:
        """Use up one enrolment of ``token``; False if it is unknown or spent."""
        t = db.enrolment_tokens
        with self.engine.begin() as conn:
            spent = conn.execute(
                update(t)
                .where(t.c.token_hash == hash_token(token), t.c.uses_left > 0)
                .values(uses_left=t.c.uses_left - 1)
            )
        return spent.rowcount == 1

    def revoke(self, device_id: int) -> bool:
        """Revoke a device's token, in the store and the cache at once; False for an unknown device."""
        with self._lock:
            with self.engine.begin() as conn:
                found = conn.execute(update(db.devices).where(db.devices.c.id == device_id).values(revoked=True))
            for h, (dev, _) in list(self._cache.items()):
                if dev == device_id:
                    self._cache[h] = (dev, True)
        return found.rowcount == 1

    def lookup(self, token: str) -> tuple[int, bool] | None:
        """(device id, revoked) for a token, None if unknown. A miss reads the store under the lock that ``revoke``
        holds, so a revocation is never overwritten by a stale read."""
        h = hash_token(token)
        hit = self._cache.get(h)
        if hit is not None:
            return hit
        with self._lock:
            hit = self._cache.get(h)
            if hit is not None:
                return hit
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(db.devices.c.id, db.devices.c.revoked).where(db.devices.c.token_hash == h)
                ).first()
            if row is None:
                return None
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
