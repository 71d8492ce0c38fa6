"""The federated device client: enrol, join rounds, fetch guidance, run ZO steps, upload reports, sync by replay.

Round r on a device:
1. θ_r (:mod:`device_runtime.theta_sync`): replay of round r−1 from the θ this device held at its start, checked
   against the published checksum; after a mismatch, a missed round or a non-replayable strategy, a lossless delta
   from the θ of an earlier round of the run (``ClientConfig.delta_downloads``), else the full adapter.
2. guidance V_b for the round's blocks (frame sha256 checked; a version the device already holds is not downloaded
   again), then ``local_steps × len(blocks) × len(directions)`` SPSA reports at θ_r (measurement s of a block
   perturbs along ``directions[s mod D]`` on batch ``s div D``) (local learning rate 0 by default: every report
   measures the round's θ, which is what the server aggregates), seeds taken in order from this device's range.
3. every report is committed to the durable outbox (:mod:`device_runtime.outbox`) *before* upload; the uploader
   sends it under an idempotency key and retries with backoff, so a crash or a dead network never drops or
   double-counts a computed report.

SPC (``ClientConfig.pipeline``, the default): the guidance fetcher downloads block b+1 (and, once published, the next
round's new guidance) while block b is computed, and the uploader drains the outbox in the background, so a round
takes about max(compute, transfer) instead of their sum. ``pipeline=False`` runs the same transfers one after the
other (the baseline of ``cooperllm bench pipeline``).
The artifact hashes the cloud advertises must match this device's files, or the device refuses to train.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cooperllm.manifest import MANIFEST_FILE, sha256_file
from cooperllm.perturb import Direction
from cooperllm.strategies import DeviceWork, get_strategy
from cooperllm.tokenization import TokenizedCorpus
from cooperllm.zgr import ALL_BLOCKS, BlockGuidance
from device_runtime.batches import BatchSchedule
from device_runtime.engine import NonFiniteLossError, ZOConfig, ZOEngine
from device_runtime.errors import ClientError
from device_runtime.outbox import Outbox
from device_runtime.prefetch import GUIDANCE_DIR, GuidanceError, GuidanceFetcher, GuidanceStore, Want
from device_runtime.session import DeviceSession
from device_runtime.state import DeviceState, load_state, save_state
from device_runtime.theta_sync import LONG_POLL_S, ThetaSync
from device_runtime.transfer import Transfers
from device_runtime.uploader import DEFAULT_BATCH, DEFAULT_LINGER_S, Uploader

log = logging.getLogger(__name__)


@dataclass
class ClientConfig:
    enrol_key: str
    device_name: str = "device"
    local_lr: float = 0.0
    data_seed: int = 0
    poll_s: float = 1.0
    max_rounds: int | None = None  # rounds to take part in, then stop (None: until the run finishes)
    progress: bool = True
    pipeline: bool = True  # SPC: prefetch guidance and upload in the background; False: transfers one by one
    upload_batch: int = DEFAULT_BATCH  # reports per upload at most
    upload_linger_s: float = DEFAULT_LINGER_S  # how long a report may wait for others to share its upload (SPC)
    delta_downloads: bool = True  # θ after missed rounds as a delta from the θ held; False: the full adapter
    # {"token", "device_id"} issued ahead of the first round (the simulation enrols its devices in index order, so that
    # their numbers, and the seed ranges keyed by them, do not depend on which process reaches the cloud first);
    # None: enrol with enrol_key
    enrolment: dict | None = None


@dataclass
class ClientStats:
    rounds: list[dict] = field(default_factory=list)  # per round: reports, seconds, wall_s, compute_s, bytes, ...
    replays: int = 0
    downloads: int = 0  # full adapter downloads
    delta_downloads: int = 0  # adapters rebuilt from a delta against the θ of an earlier round this device held
    reports: int = 0  # reports computed
    reports_acked: int = 0  # acknowledged by the cloud (this process)
    reports_dropped: int = 0  # refused as late (the round closed first)
    bytes_up: int = 0  # on the wire, after DTC (bodies and headers)
    bytes_down: int = 0
    guidance_downloads: int = 0  # guidance frames downloaded
    guidance_kept: int = 0  # round blocks whose guidance version the device already held (not re-sent)
    retries: int = 0  # transfer retries (main loop, fetcher, uploader)
    drained_at: float | None = None  # perf_counter() when the run's last report was settled


class DeviceClient:
    def __init__(
        self,
        session: DeviceSession,
        api,
        data: TokenizedCorpus,
        state_dir: str | Path,
        cfg: ClientConfig,
        transfers: Transfers | None = None,
    ):
        self.session = session
        self.layout = session.manifest.layout
        self.api = api  # cooperllm.api_client.CooperClient (or anything with its methods)
        self.data = data
        self.state_dir = Path(state_dir)
        self.cfg = cfg
        self.transfers = transfers or Transfers()
        self.stats = ClientStats()
        backend = session.backend  # a graph with length buckets gets batches of similar lengths
        self.schedule = BatchSchedule(data, backend.batch_size, cfg.data_seed, by_length=len(backend.lengths) > 1)
        self.state = load_state(self.state_dir, self.layout) or DeviceState(
            theta=session.backend.initial_theta(), artifact=session.backend.artifact_id()
        )
        if self.state.artifact != session.backend.artifact_id():
            raise ClientError(f"{self.state_dir}: device state belongs to another artifact; use a new --state folder")
        self.outbox = Outbox(self.state_dir)
        self.store = GuidanceStore(self.state_dir / GUIDANCE_DIR, self.layout)
        self.fetcher: GuidanceFetcher | None = None
        self.uploader = Uploader(
            self.outbox, api, self._device_id, self.transfers.backoff, cfg.upload_batch, cfg.upload_linger_s
        )
        self.sync = ThetaSync(api, self.layout, self.state, self.transfers, self._guidance, cfg.delta_downloads)
        self._round_shas: set[str] = set()  # guidance versions of the last round this device trained
        self._wire_start = self._wire()
        self._downloads_done = 0  # guidance downloads and retries of fetchers already stopped
        self._retries_done = 0
        if self.state.pending:  # a state written before the outbox existed: move its unsent reports over
            for r in self.state.pending:
                self.outbox.add(self._device_id(), int(self.state.extra.get("run_id", 0)), self.state.round_id, r)
            self.state.pending = []
            self._save()

    # --- small helpers ------------------------------------------------------------------------------------------
    def _device_id(self) -> int:
        return int(self.state.extra.get("device_id", 0))

    def _save(self) -> None:
        save_state(self.state_dir, self.state, self.layout)

    def _call(self, what: str, fn, *args, **kwargs):
        return self.transfers.call(what, fn, *args, **kwargs)

    def _check_uploader(self) -> None:
        if self.uploader.error is not None:
            raise self.uploader.error

    def _wire(self) -> tuple[int, int]:
        wire = getattr(self.api, "wire", None)
        return wire.snapshot() if wire is not None else (0, 0)

    def _update_totals(self) -> None:
        up, down = self._wire()
        self.stats.bytes_up, self.stats.bytes_down = up - self._wire_start[0], down - self._wire_start[1]
        self.stats.reports_acked = self.uploader.acked
        self.stats.reports_dropped = self.uploader.dropped
        counts = self.sync.counts
        self.stats.replays, self.stats.downloads, self.stats.delta_downloads = (
            counts.replays,
            counts.downloads,
            counts.delta_downloads,
        )
        fetcher = self.fetcher
        self.stats.guidance_downloads = self._downloads_done + (fetcher.downloads if fetcher is not None else 0)
        fetch_retries = self._retries_done + (fetcher.transfers.retries if fetcher is not None else 0)
        self.stats.retries = self.transfers.retries + self.uploader.retries + fetch_retries

    # --- enrolment and checks -----------------------------------------------------------------------------------
    def enrol(self) -> None:
        token = self.state.extra.get("token")
        if token:
            self.api.token = token
            return
        if self.cfg.enrolment is not None:
            self.api.token = self.cfg.enrolment["token"]
            self.state.extra.update(token=self.cfg.enrolment["token"], device_id=int(self.cfg.enrolment["device_id"]))
            self._save()
            return
        out = self._call("enrol", self.api.enroll, self.cfg.enrol_key, self.cfg.device_name)
        self.state.extra.update(token=out.token, device_id=out.device_id)
        self._save()  # the token is shown once: keep it with the state
        log.info("enrolled as device %d", out.device_id)

    def check_artifacts(self, advertised: dict[str, str]) -> None:
        """Every file the cloud and this device both name must have the same sha256; else refuse to train."""
        folder = self.session.backend.folder
        mine = dict(self.session.manifest.files)
        mine[MANIFEST_FILE] = sha256_file(folder / MANIFEST_FILE)
        common = sorted(set(mine) & set(advertised))
        bad = [n for n in common if mine[n] != advertised[n]]
        if bad:
            raise ClientError(
                f"artifact mismatch with the cloud for {bad}: this device's files differ from the run's; refusing to "
                "train (re-export or download the run's artifacts)"
            )
        if not common:
            log.warning("the cloud advertises no file this device has; cannot check artifact identity")

    # --- model sync ---------------------------------------------------------------------------------------------
    def _guidance(self, round_: int, refs) -> dict[int, np.ndarray]:
        """Bases V_b of a round: from the store when the device holds that version, else downloaded (sha256 checked)."""
        try:
            return {ref.block: self._fetcher().get(Want(round_, ref.block, ref.sha256)) for ref in refs}
        except GuidanceError as exc:
            raise ClientError(str(exc)) from exc

    def _fetcher(self) -> GuidanceFetcher:
        if self.fetcher is None:  # outside run(): synchronous downloads
            self.fetcher = GuidanceFetcher(self.api, self.store, self.transfers.backoff, background=False)
        return self.fetcher

    def sync_to(self, info) -> None:
        """Make θ the round's θ_r (replay when possible, else download), and start the round in the state."""
        st = self.state
        theta = self.sync.theta_for(info)
        st.theta[...] = theta
        st.round_base = theta
        st.round_id = info.round
        st.step = 0
        st.extra["submitted"] = False
        st.extra["run_id"] = info.run_id
        self._save()

    # --- one round ----------------------------------------------------------------------------------------------
    def _ensure_guidance(self, engine: ZOEngine, info, refs: dict, block: int) -> None:
        """Put the bases a step needs into the engine, waiting only for those not downloaded yet."""
        blocks = range(len(self.layout.blocks)) if block == ALL_BLOCKS else (block,)
        for b in blocks:
            if b in refs and b not in engine.guidance:
                basis = self._guidance(info.round, [refs[b]])[b]
                engine.guidance[b] = BlockGuidance(basis, np.zeros(basis.shape[1], np.float32))

    def run_round(self, info, seen_at: float | None = None, wire_seen: tuple[int, int] | None = None) -> dict:
        st = self.state
        seen_at = time.perf_counter() if seen_at is None else seen_at
        wire_seen = self._wire() if wire_seen is None else wire_seen
        try:
            strategy = get_strategy(info.strategy)
        except ValueError as exc:
            raise ClientError(str(exc)) from exc
        if strategy.device_work is DeviceWork.IDLE:
            raise ClientError(f"strategy {info.strategy!r} asks nothing of devices: its rounds are the cloud's alone")
        if strategy.device_work is not DeviceWork.ZO:
            raise ClientError(
                f"strategy {info.strategy!r} needs {strategy.device_work} on the device; "
                "the device runtime runs zeroth-order steps only"
            )
        if self.session.backend.batch_size != info.batch_size:
            log.warning(
                "round batch size %d differs from the graph's fixed %d; using the graph's",
                info.batch_size,
                self.session.backend.batch_size,
            )
        refs = {g.block: g for g in info.guidance}
        shas = {g.sha256 for g in info.guidance}
        self.stats.guidance_kept += len(shas & self._round_shas)
        self._round_shas = shas
        directions = [Direction[d.upper()] for d in info.directions]
        zo = ZOConfig(lr=self.cfg.local_lr, eps=info.epsilon)
        engine = ZOEngine(st.theta, self.layout, self.session.backend.run, zo, {})
        # measurement s = t·D + j of a block perturbs along directions[j] on batch t (its report's step is s)
        plan = [
            (t * len(directions) + j, t, b, kind)
            for t in range(info.local_steps)
            for b in info.blocks
            for j, kind in enumerate(directions)
        ]
        if info.seed_lo + len(plan) > info.seed_hi:
            raise ClientError(f"round needs {len(plan)} seeds, the device's range holds {info.seed_hi - info.seed_lo}")
        waited0 = self._fetcher().waited_s
        t0, cpu0 = time.perf_counter(), time.thread_time()
        losses = []
        batches = int(st.extra.get("batches", 0))

        with tqdm(
            total=len(plan),
            initial=st.step,
            desc=f"round {info.round}",
            unit="report",
            disable=not self.cfg.progress,
            leave=False,
        ) as bar:
            while st.step < len(plan):
                self._check_uploader()
                s, t, block, kind = plan[st.step]
                self._ensure_guidance(engine, info, refs, block)
                try:
                    report = engine.step(
                        self.schedule.batch(batches + t),
                        s,
                        info.round,
                        seed=info.seed_lo + st.step,
                        block=block,
                        kind=kind,
                    )
                except NonFiniteLossError as exc:
                    log.warning("round %d step %d block %d dropped: %s", info.round, t, block, exc)
                else:
                    # durable before any upload; after a crash the stored report wins over a recomputed one
                    report = self.outbox.add(self._device_id(), info.run_id, info.round, report)
                    self.uploader.notify()
                    if self.cfg.local_lr > 0:
                        engine.update(report, kind=kind)
                    losses.append(engine.last_loss)
                st.step += 1
                self._save()
                bar.update(1)
        waited = self._fetcher().waited_s - waited0
        compute_s = time.perf_counter() - t0 - waited  # forward passes, perturbations, durable saves
        compute_cpu_s = time.thread_time() - cpu0  # this thread's CPU time for it (a share below 1: contention)
        if self.cfg.pipeline:  # the reports are durable; the uploader delivers them while the next round starts
            self.uploader.urge()
            self.sync.fetch_ahead(info.round)
        else:
            self.uploader.flush(info.round)  # sequential: upload now and wait for the acknowledgements
        st.extra["batches"] = batches + info.local_steps
        st.extra["submitted"] = True
        self._save()
        self.stats.reports += len(plan)
        done = time.perf_counter()
        up, down = (a - b for a, b in zip(self._wire(), wire_seen, strict=True))
        summary = {
            "round": info.round,
            "reports": len(plan),
            "seconds": round(done - t0, 2),
            "mean_loss": float(np.mean(losses)) if losses else None,
            "wall_s": done - seen_at,  # from seeing the round open to its reports computed (and, sequential, acked)
            "compute_s": compute_s,
            "compute_cpu_s": compute_cpu_s,
            "guidance_wait_s": waited,
            "bytes_up": up,
            "bytes_down": down,
            "started": seen_at,
            "finished": done,
        }
        self.stats.rounds.append(summary)
        self._update_totals()
        return summary

    def sync_final(self) -> None:
        """After the run: θ of the last round this device joined, advanced by that round's update (by replay)."""
        st = self.state
        if st.round_base is None or st.round_id < 0:
            return
        try:
            theta = self.sync.replay(st.round_id, st.round_base, None)
        except Exception as exc:  # the final model is a convenience: never fail the run over it
            log.warning("final sync failed: %s", exc)
            return
        if theta is not None:
            st.theta[...] = theta
            st.round_base = None
            st.round_id += 1
            self._save()

    # --- main loop ----------------------------------------------------------------------------------------------
    def _start(self) -> None:
        self._stop_fetcher()
        pipeline = self.cfg.pipeline
        self.fetcher = GuidanceFetcher(self.api, self.store, self.transfers.backoff, background=pipeline)
        if pipeline:
            self.uploader.start()  # reports computed before a crash go first
        else:
            self.uploader.drain()  # reports computed before a crash go first

    def _stop_fetcher(self) -> None:
        if self.fetcher is not None:
            self._downloads_done += self.fetcher.downloads
            self._retries_done += self.fetcher.transfers.retries
            self.fetcher.stop()
            self.fetcher = None

    def _stop(self) -> None:
        self.sync.stop()
        self.uploader.stop()
        self._stop_fetcher()
        self._update_totals()

    def run(self) -> ClientStats:
        self._wire_start = self._wire()
        self.enrol()
        self._start()
        try:
            self._loop()
            self._drained()
        finally:
            self._stop()
        return self.stats

    def close(self) -> None:
        """Release what the client holds beyond its durable state: threads, the outbox's database connection and the
        decoded guidance in memory. A long-lived process (an app, a simulation worker playing many devices) that
        drops clients without closing them keeps each one's buffers until the cyclic garbage collector runs."""
        self._stop()
        self.outbox.close()
        self.store.forget()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _drained(self) -> None:
        """Wait until every computed report is settled (the end of the device's work in the run)."""
        if self.stats.drained_at is None:
            self.uploader.flush()
            self.stats.drained_at = time.perf_counter()

    def _loop(self) -> None:
        joined = 0
        while True:
            self._check_uploader()
            st = self.state
            waiting = bool(st.extra.get("submitted")) and st.round_id >= 0
            asked = time.perf_counter()
            if waiting:  # long poll: the answer comes when the next round opens (or the run ends)
                info = self._call("current round", self.api.current_round, after=st.round_id, wait_s=LONG_POLL_S)
            else:
                info = self._call("current round", self.api.current_round)
            seen_at, wire_seen = time.perf_counter(), self._wire()
            if info.status == "failed":
                raise ClientError(f"the cloud's run {info.run_id} failed")
            if info.status == "finished":
                log.info("run %d finished", info.run_id)
                self._drained()
                self.sync_final()
                break
            same_round = info.round == st.round_id and info.run_id == st.extra.get("run_id", info.run_id)
            if info.status != "open" or (same_round and st.extra.get("submitted")):
                time.sleep(max(0.0, self.cfg.poll_s - (seen_at - asked)))  # a long poll has waited already
                continue
            self.check_artifacts(info.artifact_hashes)
            if not same_round and self.cfg.max_rounds is not None and joined >= self.cfg.max_rounds:
                break
            if not same_round and self._round_shas:  # keep this round's versions and the last (its replay)
                self.store.retain({g.sha256 for g in info.guidance} | self._round_shas)
            fetcher = self._fetcher()
            fetcher.request(info.round, info.guidance)  # SPC: downloads while the previous round is replayed
            if info.round + 1 < info.rounds_total and info.guidance:
                fetcher.prefetch(info.round + 1)  # the next round's new versions, once the cloud publishes them
            if not same_round:
                self.sync_to(info)
            summary = self.run_round(info, seen_at, wire_seen)
            joined += 1
            log.info("round %d: %d reports in %.1f s", summary["round"], summary["reports"], summary["seconds"])
            if self.cfg.max_rounds is not None and joined >= self.cfg.max_rounds:
                break
