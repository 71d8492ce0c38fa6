"""``--artifacts``: the manifest's layout must match the cloud's model; its θ₀ and file hashes are used."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cooperllm.adapter import AdapterSpec
from cooperllm.tasks import TaskSpec

SEQ_LEN = 24


def _artifacts(folder: Path, model_dir: Path, layout_targets: tuple[str, ...]) -> np.ndarray:
    """An artifact folder as the exporter writes it (the graph file is a placeholder: the cloud never runs it)."""
    from cooperllm.checkpoint import save_theta
    from cooperllm.manifest import DATA_INPUTS, OUTPUTS, GraphSpec, Manifest, sha256_file, write_manifest
    from cooperllm.modeling import build_task_model, theta_from_module
    from cooperllm.models import load_causal_lm
    from cooperllm.tokenization import PromptEncoder

    folder.mkdir()
    task = TaskSpec()
    enc = PromptEncoder(model_dir / "tokenizer.json", task, SEQ_LEN)
    module, layout = build_task_model(load_causal_lm(model_dir), enc, AdapterSpec(targets=layout_targets))
    theta = theta_from_module(module, layout) + np.float32(0.01)
    shutil.copy(model_dir / "tokenizer.json", folder / "tokenizer.json")
    (folder / "model.onnx").write_bytes(b"placeholder graph")
    save_theta(folder / "adapter_init.safetensors", theta, layout)
    files = {n: sha256_file(folder / n) for n in ("tokenizer.json", "model.onnx", "adapter_init.safetensors")}
    write_manifest(
        folder,
        Manifest(
            model_name="tiny",
            task=task,
            adapter=AdapterSpec(),
            layout=layout,
            graphs=[GraphSpec("model.onnx", "onnx", "ort", 2, SEQ_LEN)],
            input_names=[*DATA_INPUTS, *layout.names],
            output_names=list(OUTPUTS),
            label_token_ids=enc.label_token_ids,
            pad_token_id=enc.pad_id,
            tokenizer_file="tokenizer.json",
            initial_adapter_file="adapter_init.safetensors",
            quantization={},
            files=files,
        ),
    )
    return theta


def _settings(model_dir: Path, public: Path, artifacts: Path):
    from cloud_api.settings import Settings

    return Settings(model=str(model_dir), public_data=public, public_n=16, artifacts=artifacts)


def test_matching_artifacts_give_theta0_and_hashes(tmp_path, tiny_model_dir, public_tsv):
    from cloud_api.model_host import load_model_host

    theta = _artifacts(tmp_path / "art", tiny_model_dir, ("q_proj", "v_proj"))
    host = load_model_host(_settings(tiny_model_dir, public_tsv, tmp_path / "art"))
    assert np.array_equal(host.theta0, theta)
    assert {"manifest.json", "model.onnx", "tokenizer.json", "adapter_init.safetensors"} <= set(host.artifact_hashes)
    assert host.public_ids.shape[1] == SEQ_LEN


def test_mismatched_layout_is_a_clear_error(tmp_path, tiny_model_dir, public_tsv):
    from cloud_api.model_host import ArtifactMismatchError, load_model_host

    _artifacts(tmp_path / "art", tiny_model_dir, ("q_proj",))  # manifest says q,v; its layout has q only
    with pytest.raises(ArtifactMismatchError, match="layout"):
        load_model_host(_settings(tiny_model_dir, public_tsv, tmp_path / "art"))


def test_the_database_lives_in_the_state_folder_unless_named(tmp_path):
    """One folder holds all of the service's state: `serve --state-dir DIR` no longer leaves the database behind in
    runs/cloud of the working directory."""
    from cloud_api.settings import Settings

    assert Settings(state_dir=tmp_path / "s").database_url == f"sqlite:///{tmp_path / 's' / 'cooperllm.db'}"
    assert (
        Settings(state_dir=tmp_path / "s", database_url="sqlite:///elsewhere.db").database_url
        == "sqlite:///elsewhere.db"
    )
