"""One service per database (cloud_api.service_lock): while a service runs on a database, a second one is refused
with one line — on SQLite and on a real PostgreSQL server — and a stopped service frees it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from cloud_api.db import make_engine
from cloud_api.schema import open_database
from cloud_api.service_lock import DatabaseInUse, ServiceLock


def test_a_second_service_on_a_database_in_use_is_refused_with_one_line(live, tmp_path):
    url = live.settings.database_url
    engine = make_engine(url)
    try:
        with pytest.raises(DatabaseInUse, match="another cooperllm service is using the database"):
            ServiceLock(engine).acquire()
    finally:
        engine.dispose()
    serve = subprocess.run(
        [sys.executable, "-m", "cooperllm_app.cli", "serve", "--database-url", url, "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert serve.returncode == 2, serve.stderr
    lines = serve.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: another cooperllm service is using the database")
    assert live.admin().health().status == "ok"  # the running service is untouched


HOLDER = """
import sys, time
from cloud_api.db import make_engine
from cloud_api.service_lock import ServiceLock
ServiceLock(make_engine(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_released_lock_or_a_killed_holder_frees_the_database(database_url, request, tmp_path):
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path}/free.db"
    else:
        url = request.getfixturevalue("postgres").database("lock")
    engine = open_database(url)
    try:
        held = ServiceLock(engine).acquire()
        with pytest.raises(DatabaseInUse):
            ServiceLock(engine).acquire()
        held.release()
        ServiceLock(engine).acquire().release()  # released: free again
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, url], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            with pytest.raises(DatabaseInUse):
                ServiceLock(engine).acquire()
        finally:
            holder.kill()  # SIGKILL: no release, as when a service dies
            holder.wait(timeout=30)
        deadline = time.monotonic() + 30  # PostgreSQL notices the dead backend's closed socket at once, or nearly
        while True:
            try:
                ServiceLock(engine).acquire().release()
                break
            except DatabaseInUse:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        engine.dispose()


@pytest.mark.integration
def test_shared_workers_run_together_but_never_beside_a_service_on_its_own(postgres):
    engine = open_database(postgres.database("shared"))
    try:
        workers = [ServiceLock(engine, shared=True).acquire() for _ in range(3)]  # any number of shared workers
        with pytest.raises(DatabaseInUse, match="another cooperllm service"):
            ServiceLock(engine).acquire()
        for w in workers:
            w.release()
        alone = ServiceLock(engine).acquire()
        with pytest.raises(DatabaseInUse, match="a cooperllm service that does not share it"):
            ServiceLock(engine, shared=True).acquire()
        alone.release()
    finally:
        engine.dispose()


def test_a_shared_database_must_be_postgresql(tmp_path):
    from cloud_api.settings import Settings

    with pytest.raises(ValueError, match="shared_database needs a PostgreSQL database_url"):
        Settings(state_dir=tmp_path, shared_database=True)
    with pytest.raises(ValueError, match="fault_pause stage"):
        _ = Settings(state_dir=tmp_path, env="test", admin_token="x" * 16, fault_pause="nowhere:1").fault_pause_stage
    assert Settings(state_dir=tmp_path, fault_pause="closing:5").fault_pause_stage is None  # development: never
