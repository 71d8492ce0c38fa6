"""Guidance on the device: a content-addressed store of decoded bases and a fetcher that runs ahead of compute.

The store keys every basis by the sha256 of the frame it was decoded from (the cloud advertises that hash with each
block), keeps it in memory and as the frame file under ``<state>/guidance/``: a block whose version did not change
since the device's copy (docs/DTC.md, send only what changed) is never downloaded again, and the copy the device
perturbs with is bit for bit the one the server replays with (decoding is deterministic).

The fetcher is the download half of the SPC: ``request`` queues a round's frames in the order compute needs them and
a background thread downloads them (retry with backoff and jitter) while earlier blocks are being computed; ``get``
waits only when compute has caught up with the download. ``prefetch(r+1)`` then polls the cloud for the next round's
guidance list (the rectifier publishes it while round r still runs) and downloads the new versions during round r.
With ``background=False`` the same calls download synchronously: the sequential baseline.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from cooperllm.api_client import ApiError
from cooperllm.frames import FrameError, decode_tensor_frame
from cooperllm.layout import ParamLayout
from device_runtime.transfer import Backoff, Transfers

log = logging.getLogger(__name__)

GUIDANCE_DIR = "guidance"
POLL_FIRST_S = 0.2
POLL_MAX_S = 2.0
MAX_RANK = 64  # RunConfig.guidance_rank's bound


class GuidanceError(ValueError):
    """A guidance frame that cannot be used (bad sha256, malformed, wrong shape) or that the cloud refused."""


class FetcherStopped(Exception):
    """The fetcher was stopped while waiting to retry."""


@dataclass(frozen=True)
class Want:
    round: int
    block: int
    sha256: str


def decode_guidance(frame: bytes, want: Want, layout: ParamLayout) -> np.ndarray:
    """The decoded basis V_b, after checking the frame against its advertised sha256 and the layout."""
    if hashlib.sha256(frame).hexdigest() != want.sha256:
        raise GuidanceError(f"guidance frame for round {want.round} block {want.block} fails its sha256")
    if not 0 <= want.block < len(layout.blocks):
        raise GuidanceError(f"guidance names block {want.block}; the layout has {len(layout.blocks)}")
    try:
        basis = decode_tensor_frame(frame, max_elements=layout.blocks[want.block].size * MAX_RANK)
    except FrameError as exc:
        raise GuidanceError(f"guidance frame for block {want.block}: {exc}") from exc
    if basis.ndim != 2 or basis.shape[0] != layout.blocks[want.block].size:
        raise GuidanceError(
            f"guidance for block {want.block} has shape {basis.shape}, not ({layout.blocks[want.block].size}, m)"
        )
    return np.ascontiguousarray(basis, dtype=np.float32)


class GuidanceStore:
    """Decoded bases by frame sha256: memory, backed by frame files (``folder`` None: memory only)."""

    def __init__(self, folder: str | Path | None, layout: ParamLayout):
        self.folder = None if folder is None else Path(folder)
        self.layout = layout
        self._mem: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def _path(self, sha: str) -> Path:
        return self.folder / f"{sha}.frame"

    def get(self, want: Want) -> np.ndarray | None:
        with self._lock:
            basis = self._mem.get(want.sha256)
        if basis is not None or self.folder is None:
            return basis
        path = self._path(want.sha256)
        if not path.is_file():
            return None
        try:
            basis = decode_guidance(path.read_bytes(), want, self.layout)
        except (OSError, GuidanceError) as exc:  # a damaged copy is downloaded again
            log.warning("stored guidance %s unusable (%s); downloading it again", path.name, exc)
            return None
        with self._lock:
            self._mem[want.sha256] = basis
        return basis

    def put(self, want: Want, frame: bytes, basis: np.ndarray) -> None:
        with self._lock:
            self._mem[want.sha256] = basis
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self._path(want.sha256).with_suffix(".tmp")
            tmp.write_bytes(frame)
            os.replace(tmp, self._path(want.sha256))  # checked against its sha256 when read back

    def forget(self) -> None:
        """Drop the decoded bases from memory (the frame files stay: ``get`` reads them back)."""
        with self._lock:
            self._mem.clear()

    def retain(self, keep: set[str]) -> None:
        """Forget every basis whose sha256 is not in ``keep`` (memory and files)."""
        with self._lock:
            for sha in [s for s in self._mem if s not in keep]:
                del self._mem[sha]
        if self.folder is not None and self.folder.is_dir():
            for path in self.folder.glob("*.frame"):
                if path.stem not in keep:
                    path.unlink(missing_ok=True)


class GuidanceFetcher:
    def __init__(
        self,
        api,
        store: GuidanceStore,
        backoff: Backoff | None = None,
        *,
        background: bool = True,
    ):
        self.api = api
        self.store = store
        self.background = background
        self.transfers = Transfers(backoff, sleep=self._sleep)
        self.downloads = 0  # frames downloaded
        self.waited_s = 0.0  # time compute spent waiting for a frame
        self._futures: dict[str, Future] = {}
        self._queue: deque[Want] = deque()
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._next: int | None = None  # round whose guidance list to poll for
        self._poll_at = 0.0
        self._poll_delay = POLL_FIRST_S
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._loop, name="guidance-fetcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise FetcherStopped

    # --- what compute asks for ------------------------------------------------------------------------------------
    def request(self, round_: int, refs) -> None:
        """Download the frames of ``refs`` (objects with ``block`` and ``sha256``) that the store lacks, in order:
        in the background, or right now without one."""
        wants = [Want(round_, r.block, r.sha256) for r in refs]
        if not self.background:
            for w in wants:
                self.get(w)
            return
        with self._cv:
            for w in wants:
                if w.sha256 in self._futures:
                    continue
                if self.store.get(w) is not None:
                    continue
                self._futures[w.sha256] = Future()
                self._queue.append(w)
            self._cv.notify_all()

    def get(self, want: Want) -> np.ndarray:
        """The decoded basis; waits for a queued download, or downloads now if nobody asked for it yet."""
        basis = self.store.get(want)
        if basis is not None:
            return basis
        with self._cv:
            fut = self._futures.get(want.sha256)
        if fut is None:
            basis = self.store.get(want)  # finished between the two looks
            return basis if basis is not None else self._download(want)
        t0 = time.perf_counter()
        try:
            return fut.result()
        finally:
            self.waited_s += time.perf_counter() - t0

    def prefetch(self, round_: int) -> None:
        """Poll for round ``round_``'s guidance list, then download its new frames (background only)."""
        if not self.background:
            return
        with self._cv:
            self._next = round_
            self._poll_at = time.monotonic()
            self._poll_delay = POLL_FIRST_S
            self._cv.notify_all()

    # --- the worker -----------------------------------------------------------------------------------------------
    def _download(self, want: Want) -> np.ndarray:
        frame, _ = self.transfers.call(
            f"guidance r{want.round} b{want.block}", self.api.guidance_frame, want.round, want.block
        )
        basis = decode_guidance(frame, want, self.store.layout)
        self.store.put(want, frame, basis)
        self.downloads += 1
        return basis

    def _loop(self) -> None:
        while not self._stop.is_set():
            want, poll = None, None
            with self._cv:
                if self._queue:
                    want = self._queue.popleft()
                elif self._next is not None and time.monotonic() >= self._poll_at:
                    poll = self._next
                else:
                    wait = None if self._next is None else max(0.0, self._poll_at - time.monotonic())
                    self._cv.wait(timeout=wait)
                    continue
            if want is not None:
                self._fetch(want)
            else:
                self._poll(poll)

    def _fetch(self, want: Want) -> None:
        with self._cv:
            fut = self._futures[want.sha256]
        try:
            basis = self._download(want)
        except FetcherStopped:
            fut.set_exception(GuidanceError("the guidance fetcher was stopped"))
            return
        except BaseException as exc:
            fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
        else:
            fut.set_result(basis)
        finally:
            with self._cv:
                self._futures.pop(want.sha256, None)

    def _poll(self, round_: int) -> None:

        try:
            refs = self.api.guidance_refs(round_)
        except (ApiError, httpx.TransportError, OSError, ValueError) as exc:  # 404 until the rectifier stored it
            with self._cv:
                if self._next == round_:
                    self._poll_at = time.monotonic() + self._poll_delay
                    self._poll_delay = min(self._poll_delay * 1.5, POLL_MAX_S)
            log.debug("guidance for round %d not published yet (%s)", round_, exc)
            return
        with self._cv:
            if self._next == round_:
                self._next = None
        log.debug("prefetching round %d's guidance (%d blocks)", round_, len(refs))
        self.request(round_, refs)
