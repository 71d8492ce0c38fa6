"""Schema migrations with Alembic (``cloud_api/migrations``): the service brings its database to the code's schema
when it starts, and refuses to start against a database that a newer version has migrated further.

Three cases when a service starts (:func:`migrate`):

- a new, empty database: every revision runs, from the first;
- a database that the service made before it had migrations (``metadata.create_all``, no ``alembic_version``
  table): revision 0001 is that schema, so it is stamped — after checking that the tables match it column for column,
  since stamping a different schema would hide the difference — and later revisions run;
- a database at a revision the code does not know: it was migrated by a newer version, whose data this code could
  misread; the service refuses with :class:`SchemaError` instead of touching it.

On PostgreSQL several workers may start at once; one migrates at a time, under a transaction-scoped advisory lock,
and the others find the schema at head when they get the lock.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import OperationalError

from cloud_api.db import make_engine, metadata

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
FIRST_REVISION = "0001"
MIGRATION_LOCK = 0x43_6F_6F_70  # pg_advisory_xact_lock key: one worker migrates at a time


class SchemaError(ValueError):
    """The database cannot be used by this version of the service: unreachable, or at a schema it cannot use (a
    one-line error for the operator)."""


def open_database(url: str, synchronous: str = "NORMAL") -> Engine:
    """The service's engine, its schema at head; an unreachable database is a :class:`SchemaError` naming it."""
    engine = make_engine(url, synchronous)
    try:
        migrate(engine)
    except OperationalError as exc:
        engine.dispose()
        where = engine.url.render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise SchemaError(f"cannot use the database {where}: {reason}") from exc
    except BaseException:
        engine.dispose()
        raise
    return engine


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the cloud's migrations, without an alembic.ini: the script folder ships inside the
    package, and migrations run on the service's own connection."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "cloud_api/migrations holds no revision"
    return head


def current_revision(connection: Connection) -> str | None:
    """The database's revision (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def migrate(engine: Engine) -> str:
    """Bring the database to :func:`head_revision` (see the module docstring); returns the revision it is at."""
    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    where = engine.url.render_as_string(hide_password=True)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        current = current_revision(conn)
        if current is not None and current not in known:
            raise SchemaError(
                f"the database {where} is at schema revision {current!r}, which this version of cooperllm does not "
                f"know (its newest is {script.get_current_head()!r}): a newer version migrated it; run that version, "
                "or restore the backup taken before the upgrade"
            )
        if current is None and inspect(conn).has_table("runs"):
            _stamp_unversioned(conn, where, str(script.get_current_head()))
        command.upgrade(alembic_config(conn), "head")
        now = current_revision(conn)
    if now != current:
        log.info("database %s migrated from schema revision %s to %s", where, current, now)
    return str(now)


def _stamp_unversioned(conn: Connection, where: str, head: str) -> None:
    """Mark a database made before migrations as revision 0001, after checking that its tables are that schema."""
    if head != FIRST_REVISION:  # compare against 0001's schema, not the head's: upgrade to 0001 alone first
        raise SchemaError(
            f"the database {where} predates schema migrations and this version's schema has moved on since "
            f"(head {head!r}): start it once with the version that introduced migrations, then with this one"
        )
    diff = compare_metadata(MigrationContext.configure(conn), metadata)
    if diff:
        raise SchemaError(
            f"the database {where} predates schema migrations and its tables differ from revision "
            f"{FIRST_REVISION} ({len(diff)} differences, the first: {diff[0]!r}): it was not made by cooperllm, "
            "or by a version before the schema was fixed; start from a new database"
        )
    command.stamp(alembic_config(conn), FIRST_REVISION)
    log.info("database %s predates migrations: stamped as schema revision %s", where, FIRST_REVISION)
