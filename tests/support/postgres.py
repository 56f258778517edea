"""A PostgreSQL server for tests: a given one, or a throwaway one run by deploy/postgres.sh."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

REPO_ROOT = Path(__file__).resolve().parents[2]
POSTGRES_SH = REPO_ROOT / "deploy" / "postgres.sh"

#: Set to a postgresql:// URL to test against that server instead of starting one.
URL_ENV_VAR = "LOYALTY_TEST_POSTGRES_URL"

_SCRIPT_TIMEOUT_S = 600  # `start` may have to apt-get install the server first


@dataclass(frozen=True)
class PostgresServer:
    """Where a test PostgreSQL server is, and a way to get a fresh database on it."""

    host: str
    port: int
    user: str
    password: str
    admin_dbname: str
    _created: list[str] = field(default_factory=list, init=False, repr=False, compare=False)

    @classmethod
    def from_url(cls, url: str) -> PostgresServer:
        params = conninfo_to_dict(url)
        return cls(
            host=str(params.get("host") or "127.0.0.1"),
            port=int(params.get("port") or 5432),
            user=str(params.get("user") or "postgres"),
            password=str(params.get("password") or ""),
            admin_dbname=str(params.get("dbname") or "postgres"),
        )

    def conninfo(self, dbname: str | None = None) -> str:
        return make_conninfo(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname or self.admin_dbname,
            connect_timeout=10,
        )

    def new_database_env(self) -> dict[str, str]:
        """Create an empty database; return the eventsourcing environment that uses it."""
        dbname = f"loyalty_test_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        self._created.append(dbname)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": dbname,
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
        }

    def drop_created_databases(self) -> None:
        """Drop every database made by new_database_env (for servers that outlive the tests)."""
        if not self._created:
            return
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            while self._created:
                dbname = self._created.pop()
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(dbname)
                    )
                )


def _run_script(*args: str) -> str:
    """Run deploy/postgres.sh; return its stdout, or raise with its stderr on failure."""
    result = subprocess.run(
        ["bash", str(POSTGRES_SH), *args],
        capture_output=True,
        text=True,
        timeout=_SCRIPT_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"deploy/postgres.sh {' '.join(args)} failed (exit {result.returncode}).\n"
            f"{result.stderr.strip()}\n"
            f"Install the server with `deploy/postgres.sh install` (as root), "
            f"or set {URL_ENV_VAR} to a server's postgresql:// URL."
        )
    return result.stdout


def _parse_exports(output: str) -> dict[str, str]:
    """Parse the `export NAME=value` lines that deploy/postgres.sh prints."""
    env: dict[str, str] = {}
    for line in output.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            env[name] = value
    return env


class RestartableServer:
    """A throwaway server that a test can stop and start again on the same port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        env = _parse_exports(_run_script("start", str(data_dir)))
        self.server = PostgresServer(
            host=env["POSTGRES_HOST"],
            port=int(env["POSTGRES_PORT"]),
            user=env["POSTGRES_USER"],
            password=env["POSTGRES_PASSWORD"],
            admin_dbname=env["POSTGRES_DBNAME"],
        )

    def stop(self) -> None:
        _run_script("stop", str(self.data_dir))

    def start(self) -> None:
        _run_script("start", str(self.data_dir), str(self.server.port))


@contextmanager
def restartable_server() -> Iterator[RestartableServer]:
    """A server of the test's own (under /tmp, see throwaway_server), deleted afterwards."""
    data_dir = Path(tempfile.mkdtemp(prefix="loyalty-pg-", dir="/tmp"))
    try:
        running = RestartableServer(data_dir)
        try:
            yield running
        finally:
            running.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def throwaway_server() -> Iterator[PostgresServer]:
    """Start a PostgreSQL server in a new directory under /tmp; stop and delete it after."""
    # Under /tmp (not pytest's 0700 tmp dirs) so that the `postgres` user, which runs the
    # server when we are root, can reach it; also keeps the Unix socket path short.
    data_dir = Path(tempfile.mkdtemp(prefix="loyalty-pg-", dir="/tmp"))
    try:
        env = _parse_exports(_run_script("start", str(data_dir)))
        try:
            yield PostgresServer(
                host=env["POSTGRES_HOST"],
                port=int(env["POSTGRES_PORT"]),
                user=env["POSTGRES_USER"],
                password=env["POSTGRES_PASSWORD"],
                admin_dbname=env["POSTGRES_DBNAME"],
            )
        finally:
            _run_script("stop", str(data_dir))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def postgres_server_for_tests() -> Iterator[PostgresServer]:
    """The server named by $LOYALTY_TEST_POSTGRES_URL, else a throwaway one."""
    url = os.environ.get(URL_ENV_VAR)
    if url:
        server = PostgresServer.from_url(url)
        try:
            yield server
        finally:
            server.drop_created_databases()
    else:
        with throwaway_server() as server:
            yield server
