"""Subprocesses of a benchmark run: the two emulators, the connector, and how to meter a process.

Every process under test runs in its own interpreter so that its CPU time and memory are its own, and the
emulators' CPU never counts against a reader.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

import httpx
import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[1]
ABLY_KEY = "bench.key:secret"
#: Long enough for a cold interpreter to import pymongo/aiohttp on a busy 2-core machine.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
READY_POLL_S = 0.05
METRICS_TIMEOUT_S = 2.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next stdout line of `proc`, waiting at most `timeout` (a silent child must not hang us)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"{proc.args!r} printed nothing within {timeout}s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{proc.args!r} exited with {proc.wait(STOP_TIMEOUT_S)} before printing")
    return line.strip()


def stop(proc: subprocess.Popen[str]) -> int:
    """SIGTERM, then SIGKILL if it does not exit within the bound."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


class Emulator:
    """A running emulator subprocess: its address and a handle to meter its CPU."""

    def __init__(self, address: str, pid: int) -> None:
        self.address = address
        self.ps = psutil.Process(pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.ps)


@contextlib.contextmanager
def mongo_emulator(oplog_size: int) -> Iterator[Emulator]:
    """The MongoDB emulator as a subprocess; `.address` is its URI."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulators.mongodb", "--port", "0", "--oplog-size", str(oplog_size)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        yield Emulator(read_line(proc, START_TIMEOUT_S), proc.pid)
    finally:
        stop(proc)


@contextlib.contextmanager
def ably_emulator() -> Iterator[Emulator]:
    """The Ably emulator as a subprocess; `.address` is its URL. Latency is set per run (admin API)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulators.ably", "--port", "0", "--key", ABLY_KEY],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        line = read_line(proc, START_TIMEOUT_S)
        yield Emulator(line.rsplit(" ", 1)[-1], proc.pid)
    finally:
        stop(proc)


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def peak_rss(proc: psutil.Process) -> int:
    """The kernel's high-water mark of resident memory (VmHWM), so no sampling can miss a peak."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return int(proc.memory_info().rss)  # not Linux: the current RSS is the best available


class ConnectorProcess:
    """`python -m connector run`, configured only by environment, as in production."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "HTTP_PORT": str(self.port)}
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.ps: psutil.Process | None = None
        self.started_at = 0.0

    def __enter__(self) -> ConnectorProcess:
        with self.log_path.open("a") as log:
            self.started_at = time.time()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "connector", "run"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        self.ps = psutil.Process(self.proc.pid)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None:
            stop(self.proc)

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"connector exited with {self.proc.returncode}; see {self.log_path}")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                # role leader: a standby is ready (200) too, but its stream is not open yet
                # plain http to a local process: verify=False skips loading the CA bundle (20 ms CPU a call)
                ready = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1, verify=False)
                if ready.status_code == 200 and ready.json().get("role") == "leader":
                    return
            time.sleep(READY_POLL_S)
        raise RuntimeError(f"connector not ready after {START_TIMEOUT_S}s; see {self.log_path}")

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        return cpu_seconds(self.ps)

    def peak_rss(self) -> int:
        assert self.ps is not None
        return peak_rss(self.ps)

    def in_flight(self) -> int | None:
        """The connector's in-flight ledger size from its metrics endpoint, None if it cannot say."""
        try:
            text = httpx.get(
                f"http://127.0.0.1:{self.port}/metrics", timeout=METRICS_TIMEOUT_S, verify=False
            ).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            if line.startswith("livesync_in_flight_events "):
                return int(float(line.split()[1]))
        return None

    def rss(self) -> int:
        assert self.ps is not None
        return int(self.ps.memory_info().rss)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid
