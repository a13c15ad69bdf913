"""`make demo` works on this machine: three processes, changes flowing, and Ctrl-C ends it cleanly — with
whatever the user's shell exports (only DEMO_* variables tune it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import IO

import psutil
import pytest

from tests.e2e.procs import ROOT

pytestmark = pytest.mark.e2e

ORDERS = ("order-1", "order-2", "order-3")
STARTUP_TIMEOUT_S = 90.0  # three processes on a loaded 2-core machine
STOP_TIMEOUT_S = 30.0  # the demo stops in about two seconds; this only bounds a hang
# A user's shell set up for their own connector (README, "To run it against your own database"), plus
# values that would stop a connector that read them: the demo must run exactly as with none of them.
USER_SHELL = {
    "PIPELINE": '[{"$match": {"never": true}}]',  # beside the demo's PIPELINE_FILE: exit 2
    "PIPELINE_FILE": "/nonexistent/pipeline.json",
    "ABLY_API_KEY": "userApp.userKey:user-secret",
    "MONGODB_URI": "mongodb://127.0.0.1:1/?replicaSet=prod",
    "MONGODB_DATABASE": "prod",
    "MONGODB_COLLECTION": "customers",
    "CONNECTOR_ID": "prod-connector",
    "LOG_LEVEL": "LOUD",
    "CHANNEL_CIPHER_KEY": "not base64",
    "ON_UNPUBLISHABLE": "fail",
    "HTTP_PORT": "1",
}


def _collect(stream: IO[str], lines: list[str], seen: threading.Event, wanted: set[str]) -> None:
    for line in stream:
        lines.append(line)
        updated = re.match(r"\[orders\] update +(order-\d) ", line)
        if updated:
            wanted.discard(updated[1])
        if not wanted:
            seen.set()
    seen.set()  # the demo ended: stop waiting (the caller finds `wanted` not empty)


def test_ctrl_c_on_the_process_group_stops_in_order_with_a_summary() -> None:
    # A terminal's Ctrl-C sends SIGINT to the whole foreground process group: do the same.
    with subprocess.Popen(
        [sys.executable, "-m", "demo"],
        cwd=ROOT,
        env={**os.environ, **USER_SHELL, "DEMO_LOG_LEVEL": "INFO"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, read continuously (a full pipe would block the demo)
        text=True,
        start_new_session=True,
    ) as demo:
        lines: list[str] = []
        updates_seen = threading.Event()
        awaited = set(ORDERS)
        assert demo.stdout is not None
        reader = threading.Thread(
            target=_collect, args=(demo.stdout, lines, updates_seen, awaited), daemon=True
        )
        reader.start()
        try:
            assert updates_seen.wait(STARTUP_TIMEOUT_S) and not awaited, "".join(lines)
            children = psutil.Process(demo.pid).children(recursive=True)
            assert len(children) >= 3  # both emulators and the connector
            [connector] = [c for c in children if c.cmdline()[1:] == ["-m", "connector", "run"]]
            seen = connector.environ()
            assert not {name for name, value in USER_SHELL.items() if seen.get(name) == value}
            assert seen["LOG_LEVEL"] == "INFO"  # DEMO_LOG_LEVEL
            assert not os.listdir(connector.cwd()), "the connector's directory holds no .env"

            started = time.monotonic()
            os.killpg(demo.pid, signal.SIGINT)
            status = demo.wait(STOP_TIMEOUT_S)
            stop_s = time.monotonic() - started
            reader.join(STOP_TIMEOUT_S)
        finally:
            if demo.poll() is None:
                os.killpg(demo.pid, signal.SIGKILL)
                demo.wait()
    out = "".join(lines)

    assert status == 0, out
    assert "Traceback" not in out and "ERROR" not in out and "second signal" not in out, out
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

    summary = re.search(
        r"Summary: (\d+) changes written to shop\.orders; the connector drained and stopped cleanly "
        r"\(status 0\) in [\d.]+s\. Ably received (\d+) messages \((.*?)\); duplicates delivered: 0, "
        r"replays dropped by idempotent publishing: 0\. Stored resume token: ([0-9A-F]+)\.",
        out,
    )
    assert summary, out
    written, received = int(summary[1]), int(summary[2])
    assert written == received > 0
    assert summary[3] == f"orders {received}"  # pipelines/models-sdk-collection.json: one channel
    assert re.search(r"web page \(a Models SDK model of the orders\): http://127\.0\.0\.1:\d+/", out), out
    print(f"stopped in {stop_s:.1f}s:\n{summary[0]}")
