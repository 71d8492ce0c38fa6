"""``--quant gguf-q4``: the frozen weights kept in the source GGUF's own 4-bit blocks, not re-rounded.

Why: the default model ships as a Q4_1 GGUF. Re-quantizing its (already rounded) weights onto another 4-bit grid cost
+0.5 nats (issue #19's measurement); reading the GGUF's blocks back is exact — the graph computes with precisely the
weights the model was published with, at 5/8 of int8's bytes per linear weight (0.5 for the codes, 0.125 for d, m).
A Q4_0/Q4_1 block holds 32 weights as 4-bit codes q with an fp16 scale d (and, for Q4_1, an fp16 minimum m):
w = q·d + m (Q4_0: w = (q − 8)·d). The codes stay packed two per byte in the graph and are dequantized with plain
float ops, as ``Int4Linear`` does; a Q8_0 embedding table (32 int8 codes and one fp16 scale per block) is gathered
row by row and dequantized after the lookup.

llama.cpp stores a Llama model's q/k projections with their rows permuted (its rotary layout); they are permuted
back here. Each GGUF tensor is checked against the model folder's weight before it replaces it: the folder must hold
the same model (each weight within its block's rounding step of the GGUF's value), else the export is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exporters.errors import ExportError
from exporters.quantize import Int8Embedding, new_summary, replace_frozen, unpack_nibbles

log = logging.getLogger(__name__)

BLOCK = 32
LINEAR_TYPES = ("Q4_0", "Q4_1")
EMBEDDING_TYPES = ("Q8_0",)
PERMUTED_ARCHS = ("llama",)  # convert_hf_to_gguf permutes q/k rows for these (its rotary layout)


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's raw blocks: ``raw`` is (rows, bytes per row) uint8 in the file's own layout."""

    name: str
    kind: str  # the ggml type's name: Q4_1, Q8_0, F32, …
    rows: int
    cols: int
    raw: np.ndarray


def read_gguf(path: Path) -> tuple[str, dict[str, GGUFTensor]]:
    """The GGUF's architecture name and its tensors by name; ExportError for a missing or unreadable file."""
    import gguf  # deferred: only this scheme reads GGUF files

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"--quant gguf-q4 reads the model's GGUF, and {path} is not a file")
    try:
        reader = gguf.GGUFReader(path)
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except (KeyError, ValueError, OSError) as exc:
        raise ExportError(f"{path} is not a readable GGUF file: {exc}") from exc
    tensors = {}
    for t in reader.tensors:
        kind = gguf.GGMLQuantizationType(t.tensor_type).name
        cols, rows = (int(n) for n in t.shape[:2]) if len(t.shape) > 1 else (int(t.shape[0]), 1)
        raw = np.asarray(t.data).view(np.uint8).reshape(rows, -1)
        tensors[t.name] = GGUFTensor(t.name, kind, rows, cols, raw)
    return arch, tensors


def unpermute_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's rotary row order for a q or k projection (its ``permute``: per head, HF's two halves
    interleaved, row pairs (i, i + half) stored as (2i, 2i + 1))."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _fp16(raw: np.ndarray) -> torch.Tensor:
    """Little-endian fp16 pairs of bytes → an fp16 tensor (converting it to fp32 or fp64 later is exact)."""
    return torch.from_numpy(np.ascontiguousarray(raw).view("<f2").astype(np.float16))


class GGUFQ4Linear(nn.Module):
    """y = x·Wᵀ + b with W = q·d + m per 32-weight block, q the GGUF's own 4-bit codes (byte j of a block holds
    weight j in its low nibble and weight j + 16 in its high one), d and m its fp16 scale and minimum, kept fp16 (the
    file's bytes) and converted to the activations' dtype in the graph (fp32 on the device, fp64 for the reference)."""

    def __init__(self, tensor: GGUFTensor, bias: torch.Tensor | None, heads: int | None = None):
        super().__init__()
        if tensor.kind not in LINEAR_TYPES or tensor.cols % BLOCK:
            raise ExportError(
                f"GGUF tensor {tensor.name} is {tensor.kind}: --quant gguf-q4 reads {' and '.join(LINEAR_TYPES)} "
                "linear weights only"
            )
        blocks = tensor.raw.reshape(tensor.rows, tensor.cols // BLOCK, -1)
        scale = _fp16(blocks[..., 0:2])
        if tensor.kind == "Q4_1":
            minimum, codes = _fp16(blocks[..., 2:4]), blocks[..., 4:]
        else:  # Q4_0: codes centred on 8
            minimum, codes = -8.0 * scale, blocks[..., 2:]
        packed = torch.from_numpy(codes.astype(np.int16) - 128).to(torch.int8)  # (rows, blocks, 16)
        if heads:  # permute whole rows back (each row's blocks move with it)
            order = unpermute_rows(torch.arange(tensor.rows, dtype=torch.float64)[:, None], heads)[:, 0].long()
            packed, scale, minimum = packed[order], scale[order], minimum[order]
        self.register_buffer("packed", packed.contiguous())
        self.register_buffer("scale", scale.contiguous())
        self.register_buffer("minimum", minimum.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.shape = (tensor.rows, tensor.cols)

    def weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        lo, hi = unpack_nibbles(self.packed, dtype)
        q = torch.cat([lo, hi], dim=-1)  # (rows, blocks, 32): the low nibbles are weights 0–15 of the block
        return (q * self.scale.to(dtype) + self.minimum.to(dtype)).reshape(self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight(x.dtype), self.bias)


class GGUFQ8Embedding(nn.Module):
    """The GGUF's Q8_0 token table: int8 codes and one fp16 scale per 32 values; only looked-up rows are dequantized."""

    def __init__(self, tensor: GGUFTensor, padding_idx: int | None = None):
        super().__init__()
        blocks = tensor.raw.reshape(tensor.rows, tensor.cols // BLOCK, 2 + BLOCK)
        self.register_buffer("scale", _fp16(blocks[..., 0:2]).float().contiguous())  # (rows, blocks, 1), fp32
        codes = np.ascontiguousarray(blocks[..., 2:]).view(np.int8)
        self.register_buffer("codes", torch.from_numpy(codes.copy()))  # (rows, blocks, 32)
        self.padding_idx = padding_idx

    def weight(self) -> torch.Tensor:
        return (self.codes.to(self.scale.dtype) * self.scale).reshape(self.codes.shape[0], -1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = torch.index_select(self.codes, 0, flat).to(self.scale.dtype) * torch.index_select(self.scale, 0, flat)
        return rows.reshape(*ids.shape, -1)


def check_same_weights(name: str, gguf_weight: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> bool:
    """True if bit-equal; ExportError unless every weight lies within its block's rounding step of the GGUF's value
    (a folder converted from another model, or a GGUF of another model, is refused rather than silently swapped)."""
    w = weight.detach().to(torch.float32)
    if w.shape != gguf_weight.shape:
        raise ExportError(f"{name}: the GGUF holds shape {tuple(gguf_weight.shape)}, the model {tuple(w.shape)}")
    if torch.equal(w, gguf_weight):
        return True
    gap = (w - gguf_weight).abs().reshape(*scale.shape[:2], -1)
    largest = gguf_weight.abs().reshape_as(gap).amax(-1, keepdim=True)
    allowed = scale.float().abs() * (0.5 + 2.0**-6) + largest * 2.0**-10  # half a step, and fp16's rounding of d, m
    if bool((gap > allowed).any()):
        raise ExportError(
            f"{name}: the GGUF's weights are not this model's (max |Δ| {gap.max().item():.3g}, more than a 4-bit "
            "rounding step): pass --gguf the file the model folder was converted from"
        )
    return False


def _gguf_name(module_name: str, name_map) -> str | None:
    """The GGUF tensor of a module in the task model (PEFT prefixes and ``base_layer`` stripped)."""
    parts = [p for p in module_name.split(".") if p != "base_layer"]
    for start in range(len(parts)):
        found = name_map.get_name(".".join(parts[start:]))
        if found:
            return found
    return None


def quantize_from_gguf(
    module: nn.Module, config, gguf_path: Path, embeddings: bool = True, skip: tuple[nn.Module, ...] = ()
) -> dict:
    """Replace the frozen linears (and the Q8_0 embedding) of ``module`` by the GGUF's own blocks, in place.

    Returns the manifest's quantization record: counts, bytes, the GGUF file and how many tensors were bit-equal to
    the model folder's (all of them for the folder ``cooperllm`` converts from the default GGUF).
    """
    import gguf  # deferred: only this scheme reads GGUF files

    arch, tensors = read_gguf(gguf_path)
    try:
        name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], int(config.num_hidden_layers))
    except KeyError as exc:
        raise ExportError(f"{gguf_path} is a GGUF of architecture {arch!r}, which gguf does not map") from exc
    heads = {"attn_q": config.num_attention_heads, "attn_k": getattr(config, "num_key_value_heads", None)}
    names = {id(m): n for n, m in module.named_modules()}
    summary = new_summary("gguf-q4", gguf=Path(gguf_path).name, gguf_arch=arch)
    summary.update(group_size=BLOCK, exact_tensors=0, checked_tensors=0)

    def source(child: nn.Module) -> GGUFTensor:
        found = _gguf_name(names[id(child)], name_map)
        if found is None or f"{found}.weight" not in tensors:
            raise ExportError(f"the GGUF has no tensor for the model's {names[id(child)]}")
        return tensors[f"{found}.weight"]

    def record(child: nn.Module, new: nn.Module, tensor: GGUFTensor) -> None:
        summary["checked_tensors"] += 1
        summary["exact_tensors"] += check_same_weights(tensor.name, new.weight(), child.weight, new.scale)

    def make_linear(linear: nn.Linear) -> nn.Module:
        tensor = source(linear)
        role = tensor.name.split(".")[-2]
        permuted = heads.get(role) if arch in PERMUTED_ARCHS else None
        new = GGUFQ4Linear(tensor, linear.bias, permuted)
        record(linear, new, tensor)
        return new

    def make_embedding(emb: nn.Embedding) -> nn.Module:
        tensor = source(emb)
        if tensor.kind not in EMBEDDING_TYPES:
            log.info("the GGUF's %s is %s: the embedding table is row-wise int8 instead", tensor.name, tensor.kind)
            return Int8Embedding(emb)
        new = GGUFQ8Embedding(tensor, emb.padding_idx)
        record(emb, new, tensor)
        return new

    replace_frozen(module, make_linear, summary, embeddings, skip, make_embedding=make_embedding)
    log.info(
        "%d linear layers from %s's %s blocks (%d of %d tensors bit-equal to the model folder's)",
        summary["quantized_linear"],
        Path(gguf_path).name,
        "/".join(LINEAR_TYPES),
        summary["exact_tensors"],
        summary["checked_tensors"],
    )
    return summary
