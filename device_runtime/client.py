"""The federated device client: enrol, join rounds, fetch guidance, run ZO steps, upload reports, sync by replay.

Round r on a device:
1. θ_r: replay round r−1 from the θ this device held at its start (``apply_round`` with the server's reports,
   guidance, λ, η) and check the published checksum; any mismatch, a missed round or a non-replayable strategy
   downloads the full adapter instead (DESIGN.md §5.6).
2. guidance V_b for the round's blocks (frame sha256 checked), then ``local_steps × len(blocks)`` SPSA reports at θ_r
   (local learning rate 0 by default: every report measures the round's θ, which is what the server aggregates),
   seeds taken in order from this device's range [seed_lo, seed_hi).
3. every report is saved in the device state *before* upload; uploads carry an idempotency key and are retried with
   backoff, so a crash or a dead network never drops a computed report.
The artifact hashes the cloud advertises must match this device's files, or the device refuses to train.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cooperllm.layout import theta_checksum
from cooperllm.manifest import MANIFEST_FILE, sha256_file
from cooperllm.protocol import decode_tensor_frame, reports_from, sync_guidance, sync_reports
from cooperllm.tokenization import TokenizedCorpus
from cooperllm.zgr import BlockGuidance, apply_round
from device_runtime.batches import BatchSchedule
from device_runtime.engine import NonFiniteLossError, ZOConfig, ZOEngine
from device_runtime.session import DeviceSession
from device_runtime.state import DeviceState, load_state, save_state
from device_runtime.transfer import Transfers

log = logging.getLogger(__name__)


class ClientError(RuntimeError):
    """A condition the device cannot train under (artifact mismatch, unsupported strategy, failed run)."""


@dataclass
class ClientConfig:
    enrol_key: str
    device_name: str = "device"
    local_lr: float = 0.0
    data_seed: int = 0
    poll_s: float = 1.0
    max_rounds: int | None = None  # rounds to take part in, then stop (None: until the run finishes)
    progress: bool = True


@dataclass
class ClientStats:
    rounds: list[dict] = field(default_factory=list)
    replays: int = 0
    downloads: int = 0
    reports: int = 0


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
        self.schedule = BatchSchedule(data, session.backend.batch_size, cfg.data_seed)
        self._bases: dict[tuple[int, int], np.ndarray] = {}
        self.state = load_state(self.state_dir, self.layout) or DeviceState(
            theta=self._initial_theta(), artifact=self._artifact_id()
        )
        if self.state.artifact != self._artifact_id():
            raise ClientError(f"{self.state_dir}: device state belongs to another artifact; use a new --state folder")

    # --- small helpers ------------------------------------------------------------------------------------------
    def _artifact_id(self) -> str:
        g = self.session.backend.graph
        m = self.session.manifest
        return m.files[g.file] if g is not None else "eager:" + m.files[m.initial_adapter_file]

    def _initial_theta(self) -> np.ndarray:
        from cooperllm.checkpoint import load_theta

        m = self.session.manifest
        return load_theta(self.session.backend.folder / m.initial_adapter_file, self.layout)

    def _save(self) -> None:
        save_state(self.state_dir, self.state, self.layout)

    def _call(self, what: str, fn, *args, **kwargs):
        return self.transfers.call(what, fn, *args, **kwargs)

    # --- enrolment and checks -----------------------------------------------------------------------------------
    def enrol(self) -> None:
        token = self.state.extra.get("token")
        if token:
            self.api.token = token
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
        """Bases V_b of a round (cached), each frame checked against its advertised sha256."""
        out = {}
        for ref in refs:
            key = (round_, ref.block)
            if key not in self._bases:
                frame, _ = self._call(f"guidance r{round_} b{ref.block}", self.api.guidance_frame, round_, ref.block)
                if hashlib.sha256(frame).hexdigest() != ref.sha256:
                    raise ClientError(f"guidance frame for round {round_} block {ref.block} fails its sha256")
                basis = decode_tensor_frame(frame)
                if not 0 <= ref.block < len(self.layout.blocks) or basis.ndim != 2:
                    raise ClientError(f"guidance for block {ref.block} does not fit the layout")
                if basis.shape[0] != self.layout.blocks[ref.block].size:
                    raise ClientError(f"guidance for block {ref.block} has shape {basis.shape}")
                self._bases[key] = basis
            out[ref.block] = self._bases[key]
        return out

    def _download(self, version: int, checksum: str) -> np.ndarray:
        from safetensors import SafetensorError
        from safetensors.numpy import load

        data = self._call(f"adapter v{version}", self.api.adapter, version)
        try:
            theta = self.layout.flatten(load(data))
        except (SafetensorError, KeyError, ValueError) as exc:
            raise ClientError(f"downloaded adapter v{version} does not match the layout: {exc}") from exc
        if theta_checksum(theta) != checksum:
            raise ClientError(f"downloaded adapter v{version} does not match the round's checksum")
        self.stats.downloads += 1
        return theta

    def _replay(self, prev_round: int, base: np.ndarray, expected: str | None) -> np.ndarray | None:
        """θ after round ``prev_round`` by replaying it from its start θ; None when it cannot be replayed or the
        result disagrees with the published checksum (the caller then downloads the adapter)."""
        sync = self._call(f"sync r{prev_round}", self.api.sync, prev_round)
        if not sync.replayable or sync.theta_checksum_before != theta_checksum(base):
            return None
        try:
            bases = self._guidance(prev_round, sync.guidance)
        except ClientError as exc:
            log.warning("cannot replay round %d: %s", prev_round, exc)
            return None
        theta = base.copy()
        apply_round(theta, self.layout, sync_reports(sync), sync_guidance(sync, bases), sync.alpha, sync.lam, sync.eta)
        after = theta_checksum(theta)
        if after != sync.theta_checksum_after or (expected is not None and after != expected):
            log.warning("replay of round %d disagrees with the published checksum; downloading", prev_round)
            return None
        self.stats.replays += 1
        return theta

    def sync_to(self, info) -> None:
        """Make θ the round's θ_r (replay when possible, else download), and start the round in the state."""
        st = self.state
        theta = None
        if theta_checksum(st.theta if st.round_base is None else st.round_base) == info.theta_checksum:
            theta = (st.theta if st.round_base is None else st.round_base).copy()
        elif st.round_base is not None and st.round_id == info.round - 1:
            theta = self._replay(st.round_id, st.round_base, info.theta_checksum)
        if theta is None:
            theta = self._download(info.round, info.theta_checksum)
        st.theta[...] = theta
        st.round_base = theta.copy()
        st.round_id = info.round
        st.step = 0
        st.extra["submitted"] = False
        self._save()

    # --- one round ----------------------------------------------------------------------------------------------
    def _upload_pending(self) -> None:
        from cooperllm.api_client import ApiError

        st = self.state
        if not st.pending:
            return
        wire = reports_from(st.pending)
        digest = hashlib.sha256(json.dumps([r.model_dump() for r in wire], sort_keys=True).encode()).hexdigest()
        key = f"d{st.extra.get('device_id', 0)}-r{st.round_id}-{digest[:24]}"  # same reports, same key: idempotent
        try:
            ack = self._call(
                f"upload r{st.round_id}", self.api.upload_reports, st.round_id, reports_from(st.pending), key
            )
            log.info("round %d: %d reports accepted (%d duplicates)", st.round_id, ack.accepted, ack.duplicates)
        except ApiError as exc:
            if exc.status_code == 409 and "round closed" in str(exc.detail):
                log.warning(
                    "round %d closed before %d reports arrived: dropped by the staleness rule",
                    st.round_id,
                    len(st.pending),
                )
            else:
                raise
        st.pending = []
        self._save()

    def run_round(self, info) -> dict:
        st = self.state
        if info.strategy == "bp":
            raise ClientError("strategy 'bp' needs backpropagation; the device runtime runs zeroth-order steps only")
        if self.session.backend.batch_size != info.batch_size:
            log.warning(
                "round batch size %d differs from the graph's fixed %d; using the graph's",
                info.batch_size,
                self.session.backend.batch_size,
            )
        bases = self._guidance(info.round, info.guidance) if info.guidance else {}
        guidance = {b: BlockGuidance(v, np.zeros(v.shape[1], np.float32)) for b, v in bases.items()}
        alpha = 1.0 if info.strategy == "zo" or not guidance else info.alpha
        zo = ZOConfig(lr=self.cfg.local_lr, eps=info.epsilon, alpha=alpha)
        engine = ZOEngine(st.theta, self.layout, self.session.backend.run, zo, guidance)
        plan = [(t, b) for t in range(info.local_steps) for b in info.blocks]
        if info.seed_lo + len(plan) > info.seed_hi:
            raise ClientError(f"round needs {len(plan)} seeds, the device's range holds {info.seed_hi - info.seed_lo}")
        t0 = time.perf_counter()
        losses = []
        from tqdm import tqdm

        with tqdm(
            total=len(plan),
            initial=st.step,
            desc=f"round {info.round}",
            unit="report",
            disable=not self.cfg.progress,
            leave=False,
        ) as bar:
            while st.step < len(plan):
                t, block = plan[st.step]
                batch_no = int(st.extra.get("batches", 0)) + t
                try:
                    report = engine.step(
                        self.schedule.batch(batch_no), t, info.round, seed=info.seed_lo + st.step, block=block
                    )
                except NonFiniteLossError as exc:
                    log.warning("round %d step %d block %d dropped: %s", info.round, t, block, exc)
                else:
                    if self.cfg.local_lr > 0:
                        engine.update(report)
                    st.pending.append(report)
                    losses.append(engine.last_loss)
                st.step += 1
                self._save()  # durable before any upload
                bar.update(1)
        st.extra["batches"] = int(st.extra.get("batches", 0)) + info.local_steps
        self._upload_pending()
        st.extra["submitted"] = True
        self._save()
        self.stats.reports += len(plan)
        summary = {
            "round": info.round,
            "reports": len(plan),
            "seconds": round(time.perf_counter() - t0, 2),
            "mean_loss": float(np.mean(losses)) if losses else None,
        }
        self.stats.rounds.append(summary)
        return summary

    def sync_final(self) -> None:
        """After the run: θ of the last round this device joined, advanced by that round's update (by replay)."""
        st = self.state
        if st.round_base is None or st.round_id < 0:
            return
        try:
            theta = self._replay(st.round_id, st.round_base, None)
        except Exception as exc:  # the final model is a convenience: never fail the run over it
            log.warning("final sync failed: %s", exc)
            return
        if theta is not None:
            st.theta[...] = theta
            st.round_base = None
            st.round_id += 1
            self._save()

    # --- main loop ----------------------------------------------------------------------------------------------
    def run(self) -> ClientStats:
        self.enrol()
        self._upload_pending()  # reports computed before a crash go first
        joined = 0
        while True:
            info = self._call("current round", self.api.current_round)
            if info.status == "failed":
                raise ClientError(f"the cloud's run {info.run_id} failed")
            if info.status == "finished":
                log.info("run %d finished", info.run_id)
                self.sync_final()
                break
            same_round = info.round == self.state.round_id
            if info.status != "open" or (same_round and self.state.extra.get("submitted")):
                time.sleep(self.cfg.poll_s)  # wait for the round to close and the next to open
                continue
            self.check_artifacts(info.artifact_hashes)
            if not same_round:
                if self.cfg.max_rounds is not None and joined >= self.cfg.max_rounds:
                    break
                self.sync_to(info)
            summary = self.run_round(info)
            joined += 1
            log.info("round %d: %d reports in %.1f s", summary["round"], summary["reports"], summary["seconds"])
            if self.cfg.max_rounds is not None and joined >= self.cfg.max_rounds:
                break
        return self.stats
