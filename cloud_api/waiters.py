"""Long-poll support: request handlers wait for a change of round without holding a thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable


class RoundWaiters:
    """asyncio tasks wait for a change of round (opened, closed, failed, finished), and the engine, on whatever thread
    it runs, wakes them through their event loops. A waiter costs an event, not a thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def pending(self) -> int:
        """How many long polls are waiting now (for /metrics and for tests that order events by it)."""
        with self._lock:
            return len(self._waiters)

    def notify(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)

    async def wait(self, done: Callable[[], bool], timeout: float) -> None:
        """Return when ``done()`` holds or after ``timeout`` seconds, whichever comes first."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not done():
            left = end - loop.time()
            if left <= 0:
                return
            entry = (loop, asyncio.Event())
            with self._lock:
                self._waiters.add(entry)
            try:
                if done():  # changed between the look and the registration
                    return
                await asyncio.wait_for(entry[1].wait(), left)
            except TimeoutError:
                return
            finally:
                with self._lock:
                    self._waiters.discard(entry)
