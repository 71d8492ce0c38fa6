"""The round loop: start the cloud and the workers, then per round send K devices, wait for the close, score θ.

Per round r: the K devices chosen for r (seeded) each run one round of the real device client in a worker process;
the cloud closes the round when all K have reported (quorum = K) and publishes θ_{r+1}; the evaluator scores θ_{r+1}
on the test file; one metrics line is appended. A restart on the same folder skips rounds that have their line, and
for the round that was running lets the cloud (its SQLite run) and the devices (their state files) carry on: devices
that had already reported are not sent again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cooperllm.api_client import ApiError, CooperClient
from cooperllm.checkpoint import atomic_write_bytes, load_theta_bytes
from cooperllm.layout import theta_checksum
from cooperllm.manifest import read_manifest
from cooperllm.protocol import RoundSummary, RunConfig, RunInfo
from cooperllm.strategies import DeviceWork, get_strategy
from cooperllm_app.simulation.config import SimConfig, command_line, save_or_check_config
from cooperllm_app.simulation.engines import DeviceEngine, start_engine
from cooperllm_app.simulation.launcher import Cloud, SimulationError, Worker, start_cloud
from cooperllm_app.simulation.metrics import RunRecord, fmt_bytes, round_line
from cooperllm_app.simulation.resume import (
    RunLock,
    device_name,
    ensure_partition,
    public_data_file,
    select_devices,
)
from device_runtime.budget import peak_rss_mb

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.safetensors"  # the run's final θ, in the run folder

EVALUATOR_FILE = "evaluator.json"
ENROLMENT_FILE = "enrolment.json"  # the devices' tokens, issued in index order (_Simulation._enrolments)


@dataclass
class SimulationResult:
    run_dir: Path
    config: SimConfig
    baseline: dict | None
    rounds: list[dict]
    resumed_at: int | None  # the first round this invocation ran, when it continued an earlier one
    ran: int  # rounds this invocation ran (0: the folder held a finished run)


def simulate(cfg: SimConfig, run_dir: str | os.PathLike, *, progress: bool = True) -> SimulationResult:
    """Run (or continue) the simulation in ``run_dir``; returns what it measured."""
    if not cfg.command:
        cfg.command = command_line(cfg, run_dir)
    run_dir = Path(run_dir).resolve()
    cfg = cfg.resolved()
    with RunLock(run_dir) as lock:
        restarted = (run_dir / "metrics.jsonl").exists() or (run_dir / "cloud").exists()
        cfg = save_or_check_config(run_dir, cfg)
        return _Simulation(cfg, run_dir, (lock.fd,), progress, restarted).run()


class _Simulation:
    def __init__(self, cfg: SimConfig, run_dir: Path, keep_fds: tuple[int, ...], progress: bool, restarted: bool):
        self.cfg, self.run_dir, self.keep_fds, self.progress, self.restarted = (
            cfg,
            run_dir,
            keep_fds,
            progress,
            restarted,
        )
        self.cloud: Cloud | None = None
        self.engine: DeviceEngine | None = None
        self.evaluator: Worker | None = None
        self.bar: tqdm | None = None  # the rounds' progress bar, while they run
        self._enrolled: dict[str, dict] | None = None  # _enrolments(), read or issued once per start

    # --- set-up ---------------------------------------------------------------------------------------------------

    def _prepare(self) -> tuple[int, Path]:
        cfg = self.cfg
        manifest = read_manifest(cfg.artifacts, verify_hashes=True)
        batch = manifest.graphs[0].batch_size
        names = manifest.task.label_names
        sizes = ensure_partition(self.run_dir, cfg.train_data, names, cfg.clients, cfg.partition, cfg.seed)
        small = [(d, n) for d, n in enumerate(sizes) if n < batch]
        if small:
            raise ValueError(
                f"partition {cfg.partition} leaves devices with fewer examples than one batch of {batch}: "
                f"{small[:5]}; use fewer clients or a larger Dirichlet β"
            )
        return batch, public_data_file(self.run_dir, cfg.public_data, names, cfg.public_classes)

    def _start(self, public: Path) -> None:
        cfg = self.cfg
        cpus = os.cpu_count() or 1
        self.cloud, offset = start_cloud(
            model=cfg.model,
            artifacts=cfg.artifacts,
            public_data=public,
            public_n=cfg.public_n,
            state_dir=self.run_dir / "cloud",
            log_path=self.run_dir / "logs" / "cloud.log",
            guidance_codec=cfg.guidance_codec,
            seed=cfg.seed,
            keep_fds=self.keep_fds,
            host=cfg.cloud_host,
        )
        threads = max(1, cpus // cfg.workers)
        self.engine = start_engine(
            cfg.engine, self.run_dir, cfg.workers, threads, self.keep_fds, cfg.ray_address, cfg.ray_memory_mb
        )
        self.evaluator = Worker("evaluator", self.run_dir, "eval", cpus, self.keep_fds)
        self.cloud.wait_ready(offset)
        self.engine.wait_ready()
        self.evaluator.wait_ready()
        log.info(
            "cloud at %s; %d device workers on the %s engine (%d threads each), evaluator ready",
            self.cloud.url,
            cfg.workers,
            cfg.engine,
            threads,
        )

    def _stop(self, record: RunRecord | None = None) -> None:
        if self.engine is not None:
            self.engine.stop()
            if record is not None:  # rounds devices finished while we were stopping
                for result in self.engine.drain():
                    record.add_device_result(result)
        if self.evaluator is not None:
            self.evaluator.stop()
        if self.cloud is not None:
            self.cloud.stop()

    def _ensure_run(self, admin: CooperClient, rc: RunConfig) -> RunInfo:
        """The folder's database holds at most this one run (id 1): continue it, or create it."""
        try:
            info = admin.run(1)
        except ApiError as exc:
            if exc.status_code != 404:
                raise
            return admin.create_run(rc)
        if info.config != rc:
            raise SimulationError(f"{self.run_dir}/cloud holds a run with another configuration ({info.config})")
        if info.status == "failed":
            raise SimulationError(f"the cloud's run failed earlier: {info.failure}")
        return info

    def _evaluator_token(self) -> str:
        """An enrolled observer device whose only use is to download θ for scoring (adapters need a device token)."""
        path = self.run_dir / EVALUATOR_FILE
        if path.is_file():
            return json.loads(path.read_text())["token"]
        with CooperClient(self.cloud.url) as c:
            out = c.enroll(self.cloud.enrol_key, "sim-evaluator")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"device_id": out.device_id, "token": out.token}))
        tmp.replace(path)
        return out.token

    def _enrolments(self) -> dict[str, dict]:
        """Every simulated device enrolled once, in index order, before it first works ({"token", "device_id"} by
        index, kept in the run folder for a resumed run). The cloud numbers devices in arrival order and keys their
        seed ranges by number: left to the worker processes, which data shard measured with which seeds was a race
        between them, and two runs of the same seed could differ."""
        if self._enrolled is not None:
            return self._enrolled
        path = self.run_dir / ENROLMENT_FILE
        enrolled = json.loads(path.read_text()) if path.is_file() else {}
        missing = [d for d in range(self.cfg.clients) if str(d) not in enrolled]
        if missing:
            with CooperClient(self.cloud.url) as c:
                for d in missing:
                    out = c.enroll(self.cloud.enrol_key, device_name(d))
                    enrolled[str(d)] = {"token": out.token, "device_id": out.device_id}
            atomic_write_bytes(path, json.dumps(enrolled).encode())
        self._enrolled = enrolled
        return enrolled

    # --- rounds ---------------------------------------------------------------------------------------------------

    def _alive(self) -> None:
        self.cloud.check_alive()

    def _summary(self, admin: CooperClient, run_id: int, round_: int, wait_closed: bool) -> RoundSummary:
        """Round ``round_``'s summary once it exists (and, with ``wait_closed``, once it closed)."""
        patience = self.cfg.deadline_s * 4 + 600
        deadline = time.monotonic() + patience
        delay = 0.02
        while True:
            found = next((s for s in admin.rounds(run_id) if s.round == round_), None)
            if found is not None and found.status == "failed":
                raise SimulationError(f"round {round_} failed in the cloud: {found.failure}")
            if found is not None and (found.status == "closed" or not wait_closed):
                return found
            if time.monotonic() > deadline:
                raise SimulationError(f"round {round_} did not close within {patience:.0f} s")
            self._alive()
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _evaluate(self, token: str, version: int, checksum: str | None, limit: int | None) -> dict:
        task = {"op": "eval", "version": version, "checksum": checksum, "token": token, "cloud": self.cloud.url}
        task["limit"] = limit
        return self.evaluator.call(task, alive=self._alive)

    def run(self) -> SimulationResult:
        cfg = self.cfg
        record = RunRecord(self.run_dir)
        if record.baseline is not None and record.done() >= set(range(cfg.rounds)):
            log.info("%s: all %d rounds are done already", self.run_dir, cfg.rounds)
            return SimulationResult(self.run_dir, cfg, record.baseline, record.rounds, None, 0)
        batch, public = self._prepare()
        try:
            self._start(public)
            with self.cloud.admin() as admin:
                return self._rounds(admin, record, batch)
        finally:
            self._stop(record)

    def _rounds(self, admin: CooperClient, record: RunRecord, batch: int) -> SimulationResult:

        cfg = self.cfg
        run = self._ensure_run(admin, cfg.run_config(batch))
        token = self._evaluator_token()
        done = record.done()
        resumed_at = None
        if self.restarted and len(done) < cfg.rounds:
            resumed_at = min(set(range(cfg.rounds)) - done)
            say(f"resuming {self.run_dir} at round {resumed_at} ({len(done)} of {cfg.rounds} rounds done)")
        if record.baseline is None:
            first = self._summary(admin, run.run_id, 0, wait_closed=False)
            ev = self._evaluate(token, 0, first.theta_checksum, cfg.final_eval_limit)
            record.add_line({"kind": "baseline", **ev})
            say(f"before training: accuracy {ev['accuracy'] * 100:.2f} %, loss {ev['loss']:.4f} ({ev['n_eval']} test)")
        bar = self.bar = tqdm(
            total=cfg.rounds,
            initial=len(done),
            desc=f"simulate {cfg.strategy}",
            unit="round",
            disable=not self.progress,
        )
        try:
            for r in range(cfg.rounds):
                if r in done:
                    continue
                line = self._one_round(admin, run.run_id, r, record, token, resumed=r == resumed_at)
                bar.update(1)
                bar.set_postfix(
                    acc="-" if line["accuracy"] is None else f"{line['accuracy'] * 100:.1f}%",
                    up=fmt_bytes(line["bytes_up_mean"]),
                    down=fmt_bytes(line["bytes_down_mean"]),
                )
                say(describe_round(line))
        finally:
            bar.close()
            self.bar = None
        last = self._summary(admin, run.run_id, cfg.rounds - 1, wait_closed=True)
        self._save_adapter(token, cfg.rounds, last.theta_checksum_after)
        return SimulationResult(self.run_dir, cfg, record.baseline, record.rounds, resumed_at, cfg.rounds - len(done))

    def _host_peaks(self) -> dict[str, float | None]:
        """Peak RSS (VmHWM) of the processes on this machine besides the device workers (whose peaks come with
        their results): the cloud, the evaluator and this simulation process. Memory that grew with N would show
        here (docs/SIMULATION.md)."""

        def peak(pid: int | str) -> float | None:
            try:
                return round(peak_rss_mb(pid), 1)
            except OSError:  # the process is gone, or this is not Linux
                return None

        return {
            "cloud": peak(self.cloud.proc.pid),
            "evaluator": peak(self.evaluator.proc.pid),
            "simulation": peak("self"),
        }

    def _save_adapter(self, token: str, version: int, checksum: str | None) -> None:
        """The run's final θ as ``RUN_DIR/adapter.safetensors``: what ``cooperllm predict --adapter`` loads."""
        with CooperClient(self.cloud.url, token, timeout=120.0) as api:
            data = api.adapter(version)
        layout = read_manifest(self.cfg.artifacts, verify_hashes=False).layout
        if checksum and theta_checksum(load_theta_bytes(data, layout, f"adapter v{version}")) != checksum:
            raise SimulationError(f"the final adapter v{version} does not match the round's published checksum")
        atomic_write_bytes(self.run_dir / ADAPTER_FILE, data)

    def _one_round(
        self, admin: CooperClient, run_id: int, r: int, record: RunRecord, token: str, resumed: bool
    ) -> dict:
        cfg = self.cfg
        idle = get_strategy(cfg.strategy).device_work is DeviceWork.IDLE  # the cloud-only baseline: no device works
        devices = [] if idle else select_devices(cfg.seed, r, cfg.clients, cfg.per_round)
        summary = self._summary(admin, run_id, r, wait_closed=False)
        t0 = time.monotonic()
        if summary.status == "open":
            key, enrolled = self.cloud.enrol_key, self._enrolments() if devices else {}
            tasks = [
                {"op": "round", "round": r, "device": d, "cloud": self.cloud.url, "enrol_key": key}
                | {"enrolment": enrolled[str(d)]}
                for d in devices
            ]
            for done, (_, result) in enumerate(self.engine.run(tasks, alive=self._alive), 1):
                record.add_device_result(result)
                if self.bar is not None:
                    self.bar.set_postfix_str(f"round {r}: devices {done}/{len(tasks)}")
            summary = self._summary(admin, run_id, r, wait_closed=True)
        round_s = time.monotonic() - t0
        evaluation = None
        if (r + 1) % cfg.eval_every == 0 or r == cfg.rounds - 1:
            last = r == cfg.rounds - 1
            limit = cfg.final_eval_limit if last else cfg.eval_limit
            evaluation = self._evaluate(token, r + 1, summary.theta_checksum_after, limit)
        results = record.device_results(r)
        line = round_line(r, devices, results, summary, evaluation, round_s, record.last(), resumed, cfg.local_steps)
        line["host_peak_rss_mb"] = self._host_peaks()
        record.add_line(line)
        return line


def describe_round(line: dict) -> str:
    acc = "" if line["accuracy"] is None else f"accuracy {line['accuracy'] * 100:6.2f} %  loss {line['loss']:.4f}  "
    lam = "" if line["lam"] is None else f"  λ {line['lam']:.3f}"
    bits = "" if line["guidance_bits"] is None else f"  guidance {line['guidance_bits']:.2f} bits/value"
    devices = ""
    if line["devices"]:
        late = len(line["stragglers"])
        devices = (
            f"devices {line['devices_done']}/{len(line['devices'])}, {late} straggler{'s' * (late != 1)}, "
            f"{line['device_steps_per_s'] or 0:.2f} device-steps/s | "
        )
    return (
        f"round {line['round']:>3}: {acc}| {devices}per device up {fmt_bytes(line['bytes_up_mean'])} "
        f"down {fmt_bytes(line['bytes_down_mean'])} | {line['round_s']:.1f} s  peak RSS {line['device_peak_rss_mb']} MB"
        f"{lam}{bits}"
    )


def say(text: str) -> None:
    """A line for the person watching (the CLI's output), also in the log."""

    tqdm.write(text)
    log.debug(text)
