"""``cooperllm bench device``: one table, one batch, one fresh process per row — what a phone's graph costs.

Each row is an artifact folder on a backend (native ExecuTorch runner, ONNX Runtime, ExecuTorch's Python runtime,
eager PyTorch). A row runs in its own process (``python -m cooperllm_app.bench.device ROW_JSON``) so its peak RSS
is its own; every row encodes the same SST-2 batch and starts from the same θ (initial adapter + a fixed
perturbation). Columns: file MB, load s, forward ms (median), ZO steps/s (two forwards + perturb + update), peak RSS,
the loss (rows must agree), and ratios against a speed and a memory reference row measured in the same run.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cooperllm.data import load_dataset, shared_data_dir
from cooperllm.manifest import read_manifest
from cooperllm.perturb import Direction, direction
from cooperllm.rusage import maxrss_mb
from cooperllm.tokenization import PromptEncoder
from device_runtime.backends import choose_backend, open_backend
from device_runtime.engine import ZOConfig, ZOEngine

log = logging.getLogger(__name__)

BACKENDS = ("native", "onnx", "executorch", "eager")
THETA_SHIFT = 0.01  # θ = θ₀ + 0.01·z(seed 7): moves LoRA B off zero so the adapters enter the loss


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "device",
        help="device graph cost per artifact/backend: file MB, load s, forward ms, ZO steps/s, peak RSS",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--row",
        action="append",
        required=True,
        metavar="LABEL=DIR[@BACKEND]",
        help=f"a table row: artifact folder and backend ({', '.join(BACKENDS)}; default: the manifest's default, "
        "native for .pte), and the length bucket to run the batch at (default: the smallest that holds it); repeat "
        "for each row, in display order",
    )
    p.add_argument("--data", help="TSV whose first rows form the batch (default ../shared/data/sst2/dev.tsv)")
    p.add_argument(
        "--max-tokens",
        type=int,
        help="build the batch from the first examples whose prompt has at most this many tokens (e.g. 32, to time "
        "one batch in the 32 and the 64 bucket)",
    )
    p.add_argument("--forwards", type=int, default=5, help="timed forward passes per row (default 5, median)")
    p.add_argument("--zo-steps", type=int, default=3, help="timed ZO steps per row (default 3)")
    p.add_argument("--threads", type=int, help="intra-op threads for every backend (default: the runtime's own)")
    p.add_argument("--speed-ref", help="label of the forward-latency reference row (default: the first row)")
    p.add_argument("--rss-ref", help="label of the peak-RSS reference row (default: the second row, or the first)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds allowed per row (default 1200)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON too")
    p.set_defaults(func=run)


def parse_row(spec: str) -> dict:
    label, sep, rest = spec.partition("=")
    if not sep or not label or not rest:
        raise ValueError(f"--row must look like LABEL=DIR[@BACKEND][:LENGTH], got {spec!r}")
    rest, _, length = rest.partition(":")
    if length and not length.isdigit():
        raise ValueError(f"the length in --row {spec!r} must be a length bucket of its graph, got {length!r}")
    folder, _, backend = rest.partition("@")
    if backend and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} in --row {spec!r}; choose one of {', '.join(BACKENDS)}")
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"artifact folder {folder} (from --row {spec!r}) does not exist")
    return {"label": label, "folder": folder, "backend": backend or None, "length": int(length) if length else None}


def run(args: argparse.Namespace) -> int:
    rows = [parse_row(s) for s in args.row]
    labels = [r["label"] for r in rows]
    if len(set(labels)) != len(labels):
        raise ValueError(f"row labels must be distinct, got {labels}")
    speed_ref = args.speed_ref or labels[0]
    rss_ref = args.rss_ref or labels[min(1, len(labels) - 1)]
    for ref in (speed_ref, rss_ref):
        if ref not in labels:
            raise ValueError(f"reference row {ref!r} is not one of {labels}")
    if args.forwards < 1 or args.zo_steps < 0:
        raise ValueError("--forwards must be >= 1 and --zo-steps >= 0")
    data = args.data or str(shared_data_dir() / "sst2" / "dev.tsv")
    shapes = set()
    for r in rows:
        manifest = read_manifest(r["folder"], verify_hashes=True)  # verified once here; workers skip the hashing
        r["backend"] = choose_backend(manifest, r["backend"])
        g = (
            manifest.graphs[0]
            if r["backend"] == "eager"
            else manifest.graph("onnx" if r["backend"] == "onnx" else "pte")
        )
        r["file"] = g.file if r["backend"] != "eager" else None
        r["file_mb"] = (Path(r["folder"]) / g.file).stat().st_size / 1e6 if r["file"] else None
        shapes.add((g.batch_size, g.seq_len))
    if len(shapes) != 1:
        raise ValueError(f"rows must share one batch shape for a fair table, got {sorted(shapes)}")
    ((batch, seq),) = shapes
    print(f"bench device: batch {batch}×{seq} from {data}, {args.forwards} forwards + {args.zo_steps} ZO steps per row")
    for r in tqdm(rows, desc="rows", unit="row"):
        cfg = {**r, "data": data, "forwards": args.forwards, "zo_steps": args.zo_steps, "threads": args.threads}
        cfg["max_tokens"] = args.max_tokens
        r.update(_spawn(cfg, args.timeout))
    _print_table(rows, speed_ref, rss_ref)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0 if all("error" not in r for r in rows) else 1


def _spawn(cfg: dict, timeout: float) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "cooperllm_app.bench.device", json.dumps(cfg)]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    result = json.loads(lines[-1])
    result["process_s"] = time.perf_counter() - t0
    return result


def _print_table(rows: list[dict], speed_ref: str, rss_ref: str) -> None:
    by = {r["label"]: r for r in rows}
    ref_ms = by[speed_ref].get("forward_ms")
    ref_rss = by[rss_ref].get("peak_rss_mb")
    head = (
        f"{'artifact':<22} {'backend':<10} {'len':>4} {'file MB':>8} {'load s':>7} {'fwd ms':>8} {'ZO st/s':>8} "
        f"{'peak RSS':>9} {'loss':>9} {'fwd ×' + speed_ref:>14} {'RSS ×' + rss_ref:>16} {'torch':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['label']:<22} {r['backend']:<10} FAILED: {r['error']}")
            continue
        mb = f"{r['file_mb']:.1f}" if r["file_mb"] else "-"
        fx = f"{r['forward_ms'] / ref_ms:.2f}×" if ref_ms else "-"
        rx = f"{r['peak_rss_mb'] / ref_rss:.2f}×" if ref_rss else "-"
        print(
            f"{r['label']:<22} {r['backend']:<10} {r['length']:>4} {mb:>8} {r['load_s']:>7.2f} {r['forward_ms']:>8.1f} "
            f"{r['zo_steps_per_s']:>8.2f} {r['peak_rss_mb']:>8.0f}M {r['loss']:>9.5f} {fx:>14} {rx:>16} "
            f"{'yes' if r['torch_loaded'] else 'no':>6}"
        )


def worker(cfg: dict) -> dict:
    """One row, in a fresh process: load, time forwards and ZO steps on the shared batch, report peak RSS."""
    folder = Path(cfg["folder"])
    manifest = read_manifest(folder, verify_hashes=False)  # the parent verified the hashes
    t0 = time.perf_counter()
    backend = open_backend(folder, cfg["backend"], manifest=manifest, threads=cfg.get("threads"))
    load_s = time.perf_counter() - t0
    encoder = PromptEncoder(folder / manifest.tokenizer_file, manifest.task, backend.seq_len)
    data = load_dataset(cfg["data"], label_names=manifest.task.label_names)
    n = backend.batch_size
    limit = cfg.get("max_tokens") or backend.seq_len
    chosen = [i for i, text in enumerate(data.texts) if len(encoder.encode_text(text)) <= limit][:n]
    if len(chosen) < n:
        raise ValueError(f"{cfg['data']} has {len(chosen)} rows of at most {limit} tokens, the batch needs {n}")
    batch = encoder.encode([data.texts[i] for i in chosen], np.asarray(data.labels)[chosen])
    length = cfg.get("length") or backend.length_for(batch)
    run = functools.partial(backend.run_at, length=length)
    theta = backend.initial_theta()
    for b in manifest.layout.blocks:
        theta[b.slice] += np.float32(THETA_SHIFT) * direction(7, b.index, b.size, Direction.ISO)
    loss, _ = run(batch, theta)  # warm-up (XNNPACK workspace, first-touch pages)
    times = []
    for _ in range(cfg["forwards"]):
        t = time.perf_counter()
        run(batch, theta)
        times.append((time.perf_counter() - t) * 1e3)
    steps_per_s = float("nan")
    if cfg["zo_steps"]:
        engine = ZOEngine(theta.copy(), manifest.layout, run, ZOConfig(lr=1e-4, eps=1e-3, seed=0))
        t = time.perf_counter()
        for step in range(cfg["zo_steps"]):
            engine.update(engine.step(batch, step))
        steps_per_s = cfg["zo_steps"] / (time.perf_counter() - t)
    return {
        "length": length,
        "load_s": load_s,
        "forward_ms": float(np.median(times)),
        "forward_ms_all": times,
        "zo_steps_per_s": steps_per_s,
        "loss": loss,
        "peak_rss_mb": maxrss_mb(),
        "torch_loaded": "torch" in sys.modules,
    }


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(worker(json.loads(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
