"""Layout of the trainable vector θ: named tensors packed into one float32 buffer, grouped into blocks.

Devices perturb θ block by block, the cloud publishes guidance per block and the manifest records this layout, so
all three agree on which slice of θ is which tensor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    block: int
    offset: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass(frozen=True)
class BlockSpec:
    index: int
    name: str
    offset: int
    size: int

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.size)


class ParamLayout:
    """Ordered tensors and the blocks they belong to; blocks are contiguous slices of θ."""

    def __init__(self, tensors: list[TensorSpec], blocks: list[BlockSpec]):
        self.tensors = tensors
        self.blocks = blocks
        self.total = sum(t.size for t in tensors)
        self._by_name = {t.name: t for t in tensors}
        if len(self._by_name) != len(tensors):
            raise ValueError("duplicate tensor names in layout")

    @classmethod
    def build(cls, entries: Iterable[tuple[str, tuple[int, ...], str]]) -> ParamLayout:
        """Entries are (tensor name, shape, block name); tensors of one block must be adjacent."""
        tensors: list[TensorSpec] = []
        blocks: list[BlockSpec] = []
        offset = 0
        for name, shape, block_name in entries:
            if not blocks or blocks[-1].name != block_name:
                if any(b.name == block_name for b in blocks):
                    raise ValueError(f"tensors of block {block_name!r} are not adjacent")
                blocks.append(BlockSpec(len(blocks), block_name, offset, 0))
            spec = TensorSpec(name, tuple(int(s) for s in shape), len(blocks) - 1, offset)
            tensors.append(spec)
            offset += spec.size
            b = blocks[-1]
            blocks[-1] = BlockSpec(b.index, b.name, b.offset, b.size + spec.size)
        return cls(tensors, blocks)

    def __getitem__(self, name: str) -> TensorSpec:
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def flatten(self, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        missing = set(self.names) - set(tensors)
        if missing:
            raise KeyError(f"missing tensors: {sorted(missing)}")
        theta = np.empty(self.total, dtype=np.float32)
        for t in self.tensors:
            arr = np.asarray(tensors[t.name], dtype=np.float32)
            if tuple(arr.shape) != t.shape:
                raise ValueError(f"tensor {t.name} has shape {tuple(arr.shape)}, layout says {t.shape}")
            theta[t.offset : t.offset + t.size] = arr.reshape(-1)
        return theta

    def unflatten(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Views into θ, one per tensor, in layout order."""
        if theta.shape != (self.total,):
            raise ValueError(f"theta has shape {theta.shape}, layout needs ({self.total},)")
        return {t.name: theta[t.offset : t.offset + t.size].reshape(t.shape) for t in self.tensors}

    def to_dict(self) -> dict:
        return {
            "blocks": [{"index": b.index, "name": b.name, "offset": b.offset, "size": b.size} for b in self.blocks],
            "tensors": [
                {"name": t.name, "shape": list(t.shape), "block": t.block, "offset": t.offset} for t in self.tensors
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ParamLayout:
        try:
            by_block: dict[int, str] = {int(b["index"]): str(b["name"]) for b in data["blocks"]}
            entries = [(str(t["name"]), tuple(t["shape"]), by_block[int(t["block"])]) for t in data["tensors"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed parameter layout: {exc!r}") from exc
        layout = cls.build(entries)
        if layout.to_dict() != {"blocks": list(data["blocks"]), "tensors": list(data["tensors"])}:
            raise ValueError("parameter layout offsets or block sizes are inconsistent")
        return layout


def theta_checksum(theta: np.ndarray) -> str:
    """sha256 of θ as little-endian float32 bytes: the round-by-round model fingerprint."""
    return hashlib.sha256(np.ascontiguousarray(theta, dtype="<f4").tobytes()).hexdigest()
