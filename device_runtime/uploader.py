"""Asynchronous uploader: drains the durable outbox to the cloud so the compute loop never waits on the network.

Batches go out as DTC report frames (``POST /rounds/{r}/reports/frame``, float64 scalars: the server replays exactly
what the device measured) under the batch's idempotency key, retried with exponential backoff and jitter on network
errors, 429 and 5xx (:class:`device_runtime.transfer.Transfers`). The answer settles the batch in the outbox:
acknowledged (also when the server had it already: ``replay``), dropped (409, the round closed first: the staleness
rule) or rejected (any other refusal; the error is kept and raised to the client, it will not get better by retrying).
The same code runs in a background thread (``start``) or inline (``drain``, the sequential baseline). In the
background a report waits up to ``linger_s`` for others to share its request (fewer requests, fewer bytes, fewer
fsyncs while compute runs) unless the client ``urge``s: at the end of a round, when its last reports decide when
the round can close.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cooperllm.api_client import ApiError
from cooperllm.protocol import ERRORS, reports_from
from device_runtime.outbox import Batch, Outbox
from device_runtime.transfer import Backoff, Transfers

log = logging.getLogger(__name__)

DEFAULT_BATCH = 256
DEFAULT_LINGER_S = 1.0


class UploaderStopped(Exception):
    """The uploader was asked to stop while waiting to retry."""


class Uploader:
    def __init__(
        self,
        outbox: Outbox,
        api,
        device_id: Callable[[], int],
        backoff: Backoff | None = None,
        batch_size: int = DEFAULT_BATCH,
        linger_s: float = DEFAULT_LINGER_S,
    ):
        self.outbox = outbox
        self.api = api
        self.device_id = device_id  # read when a batch is formed: the device may enrol after the uploader exists
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.transfers = Transfers(backoff, sleep=self._sleep)
        self.error: BaseException | None = None
        self.batches = 0
        self.acked = 0
        self.dropped = 0
        self.duplicates = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._urgent = threading.Event()
        self._settled = threading.Condition()
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> Uploader:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="uploader", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._urgent.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def notify(self) -> None:
        """New rows in the outbox."""
        self._wake.set()

    def urge(self) -> None:
        """Send everything pending now, without lingering (until the outbox is empty again)."""
        self._urgent.set()
        self._wake.set()

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise UploaderStopped

    def _linger(self) -> None:
        """Let a young report wait (up to ``linger_s`` from when it was computed) for others to join its batch."""
        age = self.outbox.oldest_pending_age()
        if age is not None and age < self.linger_s:
            self._urgent.wait(self.linger_s - age)  # urge() or stop() end it early

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before looking: a notify() from here on wakes the wait below
            urgent = self._urgent.is_set()
            self._urgent.clear()  # consumed; an urge() from here on counts for the next pass
            try:
                if not urgent:
                    self._linger()
                    if self._stop.is_set():
                        return
                sent = self.send_one()
            except UploaderStopped:
                return
            except BaseException as exc:  # kept for the client to raise; the rows stay in the outbox
                log.error("uploader stopped: %s", exc)
                with self._settled:
                    self.error = exc
                    self._settled.notify_all()
                return
            if sent and urgent:
                self._urgent.set()  # keep draining without lingering until the outbox is empty
            elif not sent:
                self._wake.wait()

    # --- the work -------------------------------------------------------------------------------------------------
    def send_one(self) -> bool:
        """Send the oldest unacknowledged batch and settle it; False when the outbox has nothing pending."""
        batch = self.outbox.next_batch(self.device_id(), self.batch_size)
        if batch is None:
            return False
        self._send(batch)
        with self._settled:
            self._settled.notify_all()
        return True

    def _send(self, batch: Batch) -> None:

        try:
            ack = self.transfers.call(
                f"upload r{batch.round}",
                self.api.upload_report_frame,
                batch.round,
                reports_from(batch.reports),
                batch.key,
                scalar_bits=64,
            )
        except ApiError as exc:
            if exc.status_code == 409 and str(exc.detail) == ERRORS["round_closed"]:
                log.warning(
                    "round %d closed before %d reports arrived: dropped by the staleness rule",
                    batch.round,
                    len(batch.reports),
                )
                self.outbox.settle(batch.key, "dropped", str(exc.detail))
                self.dropped += len(batch.reports)
                return
            self.outbox.settle(batch.key, "rejected", str(exc))
            raise
        self.outbox.settle(batch.key, "acked")
        self.batches += 1
        self.acked += len(batch.reports)
        self.duplicates += ack.duplicates
        log.debug(
            "round %d: batch %s acknowledged (%d new, %d duplicates, replay %s)",
            batch.round,
            batch.key,
            ack.accepted,
            ack.duplicates,
            ack.replay,
        )

    def drain(self) -> None:
        """Inline: send until the outbox is empty (errors raise here)."""
        while self.send_one():
            pass

    def flush(self, round_: int | None = None, timeout: float | None = None) -> None:
        """Block until every report (of ``round_``, or all) is settled; raises the uploader's error if it died."""
        if self._thread is None:
            self.drain()
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        self.urge()
        with self._settled:
            while True:
                if self.error is not None:
                    raise self.error
                if self.outbox.pending(round_) == 0:
                    return
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"outbox not drained after {timeout} s")
                self._settled.wait(timeout=0.5)

    @property
    def retries(self) -> int:
        return self.transfers.retries
