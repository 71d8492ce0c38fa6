"""Where the simulated devices run: engines behind one interface, chosen with ``--engine``.

An engine hosts a few long-lived device workers, each with the exported graph opened once, and plays any of the N
virtual devices on them, one device round per task: a device's own state (outbox, replay cursor, counters, θ) lives
in its folder under ``RUN_DIR/devices`` and its data shard is a list of indices in ``RUN_DIR/partition.json``, so what
a worker holds grows with the devices it is playing now, not with N. Tasks and results are the same JSON objects on
every engine, and every engine runs the same ``DeviceHost`` code, so a seed gives the same θ whatever the engine or
the number of workers (the cloud's aggregation does not depend on the order reports arrive in).

* ``process`` (the default): worker processes on this machine, JSON lines on pipes (``launcher.Worker``).
* ``ray``: Ray actors (``ray_engine``), on a local Ray instance or, with ``--ray-address``, an existing cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from cooperllm_app.simulation.launcher import Worker, WorkerPool

ENGINES = ("process", "ray")


class DeviceEngine(Protocol):
    """What the round loop asks of an engine."""

    name: str
    workers: int  # device workers: tasks that run at once

    def wait_ready(self) -> None:
        """Block until every worker has opened the graph (raises SimulationError with the reason otherwise)."""

    def run(self, tasks: list[dict], alive: Callable[[], None]) -> Iterator[tuple[dict, dict]]:
        """Hand the tasks to idle workers; yield (task, result) as they finish; ``alive()`` is called while
        waiting (it raises to abort)."""

    def stop(self) -> None:
        """Stop the workers; a task running now may finish first (its result then comes from ``drain``)."""

    def drain(self) -> list[dict]:
        """Results of tasks that finished after the last ``run`` stopped listening (call after ``stop``)."""


class ProcessEngine:
    """Device worker processes on this machine (``python -m cooperllm_app.simulation.worker``)."""

    name = "process"

    def __init__(self, run_dir: Path, workers: int, threads: int, keep_fds: tuple[int, ...] = ()):
        self.workers = workers
        self.procs = [Worker(f"device-worker-{i}", run_dir, "device", threads, keep_fds) for i in range(workers)]
        self.pool: WorkerPool | None = None

    def wait_ready(self) -> None:
        for w in self.procs:
            w.wait_ready()
        self.pool = WorkerPool(self.procs)

    def run(self, tasks: list[dict], alive: Callable[[], None]) -> Iterator[tuple[dict, dict]]:
        return self.pool.run(tasks, alive=alive)

    def stop(self) -> None:
        for w in self.procs:
            w.stop()

    def drain(self) -> list[dict]:
        return self.pool.drain() if self.pool is not None else []


def start_engine(
    name: str,
    run_dir: Path,
    workers: int,
    threads: int,
    keep_fds: tuple[int, ...] = (),
    ray_address: str | None = None,
    ray_memory_mb: int | None = None,
) -> DeviceEngine:
    """Start the engine's workers (they open the graph while the cloud starts; ``wait_ready`` waits for them)."""
    if name == "process":
        return ProcessEngine(run_dir, workers, threads, keep_fds)
    if name == "ray":
        # deferred: Ray is imported only by runs that ask for it
        from cooperllm_app.simulation.ray_engine import RayEngine

        return RayEngine(run_dir, workers, threads, address=ray_address, memory_mb=ray_memory_mb)
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {name!r}")
