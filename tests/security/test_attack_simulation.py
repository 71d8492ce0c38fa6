"""A malicious device inside a whole simulation (``cooperllm simulate --attack``): the real cloud, real device clients
that replay every round from the published record (a replayed θ that differs from the cloud's checksum stops the
run), and device 0 attacking every round."""

from __future__ import annotations

import json
import sqlite3

import pytest

from cooperllm_app.simulation.attacker import FLOOD, SCALAR
from cooperllm_app.simulation.config import SimConfig
from cooperllm_app.simulation.runner import simulate


def _journal(run_dir):
    return [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("attack", ["scalar", "flood"])
def test_an_attacking_device_is_bounded_and_replay_stays_exact(attack, tmp_path, tiny_artifacts, tiny_model_dir):
    cfg = SimConfig(
        artifacts=str(tiny_artifacts),
        model=str(tiny_model_dir),
        strategy="zo",
        clients=3,
        per_round=3,
        rounds=2,
        local_steps=2,
        eval_limit=16,
        final_eval_limit=16,
        public_n=64,
        link="100mbit:2ms",
        workers=2,
        attack=attack,
        blocks="each",
    )
    simulate(cfg, tmp_path / "run", progress=False)  # completes: every honest device replayed every round exactly
    with sqlite3.connect(tmp_path / "run" / "cloud" / "cooperllm.db") as db:
        counted = db.execute(
            "SELECT round, device_id, COUNT(*), MAX(ABS(scalar)) FROM reports GROUP BY 1, 2"
        ).fetchall()
        statuses = [s for (s,) in db.execute("SELECT status FROM rounds ORDER BY round")]
    assert statuses == ["closed", "closed"]
    quota = 2 * 2  # local steps × blocks (the tiny model has 2), one direction
    assert len(counted) == 2 * 3 and all(n == quota for _, _, n, _ in counted)  # the flooder too: its quota, no more
    largest = {dev: m for _, dev, _, m in counted}
    if attack == "scalar":
        assert max(largest.values()) == SCALAR  # stored as sent; the round left it out (tests/security)
    else:
        refused = [r["refused"] for r in _journal(tmp_path / "run") if r.get("attack") == "flood"]
        assert refused == [(FLOOD - 1) * quota] * 2  # 99 quota-sized batches refused each round
