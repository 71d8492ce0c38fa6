"""Open a device session: verified manifest, optional memory budget, backend, prompt encoder, warm-up pass.

Shared by standalone training and the device client, so both refuse tampered artifacts and fail fast on a budget.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cooperllm.manifest import Manifest, read_manifest
from cooperllm.tokenization import PromptEncoder
from device_runtime import budget
from device_runtime.backends import choose_backend, open_backend
from device_runtime.backends.base import GraphBackend

log = logging.getLogger(__name__)


def _import_runtime(name: str) -> None:
    if name == "onnx":
        import onnxruntime  # noqa: F401
    elif name == "executorch":
        import executorch.runtime  # noqa: F401
    elif name == "native":
        from device_runtime.native.binding import load_library

        load_library()


@dataclass
class DeviceSession:
    manifest: Manifest
    backend: GraphBackend
    encoder: PromptEncoder
    load_seconds: float = 0.0


def open_session(
    artifacts: str | Path,
    backend: str | None = None,
    *,
    memory_budget_mb: float | None = None,
    model_dir: str | None = None,
    threads: int | None = None,
    warm_up: bool = True,
) -> DeviceSession:
    """Read and verify the artifacts (a hash mismatch refuses to go on), then load the graph within the budget."""
    import time

    t0 = time.perf_counter()
    folder = Path(artifacts)
    manifest = read_manifest(folder, verify_hashes=True)
    name = choose_backend(manifest, backend)
    graph_files = [] if name == "eager" else [manifest.graph("onnx" if name == "onnx" else "pte").file]
    if memory_budget_mb is not None:
        _import_runtime(name)  # count the runtime's own libraries in the pre-check, not against the graph
        budget.precheck(memory_budget_mb, folder, graph_files, manifest.layout.total)
        budget.apply_cap(memory_budget_mb)
    try:
        graph = open_backend(folder, name, model_dir=model_dir, manifest=manifest, threads=threads)
        encoder = PromptEncoder(folder / manifest.tokenizer_file, manifest.task, graph.seq_len)
        if warm_up:  # touches the whole working set once: a budget failure happens here, not mid-round
            n = graph.batch_size
            batch = encoder.encode(["warm up"] * n, np.zeros(n, dtype=np.int64))
            graph.run(batch, np.zeros(manifest.layout.total, dtype=np.float32))
    except budget.MemoryBudgetError:
        raise
    except Exception as exc:
        if memory_budget_mb is not None:
            raise budget.budget_failure(memory_budget_mb, f"loading and warming up the {name} graph", exc) from exc
        raise
    session = DeviceSession(manifest, graph, encoder, time.perf_counter() - t0)
    if memory_budget_mb is not None:
        log.info("within budget: peak RSS %.0f MB of %.0f MB", budget.peak_rss_mb(), memory_budget_mb)
    return session
