"""``cooperllm bench adapter``: bytes of an adapter download in full vs as a lossless delta, on a run's real θs.

A device that missed rounds cannot replay them and downloads θ_r; with ``GET /v1/adapter/delta`` it downloads θ_r
as a delta from the θ_r0 it holds (:mod:`cooperllm.theta_delta`: zstd of the byte-shuffled XOR of the float32 bit
patterns). For every pair of stored versions r0 < r = r0 + gap of a finished run (the cloud's ``adapters/`` folder),
this reports the full download (the safetensors body ``GET /v1/adapter`` sends) against the delta frame, with two
baselines measured in the same run: zstd of θ's raw float32 bytes and of its byte planes (no delta).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

import numpy as np
import zstandard

from cooperllm import theta_delta
from cooperllm.checkpoint import load_theta
from cooperllm.layout import ParamLayout
from cooperllm.manifest import read_manifest

_VERSION_FILE = re.compile(r"v(\d+)\.safetensors")


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adapter",
        help="adapter download bytes: full safetensors vs lossless delta from an earlier version, per round gap",
        description="For the adapter versions a finished run stored, the bytes of downloading θ_r in full vs as a "
        "lossless delta from θ_(r-gap) (GET /v1/adapter/delta), for gaps 1..G; baselines: zstd of θ's float32 bytes "
        "and of its byte planes. Every delta is decoded and checked bit for bit.",
    )
    p.add_argument(
        "run",
        help="a simulation run folder (RUN_DIR, its cloud/run*/adapters is used) or an adapters folder itself",
    )
    p.add_argument("--artifacts", help="artifact folder whose manifest gives θ's layout (default: the run's config)")
    p.add_argument("--gaps", type=int, default=5, help="largest round gap r - r0 (default 5)")
    p.add_argument("--level", type=int, default=theta_delta.DEFAULT_LEVEL, help="zstd level (default: the server's)")
    p.add_argument("--json", help="also write the table to this JSON file")
    p.set_defaults(func=run)


def adapter_files(folder: Path) -> dict[int, Path]:
    """version → file of a cloud ``adapters/`` folder (``v000003.safetensors``)."""
    found = {int(m.group(1)): p for p in folder.iterdir() if (m := _VERSION_FILE.fullmatch(p.name))}
    return dict(sorted(found.items()))


def _adapters_and_layout(run_arg: str, artifacts: str | None) -> tuple[Path, ParamLayout]:
    path = Path(run_arg)
    if path.name == "adapters" or any(_VERSION_FILE.fullmatch(p.name) for p in path.glob("v*.safetensors")):
        folder = path
    else:
        found = sorted(path.glob("cloud/run*/adapters"))
        if not found:
            raise SystemExit(f"{path}: neither an adapters folder nor a run folder with cloud/run*/adapters")
        folder = found[-1]
    if artifacts is None:  # a simulation's RUN_DIR/config.json names them (RUN_DIR/cloud/run1/adapters)
        config = next((p / "config.json" for p in (path, *folder.parents[:3]) if (p / "config.json").is_file()), None)
        artifacts = json.loads(config.read_text()).get("artifacts") if config is not None else None
    if not artifacts:
        raise SystemExit("θ's layout is unknown: pass --artifacts (the run's artifact folder)")
    return folder, read_manifest(artifacts, verify_hashes=False).layout


def measure(files: dict[int, Path], layout: ParamLayout, gaps: int, level: int = theta_delta.DEFAULT_LEVEL) -> dict:
    """Per gap 1..``gaps``: full-download bytes vs delta bytes over every stored pair (r - gap, r), each delta
    decoded and checked bit for bit; plus the no-delta zstd baselines over the versions a delta can rebuild (all
    but the first: θ₀'s zero LoRA B would flatter them)."""
    thetas = {v: load_theta(p, layout) for v, p in files.items()}
    full = {v: p.stat().st_size for v, p in files.items()}
    zstd = zstandard.ZstdCompressor(level=level)
    later = list(thetas.values())[1:]
    raw_zstd = [len(zstd.compress(t.astype("<f4").tobytes())) for t in later]
    planes_zstd = [len(zstd.compress(theta_delta.shuffle_planes(t.view("<u4")))) for t in later]
    rows = []
    for gap in range(1, gaps + 1):
        pairs = [(r - gap, r) for r in thetas if r - gap in thetas]
        if not pairs:
            continue
        sizes, enc_ms, dec_ms = [], [], []
        for r0, r in pairs:
            t0 = time.perf_counter()
            frame = theta_delta.encode(thetas[r], thetas[r0], from_version=r0, to_version=r, level=level)
            t1 = time.perf_counter()
            back = theta_delta.decode(frame, thetas[r0], from_version=r0, to_version=r)
            t2 = time.perf_counter()
            if not np.array_equal(back.view("<u4"), thetas[r].view("<u4")):
                raise AssertionError(f"delta v{r0}→v{r} is not bit-exact")
            sizes.append(len(frame))
            enc_ms.append((t1 - t0) * 1e3)
            dec_ms.append((t2 - t1) * 1e3)
        full_mean = statistics.mean(full[r] for _, r in pairs)
        rows.append(
            {
                "gap": gap,
                "pairs": len(pairs),
                "full_bytes": round(full_mean),
                "delta_bytes_mean": round(statistics.mean(sizes)),
                "delta_bytes_min": min(sizes),
                "delta_bytes_max": max(sizes),
                "delta_vs_full": round(statistics.mean(sizes) / full_mean, 4),
                "encode_ms": round(statistics.median(enc_ms), 1),
                "decode_ms": round(statistics.median(dec_ms), 1),
            }
        )
    return {
        "values": layout.total,
        "versions": list(thetas),
        "level": level,
        "full_bytes": round(statistics.mean(full.values())),
        "zstd_raw_bytes": round(statistics.mean(raw_zstd)),
        "zstd_planes_bytes": round(statistics.mean(planes_zstd)),
        "gaps": rows,
    }


def run(args: argparse.Namespace) -> int:
    folder, layout = _adapters_and_layout(args.run, args.artifacts)
    files = adapter_files(folder)
    if len(files) < 2:
        raise SystemExit(f"{folder}: fewer than two adapter versions")
    res = measure(files, layout, args.gaps, args.level)
    res["adapters"] = str(folder)
    full = res["full_bytes"]
    print(f"{folder}: {len(files)} versions, θ = {res['values']:,} float32, zstd level {res['level']}")
    print(f"full download (safetensors)      {full:>11,} B   1.000")
    for name, key in (("zstd of θ_r (baseline)", "zstd_raw_bytes"), ("zstd of θ_r's byte planes", "zstd_planes_bytes")):
        print(f"{name:<32} {res[key]:>11,} B   {res[key] / full:.3f}")
    head = ("gap", 3), ("pairs", 5), ("full B", 11), ("delta B mean", 13), ("min", 11), ("max", 11), ("ratio", 6)
    print(" ".join(f"{name:>{width}}" for name, width in head), f"{'enc ms':>7}")
    for g in res["gaps"]:
        print(
            f"{g['gap']:>3} {g['pairs']:>5} {g['full_bytes']:>11,} {g['delta_bytes_mean']:>13,} "
            f"{g['delta_bytes_min']:>11,} {g['delta_bytes_max']:>11,} {g['delta_vs_full']:>6.3f} {g['encode_ms']:>7.1f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0
