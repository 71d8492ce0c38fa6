"""Small synchronous client for API v1 (httpx), used by the device client, the simulation and the README examples.

Every method maps to one endpoint (see ``cooperllm.protocol``) and returns the parsed pydantic model, decoded
tensor or raw bytes; :attr:`CooperClient.wire` counts the bytes that crossed the wire (bodies as sent, after DTC and
any content encoding, plus headers). Non-2xx answers raise :class:`ApiError` carrying the status, the server's fixed
``detail`` message and ``Retry-After`` (seconds) when the server sent one; :attr:`ApiError.retryable` tells the
device's uploader whether to back off and retry (429, 5xx) or give up (4xx). Torch-free.
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from cooperllm import dtc
from cooperllm.frames import decode_tensor_frame, encode_tensor_frame
from cooperllm.protocol import (
    API_PREFIX,
    FRAME_MEDIA_TYPE,
    GUIDANCE_ID_HEADER,
    IDEMPOTENCY_HEADER,
    N_EXAMPLES_HEADER,
    DeviceRevoked,
    EnrollRequest,
    EnrollResponse,
    EnrolmentToken,
    EnrolmentTokenRequest,
    GuidanceRef,
    Health,
    Metrics,
    ModelSync,
    ReportAck,
    ReportBatch,
    ReportIn,
    RoundInfo,
    RoundSummary,
    RunConfig,
    RunInfo,
)

PEFT_FILES = ("adapter_model.safetensors", "adapter_config.json")


class ApiError(Exception):
    """A non-2xx answer: ``status_code``, the server's ``detail`` and ``retry_after`` (seconds or None)."""

    def __init__(self, status_code: int, detail: Any, retry_after: float | None = None):
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status_code == 429 or self.status_code >= 500


@dataclass
class WireStats:
    """Bytes on the wire through one client (thread-safe): request bodies as sent and response bodies as received
    (before any content decoding), each with its serialized headers; answered requests only."""

    requests: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, response: httpx.Response) -> None:
        request = response.request
        up = len(request.content) + sum(len(k) + len(v) + 4 for k, v in request.headers.raw) + len(request.url.raw_path)
        body = response.num_bytes_downloaded or len(response.content)  # 0 when a transport built it from bytes
        down = body + sum(len(k) + len(v) + 4 for k, v in response.headers.raw)
        with self._lock:
            self.requests += 1
            self.bytes_up += up
            self.bytes_down += down

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.bytes_up, self.bytes_down


class CooperClient:
    """``CooperClient("http://127.0.0.1:8000", token=...)``; ``enroll`` stores the token it receives."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        client: httpx.Client | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._client = client or httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)
        self._own_client = client is None
        self.wire = WireStats()

    # --- plumbing -----------------------------------------------------------------------------------------------

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def __enter__(self) -> CooperClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        headers.update(extra or {})
        return headers

    def _timeout(self, wait_s: float) -> Any:
        """The client's timeouts, with a long poll's wait added to the read timeout."""
        if wait_s <= 0:
            return httpx.USE_CLIENT_DEFAULT
        base = self._client.timeout
        read = None if base.read is None else base.read + wait_s
        return httpx.Timeout(base.connect, read=read, write=base.write, pool=base.pool)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = self._headers(kwargs.pop("headers", None))
        resp = self._client.request(method, API_PREFIX + path, headers=headers, **kwargs)
        self.wire.add(resp)
        if resp.status_code >= 400:
            try:
                body = resp.json()
                detail = body.get("detail", resp.text)
                errors = body.get("errors") or []
            except (ValueError, AttributeError):
                detail, errors = resp.text, []
            if errors:  # a schema violation: say where (ErrorBody.errors)
                where = ", ".join(f"{'.'.join(map(str, e.get('loc', [])))}: {e.get('msg')}" for e in errors[:3])
                detail = f"{detail} ({where})"
            retry = resp.headers.get("Retry-After")
            raise ApiError(resp.status_code, detail, float(retry) if retry else None)
        return resp

    # --- devices ------------------------------------------------------------------------------------------------

    def enroll(self, enrolment_key: str, device_name: str = "device") -> EnrollResponse:
        """POST /v1/enroll: trade the enrolment key for a per-device token (kept in ``self.token``)."""
        body = EnrollRequest(enrolment_key=enrolment_key, device_name=device_name)
        out = EnrollResponse.model_validate(self._request("POST", "/enroll", json=body.model_dump()).json())
        self.token = out.token
        return out

    def current_round(self, after: int | None = None, wait_s: float = 0.0) -> RoundInfo:
        """GET /v1/rounds/current: config of the open round, its guidance list and this device's seed range.

        Long poll: with ``after=r`` and ``wait_s`` > 0 the server answers as soon as the run is past round r (or
        after ``wait_s`` seconds), so a device learns of the next round one latency after it opens."""
        params = {} if after is None or wait_s <= 0 else {"after": after, "wait": wait_s}
        return RoundInfo.model_validate(
            self._request("GET", "/rounds/current", params=params, timeout=self._timeout(wait_s)).json()
        )

    def guidance_frame(self, round_: int, block: int) -> tuple[bytes, str]:
        """GET /v1/rounds/{r}/guidance/{b}: the raw frame and its guidance id."""
        resp = self._request("GET", f"/rounds/{round_}/guidance/{block}")
        return resp.content, resp.headers.get(GUIDANCE_ID_HEADER, "")

    def guidance_refs(self, round_: int) -> list[GuidanceRef]:
        """GET /v1/rounds/{r}/guidance: the guidance list of round r, published as soon as the rectifier stored it
        (for the next round too, while the current one still runs: what a device prefetches); 404 until then."""
        return [GuidanceRef.model_validate(g) for g in self._request("GET", f"/rounds/{round_}/guidance").json()]

    def guidance(self, round_: int, block: int) -> np.ndarray:
        """The decoded basis V_b (n_b × m, float32) exactly as the server will use it when aggregating."""
        frame, _ = self.guidance_frame(round_, block)
        return decode_tensor_frame(frame)

    def upload_reports(self, round_: int, reports: list[ReportIn], idempotency_key: str) -> ReportAck:
        """POST /v1/rounds/{r}/reports: a batch of (seed, block, step, scalar, n_examples); safe to retry with
        the same key (the server counts a key once and answers the replay with ``replay=True``)."""
        body = ReportBatch(idempotency_key=idempotency_key, reports=reports)
        resp = self._request(
            "POST",
            f"/rounds/{round_}/reports",
            content=body.model_dump_json(),
            headers={"Content-Type": "application/json"},
        )
        return ReportAck.model_validate(resp.json())

    def upload_report_frame(
        self, round_: int, reports: list[ReportIn], idempotency_key: str, *, scalar_bits: int = 64
    ) -> ReportAck:
        """POST /v1/rounds/{r}/reports/frame: the same upload as a compact DTC report frame (zstd, varints).

        ``scalar_bits=32`` rounds scalars to float32 on the wire (the server then replays the rounded values)."""

        frame = dtc.encode_reports([r.to_report() for r in reports], scalar_bits=scalar_bits)
        headers = {"Content-Type": FRAME_MEDIA_TYPE, IDEMPOTENCY_HEADER: idempotency_key}
        resp = self._request("POST", f"/rounds/{round_}/reports/frame", content=frame, headers=headers)
        return ReportAck.model_validate(resp.json())

    def upload_delta(self, round_: int, delta: np.ndarray, n_examples: int, idempotency_key: str) -> ReportAck:
        """POST /v1/rounds/{r}/delta (strategy ``bp``): the local θ change as a lossless tensor frame."""
        headers = {
            "Content-Type": FRAME_MEDIA_TYPE,
            IDEMPOTENCY_HEADER: idempotency_key,
            N_EXAMPLES_HEADER: str(int(n_examples)),
        }
        frame = encode_tensor_frame(np.asarray(delta, dtype=np.float32).reshape(-1), lossless=True)
        resp = self._request("POST", f"/rounds/{round_}/delta", content=frame, headers=headers)
        return ReportAck.model_validate(resp.json())

    def sync(self, round_: int, wait_s: float = 0.0) -> ModelSync:
        """GET /v1/rounds/{r}/sync: seeds, scalars, guidance ids and coefficients, λ, η and checksums of round r;
        with ``wait_s`` > 0 an open round r is waited for (long poll) instead of answered 409."""
        params = {"wait": wait_s} if wait_s > 0 else {}
        resp = self._request("GET", f"/rounds/{round_}/sync", params=params, timeout=self._timeout(wait_s))
        return ModelSync.model_validate(resp.json())

    def adapter(self, version: int | None = None) -> bytes:
        """GET /v1/adapter: θ (safetensors) at the start of round ``version`` (default: the latest)."""
        params = {} if version is None else {"version": version}
        return self._request("GET", "/adapter", params=params).content

    def adapter_delta(self, from_version: int, to_version: int) -> bytes:
        """GET /v1/adapter/delta: θ of round ``to_version`` as a lossless delta frame from θ of ``from_version``
        (decode it with :func:`cooperllm.theta_delta.decode` and the θ the device holds); 404 for unknown versions."""
        params = {"from": from_version, "to": to_version}
        return self._request("GET", "/adapter/delta", params=params).content

    def peft_export(self, out_dir: str | os.PathLike, version: int | None = None) -> Path:
        """GET /v1/adapter/peft: unpack ``adapter_model.safetensors`` + ``adapter_config.json`` into ``out_dir``
        (loadable with ``peft.PeftModel.from_pretrained(base, out_dir)``)."""
        params = {} if version is None else {"version": version}
        data = self._request("GET", "/adapter/peft", params=params).content
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = set(zf.namelist())
            if names != set(PEFT_FILES):
                raise ValueError(f"unexpected files in the PEFT export: {sorted(names)}")
            for name in PEFT_FILES:  # fixed names only: no path traversal from the archive
                (out / name).write_bytes(zf.read(name))
        return out

    def health(self) -> Health:
        """GET /v1/health (no auth)."""
        return Health.model_validate(self._request("GET", "/health").json())

    # --- admin --------------------------------------------------------------------------------------------------

    def metrics(self) -> Metrics:
        """GET /v1/metrics (admin token): counters, rejections by reason, rectifier cost per round."""
        return Metrics.model_validate(self._request("GET", "/metrics").json())

    def create_run(self, config: RunConfig | None = None) -> RunInfo:
        """POST /v1/admin/runs: start a run (round 0 opens at once); the previous run, if any, is stopped."""
        body = (config or RunConfig()).model_dump_json()
        resp = self._request("POST", "/admin/runs", content=body, headers={"Content-Type": "application/json"})
        return RunInfo.model_validate(resp.json())

    def run(self, run_id: int) -> RunInfo:
        """GET /v1/admin/runs/{id}."""
        return RunInfo.model_validate(self._request("GET", f"/admin/runs/{run_id}").json())

    def rounds(self, run_id: int) -> list[RoundSummary]:
        """GET /v1/admin/runs/{id}/rounds."""
        return [RoundSummary.model_validate(r) for r in self._request("GET", f"/admin/runs/{run_id}/rounds").json()]

    def issue_enrolment_token(self, uses: int = 1, label: str = "device") -> EnrolmentToken:
        """POST /v1/admin/enrolment-tokens: a token that enrols ``uses`` devices (shown once)."""
        body = EnrolmentTokenRequest(uses=uses, label=label).model_dump_json()
        resp = self._request(
            "POST", "/admin/enrolment-tokens", content=body, headers={"Content-Type": "application/json"}
        )
        return EnrolmentToken.model_validate(resp.json())

    def revoke_device(self, device_id: int) -> DeviceRevoked:
        """POST /v1/admin/devices/{id}/revoke: the device's next request is refused."""
        return DeviceRevoked.model_validate(self._request("POST", f"/admin/devices/{device_id}/revoke").json())
