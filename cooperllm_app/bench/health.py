"""``cooperllm bench health``: is the cloud's event loop free, and its memory bounded, while it works? ``GET
/v1/health`` latency while a run is created (the rectifier's first backprop) and while rounds aggregate, against the
same probe on an idle server; and the server's peak resident memory at the end of each phase.

The server runs as a subprocess (``cooperllm serve``). A probe thread asks ``/health`` every ``--interval`` seconds
throughout; a device thread polls ``/rounds/current`` as devices do (on a blocked loop both would wait). Phases:
idle (the baseline), creating a ``zgr`` run, then ``--rounds`` rounds aggregated from synthetic reports of two
devices, each sending its full quota. Prints p50/p99/max per phase, each phase's p99 as a ratio to the idle p99, and
the server's VmHWM. ``--config max`` creates the run with every setting that sizes the cloud's work at its bound
(:data:`MAX_CONFIG`): the server's peak there bounds its memory for any run the API accepts (docs/SECURITY.md).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from cooperllm.api_client import CooperClient
from cooperllm.data import shared_data_dir
from cooperllm.protocol import ReportIn, RunConfig
from cooperllm_app.serve_process import start_serve, stop_serve
from device_runtime.budget import peak_rss_mb

# Every RunConfig setting that sizes the cloud's memory or work, at the largest value the API accepts: the rectifier's
# backprop (grad_batch_size × grad_batches), the gradient window and the guidance basis (window, guidance_rank), and
# the reports a device owes a round (local_steps × D). batch_size only names the devices' batches; it is here too.
MAX_CONFIG = {
    "batch_size": 64,
    "grad_batch_size": 64,
    "grad_batches": 16,
    "window": 64,
    "guidance_rank": 16,
    "local_steps": 64,
}


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "health",
        help="/health latency while a run is created and while rounds aggregate (is the event loop free?)",
        description="Start `cooperllm serve` as a subprocess and probe GET /v1/health every --interval s while it "
        "is idle (the baseline), while a zgr run is created and while --rounds rounds aggregate. Prints p50/p99/max "
        "per phase and each p99 as a ratio to the idle p99.",
    )
    p.add_argument("--model", default="smollm2", help="model for the server (default smollm2)")
    p.add_argument("--rounds", type=int, default=3, help="rounds to aggregate (default 3)")
    p.add_argument("--idle", type=float, default=5.0, help="seconds of the idle baseline (default 5)")
    p.add_argument("--interval", type=float, default=0.02, help="seconds between probes (default 0.02)")
    p.add_argument(
        "--config",
        choices=("default", "max"),
        default="default",
        help="the run's settings: RunConfig's defaults, or every setting that sizes the cloud's work at its bound",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_bench)


class _Poller(threading.Thread):
    """GET ``path`` every ``interval`` seconds; latencies (ms) tagged with the phase current when each was sent."""

    def __init__(self, url: str, path: str, interval: float, token: str | None = None):
        super().__init__(daemon=True)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=url, headers=headers, timeout=120)
        self.path, self.interval = path, interval
        self.phase = "idle"
        self.samples: list[tuple[str, float]] = []
        self.timeouts: dict[str, int] = {}  # requests per phase that got no answer within the client's timeout
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            phase, t0 = self.phase, time.perf_counter()
            try:
                self.client.get(self.path)  # any answer: before a run exists the device poll gets 404
            except httpx.TimeoutException:
                self.timeouts[phase] = self.timeouts.get(phase, 0) + 1
            self.samples.append((phase, (time.perf_counter() - t0) * 1e3))
            self.stopped.wait(self.interval)
        self.client.close()


@contextmanager
def _server(tmp: Path, model: str, env: dict):
    public = tmp / "public.tsv"
    public.write_text("\n".join((shared_data_dir() / "sst2" / "dev.tsv").read_text().splitlines()[:201]) + "\n")
    options = ["--model", model, "--database-url", f"sqlite:///{tmp}/bench.db", "--state-dir", str(tmp / "state")]
    proc, url = start_serve([*options, "--public-data", str(public), "--public-n", "200"], env)
    try:
        yield proc.pid, url
    finally:
        stop_serve(proc)


def _round_reports(info, rng: np.random.Generator) -> list[ReportIn]:
    d = len(info.directions)
    return [
        ReportIn(seed=info.seed_lo + s, block=-1, step=s, scalar=float(rng.normal()), n_examples=info.batch_size)
        for s in range(info.local_steps * d)
    ]


def _stats(values: list[float]) -> dict:
    a = np.asarray(values)
    return {
        "n": len(a),
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": a.max(),
    }


def run_bench(args: argparse.Namespace) -> int:
    admin_token, enrol_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = dict(os.environ, COOPERLLM_ADMIN_TOKEN=admin_token, COOPERLLM_ENROLMENT_KEY=enrol_key)
    with (
        tempfile.TemporaryDirectory(prefix="cooperllm-bench-health-") as tmpdir,
        _server(Path(tmpdir), args.model, env) as (pid, url),
    ):
        peak_mb: dict[str, float] = {}
        admin = CooperClient(url, admin_token, timeout=600.0)  # creating a run at the bounds takes minutes on 2 cores
        devices = [CooperClient(url) for _ in range(2)]
        for i, dev in enumerate(devices):
            dev.enroll(enrol_key, f"bench-health-{i}")
        health = _Poller(url, "/v1/health", args.interval)
        poll = _Poller(url, "/v1/rounds/current", args.interval, devices[0].token)
        health.start()
        poll.start()
        time.sleep(args.idle)
        peak_mb["idle"] = peak_rss_mb(pid)
        health.phase = poll.phase = "create_run"
        sized = MAX_CONFIG if args.config == "max" else {}
        cfg = RunConfig(strategy="zgr", rounds=args.rounds + 1, quorum=2, blocks=[-1], deadline_s=600, **sized)
        admin.create_run(cfg)
        peak_mb["create_run"] = peak_rss_mb(pid)
        health.phase = poll.phase = "aggregate"
        rng = np.random.default_rng(0)
        for _ in range(args.rounds):
            infos = [d.current_round() for d in devices]
            for dev, info in zip(devices, infos, strict=True):
                dev.upload_reports(info.round, _round_reports(info, rng), f"r{info.round}")
            while devices[0].current_round(after=infos[0].round, wait_s=60).round == infos[0].round:
                pass  # a long poll answers within 60 s; the round closes once both devices are in
        peak_mb["aggregate"] = peak_rss_mb(pid)
        health.phase = poll.phase = "done"
        for p in (health, poll):
            p.stopped.set()
            p.join(timeout=120)
    phases = {
        name: _stats([ms for phase, ms in health.samples if phase == name])
        for name in ("idle", "create_run", "aggregate")
    }
    for name in ("create_run", "aggregate"):
        phases[name]["p99_vs_idle"] = phases[name]["p99_ms"] / phases["idle"]["p99_ms"]
    for name, mb in peak_mb.items():
        phases[name]["server_peak_rss_mb"] = mb
        phases[name]["health_timeouts"] = health.timeouts.get(name, 0)
        # a device's poll waits for the engine lock (in a worker thread) while a run is created or a round aggregated
        phases[name]["device_poll_timeouts"] = poll.timeouts.get(name, 0)
    out = {
        "model": args.model,
        "config": args.config,
        "run": cfg.model_dump(include=set(MAX_CONFIG)),
        "interval_s": args.interval,
        "rounds": args.rounds,
        "health": phases,
    }
    if args.json:
        print(json.dumps(out, default=float))
        return 0
    print(f"GET /v1/health every {args.interval * 1e3:.0f} ms, model {args.model}, {args.rounds} rounds aggregated")
    print(f"run settings ({args.config}): " + ", ".join(f"{k} {v}" for k, v in out["run"].items()))
    for name, s in phases.items():
        ratio = f"  p99 {s['p99_vs_idle']:.1f}x idle" if "p99_vs_idle" in s else ""
        line = f"p50 {s['p50_ms']:7.1f} ms  p99 {s['p99_ms']:7.1f} ms  max {s['max_ms']:7.1f} ms"
        timeouts = f"  device polls timed out: {s['device_poll_timeouts']}" if s["device_poll_timeouts"] else ""
        print(f"  {name:<11} n={s['n']:<5} {line}{ratio}  server peak RSS {s['server_peak_rss_mb']:.0f} MB{timeouts}")
    return 0
