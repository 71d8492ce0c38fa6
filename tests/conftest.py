"""Shared fixtures: a tiny random Llama and its int8 .pte/.onnx export (built once per session), the SST-2 data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cooperllm.data import shared_data_dir
from cooperllm.manifest import Manifest
from cooperllm.tasks import TaskSpec
from exporters import export_artifacts


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
def export_tiny(tiny_model_dir: Path) -> Callable[..., Manifest]:
    """``export_tiny(out, **kwargs)``: ``export_artifacts`` of the tiny model into ``out`` without a progress bar,
    causal-lm-cls unless ``task`` is given; every other choice is the caller's."""

    def export(out: Path, **kwargs) -> Manifest:
        return export_artifacts(tiny_model_dir, out, **{"task": TaskSpec(), "progress": False, **kwargs})

    return export


@pytest.fixture(scope="session")
def tiny_artifacts(export_tiny: Callable[..., Manifest], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-artifacts")
    export_tiny(out, formats=("pte", "onnx"), quant="int8", batch_size=8, seq_len=32, validate=False)
    return out
