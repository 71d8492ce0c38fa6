"""Synchronous transfers with retry and backoff: the small seam the SPC/DTC issue replaces with pipelined ones.

Every call to the cloud goes through :meth:`Transfers.call`: network errors, 429 and 5xx are retried with exponential
backoff and jitter (honouring ``Retry-After``), other 4xx answers are raised at once — they will not get better.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx

from cooperllm.api_client import ApiError

log = logging.getLogger(__name__)
T = TypeVar("T")


class CloudUnavailableError(ConnectionError):
    """The cloud stayed unreachable for longer than the configured patience."""


@dataclass
class Backoff:
    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0
    jitter: float = 0.25  # ± fraction
    give_up_after_s: float | None = None  # None: keep trying (a phone waits for the network)

    def delays(self):
        d = self.initial_s
        while True:
            yield d * (1 + random.uniform(-self.jitter, self.jitter))
            d = min(d * self.factor, self.max_s)


class Transfers:
    def __init__(self, backoff: Backoff | None = None, sleep: Callable[[float], None] = time.sleep):
        self.backoff = backoff or Backoff()
        self.sleep = sleep
        self.retries = 0

    def call(self, what: str, fn: Callable[..., T], *args, **kwargs) -> T:

        start = time.monotonic()
        delays = self.backoff.delays()
        while True:
            try:
                return fn(*args, **kwargs)
            except ApiError as exc:
                if not exc.retryable:
                    raise
                delay = max(next(delays), exc.retry_after or 0.0)
                reason = str(exc)
            except (httpx.TransportError, OSError) as exc:
                delay = next(delays)
                reason = f"{type(exc).__name__}: {exc}"
            waited = time.monotonic() - start
            limit = self.backoff.give_up_after_s
            if limit is not None and waited + delay > limit:
                raise CloudUnavailableError(f"{what}: cloud unreachable for {waited:.0f} s ({reason})")
            self.retries += 1
            log.warning("%s failed (%s); retrying in %.1f s", what, reason, delay)
            self.sleep(delay)
