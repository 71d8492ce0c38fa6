"""θ of a round on a device: by replay of the round before, else as a delta from a θ the device holds, else in full.

The device client (:mod:`device_runtime.client`) asks :class:`ThetaSync` for θ_r when a round opens and for the final
model when the run ends; this module owns how that θ is had (DESIGN.md §5.6):

1. **replay**: the device held θ at the start of round r − 1 and took part in it: ``GET /sync/{r−1}`` gives the
   round's reports, guidance versions and published update, ``cooperllm.replay.replay_sync`` applies them, and the
   result must equal the published checksum (and the checksum the open round announces);
2. **delta**: the device holds θ of an earlier round of the same run: ``GET /adapter/delta`` gives a lossless delta
   (``cooperllm.theta_delta``), tried once — it is only an optimisation;
3. **download**: the full adapter, with retries, checked against the round's checksum.

SPC: once a round's reports are computed, :meth:`ThetaSync.fetch_ahead` long-polls that round's sync record in the
background, so the next round's replay does not wait for a request made after it opens.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import httpx
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load

from cooperllm import theta_delta
from cooperllm.api_client import ApiError
from cooperllm.layout import ParamLayout, theta_checksum
from cooperllm.protocol import ERRORS
from cooperllm.replay import replay_sync
from device_runtime.errors import ClientError
from device_runtime.state import DeviceState
from device_runtime.transfer import Transfers

log = logging.getLogger(__name__)

LONG_POLL_S = 10.0  # how long the server may hold a "tell me when the next round opens" request

# the bases V_b of a round's guidance references, from the store or downloaded (raises ClientError)
GuidanceGetter = Callable[[int, Sequence], Mapping[int, np.ndarray]]


def _in_background(fn, *args) -> Future:
    """Run ``fn(*args)`` on a daemon thread (never holds up the process's exit); its result as a future."""
    fut: Future = Future()

    def target() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:
            fut.set_exception(exc)

    threading.Thread(target=target, name="sync-ahead", daemon=True).start()
    return fut


@dataclass
class SyncCounts:
    replays: int = 0
    downloads: int = 0  # full adapter downloads
    delta_downloads: int = 0  # adapters rebuilt from a delta against the θ of an earlier round this device held


class ThetaSync:
    """How this device comes by θ_r. It reads ``state`` (the round and θ it holds) and never writes it: the client
    owns the device's state and its saving."""

    def __init__(
        self,
        api,
        layout: ParamLayout,
        state: DeviceState,
        transfers: Transfers,
        guidance: GuidanceGetter,
        delta_downloads: bool = True,
    ):
        self.api = api  # cooperllm.api_client.CooperClient (or anything with its methods)
        self.layout = layout
        self.state = state
        self.transfers = transfers
        self.guidance = guidance
        self.delta_downloads = delta_downloads  # False: θ after missed rounds always in full
        self.counts = SyncCounts()
        # (round, its sync record being long-polled, the event that abandons the poll)
        self._ahead: tuple[int, Future, threading.Event] | None = None

    def theta_for(self, info) -> np.ndarray:
        """θ at the start of the round ``info`` announces (a copy the caller may keep)."""
        st = self.state
        held = st.theta if st.round_base is None else st.round_base
        if theta_checksum(held) == info.theta_checksum:
            return held.copy()
        if st.round_base is not None and st.round_id == info.round - 1:
            theta = self.replay(st.round_id, st.round_base, info.theta_checksum)
            if theta is not None:
                return theta
        return self.download(info.round, info.theta_checksum, info.run_id)

    def download(self, version: int, checksum: str, run_id: int | None = None) -> np.ndarray:
        """θ at the start of round ``version`` of run ``run_id``, checked against ``checksum``: as a delta from the θ
        of an earlier round of that run this device holds when it can, else (or when the delta fails) in full."""
        held = self.held_theta(version, run_id) if self.delta_downloads else None
        if held is not None:
            theta = self._download_delta(*held, version, checksum)
            if theta is not None:
                return theta
        data = self.transfers.call(f"adapter v{version}", self.api.adapter, version)
        try:
            theta = self.layout.flatten(load(data))
        except (SafetensorError, KeyError, ValueError) as exc:
            raise ClientError(f"downloaded adapter v{version} does not match the layout: {exc}") from exc
        if theta_checksum(theta) != checksum:
            raise ClientError(f"downloaded adapter v{version} does not match the round's checksum")
        self.counts.downloads += 1
        return theta

    def held_theta(self, version: int, run_id: int | None) -> tuple[int, np.ndarray] | None:
        """(round, θ at its start) that this device holds of an earlier round of run ``run_id``, or None."""
        st = self.state
        if run_id is None or st.extra.get("run_id") != run_id or not 0 <= st.round_id < version:
            return None
        # round_base: θ at the start of round_id; without it (after the final sync) θ itself is that round's
        return st.round_id, (st.round_base if st.round_base is not None else st.theta)

    def _download_delta(self, base_version: int, base: np.ndarray, version: int, checksum: str) -> np.ndarray | None:
        """θ_version from ``GET /adapter/delta`` and the held θ_base_version; None on any failure (the caller then
        downloads the full adapter, with retries: a delta is only ever an optimisation, so it is tried once)."""
        what = f"adapter delta v{base_version}→v{version}"
        try:
            frame = self.api.adapter_delta(base_version, version)
        except (ApiError, httpx.HTTPError, OSError) as exc:
            log.info("%s unavailable (%s); downloading the full adapter", what, exc)
            return None
        try:
            theta = theta_delta.decode(
                frame, base, from_version=base_version, to_version=version, max_values=self.layout.total
            )
        except theta_delta.ThetaDeltaError as exc:
            log.warning("%s refused: %s; downloading the full adapter", what, exc)
            return None
        if theta_checksum(theta) != checksum:
            log.warning("%s does not give the round's checksum; downloading the full adapter", what)
            return None
        self.counts.delta_downloads += 1
        return theta

    def replay(self, prev_round: int, base: np.ndarray, expected: str | None) -> np.ndarray | None:
        """θ after round ``prev_round`` by replaying it from its start θ; None when it cannot be replayed or the
        result disagrees with the published checksum (the caller then downloads the adapter)."""
        sync = self._take_ahead(prev_round) or self.transfers.call(f"sync r{prev_round}", self.api.sync, prev_round)
        if not sync.replayable or sync.theta_checksum_before != theta_checksum(base):
            return None
        try:
            bases = self.guidance(prev_round, sync.guidance)
        except ClientError as exc:
            log.warning("cannot replay round %d: %s", prev_round, exc)
            return None
        theta = base.copy()
        replay_sync(theta, self.layout, sync, bases)
        after = theta_checksum(theta)
        if after != sync.theta_checksum_after or (expected is not None and after != expected):
            log.warning("replay of round %d disagrees with the published checksum; downloading", prev_round)
            return None
        self.counts.replays += 1
        return theta

    def fetch_ahead(self, round_: int) -> None:
        """Start long-polling round ``round_``'s sync record (SPC: while the round's last uploads are in flight)."""
        self.stop()
        stopping = threading.Event()
        self._ahead = (round_, _in_background(self._long_poll, round_, stopping), stopping)

    def stop(self) -> None:
        """Abandon a sync record being fetched ahead (its thread ends after its current long poll)."""
        if self._ahead is not None:
            self._ahead[2].set()
        self._ahead = None

    def _long_poll(self, round_: int, stopping: threading.Event):
        while not stopping.is_set():
            try:
                return self.api.sync(round_, wait_s=LONG_POLL_S)
            except ApiError as exc:
                if exc.status_code != 409 or exc.detail != ERRORS["round_not_closed"]:
                    raise
        return None

    def _take_ahead(self, round_: int):
        """The sync record fetched ahead for ``round_``, or None (then it is fetched now, with retries)."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[0] != round_:
            if ahead is not None:
                ahead[2].set()
            return None
        try:
            return ahead[1].result(timeout=LONG_POLL_S + 60)
        except Exception as exc:  # fetched again in the foreground, with retries
            log.info("sync of round %d fetched ahead failed (%s); fetching it now", round_, exc)
            return None
