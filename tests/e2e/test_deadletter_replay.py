"""Dead letters replayed while the connector runs (issue 20, part 2).

The connector runs as a subprocess with ON_OVERSIZE=deadletter and a small MAX_MESSAGE_SIZE, and its key
may not publish on one channel (the Ably emulator answers 40160 there, as Ably does for a capability the
key lacks): those changes are dead-lettered and the stream moves on. Then the causes are fixed (the
capability widened, the limit raised for the replay command) and `livesync-connector deadletter replay
--all` runs as a subprocess beside the still-running connector: channel history holds each dead-lettered
change exactly once, with its original id; a second replay sends nothing, and even a forced one
(`--again`) adds nothing within Ably's idempotency window. The connector keeps publishing throughout.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import ABLY_TEST_KEY
from tests.e2e.procs import ROOT, ConnectorProcess
from tests.e2e.test_faults import report

pytestmark = pytest.mark.e2e

WAIT_S = 30.0
COMMAND_TIMEOUT_S = 60.0
SMALL_LIMIT = 2_000
BLOB = "x" * 4_000  # over SMALL_LIMIT, well under Ably's 64 KiB


def wait_until(what: str, check: Any, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not after {timeout}s")


def history(ably: Any, channel: str) -> list[dict[str, Any]]:
    """The channel's history through Ably's REST API, as a subscriber reads it (oldest first)."""
    reply = httpx.get(
        f"{ably.url}/channels/{channel}/messages",
        params={"direction": "forwards", "limit": "100"},
        headers={"X-Ably-Version": "6"},
        auth=tuple(ABLY_TEST_KEY.split(":", 1)),  # type: ignore[arg-type]
        timeout=5,
    )
    reply.raise_for_status()
    messages = reply.json()
    assert isinstance(messages, list)
    return messages


def deadletter(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "connector", "deadletter", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    report(
        f"deadletter {' '.join(args)}", exit=result.returncode, seconds=round(time.monotonic() - started, 2)
    )
    return result


def test_replay_all_while_the_connector_runs_delivers_each_dead_letter_once(
    e2e_env: dict[str, str], sync_db: Any, ably: Any, tmp_path: Path
) -> None:
    env = {**e2e_env, "ON_OVERSIZE": "deadletter", "MAX_MESSAGE_SIZE": str(SMALL_LIMIT)}
    ably.inject_fault(
        mode="partial", status=401, code=40160, message="capability denied", channels=["locked"]
    )
    events = sync_db.events
    with ConnectorProcess(env, tmp_path / "connector.log") as connector:
        connector.wait_ready()
        for i in range(30):
            channel, doc = (
                ("big", {"blob": BLOB}) if i % 3 == 0 else ("locked", {}) if i % 3 == 1 else ("open", {})
            )
            events.insert_one({"_id": i, "ch": channel, "n": i, **doc})
        wait_until("10 delivered on 'open'", lambda: len(ably.messages("open")) == 10)
        wait_until("20 dead-lettered", lambda: sync_db.ably_deadletter.count_documents({}) == 20)
        kinds = {d["_id"]["_data"]: d["kind"] for d in sync_db.ably_deadletter.find()}
        assert sorted(kinds.values()) == ["rejected"] * 10 + ["too_large"] * 10
        assert history(ably, "big") == [] and history(ably, "locked") == []

        ably.clear_faults()  # the key's capability widened
        fixed = {
            **connector.env,
            "MAX_MESSAGE_SIZE": "65536",  # the limit raised for the replay
            "LOG_FORMAT": "text",
            "HTTP_PORT": "0",
        }
        listing = deadletter(fixed, "list", "--json")
        assert listing.returncode == 0, listing.stderr
        assert {r["id"] for r in orjson.loads(listing.stdout)} == set(kinds)

        replay = deadletter(fixed, "replay", "--all")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert "replayed 20 of 20 dead letter(s)" in replay.stdout

        replayed = history(ably, "big") + history(ably, "locked")
        assert sorted(m["id"] for m in replayed) == sorted(kinds)  # each once, with its original id
        for message in replayed:
            headers = message["extras"]["headers"]
            assert headers["x-livesync-replayed"] == "true" and headers["x-livesync-truncated"] == "true"
            data = orjson.loads(message["data"])
            assert "fullDocument" not in data and data["_ablyChannel"] in ("big", "locked")
        # Per channel in stream order (the publisher's per-channel FIFO).
        for channel in ("big", "locked"):
            ids = [m["id"] for m in history(ably, channel)]
            assert ids == sorted(ids)

        second = deadletter(fixed, "replay", "--all")
        assert second.returncode == 3, second.stdout + second.stderr
        forced = deadletter(fixed, "replay", "--all", "--again", "--as-original")
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert len(history(ably, "big")) == 10 and len(history(ably, "locked")) == 10  # dropped by id

        # The connector ran throughout and still publishes.
        events.insert_one({"_id": 100, "ch": "open", "n": 100})
        wait_until("a change after the replays", lambda: len(ably.messages("open")) == 11)
        assert connector.proc is not None and connector.proc.poll() is None
        marked = sync_db.ably_deadletter.count_documents({"replayOutcome": "published", "replays": 2})
        assert marked == 20
        assert connector.terminate() == 0
