"""Shared fixtures: a tiny random Llama (built once per session) and the shared SST-2 data."""

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
