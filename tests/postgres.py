"""A throwaway PostgreSQL server for the test session (the Debian `postgresql` package's binaries).

The transcript store runs on PostgreSQL in clusters; SQLite alone would hide
dialect and locking differences, so the suite runs the store on a live server.
The server is tuned for speed, not durability (fsync off): its data dies with the session.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import sqlalchemy as sa

# The OS user PostgreSQL runs as when the tests run as root (postgres refuses root);
# the Debian package creates it.
SERVER_USER = "postgres"
# Seconds pg_ctl waits for the server to accept connections (it takes well under one).
START_TIMEOUT_S = 30
# Every test database gets its own store engines; each engine pools up to 15 connections.
MAX_CONNECTIONS = 300


class PostgresMissing(RuntimeError):
    """The server binaries or the Python driver are not installed."""


def bin_dir() -> Path:
    """The directory of initdb/pg_ctl (newest installed major version), or PostgresMissing."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        raise PostgresMissing("PostgreSQL server binaries not found under /usr/lib/postgresql: run `make sysdeps`")
    try:
        import psycopg  # noqa: F401  (the store's driver for postgresql+psycopg:// URLs)
    except ImportError as err:
        raise PostgresMissing("psycopg is not installed: run `make venv` (the dev extra)") from err
    return Path(found[-1]).parent


def _free_port() -> int:
    # The port is free when asked; nothing else on a test machine races for it in the next second.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One server on 127.0.0.1 (TCP on a free port, its Unix socket in its own temp dir)."""

    def __init__(self) -> None:
        self.bin = bin_dir()
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        # Not pytest's tmp_path: that is root's 0700 tree, which the server user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="captions-pg-"))
        self.data = self.root / "data"
        self._names = itertools.count()

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr or done.stdout}")

    def start(self) -> None:
        if self.as_root:
            shutil.chown(self.root, SERVER_USER)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-locale", "--no-sync")
        options = (f"-F -k {self.root} -h 127.0.0.1 -p {self.port} -c max_connections={MAX_CONNECTIONS} "
                   "-c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "start", "-D", str(self.data), "-w", "-t", str(START_TIMEOUT_S),
                  "-l", str(self.root / "server.log"), "-o", options)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
        finally:
            shutil.rmtree(self.root)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        name = f"test_{next(self._names)}"
        self._admin(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        # FORCE ends the connections that store engines still hold in their pools.
        self._admin(f"DROP DATABASE {sa.engine.make_url(url).database} WITH (FORCE)")

    def _admin(self, statement: str) -> None:
        # CREATE/DROP DATABASE cannot run inside a transaction.
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(statement)
        finally:
            engine.dispose()
