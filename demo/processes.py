"""The demo's child processes: started in their own sessions, stopped one by one with SIGTERM.

A terminal's Ctrl-C sends SIGINT to its whole foreground process group. Children in that group would
all stop at once, in no order: the connector could no longer store its checkpoint because the MongoDB
emulator was already gone, and the Ably emulator could vanish under the demo's last status request.
So every child starts in a new session (its own process group) and only the demo receives Ctrl-C;
the demo then stops its children in the order the data flows.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S: Final = 30.0  # an emulator prints its ready line within a second; this is for loaded CI
STOP_TIMEOUT_S: Final = 30.0  # longer than the connector's drain on a healthy Ably; then SIGKILL


class Child:
    """One child process: ``python -m <module> ...`` in a new session."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc

    @classmethod
    async def start(
        cls, name: str, args: list[str], env: dict[str, str] | None = None, *, ready_line: bool = True
    ) -> tuple[Child, str]:
        """Start ``python -m <args>``; with ``ready_line``, wait for its first stdout line and return it."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            *args,
            stdout=asyncio.subprocess.PIPE if ready_line else None,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        child = cls(name, proc)
        if not ready_line:
            return child, ""
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT_S)
        except TimeoutError:
            await child.stop()
            raise RuntimeError(f"{name} printed nothing within {STARTUP_TIMEOUT_S:.0f}s") from None
        if not line:
            raise RuntimeError(f"{name} exited before it was ready (status {await proc.wait()})")
        return child, line.decode().strip()

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit status. Idempotent."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            return await self.proc.wait()
