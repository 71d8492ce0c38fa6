"""Golden vectors for the portable perturbations and the round replay (docs/PERTURBATIONS.md).

``python -m cooperllm.spec.golden --write`` regenerates ``perturbation_golden.json``; the Python and Android test
suites both check the committed file, so a change to the generator that breaks portability fails both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from cooperllm.layout import ParamLayout, theta_checksum
from cooperllm.perturb import (
    MAX_SEED,
    STREAM_ISO,
    STREAM_XI,
    Direction,
    direction,
    mix64,
    project_coefficients,
    rademacher,
    stream_key,
    stream_words,
    subspace_scale,
)
from cooperllm.zgr import ALL_BLOCKS, BlockGuidance, BlockUpdate, Report, apply_update

GOLDEN_PATH = Path(__file__).with_name("perturbation_golden.json")
FORMAT = 2  # 2: ZGR v2 directions (iso, subspace, complement) and per-block published updates


def f32_hex(values: np.ndarray) -> list[str]:
    """float32 values as 8-hex-digit IEEE bit patterns (exact, language-neutral)."""
    return [f"{struct.unpack('<I', struct.pack('<f', float(v)))[0]:08x}" for v in np.asarray(values, np.float32)]


def f32_from_hex(items: list[str]) -> np.ndarray:
    return np.array([struct.unpack("<f", struct.pack("<I", int(h, 16)))[0] for h in items], dtype=np.float32)


def _signs(z: np.ndarray) -> str:
    return "".join("+" if v > 0 else "-" for v in z)


def _demo_values(n: int, salt: int) -> np.ndarray:
    """Deterministic, non-trivial float32 values built from the generator itself (no platform RNG)."""
    words = stream_words(stream_key(salt, 0), n)
    return ((words >> np.uint64(40)).astype(np.float64) / float(1 << 24) - 0.5).astype(np.float32)


def build() -> dict:
    mix_inputs = [0, 1, 0x9E3779B97F4A7C15, MAX_SEED, (1 << 64) - 1]
    streams = []
    for seed, block, stream in [
        (0, 0, STREAM_ISO),
        (1, 0, STREAM_ISO),
        (42, 3, STREAM_ISO),
        (42, 3, STREAM_XI),
        (123456789, 29, STREAM_ISO),
        (MAX_SEED, 4294967295, STREAM_ISO),
    ]:
        key = stream_key(seed, block, stream)
        entry = {
            "seed": seed,
            "block": block,
            "stream": stream,
            "key": f"{key:016x}",
            "words": [f"{int(w):016x}" for w in stream_words(key, 4)],
            "first_128": _signs(rademacher(seed, block, 128, stream)),
        }
        for n in (1000, 15360, 460800):
            bits = (rademacher(seed, block, n, stream) < 0).astype(np.uint8)  # 1 where the entry is -1
            entry[f"sha256_bits_{n}"] = hashlib.sha256(np.packbits(bits, bitorder="little").tobytes()).hexdigest()
        streams.append(entry)

    n, m = 10, 3
    basis = _demo_values(n * m, 7).reshape(n, m)
    z_iso = rademacher(99, 2, n).astype(np.float32)
    directions = {
        "seed": 99,
        "block": 2,
        "n": n,
        "m": m,
        "basis_row_major": f32_hex(basis.reshape(-1)),
        "iso": f32_hex(direction(99, 2, n, Direction.ISO)),
        "subspace_scale": f32_hex(np.array([subspace_scale(n, m)])),
        "subspace": f32_hex(direction(99, 2, n, Direction.SUBSPACE, basis)),
        "projection": f32_hex(project_coefficients(basis, z_iso)),
        "complement": f32_hex(direction(99, 2, n, Direction.COMPLEMENT, basis)),
    }
    layout = ParamLayout.build([("a", (5,), "layer.0"), ("b", (7,), "layer.1")])
    theta0 = _demo_values(layout.total, 11)
    guidance = {
        0: BlockGuidance(_demo_values(5 * 2, 17).reshape(5, 2), np.array([0.25, 2.0], dtype=np.float32)),
        1: BlockGuidance(_demo_values(7 * 2, 13).reshape(7, 2), np.array([0.5, -1.25], dtype=np.float32)),
    }
    reports = [  # a zgr round: step s measures directions[s mod 2] (subspace, complement)
        Report(5, 0, 0, 0.75, 8),
        Report(6, 0, 1, -1.5, 8),
        Report(7, ALL_BLOCKS, 2, 0.125, 8),
        Report(8, ALL_BLOCKS, 3, 2.0, 8),
        Report(9, 1, 1, -0.375, 8),
    ]
    zgr_dirs = (Direction.SUBSPACE, Direction.COMPLEMENT)
    update = {
        0: BlockUpdate(q=-0.0123, w=np.array([0.01, -0.02], dtype=np.float32)),
        1: BlockUpdate(q=0.00456, w=np.array([-0.003, 0.0375], dtype=np.float32)),
    }
    zo_update = {0: BlockUpdate(q=-0.001), 1: BlockUpdate(q=-0.002)}
    replays = []
    for name, dirs, guid, upd in (
        ("zgr", zgr_dirs, guidance, update),
        ("zo", (Direction.ISO,), {}, zo_update),
        ("cloud", (), guidance, {b: BlockUpdate(w=u.w) for b, u in update.items()}),
    ):
        rep = [] if not dirs else reports
        theta1 = theta0.copy()
        apply_update(theta1, layout, rep, dirs, guid, upd)
        replays.append(
            {
                "strategy": name,
                "layout": layout.to_dict(),
                "theta0": f32_hex(theta0),
                "directions": [d.name.lower() for d in dirs],
                "guidance": {
                    str(b): {
                        "basis_row_major": f32_hex(g.basis.reshape(-1)),
                        "rows": int(g.basis.shape[0]),
                        "cols": int(g.basis.shape[1]),
                        "coeffs": f32_hex(g.coeffs),
                    }
                    for b, g in guid.items()
                },
                "reports": [
                    {"seed": r.seed, "block": r.block, "step": r.step, "scalar": r.scalar, "n_examples": r.n_examples}
                    for r in rep
                ],
                "update": [
                    {"block": b, "q": u.q, "w": None if u.w is None else f32_hex(u.w)} for b, u in sorted(upd.items())
                ],
                "theta1": f32_hex(theta1),
                "theta1_sha256": theta_checksum(theta1),
            }
        )
    return {
        "format": FORMAT,
        "spec": "docs/PERTURBATIONS.md",
        "mix64": [{"in": f"{x:016x}", "out": f"{mix64(x):016x}"} for x in mix_inputs],
        "streams": streams,
        "directions": directions,
        "replays": replays,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"write {GOLDEN_PATH.name} (else print)")
    args = parser.parse_args()
    text = json.dumps(build(), indent=1) + "\n"
    if args.write:
        GOLDEN_PATH.write_text(text)
        print(f"wrote {GOLDEN_PATH}")
    else:
        print(text)


if __name__ == "__main__":
    main()
