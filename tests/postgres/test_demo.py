"""`make demo-postgres` works here: PostgreSQL, the Ably emulator and the connector, rows flowing."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.e2e.procs import ROOT

DEMO_SECONDS = 6
RUN_TIMEOUT_S = 120.0  # three processes starting on a loaded 2-core machine, then DEMO_SECONDS


def test_demo_shows_outbox_rows_reaching_their_channels_and_stops_cleanly() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "demo.postgres"],
        cwd=ROOT,
        # A user's shell with connector settings exported: the demo runs the same (only DEMO_* count).
        env={
            **os.environ,
            "DEMO_SECONDS": str(DEMO_SECONDS),
            "SOURCE": "mongodb",
            "PIPELINE": "not json",
            "POSTGRES_URI": "postgresql://nobody@127.0.0.1:1/none",
            "OUTBOX_TABLE": "elsewhere.outbox",
            "LOG_LEVEL": "LOUD",
            "HTTP_PORT": "1",
        },
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "Traceback" not in out, out
    shown = re.findall(r"\[(post:\d)\]\S* id +(\d+) addComment", out)
    assert shown, out
    ids = [int(i) for _, i in shown]
    for post in {p for p, _ in shown}:
        mine = [int(i) for p, i in shown if p == post]
        assert mine == sorted(mine), f"order broken on {post}"
    assert len(set(ids)) == len(ids)
    assert "the connector stopped with status 0" in out
