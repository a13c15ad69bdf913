"""Ably REST emulator for tests, benchmarks and the demo (not used in production).

In-process: ``async with AblyEmulator(keys=["app.key:secret"]) as ably: ably.url``; from synchronous
code: ``with run_in_thread(...) as ably: ...``; against a subprocess (``python -m emulators.ably``):
``AblyEmulatorAdmin(url)``. See README.md in this folder for endpoints, faults and decisions.
"""

from __future__ import annotations

from emulators.ably.client import AblyEmulatorAdmin
from emulators.ably.config import EmulatorConfig
from emulators.ably.messages import measure_message
from emulators.ably.server import AblyEmulator, run_in_thread

__all__ = ["AblyEmulator", "AblyEmulatorAdmin", "EmulatorConfig", "measure_message", "run_in_thread"]
