"""``--quant gguf-q4``: a tiny Llama written as a GGUF the way llama.cpp stores one (Q4_1 linears with q/k rows in
its rotary order, a Q8_0 token table), and the model folder converted back from it. The export keeps the GGUF's own
blocks: every weight bit-equal to the folder's, the .pte validated against the eager model, a folder of another
model refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cooperllm.models import load_causal_lm
from cooperllm.tasks import TaskSpec
from cooperllm.tiny import make_tiny_llama
from cooperllm_app.cli import main
from exporters import ExportError, export_artifacts
from exporters.gguf_q4 import GGUFQ4Linear, read_gguf, unpermute_rows

Q = gguf.GGMLQuantizationType
BATCH, SEQ = 2, 16


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf row order for a Llama q/k projection (written here from its definition)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_names(model_dir: Path):
    """(head counts of the projections llama.cpp permutes, the HF → GGUF tensor name map) of a tiny Llama folder."""
    config = load_causal_lm(model_dir).config
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    return heads, gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)


def write_gguf(model_dir: Path, path: Path, linear: Q = Q.Q4_1, kinds: dict[str, Q] | None = None) -> None:
    """``model_dir``'s weights as a GGUF: linears ``linear`` (per-name overrides in ``kinds``), token table Q8_0."""
    heads, names = llama_names(model_dir)
    writer = gguf.GGUFWriter(str(path), "llama")
    for name, tensor in load_file(model_dir / "model.safetensors").items():
        target = names.get_name(name, try_suffixes=(".weight",))
        w = tensor.numpy().astype(np.float32)
        if w.ndim == 1:
            writer.add_tensor(target, w)
            continue
        role = target.split(".")[-2]
        if role in heads:
            w = llama_cpp_permute(w, heads[role])
        kind = (kinds or {}).get(target, Q.Q8_0 if role == "token_embd" else linear)
        if kind == Q.F16:
            writer.add_tensor(target, w.astype(np.float16))
        else:
            writer.add_tensor(target, gguf.quants.quantize(w, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def convert_back(gguf_path: Path, model_dir: Path, out: Path) -> Path:
    """The model folder a GGUF converts to: ``model_dir``'s config and tokenizer, the GGUF's dequantized weights."""
    heads, names = llama_names(model_dir)
    reader = {t.name: t for t in gguf.GGUFReader(gguf_path).tensors}
    state = {}
    for name, tensor in load_file(model_dir / "model.safetensors").items():
        target = names.get_name(name, try_suffixes=(".weight",))
        t = reader[target]
        w = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)).reshape(tensor.shape)
        role = target.split(".")[-2]
        if role in heads and w.ndim == 2:
            w = unpermute_rows(w, heads[role])
        state[name] = w.contiguous()
    out.mkdir(parents=True)
    for f in ("config.json", "tokenizer.json", "generation_config.json"):
        if (model_dir / f).is_file():
            shutil.copy(model_dir / f, out / f)
    if "lm_head.weight" in state and torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
        del state["lm_head.weight"]
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(the original fp32 folder, its Q4_1 GGUF, the folder converted back from the GGUF)."""
    root = tmp_path_factory.mktemp("gguf")
    original = make_tiny_llama(root / "original")
    path = root / "tiny.Q4_1.gguf"
    write_gguf(original, path)
    return original, path, convert_back(path, original, root / "converted")


def export(model: Path, out: Path, gguf_path: Path | None, **kwargs):
    return export_artifacts(
        model,
        out,
        task=TaskSpec(),
        quant="gguf-q4",
        gguf=gguf_path,
        batch_size=BATCH,
        seq_len=SEQ,
        progress=False,
        **kwargs,
    )


def test_the_gguf_blocks_reproduce_the_converted_folder_bit_for_bit_and_the_pte_matches_eager(published, tmp_path):
    _, path, converted = published
    manifest = export(converted, tmp_path / "a", path)
    q = manifest.quantization
    assert q["scheme"] == "gguf-q4" and q["gguf"] == path.name and q["group_size"] == 32
    assert q["quantized_linear"] == 14 and q["embeddings"]  # 2 layers × 7 projections, and the Q8_0 table
    assert q["exact_tensors"] == q["checked_tensors"] == 15
    assert q["quantized_bytes"] < q["fp32_bytes"] / 4  # 4-bit codes + per-block fp32 scale and minimum
    report = manifest.validation["graphs"]["model.pte"]  # runtime vs this eager model, ZO fidelity vs fp64
    assert manifest.validation["passed"] and report["parity"]["passed"]
    assert report["delegation"]["delegated_ops"] > 0  # the matmuls run in XNNPACK on the dequantized weights


def test_an_fp32_folder_is_accepted_within_the_rounding_step_and_the_gguf_values_are_what_the_graph_computes(
    published, tmp_path
):
    original, path, converted = published
    manifest = export(original, tmp_path / "b", path, formats=("onnx",))
    assert manifest.validation["passed"]
    assert manifest.quantization["exact_tensors"] == 0 < manifest.quantization["checked_tensors"]
    lm = load_causal_lm(original)
    _, tensors = read_gguf(path)
    q = GGUFQ4Linear(tensors["blk.1.attn_q.weight"], None, lm.config.num_attention_heads)
    expected = load_file(converted / "model.safetensors")["model.layers.1.self_attn.q_proj.weight"]
    assert torch.equal(q.weight(), expected)
    assert not torch.equal(q.weight(), lm.model.layers[1].self_attn.q_proj.weight.detach())


def test_q4_0_blocks_are_read_as_centred_codes(tmp_path):
    model = make_tiny_llama(tmp_path / "m")
    path = tmp_path / "tiny.Q4_0.gguf"
    write_gguf(model, path, linear=Q.Q4_0)
    converted = convert_back(path, model, tmp_path / "converted")
    manifest = export(converted, tmp_path / "out", path, formats=("onnx",))
    assert manifest.quantization["exact_tensors"] == manifest.quantization["checked_tensors"]


def test_a_gguf_of_another_model_is_refused(published, tmp_path):
    _, path, _ = published
    other = make_tiny_llama(tmp_path / "other", seed=1)
    with pytest.raises(ExportError, match="not this model's"):
        export(other, tmp_path / "out", path)


def test_a_linear_in_a_type_gguf_q4_does_not_read_is_refused_by_name(published, tmp_path):
    original, _, _ = published
    path = tmp_path / "mixed.gguf"
    write_gguf(original, path, kinds={"blk.0.ffn_down.weight": Q.F16})
    with pytest.raises(ExportError, match=r"blk\.0\.ffn_down\.weight is F16"):
        export(original, tmp_path / "out", path)


def test_bad_gguf_requests_are_clear_errors(published, tmp_path):
    original, path, _ = published
    with pytest.raises(ExportError, match="no such file"):
        export(original, tmp_path / "o1", tmp_path / "missing.gguf")
    with pytest.raises(ExportError, match="holds 0 .gguf files"):
        export(original, tmp_path / "o2", None)
    with pytest.raises(ExportError, match="read by --quant gguf-q4 only"):
        export_artifacts(original, tmp_path / "o3", task=TaskSpec(), quant="int8", gguf=path, progress=False)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(ExportError, match="not a readable GGUF"):
        export(original, tmp_path / "o4", junk)
    code = main(["export", "--model", str(original), "--out", str(tmp_path / "o5"), "--quant", "gguf-q4"])
    assert code != 0
