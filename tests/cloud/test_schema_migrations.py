"""Schema migrations (cloud_api.schema, Alembic): a new database is migrated to head, a database made before
migrations is stamped once its tables are checked, and a database a newer version migrated is refused with one line —
on SQLite and on a real PostgreSQL server (the integration tier's ``database_url``)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, inspect, text

from cloud_api import db
from cloud_api.schema import FIRST_REVISION, SchemaError, current_revision, head_revision, migrate, open_database


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return current_revision(conn)
    finally:
        engine.dispose()


@pytest.fixture
def empty_url(database_url: str, request: pytest.FixtureRequest, tmp_path) -> str:
    """A database of the module's backend that no test has touched yet (the module's own is shared)."""
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path}/fresh.db"
    return request.getfixturevalue("postgres").database("m")


def test_a_new_database_is_migrated_to_head_and_a_second_start_changes_nothing(empty_url):
    engine = open_database(empty_url)
    try:
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision()
            assert set(inspect(conn).get_table_names()) >= {t.name for t in db.metadata.sorted_tables}
        assert migrate(engine) == head_revision()  # at head: nothing to do
    finally:
        engine.dispose()


def test_a_database_made_before_migrations_is_stamped_after_its_tables_are_checked(empty_url):
    engine = create_engine(empty_url)
    db.metadata.create_all(engine)  # what the service did before it had migrations
    with engine.begin() as conn:
        conn.execute(db.devices.insert().values(name="kept", token_hash="h" * 64, created_at=1.0, revoked=False))
    engine.dispose()
    assert _revision(empty_url) is None
    engine = open_database(empty_url)
    try:
        with engine.connect() as conn:
            assert current_revision(conn) == FIRST_REVISION == head_revision()
            assert conn.execute(text("SELECT name FROM devices")).scalar_one() == "kept"  # nothing lost
    finally:
        engine.dispose()


def test_a_database_with_other_tables_is_not_stamped(empty_url):
    engine = create_engine(empty_url)
    Table("runs", MetaData(), Column("id", Integer, primary_key=True)).create(engine)  # not the service's runs
    engine.dispose()
    with pytest.raises(SchemaError, match="differ from revision 0001"):
        open_database(empty_url)
    assert _revision(empty_url) is None  # left as it was


def test_a_database_migrated_by_a_newer_version_is_refused_with_one_line(empty_url, tmp_path):
    open_database(empty_url).dispose()
    engine = create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dcafe0002'"))
    engine.dispose()
    with pytest.raises(SchemaError, match="'f00dcafe0002', which this version of cooperllm does not know"):
        open_database(empty_url)
    assert _revision(empty_url) == "f00dcafe0002"  # untouched

    serve = subprocess.run(
        [
            sys.executable,
            "-m",
            "cooperllm_app.cli",
            "serve",
            "--database-url",
            empty_url,
            "--state-dir",
            str(tmp_path / "state"),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert serve.returncode == 2, serve.stderr
    lines = serve.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the database") and "newer version" in lines[0]


def test_an_unreachable_database_is_one_clear_error(tmp_path):
    with pytest.raises(SchemaError, match="cannot use the database postgresql"):
        open_database("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(ValueError, match="use sqlite:///PATH or postgresql"):
        open_database("mysql://somewhere/db")
