"""``cooperllm simulate``: a federated run on this machine with the real cloud and N real device clients."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

from cooperllm.config_fields import add_config_options, option_names
from cooperllm_app.simulation.config import SimConfig
from cooperllm_app.simulation.launcher import SimulationError
from cooperllm_app.simulation.metrics import fmt_bytes
from cooperllm_app.simulation.runner import ADAPTER_FILE, simulate


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate",
        help="federated simulation: the real cloud service and N device clients, per-round metrics (resumable)",
        description="Start the cloud service (uvicorn on 127.0.0.1, SQLite in RUN_DIR) and N simulated devices, "
        "each on its own shard of the training data, running the real device client over an emulated link. Per "
        "round, K devices (seeded draw) run one round; the global θ is then scored on the test file, and one JSON "
        "line goes to RUN_DIR/metrics.jsonl (test accuracy and loss, bytes up/down per device, wall-clock, device "
        "peak RSS, λ, guidance bits). Run it again with the same RUN_DIR to continue a killed run.",
    )
    add_simulation_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the per-round lines stay)")
    p.set_defaults(func=run)


def add_simulation_options(p: argparse.ArgumentParser) -> None:
    """Every SimConfig field as an option: types, bounds, defaults and help come from SimConfig (and RunConfig)."""

    add_config_options(p, SimConfig, ["artifacts"])
    p.add_argument("--out", required=True, help="run folder: config, cloud database, device states, metrics")
    add_config_options(p, SimConfig, [name for name in option_names(SimConfig) if name != "artifacts"])


def config_from_args(args: argparse.Namespace, command: str):
    """The SimConfig the options ask for: the parser's dests are SimConfig's field names, values already parsed."""

    return SimConfig(**{name: getattr(args, name) for name in option_names(SimConfig)}, command=command)


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the cloud and the workers are stopped, not just orphaned."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def run(args: argparse.Namespace) -> int:

    stop_on_sigterm()
    cfg = config_from_args(args, "")
    try:
        result = simulate(cfg, args.out, progress=not args.no_progress)
    except SimulationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    last = result.rounds[-1] if result.rounds else None
    base = result.baseline
    if base and last and last.get("accuracy") is not None:
        print(
            f"accuracy {base['accuracy'] * 100:.2f} % -> {last['accuracy'] * 100:.2f} % after {len(result.rounds)} "
            f"rounds ({last['wall_s']:.0f} s of rounds); {fmt_bytes(last['cum_bytes'])} over the links in all"
        )
    print(f"metrics: {result.run_dir}/metrics.jsonl")
    adapter = Path(result.run_dir) / ADAPTER_FILE
    if adapter.is_file():
        print(f"adapter: {adapter} (the final θ); classify with it:")
        artifacts, adapter_arg = shlex.quote(cfg.artifacts), shlex.quote(str(adapter))
        print(f'  cooperllm predict --artifacts {artifacts} --adapter {adapter_arg} "a text"')
    return 0
