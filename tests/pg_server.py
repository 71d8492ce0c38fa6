"""A real PostgreSQL server for the tests: ``initdb`` into a fresh folder, ``postgres`` on 127.0.0.1 at a free port,
one database per test module, stopped and removed at the end of the session.

The server binaries come from the system's PostgreSQL (Debian's ``postgresql`` package; ``make integration-deps``
installs it where it is missing). PostgreSQL refuses to run as root, so under root the server runs as the ``postgres``
user the package creates, in a folder under /tmp that it owns. Durability settings are relaxed (fsync off): a test
server holds nothing worth keeping, and the kill tests kill the service, not the database.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SUPERUSER = "cooper"


def bindir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (holding initdb and postgres), None when there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class PostgresServer:
    """One server for the test session; :meth:`database` makes an empty database and returns its SQLAlchemy URL."""

    def __init__(self) -> None:
        bins = bindir()
        if bins is None:
            raise RuntimeError("no PostgreSQL server binaries (initdb): run `make integration-deps` (apt postgresql)")
        self.bins = bins
        self.root = Path(tempfile.mkdtemp(prefix="cooperllm-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse root
            os.chown(self.root, *_ids("postgres"))
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._names = itertools.count()
        self._proc: subprocess.Popen | None = None

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self._as_user, *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        self._run(str(self.bins / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "--no-sync")
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the server's whole life
        if self._as_user:
            os.chown(self.root / "server.log", *_ids("postgres"))
        self._proc = subprocess.Popen(
            [
                *self._as_user,
                str(self.bins / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.root),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(self._dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if (self._proc is not None and self._proc.poll() is not None) or time.monotonic() > deadline:
                    tail = (self.root / "server.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"PostgreSQL did not start:\n{tail}") from None
                time.sleep(0.1)

    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

    def database(self, prefix: str = "t") -> str:
        """A new, empty database; its ``postgresql+psycopg://`` URL."""
        import psycopg

        name = f"{prefix}{next(self._names)}"
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._run(str(self.bins / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
            self._proc.wait(timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
