"""Wire schemas of API v1, shared by the cloud service and the device client (torch-free).

JSON bodies are the pydantic models below; tensors travel as binary frames (``application/octet-stream``) made and
read by ``cooperllm.frames`` (the DTC codec, or a plain float32 frame where a tensor must cross losslessly); a device
replays a closed round's ``ModelSync`` with ``cooperllm.replay``. Nothing here unpickles anything.

Endpoints (all under ``/v1``; device calls need ``Authorization: Bearer <device token>``, admin calls the admin token):

================================  ===================================================================================
POST /enroll                      EnrollRequest → EnrollResponse (enrolment key, no token)
GET  /rounds/current              → RoundInfo (config, guidance list, this device's seed range);
                                  ?after=r&wait=s: long poll until the run is past round r
GET  /rounds/{r}/guidance         → list of GuidanceRef (the next round's as soon as it is stored)
GET  /rounds/{r}/guidance/{b}     → tensor frame of the basis V_b (n_b × m); header X-Guidance-Id
POST /rounds/{r}/reports          ReportBatch → ReportAck (idempotent per key)
POST /rounds/{r}/reports/frame    the same as a DTC report frame; header Idempotency-Key → ReportAck
POST /rounds/{r}/delta            tensor frame of Δθ (strategy bp); headers Idempotency-Key, X-N-Examples → ReportAck
GET  /rounds/{r}/sync             → ModelSync (closed round r: everything needed to replay θ_r → θ_r+1);
                                  ?wait=s: long poll while round r is open
GET  /adapter[?version=r]         → safetensors of θ at the start of round r (default: the latest)
GET  /adapter/peft[?version=r]    → zip of adapter_model.safetensors + adapter_config.json
GET  /adapter/delta?from=r0&to=r  → θ_r as a lossless delta from θ_r0 (``cooperllm.theta_delta`` frame)
GET  /health                      → Health (no auth)
GET  /metrics                     → Metrics (admin)
POST /admin/runs                  RunConfig → RunInfo (starts a run; the previous one stops)
GET  /admin/runs/{id}             → RunInfo
GET  /admin/runs/{id}/rounds      → list of RoundSummary
================================  ===================================================================================

Errors are JSON ``{"detail": "..."}`` with fixed messages (see ``ERRORS``); 429 carries ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from cooperllm.strategies import STRATEGY_NAMES
from cooperllm.zgr import ALL_BLOCKS, BlockUpdate, Report, check_report

API_PREFIX = "/v1"
# 2: ZGR v2 — separate subspace/complement measurements, per-block published updates; 3: a round's directions may
# differ from round to round (RunConfig.budget), so a sync record names its own
PROTOCOL_VERSION = 3
FRAME_MEDIA_TYPE = "application/octet-stream"
SAFETENSORS_MEDIA_TYPE = "application/octet-stream"
IDEMPOTENCY_HEADER = "Idempotency-Key"
N_EXAMPLES_HEADER = "X-N-Examples"
GUIDANCE_ID_HEADER = "X-Guidance-Id"
MAX_BATCH_REPORTS = 4096
# report seeds on the wire stay below 2^52 (the server's ranges, cloud_api.round_state.seed_range): integers every
# JSON parser reads exactly (JavaScript's included), and a bound JSON Schema tools state without rounding
WIRE_SEEDS = 1 << 52

STRATEGIES = STRATEGY_NAMES  # the registry in cooperllm.strategies is the one list

# Fixed error messages: clients may match on them.
ERRORS = {
    "unauthenticated": "missing or invalid bearer token",
    "forbidden": "this token is not allowed to use this endpoint",
    "bad_enrolment_key": "invalid enrolment key",
    "body_too_large": "request body too large",
    "body_timeout": "request body not received in time",
    "rate_limited": "too many requests; retry later",
    "no_run": "no active run",
    "unknown_round": "unknown round",
    "round_closed": "round closed: late reports are not counted (staleness rule: drop)",
    "round_not_closed": "round not closed yet",
    "unknown_block": "report names a block this round does not train",
    "bad_step": "report step outside [0, local_steps)",
    "seed_out_of_range": "report seed outside this device's seed range for the round",
    "scalar_out_of_range": "report scalar is NaN, infinite or beyond the allowed magnitude",
    "idempotency_conflict": "idempotency key reused with a different body",
    "wrong_strategy": "this upload does not match the run's strategy",
    "unknown_guidance": "no guidance for this round and block",
    "unknown_version": "unknown adapter version",
    "bad_version_range": "a delta goes from an earlier adapter version to a later one",
    "bad_frame": "malformed tensor frame",
    "unsupported_encoding": "unsupported content encoding",
    "run_failed": "run failed",
    "unknown_device": "no such device",
    "invalid_request": "request does not match the schema",
    "no_such_block": "the run names blocks the model does not have",
    "report_quota": "more reports than this round asks of a device",
    "too_many_examples": "n_examples exceeds what a device can use in a round (local_steps × batch_size)",
    "database_busy": "the database did not answer in time; retry later",
    "round_not_seen": "this worker has not caught up with that round yet; retry",
}


class _Model(BaseModel):
    # NaN and ±Inf are refused everywhere on the wire: a stored non-finite setting could not even be read back
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


Token = Annotated[str, Field(min_length=1, max_length=256)]


class FieldError(_Model):
    loc: list[str | int]  # where: "body", "query", "path" or "header", then the field's path
    msg: str
    type: str


class ErrorBody(_Model):
    """The body of every refusal: ``detail``, a fixed message of ``ERRORS`` clients may match on (some carry a reason
    after a colon); ``errors``, the fields that broke the schema, for a 422 of that kind only."""

    detail: str
    errors: list[FieldError] | None = None


# A name or label the service stores and logs: printable text. Control characters (NUL above all, which PostgreSQL
# refuses in text columns: a 500 under schemathesis) and line breaks (forged log lines) are refused with a 422.
StoredName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]


class EnrollRequest(_Model):
    enrolment_key: Token
    device_name: StoredName = "device"


class EnrollResponse(_Model):
    device_id: int
    token: str  # shown once; the server keeps only its hash


class EnrolmentTokenRequest(_Model):
    """An admin asks for an enrolment token: it enrols at most ``uses`` devices (one, unless a batch is provisioned)."""

    uses: Annotated[int, Field(ge=1, le=10_000, description="devices this token may enrol")] = 1
    label: Annotated[StoredName, Field(description="what the token is for (logs)")] = "device"


class EnrolmentToken(_Model):
    id: int
    token: str  # shown once; the server keeps only its hash. A device sends it as EnrollRequest.enrolment_key
    uses: int


class DeviceRevoked(_Model):
    device_id: int
    revoked: bool


# The one definition of a run's settings: each field's type, bounds, default and description (the description is
# also the CLI's help text). The simulation's config takes its defaults from here and the CLI's options for these
# fields are generated from here (cooperllm_app.simulation.config, cooperllm.config_fields), so a default is
# written once. The class docstring is the schema's description in the OpenAPI document.
_BLOCKS_HELP = "blocks trained: null = every layout block separately, [-1] = all blocks jointly, or distinct indices"


class RunConfig(_Model):
    """One federated run. ``blocks``: None = every layout block separately; ``[-1]`` = all blocks jointly."""

    strategy: Annotated[
        Literal[STRATEGY_NAMES],  # type: ignore[valid-type]  # the registry's names
        Field(
            description="zgr (ZO with cloud guidance, ours), zo (plain federated ZO), bp (FedAvg of backprop) or "
            "cloud (the cloud's public-data backprop alone, devices idle)"
        ),
    ] = "zgr"
    rounds: Annotated[int, Field(ge=1, le=10_000, description="federated rounds R")] = 10
    epsilon: Annotated[float, Field(gt=0, le=1.0, description="ZO perturbation scale ε")] = 1e-3
    local_steps: Annotated[
        int,
        Field(
            ge=1,
            le=64,
            description="batches per device per round (ZO: one report per batch, trained block and direction the "
            "strategy measures: zgr measures two, so a zgr step costs four forward passes, a zo step two)",
        ),
    ] = 1
    blocks: Annotated[
        list[int] | None,
        Field(description=_BLOCKS_HELP),
        WithJsonSchema(  # what _blocks_form checks, stated in the schema so that a generated client can keep to it
            {
                "anyOf": [
                    {"type": "null"},
                    {"type": "array", "items": {"const": ALL_BLOCKS}, "minItems": 1, "maxItems": 1},
                    {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 0, "maximum": 100_000},
                        "minItems": 1,
                        "maxItems": 4096,
                        "uniqueItems": True,
                    },
                ],
                "description": _BLOCKS_HELP,
            }
        ),
    ] = None
    batch_size: Annotated[int, Field(ge=1, le=64, description="examples per device forward pass")] = 8
    quorum: Annotated[
        int, Field(ge=1, le=10_000, description="devices whose reports close a round before its deadline")
    ] = 2
    min_devices: Annotated[
        int, Field(ge=1, le=10_000, description="fewest devices a round may close with at its deadline")
    ] = 1
    deadline_s: Annotated[
        float, Field(gt=0, le=86_400, description="round deadline, s: a round without its quorum closes then")
    ] = 300.0
    max_extensions: Annotated[
        int, Field(ge=0, le=10, description="deadline extensions of a round short of min_devices before it fails")
    ] = 2
    lam: Annotated[
        Annotated[float, Field(ge=0, le=1)] | Literal["auto"],
        Field(
            description="weight λ of the cloud's gradient in the guidance subspace, in [0, 1], or 'auto' for λ "
            "estimated each round from the devices' measurements (see rectifier)"
        ),
    ] = "auto"
    lam_max: Annotated[float, Field(ge=0, le=1, description="upper clip of the estimated λ")] = 1.0
    rectifier: Annotated[
        Literal["direction", "axis"],
        Field(
            description="how lam 'auto' is measured: 'direction', a λ_k per guidance direction from that round's "
            "error (steps normalised by their own scale); 'axis', one λ tested along the cloud's direction over a "
            "10-round horizon, the devices' parts shrunk to what stands above their noise (steps normalised by the "
            "cloud's scale): it turns a shifted cloud down, see docs/RESULTS.md"
        ),
    ] = "direction"
    budget: Annotated[
        Literal["fixed", "follow"],
        Field(
            description="zgr's forward budget: 'fixed', every step measures the subspace and its complement; "
            "'follow', once three rounds have tested the cloud and their running λ is below 0.25 (the cloud is turned "
            "down), three rounds in four spend both of a step's measurements on ISO directions (zo's estimator, where "
            "the devices' data can still move the model); every fourth round keeps testing it; while it is turned down "
            "no round steps along it; docs/PERTURBATIONS.md §4"
        ),
    ] = "fixed"
    eta: Annotated[
        float,
        Field(
            gt=0,
            le=100,
            description="server step η: zgr/cloud move each block by η·√m per round along the guidance subspace "
            "(normalised by a running scale); bp scales the averaged Δθ",
        ),
    ] = 1e-2
    eta_zo: Annotated[
        float,
        Field(
            gt=0,
            le=100,
            description="step η_zo of the devices' ZO estimate (zo's whole step, zgr's complement step), on scalars "
            "normalised by their running RMS",
        ),
    ] = 1e-4
    guidance_rank: Annotated[int, Field(ge=1, le=16, description="guidance subspace rank m")] = 4
    window: Annotated[int, Field(ge=1, le=64, description="cloud gradients kept per block for the basis")] = 8
    # send only what changed: a block whose new basis is within this subspace distance of the block's current
    # version keeps that version (same frame, new coefficients), and devices that hold it download nothing
    guidance_tau: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            description="a block whose new basis lies within this subspace distance of its current version keeps "
            "that version (0: a new version every round)",
        ),
    ] = 0.0
    grad_batches: Annotated[int, Field(ge=1, le=16, description="cloud backward passes per round")] = 2
    grad_batch_size: Annotated[int, Field(ge=1, le=64, description="public examples per backward pass")] = 8
    clip_scalar: Annotated[
        Annotated[float, Field(gt=0, le=1e12)] | None,
        Field(description="clip report scalars to ±this (null: no fixed clip; clip_k still applies)"),
    ] = None
    max_abs_scalar: Annotated[
        float, Field(gt=0, le=1e12, description="reject a report whose |scalar| exceeds this")
    ] = 1e6
    clip_k: Annotated[
        Annotated[float, Field(ge=1, le=1000)] | None,
        Field(
            description="robust aggregation (docs/SECURITY.md): leave out each report whose |scalar| exceeds "
            "clip_k × the median |scalar| of the round's reports of its block and direction, and clip each bp Δθ to "
            "clip_k × the round's median norm (null: off)"
        ),
    ] = 10.0
    seed: Annotated[
        int, Field(ge=0, le=2**31 - 1, description="run seed: devices' seed ranges and the cloud's public minibatches")
    ] = 0

    @field_validator("blocks")
    @classmethod
    def _blocks_form(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v or len(v) != len(set(v)) or len(v) > 4096 or max(v) > 100_000:
            raise ValueError(
                "blocks must be a non-empty list of distinct block indices, at most 4096, each <= 100000 (or [-1])"
            )
        if ALL_BLOCKS in v and len(v) != 1:
            raise ValueError("block -1 (all blocks) cannot be combined with other blocks")
        if any(b < ALL_BLOCKS for b in v):
            raise ValueError("block indices must be >= 0 (or exactly [-1])")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.min_devices > self.quorum:
            raise ValueError("min_devices cannot exceed quorum")
        if self.budget != "fixed" and self.strategy != "zgr":
            raise ValueError(
                f"budget {self.budget!r} moves zgr's measurements: strategy {self.strategy!r} has one kind"
            )
        return self


class GuidanceRef(_Model):
    block: int
    guidance_id: str
    sha256: str  # of the frame bytes
    rows: int
    m: int


class RoundInfo(_Model):
    """The current round as seen by one device."""

    run_id: int
    round: int
    status: Literal["open", "closed", "failed", "finished"]
    strategy: str
    epsilon: float
    local_steps: int
    blocks: list[int]
    directions: list[Literal["iso", "subspace", "complement"]]  # measurement s of batch s div D is directions[s mod D]
    batch_size: int
    deadline: float  # unix time
    seed_lo: int  # this device's seeds for this round are [seed_lo, seed_hi)
    seed_hi: int
    theta_checksum: str  # sha256 of θ at the start of this round
    adapter_version: int  # = round: GET /adapter?version=round gives θ_round
    artifact_hashes: dict[str, str]
    guidance: list[GuidanceRef]
    rounds_total: int


class ReportIn(_Model):
    seed: Annotated[int, Field(ge=0, lt=WIRE_SEEDS)]
    block: Annotated[int, Field(ge=ALL_BLOCKS)]
    step: Annotated[int, Field(ge=0)]
    scalar: float
    n_examples: Annotated[int, Field(ge=1, le=1_000_000)]

    @model_validator(mode="after")
    def _checked(self) -> ReportIn:
        check_report(self)  # the one report check; without a round's rules it asks for a finite scalar
        return self

    def to_report(self) -> Report:
        return Report(self.seed, self.block, self.step, self.scalar, self.n_examples)


class ReportBatch(_Model):
    idempotency_key: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
    reports: Annotated[list[ReportIn], Field(min_length=1, max_length=MAX_BATCH_REPORTS)]


class ReportAck(_Model):
    round: int
    accepted: int  # reports newly counted by this request (0 on an idempotent replay)
    duplicates: int  # reports already counted before (same device, seed, block, step)
    replay: bool  # True when the idempotency key was seen before: nothing was counted again
    clipped: int = 0
    round_status: str


class SyncGuidance(_Model):
    block: int
    guidance_id: str
    sha256: str
    coeffs: list[float]


class SyncUpdate(_Model):
    """One block's published update (``cooperllm.zgr.BlockUpdate``): q multiplies each applied report's scalar, w is
    the subspace step in the block's guidance coordinates (float32 values, exact as JSON numbers)."""

    block: int
    q: float
    w: list[float] | None = None


class ModelSync(_Model):
    """Everything a device needs to rebuild θ_{r+1} from θ_r: apply_update(θ, layout, reports, directions, guidance,
    update)."""

    run_id: int
    round: int
    strategy: str
    replayable: bool  # False for ``bp`` (FedAvg of deltas): download the adapter instead
    lam: float | None  # the mean weight λ of the cloud (for display; the update already holds it)
    directions: list[Literal["iso", "subspace", "complement"]]  # the round's, as its RoundInfo named them
    reports: list[ReportIn]  # in aggregation order
    guidance: list[SyncGuidance]
    update: list[SyncUpdate]
    theta_checksum_before: str
    theta_checksum_after: str


class RoundSummary(_Model):
    round: int
    status: str
    opened_at: float
    deadline: float
    closed_at: float | None
    extensions: int
    n_reports: int
    n_devices: int
    lam: float | None  # mean weight λ of the cloud over the guided blocks and directions
    # {"blocks": {block: n, device_mean, device_var, cloud, cloud_var, bias_sq, lam (each m)}, "axis": the test along
    # the cloud's direction (cooperllm.rectify.AxisStats, measured under either rule) or null}
    rectifier: dict | None = None
    theta_checksum: str
    theta_checksum_after: str | None
    rectifier_s: float | None
    aggregate_s: float | None
    failure: str | None = None


class RunInfo(_Model):
    run_id: int
    status: Literal["running", "finished", "failed"]
    config: RunConfig | None  # None: stored by another version and no longer valid (the run failed; see failure)
    current_round: int
    theta_checksum: str
    n_params: int
    n_blocks: int
    failure: str | None = None


class Health(_Model):
    status: Literal["ok"]
    protocol_version: int
    run_id: int | None
    round: int | None
    # workers sharing a database: the one that closes rounds is the leader (a service on its own always is)
    role: Literal["leader", "follower"] = "leader"


class Metrics(_Model):
    uptime_s: float
    devices: int
    reports_total: int
    uploads_total: int
    idempotent_replays: int
    duplicates: int
    late_reports: int
    rejected: dict[str, int]
    rounds_closed: int
    rounds_failed: int
    rounds_extended: int
    rectifier: list[dict]  # per round: seconds, backward passes, rank, window size
    last_lambda: float | None


def update_to_wire(update: Mapping[int, BlockUpdate]) -> list[SyncUpdate]:
    return [
        SyncUpdate(block=b, q=u.q, w=None if u.w is None else [float(x) for x in u.w])
        for b, u in sorted(update.items())
    ]


def reports_from(reports: Sequence[Report]) -> list[ReportIn]:
    """Core reports → wire reports (what a device uploads)."""
    return [
        ReportIn(seed=r.seed, block=r.block, step=r.step, scalar=r.scalar, n_examples=r.n_examples) for r in reports
    ]
