"""Adapter specification (LoRA) and the θ layout it induces; torch-free so the device and manifest can use it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from cooperllm.layout import ParamLayout

HEAD_BLOCK = "head"
HEAD_PREFIX = "score"
# a transformer layer's modules: ``….layers.<i>.…`` (Llama, Qwen2, Gemma, Phi-3, Mistral) or ``….h.<i>.…`` (GPT-2)
_LAYER_RE = re.compile(r"\.(?:layers|h)\.(\d+)\.")
# AdapterSpec.targets AUTO: the family's attention projections that LoRA adapts (query and value, as the LoRA paper
# and PEFT's defaults do); a family whose fused projection holds them takes the fused module
AUTO = "auto"
FAMILY_TARGETS = {"phi3": ("qkv_proj",), "gpt2": ("c_attn",)}
DEFAULT_TARGETS = ("q_proj", "v_proj")  # Llama, Qwen2, Gemma, Mistral and most others


@dataclass(frozen=True)
class AdapterSpec:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = (AUTO,)  # AUTO: the model family's own (:meth:`for_family`)
    init_seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not self.targets:
            raise ValueError("at least one LoRA target module is required")

    def for_family(self, model_type: str) -> AdapterSpec:
        """This spec with AUTO targets replaced by the family's (FAMILY_TARGETS, else DEFAULT_TARGETS); named
        targets stay as given."""
        if self.targets != (AUTO,):
            return self
        return replace(self, targets=FAMILY_TARGETS.get(model_type, DEFAULT_TARGETS))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets), "init_seed": self.init_seed}

    @classmethod
    def from_dict(cls, data: Mapping) -> AdapterSpec:
        return cls(int(data["rank"]), float(data["alpha"]), tuple(data["targets"]), int(data.get("init_seed", 0)))


def block_name(tensor_name: str) -> str:
    """One block per transformer layer (``layer.<i>``); anything outside the layers (a task head) is ``head``."""
    m = _LAYER_RE.search(f".{tensor_name}")
    return f"layer.{int(m.group(1))}" if m else HEAD_BLOCK


def layout_for(named_shapes: Iterable[tuple[str, tuple[int, ...]]]) -> ParamLayout:
    """θ layout from trainable (name, shape) pairs: grouped by layer in layer order, the head block last."""
    items = list(named_shapes)

    def order(item: tuple[str, tuple[int, ...]]) -> tuple[int, int]:
        b = block_name(item[0])
        return (1 << 30, 0) if b == HEAD_BLOCK else (int(b.split(".")[1]), 0)

    items.sort(key=order)  # stable: keeps module order inside a layer
    return ParamLayout.build((name, shape, block_name(name)) for name, shape in items)
