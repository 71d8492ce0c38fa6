"""``cooperllm bench pipeline``: a round's wall-clock with the SPC (pipelined transfers) vs sequential transfers.

Real parts: the cloud (``cooperllm serve`` in its own process: SQLite, rounds, the rectifier computing guidance), the
device client of ``cooperllm device run`` in this process on an exported graph (ONNX Runtime), and an emulated link
(:class:`cooperllm.link.LinkTransport`) between them. Per link, four modes of the same round config, each run a fresh
run on the server with a freshly enrolled device, all in the same process within minutes (``--repeats`` passes, every
other one in reverse order, so a drift in the machine's load favours no mode; the median is reported):

* compute alone: the real graph, no link (loopback);
* transfer alone: the same transfers over the link one after the other, the forward pass replaced by a constant
  (what is left of a round is its transfers, plus the perturbations and durable saves);
* sequential: the real graph over the link, transfers one after the other (``pipeline=False``);
* SPC: the same, pipelined (``pipeline=True``): the next block's and next round's guidance downloads and the report
  uploads overlap compute.

A round's wall-clock runs from the device seeing it open to seeing the next one open (the last: to every report of
the run acknowledged and the run's end seen), so the gaps between rounds (the server aggregating, the device learning
that the next round opened) count in every mode; the figure is the median over rounds 1 … R−1 (round 0 — enrolment,
the first guidance with nothing to prefetch — is left out), robust to a burst of load from other jobs on the
machine. Bytes are the client's wire counts over the whole run, per round. The device's graph runs on one thread
(``--threads``), like one big core of a phone, so the cloud process on the same machine does not steal its cores.
The transfer-alone figure adds up transfers that SPC also overlaps with each other (the sync with the guidance, the
uploads with both), so SPC can come in under max(compute, transfer).
``--local-steps auto`` (the default) picks, per link, the steps per block that make compute ≈ transfer from two short
calibration runs: the case where pipelining matters most.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cooperllm.api_client import CooperClient
from cooperllm.data import shared_data_dir
from cooperllm.link import Link, LinkTransport
from cooperllm.protocol import RunConfig
from cooperllm.tiny import make_tiny_llama
from cooperllm_app.serve_process import start_serve, stop_serve
from device_runtime.client import ClientConfig, DeviceClient
from device_runtime.corpus import CorpusSource
from device_runtime.session import open_session

log = logging.getLogger(__name__)

BENCH_HIDDEN, BENCH_LAYERS = 128, 8  # the default model: 8 blocks, ~50 ms per forward of 8 × 32 tokens here


def register_bench(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "pipeline",
        help="a federated round's wall-clock with pipelined (SPC) vs sequential transfers over emulated links",
        description="Start the cloud, then per emulated link run the device client four ways: compute alone (no "
        "link), transfer alone (no compute), sequential transfers and SPC (--repeats passes, alternating order). "
        "Prints seconds per round and the ratios SPC / max(compute, transfer) and sequential / SPC.",
    )
    p.add_argument(
        "--model",
        default="tiny",
        help=f"'tiny' (default: a random Llama, hidden {BENCH_HIDDEN}, {BENCH_LAYERS} layers, built here), "
        "'smollm2' or a local HF causal-LM folder",
    )
    p.add_argument("--artifacts", help="an ONNX export of --model to use (default: exported here, int8)")
    p.add_argument(
        "--links",
        nargs="+",
        default=["10mbit:50ms", "2mbit:100ms"],
        help="link specs, docs/DTC.md §8 (default 10mbit:50ms 2mbit:100ms)",
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds per measurement; round 0 is not counted (default 3)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the device's graph (default 1)")
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="measure every mode this many times, alternating the order so a drift in load favours none (median; "
        "default 3)",
    )
    p.add_argument(
        "--local-steps",
        default="auto",
        help="SPSA steps per block per round, or 'auto' (default): compute ≈ transfer on each link",
    )
    p.add_argument("--batch-size", type=int, default=8, help="examples per forward pass when exporting (default 8)")
    p.add_argument("--seq-len", type=int, default=32, help="tokens per example when exporting (default 32)")
    p.add_argument("--guidance-rank", type=int, default=4, help="guidance subspace size m (default 4)")
    p.add_argument(
        "--data",
        default=str(shared_data_dir() / "sst2" / "train.tsv"),
        help="the device's private data (default ../shared/data/sst2/train.tsv)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


@dataclasses.dataclass
class Measure:
    round_s: float  # steady-state wall-clock per round (median)
    compute_s: float  # per round, inside the compute loop (forward passes, perturbations, saves)
    compute_cpu_s: float  # the compute thread's CPU time for it (compute_s much above it: the CPU was shared)
    bytes_up: float  # per round, on the wire
    bytes_down: float
    guidance_wait_s: float
    cloud_rectifier_s: float  # the cloud's backprop for a round's guidance (runs during the previous round)
    cloud_close_s: float  # the cloud's aggregation at a round's end, including any wait for the next guidance


class _NoCompute:
    """The session's graph with the forward pass replaced by a constant: what remains of a round is its transfers."""

    def __init__(self, backend):
        self._inner = backend

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def run(self, batch, theta):
        return 1.0, np.zeros((batch.labels.shape[0], 2), dtype=np.float32)


class _Bench:
    def __init__(self, url: str, admin_token: str, enrol_key: str, session, data, tmp: Path, args):
        self.url, self.admin_token, self.enrol_key = url, admin_token, enrol_key
        self.session, self.data, self.tmp, self.args = session, data, tmp, args
        self.runs = 0

    def config(self, local_steps: int, rounds: int):

        return RunConfig(
            strategy="zgr",
            rounds=rounds,
            quorum=1,
            min_devices=1,
            local_steps=local_steps,
            batch_size=self.session.backend.batch_size,
            lam=0.3,
            eta=1e-3,
            guidance_rank=self.args.guidance_rank,
            window=8,
            grad_batches=2,
            grad_batch_size=4,
            deadline_s=3600,
        )

    def measure(self, local_steps: int, rounds: int, link: str | None, *, pipeline: bool, compute: bool) -> Measure:

        self.runs += 1
        with CooperClient(self.url, self.admin_token) as admin:
            run_id = admin.create_run(self.config(local_steps, rounds)).run_id
        session = (
            self.session if compute else dataclasses.replace(self.session, backend=_NoCompute(self.session.backend))
        )
        transport = None if link is None else LinkTransport(Link(link, seed=self.runs))
        cfg = ClientConfig(
            self.enrol_key, device_name=f"bench-{self.runs}", poll_s=0.02, progress=False, pipeline=pipeline
        )
        with (
            CooperClient(self.url, transport=transport, timeout=120) as api,
            DeviceClient(session, api, self.data, self.tmp / f"device-{self.runs}", cfg) as client,
        ):
            stats = client.run()
        with CooperClient(self.url, self.admin_token) as admin:
            cloud = admin.rounds(run_id)[1:]
        steady = stats.rounds[1:]
        if len(steady) < 1 or stats.drained_at is None:
            raise RuntimeError(f"the device took part in {len(stats.rounds)} rounds; need at least 2")
        n = len(steady)
        ends = [r["started"] for r in steady[1:]] + [stats.drained_at]  # a round ends where the next one starts
        return Measure(
            round_s=float(np.median([end - r["started"] for r, end in zip(steady, ends, strict=True)])),
            compute_s=sum(r["compute_s"] for r in steady) / n,
            compute_cpu_s=sum(r["compute_cpu_s"] for r in steady) / n,
            bytes_up=stats.bytes_up / len(stats.rounds),
            bytes_down=stats.bytes_down / len(stats.rounds),
            guidance_wait_s=sum(r["guidance_wait_s"] for r in steady) / n,
            cloud_rectifier_s=float(np.median([r.rectifier_s or 0.0 for r in cloud])),
            cloud_close_s=float(np.median([r.aggregate_s or 0.0 for r in cloud])),
        )

    def link_row(self, link: str, bar) -> dict:
        args = self.args
        n_blocks = len(self.session.manifest.layout.blocks)
        if args.local_steps == "auto":
            # compute ≈ transfer at L steps per block: T(1) + (L−1)·B·o = L·B·c, with c the local work of a report
            # and o its share that stays without the forward passes (perturbations, durable saves)
            transfer = self.measure(1, 3, link, pipeline=False, compute=False)
            compute = self.measure(1, 3, None, pipeline=False, compute=True)
            c, o = compute.compute_s / n_blocks, transfer.compute_s / n_blocks
            steps = max(1, round((transfer.round_s - n_blocks * o) / (n_blocks * max(c - o, 1e-3))))
            bar.update(2)
        else:
            steps = int(args.local_steps)
        out = {"link": link, "local_steps": steps, "blocks": n_blocks}
        modes = [
            ("compute", dict(link=None, pipeline=False, compute=True)),
            ("transfer", dict(link=link, pipeline=False, compute=False)),
            ("sequential", dict(link=link, pipeline=False, compute=True)),
            ("spc", dict(link=link, pipeline=True, compute=True)),
        ]
        runs: dict[str, list[Measure]] = {name: [] for name, _ in modes}
        for k in range(args.repeats):  # every other pass in reverse order: a drift in load favours no mode
            for name, kw in modes if k % 2 == 0 else modes[::-1]:
                bar.set_postfix_str(f"{link} {name}")
                runs[name].append(self.measure(steps, args.rounds, **kw))
                bar.update(1)
        for name, measured in runs.items():  # field-wise median over the repeats
            out[name] = {f: float(np.median([getattr(m, f) for m in measured])) for f in Measure.__dataclass_fields__}
        best = max(out["compute"]["round_s"], out["transfer"]["round_s"])
        out["spc_vs_max"] = out["spc"]["round_s"] / best
        out["sequential_vs_spc"] = out["sequential"]["round_s"] / out["spc"]["round_s"]
        out["transfer_vs_compute"] = out["transfer"]["round_s"] / out["compute"]["round_s"]
        return out


def _prepare(args, tmp: Path) -> tuple[str, Path]:
    """(model for the server, ONNX artifacts for the device)."""

    model = args.model
    if model == "tiny":
        model = str(make_tiny_llama(tmp / "model", seed=0, hidden_size=BENCH_HIDDEN, num_layers=BENCH_LAYERS))
    if args.artifacts:
        return model, Path(args.artifacts)
    out = tmp / "artifacts"
    cmd = [sys.executable, "-m", "cooperllm_app.cli", "--log-level", "WARNING", "export", "--model", model]
    cmd += ["--format", "onnx", "--out", str(out), "--batch", str(args.batch_size), "--seq-len", str(args.seq_len)]
    cmd += ["--no-validate", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"export failed:\n{done.stderr[-2000:]}")
    return model, out


def run(args: argparse.Namespace) -> int:

    if args.repeats < 1:
        raise ValueError("--repeats must be at least 1")
    if args.rounds < 2:
        raise ValueError("--rounds must be at least 2 (round 0 is not counted)")
    if args.local_steps != "auto" and not (args.local_steps.isdigit() and int(args.local_steps) >= 1):
        raise ValueError(f"--local-steps must be a positive integer or 'auto', got {args.local_steps!r}")
    load_before = os.getloadavg()
    admin_token, enrol_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = dict(os.environ, COOPERLLM_ADMIN_TOKEN=admin_token, COOPERLLM_ENROLMENT_KEY=enrol_key)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cooperllm-bench-pipeline-") as tmpdir:
        tmp = Path(tmpdir)
        print("preparing the model and its ONNX export ...", flush=True)
        model, artifacts = _prepare(args, tmp)
        public = tmp / "public.tsv"
        public.write_text("\n".join((shared_data_dir() / "sst2" / "dev.tsv").read_text().splitlines()[:201]) + "\n")
        corpus = {"train": CorpusSource(args.data)}
        session = open_session(artifacts, "onnx", threads=args.threads, data=corpus, corpus_cache=tmp / "corpora")
        data = session.corpora["train"]
        serve = ["--model", model, "--artifacts", str(artifacts), "--database-url", f"sqlite:///{tmp}/cloud.db"]
        serve += ["--state-dir", str(tmp / "cloud"), "--public-data", str(public), "--public-n", "64"]
        serve += ["--rate-limit", "1000", "--rate-burst", "1000"]
        proc, url = start_serve(serve, env)
        try:
            bench = _Bench(url, admin_token, enrol_key, session, data, tmp, args)
            per_link = 4 * args.repeats + (2 if args.local_steps == "auto" else 0)
            with tqdm(total=per_link * len(args.links), desc="bench pipeline", unit="run") as bar:
                for link in args.links:
                    rows.append(bench.link_row(link, bar))
        finally:
            stop_serve(proc)
    result = {
        "model": args.model,
        "graph": f"ONNX int8, batch {session.backend.batch_size} x seq {session.backend.seq_len}",
        "rounds_counted": args.rounds - 1,
        "repeats": args.repeats,
        "load_average": (load_before, os.getloadavg()),
        "links": rows,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"pipeline benchmark: {args.model} ({result['graph']}, {rows[0]['blocks']} blocks), zgr rounds with m = "
        f"{args.guidance_rank}; seconds per round, median of rounds 1-{args.rounds - 1}"
        + (f" and of {args.repeats} repeats" if args.repeats > 1 else "")
        + "; load average (1, 5, 15 min) "
        + " -> ".join(" ".join(f"{x:.1f}" for x in la) for la in result["load_average"])
    )
    head = f"{'link':<14} {'steps':>5} {'compute':>8} {'transfer':>8} {'sequential':>10} {'SPC':>7}"
    print(head + f" {'SPC/max(c,t)':>12} {'seq/SPC':>8} {'KB up/down per round (SPC)':>27}")
    for r in rows:
        spc = r["spc"]
        print(
            f"{r['link']:<14} {r['local_steps']:>5} {r['compute']['round_s']:>8.2f} {r['transfer']['round_s']:>8.2f} "
            f"{r['sequential']['round_s']:>10.2f} {spc['round_s']:>7.2f} {r['spc_vs_max']:>12.3f} "
            f"{r['sequential_vs_spc']:>8.3f} {spc['bytes_up'] / 1e3:>13.1f} / {spc['bytes_down'] / 1e3:.1f}"
        )
    return 0
