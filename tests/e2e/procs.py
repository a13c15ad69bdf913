"""The connector as a real subprocess (`python -m connector run`), with real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ConnectorProcess:
    """One run of the connector; its log goes to `log_path` (appended across runs)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "HTTP_PORT": str(self.port), "LOG_FORMAT": "json"}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ConnectorProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "connector", "run"], env=self.env, cwd=ROOT, stdout=log, stderr=log
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until this instance leads and its stream is open: a standby is ready too (200) but reads
        nothing, so writes made before it wins the lease would come before its starting position."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"connector exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                # plain http to a local process: verify=False skips loading the CA bundle (20 ms CPU a call)
                ready = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1, verify=False)
                if ready.status_code == 200 and ready.json().get("role") == "leader":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"connector not ready after {timeout}s:\n{self.log_tail()}")

    def metrics(self) -> dict[str, float]:
        # plain http to a local process: verify=False skips loading the CA bundle (20 ms CPU a call)
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2, verify=False).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.partition(" ")
                out[name] = float(value)
        return out

    def rss_bytes(self) -> int:
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> ConnectorProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
