"""The load generator of ``cooperllm bench cloud``: keep-alive HTTP/1.1 over asyncio streams, cheap enough in CPU to
run beside the server it measures on a small machine, and the numbers it reports (percentiles, a process's CPU)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np


class Conn:
    """One keep-alive HTTP/1.1 connection; enough of the protocol for fixed-length JSON answers."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, token: str | None, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.lower() == "content-length":
                length = int(v)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc): server cost per request, robust to a busy machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores; /proc/stat): with a database server beside the
    workers, the cost per request that a worker's own CPU time leaves out."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def phase(
    port: int, workers: list, duration: float, rate: float = 0.0
) -> tuple[int, list[float], dict[int, int]]:
    """Run each worker's requests until ``duration`` elapses; returns (requests, latencies ms, statuses).

    ``rate`` > 0 paces the workers (open loop, ``rate`` requests/s in total, staggered); 0 = as fast as they can.
    Every device's keep-alive connection is opened before the clock starts (steady state, not a connect storm).
    """
    conns = [Conn("127.0.0.1", port) for _ in workers]
    for c in conns:
        c.reader, c.writer = await asyncio.open_connection(c.host, c.port)
    start = time.perf_counter()
    stop = start + duration
    interval = len(workers) / rate if rate > 0 else 0.0
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def loop(idx: int, make_request):
        conn = conns[idx]
        due = start + (idx / len(workers)) * interval
        try:
            while time.perf_counter() < stop:
                if interval:
                    wait = due - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    due += interval
                req = make_request()
                if req is None:
                    break
                method, path, token, body, on_done = req
                t0 = time.perf_counter()
                status, data = await conn.request(method, path, token, body)
                latencies.append((time.perf_counter() - t0) * 1e3)
                statuses[status] = statuses.get(status, 0) + 1
                if on_done is not None:
                    on_done(status, data)
        finally:
            conn.close()

    await asyncio.gather(*(loop(i, w) for i, w in enumerate(workers)))
    return len(latencies), latencies, statuses
