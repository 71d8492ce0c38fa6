"""What one simulation is: its options, their defaults per strategy, the cloud's RunConfig, and the run folder's copy.

:class:`SimConfig` is the one typed definition of ``cooperllm simulate``'s options: the command's parser is generated
from its fields (:func:`cooperllm.config_fields.add_config_options`), and so is the recorded command line. The fields
it shares with the cloud's run (ε, α, λ, η, m, …) are :class:`RunConfig`'s fields under the same names: their
defaults, bounds and help come from RunConfig; where the simulation deliberately defaults otherwise, it is written
in :data:`SIMULATION_DEFAULTS` and nowhere else.

The resolved config is written to ``RUN_DIR/config.json`` on the first start; a later start on the same folder must
ask for the same run (a different one is refused with the differing fields named), which is what makes a resumed
run the same experiment.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cooperllm.config_fields import config_field, model_fields_of, option_flag, owner_defaults
from cooperllm.data import parse_partition, shared_data_dir
from cooperllm.link import LinkSpec
from cooperllm.manifest import read_manifest
from cooperllm.models import DEFAULT_MODEL
from cooperllm.protocol import RunConfig
from cooperllm.strategies import Upload, get_strategy
from cooperllm.tasks import SST2_LABEL_NAMES
from cooperllm.zgr import ALL_BLOCKS
from cooperllm_app.simulation.attacker import ATTACKS
from cooperllm_app.simulation.engines import ENGINES

CONFIG_FILE = "config.json"
# Options that change how fast a run goes, not what it computes: a resumed run uses this start's values.
_HOW_FAST = ("workers", "engine", "ray_address", "ray_memory_mb", "cloud_host")
_FREE_ON_RESUME = (*_HOW_FAST, "command")

# Where the simulation's default for a RunConfig field is not RunConfig's, on purpose. Every other shared field
# defaults to RunConfig's value (tests/test_config_options.py holds every command to this).
SIMULATION_DEFAULTS: dict[str, Any] = {
    "eta": None,  # per strategy, filled in by SimConfig.resolved(): the strategy's default_eta
    "deadline_s": 21600.0,  # a safety net only: a simulated round closes when its K devices have reported
}


def run_field(name: str, **option: Any) -> Any:
    """SimConfig's copy of RunConfig's field ``name``: RunConfig's default (or SIMULATION_DEFAULTS'), help, bounds."""
    if name in SIMULATION_DEFAULTS:
        option["default"] = SIMULATION_DEFAULTS[name]
    return config_field(of=(RunConfig, name), **option)


def parse_classes(text: str) -> list[int]:
    """``--public-classes``: ``'1'`` or ``'0,1'`` → class indices."""
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"class indices like '1' or '0,1', got {text!r}") from None


@dataclass
class SimConfig:
    artifacts: str = config_field(help="exported artifact folder (cooperllm export)")
    clients: int = config_field(20, help="simulated devices N")
    per_round: int = config_field(5, help="devices per round K, the round's quorum")
    rounds: int = run_field("rounds")
    strategy: str = run_field("strategy")
    partition: str = config_field("iid", help="iid or dirichlet:BETA label skew")
    link: str = config_field("10mbit:50ms", help="emulated device link RATE[/UP][:LAT[:JITTER[:LOSS]]]")
    backend: str | None = config_field(  # default: the manifest's first graph
        None, help="device graph backend", choices=("onnx", "native", "executorch", "eager")
    )
    model: str | None = config_field(  # HF model the artifacts came from (cloud, bp devices)
        None, help="HF model folder the artifacts came from", unset="the manifest's, smollm2"
    )
    seed: int = run_field(
        "seed", help="seed of the partition, the device draw and the run (perturbations, minibatches)"
    )
    train_data: str = config_field("", help="devices' private data", unset="../shared/data/sst2/train.tsv")
    public_data: str = config_field("", help="cloud's public data", unset="../shared/data/sst2/dev.tsv")
    public_n: int = config_field(2000, help="public examples the cloud samples")
    public_classes: list[int] | None = config_field(  # noqa: RUF009 - config_field is dataclasses.field
        None, help="shifted public data: keep only these classes, e.g. '1'", unset="all classes", parse=parse_classes
    )
    test_data: str = config_field("", help="evaluation data", unset="../shared/data/sst2/test.tsv")
    eval_limit: int | None = config_field(
        None, help="score the rounds in between on the first N test examples only (curves)"
    )
    final_eval_limit: int | None = config_field(
        None, help="score θ₀ and the last round on the first N test examples", unset="all of them"
    )
    eval_every: int = config_field(1, help="score θ every N rounds and after the last")
    local_steps: int = run_field("local_steps")
    # RunConfig.blocks in words: each = None, all = [-1], 0,3,5 = a list. The simulation defaults to all (RunConfig:
    # each): one measurement over θ per step is what the demo, the study and the robustness runs were validated with,
    # and each costs a report (two forwards) per block and step, 31 blocks for SmolLM2 seq-cls.
    blocks: str = config_field("all", help="each (a report per block), all (one over θ), or 0,3,5")
    epsilon: float = run_field("epsilon")
    lam: float | str = run_field("lam")
    lam_max: float = run_field("lam_max")
    rectifier: str = run_field("rectifier")
    budget: str = run_field("budget")
    eta: float | None = run_field("eta", unset="per strategy: 1e-2; bp 1, FedAvg of Δθ")
    eta_zo: float = run_field("eta_zo")
    clip_k: float | None = run_field("clip_k")
    guidance_rank: int = run_field("guidance_rank", flag="--rank")
    window: int = run_field("window")
    grad_batches: int = run_field("grad_batches")
    grad_batch_size: int = run_field("grad_batch_size")
    local_lr: float | None = config_field(None, help="device learning rate", unset="0 for ZO; bp: AdamW 1e-3")
    guidance_codec: str = config_field("dtc", help="guidance frames: dtc or plain f32", choices=("dtc", "plain"))
    adapter_download: str = config_field(
        "delta",
        help="θ after missed rounds: delta (lossless, from the θ a device holds) or full",
        choices=("delta", "full"),
    )
    deadline_s: float = run_field(
        "deadline_s", flag="--deadline", help="round deadline, s (a safety net: a round closes when K reported)"
    )
    attack: str = config_field(
        "none",
        help="robustness study: device 0 is malicious and uploads every scalar as 1e6 (scalar) or 100x its quota of "
        "reports (flood), or is drawn but sends nothing while rounds close on the other K-1 (absent, the reference "
        "arm); docs/SECURITY.md",
        choices=ATTACKS,
    )
    workers: int | None = config_field(None, help="device workers (processes or Ray actors)", unset="min(K, CPU cores)")
    engine: str = config_field(
        "process",
        help="where the device workers run: processes on this machine, or Ray actors (docs/SIMULATION.md)",
        choices=ENGINES,
    )
    ray_address: str | None = config_field(
        None, help="--engine ray: join this Ray cluster (HOST:PORT)", unset="a local Ray instance"
    )
    cloud_host: str = config_field(
        "127.0.0.1",
        help="address the simulation's cloud listens on: one every Ray node reaches, for a cluster of several nodes",
    )
    ray_memory_mb: int | None = config_field(
        None, help="--engine ray: memory each device worker asks Ray for, MB", unset="no request"
    )
    command: str = ""  # the command line that asked for this run (recorded, not an option)

    def resolved(self) -> SimConfig:
        """Defaults filled in (paths absolute, per-strategy η and local lr, worker count) and every field checked."""
        data = shared_data_dir() / "sst2"
        c = SimConfig(**asdict(self))
        c.artifacts = str(Path(c.artifacts).resolve())
        if not (c.train_data and c.public_data and c.test_data):
            _check_sst2_defaults(c)
        c.train_data = str(Path(c.train_data or data / "train.tsv").resolve())
        c.public_data = str(Path(c.public_data or data / "dev.tsv").resolve())
        c.test_data = str(Path(c.test_data or data / "test.tsv").resolve())
        if c.eta is None:
            c.eta = get_strategy(c.strategy).default_eta
        if c.local_lr is None:
            c.local_lr = get_strategy(c.strategy).default_local_lr
        if c.workers is None:
            c.workers = max(1, min(c.per_round, os.cpu_count() or 1))
        if isinstance(c.lam, str) and c.lam != "auto":
            c.lam = float(c.lam)
        c.check()
        c.model = _model_of(c)
        return c

    def check(self) -> None:

        get_strategy(self.strategy)  # an unknown name is refused with the registry's list
        if self.clients < 1 or not 1 <= self.per_round <= self.clients:
            raise ValueError(f"need 1 <= per-round ({self.per_round}) <= clients ({self.clients})")
        if self.rounds < 1 or self.local_steps < 1 or self.eval_every < 1:
            raise ValueError("rounds, local steps and eval-every must be >= 1")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.cloud_host in ("0.0.0.0", "::", ""):
            raise ValueError(f"--cloud-host must be an address the devices can connect to, not {self.cloud_host!r}")
        if self.engine != "ray" and (self.ray_address or self.ray_memory_mb):
            raise ValueError("--ray-address and --ray-memory-mb are options of --engine ray")
        # above ~8.7e8 MB Ray's fixed-point resource count overflows and the request is silently granted anywhere
        if self.ray_memory_mb is not None and not 1 <= self.ray_memory_mb <= 10**8:
            raise ValueError(f"--ray-memory-mb must be between 1 and 1e8, got {self.ray_memory_mb}")
        if self.guidance_codec not in ("dtc", "plain"):
            raise ValueError(f"guidance codec must be dtc or plain, got {self.guidance_codec!r}")
        if self.adapter_download not in ("delta", "full"):
            raise ValueError(f"adapter download must be delta or full, got {self.adapter_download!r}")
        if self.attack not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {self.attack!r}")
        if self.attack == "absent" and not 2 <= self.per_round == self.clients:
            # with K < N a round without device 0 would close on whichever K − 1 of its K devices came first
            raise ValueError("--attack absent needs device 0 in every round: --per-round equal to --clients, 2 or more")
        if self.attack != "none" and get_strategy(self.strategy).upload is not Upload.REPORTS:
            raise ValueError(f"--attack {self.attack} stands in for a ZO device: strategy {self.strategy!r} sends none")
        parse_partition(self.partition)
        LinkSpec.parse(self.link)
        block_list(self.blocks)
        self._check_run_fields()
        for name in ("artifacts", "train_data", "public_data", "test_data"):
            path = getattr(self, name)
            if path and not Path(path).exists():
                raise FileNotFoundError(f"{name.replace('_', ' ')}: {path} does not exist")

    def _check_run_fields(self) -> None:
        """The run's fields within RunConfig's bounds now, not when the cloud is asked for the run after start-up."""
        given = {k: v for k, v in self._run_fields().items() if v is not None}
        try:
            RunConfig(**given, blocks=block_list(self.blocks))
        except ValidationError as exc:
            said = "; ".join(
                f"{option_flag(SimConfig, str(e['loc'][0])) if e['loc'] else 'run'}: "
                + e["msg"].removeprefix("Value error, ")
                for e in exc.errors()
            )
            raise ValueError(f"invalid run settings: {said}") from None

    def _run_fields(self) -> dict[str, Any]:
        """This config's values of the fields it shares with RunConfig, by RunConfig's names."""
        return {model_name: getattr(self, name) for name, (_, model_name) in model_fields_of(SimConfig).items()}

    def run_config(self, batch_size: int) -> RunConfig:
        """The cloud's run: K devices per round make the quorum (and the minimum), so a round waits for all K; K − 1
        with ``--attack absent``, whose device 0 sends nothing."""
        quorum = self.per_round - (1 if self.attack == "absent" else 0)
        return RunConfig(
            **self._run_fields(),
            blocks=block_list(self.blocks),
            batch_size=batch_size,
            quorum=quorum,
            min_devices=quorum,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def command_line(cfg: SimConfig, out: str | os.PathLike) -> str:
    """The ``cooperllm simulate`` command that asks for this run: every option that differs from its default."""

    default = owner_defaults(SimConfig)
    parts = ["cooperllm", "simulate", "--artifacts", cfg.artifacts, "--out", str(out)]
    for f in fields(SimConfig):
        value = getattr(cfg, f.name)
        if f.name in ("artifacts", "command") or value == default.get(f.name) or value is None:
            continue
        if f.name == "public_classes":
            value = ",".join(str(c) for c in value)
        parts += [option_flag(SimConfig, f.name), str(value)]
    return shlex.join(parts)


def _check_sst2_defaults(c: SimConfig) -> None:
    """The data files default to SST-2's, which only an SST-2 task can read: any other task names its own."""
    task = read_manifest(c.artifacts, verify_hashes=False).task
    if tuple(task.label_names) != SST2_LABEL_NAMES:
        given = {"--train-data": c.train_data, "--public-data": c.public_data, "--test-data": c.test_data}
        unset = [flag for flag, value in given.items() if not value]
        raise ValueError(
            f"the artifacts' task has the classes {list(task.label_names)}, not SST-2's: pass {', '.join(unset)} "
            "(the data files default to SST-2's)"
        )


def _model_of(c: SimConfig) -> str:
    """The model the cloud (and bp devices) load: --model, else the one the manifest names (the default model, or a
    folder that still exists)."""

    if c.model is not None:
        return str(Path(c.model).resolve()) if Path(c.model).is_dir() else c.model
    name = read_manifest(c.artifacts, verify_hashes=False).model_name
    if name != DEFAULT_MODEL and not Path(name).is_dir():
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
    for name in _HOW_FAST:
        setattr(old, name, getattr(cfg, name))
    return old
