"""Weight-only quantization of the frozen weights, dequantized inside the graph with plain aten ops.

Why plain ops: torchao's weight-only configs do not lower to ExecuTorch today, and activation quantization is
forbidden (it breaks the finite differences the device relies on, see ``REFUSED_SCHEMES``). A quantized linear keeps
its weight as int8 (or packed int4) plus float scales; each forward multiplies them back to the scale's float dtype,
so ``module.double()`` gives the fp64 reference of exactly the same quantized function.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from exporters.errors import ExportError
from exporters.schemes import INT4_GROUP_SIZE, check_scheme

log = logging.getLogger(__name__)


def _register_int8_rows(module: nn.Module, weight: torch.Tensor) -> None:
    """Symmetric round-to-nearest int8 per row (a linear's output channel, an embedding's token), kept as the
    module's buffers ``qweight`` (int8 codes in [-127, 127]) and ``scale`` (fp32, (rows, 1)) that maps them back."""
    w = weight.detach().to(torch.float32)
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
    module.register_buffer("qweight", torch.clamp(torch.round(w / scale), -127, 127).to(torch.int8))
    module.register_buffer("scale", scale)


class Int8Linear(nn.Module):
    """y = x·(q·s)ᵀ + b with q int8 per output channel (symmetric, round-to-nearest)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        _register_int8_rows(self, linear.weight)
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def weight(self) -> torch.Tensor:
        return self.qweight.to(self.scale.dtype) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)


def unpack_nibbles(packed: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Each int8 byte (stored shifted by −128) → its low and high 4-bit codes (0..15) as ``dtype``.

    Float arithmetic (floor division by 16) rather than bit ops, which every backend runs.
    """
    p = packed.to(dtype) + 128.0
    hi = torch.floor(p / 16.0)
    return p - hi * 16.0, hi


class Int4Linear(nn.Module):
    """Group-wise symmetric int4 (groups of ``group`` inputs), two nibbles per int8 byte (high nibble first)."""

    def __init__(self, linear: nn.Linear, group: int = INT4_GROUP_SIZE):
        super().__init__()
        w = linear.weight.detach().to(torch.float32)
        out_f, in_f = w.shape
        if in_f % group or group % 2:
            raise ExportError(f"int4 needs in_features ({in_f}) divisible by the group size {group}")
        g = w.reshape(out_f, in_f // group, group)
        scale = g.abs().amax(dim=2, keepdim=True).clamp(min=1e-12) / 7.0
        q = torch.clamp(torch.round(g / scale), -8, 7).to(torch.int16) + 8  # 0..15
        q = q.reshape(out_f, in_f)
        packed = q[:, 0::2] * 16 + q[:, 1::2] - 128  # 0..255 shifted into int8 range
        self.register_buffer("packed", packed.to(torch.int8))
        self.register_buffer("scale", scale)
        self.group = group
        self.shape = (out_f, in_f)
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def weight(self) -> torch.Tensor:
        lo, hi = unpack_nibbles(self.packed, self.scale.dtype)
        out_f, in_f = self.shape
        q = torch.stack([hi, lo], dim=-1).reshape(out_f, in_f // self.group, self.group) - 8.0
        return (q * self.scale).reshape(out_f, in_f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)


class Int8Embedding(nn.Module):
    """Row-wise int8 embedding table: gathers int8 rows and their scales, dequantizes only the looked-up rows."""

    def __init__(self, emb: nn.Embedding):
        super().__init__()
        _register_int8_rows(self, emb.weight)
        self.padding_idx = emb.padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = torch.index_select(self.qweight, 0, flat).to(self.scale.dtype) * torch.index_select(self.scale, 0, flat)
        return rows.reshape(*ids.shape, rows.shape[-1])


def quantize_frozen(module: nn.Module, scheme: str, embeddings: bool = True, skip: tuple[nn.Module, ...] = ()) -> dict:
    """Replace frozen nn.Linear (and, with ``embeddings``, nn.Embedding) in place; LoRA factors and the head stay fp32.

    ``skip`` lists modules left alone (the unused LM head: the loss scores only the label rows).
    Returns a summary for the manifest (scheme, group size, counts, bytes before and after).
    """
    scheme = check_scheme(scheme)
    summary = new_summary(scheme)
    if scheme == "none":
        return summary
    if scheme == "int4":
        summary["group_size"] = INT4_GROUP_SIZE

    def make_linear(linear: nn.Linear) -> nn.Module:
        if scheme == "int4" and linear.in_features % INT4_GROUP_SIZE == 0:
            return Int4Linear(linear)
        return Int8Linear(linear)

    replace_frozen(module, make_linear, summary, embeddings, skip)
    log.info(
        "quantized %d linear layers (%s)%s",
        summary["quantized_linear"],
        scheme,
        " and the embedding table (int8)" if summary["embeddings"] else "",
    )
    return summary


def new_summary(scheme: str, **extra: str) -> dict:
    """The manifest's quantization record before any module is replaced."""
    return {
        "scheme": scheme,
        **extra,
        "weights": "frozen only",
        "activations": "fp32",
        "group_size": None,
        "embeddings": False,
        "quantized_linear": 0,
        "fp32_bytes": 0,
        "quantized_bytes": 0,
    }


def replace_frozen(
    module: nn.Module,
    make_linear: Callable[[nn.Linear], nn.Module],
    summary: dict,
    embeddings: bool = True,
    skip: tuple[nn.Module, ...] = (),
    make_embedding: Callable[[nn.Embedding], nn.Module] | None = None,
) -> None:
    """Swap every frozen linear for ``make_linear(linear)`` and, with ``embeddings``, every embedding for
    ``make_embedding(embedding)`` (default: row-wise int8), counting bytes."""
    for name, child in list(module.named_modules()):
        if not _is_frozen_target(name, child) or any(child is s for s in skip):
            continue
        if isinstance(child, nn.Embedding):
            if not embeddings:
                continue
            new: nn.Module = (make_embedding or Int8Embedding)(child)
            summary["embeddings"] = True
        else:
            new = make_linear(child)
            summary["quantized_linear"] += 1
        summary["fp32_bytes"] += child.weight.numel() * 4
        summary["quantized_bytes"] += sum(b.numel() * b.element_size() for b in new.buffers() if b is not None)
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, new)


def _is_frozen_target(name: str, child: nn.Module) -> bool:
    if any(part in name.split(".") for part in ("lora_A", "lora_B", "score")):
        return False
    if isinstance(child, nn.Embedding):
        return True
    return type(child) is nn.Linear and not any(p.requires_grad for p in child.parameters())
