"""Link emulation against a real HTTP server on 127.0.0.1: throughput, latency, jitter and loss land near the spec.

Timing checks are ratios with wide tolerances (a busy 2-core machine only ever adds delay), never exact times.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from cooperllm.link import AsyncLinkTransport, Link, LinkProxy, LinkSpec, LinkSpecError, LinkTransport, TokenBucket


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls on keep-alive connections
    wbufsize = 1 << 16
    hits = 0
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        n = int(self.path.rsplit("/", 1)[-1])
        self._reply(bytes(n))

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with _Handler.lock:
            _Handler.hits += 1
        self._reply(str(len(body)).encode())

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_parse_specs() -> None:
    s = LinkSpec.parse("10mbit:50ms")
    assert (s.down_bps, s.up_bps, s.latency_s, s.jitter_s, s.loss) == (10e6, 10e6, 0.05, 0.0, 0.0)
    s = LinkSpec.parse("2mbit:100ms:10ms:1%")
    assert (s.down_bps, s.latency_s, s.jitter_s, s.loss) == (2e6, 0.1, 0.01, 0.01)
    s = LinkSpec.parse("20Mbit/5mbit:0.03s:500us:0.05")
    assert (s.down_bps, s.up_bps, s.latency_s, s.jitter_s, s.loss) == (20e6, 5e6, 0.03, 0.0005, 0.05)
    assert LinkSpec.parse("inf").down_bps is None
    assert LinkSpec.parse("500kbps").down_bps == 500e3
    assert LinkSpec.parse(str(LinkSpec.parse("2mbit/1mbit:100ms:10ms:1%"))) == LinkSpec.parse(
        "2mbit/1mbit:100ms:10ms:1%"
    )
    assert LinkSpec.parse("10mbit:50ms").transfer_time(1_250_000) == pytest.approx(1.05)


@pytest.mark.parametrize(
    "bad",
    ["", "fast", "10mb", "10mbit:50", "10mbit:50ms:1ms:150%", "0mbit", "1/2/3mbit", "1mbit:1ms:1ms:1%:x", "-1mbit"],
)
def test_bad_specs_are_clear_errors(bad: str) -> None:
    with pytest.raises(LinkSpecError, match="link spec|loss|rate"):
        LinkSpec.parse(bad)


def test_token_bucket_rate_with_a_fake_clock() -> None:
    now = [0.0]
    bucket = TokenBucket(1000.0, burst_bytes=100, clock=lambda: now[0])
    assert bucket.reserve(100) == 0.0  # the burst
    assert bucket.reserve(500) == pytest.approx(0.5)
    now[0] = 0.5
    assert bucket.reserve(1000) == pytest.approx(1.0)
    now[0] = 10.0
    assert bucket.reserve(50) == 0.0  # refilled, capped at the burst


def test_throughput_download_and_upload(server: str) -> None:
    spec = LinkSpec.parse("10mbit:5ms")
    with httpx.Client(base_url=server, transport=LinkTransport(Link(spec))) as client:
        t0 = time.perf_counter()
        r = client.get("/bytes/1000000")
        down = time.perf_counter() - t0
        assert r.status_code == 200 and len(r.content) == 1_000_000
        t0 = time.perf_counter()
        r = client.post("/upload", content=bytes(1_000_000))
        up = time.perf_counter() - t0
        assert r.text == "1000000"
    ideal = spec.transfer_time(1_000_000) + spec.latency_s  # 0.81 s
    for measured in (down, up):
        assert measured >= 0.7, f"1 MB over 10 Mbit/s took {measured:.2f} s, faster than the link allows"
        assert measured <= 2.5 * ideal + 0.5, f"1 MB over 10 Mbit/s took {measured:.2f} s (ideal {ideal:.2f})"


def test_asymmetric_rates(server: str) -> None:
    with httpx.Client(base_url=server, transport=LinkTransport("100mbit/4mbit")) as client:
        t0 = time.perf_counter()
        client.get("/bytes/500000")
        down = time.perf_counter() - t0
        t0 = time.perf_counter()
        client.post("/upload", content=bytes(500_000))
        up = time.perf_counter() - t0
    assert up >= 0.9  # 500 kB at 4 Mbit/s = 1.0 s
    assert down < up / 3


def test_latency_and_jitter(server: str) -> None:
    with httpx.Client(base_url=server, transport=LinkTransport("inf:40ms:10ms", inner=None)) as client:
        client.get("/bytes/10")  # connection set-up outside the measurement
        rtts = []
        for _ in range(30):
            t0 = time.perf_counter()
            client.get("/bytes/10")
            rtts.append(time.perf_counter() - t0)
    # request and response each wait 40 ms ± 10 ms: mean 80 ms, σ ≈ 14 ms
    assert 0.07 <= statistics.median(rtts) <= 0.2
    assert statistics.stdev(rtts) >= 0.005
    with httpx.Client(base_url=server, transport=LinkTransport("inf:40ms")) as client:
        client.get("/bytes/10")
        t0 = time.perf_counter()
        for _ in range(5):
            client.get("/bytes/10")
        assert 0.4 <= time.perf_counter() - t0 <= 1.5


def test_loss_drops_requests_and_responses(server: str) -> None:
    link = Link("inf:0ms:0ms:20%", seed=1)
    before = _Handler.hits
    ok = failed_connect = failed_read = 0
    with httpx.Client(base_url=server, transport=LinkTransport(link)) as client:
        for _ in range(300):
            try:
                client.post("/upload", content=b"x")
                ok += 1
            except httpx.ConnectError:
                failed_connect += 1
            except httpx.ReadError:
                failed_read += 1
    # each exchange survives with (1 − 0.2)² = 0.64
    assert 0.5 <= ok / 300 <= 0.78
    assert failed_connect > 20 and failed_read > 20
    # a dropped response was still processed by the server (what idempotency keys are for); a dropped request not
    assert _Handler.hits - before == ok + failed_read
    assert link.stats.lost_requests == failed_connect and link.stats.lost_responses == failed_read


def test_async_transfers_share_the_bandwidth(server: str) -> None:
    async def main() -> tuple[float, list[int]]:
        transport = AsyncLinkTransport(Link("8mbit:10ms"))
        async with httpx.AsyncClient(base_url=server, transport=transport) as client:
            t0 = time.perf_counter()
            rs = await asyncio.gather(*(client.get("/bytes/250000") for _ in range(4)))
            return time.perf_counter() - t0, [len(r.content) for r in rs]

    elapsed, sizes = asyncio.run(main())
    assert sizes == [250_000] * 4
    # 1 MB in total over one 8 Mbit/s link: ≥ 0.9 s whatever the concurrency (alone, each would take 0.25 s)
    assert 0.85 <= elapsed <= 3.0


def test_concurrent_threads_share_one_link(server: str) -> None:
    link = Link("8mbit")
    durations: list[float] = []

    def fetch() -> None:
        with httpx.Client(base_url=server, transport=LinkTransport(link)) as client:
            t0 = time.perf_counter()
            client.get("/bytes/250000")
            durations.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.perf_counter() - t0 >= 0.85
    assert link.stats.bytes_down >= 1_000_000


def test_tcp_proxy_throughput_latency_and_loss(server: str) -> None:
    port = int(server.rsplit(":", 1)[1])
    with LinkProxy("10mbit:30ms", ("127.0.0.1", port)) as proxy, httpx.Client(base_url=proxy.url) as client:
        t0 = time.perf_counter()
        r = client.get("/bytes/1000000")
        down = time.perf_counter() - t0
        assert len(r.content) == 1_000_000
        t0 = time.perf_counter()
        assert client.post("/upload", content=bytes(500_000)).text == "500000"
        up = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(5):
            client.get("/bytes/10")  # keep-alive: each exchange costs one round trip of 2 × 30 ms
        rtt = (time.perf_counter() - t0) / 5
    assert 0.75 <= down <= 3.0  # 1 MB at 10 Mbit/s: 0.8 s + latency
    assert 0.38 <= up <= 2.0
    assert 0.055 <= rtt <= 0.3
    assert proxy.link.stats.bytes_down >= 1_000_000 and proxy.link.stats.bytes_up >= 500_000

    lossy = Link("inf:0ms:0ms:30%", seed=3)
    ok = 0
    with LinkProxy(lossy, ("127.0.0.1", port)) as proxy:
        for _ in range(40):
            try:
                with httpx.Client(base_url=proxy.url) as client:
                    ok += client.get("/bytes/5").content == bytes(5)
            except httpx.TransportError:
                pass
    assert ok + lossy.stats.lost_requests == 40
    assert 5 <= lossy.stats.lost_requests <= 22


def test_link_proxy_cli(server: str) -> None:
    import subprocess
    import sys

    port = server.rsplit(":", 1)[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cooperllm_app.cli",
            "link-proxy",
            "--target",
            f"127.0.0.1:{port}",
            "--spec",
            "inf:20ms",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        listen = line.split(" : ")[1].split(" -> ")[0]
        t0 = time.perf_counter()
        assert httpx.get(f"http://{listen}/bytes/3").content == bytes(3)
        assert time.perf_counter() - t0 >= 0.04  # 20 ms each way
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run(
        [sys.executable, "-m", "cooperllm_app.cli", "link-proxy", "--target", "x", "--spec", "fast"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "error:" in bad.stderr
