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


def _config(tiny_artifacts, tiny_model_dir, attack: str) -> SimConfig:
    return SimConfig(
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


@pytest.mark.parametrize("attack", ["scalar", "flood"])
def test_an_attacking_device_is_bounded_and_replay_stays_exact(attack, tmp_path, tiny_artifacts, tiny_model_dir):
    cfg = _config(tiny_artifacts, tiny_model_dir, attack)
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


def test_the_absent_arm_closes_every_round_on_the_other_devices_alone(tmp_path, tiny_artifacts, tiny_model_dir):
    """``--attack absent``, the reference arm of the robustness study: device 0 is drawn but sends nothing, and each
    round closes on the other two devices' reports, the same ones (seeds, scalars) as in the attacked arms."""
    simulate(_config(tiny_artifacts, tiny_model_dir, "absent"), tmp_path / "absent", progress=False)
    simulate(_config(tiny_artifacts, tiny_model_dir, "scalar"), tmp_path / "scalar", progress=False)

    def honest(run):
        with sqlite3.connect(tmp_path / run / "cloud" / "cooperllm.db") as db:
            return db.execute(
                "SELECT round, device_id, seed, block, step, scalar FROM reports WHERE ABS(scalar) < ? "
                "ORDER BY 1, 2, 3, 4, 5",
                (SCALAR,),
            ).fetchall()

    absent, attacked = honest("absent"), honest("scalar")
    assert len(absent) == 2 * 2 * 4 and len({dev for _, dev, *_ in absent}) == 2  # rounds × devices × quota
    # round 0 starts from the same θ₀: the same honest measurements, only device 0's part differs between the arms
    # (afterwards θ may differ: the attacker's 1e6 raises its groups' median, so the robust bound leaves out other
    # honest reports than without it)
    assert [r for r in absent if r[0] == 0] == [r for r in attacked if r[0] == 0]
    with pytest.raises(ValueError, match="device 0 in every round"):
        SimConfig(artifacts=str(tiny_artifacts), clients=4, per_round=3, attack="absent").check()
