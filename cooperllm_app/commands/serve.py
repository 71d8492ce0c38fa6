"""``cooperllm serve``: the cloud service under uvicorn, with settings from flags or the environment.

Cheap to import: FastAPI, torch and the model load only when a command runs.
"""

from __future__ import annotations

import argparse
import os
import socket
from contextlib import asynccontextmanager

from cloud_api.settings import Settings
from cooperllm.protocol import RunConfig
from cooperllm_app.serve_process import READY_PREFIX


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the cloud service (rounds, aggregation, backprop rectifier) under uvicorn",
        description="Serve API v1. Every option can also come from the environment (COOPERLLM_<NAME>); secrets "
        "(COOPERLLM_ADMIN_TOKEN, COOPERLLM_ENROLMENT_KEY) only from the environment, and outside "
        "--env development the service refuses to start with the default ones.",
    )
    p.add_argument("--model", help="'smollm2' or a local HF causal-LM folder (default smollm2)")
    p.add_argument("--artifacts", help="exported artifact folder (manifest.json): layout, θ₀ and hashes to advertise")
    p.add_argument(
        "--public-data",
        help="public labelled data for the rectifier (default ../shared/data/sst2/dev.tsv, the public split; "
        "train.tsv is the devices' private data)",
    )
    p.add_argument("--public-n", type=int, help="public examples to sample (default 2000)")
    p.add_argument(
        "--database-url",
        help="sqlite:///PATH or postgresql+psycopg://USER@HOST/DB (default sqlite:///STATE_DIR/cooperllm.db); the "
        "schema is migrated to this version's on start (docs/DEPLOY.md)",
    )
    p.add_argument(
        "--shared-database",
        action="store_const",
        const=True,
        help="one of several workers on the same PostgreSQL database and state folder: uploads are counted in the "
        "database, and an elected leader closes rounds (start each worker with the same options; docs/DEPLOY.md)",
    )
    p.add_argument(
        "--reuse-port",
        action="store_true",
        help="bind with SO_REUSEPORT, so several workers on this machine listen on one port and the kernel spreads "
        "connections between them",
    )
    p.add_argument(
        "--state-dir",
        help="folder for all of the service's state: its SQLite database (unless --database-url), adapter versions, "
        "gradient windows, seed key (default runs/cloud)",
    )
    p.add_argument("--env", choices=["development", "production", "test"], help="deployment environment")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument(
        "--seq-len", type=int, help="tokens per public example (default 64; the manifest's with --artifacts)"
    )
    p.add_argument("--torch-threads", type=int, help="threads for the rectifier's backprop (default 1)")
    p.add_argument(
        "--guidance-codec",
        choices=["dtc", "plain"],
        help="wire format of guidance frames: dtc (adaptive quantization, default) or plain lossless float32",
    )
    p.add_argument("--max-body-bytes", type=int, help="request body cap, compressed and decompressed (default 8 MiB)")
    p.add_argument("--rate-limit", dest="rate_limit_per_s", type=float, help="requests/s per device (default 50)")
    p.add_argument("--rate-burst", type=int, help="burst per device (default 100)")
    p.add_argument(
        "--create-run",
        metavar="JSON",
        help="start a run at startup if none is running: RunConfig JSON, fields left out take RunConfig's defaults "
        "(its schema, with each field's bounds and meaning, is in the OpenAPI document at /docs)",
    )
    p.set_defaults(func=serve)


_SETTING_ARGS = (
    "model",
    "artifacts",
    "public_data",
    "public_n",
    "database_url",
    "shared_database",
    "state_dir",
    "env",
    "seq_len",
    "torch_threads",
    "guidance_codec",
    "max_body_bytes",
    "rate_limit_per_s",
    "rate_burst",
)


def serve(args: argparse.Namespace) -> int:

    import uvicorn  # deferred: loads the web stack (heavy; not needed at import)

    # deferred: loads sqlalchemy, the web stack (heavy; not needed at import)
    from cloud_api.app import create_app, server_options
    from cloud_api.model_host import check_settings_against_manifest
    from cloud_api.schema import open_database
    from cloud_api.service_lock import ServiceLock

    overrides = {k: getattr(args, k) for k in _SETTING_ARGS if getattr(args, k, None) is not None}
    settings = Settings(**overrides)
    # here, not at startup: a one-line error rather than uvicorn's (the lifespan migrates again, a no-op at head)
    check_settings_against_manifest(settings)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    database = open_database(settings.database_url, settings.sqlite_synchronous)
    try:
        # another service on it: one line now, not uvicorn's traceback
        ServiceLock(database, shared=settings.shared_database).acquire().release()
    finally:
        database.dispose()
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]

    docs = " (docs at /docs)" if settings.docs_enabled else ""
    _wrap_lifespan(app, args.create_run, f"{READY_PREFIX}http://{args.host}:{port}/v1{docs}")
    config = uvicorn.Config(app, **server_options(settings), timeout_graceful_shutdown=5)
    # listening before the lifespan runs: uvicorn would listen only after it, so a client that connects as soon as the
    # ready line is printed (the simulation, the benchmarks) could find the port bound but refusing; now it is queued
    sock.listen(config.backlog)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _wrap_lifespan(app, create_run: str | None, ready_line: str) -> None:
    """After the model has loaded: optionally start a run (when none is running), then announce readiness."""

    cfg = RunConfig.model_validate_json(create_run) if create_run else None
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a):
        async with original(a):
            eng = a.state.cooper.engine
            if cfg is not None and eng.run_status != "running":
                eng.create_run(cfg)
            print(ready_line, flush=True)
            yield

    app.router.lifespan_context = lifespan


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
