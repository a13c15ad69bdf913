"""The outbox connector as real subprocesses: kill -9, a PostgreSQL restart, and failover between two
instances. Each test prints its counts (`pytest tests/postgres -s` doubles as the fault report)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from emulators.postgres import PostgresServer
from tests.e2e.procs import ConnectorProcess
from tests.postgres.workload import OutboxWriter, audit, create_audit

DELIVERY_TIMEOUT_S = 120.0


def wait_for_all(ably: Any, total: int, timeout: float = DELIVERY_TIMEOUT_S) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages: list[dict[str, Any]] = ably.messages()
        if len(messages) >= total:
            return messages
        time.sleep(0.1)
    raise AssertionError(f"only {len(ably.messages())} of {total} rows delivered after {timeout}s")


def readyz(proc: ConnectorProcess) -> tuple[int, dict[str, Any]]:
    # plain http to a local process: verify=False skips loading the CA bundle (20 ms CPU a call)
    response = httpx.get(f"http://127.0.0.1:{proc.port}/readyz", timeout=2, verify=False)
    return response.status_code, response.json()


def wait_role(proc: ConnectorProcess, role: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        assert proc.proc is not None and proc.proc.poll() is None, proc.log_tail()
        try:
            status, last = readyz(proc)
            if status == 200 and last.get("role") == role:
                return last
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"not {role} after {timeout}s ({last}):\n{proc.log_tail()}")


def report(name: str, **numbers: Any) -> None:
    print(f"\n[postgres] {name}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))


@pytest.fixture
def fault_env(pg_env: dict[str, str], outbox: psycopg.Connection[Any]) -> dict[str, str]:
    create_audit(outbox)
    return {**pg_env, "CHECKPOINT_INTERVAL_MS": "200", "LEASE_TTL_S": "2"}


def test_kill_9_ten_times_loses_and_duplicates_nothing(
    fault_env: dict[str, str], pg_dsn: str, ably: Any, tmp_path: Path
) -> None:
    total, channels, kills = 5_000, 20, 10
    rng = random.Random(20261123)
    writer = OutboxWriter(pg_dsn, total, channels, rate=400)
    log = tmp_path / "connector.log"
    first = ConnectorProcess(fault_env, log).start()
    first.wait_ready()
    writer.start()
    for run in range(kills):
        proc = first if run == 0 else ConnectorProcess(fault_env, log).start()
        time.sleep(rng.uniform(0.5, 1.5))
        proc.kill()
    final = ConnectorProcess(fault_env, log).start()
    final.wait_ready()
    writer.join(120)
    assert writer.error is None and writer.written == total
    wait_for_all(ably, total)
    time.sleep(1.0)  # a duplicate still in flight would show up now
    assert final.terminate() == 0, final.log_tail()
    result = audit(ably.messages(), total)
    stats = ably.stats()
    report(
        "kill -9 x10",
        rows=total,
        channels=channels,
        delivered=result.delivered,
        lost=len(result.lost),
        duplicates_delivered=result.duplicates,
        duplicates_dropped_by_ably=stats.get("duplicates_dropped"),
    )
    result.assert_perfect()


def test_postgresql_restart_mid_stream_loses_and_duplicates_nothing(
    fault_env: dict[str, str], pg_dsn: str, pg_server: PostgresServer, ably: Any, tmp_path: Path
) -> None:
    total = 3_000
    with ConnectorProcess(fault_env, tmp_path / "connector.log") as proc:
        proc.wait_ready()
        writer = OutboxWriter(pg_dsn, total, channels=20, rate=500)
        writer.start()
        time.sleep(1.5)
        began = time.monotonic()
        pg_server.restart("immediate")  # a crash: every session dies, recovery replays the WAL
        restart_s = time.monotonic() - began
        writer.join(120)
        assert writer.error is None, writer.error
        wait_for_all(ably, total)
        time.sleep(1.0)
        wait_role(proc, "leader")
        assert proc.terminate() == 0, proc.log_tail()
    result = audit(ably.messages(), total)
    report(
        "PostgreSQL restart",
        rows=total,
        restart_s=round(restart_s, 2),
        delivered=result.delivered,
        lost=len(result.lost),
        duplicates_delivered=result.duplicates,
        duplicates_dropped_by_ably=ably.stats().get("duplicates_dropped"),
    )
    result.assert_perfect()


def test_two_instances_one_publishes_the_standby_takes_over_when_it_is_killed(
    fault_env: dict[str, str], pg_dsn: str, ably: Any, tmp_path: Path
) -> None:
    total = 2_000
    a = ConnectorProcess({**fault_env, "INSTANCE_ID": "a"}, tmp_path / "a.log").start()
    b = ConnectorProcess({**fault_env, "INSTANCE_ID": "b"}, tmp_path / "b.log")
    try:
        wait_role(a, "leader")
        b.start()
        standby = wait_role(b, "standby")  # a healthy standby is ready (200)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            nodes = sorted(str(r[0]) for r in conn.execute("SELECT id FROM nodes"))
        assert nodes == ["a", "b"]
        assert a.metrics()["livesync_leader"] == 1.0 and b.metrics()["livesync_leader"] == 0.0
        writer = OutboxWriter(pg_dsn, total, channels=20, rate=500)
        writer.start()
        time.sleep(1.5)
        assert b.metrics()["livesync_messages_published_total"] == 0, "the standby must not publish"
        a.kill()
        killed = time.monotonic()
        leader = wait_role(b, "leader")
        takeover_s = time.monotonic() - killed
        writer.join(120)
        assert writer.error is None
        wait_for_all(ably, total)
        time.sleep(1.0)
        metrics = b.metrics()
        assert b.terminate() == 0, b.log_tail()
    finally:
        for proc in (a, b):
            proc.__exit__()
    result = audit(ably.messages(), total)
    report(
        "failover",
        rows=total,
        takeover_s=round(takeover_s, 2),
        delivered=result.delivered,
        lost=len(result.lost),
        duplicates_delivered=result.duplicates,
    )
    result.assert_perfect()
    assert leader["epoch"] > standby["epoch"]
    assert metrics["livesync_leader_changes_total"] >= 1
