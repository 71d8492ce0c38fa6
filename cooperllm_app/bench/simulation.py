"""``cooperllm bench simulation``: a simulation at the paper's scale — memory against the population N, and the Ray
engine's throughput against the process pool's, side by side in one run (docs/SIMULATION.md).

Each arm is a full ``cooperllm simulate`` (its own process, so its peaks are its own) with K devices per round out of
N, on the same artifacts, seed and options; only N and the engine differ. From each arm's metrics lines:

* device-steps/s over rounds 1 … R−1 (round 0 also enrols the whole population, and every device opens its state
  for the first time): Σ devices × local steps / Σ round seconds;
* peak RSS (VmHWM) of every kind of process the simulation runs on this machine, the largest over the rounds: a
  device worker, the cloud, the evaluator and the simulation itself. Ray's own daemons (raylet, GCS) are not counted:
  they are the cluster's, not the run's, and do not see N.

Ratios: each peak at the largest N over the smallest (memory independent of N: ≈ 1), and Ray's device-steps/s over
the process pool's at each N.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from cooperllm.tiny import make_tiny_llama
from cooperllm_app.simulation.engines import ENGINES
from cooperllm_app.simulation.metrics import read_lines

PEAKS = ("device_worker", "cloud", "evaluator", "simulation")


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulation",
        help="a simulation at scale: peak memory vs the population N, Ray vs process-pool throughput",
        description="Run `cooperllm simulate` once per population size and engine (same seed and options; K devices "
        "per round), then print device-steps/s and each process kind's peak RSS, with the ratios largest N / "
        "smallest N and Ray / process pool.",
    )
    p.add_argument("--artifacts", help="exported artifacts (default: a tiny random Llama exported here)")
    p.add_argument("--model", help="with --artifacts: the HF folder they came from (default: the manifest's)")
    p.add_argument("--clients", type=int, nargs="+", default=[100, 1000], help="population sizes N (default 100 1000)")
    p.add_argument("--per-round", type=int, default=100, help="devices per round K (default 100)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per arm (default 3; round 0 is not timed)")
    p.add_argument("--local-steps", type=int, default=2, help="ZO steps per device and round (default 2)")
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES, help="engines (default: all)")
    p.add_argument("--workers", type=int, help="device workers per arm (default: the simulation's)")
    p.add_argument("--out", help="keep the run folders and write results.json here (default: a temporary folder)")
    p.set_defaults(func=run)


def _tiny(tmp: Path) -> tuple[str, str]:
    """A tiny random Llama and its int8 ExecuTorch export (what the simulation tests run)."""
    model = make_tiny_llama(tmp / "model", seed=0)
    out = tmp / "artifacts"
    cmd = [sys.executable, "-m", "cooperllm_app.cli", "--log-level", "WARNING", "export", "--model", str(model)]
    cmd += ["--format", "pte", "--out", str(out), "--batch", "8", "--seq-len", "32", "--no-validate", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"export failed:\n{done.stderr[-2000:]}")
    return str(model), str(out)


def _arm(args, model: str | None, artifacts: str, clients: int, engine: str, folder: Path) -> dict:
    cmd = [sys.executable, "-m", "cooperllm_app.cli", "--log-level", "WARNING", "simulate", "--artifacts", artifacts]
    cmd += ["--out", str(folder), "--clients", str(clients), "--per-round", str(args.per_round)]
    cmd += ["--rounds", str(args.rounds), "--local-steps", str(args.local_steps), "--engine", engine]
    cmd += ["--link", "100mbit:2ms", "--public-n", "64", "--eval-limit", "32", "--final-eval-limit", "32"]
    cmd += ["--eval-every", str(args.rounds), "--no-progress"]
    cmd += ["--model", model] if model else []
    cmd += ["--workers", str(args.workers)] if args.workers else []
    with open(folder.with_suffix(".log"), "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"simulate ({engine}, N={clients}) failed; see {folder.with_suffix('.log')}")
    return measure(read_lines(folder / "metrics.jsonl"), args.local_steps)


def measure(lines: list[dict], local_steps: int) -> dict:
    """An arm's figures from its metrics lines (module docstring)."""
    rounds = [m for m in lines if m.get("kind") == "round"]
    timed = rounds[1:] or rounds
    steps = sum(m["devices_done"] * local_steps for m in timed)
    seconds = sum(m["round_s"] for m in timed)
    peaks = {"device_worker": max(m["device_peak_rss_mb"] or 0.0 for m in rounds)}
    for kind in PEAKS[1:]:
        peaks[kind] = max(m["host_peak_rss_mb"][kind] or 0.0 for m in rounds)
    return {
        "rounds": len(rounds),
        "device_steps_per_s": steps / seconds if seconds else None,
        "round_s": [m["round_s"] for m in rounds],
        "stragglers": sum(len(m["stragglers"]) for m in rounds),
        "peak_rss_mb": peaks,
    }


def compare(arms: dict[str, dict[int, dict]]) -> dict:
    """Ratios: peaks at the largest N over the smallest, per engine; Ray's throughput over the process pool's."""
    out: dict = {"peak_ratio_largest_vs_smallest_n": {}, "ray_vs_process_throughput": {}}
    for engine, by_n in arms.items():
        small, large = by_n[min(by_n)], by_n[max(by_n)]
        out["peak_ratio_largest_vs_smallest_n"][engine] = {
            k: large["peak_rss_mb"][k] / small["peak_rss_mb"][k] for k in PEAKS if small["peak_rss_mb"][k]
        }
    if "ray" in arms and "process" in arms:
        for n in arms["process"]:
            a, b = arms["ray"].get(n), arms["process"][n]
            if a and a["device_steps_per_s"] and b["device_steps_per_s"]:
                out["ray_vs_process_throughput"][n] = a["device_steps_per_s"] / b["device_steps_per_s"]
    return out


def run(args: argparse.Namespace) -> int:
    if args.rounds < 2:
        raise ValueError("--rounds must be at least 2 (round 0 is not timed)")
    if any(n < args.per_round for n in args.clients):
        raise ValueError(f"every --clients must be at least --per-round ({args.per_round})")
    with tempfile.TemporaryDirectory(prefix="cooperllm-bench-sim-") as tmpdir:
        root = Path(args.out) if args.out else Path(tmpdir)
        root.mkdir(parents=True, exist_ok=True)
        model, artifacts = (args.model, args.artifacts) if args.artifacts else _tiny(Path(tmpdir))
        arms: dict[str, dict[int, dict]] = {e: {} for e in args.engines}
        plan = [(n, e) for n in args.clients for e in args.engines]  # engines alternate at each N: drift favours none
        for n, engine in tqdm(plan, desc="bench simulation", unit="arm"):
            folder = root / f"{engine}-n{n}"
            if folder.exists():
                raise FileExistsError(f"{folder} exists: the bench runs fresh simulations; use another --out")
            arms[engine][n] = _arm(args, model, artifacts, n, engine, folder)
        result = {"per_round": args.per_round, "rounds": args.rounds, "arms": arms, **compare(arms)}
        if args.out:
            (root / "results.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    print(f"K = {args.per_round} devices per round, {args.rounds} rounds, {args.local_steps} local steps")
    print(f"{'engine':>8} {'N':>6} {'device-steps/s':>15} " + " ".join(f"{k + ' MB':>17}" for k in PEAKS))
    for engine, by_n in arms.items():
        for n, a in sorted(by_n.items()):
            peaks = " ".join(f"{a['peak_rss_mb'][k]:>17.1f}" for k in PEAKS)
            print(f"{engine:>8} {n:>6} {a['device_steps_per_s']:>15.2f} {peaks}")
    for engine, ratios in result["peak_ratio_largest_vs_smallest_n"].items():
        said = ", ".join(f"{k} {v:.3f}" for k, v in ratios.items())
        print(f"peak RSS, N={max(args.clients)} / N={min(args.clients)} ({engine}): {said}")
    for n, ratio in result["ray_vs_process_throughput"].items():
        print(f"device-steps/s, ray / process at N={n}: {ratio:.3f}")
    return 0
