"""``cooperllm device run``: the federated device client on the command line."""

from __future__ import annotations

import argparse
import json

from cooperllm.console import fail
from cooperllm.models import cache_dir
from device_runtime.cli import (
    EXIT_REFUSED,
    EXIT_REJECTED,
    EXIT_UNREACHABLE,
    add_device_options,
    corpus_source,
    open_session_or_report,
)


def register_run(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser(
        "run",
        help="federated device client: enrol, join rounds, run ZO steps, upload reports, sync by replay",
        description="Join the cloud's federated run as one device: per round, sync θ by replay (checksum-verified, "
        "full-adapter fallback), fetch guidance, run local_steps × blocks SPSA reports on the private data, upload "
        "them (committed to a durable outbox first, retried with backoff, idempotent). By default transfers overlap "
        "compute (SPC: guidance for the next block and round is prefetched, uploads drain in the background). "
        "Refuses to train when the artifact hashes differ from the run's.",
    )
    add_device_options(p)
    p.add_argument("--cloud", required=True, help="base URL of the cloud API, e.g. http://127.0.0.1:8000")
    p.add_argument(
        "--enrol-key",
        required=True,
        help="enrolment token from the cloud operator (cooperllm admin token), or a shared key where one is set",
    )
    p.add_argument("--device-name", default="device", help="name shown in the cloud's records")
    p.add_argument("--rounds", type=int, help="take part in at most N rounds (default: until the run finishes)")
    p.add_argument("--local-lr", type=float, default=0.0, help="local learning rate between reports (default 0)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the local batch order")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between polls while waiting for a round")
    p.add_argument(
        "--give-up-after",
        type=float,
        help="stop (state kept) when the cloud stays unreachable this many seconds (default: keep retrying)",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="no pipelining: fetch all guidance, compute, then upload and wait, one after the other (the baseline)",
    )
    p.add_argument(
        "--full-adapter",
        action="store_true",
        help="after missed rounds download the full adapter, not a lossless delta from the θ held (the baseline)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    p.set_defaults(func=run_client)


def run_client(args: argparse.Namespace) -> int:
    # Here, not at the top: the parser registers this command in every device process, and the client's HTTP and
    # wire-schema stack (httpx, pydantic: ~20 MB resident) must not weigh on `device train`, which never uses it.
    from cooperllm.api_client import ApiError, CooperClient
    from device_runtime.client import ClientConfig, ClientError, DeviceClient
    from device_runtime.transfer import Backoff, CloudUnavailableError, Transfers

    session = open_session_or_report(args, {"train": corpus_source(args, args.data)})
    if isinstance(session, int):
        return session
    state_dir = args.state or str(cache_dir() / "devices" / args.device_name)
    cfg = ClientConfig(
        enrol_key=args.enrol_key,
        device_name=args.device_name,
        local_lr=args.local_lr,
        data_seed=args.data_seed,
        poll_s=args.poll,
        max_rounds=args.rounds,
        progress=not args.no_progress,
        pipeline=not args.sequential,
        delta_downloads=not args.full_adapter,
    )
    transfers = Transfers(Backoff(give_up_after_s=args.give_up_after))
    with CooperClient(args.cloud) as api:
        try:
            with DeviceClient(session, api, session.corpora["train"], state_dir, cfg, transfers) as client:
                stats = client.run()
        except ClientError as exc:
            return fail(exc, EXIT_REFUSED)
        except CloudUnavailableError as exc:
            return fail(f"{exc}; the device state (with any unsent reports) is kept in {state_dir}", EXIT_UNREACHABLE)
        except ApiError as exc:
            return fail(f"the cloud refused: {exc}", EXIT_REJECTED)
    summary = {
        "rounds": stats.rounds,
        "replays": stats.replays,
        "downloads": stats.downloads,
        "delta_downloads": stats.delta_downloads,
        "reports": stats.reports,
        "reports_acked": stats.reports_acked,
        "reports_dropped": stats.reports_dropped,
        "bytes_up": stats.bytes_up,
        "bytes_down": stats.bytes_down,
        "guidance_downloads": stats.guidance_downloads,
        "guidance_kept": stats.guidance_kept,
        "retries": stats.retries,
        "state": state_dir,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for r in stats.rounds:
            print(f"round {r['round']:>4}: {r['reports']} reports in {r['seconds']:.1f} s, mean loss {r['mean_loss']}")
        print(
            f"model sync: {stats.replays} by replay, {stats.delta_downloads} by delta, {stats.downloads} by download; "
            f"guidance: {stats.guidance_downloads} frames downloaded, {stats.guidance_kept} kept; "
            f"{stats.bytes_up:,} bytes up, {stats.bytes_down:,} down; {stats.retries} retries"
        )
    return 0
