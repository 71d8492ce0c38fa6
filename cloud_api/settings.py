"""The one home of the service's settings: environment variables ``COOPERLLM_*`` (or ``cooperllm serve`` flags).

Outside ``env=development`` the service refuses to start with a default (or short) admin token or enrolment key,
so a deployment cannot run on secrets that are printed in this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cooperllm.tasks import CAUSAL_LM_CLS, SST2_LABEL_NAMES, SST2_LABEL_WORDS, SST2_TEMPLATE

DEFAULT_ADMIN_TOKEN = "dev-admin-token"
DEFAULT_ENROLMENT_KEY = "dev-enrolment-key"
MIN_SECRET_LEN = 16


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COOPERLLM_", extra="ignore")

    env: Literal["development", "production", "test"] = "development"
    admin_token: str = DEFAULT_ADMIN_TOKEN
    enrolment_key: str = DEFAULT_ENROLMENT_KEY

    db_url: str = "sqlite:///runs/cloud/cooperllm.db"
    state_dir: Path = Path("runs/cloud")
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"  # WAL + NORMAL survives a killed process

    model: str = "smollm2"
    artifacts: Path | None = None
    public_data: Path | None = None  # default: ../shared/data/sst2/dev.tsv (public; train.tsv is private to devices)
    public_n: int = Field(default=2000, ge=1)
    text_column: str | None = None
    label_column: str = "label"
    seq_len: int = Field(default=64, ge=2)
    task: str = CAUSAL_LM_CLS
    template: str = SST2_TEMPLATE
    label_words: tuple[str, ...] = SST2_LABEL_WORDS
    label_names: tuple[str, ...] = SST2_LABEL_NAMES
    lora_rank: int = Field(default=8, ge=1)
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    lora_init_seed: int = 0
    torch_threads: int = Field(default=1, ge=1)
    guidance_codec: Literal["dtc", "plain"] = "dtc"  # plain: lossless float32 guidance frames (the DTC-off arm)

    max_body_bytes: int = Field(default=8 << 20, ge=1024)
    rate_limit_per_s: float = Field(default=50.0, gt=0)
    rate_burst: int = Field(default=100, ge=1)
    tick_s: float = Field(default=0.05, gt=0)

    @model_validator(mode="after")
    def _secrets_outside_development(self) -> Settings:
        if self.env != "development":
            for name, value, default in (
                ("COOPERLLM_ADMIN_TOKEN", self.admin_token, DEFAULT_ADMIN_TOKEN),
                ("COOPERLLM_ENROLMENT_KEY", self.enrolment_key, DEFAULT_ENROLMENT_KEY),
            ):
                if value == default or len(value) < MIN_SECRET_LEN:
                    raise ValueError(
                        f"refusing to start in env={self.env}: set {name} to a secret of at least "
                        f"{MIN_SECRET_LEN} characters (the default is for development only)"
                    )
        return self
