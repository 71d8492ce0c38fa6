"""Exporter tests on a tiny random Llama: real ExecuTorch and ONNX Runtime sessions, real manifests and hashes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from cooperllm.adapter import AdapterSpec, layout_for
from cooperllm.checkpoint import initial_theta
from cooperllm.manifest import DATA_INPUTS, ManifestError, read_manifest
from cooperllm.models import ModelNotFoundError, load_causal_lm
from cooperllm.tasks import SEQ_CLS, TaskSpec
from cooperllm.tokenization import PromptEncoder
from cooperllm_app.cli import main
from exporters import ExportError, export_artifacts
from exporters.api import check_layer_blocks, model_num_layers, resolve_backend
from exporters.inputs import direction, graph_inputs
from exporters.runners import open_runner

SEQ = 24
BATCH = 3
SENTENCES = ["a gorgeous , witty , seductive movie .", "the story is lame and the acting is worse", "meh ."]


@pytest.fixture(scope="module")
def int8_folder(export_tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """causal-lm-cls, int8, XNNPACK .pte and ONNX in one folder."""
    out = tmp_path_factory.mktemp("export-int8")
    export_tiny(out, formats=("pte", "onnx"), backend="xnnpack", quant="int8", batch_size=BATCH, seq_len=SEQ)
    return out


@pytest.fixture(scope="module")
def fp32_folder(export_tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """seq-cls (trainable head + LoRA), fp32, portable .pte and ONNX."""
    out = tmp_path_factory.mktemp("export-fp32")
    task = TaskSpec(mode=SEQ_CLS)
    export_tiny(out, task=task, formats="all", backend="portable", quant="none", batch_size=BATCH, seq_len=SEQ)
    return out


def _eager(tiny_model_dir: Path, manifest, quant: str):
    """An independent eager reference: rebuild the module from the HF folder and quantize it the same way."""
    import torch

    from cooperllm.modeling import build_task_model
    from exporters.quantize import quantize_frozen
    from exporters.validate import EagerFunction

    lm = load_causal_lm(tiny_model_dir)
    module, layout = build_task_model(
        lm, PromptEncoder(tiny_model_dir / "tokenizer.json", manifest.task, SEQ), manifest.adapter
    )
    quantize_frozen(module, quant, skip=(lm.get_output_embeddings(),))
    assert layout.to_dict() == manifest.layout.to_dict()
    return EagerFunction(module, layout, torch.float32)


def _batch(folder: Path, manifest):
    g = manifest.graphs[0]
    return PromptEncoder(folder / manifest.tokenizer_file, manifest.task, g.seq_len).encode(SENTENCES, [1, 0, 1])


@pytest.mark.parametrize("folder_name", ["int8_folder", "fp32_folder"])
def test_manifest_describes_a_verified_folder(folder_name: str, request: pytest.FixtureRequest) -> None:
    folder: Path = request.getfixturevalue(folder_name)
    manifest = read_manifest(folder)  # checks schema and every sha256
    assert manifest.input_names == [*DATA_INPUTS, *manifest.layout.names]
    assert manifest.output_names == ["loss", "label_logits"]
    assert {g.format for g in manifest.graphs} == {"pte", "onnx"}
    assert all(g.batch_size == BATCH and g.seq_len == SEQ for g in manifest.graphs)
    assert set(manifest.files) == {"tokenizer.json", "adapter_init.safetensors", *(g.file for g in manifest.graphs)}
    theta = initial_theta(folder, manifest)
    b_values = [theta[t.offset : t.offset + t.size] for t in manifest.layout.tensors if "lora_B" in t.name]
    assert b_values and all(np.all(b == 0) for b in b_values)  # PEFT init: B = 0, A random
    assert np.any(theta != 0)
    assert manifest.validation["passed"] is True
    for result in manifest.validation["graphs"].values():
        assert result["parity"]["abs_diff"] <= 1e-4
        assert len(result["fidelity"]) == 6  # 3 seeded directions × ε ∈ {1e-2, 1e-3}
        assert all(f["rel_err"] <= 0.05 for f in result["fidelity"])
        assert all(abs(f["fp64_projected_grad"]) > 0 for f in result["fidelity"])


def test_seq_cls_head_is_a_trainable_input(fp32_folder: Path) -> None:
    manifest = read_manifest(fp32_folder)
    assert manifest.layout.names[-2:] == ["score.weight", "score.bias"]
    assert manifest.layout.blocks[-1].name == "head"
    assert manifest.quantization["scheme"] == "none"


@pytest.mark.parametrize("folder_name,quant", [("int8_folder", "int8"), ("fp32_folder", "none")])
def test_runtimes_match_eager_at_a_perturbed_theta(
    folder_name: str, quant: str, tiny_model_dir: Path, request: pytest.FixtureRequest
) -> None:
    """Both real runtimes, a fresh batch and a θ the export never saw, against an independently rebuilt module."""
    folder: Path = request.getfixturevalue(folder_name)
    manifest = read_manifest(folder)
    batch = _batch(folder, manifest)
    theta = initial_theta(folder, manifest)
    theta = theta + np.float32(0.05) * direction(7, manifest.layout)
    eager = _eager(tiny_model_dir, manifest, quant)
    ref_loss, ref_logits = eager(batch, theta)
    for g in manifest.graphs:
        runner = open_runner(folder / g.file, g.format)
        loss, logits = runner(graph_inputs(batch, theta, manifest.layout))
        assert abs(loss - ref_loss) <= 1e-4, g.file
        np.testing.assert_allclose(logits, ref_logits, atol=1e-4, err_msg=g.file)
        moved = theta + np.float32(0.05) * direction(8, manifest.layout)
        other, _ = runner(graph_inputs(batch, moved, manifest.layout))
        assert abs(other - loss) > 1e-6, f"{g.file}: θ inputs must change the loss"
        assert abs(other - eager(batch, moved)[0]) <= 1e-4, g.file


def test_int8_weights_stay_int8_and_lm_head_is_not_in_the_graph(int8_folder: Path, fp32_folder: Path) -> None:
    def initializer_bytes(path: Path) -> dict[str, int]:
        model = onnx.load(str(path))
        sizes: dict[str, int] = {}
        for init in model.graph.initializer:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
            sizes[dtype] = sizes.get(dtype, 0) + len(init.raw_data)
        shapes = [tuple(i.dims) for i in model.graph.initializer]
        assert shapes.count((512, 64)) == 1, "the tied 512×64 embedding must appear exactly once"
        return sizes

    q = initializer_bytes(int8_folder / "model.onnx")
    f = initializer_bytes(fp32_folder / "model.onnx")
    assert q.get("int8", 0) > 3 * q.get("float32", 0)  # constant folding did not turn the weights back into fp32
    assert sum(q.values()) < 0.45 * sum(f.values())
    manifest = read_manifest(int8_folder)
    assert manifest.quantization["embeddings"] is True and manifest.quantization["quantized_linear"] == 14


def test_xnnpack_delegation_is_counted(int8_folder: Path) -> None:
    manifest = read_manifest(int8_folder)
    deleg = manifest.validation["graphs"]["model.pte"]["delegation"]
    assert deleg["delegated_ops"] > 0 and deleg["delegated_subgraphs"] > 0
    assert "aten_mm_default" not in deleg["non_delegated_by_op"]  # every matmul runs in XNNPACK
    assert "XNNPACK delegate" in manifest.validation["table"]


def test_attention_is_traced_eager_and_the_model_keeps_its_own(tiny_model_dir: Path) -> None:
    """The graph carries eager attention (fewer, larger XNNPACK pieces than SDPA's decomposition: docs/DEVICE.md);
    the module keeps SDPA for the eager references the export is checked against."""
    import torch

    from cooperllm.modeling import build_task_model
    from exporters.graph import ThetaInputs, example_inputs, export_program

    lm = load_causal_lm(tiny_model_dir)
    task = TaskSpec()
    module, layout = build_task_model(lm, PromptEncoder(tiny_model_dir / "tokenizer.json", task, SEQ), AdapterSpec())
    theta = {n: p.detach() for n, p in module.named_parameters() if n in layout.names}
    args = example_inputs(layout, theta, BATCH, SEQ, lm.config.vocab_size, task.num_classes)
    wrapper = ThetaInputs(module, layout.names)
    program = export_program(wrapper, args)
    ops = {str(n.target) for n in program.graph.nodes}
    assert "aten.softmax.int" in ops and "aten.scaled_dot_product_attention.default" not in ops
    assert lm.config._attn_implementation == "sdpa"
    with torch.no_grad():  # and the function is the same: the traced graph against the module on SDPA
        traced, direct = program.module()(*args), wrapper(*args)
    torch.testing.assert_close(traced, direct, rtol=0, atol=1e-5)


def test_tampered_and_corrupt_folders_are_rejected(int8_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(int8_folder, folder)
    with open(folder / "model.onnx", "r+b") as f:  # flip one byte of the graph
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ManifestError, match=r"model\.onnx has sha256"):
        read_manifest(folder)
    (folder / "model.onnx").unlink()
    with pytest.raises(ManifestError, match="missing"):
        read_manifest(folder)
    (folder / "manifest.json").write_text('{"format_version": 1, "graphs": [')
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(folder)
    data = json.loads((int8_folder / "manifest.json").read_text())
    data["input_names"] = data["input_names"][::-1]
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="input_names"):
        read_manifest(folder, verify_hashes=False)
    del data["layout"]
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="malformed"):
        read_manifest(folder, verify_hashes=False)


def test_int4_onnx_export_validates(export_tiny, tmp_path: Path) -> None:
    manifest = export_tiny(tmp_path, formats=("onnx",), quant="int4", batch_size=2, seq_len=SEQ)
    assert manifest.quantization["scheme"] == "int4" and manifest.quantization["group_size"] == 32
    assert manifest.validation["passed"]
    model = onnx.load(str(tmp_path / "model.onnx"))
    packed = [tuple(i.dims) for i in model.graph.initializer if i.name.endswith("gate_proj.packed")]
    assert packed == [(128, 32), (128, 32)]  # 64 inputs -> 32 bytes: two 4-bit values per byte


def test_failed_check_writes_no_manifest_unless_forced(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import exporters.validate

    monkeypatch.setattr(exporters.validate, "PARITY_ATOL", -1.0)  # an impossible bound: every parity check fails
    kwargs = dict(task=TaskSpec(), formats=("onnx",), quant="none", batch_size=2, seq_len=SEQ, progress=False)
    with pytest.raises(ExportError, match="validation failed"):
        export_artifacts(tiny_model_dir, tmp_path / "a", **kwargs)
    assert not (tmp_path / "a" / "manifest.json").exists()
    manifest = export_artifacts(tiny_model_dir, tmp_path / "b", force=True, **kwargs)
    assert manifest.validation["passed"] is False
    assert read_manifest(tmp_path / "b").validation["passed"] is False


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"adapter": AdapterSpec(targets=("qkv_fused",))}, ExportError, r"match no linear module.*q_proj"),
        ({"quant": "8da4w"}, ExportError, "finite difference"),
        ({"quant": "quantize_dynamic"}, ExportError, "refused"),
        ({"quant": "fp8"}, ExportError, "unknown quantization scheme"),
        ({"seq_len": 0}, ExportError, "sequence length"),
        ({"seq_len": 3}, ExportError, "no room for text"),
        ({"batch_size": 0}, ExportError, "batch size"),
        ({"formats": ("tflite",)}, ExportError, "unknown export format"),
        ({"backend": "vulkan"}, ExportError, "unknown ExecuTorch backend"),
    ],
)
def test_bad_requests_fail_clearly(tiny_model_dir: Path, tmp_path: Path, kwargs: dict, error: type, match: str):
    args = dict(task=TaskSpec(), formats=("onnx",), progress=False, seq_len=SEQ)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        export_artifacts(tiny_model_dir, tmp_path / "out", **args)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_missing_model_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        export_artifacts(tmp_path / "nope", tmp_path / "out", task=TaskSpec(), progress=False)


def test_cli_reports_bad_input_with_nonzero_exit(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    base = ["export", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main([*base, "--quant", "8da8w"]) != 0
    assert "finite difference" in capsys.readouterr().err
    assert main([*base, "--seq-len", "0"]) != 0
    assert "sequence length" in capsys.readouterr().err
    assert main([*base, "--lora-targets", "nope_proj"]) != 0
    assert "match no linear module" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) != 0
    assert "does not exist" in capsys.readouterr().err


def test_cli_export_writes_a_valid_folder(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    rc = main(
        [
            "export",
            "--model",
            str(tiny_model_dir),
            "--task",
            "seq-cls",
            "--format",
            "onnx",
            "--quant",
            "int8",
            "--lora-rank",
            "4",
            "--lora-targets",
            "q_proj,k_proj,v_proj",
            "--batch",
            "2",
            "--seq-len",
            str(SEQ),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "PASS" in printed and "model.onnx" in printed
    manifest = read_manifest(out)
    assert manifest.adapter == AdapterSpec(rank=4, targets=("q_proj", "k_proj", "v_proj"))
    assert sum("k_proj.lora_A" in n for n in manifest.layout.names) == 2


def test_layer_blocks_are_checked_against_optimum_layer_count(tiny_model_dir: Path) -> None:
    """An architecture whose layers are named neither '.layers.<i>.' nor '.h.<i>.' (GPT-2) would put every adapter in
    one block: refused."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert model_num_layers(config) == 2
    good = layout_for([(f"lm.model.layers.{i}.self_attn.q_proj.lora_A.weight", (8, 64)) for i in range(2)])
    check_layer_blocks(config, good, AdapterSpec())
    gpt2_style = layout_for([(f"lm.transformer.h.{i}.attn.c_attn.lora_A.weight", (8, 64)) for i in range(2)])
    check_layer_blocks(config, gpt2_style, AdapterSpec())
    unknown = layout_for([(f"lm.transformer.blocks.{i}.attn.wqkv.lora_A.weight", (8, 64)) for i in range(2)])
    with pytest.raises(ExportError, match="do not follow"):
        check_layer_blocks(config, unknown, AdapterSpec())


@pytest.mark.parametrize(
    ("formats", "quant", "expected"),
    [(["pte"], "int8", "xnnpack-qc8w"), (["pte", "onnx"], "int8", "xnnpack"), (["pte"], "none", "xnnpack")],
)
def test_cli_auto_backend_picks_the_fast_int8_path_only_where_it_applies(formats, quant, expected):
    assert resolve_backend("auto", formats, quant) == expected
    assert resolve_backend("portable", formats, quant) == "portable"
