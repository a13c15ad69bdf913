"""The demo's child processes: started in their own sessions, stopped one by one with SIGTERM.

A terminal's Ctrl-C sends SIGINT to its whole foreground process group. Children in that group would
all stop at once, in no order: the connector could no longer store its checkpoint because the MongoDB
emulator was already gone, and the Ably emulator could vanish under the demo's last status request.
So every child starts in a new session (its own process group) and only the demo receives Ctrl-C;
the demo then stops its children in the order the data flows.

Every child gets `child_env()`, not the user's environment: the demo runs the same for everyone, whatever
is exported in the shell (PIPELINE, ABLY_API_KEY, MONGODB_*, LOG_LEVEL, a proxy, PYTHON* switches) and
whatever `.env` lies in the checkout (the connector runs in an empty directory). Only `DEMO_*` knobs tune
it (`DEMO_SECONDS`, `DEMO_LOG_LEVEL`; see the README's "Set-up").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S: Final = 30.0  # an emulator prints its ready line within a second; this is for loaded CI
STOP_TIMEOUT_S: Final = 30.0  # longer than the connector's drain on a healthy Ably; then SIGKILL
# What a process needs from the user's environment to start at all (find programs, a home, a locale, a
# temporary directory); nothing that configures the connector, Python or HTTP.
INHERITED: Final = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"}
)


def child_env(settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """A child's whole environment: `INHERITED` from ours, the checkout on PYTHONPATH (children may run
    outside it), then `settings`."""
    env = {name: value for name, value in os.environ.items() if name in INHERITED}
    env["PYTHONPATH"] = str(ROOT)
    env.update(settings or {})
    return env


class Child:
    """One child process: ``python -m <module> ...`` in a new session."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc

    @classmethod
    async def start(
        cls,
        name: str,
        args: list[str],
        settings: Mapping[str, str] | None = None,
        *,
        ready_line: bool = True,
        cwd: Path = ROOT,
    ) -> tuple[Child, str]:
        """Start ``python -m <args>`` with `child_env(settings)` in `cwd`; with ``ready_line``, wait for its
        first stdout line and return it."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            *args,
            stdout=asyncio.subprocess.PIPE if ready_line else None,
            env=child_env(settings),
            cwd=cwd,
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
