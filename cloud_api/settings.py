"""The one home of the service's settings: environment variables ``COOPERLLM_*`` (or ``cooperllm serve`` flags).

Outside ``env=development`` the service refuses to start with the default (or a short) admin token, or a short shared
enrolment key, so a deployment cannot run on secrets that are printed in this file. Devices enrol with single-use
tokens an admin issues (``cooperllm admin token``); a shared enrolment key is off unless set, because its holder can
enrol any number of devices (docs/SECURITY.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cooperllm.adapter import AUTO
from cooperllm.tasks import CAUSAL_LM_CLS, SST2_LABEL_NAMES, SST2_LABEL_WORDS, SST2_TEMPLATE

DEFAULT_ADMIN_TOKEN = "dev-admin-token"
MIN_SECRET_LEN = 16


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COOPERLLM_", extra="ignore")

    env: Literal["development", "production", "test"] = "development"
    admin_token: str = DEFAULT_ADMIN_TOKEN
    enrolment_key: str | None = None  # a shared key (simulations, tests); None: only admin-issued enrolment tokens
    api_docs: bool | None = None  # /docs and /openapi.json; None: on except in env=production
    # h11 caps a request's head (64 KiB); httptools costs ~25 % less CPU per upload but caps nothing: use it only
    # behind a proxy that limits header size itself (cooperllm bench cloud measures both)
    http_parser: Literal["h11", "httptools"] = "h11"
    trusted_proxies: str = ""  # comma-separated proxy addresses whose X-Forwarded-For is believed; "": none

    # sqlite:///PATH or postgresql+psycopg://…; default sqlite:///<state_dir>/cooperllm.db, so one folder holds all of
    # the service's state
    database_url: str = ""
    # several services (workers) share one PostgreSQL database and state folder: uploads are counted in the database,
    # and one elected worker (the leader) closes rounds and runs the rectifier (cloud_api.leader, docs/DEPLOY.md)
    shared_database: bool = False
    state_dir: Path = Path("runs/cloud")
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"  # WAL + NORMAL survives a killed process

    model: str = "smollm2"
    artifacts: Path | None = None
    public_data: Path | None = None  # default: ../shared/data/sst2/dev.tsv (public; train.tsv is private to devices)
    public_n: int = Field(default=2000, ge=1)
    text_column: str | None = None
    label_column: str | None = None
    seq_len: int = Field(default=64, ge=2)
    task: str = CAUSAL_LM_CLS
    template: str = SST2_TEMPLATE
    label_words: tuple[str, ...] = SST2_LABEL_WORDS
    label_names: tuple[str, ...] = SST2_LABEL_NAMES
    lora_rank: int = Field(default=8, ge=1)
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = (AUTO,)  # the model family's (cooperllm.adapter.FAMILY_TARGETS)
    lora_init_seed: int = 0
    torch_threads: int = Field(default=1, ge=1)
    # public examples per backward pass of the cloud's model: its activation memory is that of one chunk whatever a
    # run's grad_batch_size (docs/SECURITY.md §4)
    backprop_chunk: int = Field(default=8, ge=1, le=64)
    guidance_codec: Literal["dtc", "plain"] = "dtc"  # plain: lossless float32 guidance frames (the DTC-off arm)

    max_body_bytes: int = Field(default=8 << 20, ge=1024)
    body_timeout_s: float = Field(default=30.0, gt=0)  # longest wait for the next chunk of a request body (408)
    rate_limit_per_s: float = Field(default=50.0, gt=0)
    rate_burst: int = Field(default=100, ge=1)
    tick_s: float = Field(default=0.05, gt=0)
    # fault injection for the leader-failover tests, honoured only with env=test: "STAGE:SECONDS" pauses the leader's
    # close of a round at STAGE ("closing": marked closing, nothing aggregated; "saved": θ_{r+1} written, not recorded)
    fault_pause: str = ""

    @model_validator(mode="after")
    def _database_in_the_state_dir(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.state_dir / 'cooperllm.db'}"
        return self

    @model_validator(mode="after")
    def _shared_needs_postgresql(self) -> Settings:
        if self.shared_database and not self.database_url.startswith("postgresql"):
            raise ValueError(
                "shared_database needs a PostgreSQL database_url (postgresql+psycopg://…): workers share the "
                "database's advisory locks, which SQLite has not"
            )
        return self

    @model_validator(mode="after")
    def _secrets_outside_development(self) -> Settings:
        if self.env == "development":
            return self
        weak = []
        if self.admin_token == DEFAULT_ADMIN_TOKEN or len(self.admin_token) < MIN_SECRET_LEN:
            weak.append("COOPERLLM_ADMIN_TOKEN")
        if self.enrolment_key is not None and len(self.enrolment_key) < MIN_SECRET_LEN:
            weak.append("COOPERLLM_ENROLMENT_KEY")
        if weak:
            raise ValueError(
                f"refusing to start in env={self.env}: set {' and '.join(weak)} to a secret of at least "
                f"{MIN_SECRET_LEN} characters (the default is for development only)"
            )
        return self

    @property
    def fault_pause_stage(self) -> tuple[str, float] | None:
        """``fault_pause`` as (stage, seconds); None unless env=test (a deployment never pauses its leader)."""
        if self.env != "test" or not self.fault_pause:
            return None
        stage, _, seconds = self.fault_pause.partition(":")
        if stage not in ("closing", "saved"):
            raise ValueError(f"fault_pause stage must be 'closing' or 'saved', got {stage!r}")
        return stage, float(seconds or 0)

    @property
    def docs_enabled(self) -> bool:
        return self.env != "production" if self.api_docs is None else self.api_docs
