"""A malicious device for the robustness study (docs/SECURITY.md §3; ``cooperllm simulate --attack``).

It enrols like any device and is sent to rounds like any device, but measures nothing and runs no model: each round it
uploads crafted reports. ``scalar``: a complete round of reports whose every scalar is ``SCALAR`` (1e6, the largest
magnitude the cloud accepts by default, ``RunConfig.max_abs_scalar``). ``flood``: ``FLOOD`` × its quota of reports
with honest-looking N(0, 1) scalars and fresh seeds, in batches, counting what the cloud refuses. ``absent``: the
reference arm without the attacker — device 0 enrols and is drawn like the others, but sends nothing, and the cloud's
quorum is K − 1 (``SimConfig.run_config``), so each round closes on the other devices' reports alone: the same
devices, seeds and batches as an attacked arm, with device 0's influence removed instead of defended against. Its token
lives in its state folder, so a resumed simulation does not enrol it again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from cooperllm.api_client import ApiError
from cooperllm.protocol import MAX_BATCH_REPORTS, ReportIn

log = logging.getLogger(__name__)

ATTACKS = ("none", "scalar", "flood", "absent")
ATTACKER = 0  # the device that attacks (it takes part in every round when K = N)
SCALAR = 1e6
FLOOD = 100
STATE_FILE = "attacker.json"


def run_attack(
    api,
    transfers,
    *,
    mode: str,
    round_: int,
    state_dir: Path,
    enrol_key: str,
    name: str,
    seed: int,
    enrolment: dict | None = None,
) -> dict:
    """One round of the attacker: enrol once, then upload the crafted reports. Returns the worker's round result."""
    state_file = state_dir / STATE_FILE
    st = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if not st.get("token"):  # issued ahead in device order (the simulation's runner), else enrolled here
        out = enrolment or transfers.call("enrol", api.enroll, enrol_key, name).model_dump()
        st = {"token": out["token"], "device_id": int(out["device_id"])}
    api.token = st["token"]
    if st.get("round", -1) >= round_:
        return {"skipped": True, "reports": 0}
    info = transfers.call("current round", api.current_round)
    if info.round != round_ or info.status != "open":
        raise RuntimeError(f"{name} was sent to round {round_}, the cloud is at {info.round} ({info.status})")
    if mode == "absent":
        _done(state_dir, st, round_)
        return {"skipped": False, "reports": 0, "refused": 0, "attack": mode}
    rng = np.random.default_rng([seed, round_])
    d = len(info.directions)
    per_round = info.local_steps * len(info.blocks) * d
    n = per_round * (FLOOD if mode == "flood" else 1)
    reports = [
        ReportIn(
            seed=info.seed_lo + i,
            block=info.blocks[(i // d) % len(info.blocks)],
            step=(i // (d * len(info.blocks))) % info.local_steps * d + i % d,
            scalar=SCALAR if mode == "scalar" else float(rng.normal()),
            n_examples=info.batch_size,
        )
        for i in range(n)
    ]
    accepted = refused = 0
    size = min(per_round, MAX_BATCH_REPORTS)  # quota-sized batches: the first fits, as a flooder would make sure
    for start in range(0, n, size):
        batch = reports[start : start + size]
        try:
            ack = transfers.call(f"upload r{round_}", api.upload_reports, round_, batch, f"atk-r{round_}-{start}")
            accepted += ack.accepted
        except ApiError as exc:
            if exc.status_code != 409:
                raise
            refused += len(batch)
    _done(state_dir, st, round_)
    log.info("%s (%s attack) round %d: %d reports counted, %d refused", name, mode, round_, accepted, refused)
    return {"skipped": False, "reports": accepted, "refused": refused, "attack": mode}


def _done(state_dir: Path, st: dict, round_: int) -> None:
    """Record the round as done (with the token), so a resumed simulation neither enrols nor uploads again."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_FILE).write_text(json.dumps({**st, "round": round_}))
