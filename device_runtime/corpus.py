"""The device's local data as token ids, tokenized once in a short-lived child process and cached on disk.

Why a child process: the tokenizer (~30 MB resident for SmolLM2's 49k BPE vocabulary) and the texts as Python
objects fragment the heap, and much of it is never handed back to the OS once freed; tokenizing beside the training
loop left ~20 MB of that in the device's peak. The child exits before the graph is loaded, so the training process
holds only the ids (about 6 MB for SST-2's 60k prompts). Why a cache: a phone tokenizes its data once, not per launch.
The cache key covers everything the ids depend on, and a damaged cache file is rebuilt, never trusted.

    python -m device_runtime.corpus '<json request>'    # the child's entry point (internal)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from cooperllm.console import fail
from cooperllm.data import DataError
from cooperllm.manifest import Manifest, sha256_file
from cooperllm.tokenization import TokenizedCorpus

log = logging.getLogger(__name__)

FORMAT = "cooperllm-corpus-1"


@dataclass(frozen=True)
class CorpusSource:
    """A labelled data file and how to read it; ``limit`` keeps its first rows only."""

    path: str
    text_column: str | None = None  # a name, or an index in a file without a header; None: detected
    label_column: str | None = None
    limit: int | None = None
    header: bool | None = None  # None: detected (cooperllm.datafile)


def cache_key(manifest: Manifest, source: CorpusSource, seq_len: int) -> str:
    """Everything the ids depend on: the data bytes, the tokenizer, the task's template and labels, the length."""
    doc = {
        "format": FORMAT,
        "data_sha256": sha256_file(source.path),
        "tokenizer_sha256": manifest.files[manifest.tokenizer_file],
        "task": manifest.task.to_dict(),
        "seq_len": seq_len,
        "source": {**asdict(source), "path": None},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def load_corpus(folder: Path, manifest: Manifest, source: CorpusSource, seq_len: int, cache: Path) -> TokenizedCorpus:
    """The cached corpus for ``source``, tokenizing it in a child process first when the cache lacks it."""
    if not Path(source.path).is_file():
        raise DataError(f"{source.path}: no such data file")
    key = cache_key(manifest, source, seq_len)
    path = Path(cache) / f"corpus-{key[:32]}.safetensors"
    if path.is_file():
        try:
            return read_corpus(path, key)
        except (OSError, ValueError) as exc:
            log.warning("rebuilding the damaged corpus cache %s: %s", path, exc)
    request = {
        "tokenizer": str(folder / manifest.tokenizer_file),
        "task": manifest.task.to_dict(),
        "seq_len": seq_len,
        "source": asdict(source),
        "out": str(path),
        "key": key,
    }
    log.info("tokenizing %s in a child process (cached at %s)", source.path, path)
    proc = subprocess.run(
        [sys.executable, "-m", "device_runtime.corpus", json.dumps(request)],
        capture_output=True,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false")},
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise DataError(lines[-1].removeprefix("error: ") if lines else f"tokenizing {source.path} failed")
    return read_corpus(path, key)


def read_corpus(path: Path, key: str) -> TokenizedCorpus:
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("key") != key:
                raise ValueError("not the corpus this key names")
            ids, offsets, labels = (f.get_tensor(k) for k in ("ids", "offsets", "labels"))
    except SafetensorError as exc:
        raise ValueError(f"unreadable safetensors file: {exc}") from exc
    seq_len, pad_id = int(meta["seq_len"]), int(meta["pad_id"])
    n = len(labels)
    if (
        ids.dtype != np.int32
        or offsets.shape != (n + 1,)
        or offsets[0] != 0
        or offsets[-1] != len(ids)
        or np.any(np.diff(offsets) < 1)
        or np.any(np.diff(offsets) > seq_len)
    ):
        raise ValueError("inconsistent ids/offsets")
    return TokenizedCorpus(ids, offsets, labels, seq_len, pad_id)


def _child(request: dict) -> None:
    # Here, not at the top: only the short-lived tokenizing child needs the data readers and the tokenizer; the
    # device process that imports this module reads the cached ids and never holds them.
    from safetensors.numpy import save_file

    from cooperllm.data import load_dataset
    from cooperllm.tasks import TaskSpec
    from cooperllm.tokenization import PromptEncoder

    source = CorpusSource(**request["source"])
    task = TaskSpec.from_dict(request["task"])
    dataset = load_dataset(source.path, source.text_column, source.label_column, task.label_names, source.header)
    if source.limit is not None:
        dataset = dataset.subset(range(min(source.limit, len(dataset))))
    corpus = PromptEncoder(request["tokenizer"], task, request["seq_len"]).tokenize(dataset)
    out = Path(request["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "key": request["key"], "seq_len": str(corpus.seq_len), "pad_id": str(corpus.pad_id)}
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file({"ids": corpus.ids, "offsets": corpus.offsets, "labels": corpus.labels}, tmp, metadata=meta)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


if __name__ == "__main__":
    try:
        _child(json.loads(sys.argv[1]))
    except (OSError, ValueError) as exc:
        sys.exit(fail(exc, 2))
