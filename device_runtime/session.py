"""Open a device session: verified manifest, optional memory budget, local data tokenized, backend, warm-up pass.

Shared by standalone training and the device client, so both refuse tampered artifacts and fail fast on a budget.
The device's data comes as token ids prepared by ``device_runtime.corpus`` (a child process, cached): the training
process never holds the tokenizer or the texts, which is what keeps the device's peak memory low.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cooperllm.manifest import Manifest, read_manifest
from cooperllm.models import cache_dir
from cooperllm.tokenization import PromptEncoder, TokenizedCorpus
from device_runtime import budget
from device_runtime.backends import choose_backend, open_backend
from device_runtime.backends.base import GraphBackend
from device_runtime.corpus import CorpusSource, load_corpus
from device_runtime.native.binding import load_library

log = logging.getLogger(__name__)


def _import_runtime(name: str) -> None:
    if name == "onnx":
        import onnxruntime  # noqa: F401
    elif name == "executorch":
        import executorch.runtime  # noqa: F401
    elif name == "native":
        load_library()


@dataclass
class DeviceSession:
    manifest: Manifest
    backend: GraphBackend
    encoder: PromptEncoder | None  # None when the session was given its data as corpora (no tokenizer loaded)
    corpora: dict[str, TokenizedCorpus] = field(default_factory=dict)
    load_seconds: float = 0.0


def open_session(
    artifacts: str | Path,
    backend: str | None = None,
    *,
    data: Mapping[str, CorpusSource] | None = None,
    corpus_cache: str | Path | None = None,
    memory_budget_mb: float | None = None,
    model_dir: str | None = None,
    threads: int | None = None,
    warm_up: bool = True,
) -> DeviceSession:
    """Read and verify the artifacts (a hash mismatch refuses to go on), then load the graph within the budget.

    ``data`` (name → source) becomes ``session.corpora`` (token ids, cached in ``corpus_cache``, default the user
    cache) and no tokenizer is loaded; without it the session has an ``encoder`` for callers that encode text.
    """

    t0 = time.perf_counter()
    budget.tame_heap()  # before the graph, the data and any thread: what the heap holds stays what the device uses
    folder = Path(artifacts)
    manifest = read_manifest(folder, verify_hashes=True)
    name = choose_backend(manifest, backend)
    spec = None if name == "eager" else manifest.graph("onnx" if name == "onnx" else "pte")
    graph_files = [spec.file] if spec else []
    if memory_budget_mb is not None:
        _import_runtime(name)  # count the runtime's own libraries in the pre-check, not against the graph
        budget.precheck(memory_budget_mb, folder, graph_files, manifest.layout.total)
        budget.apply_cap(memory_budget_mb)
    shape = spec or manifest.graphs[0]
    encoder, corpora = None, {}
    if data:
        cache = Path(corpus_cache) if corpus_cache else cache_dir() / "corpora"
        corpora = {key: load_corpus(folder, manifest, src, shape.seq_len, cache) for key, src in data.items()}
        first = next(iter(corpora.values()))
        if len(first) == 0:
            raise ValueError(f"{next(iter(data.values())).path}: no examples")
        warm_batch = first.batch(np.arange(shape.batch_size) % len(first))
    else:
        encoder = PromptEncoder(folder / manifest.tokenizer_file, manifest.task, shape.seq_len)
        warm_batch = encoder.encode(["warm up"] * shape.batch_size, np.zeros(shape.batch_size, dtype=np.int64))
    try:
        graph = open_backend(folder, name, model_dir=model_dir, manifest=manifest, threads=threads)
        if warm_up:  # touches the whole working set once: a budget failure happens here, not mid-round
            graph.run(warm_batch, np.zeros(manifest.layout.total, dtype=np.float32))
    except budget.MemoryBudgetError:
        raise
    except Exception as exc:
        if memory_budget_mb is not None:
            raise budget.budget_failure(memory_budget_mb, f"loading and warming up the {name} graph", exc) from exc
        raise
    session = DeviceSession(manifest, graph, encoder, corpora, time.perf_counter() - t0)
    if memory_budget_mb is not None:
        log.info("within budget: peak RSS %.0f MB of %.0f MB", budget.peak_rss_mb(), memory_budget_mb)
    return session
