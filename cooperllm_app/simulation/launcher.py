"""The simulation's child processes: the cloud service and the worker processes, started and stopped cleanly.

Every child dies with the simulation (Linux ``PR_SET_PDEATHSIG``: a SIGKILLed simulate leaves no orphan serving the
run folder's database) and inherits the run folder's lock, so a restarted simulation waits until the previous one's
children are gone. Workers speak JSON lines on a pipe (never pickle): one task in, one result out.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cooperllm.api_client import CooperClient

log = logging.getLogger(__name__)

READY_RE = re.compile(rb"cooperllm cloud listening on (http://\S+?)/v1")
_PR_SET_PDEATHSIG = 1
try:  # looked up in the parent: the child only calls it between fork and exec
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: the run-folder lock still keeps a second simulation off the folder
    _PRCTL = None


class SimulationError(RuntimeError):
    """The simulation cannot go on (a child died, the cloud's run failed, a device refused); the message says why."""


def _die_with_parent(parent: int) -> None:
    """Runs in the child before exec: ask the kernel for SIGKILL when the simulation process goes away."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _spawn(cmd: list[str], log_path: Path, keep_fds: tuple[int, ...], env: dict[str, str], **kwargs):
    log_path.parent.mkdir(parents=True, exist_ok=True)
    parent = os.getpid()
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            cmd,
            stderr=log_file,
            env={**os.environ, **env},
            pass_fds=keep_fds,
            preexec_fn=lambda: _die_with_parent(parent),
            **({"stdout": log_file} | kwargs),
        )


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the cloud ------------------------------------------------------------------------------------------------------


@dataclass
class Cloud:
    proc: subprocess.Popen
    log_path: Path
    admin_token: str
    enrol_key: str
    url: str = ""

    def admin(self) -> CooperClient:
        # creating a run computes the rectifier's first guidance before it answers: on a loaded machine that took
        # longer than the client's default 30 s, and the simulation died of a read timeout
        return CooperClient(self.url, self.admin_token, timeout=ADMIN_TIMEOUT_S)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise SimulationError(
                f"the cloud service exited with code {self.proc.returncode}; last lines of {self.log_path}:\n"
                + log_tail(self.log_path)
            )

    def wait_ready(self, offset: int, timeout_s: float = 900.0) -> str:
        """Wait for the ready line the service prints after its model has loaded; returns the base URL."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                m = READY_RE.search(f.read())
            if m:
                self.url = m.group(1).decode()
                return self.url
            time.sleep(0.1)
        self.stop()
        raise SimulationError(f"the cloud service did not become ready in {timeout_s:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        _stop(self.proc, 15.0)


def start_cloud(
    *,
    model: str,
    artifacts: str,
    public_data: Path,
    public_n: int,
    state_dir: Path,
    log_path: Path,
    guidance_codec: str,
    seed: int,
    keep_fds: tuple[int, ...] = (),
    host: str = "127.0.0.1",
) -> tuple[Cloud, int]:
    """Start ``cooperllm serve`` on ``host`` (any free port) with fresh secrets; returns it and the log offset
    from which to wait for readiness (``Cloud.wait_ready``)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    _seed_key_of_run(state_dir, seed)
    admin_token, enrol_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    cmd = [
        sys.executable,
        "-m",
        "cooperllm_app.cli",
        "serve",
        "--model",
        model,
        "--artifacts",
        artifacts,
        "--public-data",
        str(public_data),
        "--public-n",
        str(public_n),
        "--database-url",
        f"sqlite:///{state_dir / 'cooperllm.db'}",
        "--state-dir",
        str(state_dir),
        "--env",
        "production",
        "--host",
        host,
        "--port",
        "0",
        "--guidance-codec",
        guidance_codec,
        "--rate-limit",
        "1000",
        "--rate-burst",
        "1000",
    ]
    offset = log_path.stat().st_size if log_path.exists() else 0
    env = {"COOPERLLM_ADMIN_TOKEN": admin_token, "COOPERLLM_ENROLMENT_KEY": enrol_key}
    proc = _spawn(cmd, log_path, keep_fds, env)
    return Cloud(proc, log_path, admin_token, enrol_key), offset


def _seed_key_of_run(state_dir: Path, seed: int) -> None:
    """The cloud's seed key derived from the simulation's seed (a deployment makes a random one): runs with the same
    seed then hand devices the same seed ranges, so two arms of a study (with and without an attacker, say) differ
    only in what they vary."""
    # deferred: loads sqlalchemy (not needed at the CLI's import)
    from cloud_api.round_state import ensure_seed_key

    ensure_seed_key(state_dir, hashlib.blake2b(f"cooperllm-simulation:{seed}".encode(), digest_size=32).digest())


ADMIN_TIMEOUT_S = 600.0


# --- workers --------------------------------------------------------------------------------------------------------


def answer_of(worker: str, msg: dict) -> dict:
    """A worker's message about a task (``worker.serve``) → the task's result; a failed task → SimulationError."""
    if not msg.get("ok"):
        raise SimulationError(f"{worker}: {msg.get('error')}")
    return msg["result"]


class Worker:
    """One worker process (``python -m cooperllm_app.simulation.worker``): a device host or the evaluator."""

    def __init__(self, name: str, run_dir: Path, role: str, threads: int, keep_fds: tuple[int, ...] = ()):
        self.name = name
        self.log_path = run_dir / "logs" / f"{name}.log"
        cmd = [
            sys.executable,
            "-m",
            "cooperllm_app.simulation.worker",
            "--run-dir",
            str(run_dir),
            "--role",
            role,
            "--threads",
            str(threads),
        ]
        self.proc = _spawn(
            cmd,
            self.log_path,
            keep_fds,
            {"TOKENIZERS_PARALLELISM": "false"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.messages: queue.Queue[dict | None] = queue.Queue()
        self.info: dict = {}
        self._reader = threading.Thread(target=self._read, name=f"{name}-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.messages.put(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: not a protocol line: %r", self.name, line[:200])
        self.messages.put(None)  # EOF: the worker is gone

    def _died(self) -> SimulationError:
        code = self.proc.wait()
        return SimulationError(
            f"worker {self.name} exited with code {code}; last lines of {self.log_path}:\n" + log_tail(self.log_path)
        )

    def wait_ready(self, timeout_s: float = 900.0) -> dict:
        try:
            msg = self.messages.get(timeout=timeout_s)
        except queue.Empty:
            raise SimulationError(f"worker {self.name} did not start in {timeout_s:.0f} s") from None
        if msg is None:
            raise self._died()
        if not msg.get("ready"):
            raise SimulationError(f"worker {self.name} failed to start: {msg.get('error', msg)}")
        self.info = msg
        return msg

    def submit(self, task: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(task) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None

    def answer(self, msg: dict | None) -> dict:
        """A result message → its result; a failure or EOF → SimulationError."""
        if msg is None:
            raise self._died()
        return answer_of(f"worker {self.name}", msg)

    def call(self, task: dict, alive=lambda: None, poll_s: float = 1.0) -> dict:
        """Submit one task and wait for its answer; ``alive()`` is called while waiting (raises to abort)."""
        self.submit(task)
        while True:
            try:
                return self.answer(self.messages.get(timeout=poll_s))
            except queue.Empty:
                alive()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # EOF on stdin: the worker's loop ends
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                _stop(self.proc, 5.0)


class WorkerPool:
    """Device workers; ``run(tasks)`` hands tasks to idle workers and yields (task, result) as they finish."""

    def __init__(self, workers: list[Worker]):
        self.workers = workers
        self.answers: queue.Queue[tuple[Worker, dict | None]] = queue.Queue()
        self._forwarders = [
            threading.Thread(target=self._forward, args=(w,), name=f"{w.name}-fwd", daemon=True) for w in workers
        ]
        for t in self._forwarders:
            t.start()

    def _forward(self, w: Worker) -> None:
        while True:
            msg = w.messages.get()
            self.answers.put((w, msg))
            if msg is None:
                return

    def run(self, tasks: list[dict], alive=lambda: None, poll_s: float = 1.0):
        pending = list(tasks)
        idle = list(self.workers)
        busy: dict[int, dict] = {}
        while pending or busy:
            while pending and idle:
                w = idle.pop(0)
                task = pending.pop(0)
                w.submit(task)
                busy[id(w)] = task
            try:
                w, msg = self.answers.get(timeout=poll_s)
            except queue.Empty:
                alive()
                continue
            task = busy.pop(id(w))
            result = w.answer(msg)
            idle.append(w)
            yield task, result

    def drain(self) -> list[dict]:
        """Results that arrived after the last ``run`` stopped listening (call once the workers have stopped)."""
        for t in self._forwarders:
            t.join(timeout=5.0)  # a stopped worker's last lines are forwarded, then its EOF ends the thread
        out = []
        while True:
            try:
                _, msg = self.answers.get_nowait()
            except queue.Empty:
                return out
            if msg is not None and msg.get("ok") and isinstance(msg.get("result"), dict):
                out.append(msg["result"])
