"""Shared fixtures: a tiny random Llama and its int8 .pte/.onnx export (built once per session), the SST-2 data."""

from __future__ import annotations

from pathlib import Path

import pytest

from cooperllm.data import shared_data_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cooperllm.tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    path = shared_data_dir() / "sst2"
    if not (path / "train.tsv").is_file():
        pytest.fail(f"SST-2 data not found at {path}: the checkout needs ../shared beside it")
    return path


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cooperllm.tasks import TaskSpec
    from exporters import export_artifacts

    out = tmp_path_factory.mktemp("tiny-artifacts")
    export_artifacts(
        tiny_model_dir,
        out,
        task=TaskSpec(),
        formats=("pte", "onnx"),
        quant="int8",
        batch_size=8,
        seq_len=32,
        validate=False,
        progress=False,
    )
    return out
