"""Device-runtime fixtures: a learnable toy split (the tiny exported artifacts are in tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cooperllm.data import load_dataset
from cooperllm.manifest import read_manifest
from cooperllm.tokenization import PromptEncoder

POSITIVE = [
    "the film is good , funny and smart",
    "it 's a great , warm , moving story",
    "a charming and often affecting journey",
    "fine acting and a great story",
]
NEGATIVE = [
    "the movie is bad , dull and boring",
    "it 's an awful , tedious , lifeless mess",
    "unflinchingly bleak and desperate",
    "poor writing and an awful story",
]


@pytest.fixture(scope="session")
def toy_tsv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("toy") / "toy.tsv"
    rows = [f"{t}\t1" for t in POSITIVE] + [f"{t}\t0" for t in NEGATIVE]
    path.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def toy_dataset(toy_tsv: Path):
    return load_dataset(toy_tsv, label_names=("negative", "positive"))


@pytest.fixture(scope="session")
def toy_corpus(tiny_artifacts: Path, toy_dataset):
    """The toy data as token ids, tokenized in process by the artifact's own tokenizer."""
    m = read_manifest(tiny_artifacts)
    return PromptEncoder(tiny_artifacts / m.tokenizer_file, m.task, m.graphs[0].seq_len).tokenize(toy_dataset)


@pytest.fixture
def run_bench(tiny_artifacts: Path, tiny_model_dir: Path, toy_tsv: Path) -> Callable[..., subprocess.CompletedProcess]:
    """``run_bench(NAME, *args)``: ``cooperllm bench NAME`` in a fresh process on the tiny artifact, model and toy
    data, output captured (a benchmark's own processes are what it measures)."""

    def run(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        common = ["--artifacts", str(tiny_artifacts), "--model", str(tiny_model_dir), "--data", str(toy_tsv)]
        cmd = [sys.executable, "-m", "cooperllm_app.cli", "--log-level", "WARNING", "bench", name, *common, *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    return run
