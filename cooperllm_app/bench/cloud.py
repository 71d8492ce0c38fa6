"""``cooperllm bench cloud``: N concurrent devices uploading report batches to a real server on loopback.

The server runs as a subprocess (``cooperllm serve``, one uvicorn worker, SQLite WAL); the load generator speaks
HTTP/1.1 keep-alive over asyncio streams so the client costs little CPU next to the server on a small machine.
Baseline in the same run: ``GET /v1/health`` at the same concurrency (the framework's floor). After the upload
phase every batch is sent again with its idempotency key; the database must then hold exactly the acknowledged
reports, each once. The cloud counts exactly a round's quota from each device (local_steps × blocks reports), so each
connection speaks for several enrolled devices in turn, each sending its whole quota and no more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from cooperllm.api_client import CooperClient
from cooperllm.data import shared_data_dir
from cooperllm.tiny import make_tiny_llama
from cooperllm_app.serve_process import start_serve, stop_serve


class _Conn:
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


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cloud",
        help="upload throughput and latency of the cloud service with N concurrent devices on loopback",
        description="Start `cooperllm serve` (tiny model, SQLite) as a subprocess, enrol N devices and let them "
        "upload report batches concurrently for a fixed time. Prints batches/s, p50/p99 latency, the ratio to a "
        "GET /v1/health baseline measured in the same run, and checks the database for lost or duplicated reports.",
    )
    p.add_argument("--devices", type=int, default=100, help="concurrent devices (default 100)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of uploading (default 10)")
    p.add_argument("--rate", type=float, default=500.0, help="offered batches/s in the paced phase (default 500)")
    p.add_argument("--reports-per-batch", type=int, default=4, help="reports per upload (default 4)")
    p.add_argument(
        "--devices-per-connection",
        type=int,
        default=10,
        help="enrolled devices each connection speaks for, one after another, each up to its quota (default 10)",
    )
    p.add_argument("--model", help="model for the server (default: a tiny random Llama built in a temp folder)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_bench)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc): server cost per request, robust to a busy machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def _phase(
    port: int, workers: list, duration: float, rate: float = 0.0
) -> tuple[int, list[float], dict[int, int]]:
    """Run each worker's requests until ``duration`` elapses; returns (requests, latencies ms, statuses).

    ``rate`` > 0 paces the workers (open loop, ``rate`` requests/s in total, staggered); 0 = as fast as they can.
    Every device's keep-alive connection is opened before the clock starts (steady state, not a connect storm).
    """
    conns = [_Conn("127.0.0.1", port) for _ in workers]
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


def _start_server(tmp: Path, model: str | None, env: dict) -> tuple[subprocess.Popen, int]:

    if model is None:
        model = str(make_tiny_llama(tmp / "tiny-llama", seed=0))
    public = tmp / "public.tsv"
    public.write_text("\n".join((shared_data_dir() / "sst2" / "dev.tsv").read_text().splitlines()[:201]) + "\n")
    run_cfg = {
        "strategy": "zo",
        "rounds": 1,
        "quorum": 10000,
        "min_devices": 1,
        "local_steps": 64,  # the most a round asks: a device's quota is 64 reports per block
        "blocks": None,
        "deadline_s": 86400,
    }
    proc, url = start_serve(
        [
            "--model",
            model,
            "--database-url",
            f"sqlite:///{tmp}/bench.db",
            "--state-dir",
            str(tmp / "state"),
            "--public-data",
            str(public),
            "--public-n",
            "64",
            "--seq-len",
            "24",
            "--rate-limit",
            "1000",
            "--rate-burst",
            "1000",
            "--create-run",
            json.dumps(run_cfg),
        ],
        env,
    )
    return proc, int(url.rsplit(":", 1)[1])


def run_bench(args: argparse.Namespace) -> int:

    n_dev, k = args.devices, args.reports_per_batch
    admin_token, enrol_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = dict(os.environ, COOPERLLM_ADMIN_TOKEN=admin_token, COOPERLLM_ENROLMENT_KEY=enrol_key)
    with tempfile.TemporaryDirectory(prefix="cooperllm-bench-cloud-") as tmpdir:
        tmp = Path(tmpdir)
        proc, port = _start_server(tmp, args.model, env)
        try:
            base = f"http://127.0.0.1:{port}"
            devices = []
            for i in range(n_dev * args.devices_per_connection):
                c = CooperClient(base)
                c.enroll(enrol_key, f"bench-{i}")
                info = c.current_round()
                devices.append((c.token, info.seed_lo))
                c.close()
            rnd, blocks = info.round, info.blocks
            quota = info.local_steps * len(blocks)  # reports a device may send in the round

            health = [lambda: ("GET", "/v1/health", None, b"", None) for _ in range(n_dev)]
            c0 = _cpu_s(proc.pid)
            n_h, lat_h, st_h = asyncio.run(_phase(port, health, args.duration / 2))
            rate_h = n_h / (args.duration / 2)
            cpu_h = (_cpu_s(proc.pid) - c0) / max(n_h, 1) * 1e3

            sent: list[tuple[str, bytes]] = []
            acked = {"reports": 0, "batches": 0}

            counters = [[0, 0] for _ in range(n_dev)]  # per connection: which of its devices, batches it sent

            def uploader(i: int):
                counter = counters[i]  # shared across phases: every batch is new

                def make():
                    if counter[1] * k + k > quota:  # this device's quota is spent: the connection's next device
                        counter[0], counter[1] = counter[0] + 1, 0
                    if counter[0] >= args.devices_per_connection:
                        return None
                    token, seed_lo = devices[i + n_dev * counter[0]]
                    c = counter[1]
                    counter[1] += 1
                    reports = [
                        {
                            "seed": seed_lo + c * k + j,
                            "block": blocks[(c * k + j) % len(blocks)],
                            "step": (c * k + j) // len(blocks),
                            "scalar": 0.001 * (j + 1),
                            "n_examples": 8,
                        }
                        for j in range(k)
                    ]
                    body = json.dumps({"idempotency_key": f"d{i}-{counter[0]}-b{c}", "reports": reports}).encode()
                    sent.append((token, body))

                    def done(status: int, data: bytes) -> None:
                        if status == 200:
                            acked["reports"] += json.loads(data)["accepted"]
                            acked["batches"] += 1

                    return "POST", f"/v1/rounds/{rnd}/reports", token, body, done

                return make

            c0 = _cpu_s(proc.pid)
            n_s, lat_s, st_s = asyncio.run(_phase(port, [uploader(i) for i in range(n_dev)], args.duration / 2))
            rate_s = n_s / (args.duration / 2)
            cpu_s = (_cpu_s(proc.pid) - c0) / max(n_s, 1) * 1e3
            n_u, lat_u, st_u = asyncio.run(
                _phase(port, [uploader(i) for i in range(n_dev)], args.duration, rate=args.rate)
            )
            rate_u = n_u / args.duration
            for code, count in st_s.items():
                st_u[code] = st_u.get(code, 0) + count

            replays = {"replayed": 0}
            queue = list(sent)

            def resender():
                def make():
                    if not queue:
                        return None
                    token, body = queue.pop()

                    def done(status: int, data: bytes) -> None:
                        if status == 200 and json.loads(data)["replay"]:
                            replays["replayed"] += 1

                    return "POST", f"/v1/rounds/{rnd}/reports", token, body, done

                return make

            # the retry storm: every batch again with its key; it must count nothing
            asyncio.run(_phase(port, [resender() for _ in range(n_dev)], 3600))
        finally:
            stop_serve(proc)
        con = sqlite3.connect(f"file:{tmp}/bench.db?mode=ro", uri=True)
        db_reports, db_distinct = con.execute(
            "SELECT COUNT(*), COUNT(DISTINCT CAST(device_id AS TEXT) || ':' || CAST(seed AS TEXT)) FROM reports"
        ).fetchone()
        db_batches = con.execute("SELECT COUNT(*) FROM upload_batches").fetchone()[0]
        con.close()

    result = {
        "devices": n_dev,
        "reports_per_batch": k,
        "duration_s": args.duration,
        "baseline_health_rps": round(rate_h, 1),
        "baseline_health_p50_ms": round(_pct(lat_h, 50), 2),
        "baseline_health_p99_ms": round(_pct(lat_h, 99), 2),
        "server_cpu_ms_per_health": round(cpu_h, 3),
        "server_cpu_ms_per_upload": round(cpu_s, 3),
        "cpu_bound_uploads_per_core_s": round(1e3 / cpu_s, 1) if cpu_s else None,
        "saturated_batches_per_s": round(rate_s, 1),
        "saturated_p50_ms": round(_pct(lat_s, 50), 2),
        "saturated_p99_ms": round(_pct(lat_s, 99), 2),
        "offered_batches_per_s": args.rate,
        "upload_batches_per_s": round(rate_u, 1),
        "upload_p50_ms": round(_pct(lat_u, 50), 2),
        "upload_p99_ms": round(_pct(lat_u, 99), 2),
        "saturated_vs_health_throughput": round(rate_s / rate_h, 3) if rate_h else None,
        "upload_statuses": {str(s): c for s, c in sorted(st_u.items())},
        "health_statuses": {str(s): c for s, c in sorted(st_h.items())},
        "acked_batches": acked["batches"],
        "acked_reports": acked["reports"],
        "resent_batches_answered_as_replay": replays["replayed"],
        "db_batches": db_batches,
        "db_reports": db_reports,
        "db_distinct_reports": db_distinct,
        "lost_reports": acked["reports"] - db_distinct,
        "duplicated_reports": db_reports - db_distinct,
    }
    ok = result["lost_reports"] == 0 and result["duplicated_reports"] == 0
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"cloud upload benchmark: {n_dev} concurrent devices, {k} reports/batch, {args.duration:.0f} s, "
            "1 uvicorn worker, SQLite WAL"
        )
        print(f"{'phase':<28} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
        print(f"{'GET /v1/health (baseline)':<28} {rate_h:>9.1f} {_pct(lat_h, 50):>8.2f} {_pct(lat_h, 99):>8.2f}")
        print(f"{'POST reports, saturated':<28} {rate_s:>9.1f} {_pct(lat_s, 50):>8.2f} {_pct(lat_s, 99):>8.2f}")
        paced = f"POST reports, paced {args.rate:g}/s"
        print(f"{paced:<28} {rate_u:>9.1f} {_pct(lat_u, 50):>8.2f} {_pct(lat_u, 99):>8.2f}")
        print(
            f"server CPU per request: health {cpu_h:.3f} ms, upload {cpu_s:.3f} ms "
            f"(= {result['cpu_bound_uploads_per_core_s']} uploads/s per fully available core)"
        )
        print(
            f"saturated uploads / health throughput: {result['saturated_vs_health_throughput']}x; "
            f"statuses {result['upload_statuses']}"
        )
        print(
            f"acknowledged {acked['reports']} reports in {acked['batches']} batches; database holds "
            f"{db_reports} reports ({db_distinct} distinct) in {db_batches} batches; every batch resent: "
            f"{replays['replayed']} answered as replays"
        )
        print(f"lost: {result['lost_reports']}, duplicated: {result['duplicated_reports']} -> {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1
