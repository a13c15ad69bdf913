"""`make demo` works on this machine: three processes, changes flowing, a clean stop."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.e2e.procs import ROOT

pytestmark = pytest.mark.e2e


def test_demo_shows_changes_flowing_and_stops_cleanly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "demo"],
        cwd=ROOT,
        env={**os.environ, "DEMO_SECONDS": "12"},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for channel in ("orders:order-1", "orders:order-2", "orders:order-3"):
        assert f"[{channel}]" in out
    assert " insert " in out and " update " in out
    assert "connector stopped with status 0" in out
