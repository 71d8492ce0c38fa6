"""What one simulation is: its options, their defaults per strategy, the cloud's RunConfig, and the run folder's copy.

The resolved config is written to ``RUN_DIR/config.json`` on the first start; a later start on the same folder must
ask for the same run (a different one is refused with the differing fields named), which is what makes a resumed
run the same experiment.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cooperllm.data import parse_partition, shared_data_dir
from cooperllm.link import LinkSpec
from cooperllm.protocol import STRATEGIES, RunConfig
from cooperllm.zgr import ALL_BLOCKS

CONFIG_FILE = "config.json"
# Options that change how fast a run goes, not what it computes: a resumed run may use other values.
_FREE_ON_RESUME = ("workers", "command")
DEFAULT_ETA = {"zgr": 1e-3, "zo": 1e-3, "bp": 1.0}  # bp uploads Δθ of local AdamW steps: FedAvg applies it as is
DEFAULT_LOCAL_LR = {"zgr": 0.0, "zo": 0.0, "bp": 1e-3}  # ZO devices measure θ_r; bp devices train locally (AdamW)


@dataclass
class SimConfig:
    artifacts: str
    clients: int = 20
    per_round: int = 5
    rounds: int = 10
    strategy: str = "zgr"
    partition: str = "iid"
    link: str = "10mbit:50ms"
    backend: str | None = None  # device graph backend (default: the manifest's first graph)
    model: str | None = None  # HF model the artifacts came from (cloud, bp devices); default: the manifest's
    seed: int = 0
    train_data: str = ""
    public_data: str = ""
    public_n: int = 2000
    public_classes: list[int] | None = None  # shifted public data: keep only these classes
    test_data: str = ""
    eval_limit: int | None = None
    eval_every: int = 1
    local_steps: int = 1
    blocks: str = "each"  # each (one report per block per step) | all (one report over all blocks) | 0,3,5
    epsilon: float = 1e-3
    alpha: float = 0.5
    lam: float | str = 0.5
    lam_max: float = 0.9
    eta: float | None = None
    guidance_rank: int = 4
    window: int = 8
    grad_batches: int = 2
    grad_batch_size: int = 8
    local_lr: float | None = None
    guidance_codec: str = "dtc"
    deadline_s: float = 21600.0  # a safety net only: a round closes when its K devices have reported
    workers: int | None = None
    command: str = ""

    def resolved(self) -> SimConfig:
        """Defaults filled in (paths absolute, per-strategy η and local lr, worker count) and every field checked."""
        data = shared_data_dir() / "sst2"
        c = SimConfig(**asdict(self))
        c.artifacts = str(Path(c.artifacts).resolve())
        c.train_data = str(Path(c.train_data or data / "train.tsv").resolve())
        c.public_data = str(Path(c.public_data or data / "dev.tsv").resolve())
        c.test_data = str(Path(c.test_data or data / "test.tsv").resolve())
        if c.eta is None:
            c.eta = DEFAULT_ETA.get(c.strategy, 1e-3)
        if c.local_lr is None:
            c.local_lr = DEFAULT_LOCAL_LR.get(c.strategy, 0.0)
        if c.workers is None:
            c.workers = max(1, min(c.per_round, os.cpu_count() or 1))
        if isinstance(c.lam, str) and c.lam != "auto":
            c.lam = float(c.lam)
        c.check()
        c.model = _model_of(c)
        return c

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.clients < 1 or not 1 <= self.per_round <= self.clients:
            raise ValueError(f"need 1 <= per-round ({self.per_round}) <= clients ({self.clients})")
        if self.rounds < 1 or self.local_steps < 1 or self.eval_every < 1:
            raise ValueError("rounds, local steps and eval-every must be >= 1")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.guidance_codec not in ("dtc", "plain"):
            raise ValueError(f"guidance codec must be dtc or plain, got {self.guidance_codec!r}")
        parse_partition(self.partition)
        LinkSpec.parse(self.link)
        block_list(self.blocks)
        for name in ("artifacts", "train_data", "public_data", "test_data"):
            path = getattr(self, name)
            if path and not Path(path).exists():
                raise FileNotFoundError(f"{name.replace('_', ' ')}: {path} does not exist")

    def run_config(self, batch_size: int) -> RunConfig:
        """The cloud's run: K devices per round make the quorum (and the minimum), so a round waits for all K."""
        return RunConfig(
            strategy=self.strategy,
            rounds=self.rounds,
            epsilon=self.epsilon,
            local_steps=self.local_steps,
            blocks=block_list(self.blocks),
            alpha=self.alpha,
            batch_size=batch_size,
            quorum=self.per_round,
            min_devices=self.per_round,
            deadline_s=self.deadline_s,
            lam=self.lam,
            lam_max=self.lam_max,
            eta=self.eta,
            guidance_rank=self.guidance_rank,
            window=self.window,
            grad_batches=self.grad_batches,
            grad_batch_size=self.grad_batch_size,
            seed=self.seed,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


# SimConfig field -> its ``cooperllm simulate`` option, where the names differ
_OPTION_OF = {"guidance_rank": "--rank", "deadline_s": "--deadline"}


def command_line(cfg: SimConfig, out: str | os.PathLike) -> str:
    """The ``cooperllm simulate`` command that asks for this run: every option that differs from its default."""
    import shlex

    default = SimConfig(artifacts="")
    parts = ["cooperllm", "simulate", "--artifacts", cfg.artifacts, "--out", str(out)]
    for f in fields(SimConfig):
        value = getattr(cfg, f.name)
        if f.name in ("artifacts", "command") or value == getattr(default, f.name) or value is None:
            continue
        if f.name == "public_classes":
            value = ",".join(str(c) for c in value)
        parts += [_OPTION_OF.get(f.name, "--" + f.name.replace("_", "-")), str(value)]
    return shlex.join(parts)


def _model_of(c: SimConfig) -> str:
    """The model the cloud (and bp devices) load: --model, else the manifest's when it names the default model."""
    from cooperllm.manifest import read_manifest
    from cooperllm.models import DEFAULT_MODEL

    if c.model is not None:
        return str(Path(c.model).resolve()) if Path(c.model).is_dir() else c.model
    name = read_manifest(c.artifacts, verify_hashes=False).model_name
    if name != DEFAULT_MODEL:
        raise ValueError(f"the artifacts were exported from {name!r}: pass --model with that Hugging Face folder")
    return name


def block_list(spec: str) -> list[int] | None:
    """``each`` → None (every block separately), ``all`` → [-1] (all blocks jointly), ``0,3,5`` → [0, 3, 5]."""
    if spec == "each":
        return None
    if spec == "all":
        return [ALL_BLOCKS]
    try:
        out = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"blocks must be 'each', 'all' or comma-separated indices, got {spec!r}") from None
    if not out or min(out) < 0:
        raise ValueError(f"blocks must be 'each', 'all' or comma-separated indices >= 0, got {spec!r}")
    return out


def load_config(run_dir: Path) -> SimConfig | None:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        known = {f.name for f in fields(SimConfig)}
        return SimConfig(**{k: v for k, v in doc.items() if k in known})
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable simulation config ({exc}); use a new --out folder") from exc


def save_or_check_config(run_dir: Path, cfg: SimConfig) -> SimConfig:
    """First start: write the config. Later starts: the same run must be asked for; returns the config to use."""
    old = load_config(run_dir)
    if old is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / (CONFIG_FILE + ".tmp")
        tmp.write_text(cfg.to_json())
        tmp.replace(run_dir / CONFIG_FILE)
        return cfg
    a, b = asdict(old), asdict(cfg)
    diff = sorted(k for k in a if k not in _FREE_ON_RESUME and a[k] != b.get(k))
    if diff:
        shown = ", ".join(f"{k}: {a[k]!r} here vs {b.get(k)!r} asked" for k in diff)
        raise ValueError(
            f"{run_dir} holds another simulation ({shown}); resume with the same options or use a new --out"
        )
    old.workers = cfg.workers
    return old
