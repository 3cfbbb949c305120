"""A real PostgreSQL server on loopback for the tests, the demo and local runs, started from the
distribution's server binaries (deploy/postgres/ensure-server.sh installs them): no Docker needed.

`postgres_server()` yields a URL: `ORDER_CONSUMER_POSTGRES_URL` if set (start nothing), else a
throwaway `LocalPostgres`. initdb and the server refuse to run as root, so as root (CI,
containers) they run as the `postgres` OS user (`runuser`), which owns the data directory.
The throwaway server runs with fsync off: it trades crash safety of the machine (not of the
server process) for speed, and its data dies with it anyway.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

ENV_URL = "ORDER_CONSUMER_POSTGRES_URL"
BIN_GLOB = "/usr/lib/postgresql/*/bin"  # Debian and Ubuntu; anything else: initdb on PATH
ENSURE = Path(__file__).resolve().parents[2] / "deploy" / "postgres" / "ensure-server.sh"
OS_USER = "postgres"  # runs the server when we are root
SUPERUSER = "postgres"
READY_TIMEOUT_S = 60.0
START_ATTEMPTS = 3  # a free port can be taken between choosing and binding it


class PostgresUnavailable(RuntimeError):
    """No server binaries, or the server would not start; the message says what to do."""


def find_bin_dir() -> Path:
    """The directory holding initdb and pg_ctl: the newest Debian one, else the one on PATH."""

    def version(bin_dir: Path) -> tuple[int, ...]:  # /usr/lib/postgresql/15/bin → (15,)
        return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name))

    debian = (p.parent for p in Path("/").glob(BIN_GLOB.lstrip("/") + "/initdb"))
    candidates = sorted(debian, key=version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for directory in candidates:
        if (directory / "pg_ctl").exists():
            return directory
    raise PostgresUnavailable(
        f"no PostgreSQL server binaries (initdb, pg_ctl) under {BIN_GLOB} or on PATH: run "
        f"`bash {ENSURE}` (installs Debian's postgresql package), or set {ENV_URL} to a server"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPostgres:
    """One server process with its own data directory, unix socket in it, TCP on 127.0.0.1."""

    def __init__(self, data_dir: Path | None = None, *, port: int | None = None,
                 database: str = "orders") -> None:  # fmt: skip
        self._temporary = data_dir is None
        self.base_dir = Path(data_dir or tempfile.mkdtemp(prefix="local-postgres-"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._fixed_port = port
        self.port = port or free_port()
        self.database = database
        self._bin = find_bin_dir()
        self._as_owner: list[str] = []
        self._watchdog: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            self._as_owner = self._owner_prefix()

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    def _owner_prefix(self) -> list[str]:
        try:
            owner = pwd.getpwnam(OS_USER)
        except KeyError:
            raise PostgresUnavailable(
                f"running as root, and initdb refuses root: no `{OS_USER}` OS user to run the "
                f"server as; run `bash {ENSURE}` (Debian's package creates it)"
            ) from None
        os.chown(self.base_dir, owner.pw_uid, owner.pw_gid)
        return ["runuser", "-u", OS_USER, "--"]

    def _run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as_owner, str(self._bin / command[0]), *command[1:]],
            cwd=self.base_dir,  # the server's user may not be allowed into ours
            capture_output=True,
            text=True,
            timeout=READY_TIMEOUT_S + 30,
        )

    def _initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return  # a persistent data dir keeps its databases
        done = self._run("initdb", "-D", str(self.data_dir), "--username", SUPERUSER,
                         "--auth", "trust", "--encoding", "UTF8", "--locale", "C",
                         "--no-sync")  # fmt: skip
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> LocalPostgres:
        self._initdb()
        for attempt in range(1, START_ATTEMPTS + 1):
            options = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                       f"-k {shlex.quote(str(self.base_dir))} -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off")  # fmt: skip
            done = self._run("pg_ctl", "start", "-D", str(self.data_dir), "-w",
                             "-t", str(int(READY_TIMEOUT_S)), "-l", str(self.log_file),
                             "-o", options)  # fmt: skip
            if done.returncode == 0:
                break
            if self._fixed_port is not None or attempt == START_ATTEMPTS:
                raise PostgresUnavailable(
                    f"PostgreSQL did not start:\n{done.stdout}{done.stderr}\n{self._tail()}"
                )
            self.port = free_port()
        self._watch()
        self._wait_ready()
        self._create_database()
        return self

    def _watch(self) -> None:
        """pg_ctl detaches the server: stop it should this process die without stopping it
        (kill -9, a cancelled CI job), so no orphan outlives the tests."""
        script = 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; shift; "$@"'
        stop = [*self._as_owner, str(self._bin / "pg_ctl"), "stop", "-D", str(self.data_dir),
                "-m", "fast"]  # fmt: skip
        cleanup = ["rm", "-rf", str(self.base_dir)] if self._temporary else ["true"]
        script += "; " + " ".join(shlex.quote(part) for part in cleanup)
        self._watchdog = subprocess.Popen(
            ["sh", "-c", script, "watchdog", str(os.getpid()), *stop],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    def _wait_ready(self) -> None:
        """pg_ctl saw the postmaster; a real connection proves it accepts clients."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(self.url_for("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(
                        f"PostgreSQL not ready: {exc}\n{self._tail()}"
                    ) from exc
                time.sleep(0.1)

    def _create_database(self) -> None:
        with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (self.database,)).fetchone()  # fmt: skip
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))

    def _tail(self, lines: int = 30) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w")

    def close(self) -> None:
        self.stop()
        if self._temporary:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *_: object) -> None:
        self.close()


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """The URL of a server to use: `ORDER_CONSUMER_POSTGRES_URL`, or a throwaway local one."""
    existing = os.environ.get(ENV_URL)
    if existing:
        yield existing
        return
    with LocalPostgres() as server:
        yield server.url


def with_database(url: str, database: str) -> str:
    """The same server and credentials, another database."""
    if url.startswith(("postgresql://", "postgres://")):
        return urlsplit(url)._replace(path="/" + database).geturl()
    return make_conninfo(url, dbname=database)


def with_schema(url: str, schema: str) -> str:
    """The same database, with unqualified table names in `schema` (its search_path)."""
    options = f"-c search_path={schema}"
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
        query.append(("options", options))  # libpq decodes %20, not "+"
        return parts._replace(query=urlencode(query, quote_via=quote)).geturl()
    return make_conninfo(url, options=options)


def create_database(url: str, database: str) -> str:
    """Create a fresh (empty) database on the server of `url`; its URL."""
    with psycopg.connect(url, autocommit=True) as conn:
        name = sql.Identifier(database)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    return with_database(url, database)


def drop_database(url: str, database: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(database)))  # fmt: skip


def create_schema(url: str, schema: str) -> str:
    """Create a fresh (empty) schema in the database of `url`; a URL that works inside it.

    Much cheaper than a database (milliseconds, not a tenth of a second): one per test.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        name = sql.Identifier(schema)
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(name))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(name))
    return with_schema(url, schema)


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local PostgreSQL server on loopback.")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    server = LocalPostgres(args.data_dir, port=args.port).start()
    print(f"PostgreSQL ready: {server.url} (Ctrl-C stops it)")
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
