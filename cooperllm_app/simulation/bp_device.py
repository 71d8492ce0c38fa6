"""The ``bp`` baseline's device: FedAvg of backprop LoRA updates (the accuracy ceiling and the memory reference).

The ZO device runtime runs forward passes only and refuses ``bp`` rounds, so the simulation plays bp devices with
eager PyTorch fp32, as a phone without the exported graph would have to: per round it downloads θ_r (checksum
checked), takes ``local_steps`` AdamW steps of backprop on its own shard (batches from the same stateless schedule
as the ZO devices), and uploads Δθ = θ_local − θ_r; the cloud applies θ ← θ + η·Σ nᵢΔᵢ/Σ nᵢ. Its state (token,
round, counters) is the device runtime's state file, so a restart neither re-enrols nor counts a round twice.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from cooperllm.api_client import ApiError
from cooperllm.checkpoint import load_theta_bytes
from cooperllm.layout import theta_checksum
from cooperllm.manifest import Manifest
from cooperllm.models import load_causal_lm, resolve_model
from cooperllm.strategies import DeviceWork, get_strategy
from cooperllm.tokenization import PromptEncoder, TokenizedCorpus
from device_runtime.batches import BatchSchedule
from device_runtime.state import DeviceState, load_state, save_state

log = logging.getLogger(__name__)


class BackpropDevice:
    def __init__(self, manifest: Manifest, folder: Path, model: str, threads: int):
        import torch  # deferred: loads torch (heavy; not needed at import)

        from cooperllm.modeling import build_task_model  # deferred: loads torch (heavy; not needed at import)

        torch.set_num_threads(max(1, threads))
        graph = manifest.graphs[0]
        self.manifest = manifest
        self.layout = manifest.layout
        self.batch_size = graph.batch_size
        self.encoder = PromptEncoder(folder / manifest.tokenizer_file, manifest.task, graph.seq_len)
        lm = load_causal_lm(resolve_model(model))
        self.module, layout = build_task_model(lm, self.encoder, manifest.adapter)
        if layout.to_dict() != self.layout.to_dict():
            raise ValueError(f"model {model} does not produce the artifacts' θ layout; pass the model they came from")
        self.artifact = "bp:" + manifest.files[manifest.initial_adapter_file]

    def train(self, theta: np.ndarray, data: TokenizedCorpus, steps: int, lr: float, data_seed: int, first_batch: int):
        """``steps`` AdamW steps from θ on the device's batches; returns (θ after, mean loss)."""
        import torch  # deferred: loads torch (heavy; not needed at import)
        from torch.func import functional_call  # deferred: loads torch (heavy; not needed at import)

        schedule = BatchSchedule(data, self.batch_size, data_seed)
        flat = torch.nn.Parameter(torch.from_numpy(theta.copy()))
        opt = torch.optim.AdamW([flat], lr=lr, weight_decay=0.0)
        losses = []
        for t in range(steps):
            b = schedule.batch(first_batch + t)
            params = {s.name: flat[s.offset : s.offset + s.size].view(s.shape) for s in self.layout.tensors}
            inputs = (torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask), torch.from_numpy(b.labels))
            loss, _ = functional_call(self.module, params, inputs, strict=False)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return flat.detach().numpy().astype(np.float32, copy=True), float(np.mean(losses))

    def run_round(
        self,
        api,
        transfers,
        *,
        round_: int,
        data: TokenizedCorpus,
        state_dir: Path,
        enrol_key: str,
        name: str,
        lr: float,
        data_seed: int,
        enrolment: dict | None = None,
    ) -> dict:

        st = load_state(state_dir, self.layout) or DeviceState(
            theta=np.zeros(self.layout.total, np.float32), artifact=self.artifact
        )
        if st.artifact != self.artifact:
            raise ValueError(f"{state_dir}: device state belongs to another artifact")
        if st.extra.get("token"):
            api.token = st.extra["token"]
        else:  # issued ahead in device order (the simulation's runner), else enrolled here
            out = enrolment or transfers.call("enrol", api.enroll, enrol_key, name).model_dump()
            api.token = out["token"]
            st.extra.update(token=out["token"], device_id=int(out["device_id"]))
            save_state(state_dir, st, self.layout)
        if st.round_id > round_ or (st.round_id == round_ and st.extra.get("submitted")):
            return {"skipped": True, "reports": 0}
        info = transfers.call("current round", api.current_round)
        if (
            get_strategy(info.strategy).device_work is not DeviceWork.BACKPROP
            or info.round != round_
            or info.status != "open"
        ):
            raise RuntimeError(
                f"{name} was sent to backprop round {round_}, the cloud is at {info.round} ({info.status}, "
                f"strategy {info.strategy})"
            )
        theta = load_theta_bytes(transfers.call(f"adapter v{round_}", api.adapter, round_), self.layout)
        if theta_checksum(theta) != info.theta_checksum:
            raise RuntimeError(f"downloaded adapter v{round_} does not match the round's checksum")
        steps = info.local_steps
        first = int(st.extra.get("batches", 0))
        after, mean_loss = self.train(theta, data, steps, lr, data_seed, first)
        delta = after - theta
        digest = hashlib.sha256(delta.tobytes()).hexdigest()[:24]
        key = f"d{st.extra.get('device_id', 0)}-r{round_}-bp-{digest}"
        try:
            transfers.call(f"upload r{round_}", api.upload_delta, round_, delta, steps * self.batch_size, key)
        except ApiError as exc:
            if exc.status_code != 409 or "round closed" not in str(exc.detail):
                raise
            log.warning("%s: round %d closed before its update arrived (staleness rule: drop)", name, round_)
        st.theta[...] = after
        st.round_id = round_
        st.extra.update(submitted=True, batches=first + steps)
        save_state(state_dir, st, self.layout)
        return {"skipped": False, "reports": 1, "mean_loss": mean_loss, "replays": 0, "downloads": 1}
