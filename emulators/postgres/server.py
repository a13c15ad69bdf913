"""A real, throwaway PostgreSQL: `initdb` into a temporary directory, `pg_ctl` on a free port.

Used by the tests (a session fixture), the benchmark and `make demo-postgres`. Debian's `postgresql`
package provides the binaries (`/usr/lib/postgresql/<version>/bin`; `.ci/run` installs it when missing).
PostgreSQL refuses to run as root, so as root the server runs as the `postgres` system user (`runuser`),
in a directory that user owns; as any other user it runs as that user.

Durability is traded for speed (`fsync=off`, `full_page_writes=off`): a process crash (`pg_ctl stop -m
immediate`, used for the restart test) still loses no committed transaction, since every commit has
written its WAL to the OS page cache; only an OS crash could. (`synchronous_commit=off` would not do: a
crash would then lose commits that clients, and the connector, had already seen.)
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Starting or stopping a cluster on a loaded 2-core machine: initdb takes ~2 s, a start under 1 s.
PG_CTL_TIMEOUT_S = 60
RUN_AS = "postgres"


def find_bindir() -> Path:
    """The newest installed PostgreSQL's bin directory (PG_BINDIR overrides)."""
    override = os.environ.get("PG_BINDIR")
    if override:
        return Path(override)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        raise RuntimeError(
            "no PostgreSQL under /usr/lib/postgresql/*/bin: apt-get install postgresql (or set PG_BINDIR)"
        )
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One cluster. `uri` connects as the superuser `postgres` (trust auth, loopback only)."""

    def __init__(self, root: Path | None = None) -> None:
        self.bindir = find_bindir()
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="livesync-pg-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "postgres.log"
        self.port = free_port()
        self._as_root = os.geteuid() == 0

    @property
    def uri(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", RUN_AS, "--", *command]
        # A session of its own: the postmaster pg_ctl starts must not get a terminal's Ctrl-C (the
        # demo stops it in order; SIGINT would be a fast shutdown under the running connector).
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=PG_CTL_TIMEOUT_S + 30,
            check=False,
            start_new_session=True,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stderr}\n{self.log_tail()}"
            )

    def init(self) -> PostgresServer:
        if self._as_root:
            shutil.chown(self.root, RUN_AS, RUN_AS)
        self._run(
            "initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        return self

    def start(self) -> PostgresServer:
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.root}",
                "-c fsync=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-o",
            options,
            "-w",
            "-t",
            str(PG_CTL_TIMEOUT_S),
            "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        """`fast` (clean) or `immediate` (like a crash: no shutdown checkpoint, recovery at next start)."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", str(PG_CTL_TIMEOUT_S), "stop")

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cleanup(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop("immediate")
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A fresh cluster for the duration of the block, removed afterwards."""
    server = PostgresServer()
    try:
        server.init().start()
        yield server
    finally:
        server.cleanup()
