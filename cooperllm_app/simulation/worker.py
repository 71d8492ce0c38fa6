"""A simulation worker process: hosts simulated devices (or the evaluator) and runs one task at a time.

``python -m cooperllm_app.simulation.worker --run-dir RUN_DIR --role device|eval --threads T``; tasks and results are
JSON lines on stdin/stdout (stdout is kept for the protocol: anything else the process prints goes to stderr).

* ``device`` for ``zgr``/``zo``: the exported graph is opened once (the artifacts are the same for every device) and
  each task ``{"op": "round", "round": r, "device": d, ...}`` runs one round of the real device client
  (``DeviceClient.run`` with ``max_rounds=1``) with that device's own state folder, data shard and emulated link.
  For ``bp`` the task runs the FedAvg backprop device (``bp_device``).
* ``eval``: ``{"op": "eval", "version": v, "checksum": c, "token": t}`` downloads θ_v through the API, checks it
  against the round's checksum and scores it on the test file through the same exported graph for every strategy.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from cooperllm.api_client import CooperClient
from cooperllm.checkpoint import load_theta_bytes
from cooperllm.data import load_dataset
from cooperllm.evaluate import evaluate
from cooperllm.frames import decode_tensor_frame
from cooperllm.layout import theta_checksum
from cooperllm.link import Link, LinkTransport
from cooperllm.manifest import read_manifest
from cooperllm.strategies import DeviceWork, get_strategy
from cooperllm.tokenization import TokenizedCorpus
from cooperllm_app.simulation.attacker import ATTACKER, run_attack
from cooperllm_app.simulation.bp_device import BackpropDevice
from cooperllm_app.simulation.config import SimConfig, load_config
from cooperllm_app.simulation.metrics import pack_correct
from cooperllm_app.simulation.resume import device_name, read_partition
from device_runtime.budget import peak_rss_mb
from device_runtime.client import ClientConfig, DeviceClient
from device_runtime.corpus import CorpusSource
from device_runtime.session import open_session
from device_runtime.transfer import Backoff, Transfers

log = logging.getLogger(__name__)


class MeteredClient(CooperClient):
    """The API client, also counting the guidance frames' bytes and values (the DTC's bits per value)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.guidance_bytes = 0
        self.guidance_values = 0

    def guidance_frame(self, round_: int, block: int) -> tuple[bytes, str]:
        frame, gid = super().guidance_frame(round_, block)
        self.guidance_bytes += len(frame)
        self.guidance_values += int(decode_tensor_frame(frame).size)
        return frame, gid


def device_dir(run_dir: Path, device: int) -> Path:
    return run_dir / "devices" / f"d{device:03d}"


def link_seed(cfg: SimConfig, round_: int, device: int) -> int:
    return (cfg.seed * 1_000_003 + round_) * 10_007 + device


class DeviceHost:
    """Plays any device of the simulation, one round at a time (the graph or the eager model loaded once)."""

    def __init__(self, cfg: SimConfig, run_dir: Path, threads: int):

        self.cfg, self.run_dir = cfg, run_dir
        self.backoff = Backoff(initial_s=0.2, max_s=5.0, give_up_after_s=300.0)
        # what a device computes is the strategy's choice: forward-only ZO through the device runtime, or backprop
        openers = {
            DeviceWork.ZO: self._open_zo,
            DeviceWork.BACKPROP: self._open_backprop,
            DeviceWork.IDLE: self._open_idle,
        }
        self._round = openers[get_strategy(cfg.strategy).device_work](threads)
        self.shards = read_partition(run_dir)

    def _open_zo(self, threads: int):
        """The exported graph, opened once for every device this process plays (the artifacts are shared)."""

        data = {"train": CorpusSource(str(self.cfg.train_data))}
        self.session = open_session(
            self.cfg.artifacts, self.cfg.backend, threads=threads, data=data, corpus_cache=self.run_dir / "corpora"
        )
        self.train = self.session.corpora["train"]
        return self._zo_round

    def _open_idle(self, threads: int):
        """Nothing to load: the strategy's rounds need no device (the runner sends none)."""
        self.train = None

        def refuse(api: MeteredClient, task: dict, r: int, d: int) -> dict:
            raise RuntimeError(f"strategy {self.cfg.strategy!r} needs no device, but device {d} was sent to round {r}")

        return refuse

    def _open_backprop(self, threads: int):
        """The eager fp32 model for FedAvg backprop devices (torch; not what a phone runs)."""

        manifest = read_manifest(self.cfg.artifacts, verify_hashes=True)
        self.bp = BackpropDevice(manifest, Path(self.cfg.artifacts), self.cfg.model, threads)
        self.train = self.bp.encoder.tokenize(load_dataset(self.cfg.train_data, label_names=manifest.task.label_names))
        return self._backprop_round

    def shard(self, device: int) -> TokenizedCorpus:
        return self.train.subset(self.shards[device])

    def run(self, task: dict) -> dict:
        r, d = int(task["round"]), int(task["device"])
        link = Link(self.cfg.link, seed=link_seed(self.cfg, r, d))
        t0 = time.perf_counter()
        with MeteredClient(task["cloud"], transport=LinkTransport(link), timeout=120.0) as api:
            if self.cfg.attack != "none" and d == ATTACKER:
                out = run_attack(
                    api,
                    self._transfers(),
                    mode=self.cfg.attack,
                    round_=r,
                    state_dir=device_dir(self.run_dir, d),
                    enrol_key=task["enrol_key"],
                    name=device_name(d),
                    seed=self.cfg.seed,
                    enrolment=task.get("enrolment"),
                )
            else:
                out = self._round(api, task, r, d)
            out.update(guidance_bytes=api.guidance_bytes, guidance_values=api.guidance_values)

        out.update(
            round=r,
            device=d,
            seconds=round(time.perf_counter() - t0, 3),
            bytes_up=link.stats.bytes_up,
            bytes_down=link.stats.bytes_down,
            requests=link.stats.requests,
            peak_rss_mb=round(peak_rss_mb(), 1),
            torch_loaded="torch" in sys.modules,
        )
        return out

    def _transfers(self):

        return Transfers(self.backoff)

    def _backprop_round(self, api: MeteredClient, task: dict, r: int, d: int) -> dict:
        return self.bp.run_round(
            api,
            self._transfers(),
            round_=r,
            data=self.shard(d),
            state_dir=device_dir(self.run_dir, d),
            enrol_key=task["enrol_key"],
            name=device_name(d),
            lr=float(self.cfg.local_lr),
            data_seed=self.cfg.seed * 1000 + d,
            enrolment=task.get("enrolment"),
        )

    def _zo_round(self, api: MeteredClient, task: dict, r: int, d: int) -> dict:

        cfg = ClientConfig(
            enrol_key=task["enrol_key"],
            device_name=device_name(d),
            local_lr=float(self.cfg.local_lr),
            data_seed=self.cfg.seed * 1000 + d,
            poll_s=0.05,
            max_rounds=1,
            progress=False,
            delta_downloads=self.cfg.adapter_download == "delta",
            enrolment=task.get("enrolment"),
        )
        with DeviceClient(self.session, api, self.shard(d), device_dir(self.run_dir, d), cfg, self._transfers()) as c:
            st = c.state
            if st.round_id > r or (st.round_id == r and st.extra.get("submitted")):
                return {"skipped": True, "reports": 0}  # done before a restart: its reports are already counted
            stats = c.run()
        gc.collect()  # one process plays many devices: free each one's θ copies and guidance before the next
        if not stats.rounds or stats.rounds[-1]["round"] != r:
            raise RuntimeError(f"device {d} was sent to round {r} but took part in {stats.rounds}")
        last = stats.rounds[-1]
        return {
            "skipped": False,
            "reports": last["reports"],
            "mean_loss": last["mean_loss"],
            "replays": stats.replays,
            "downloads": stats.downloads,
            "delta_downloads": stats.delta_downloads,
        }


class Evaluator:
    """Scores θ of a round on the test file through the exported graph (the same measure for every strategy)."""

    def __init__(self, cfg: SimConfig, run_dir: Path, threads: int):

        data = {"test": CorpusSource(str(cfg.test_data), limit=cfg.final_eval_limit)}
        self.session = open_session(
            cfg.artifacts, cfg.backend, threads=threads, data=data, corpus_cache=run_dir / "corpora"
        )
        self.test = self.session.corpora["test"]

    def run(self, task: dict) -> dict:

        t0 = time.perf_counter()
        layout = self.session.manifest.layout
        with CooperClient(task["cloud"], task["token"], timeout=120.0) as api:
            theta = load_theta_bytes(api.adapter(int(task["version"])), layout, f"adapter v{task['version']}")
        if task.get("checksum") and theta_checksum(theta) != task["checksum"]:
            raise RuntimeError(f"adapter v{task['version']} does not match the round's published checksum")
        backend = self.session.backend
        limit = task.get("limit")
        corpus = self.test if limit is None or limit >= len(self.test) else self.test.subset(range(limit))
        res = evaluate(backend.run, theta, corpus, backend.batch_size, progress=False)
        return {
            "accuracy": res.accuracy,
            "loss": res.loss,
            "n_eval": res.n_examples,
            "eval_s": round(time.perf_counter() - t0, 3),
            "theta_norm": float(np.linalg.norm(theta)),
            # which examples θ got right, packed (paired McNemar tests between runs and against θ₀)
            "correct_bits": pack_correct(res.correct),
        }


def open_host(run_dir: Path, role: str, threads: int) -> DeviceHost | Evaluator:
    """The host a worker runs tasks on (a process of the process engine, or a Ray actor): the run folder's config,
    the graph opened once."""
    cfg = load_config(run_dir)
    if cfg is None:
        raise FileNotFoundError(f"{run_dir}: no simulation config")
    return (DeviceHost if role == "device" else Evaluator)(cfg, run_dir, threads)


def serve(host: DeviceHost | Evaluator, task: dict) -> dict:
    """One task's message: ``{"ok": True, "result": ...}``, or ``{"ok": False, "error": ...}`` for a task that failed
    (the simulation stops with its message; the worker lives on)."""
    try:
        return {"ok": True, "result": host.run(task)}
    except Exception as exc:
        what = {k: task.get(k) for k in ("op", "round", "device", "version")}  # not the secrets it carries
        log.exception("task %s failed", what)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cooperllm_app.simulation.worker")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--role", choices=["device", "eval"], required=True)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol keeps the real stdout ...
    os.dup2(2, 1)  # ... and everything else printed (native runner, libraries) goes to the log
    quiet_logging()

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")

    try:
        t0 = time.perf_counter()
        host = open_host(Path(args.run_dir), args.role, args.threads)
    except Exception as exc:
        log.exception("worker failed to start")
        send({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1

    send({"ready": True, "load_s": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(peak_rss_mb(), 1)})
    for line in sys.stdin:
        try:
            task = json.loads(line)
        except json.JSONDecodeError as exc:
            send({"ok": False, "error": f"not a task line: {exc}"})
            continue
        send(serve(host, task))
    return 0


def quiet_logging(handler: logging.Handler | None = None) -> None:
    """A worker's log: INFO from the project, the HTTP client's and the transfers' per-request lines left out."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        **({} if handler is None else {"handlers": [handler], "force": True}),  # a Ray actor's root has Ray's
    )
    for noisy in ("httpx", "device_runtime.transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
