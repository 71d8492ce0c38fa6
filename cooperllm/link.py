"""Link emulation between a device and the cloud on loopback: bandwidth, latency, jitter and loss.

A phone's link, not loopback's gigabytes per second, decides whether pipelining and compression pay off, so tests
and benchmarks wrap their httpx client in :class:`LinkTransport` (sync) or :class:`AsyncLinkTransport` (async)::

    link = Link(LinkSpec.parse("2mbit:100ms:10ms:1%"))
    client = httpx.Client(base_url=url, transport=LinkTransport(link))

Model (netem-like, documented in docs/DTC.md §8): every message (request, response) waits the one-way latency plus
a jitter draw, then its bytes (body + an estimate of the headers) pass a token bucket per direction at the link
rate, in slices, so concurrent transfers share the bandwidth. A lost request never reaches the server
(``httpx.ConnectError``); a lost response was processed by the server but never arrives (``httpx.ReadError``) —
the case idempotency keys exist for.

Time is a seam: a :class:`Link` takes its clock and its sleeps (sync and async) as arguments, real ones by default,
and with ``trace=True`` keeps every delay it scheduled (:class:`Scheduled`), so tests check the exact schedule —
latency, jitter by seed, bytes over the rate — on a virtual clock instead of bounding wall time on a busy machine.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import httpx

SLICE_BYTES = 16 * 1024
HEADER_OVERHEAD = 40  # TCP/IP framing per message, added to the serialized HTTP header size
_RATE_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmg]?)(bit|bps)$")
_RECOMPUTED = (b"content-encoding", b"transfer-encoding", b"content-length")  # the body is already decoded
_TIME_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(us|ms|s)$")


class LinkSpecError(ValueError):
    """A link spec string that cannot be parsed; the message shows the expected form."""


@dataclass(frozen=True)
class LinkSpec:
    """Rates in bits/s (None: unlimited), one-way latency and jitter in seconds, loss probability per message."""

    down_bps: float | None = None
    up_bps: float | None = None
    latency_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        for name in ("down_bps", "up_bps"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise LinkSpecError(f"{name} must be > 0 or None, got {v}")
        if self.latency_s < 0 or self.jitter_s < 0:
            raise LinkSpecError("latency and jitter must be >= 0")
        if not 0.0 <= self.loss < 1.0:
            raise LinkSpecError(f"loss must be in [0, 1), got {self.loss}")

    @classmethod
    def parse(cls, spec: str) -> LinkSpec:
        """``RATE[/UPRATE][:LATENCY[:JITTER[:LOSS]]]``, e.g. ``10mbit:50ms``, ``2mbit/1mbit:100ms:10ms:1%``.

        RATE is ``<n>[k|m|g]bit`` (``bps`` is a synonym) or ``inf``; times are ``<n>us|ms|s``; LOSS is ``<n>%`` or
        a fraction. One rate applies to both directions.
        """
        parts = [p.strip().lower() for p in spec.strip().split(":")]
        if not 1 <= len(parts) <= 4 or not parts[0]:
            raise LinkSpecError(f"bad link spec {spec!r}: expected RATE[/UPRATE][:LATENCY[:JITTER[:LOSS]]]")
        rates = parts[0].split("/")
        if len(rates) > 2:
            raise LinkSpecError(f"bad link spec {spec!r}: at most DOWN/UP rates")
        down = _parse_rate(rates[0], spec)
        up = _parse_rate(rates[1], spec) if len(rates) == 2 else down
        latency = _parse_time(parts[1], spec) if len(parts) > 1 else 0.0
        jitter = _parse_time(parts[2], spec) if len(parts) > 2 else 0.0
        loss = _parse_loss(parts[3], spec) if len(parts) > 3 else 0.0
        return cls(down, up, latency, jitter, loss)

    def __str__(self) -> str:
        def rate(v: float | None) -> str:
            return "inf" if v is None else f"{v / 1e6:g}mbit"

        r = rate(self.down_bps) if self.down_bps == self.up_bps else f"{rate(self.down_bps)}/{rate(self.up_bps)}"
        return f"{r}:{self.latency_s * 1e3:g}ms:{self.jitter_s * 1e3:g}ms:{self.loss * 100:g}%"

    def transfer_time(self, nbytes: int, direction: str = "down") -> float:
        """Ideal time for one message of ``nbytes`` on an idle link: latency + serialization."""
        bps = self.down_bps if direction == "down" else self.up_bps
        return self.latency_s + (0.0 if bps is None else 8.0 * nbytes / bps)


def _parse_rate(text: str, spec: str) -> float | None:
    if text in ("inf", "unlimited"):
        return None
    m = _RATE_RE.match(text)
    if not m:
        raise LinkSpecError(f"bad rate {text!r} in link spec {spec!r}: use e.g. 10mbit, 500kbit, 1gbit or inf")
    value = float(m.group(1)) * _RATE_UNITS[m.group(2)]
    if value <= 0:
        raise LinkSpecError(f"rate must be > 0 in link spec {spec!r}")
    return value


def _parse_time(text: str, spec: str) -> float:
    m = _TIME_RE.match(text)
    if not m:
        raise LinkSpecError(f"bad time {text!r} in link spec {spec!r}: use e.g. 50ms, 0.1s or 500us")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def _parse_loss(text: str, spec: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise LinkSpecError(f"bad loss {text!r} in link spec {spec!r}: use e.g. 1% or 0.01") from None
    if not 0.0 <= value < 1.0:
        raise LinkSpecError(f"loss must be in [0, 100%) in link spec {spec!r}")
    return value


class TokenBucket:
    """Bytes per second with a burst allowance (links use none: a byte costs its serialization time); ``reserve``
    books bytes and says how long to wait (thread-safe).

    Booking is non-blocking arithmetic under a lock, so the same bucket serves threads and asyncio tasks alike.
    """

    def __init__(self, rate_bytes_s: float, burst_bytes: float = SLICE_BYTES, clock=time.monotonic):
        self.rate = float(rate_bytes_s)
        self.burst = float(burst_bytes)
        self.clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = threading.Lock()

    def reserve(self, nbytes: int) -> float:
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= nbytes
            return max(0.0, -self._tokens / self.rate)


@dataclass(frozen=True)
class Scheduled:
    """One delay a :class:`Link` scheduled (kept with ``trace=True``): a message's latency + jitter draw, or a slice's
    wait in its direction's token bucket. What the link would sleep, whatever the clock and the sleeps are."""

    direction: str | None  # "up" or "down"; None when the caller of Link.delay() did not say
    kind: str  # "latency" or "slice"
    seconds: float
    nbytes: int = 0  # the slice's bytes (0 for a latency)


@dataclass
class LinkStats:
    requests: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    lost_requests: int = 0
    lost_responses: int = 0


class Link:
    """One emulated link: the buckets and random state every transport on it shares.

    ``clock``, ``sleep`` and ``asleep`` are what the buckets read and what the transports and the proxy wait with
    (real time by default); ``trace=True`` records every scheduled delay in :attr:`trace` (off by default: a long
    benchmark would grow the list without end). Latency draws are recorded in the order of the seed's draws; slices
    in booking order per caller (threads sharing a bucket may interleave their entries).
    """

    def __init__(
        self,
        spec: LinkSpec | str,
        seed: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
        asleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        trace: bool = False,
    ):
        self.spec = LinkSpec.parse(spec) if isinstance(spec, str) else spec
        self.rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.clock, self.sleep, self.asleep = clock, sleep, asleep
        self.trace: list[Scheduled] | None = [] if trace else None

        def bucket(bps: float | None) -> TokenBucket | None:
            return None if bps is None else TokenBucket(bps / 8, burst_bytes=0, clock=clock)

        self.buckets = {"up": bucket(self.spec.up_bps), "down": bucket(self.spec.down_bps)}
        self.stats = LinkStats()

    def count(self, **increments: int) -> None:
        with self._rng_lock:
            for name, n in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + n)

    def delay(self, direction: str | None = None) -> float:
        """One-way latency plus a jitter draw (normal, σ = jitter, truncated at zero extra delay below −latency).

        ``direction`` only labels the trace entry."""
        with self._rng_lock:
            if not self.spec.jitter_s:
                seconds = self.spec.latency_s
            else:
                seconds = max(0.0, self.spec.latency_s + self.rng.gauss(0.0, self.spec.jitter_s))
            if self.trace is not None:
                self.trace.append(Scheduled(direction, "latency", seconds))
        return seconds

    def lost(self) -> bool:
        if not self.spec.loss:
            return False
        with self._rng_lock:
            return self.rng.random() < self.spec.loss

    def slices(self, nbytes: int, direction: str) -> Iterator[float]:
        """Waits, one per slice of ``nbytes`` through the direction's bucket."""
        bucket = self.buckets[direction]
        if bucket is None:
            return
        left = nbytes
        while left > 0:
            n = min(left, SLICE_BYTES)
            left -= n
            wait = bucket.reserve(n)
            if self.trace is not None:
                with self._rng_lock:
                    self.trace.append(Scheduled(direction, "slice", wait, n))
            yield wait

    def send(self, nbytes: int, direction: str) -> None:
        """Block for one message's latency and serialization (sync)."""
        self.sleep(self.delay(direction))
        for wait in self.slices(nbytes, direction):
            if wait:
                self.sleep(wait)

    async def asend(self, nbytes: int, direction: str) -> None:
        await self.asleep(self.delay(direction))
        for wait in self.slices(nbytes, direction):
            if wait:
                await self.asleep(wait)


def _request_size(request: httpx.Request, body: bytes) -> int:
    head = sum(len(k) + len(v) + 4 for k, v in request.headers.raw) + len(request.url.raw_path) + 16
    return HEADER_OVERHEAD + head + len(body)


def _response_size(response: httpx.Response, body: bytes) -> int:
    head = sum(len(k) + len(v) + 4 for k, v in response.headers.raw) + 17
    return HEADER_OVERHEAD + head + len(body)


def _rebuild(response: httpx.Response, body: bytes, request: httpx.Request) -> httpx.Response:
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _RECOMPUTED]
    return httpx.Response(
        response.status_code, headers=headers, content=body, request=request, extensions=response.extensions
    )


class LinkTransport(httpx.BaseTransport):
    """httpx transport that sends every request through an emulated :class:`Link` (sync clients)."""

    def __init__(self, link: Link | LinkSpec | str, inner: httpx.BaseTransport | None = None):
        self.link = link if isinstance(link, Link) else Link(link)
        self.inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        size = _request_size(request, body)
        self.link.count(requests=1)
        self.link.send(size, "up")
        if self.link.lost():
            self.link.count(lost_requests=1)
            raise httpx.ConnectError("emulated link loss: the request was dropped", request=request)
        self.link.count(bytes_up=size)
        response = self.inner.handle_request(request)
        try:
            content = response.read()
        finally:
            response.close()
        out = _rebuild(response, content, request)
        size = _response_size(out, content)
        self.link.send(size, "down")
        if self.link.lost():
            self.link.count(lost_responses=1)
            raise httpx.ReadError("emulated link loss: the response was dropped", request=request)
        self.link.count(bytes_down=size)
        return out

    def close(self) -> None:
        self.inner.close()


class AsyncLinkTransport(httpx.AsyncBaseTransport):
    """httpx transport that sends every request through an emulated :class:`Link` (async clients)."""

    def __init__(self, link: Link | LinkSpec | str, inner: httpx.AsyncBaseTransport | None = None):
        self.link = link if isinstance(link, Link) else Link(link)
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        size = _request_size(request, body)
        self.link.count(requests=1)
        await self.link.asend(size, "up")
        if self.link.lost():
            self.link.count(lost_requests=1)
            raise httpx.ConnectError("emulated link loss: the request was dropped", request=request)
        self.link.count(bytes_up=size)
        response = await self.inner.handle_async_request(request)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        out = _rebuild(response, content, request)
        size = _response_size(out, content)
        await self.link.asend(size, "down")
        if self.link.lost():
            self.link.count(lost_responses=1)
            raise httpx.ReadError("emulated link loss: the response was dropped", request=request)
        self.link.count(bytes_down=size)
        return out

    async def aclose(self) -> None:
        await self.inner.aclose()
