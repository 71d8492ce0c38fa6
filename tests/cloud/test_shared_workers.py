"""Several workers on one PostgreSQL database (``--shared-database``): uploads spread over the workers are counted
once, one elected leader closes rounds, and killing the leader before, during or after a round's aggregation ends
the run at the same θ checksum as one service on its own, with no report counted twice or lost.

Every worker is a real ``cooperllm serve`` process on the test PostgreSQL server; the leader is killed with SIGKILL.
Two devices upload deterministic reports (fixed seeds per device and round, one fixed seed key), one to each worker.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from live_cloud import ADMIN, ENROL, TEST_SEED_KEY, small_run
from sqlalchemy import create_engine, text

from cloud_api.errors import ServiceError
from cloud_api.round_state import EngineContext, RoundState, ensure_seed_key
from cloud_api.schema import open_database
from cloud_api.uploads import UploadDesk
from cooperllm.api_client import ApiError, CooperClient
from cooperllm.protocol import ReportBatch
from cooperllm_app.serve_process import start_serve, stop_serve

from .helpers import make_reports, wait_round

pytestmark = pytest.mark.integration

ROUNDS = 3
RUN = small_run(rounds=ROUNDS, quorum=2, min_devices=2, deadline_s=120)


class Cluster:
    """Workers of one deployment: the same database, state folder and options; ``start`` adds one."""

    def __init__(self, database_url: str, state_dir: Path, model: Path, public: Path):
        self.database_url = database_url
        self.state_dir = state_dir
        ensure_seed_key(state_dir, TEST_SEED_KEY)
        self.options = [
            *("--model", str(model), "--public-data", str(public), "--public-n", "16", "--seq-len", "24"),
            *("--database-url", database_url, "--state-dir", str(state_dir)),
        ]
        self.procs: list[subprocess.Popen] = []

    def start(self, shared: bool = True, fault: str = "") -> tuple[subprocess.Popen, str]:
        env = dict(
            os.environ,
            COOPERLLM_ADMIN_TOKEN=ADMIN,
            COOPERLLM_ENROLMENT_KEY=ENROL,
            COOPERLLM_TICK_S="0.02",
            COOPERLLM_RATE_LIMIT_PER_S="1000",
            COOPERLLM_RATE_BURST="1000",
            COOPERLLM_FAULT_PAUSE=fault,
        )
        proc, url = start_serve([*self.options, *(["--shared-database"] if shared else [])], env=env)
        self.procs.append(proc)
        return proc, url

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                stop_serve(proc)

    def round_status(self, round_: int) -> str | None:
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return conn.execute(
                    text("SELECT status FROM rounds WHERE run_id = 1 AND round = :r"), {"r": round_}
                ).scalar_one_or_none()
        finally:
            engine.dispose()

    def stored_reports(self) -> list[tuple[int, int]]:
        """(round, device) of every stored report, sorted: what was counted."""
        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT round, device_id FROM reports ORDER BY round, device_id, seed"))
                return [tuple(r) for r in rows]
        finally:
            engine.dispose()


def upload(device: CooperClient, round_: int, index: int) -> int:
    """Device ``index``'s reports for ``round_`` (the same numbers in every run); returns how many were accepted."""
    info = wait_round(device, round_)  # a follower sees a new round at its next look at the store
    assert info.round == round_, (info.round, round_)
    rng = np.random.default_rng(1000 * round_ + index)  # device 1's round 0: default_rng(1)
    ack = device.upload_reports(round_, make_reports(info, rng), f"r{round_}-d{index}")
    return ack.accepted


def move(device: CooperClient, url: str) -> CooperClient:
    """The same device (its token) talking to another worker."""
    return CooperClient(url, device.token)


def wait_until(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def sees_run(device: CooperClient) -> bool:
    """Whether the device's worker has seen the run (a follower looks at the store a few times a second)."""
    try:
        return device.current_round().round == 0
    except ApiError as exc:
        if exc.status_code != 404:
            raise
        return False


def finish(devices: list[CooperClient], from_round: int) -> None:
    for rnd in range(from_round, ROUNDS):
        for i, d in enumerate(devices):
            upload(d, rnd, i)
        wait_round(devices[0], rnd + 1)


@pytest.fixture(scope="module")
def setup(postgres, tiny_model_dir, public_tsv):
    return postgres, tiny_model_dir, public_tsv


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory) -> dict:
    """One service on its own (not shared), uninterrupted: the θ checksum and counts every scenario must reach."""
    postgres, model, public = setup
    cluster = Cluster(postgres.database("reference"), tmp_path_factory.mktemp("reference"), model, public)
    try:
        _, url = cluster.start(shared=False)
        admin = CooperClient(url, ADMIN)
        run = admin.create_run(RUN)
        devices = [CooperClient(url) for _ in range(2)]
        for i, d in enumerate(devices):
            d.enroll(ENROL, f"d{i}")
        finish(devices, 0)
        info = admin.run(run.run_id)
        assert info.status == "finished"
        return {
            "checksum": info.theta_checksum,
            "reports": cluster.stored_reports(),
            "n_reports": [r.n_reports for r in admin.rounds(run.run_id)],
        }
    finally:
        cluster.stop()


@pytest.fixture
def cluster(setup, tmp_path, request):
    postgres, model, public = setup
    c = Cluster(postgres.database(request.node.name[:40].lower().replace("-", "_")), tmp_path, model, public)
    yield c
    c.stop()


def start_pair(cluster: Cluster, fault: str = "") -> tuple[subprocess.Popen, str, str, list[CooperClient]]:
    """The leader (started first, with ``fault``), a follower, a run, and two devices: device 0 on the leader,
    device 1 on the follower."""
    leader, leader_url = cluster.start(fault=fault)
    _, follower_url = cluster.start()
    assert CooperClient(leader_url).health().role == "leader"
    assert CooperClient(follower_url).health().role == "follower"
    CooperClient(leader_url, ADMIN).create_run(RUN)
    devices = [CooperClient(leader_url), CooperClient(follower_url)]
    for i, d in enumerate(devices):
        d.enroll(ENROL, f"d{i}")
    wait_until(lambda: sees_run(devices[1]), "the follower sees the run")
    return leader, leader_url, follower_url, devices


def check_same_as_reference(cluster: Cluster, url: str, reference: dict) -> None:
    admin = CooperClient(url, ADMIN)
    info = admin.run(1)
    assert info.status == "finished"
    assert info.theta_checksum == reference["checksum"]
    assert [r.n_reports for r in admin.rounds(1)] == reference["n_reports"]
    assert cluster.stored_reports() == reference["reports"]  # nothing counted twice, nothing lost


def kill_leader(leader: subprocess.Popen, devices: list[CooperClient], follower_url: str) -> list[CooperClient]:
    """SIGKILL the leader; its device talks to the follower from now on."""
    leader.kill()
    leader.wait(timeout=30)
    return [move(devices[0], follower_url), devices[1]]


def finish_on_the_new_leader(cluster: Cluster, devices: list[CooperClient], url: str, reference: dict) -> None:
    """Round 0 closes on the follower, which has taken over; the run ends there as the reference did."""
    wait_round(devices[0], 1)
    finish(devices, 1)
    assert CooperClient(url).health().role == "leader"
    check_same_as_reference(cluster, url, reference)


def test_uploads_on_every_worker_are_counted_once_and_the_run_matches_one_service(cluster, reference):
    _, leader_url, follower_url, devices = start_pair(cluster)
    info = devices[1].current_round()
    reports = make_reports(info, np.random.default_rng(1))  # device 1's round 0, as upload() makes it
    on_leader = move(devices[1], leader_url)
    assert devices[1].upload_reports(0, reports[:2], "part").accepted == 2
    retry = on_leader.upload_reports(0, reports[:2], "part")  # the same key on another worker: answered, not counted
    assert (retry.replay, retry.accepted) == (True, 0)
    again = on_leader.upload_reports(0, reports[:3], "again")  # two duplicates of the other worker's, one new
    assert (again.accepted, again.duplicates) == (1, 2)
    extra = reports[0].model_copy(update={"seed": info.seed_lo + 999})
    with pytest.raises(ApiError) as quota:  # one past the device's quota, counted across workers: refused whole
        devices[1].upload_reports(0, [*reports[3:], extra], "over")
    assert quota.value.status_code == 409
    assert devices[1].upload_reports(0, reports[3:], "rest").accepted == len(reports) - 3
    upload(devices[0], 0, 0)
    wait_round(devices[1], 1)
    finish(devices, 1)
    check_same_as_reference(cluster, follower_url, reference)


def test_killing_the_leader_before_aggregation_finishes_the_round_on_the_follower(cluster, reference):
    leader, _, follower_url, devices = start_pair(cluster)
    upload(devices[0], 0, 0)  # counted by the leader; the round waits for device 1
    devices = kill_leader(leader, devices, follower_url)
    upload(devices[1], 0, 1)
    finish_on_the_new_leader(cluster, devices, follower_url, reference)


def test_killing_the_leader_during_aggregation_closes_the_round_once(cluster, reference):
    leader, _, follower_url, devices = start_pair(cluster, fault="closing:60")
    upload(devices[0], 0, 0)
    upload(devices[1], 0, 1)
    wait_until(lambda: cluster.round_status(0) == "closing", "the leader marks round 0 closing")
    late = make_reports(devices[1].current_round(), np.random.default_rng(5))
    with pytest.raises(ApiError) as closed:  # nothing counts once the round is marked closing, on any worker
        devices[1].upload_reports(0, late, "late")
    assert closed.value.status_code == 409
    devices = kill_leader(leader, devices, follower_url)
    finish_on_the_new_leader(cluster, devices, follower_url, reference)


def test_killing_the_leader_after_aggregation_keeps_the_theta_it_stored(cluster, reference):
    leader, _, follower_url, devices = start_pair(cluster, fault="saved:60")
    upload(devices[0], 0, 0)
    upload(devices[1], 0, 1)
    adapter = cluster.state_dir / "run1" / "adapters" / "v000001.safetensors"
    wait_until(adapter.is_file, "the leader stores θ_1")
    assert cluster.round_status(0) == "closing"  # θ_1 written, the round not yet recorded
    devices = kill_leader(leader, devices, follower_url)
    finish_on_the_new_leader(cluster, devices, follower_url, reference)


def test_a_worker_behind_the_store_answers_an_upload_for_a_newer_round_with_a_retry(postgres, tmp_path):
    """A device can learn of round r+1 from one worker and upload it to another that has not looked at the store
    since: that worker answers 503 (retry), not 404, when the store has the round — and 404 when nobody has it."""
    engine = open_database(postgres.database("behind"))
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO runs (id, config, status, current_round, created_at) VALUES (1, :cfg, 'running', 2, 0)"
                ),
                {"cfg": RUN.model_dump_json()},
            )
        ctx = EngineContext(None, engine, tmp_path, TEST_SEED_KEY, shared=True)
        now = time.time()
        ctx.state = RoundState(1, 1, RUN, [0, 1], "open", now, now + 60, 0, np.zeros(1, np.float32), "x")
        ctx.run_status = "running"
        report = {"seed": 0, "block": 0, "step": 0, "scalar": 0.5, "n_examples": 4}
        batch = ReportBatch(idempotency_key="k", reports=[report])
        with pytest.raises(ServiceError) as behind:
            UploadDesk(ctx).accept_reports(1, 2, batch)
        assert (behind.value.status, behind.value.key) == (503, "round_not_seen")
        with pytest.raises(ServiceError) as unknown:
            UploadDesk(ctx).accept_reports(1, 3, batch)
        assert (unknown.value.status, unknown.value.key) == (404, "unknown_round")
    finally:
        engine.dispose()
