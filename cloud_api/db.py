"""Storage schema (SQLAlchemy Core, portable SQL): SQLite in WAL mode by default, PostgreSQL by URL.

Every accepted report batch is one transaction committed before the HTTP answer; uniqueness constraints are the
last line against double counting (idempotency key per device; (run, round, device, seed, block, step) per report).
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    make_url,
)

metadata = MetaData()

devices = Table(
    "devices",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
)

# single-use (or count-limited) enrolment tokens issued by an admin: one leaked token enrols at most ``uses`` devices
enrolment_tokens = Table(
    "enrolment_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("label", String(128), nullable=False),
    Column("uses_left", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("config", Text, nullable=False),  # RunConfig JSON
    Column("status", String(16), nullable=False),  # running | finished | failed | stopped
    Column("current_round", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("failure", Text),
)

rounds = Table(
    "rounds",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    Column("round", Integer, primary_key=True),
    Column("status", String(16), nullable=False),  # open | closed | failed
    Column("opened_at", Float, nullable=False),
    Column("deadline", Float, nullable=False),
    Column("closed_at", Float),
    Column("extensions", Integer, nullable=False, default=0),
    Column("n_reports", Integer, nullable=False, default=0),
    Column("n_devices", Integer, nullable=False, default=0),
    Column("lam", Float),  # mean weight λ of the cloud in the round's update (None where the strategy mixes nothing)
    # JSON {"update": [SyncUpdate...], "rectifier": {block: stats}, "state": RectifierState}: the published update a
    # device replays, the rectifier's numbers, and what it carries into the next round
    Column("outcome", Text),
    Column("theta_checksum", String(64), nullable=False),
    Column("theta_checksum_after", String(64)),
    Column("aggregate_s", Float),
    Column("failure", Text),
)

guidance = Table(
    "guidance",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    Column("round", Integer, primary_key=True),
    Column("block", Integer, primary_key=True),
    Column("guidance_id", String(64), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("m", Integer, nullable=False),
    Column("coeffs", Text, nullable=False),  # JSON list of float32 values (exact as float64 text)
    Column("coeff_var", Text),  # JSON list: τ_k², the variance of each c_k over the public minibatches
    Column("frame", LargeBinary, nullable=False),  # the exact bytes devices download
)

rectifier_runs = Table(
    "rectifier_runs",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id"), primary_key=True),
    Column("round", Integer, primary_key=True),  # guidance for this round
    Column("theta_round", Integer, nullable=False),  # θ it was computed at
    Column("seconds", Float, nullable=False),
    Column("backward_passes", Integer, nullable=False),
    Column("window", Integer, nullable=False),
    Column("rank", Integer, nullable=False),
    Column("cloud_var", Float, nullable=False),  # trace of the minibatch-gradient covariance (for λ*)
)

upload_batches = Table(
    "upload_batches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", Integer, ForeignKey("devices.id"), nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    Column("run_id", Integer, nullable=False),
    Column("round", Integer, nullable=False),
    Column("body_sha256", String(64), nullable=False),
    Column("accepted", Integer, nullable=False),
    Column("duplicates", Integer, nullable=False),
    Column("clipped", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("device_id", "idempotency_key", name="uq_batch_key"),
)

reports = Table(
    "reports",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, nullable=False),
    Column("round", Integer, nullable=False),
    Column("device_id", Integer, nullable=False),
    Column("seed", BigInteger, nullable=False),
    Column("block", Integer, nullable=False),
    Column("step", Integer, nullable=False),
    Column("scalar", Float(precision=53), nullable=False),
    Column("n_examples", Integer, nullable=False),
    Column("clipped", Boolean, nullable=False, default=False),
    Column("batch_id", Integer, nullable=False),
    UniqueConstraint("run_id", "round", "device_id", "seed", "block", "step", name="uq_report"),
)

deltas = Table(
    "deltas",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, nullable=False),
    Column("round", Integer, nullable=False),
    Column("device_id", Integer, nullable=False),
    Column("n_examples", Integer, nullable=False),
    Column("frame", LargeBinary, nullable=False),
    Column("batch_id", Integer, nullable=False),
    UniqueConstraint("run_id", "round", "device_id", name="uq_delta"),
)


# PostgreSQL: a statement that runs longer than this is cancelled (a stuck query must not hold a worker's connection
# and the locks it took), and a lock waited for longer than this fails the statement instead of queueing behind it
STATEMENT_TIMEOUT_MS = 30_000
LOCK_TIMEOUT_MS = 10_000


def make_engine(url: str, synchronous: str = "NORMAL") -> Engine:
    """Create the engine (and the SQLite file's folder); SQLite gets WAL, a busy timeout and foreign keys; PostgreSQL
    a connection pool checked before use, and statement and lock timeouts. The schema is the migrations' business
    (cloud_api.schema.open_database)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict = {}
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _private_sqlite_file(Path(parsed.database))
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    elif backend == "postgresql":
        options = f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS}"
        kwargs.update(
            pool_pre_ping=True,
            pool_size=8,
            max_overflow=8,
            connect_args={"connect_timeout": 10, "options": options, "application_name": "cooperllm"},
        )
    else:
        raise ValueError(f"database URL {parsed.render_as_string()!r}: use sqlite:///PATH or postgresql+psycopg://…")
    engine = create_engine(url, **kwargs)
    if backend == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - exercised through every test
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run off the request path (checkpoint_wal)
            cur.close()

    return engine


def _private_sqlite_file(path: Path) -> None:
    """The database file (and its -wal, -shm) readable by the service's user alone: a new file is made 0600 before
    SQLite opens it, since SQLite gives the journal files the database file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists():
            p.chmod(0o600)


def checkpoint_wal(engine: Engine) -> None:
    """Fold the SQLite WAL back into the database (PASSIVE: never waits for or blocks writers); no-op elsewhere."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
