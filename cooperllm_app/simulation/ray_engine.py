"""``--engine ray``: the device workers as Ray actors, on a local Ray instance or an existing cluster.

Each actor is a ``DeviceHost`` (the same code the process engine's workers run), asking Ray for the CPUs its graph
threads use (and ``--ray-memory-mb`` where given), so Ray places as many on a node as it has room for. Tasks and
results cross as JSON text, as on the process engine's pipes; Ray's own serialization carries only those strings,
between processes of the simulation's own cluster.

Where it runs:

* no ``--ray-address``: a private local instance (``ray.init(address="local")``, no dashboard, a small object
  store), shut down with the simulation. ``RAY_ADDRESS`` in the environment is not consulted: a run is local unless
  asked otherwise.
* ``--ray-address HOST:PORT``: the driver joins an existing cluster (``ray start --head`` …) and leaves it running.
  The actors read the artifacts and write the devices' state under the same paths as this machine, so on a cluster
  of several nodes the run folder and the artifact folder must be on a filesystem every node mounts at the same path
  (docs/SIMULATION.md), and the cloud, which listens on 127.0.0.1 here, must run on the head node.

Ray is quiet on the user's terminal: the actors' output stays in Ray's session logs (``log_to_driver=False``) and
their own log lines go to ``RUN_DIR/logs/ray-device-worker-I.log``; Ray's driver logger says warnings only. Token
authentication is asked for explicitly (``RAY_AUTH_MODE=token`` unless the environment says otherwise), which is also
what keeps Ray from printing its notice that it chose it; usage statistics are off (this machine reaches no
network, and the simulation has no business reporting on its user).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cooperllm_app.simulation.launcher import SimulationError, answer_of

log = logging.getLogger(__name__)

LOCAL_OBJECT_STORE_BYTES = 128 << 20  # tasks and results are small JSON strings; Ray's default is 30 % of RAM
READY_TIMEOUT_S = 900.0
STOP_GRACE_S = 10.0  # as long as the process engine lets a running task finish


class DeviceActor:
    """A Ray actor playing simulated devices: opens the graph once, then runs one device round per ``run`` call."""

    def __init__(self, run_dir: str, threads: int, name: str):
        # the simulation's worker module: imported here, in the actor's process, not by the driver
        from cooperllm_app.simulation.worker import open_host, quiet_logging

        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        logs = Path(run_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        quiet_logging(logging.FileHandler(logs / f"{name}.log"))
        t0 = time.perf_counter()
        self.host = open_host(Path(run_dir), "device", threads)
        self.load_s = round(time.perf_counter() - t0, 2)

    def ready(self) -> str:
        from device_runtime.budget import peak_rss_mb

        return json.dumps({"ready": True, "load_s": self.load_s, "peak_rss_mb": round(peak_rss_mb(), 1)})

    def run(self, task: str) -> str:
        from cooperllm_app.simulation.worker import serve

        return json.dumps(serve(self.host, json.loads(task)))


def _ray():
    """Ray, imported with its defaults set for this project (module docstring)."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as exc:  # the pinned install has it: this is a broken environment
        raise SimulationError(f"--engine ray needs the ray package ({exc}); run `make setup`") from None
    return ray


class RayEngine:
    """Device workers as Ray actors (module docstring)."""

    name = "ray"

    def __init__(self, run_dir: Path, workers: int, threads: int, address: str | None, memory_mb: int | None):
        ray = self._ray = _ray()
        self.workers = workers
        self._owns_instance = not ray.is_initialized()
        if self._owns_instance:
            common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            if address:
                ray.init(address=address, **common)
            else:
                ray.init(
                    address="local",
                    num_cpus=os.cpu_count() or 1,
                    object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                    _node_ip_address="127.0.0.1",
                    **common,
                )
        options = {"num_cpus": threads, "max_restarts": 0}
        if memory_mb:
            options["memory"] = int(memory_mb) << 20
        actor = ray.remote(DeviceActor).options(**options)
        self.actors = [actor.remote(str(run_dir), threads, f"ray-device-worker-{i}") for i in range(workers)]
        self._busy: dict = {}  # ObjectRef -> (actor, task) of the tasks running now
        self._late: list[dict] = []

    def _get(self, ref, what: str) -> dict:
        try:
            return json.loads(self._ray.get(ref))
        except self._ray.exceptions.RayError as exc:  # the actor died or could not start
            raise SimulationError(f"Ray device worker ({what}): {exc}") from None

    def wait_ready(self) -> None:
        refs = [a.ready.remote() for a in self.actors]
        done, pending = self._ray.wait(refs, num_returns=len(refs), timeout=READY_TIMEOUT_S)
        if pending:
            raise SimulationError(
                f"{len(pending)} of {len(refs)} Ray device workers did not start in {READY_TIMEOUT_S:.0f} s "
                "(does the cluster have the CPUs and memory they ask for?)"
            )
        for ref in done:
            msg = self._get(ref, "start")
            if not msg.get("ready"):
                raise SimulationError(f"a Ray device worker failed to start: {msg}")

    def run(self, tasks: list[dict], alive: Callable[[], None], poll_s: float = 1.0) -> Iterator[tuple[dict, dict]]:
        pending = list(tasks)
        idle = list(self.actors)
        while pending or self._busy:
            while pending and idle:
                a, task = idle.pop(0), pending.pop(0)
                self._busy[a.run.remote(json.dumps(task))] = (a, task)
            ready, _ = self._ray.wait(list(self._busy), num_returns=1, timeout=poll_s)
            if not ready:
                alive()
                continue
            a, task = self._busy.pop(ready[0])
            result = answer_of(f"Ray device worker (round {task.get('round')})", self._get(ready[0], "round"))
            idle.append(a)
            yield task, result

    def stop(self) -> None:
        """Let running tasks finish (up to STOP_GRACE_S; their results go to ``drain``), then end the actors and, if
        this engine started it, the local Ray instance."""
        if self._busy:
            done, _ = self._ray.wait(list(self._busy), num_returns=len(self._busy), timeout=STOP_GRACE_S)
            for ref in done:
                try:
                    msg = self._get(ref, "stop")
                except SimulationError:
                    continue
                if msg.get("ok") and isinstance(msg.get("result"), dict):
                    self._late.append(msg["result"])
            self._busy.clear()
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []
        if self._owns_instance:
            self._ray.shutdown()

    def drain(self) -> list[dict]:
        out, self._late = self._late, []
        return out
