"""The durable outbox and its uploader: idempotent rows, stable batches, and every answer of the cloud settled."""

from __future__ import annotations

import httpx
import pytest
from live_cloud import ADMIN, ENROL, start_server

from cooperllm.api_client import ApiError, CooperClient
from cooperllm.protocol import RunConfig
from cooperllm.zgr import Report
from device_runtime.outbox import Outbox
from device_runtime.transfer import Backoff
from device_runtime.uploader import Uploader


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, tiny_model_dir, toy_tsv):
    server = start_server(tmp_path_factory.mktemp("outbox-cloud"), tiny_model_dir, toy_tsv, public_n=8)
    yield server
    server.stop()


def test_rows_are_idempotent_and_batches_stable(tmp_path):
    box = Outbox(tmp_path)
    first = box.add(7, 1, 0, Report(100, 0, 0, 0.25, 8))
    again = box.add(7, 1, 0, Report(100, 0, 0, 0.75, 8))  # the same step recomputed after a crash
    assert again == first and again.scalar == 0.25  # the stored report wins
    box.add(7, 1, 0, Report(101, 1, 0, -1.5, 8))
    box.add(7, 1, 1, Report(200, 0, 0, 2.0, 8))  # the next round: a batch of its own
    batch = box.next_batch(7, limit=10)
    assert batch.round == 0 and [r.seed for r in batch.reports] == [100, 101]
    assert box.next_batch(7, limit=10) == batch  # unacknowledged: the same key and body again
    instance = box.instance
    box.close()
    box = Outbox(tmp_path)  # a restarted app resends what it had keyed, as it was
    assert box.instance == instance and box.next_batch(7, limit=10) == batch
    box.settle(batch.key, "acked")
    nxt = box.next_batch(7, limit=10)
    assert nxt.round == 1 and nxt.key != batch.key
    box.settle(nxt.key, "dropped", "late")
    assert box.next_batch(7, limit=10) is None and box.counts() == {"acked": 2, "dropped": 1}
    with pytest.raises(ValueError):
        box.settle(nxt.key, "lost")


class _LoseFirstAnswer:
    """The real client; the first upload reaches the server but its answer is lost on the way back."""

    def __init__(self, api: CooperClient):
        self.api = api
        self.lost = 0

    def __getattr__(self, name):
        return getattr(self.api, name)

    def upload_report_frame(self, *args, **kwargs):
        ack = self.api.upload_report_frame(*args, **kwargs)
        if not self.lost:
            self.lost += 1
            raise httpx.ReadError("answer lost")
        return ack


def test_uploader_settles_acks_replays_late_and_refused_batches(cloud, tmp_path):
    with CooperClient(cloud.url, ADMIN) as admin:
        admin.create_run(RunConfig(strategy="zo", rounds=2, quorum=1, local_steps=2, blocks=[-1], deadline_s=60))
    with CooperClient(cloud.url) as api:
        enrolled = api.enroll(ENROL, "uploader")
        info = api.current_round()
        box = Outbox(tmp_path)
        for step in range(2):
            box.add(enrolled.device_id, info.run_id, 0, Report(info.seed_lo + step, -1, step, 0.5 + step, 8))
        flaky = _LoseFirstAnswer(api)
        up = Uploader(box, flaky, lambda: enrolled.device_id, Backoff(initial_s=0.01, max_s=0.02))
        up.drain()
        assert flaky.lost == 1 and up.retries == 1  # resent under the same key ...
        assert box.counts() == {"acked": 2} and up.acked == 2
        with CooperClient(cloud.url, ADMIN) as admin:
            assert admin.metrics().reports_total == 2  # ... and counted once
        # round 0 closed (the device completed it): a report for it now is late
        box.add(enrolled.device_id, info.run_id, 0, Report(info.seed_lo + 5, -1, 1, 1.0, 8))
        up.drain()
        assert box.counts() == {"acked": 2, "dropped": 1} and up.dropped == 1
        # a report the cloud refuses (seed outside the device's range): settled as rejected and raised
        nxt = api.current_round()
        assert nxt.round == 1
        box.add(enrolled.device_id, nxt.run_id, 1, Report(nxt.seed_hi, -1, 0, 1.0, 8))
        with pytest.raises(ApiError) as exc:
            up.drain()
        assert exc.value.status_code == 422 and box.counts()["rejected"] == 1
        assert box.next_batch(enrolled.device_id, 10) is None  # never retried
