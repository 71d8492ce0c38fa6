"""``cooperllm bench cloud`` on both backends: one SQLite process beside 1 and 2 workers sharing a fresh PostgreSQL
database, every database checked for lost and duplicated reports (the figures themselves are docs/DEPLOY.md's)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.integration


def test_bench_cloud_compares_sqlite_with_postgresql_workers_and_loses_nothing(postgres):
    url = postgres.database("bench")
    options = ["--workers", "1", "2", "--devices", "6", "--duration", "1", "--devices-per-connection", "2", "--json"]
    out = subprocess.run(
        [sys.executable, "-m", "cooperllm_app.cli", "bench", "cloud", "--database-url", url, *options],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = json.loads(out.stdout)["runs"]
    assert [(r["deployment"], r["devices"]) for r in runs] == [
        ("SQLite, 1 worker", 6),
        ("PostgreSQL, 1 worker", 6),
        ("PostgreSQL, 2 workers", 6),
    ]
    for r in runs:
        assert r["acked_reports"] > 0 and r["db_reports"] == r["acked_reports"]
        assert (r["lost_reports"], r["duplicated_reports"]) == (0, 0)
        assert r["resent_batches_answered_as_replay"] == r["acked_batches"]
    engine = create_engine(url)  # the databases the bench made are gone
    try:
        with engine.connect() as conn:
            left = conn.execute(text("SELECT count(*) FROM pg_database WHERE datname LIKE 'cooperllm_bench_%'"))
            assert left.scalar_one() == 0
    finally:
        engine.dispose()


def test_bench_cloud_refuses_workers_without_postgresql():
    out = subprocess.run(
        [sys.executable, "-m", "cooperllm_app.cli", "bench", "cloud", "--workers", "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --workers needs --database-url: several workers share a PostgreSQL database"
