"""``cooperllm admin``: an operator's calls to a running cloud — issue enrolment tokens, revoke a device.

The admin token comes from ``COOPERLLM_ADMIN_TOKEN`` (the variable ``cooperllm serve`` reads), never from a flag, so it
stays out of shell history and process listings.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TypeVar

import httpx

from cooperllm.api_client import ApiError, CooperClient


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "admin",
        help="operator calls to a running cloud: issue enrolment tokens, revoke devices",
        description="Calls the cloud's admin endpoints with the admin token from COOPERLLM_ADMIN_TOKEN.",
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the cloud (default http://127.0.0.1:8000)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    token = verbs.add_parser("token", help="issue an enrolment token (printed once; the cloud keeps only its hash)")
    token.add_argument("--uses", type=int, default=1, help="devices the token may enrol (default 1)")
    token.add_argument("--label", default="device", help="what the token is for (default 'device')")
    token.set_defaults(func=issue_token)
    revoke = verbs.add_parser("revoke", help="revoke a device: its next request is refused")
    revoke.add_argument("device_id", type=int, help="the device id /v1/enroll returned")
    revoke.set_defaults(func=revoke_device)


def _client(args: argparse.Namespace) -> CooperClient:
    token = os.environ.get("COOPERLLM_ADMIN_TOKEN")
    if not token:
        raise ValueError("set COOPERLLM_ADMIN_TOKEN to the cloud's admin token")
    return CooperClient(args.url, token)


T = TypeVar("T")


def _call(args: argparse.Namespace, call: Callable[[CooperClient], T]) -> T:
    """One admin call; a refusal or an unreachable cloud becomes a one-line error (exit 2), not a traceback."""
    try:
        with _client(args) as client:
            return call(client)
    except ApiError as exc:
        raise ValueError(f"the cloud refused: {exc}") from exc
    except httpx.HTTPError as exc:
        raise ValueError(f"cannot reach the cloud at {args.url}: {exc}") from exc


def issue_token(args: argparse.Namespace) -> int:
    print(_call(args, lambda c: c.issue_enrolment_token(args.uses, args.label)).token)
    return 0


def revoke_device(args: argparse.Namespace) -> int:
    _call(args, lambda c: c.revoke_device(args.device_id))
    print(f"device {args.device_id} revoked")
    return 0
