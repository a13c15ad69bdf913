"""Fault suite: the connector as a subprocess, killed, starved and stopped with real signals.

Each test prints its measured outcome (events sent, delivered, duplicates, recovery time), so
`pytest tests/e2e -s` doubles as the fault report.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import ABLY_TEST_KEY
from tests.e2e.procs import ConnectorProcess
from tests.e2e.workload import Writer, audit

pytestmark = pytest.mark.e2e

FAULT_SECONDS = float(os.environ.get("E2E_FAULT_SECONDS", "6"))
# Small enough that an outage of FAULT_SECONDS at the writer's rate fills the ledger: backpressure is
# exercised, not just hoped for.
FAULT_MAX_IN_FLIGHT = 1000
# Delivery resumes within the publisher's longest retry wait (2 s) of a fault clearing; after rate
# limiting, within the client's longest rate-limit backoff step (4 s) plus a round.
RECOVERY_S = 2.0
RATE_LIMIT_RECOVERY_S = 6.0
DELIVERY_TIMEOUT_S = 180.0


def wait_for_all(ably: Any, total: int, timeout: float = DELIVERY_TIMEOUT_S) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = ably.messages()
        if len(messages) >= total:
            return messages
        time.sleep(0.1)
    messages = ably.messages()
    raise AssertionError(f"only {len(messages)} of {total} events delivered after {timeout}s")


def report(name: str, **numbers: Any) -> None:
    print(f"\n[e2e] {name}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(
    e2e_env: dict[str, str], sync_db: Any, ably: Any, tmp_path: Path
) -> None:
    total, channels, kills = 20_000, 50, 10
    rng = random.Random(20261122)
    writer = Writer(sync_db.events, total, channels, rate=1500)
    log = tmp_path / "connector.log"
    first = ConnectorProcess(e2e_env, log).start()
    first.wait_ready()  # the stream is open before the first write, so the stream sees every event
    writer.start()
    for run in range(kills):
        proc = first if run == 0 else ConnectorProcess(e2e_env, log).start()
        time.sleep(rng.uniform(0.5, 2.0))
        proc.kill()
    final = ConnectorProcess(e2e_env, log).start()
    final.wait_ready()
    writer.join(120)
    assert writer.error is None and writer.written == total
    messages = wait_for_all(ably, total)
    time.sleep(1.0)  # anything still in flight would show up as a duplicate now
    assert final.terminate() == 0
    result = audit(ably.messages(), total)
    stats = ably.stats()
    report(
        "kill -9 x10",
        sent=total,
        delivered=result.delivered,
        duplicates_delivered=result.duplicate_ids,
        duplicates_dropped_by_ably=stats.get("duplicates_dropped"),
        channels=channels,
    )
    assert len(messages) >= total
    result.assert_perfect(total)


FAULTS = {
    "503": {"status": 503, "code": 50003},
    "refused": {"mode": "refuse"},
    "429": {"status": 429, "code": 42910},
    "slow": {"mode": "delay", "delay_ms": 2000},
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_ably_fault_mid_stream_loses_nothing_and_recovers(
    fault: str, e2e_env: dict[str, str], sync_db: Any, ably: Any, tmp_path: Path
) -> None:
    rate = 300.0
    total = int(rate * (FAULT_SECONDS + 6))
    assert rate * FAULT_SECONDS > FAULT_MAX_IN_FLIGHT
    env = {**e2e_env, "MAX_IN_FLIGHT": str(FAULT_MAX_IN_FLIGHT)}
    with ConnectorProcess(env, tmp_path / "connector.log") as proc:
        proc.wait_ready()
        baseline_rss = proc.rss_bytes()
        writer = Writer(sync_db.events, total, channels=20, rate=rate, batch=30)
        writer.start()
        time.sleep(2.0)
        ably.inject_fault(**FAULTS[fault], duration_s=FAULT_SECONDS)
        peak_rss = baseline_rss
        peak_in_flight = 0.0
        fault_ends = time.time() + FAULT_SECONDS
        while time.time() < fault_ends:
            peak_rss = max(peak_rss, proc.rss_bytes())
            peak_in_flight = max(peak_in_flight, proc.metrics().get("livesync_in_flight_events", 0))
            time.sleep(0.5)
        cleared_ms = time.time() * 1000
        writer.join(120)
        assert writer.error is None
        wait_for_all(ably, total)
        received = [m["received_at"] for m in ably.messages() if m["received_at"] >= cleared_ms]
        recovery_s = (min(received) - cleared_ms) / 1000 if received else float("nan")
        status = proc.terminate()
    result = audit(ably.messages(), total)
    report(
        f"Ably {fault} for {FAULT_SECONDS:.0f}s",
        sent=total,
        delivered=result.delivered,
        duplicates=result.duplicate_ids,
        recovery_s=round(recovery_s, 2),
        peak_in_flight=int(peak_in_flight),
        rss_growth_mib=round((peak_rss - baseline_rss) / 2**20, 1),
    )
    assert status == 0
    result.assert_perfect(total)
    assert peak_in_flight <= FAULT_MAX_IN_FLIGHT, "the ledger bound (MAX_IN_FLIGHT) must hold"
    assert peak_rss - baseline_rss < 150 * 2**20, "memory must stay bounded during an Ably outage"
    # After a 429 the client waits as Ably asks (1, 2, 4 s between attempts): recovery may take that long.
    bound = RATE_LIMIT_RECOVERY_S if fault == "429" else RECOVERY_S
    if fault != "slow":
        assert recovery_s < bound, f"delivery resumed {recovery_s:.2f}s after the fault cleared"


@pytest.mark.parametrize("fault", ["getmore-failpoint", "drop-connections", "step-down"])
def test_mongodb_fault_mid_stream_loses_nothing(
    fault: str, e2e_env: dict[str, str], sync_db: Any, ably: Any, tmp_path: Path, using_emulator: bool
) -> None:
    if fault != "getmore-failpoint" and not using_emulator:
        pytest.skip("needs the emulator's test hooks")
    total = 6000
    with ConnectorProcess(e2e_env, tmp_path / "connector.log") as proc:
        proc.wait_ready()
        writer = Writer(sync_db.events, total, channels=20, rate=1500)
        writer.start()
        time.sleep(1.0)
        admin = sync_db.client.admin
        if fault == "getmore-failpoint":
            admin.command(
                {
                    "configureFailPoint": "failCommand",
                    "mode": {"times": 5},
                    "data": {
                        "failCommands": ["getMore"],
                        "errorCode": 6,
                        "errorLabels": ["ResumableChangeStreamError"],
                    },
                }
            )
        elif fault == "drop-connections":
            for _ in range(3):
                admin.command({"emulatorDropConnections": 1})
                time.sleep(0.5)
        else:
            admin.command({"emulatorStepDown": 2})
        writer.join(120)
        assert writer.error is None, writer.error
        wait_for_all(ably, total)
        status = proc.terminate()
    result = audit(ably.messages(), total)
    report(f"MongoDB {fault}", sent=total, delivered=result.delivered, duplicates=result.duplicate_ids)
    assert status == 0
    result.assert_perfect(total)


def test_sigterm_mid_stream_drains_stores_the_token_and_exits_0(
    e2e_env: dict[str, str], sync_db: Any, ably: Any, tmp_path: Path
) -> None:
    grace = 10.0
    total = 20_000
    env = {**e2e_env, "SHUTDOWN_GRACE_S": str(grace)}
    ably.configure(latency_ms=300)  # keep publishes in flight when the signal lands
    with ConnectorProcess(env, tmp_path / "connector.log") as proc:
        proc.wait_ready()
        writer = Writer(sync_db.events, total, channels=10, rate=4000)
        writer.start()
        in_flight_at_signal = 0.0
        deadline = time.monotonic() + 20
        while in_flight_at_signal < 100 and time.monotonic() < deadline:
            in_flight_at_signal = proc.metrics().get("livesync_in_flight_events", 0)
            time.sleep(0.05)
        started = time.monotonic()
        status = proc.terminate(timeout=grace + 10)
        took = time.monotonic() - started
    delivered_at_stop = len(ably.messages())
    writer.join(60)
    token = sync_db.ably.find_one({})
    report(
        "SIGTERM mid-stream",
        in_flight_at_signal=int(in_flight_at_signal),
        delivered_at_stop=delivered_at_stop,
        exit_status=status,
        stop_s=round(took, 2),
    )
    assert in_flight_at_signal > 0, "the test must stop the connector with publishes in flight"
    log_text = (tmp_path / "connector.log").read_text()
    assert all(orjson.loads(line)["message"] for line in log_text.splitlines()), "one JSON object per line"
    assert ABLY_TEST_KEY.partition(":")[2] not in log_text, "the API key secret must never be logged"
    assert status == 0
    assert took < grace + 5
    assert token is not None, proc.log_tail()
    # The drain delivered exactly the events read (a prefix of the stream), and the stored token sits right
    # after them: resuming meets the first undelivered event, so a restart has neither gap nor duplicate.
    delivered_seqs = sorted(orjson.loads(m["data"])["fullDocument"]["seq"] for m in ably.messages())
    stream = sync_db.events.watch(resume_after=token["resumeToken"], max_await_time_ms=200)
    nxt = stream.try_next()
    stream.close()
    ably.configure(latency_ms=0)
    next_seq = nxt["fullDocument"]["seq"] if nxt is not None else total
    assert delivered_seqs == list(range(next_seq))
