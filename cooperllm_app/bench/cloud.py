"""``cooperllm bench cloud``: N concurrent devices uploading report batches to real servers on loopback.

Each deployment runs as subprocesses (``cooperllm serve``): one process on SQLite (WAL), the default, and — with
``--database-url`` — 1 or more workers sharing a PostgreSQL database (``--shared-database``, one port through
SO_REUSEPORT), each in a fresh database made for the run and dropped after it. The load generator speaks HTTP/1.1
keep-alive over asyncio streams (``loadgen``). Baseline in the same run: ``GET /v1/health`` at the same concurrency
(the framework's floor). After the upload phases every batch is sent again with its idempotency key; the database must
then hold exactly the acknowledged reports, each once. The cloud counts exactly a round's quota from each device
(local_steps × blocks reports), so each connection speaks for several enrolled devices in turn, each sending its whole
quota and no more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

from cooperllm.data import shared_data_dir
from cooperllm.tiny import make_tiny_llama
from cooperllm_app.bench.loadgen import cpu_s, machine_busy_s, pct, phase
from cooperllm_app.serve_process import start_serve, stop_serve

RUN = {
    "strategy": "zo",
    "rounds": 1,
    "quorum": 10000,
    "min_devices": 1,
    "local_steps": 64,  # the most a round asks: a device's quota is 64 reports per block
    "blocks": None,
    "deadline_s": 86400,
}


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cloud",
        help="upload throughput and latency of the cloud service with N concurrent devices on loopback",
        description="Start `cooperllm serve` (tiny model) as subprocesses — one process on SQLite, and with "
        "--database-url each --workers count of workers sharing a fresh PostgreSQL database — enrol N devices and "
        "let them upload report batches concurrently for a fixed time. Prints batches/s and p50/p99 latency side "
        "by side, the ratio to a GET /v1/health baseline measured in the same run, and checks every database for "
        "lost or duplicated reports.",
    )
    p.add_argument("--devices", type=int, nargs="+", default=[100], help="concurrent devices (default 100)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of uploading (default 10)")
    p.add_argument("--rate", type=float, default=500.0, help="offered batches/s in the paced phase (default 500)")
    p.add_argument("--reports-per-batch", type=int, default=4, help="reports per upload (default 4)")
    p.add_argument(
        "--devices-per-connection",
        type=int,
        default=10,
        help="enrolled devices each connection speaks for, one after another, each up to its quota (default 10)",
    )
    p.add_argument(
        "--database-url",
        help="a PostgreSQL server (postgresql+psycopg://USER@HOST/DB) whose user may create databases: each "
        "--workers count runs on a fresh database there, dropped afterwards (the SQLite process runs anyway)",
    )
    p.add_argument(
        "--workers", type=int, nargs="+", default=[1], help="PostgreSQL worker counts to compare (default 1)"
    )
    p.add_argument("--model", help="model for the server (default: a tiny random Llama built in a temp folder)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_bench)


class Deployment:
    """``workers`` cooperllm serve processes on one database and state folder, listening on one port."""

    def __init__(self, tmp: Path, model: str, env: dict, database_url: str, workers: int):
        self.database_url, self.workers = database_url, workers
        shared = workers > 1 or database_url.startswith("postgresql")
        public = tmp / "public.tsv"
        public.write_text("\n".join((shared_data_dir() / "sst2" / "dev.tsv").read_text().splitlines()[:201]) + "\n")
        port = _free_port()
        options = [
            *("--model", model, "--database-url", database_url, "--state-dir", str(tmp / "state")),
            *("--public-data", str(public), "--public-n", "64", "--seq-len", "24", "--port", str(port)),
            *("--rate-limit", "1000", "--rate-burst", "1000"),
            *(["--shared-database", "--reuse-port"] if shared else []),
        ]
        self.procs: list[subprocess.Popen] = []
        try:
            for i in range(workers):  # the first creates the run; the others find it running
                extra = ["--create-run", json.dumps(RUN)] if i == 0 else []
                self.procs.append(start_serve([*options, *extra], env)[0])
        except BaseException:
            self.stop()
            raise
        self.port = port

    def cpu_s(self) -> float:
        return sum(cpu_s(p.pid) for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            stop_serve(p)

    @property
    def label(self) -> str:
        backend = "SQLite" if self.database_url.startswith("sqlite") else "PostgreSQL"
        return f"{backend}, {self.workers} worker{'s' if self.workers > 1 else ''}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(method: str, path: str, token: str | None, body: dict | None, on_done):
    return method, path, token, b"" if body is None else json.dumps(body).encode(), on_done


def _enrol(port: int, n_conn: int, per_conn: int, enrol_key: str) -> tuple[list[tuple[str, int]], dict]:
    """Enrol n_conn × per_conn devices concurrently; returns (token, seed_lo) per device and the round's info."""
    tokens: list[str | None] = [None] * (n_conn * per_conn)
    infos: list[dict | None] = [None] * len(tokens)

    def enroller(i: int):
        todo = [i + n_conn * j for j in range(per_conn)]

        def make():
            while todo:
                d = todo[0]
                if tokens[d] is None:

                    def got_token(status: int, data: bytes, d=d) -> None:
                        if status != 201:
                            raise RuntimeError(f"enrolment failed: HTTP {status} {data[:200]!r}")
                        tokens[d] = json.loads(data)["token"]

                    body = {"enrolment_key": enrol_key, "device_name": f"bench-{d}"}
                    return _request("POST", "/v1/enroll", None, body, got_token)
                todo.pop(0)

                def got_info(status: int, data: bytes, d=d) -> None:
                    if status != 200:
                        raise RuntimeError(f"round info failed: HTTP {status} {data[:200]!r}")
                    infos[d] = json.loads(data)

                return _request("GET", "/v1/rounds/current", tokens[d], None, got_info)
            return None

        return make

    asyncio.run(phase(port, [enroller(i) for i in range(n_conn)], 3600))
    return [(t, info["seed_lo"]) for t, info in zip(tokens, infos, strict=True)], infos[0]


def measure(dep: Deployment, n_dev: int, args: argparse.Namespace, enrol_key: str) -> dict:
    """The health baseline, a saturated and a paced upload phase, the retry storm and the database check."""
    k, port = args.reports_per_batch, dep.port
    devices, info = _enrol(port, n_dev, args.devices_per_connection, enrol_key)
    rnd, blocks = info["round"], info["blocks"]
    quota = info["local_steps"] * len(blocks)  # reports a device may send in the round

    health = [lambda: ("GET", "/v1/health", None, b"", None) for _ in range(n_dev)]
    c0 = dep.cpu_s()
    n_h, lat_h, st_h = asyncio.run(phase(port, health, args.duration / 2))
    rate_h = n_h / (args.duration / 2)
    cpu_h = (dep.cpu_s() - c0) / max(n_h, 1) * 1e3

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

    c0, m0 = dep.cpu_s(), machine_busy_s()
    n_s, lat_s, st_s = asyncio.run(phase(port, [uploader(i) for i in range(n_dev)], args.duration / 2))
    rate_s = n_s / (args.duration / 2)
    cpu_up = (dep.cpu_s() - c0) / max(n_s, 1) * 1e3
    machine_up = (machine_busy_s() - m0) / max(n_s, 1) * 1e3
    n_u, lat_u, st_u = asyncio.run(phase(port, [uploader(i) for i in range(n_dev)], args.duration, rate=args.rate))
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

    asyncio.run(phase(port, [resender() for _ in range(n_dev)], 3600))  # the retry storm: it must count nothing
    db_reports, db_distinct, db_batches = _stored(dep.database_url)
    return {
        "deployment": dep.label,
        "workers": dep.workers,
        "devices": n_dev,
        "baseline_health_rps": round(rate_h, 1),
        "baseline_health_p50_ms": round(pct(lat_h, 50), 2),
        "baseline_health_p99_ms": round(pct(lat_h, 99), 2),
        "server_cpu_ms_per_health": round(cpu_h, 3),
        "server_cpu_ms_per_upload": round(cpu_up, 3),
        # the whole machine: workers, database server and the load generator itself
        "machine_cpu_ms_per_upload": round(machine_up, 3),
        "saturated_batches_per_s": round(rate_s, 1),
        "saturated_p50_ms": round(pct(lat_s, 50), 2),
        "saturated_p99_ms": round(pct(lat_s, 99), 2),
        "offered_batches_per_s": args.rate,
        "upload_batches_per_s": round(rate_u, 1),
        "upload_p50_ms": round(pct(lat_u, 50), 2),
        "upload_p99_ms": round(pct(lat_u, 99), 2),
        "saturated_vs_health_throughput": round(rate_s / rate_h, 3) if rate_h else None,
        "upload_statuses": {str(s): c for s, c in sorted(st_u.items())},
        "acked_batches": acked["batches"],
        "acked_reports": acked["reports"],
        "resent_batches": len(sent),
        "resent_batches_answered_as_replay": replays["replayed"],
        "db_batches": db_batches,
        "db_reports": db_reports,
        "lost_reports": acked["reports"] - db_distinct,
        "duplicated_reports": db_reports - db_distinct,
    }


def _stored(database_url: str) -> tuple[int, int, int]:
    """(reports, distinct (device, seed) reports, batches) in the database."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            reports, distinct = conn.execute(
                text("SELECT COUNT(*), COUNT(DISTINCT (device_id, seed)) FROM reports")
                if engine.dialect.name == "postgresql"
                else text("SELECT COUNT(*), COUNT(DISTINCT CAST(device_id AS TEXT) || ':' || seed) FROM reports")
            ).one()
            batches = conn.execute(text("SELECT COUNT(*) FROM upload_batches")).scalar_one()
    finally:
        engine.dispose()
    return int(reports), int(distinct), int(batches)


class _FreshDatabase:
    """A database made on the given PostgreSQL server for one deployment, dropped after it."""

    def __init__(self, server_url: str, name: str):
        self.admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
        self.name = name
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        self.url = make_url(server_url).set(database=name).render_as_string(hide_password=False)

    def drop(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


def run_bench(args: argparse.Namespace) -> int:
    if args.database_url and not args.database_url.startswith("postgresql"):
        raise ValueError("--database-url must be a PostgreSQL server (postgresql+psycopg://…): SQLite always runs")
    if args.workers != [1] and not args.database_url:
        raise ValueError("--workers needs --database-url: several workers share a PostgreSQL database")
    admin_token, enrol_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = dict(os.environ, COOPERLLM_ADMIN_TOKEN=admin_token, COOPERLLM_ENROLMENT_KEY=enrol_key)
    plans = [("sqlite", 1)] + ([("postgresql", n) for n in args.workers] if args.database_url else [])
    results = []
    with tempfile.TemporaryDirectory(prefix="cooperllm-bench-cloud-") as tmpdir:
        tmp = Path(tmpdir)
        model = args.model or str(make_tiny_llama(tmp / "tiny-llama", seed=0))
        for n_dev in args.devices:
            for i, (_, workers) in enumerate(plans):
                folder = tmp / f"d{n_dev}-{i}"
                folder.mkdir()
                fresh = _FreshDatabase(args.database_url, f"cooperllm_bench_{secrets.token_hex(4)}") if i else None
                try:
                    url = fresh.url if fresh else f"sqlite:///{folder}/bench.db"
                    dep = Deployment(folder, model, env, url, workers)
                    try:
                        results.append(measure(dep, n_dev, args, enrol_key))
                    finally:
                        dep.stop()
                finally:
                    if fresh is not None:
                        fresh.drop()
    ok = all(r["lost_reports"] == 0 and r["duplicated_reports"] == 0 for r in results)
    if args.json:
        print(json.dumps({"reports_per_batch": args.reports_per_batch, "duration_s": args.duration, "runs": results}))
    else:
        _print_table(results, args)
    return 0 if ok else 1


def _print_table(results: list[dict], args: argparse.Namespace) -> None:
    print(
        f"cloud upload benchmark: {args.reports_per_batch} reports/batch, {args.duration:g} s per upload phase "
        f"(half saturated, then paced at {args.rate:g}/s), {os.cpu_count()} CPU cores shared by servers, database "
        "and load generator"
    )
    print("CPU ms/batch: the service's processes (saturated phase); machine: every process, the database's included")
    head = f"{'devices':>7}  {'deployment':<24} {'health/s':>9} {'batches/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
    print(head + f" {'paced/s':>8} {'p99 ms':>8} {'CPU ms/batch':>12} {'machine':>8} {'vs SQLite':>9}  lost/dup")
    base = {}
    for r in results:
        base.setdefault(r["devices"], r["saturated_batches_per_s"])
        ratio = r["saturated_batches_per_s"] / base[r["devices"]] if base[r["devices"]] else float("nan")
        print(
            f"{r['devices']:>7}  {r['deployment']:<24} {r['baseline_health_rps']:>9.1f} "
            f"{r['saturated_batches_per_s']:>10.1f} {r['saturated_p50_ms']:>8.2f} {r['saturated_p99_ms']:>8.2f} "
            f"{r['upload_batches_per_s']:>8.1f} {r['upload_p99_ms']:>8.2f} {r['server_cpu_ms_per_upload']:>12.3f} "
            f"{r['machine_cpu_ms_per_upload']:>8.3f} "
            f"{ratio:>8.2f}x  {r['lost_reports']}/{r['duplicated_reports']}"
        )
    resent = ", ".join(f"{r['resent_batches_answered_as_replay']} of {r['resent_batches']}" for r in results)
    print(f"every batch sent again with its key after the run, answered as a replay: {resent}")
    print("statuses: " + "; ".join(f"{r['deployment']} {r['upload_statuses']}" for r in results))
