"""``cooperllm bench perturb``: speed of the portable perturbation generator on SmolLM2's θ size."""

from __future__ import annotations

import argparse
import time

import numpy as np

from cooperllm.perturb import Direction, direction, rademacher

SMOLLM2_THETA = 460_800


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "perturb",
        help="time the portable perturbation generator",
        description="Time Rademacher generation (and a guided perturbation) for N entries, median of repeats; "
        "compared with numpy's own Generator as the baseline measured in the same run.",
    )
    p.add_argument("--n", type=int, default=SMOLLM2_THETA, help=f"entries per draw (default {SMOLLM2_THETA})")
    p.add_argument("--repeats", type=int, default=50, help="timed draws (default 50)")
    p.add_argument("--m", type=int, default=4, help="guidance subspace size for the guided draw (default 4)")
    p.set_defaults(func=run)


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def run(args: argparse.Namespace) -> int:

    n, m = args.n, args.m
    basis = np.linalg.qr(np.random.default_rng(0).standard_normal((n, m)))[0].astype(np.float32)
    rng = np.random.default_rng(0)
    rows = [
        (
            "numpy Generator.integers ±1 (baseline)",
            _median_ms(lambda: rng.integers(0, 2, n, dtype=np.int8), args.repeats),
        ),
        ("portable rademacher (int8)", _median_ms(lambda: rademacher(123, 7, n), args.repeats)),
        ("Rademacher direction (float32)", _median_ms(lambda: direction(123, 7, n, Direction.ISO), args.repeats)),
        (
            f"subspace direction, m={m}",
            _median_ms(lambda: direction(123, 7, n, Direction.SUBSPACE, basis), args.repeats),
        ),
        (
            f"complement direction, m={m}",
            _median_ms(lambda: direction(123, 7, n, Direction.COMPLEMENT, basis), args.repeats),
        ),
    ]
    base = rows[0][1]
    print(f"entries per draw: {n:,}   (median of {args.repeats})")
    print(f"{'generator':<42} {'ms':>8} {'vs baseline':>12}")
    for name, ms in rows:
        print(f"{name:<42} {ms:>8.3f} {ms / base:>11.2f}x")
    return 0
