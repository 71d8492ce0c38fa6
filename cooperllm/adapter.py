"""Adapter specification (LoRA) and the θ layout it induces; torch-free so the device and manifest can use it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cooperllm.layout import ParamLayout

HEAD_BLOCK = "head"
HEAD_PREFIX = "score"
_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class AdapterSpec:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    init_seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not self.targets:
            raise ValueError("at least one LoRA target module is required")

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
