"""The FastAPI application: ``create_app(settings)``; the model, store and round engine load once in ``lifespan``."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from cloud_api.deps import AppState
from cloud_api.engine import RoundEngine
from cloud_api.errors import ServiceError, invalid_request
from cloud_api.middleware import BodyLimitMiddleware, EarlyAuthMiddleware
from cloud_api.model_host import load_model_host
from cloud_api.routers import adapter, admin, devices, health, rounds
from cloud_api.schema import open_database
from cloud_api.security import DeviceRegistry, RateLimiter
from cloud_api.service_lock import ServiceLock
from cloud_api.settings import Settings
from cooperllm.protocol import API_PREFIX, ERRORS

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):

        settings.state_dir.mkdir(parents=True, exist_ok=True)
        settings.state_dir.chmod(0o700)  # adapters, guidance windows and the seed key are the operator's alone
        db_engine = open_database(settings.database_url, settings.sqlite_synchronous)
        service_lock = ServiceLock(db_engine, shared=settings.shared_database)
        engine = None
        try:
            service_lock.acquire()  # one service per database (cloud_api.service_lock)
            host = load_model_host(settings)
            engine = RoundEngine(
                host,
                db_engine,
                settings.state_dir,
                settings.tick_s,
                lossless_guidance=settings.guidance_codec == "plain",
                shared=settings.shared_database,
                fault_pause=settings.fault_pause_stage,
            )
            engine.start()
            app.state.cooper = AppState(
                settings,
                host,
                engine,
                DeviceRegistry(db_engine),
                RateLimiter(settings.rate_limit_per_s, settings.rate_burst),
            )
            log.info("cloud service ready (env=%s, db=%s)", settings.env, db_engine.url.render_as_string())
            yield
        finally:
            if engine is not None:
                engine.stop()
            service_lock.release()
            db_engine.dispose()

    docs = settings.docs_enabled
    app = FastAPI(
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        title="CooperLLM cloud",
        version="1",
        description="Federated fine-tuning rounds: enrolment, guidance, ZO report uploads, aggregation by seed "
        "replay, model sync, adapter and PEFT export.",
        lifespan=lifespan,
    )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(invalid_request(exc.errors()), status_code=422)

    @app.exception_handler(OperationalError)
    async def _database_busy(_: Request, exc: OperationalError) -> JSONResponse:
        # a lock held past lock_timeout (a round being closed by the leader, an operator's lock), a statement past
        # statement_timeout, or a database restarting: nothing was counted, and a retry is safe (idempotency keys)
        log.warning("database busy: %s", str(exc.orig).strip().splitlines()[0] if exc.orig else exc)
        return JSONResponse({"detail": ERRORS["database_busy"]}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    for r in (devices.router, rounds.router, adapter.router, admin.router, health.router):
        app.include_router(r, prefix=API_PREFIX)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, read_timeout_s=settings.body_timeout_s)
    app.add_middleware(EarlyAuthMiddleware)  # added last, so it runs first: no body is read for a wrong token
    return app


MAX_HEADER_BYTES = 64 << 10


def server_options(settings: Settings) -> dict:
    """uvicorn.Config options for the service: the HTTP parser (h11 by default, with a cap on a request's head,
    headers included), and X-Forwarded-For believed only from ``settings.trusted_proxies`` (by default from no one,
    so a client cannot pick the address its rate limits are keyed by)."""
    proxies = settings.trusted_proxies.strip()
    return {
        "http": settings.http_parser,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies or "",
        "log_level": "warning",
        "access_log": False,
    }
