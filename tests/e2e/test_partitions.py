"""Partitioned connectors under faults: partitions with two instances each, as processes, while a writer
spreads thousands of changes over many channels.

One scenario, in the order an operator meets these faults: a 2-partition layout runs and one leader is
killed (-9); a 3-partition layout is deployed beside it (it must stand by while the old layout leads),
then the old layout is stopped and the new one takes over from the old layout's oldest position; then a
new leader is paused (SIGSTOP) and another killed (-9). Every change must reach Ably once per id, in
order per channel, and each one must have been delivered by the partition that owns its channel in the
layout that sent it: each process's pipeline stamps its `<PARTITIONS>:<PARTITION>` in a message header.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.sources.mongodb.partitions import bucket_of
from tests.e2e.procs import ConnectorProcess
from tests.e2e.test_faults import report, wait_for_all
from tests.e2e.workload import Writer, audit

pytestmark = pytest.mark.e2e

LEASE_TTL_S = 2.0
RATE = 300.0
TOTAL = 6000  # 20 s of writing at RATE: the faults below all happen while it runs
CHANNELS = 64
REPLICAS = 2
WAIT_S = 30.0


def pipeline(count: int, index: int) -> str:
    return (
        '[{"$set": {"_ablyChannel": "$fullDocument.ch", '
        f'"_ablyMsgHeaders": {{"layout": "{count}:{index}"}}}}}}]'
    )


class Layout:
    """`count` partitions with REPLICAS processes each; procs[k][r] is replica r of partition k."""

    def __init__(self, env: dict[str, str], tmp_path: Path, count: int) -> None:
        self.count = count
        self.procs = [
            [
                ConnectorProcess(
                    {
                        **env,
                        "PARTITIONS": str(count),
                        "PARTITION": str(k),
                        "PIPELINE": pipeline(count, k),
                        "INSTANCE_ID": f"l{count}p{k}r{r}",
                        "LEASE_TTL_S": str(LEASE_TTL_S),
                    },
                    tmp_path / f"l{count}p{k}r{r}.log",
                )
                for r in range(REPLICAS)
            ]
            for k in range(count)
        ]

    def all(self) -> list[ConnectorProcess]:
        return [proc for replicas in self.procs for proc in replicas]

    def start(self) -> Layout:
        for proc in self.all():
            proc.start()
        return self

    @staticmethod
    def role(proc: ConnectorProcess) -> str | None:
        if proc.proc is None or proc.proc.poll() is not None:
            return None
        try:
            # plain http to a local process: verify=False skips loading the CA bundle
            ready = httpx.get(f"http://127.0.0.1:{proc.port}/readyz", timeout=0.5, verify=False)
            return str(ready.json()["role"])
        except (httpx.HTTPError, ValueError, KeyError):
            return None  # starting, stopped or paused

    def leader(self, k: int, *, not_: int | None = None, timeout: float = WAIT_S) -> int:
        """The replica of partition k that leads, once exactly one (other than `not_`) says so."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            roles = {r: self.role(p) for r, p in enumerate(self.procs[k]) if r != not_}
            leaders = [r for r, role in roles.items() if role == "leader"]
            if len(leaders) == 1:
                return leaders[0]
            time.sleep(0.05)
        raise AssertionError(f"partition {k} of {self.count}: no single leader after {timeout}s")

    def wait_leading(self) -> None:
        for k in range(self.count):
            self.procs[k][self.leader(k)].wait_ready()

    def wait_standing_by(self) -> None:
        """Until every process answers and none leads."""
        deadline = time.monotonic() + WAIT_S
        while [self.role(p) for p in self.all()] != ["standby"] * len(self.all()):
            assert time.monotonic() < deadline, [self.role(p) for p in self.all()]
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM to every process at once (a scale-down), then wait for each to exit cleanly."""
        live = [p for p in self.all() if p.proc is not None and p.proc.poll() is None]
        for proc in live:
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGCONT)
            proc.proc.send_signal(signal.SIGTERM)
        for proc in live:
            assert proc.proc is not None
            assert proc.proc.wait(60) == 0, proc.log_tail()

    def kill(self) -> None:
        for proc in self.all():
            proc.__exit__()


def test_partitions_survive_kill_pause_and_a_repartition_losing_nothing(
    e2e_env: dict[str, str], sync_db: Any, ably: Any, tmp_path: Path
) -> None:
    started = time.monotonic()
    old = Layout(e2e_env, tmp_path, 2).start()
    new = Layout(e2e_env, tmp_path, 3)
    try:
        old.wait_leading()
        writer = Writer(sync_db.events, TOTAL, CHANNELS, rate=RATE, batch=20)
        writer.start()
        time.sleep(2.0)

        # kill -9 of a leader of the old layout: its standby takes over after the lease expires.
        killed = old.leader(0)
        old.procs[0][killed].kill()
        old.leader(0, not_=killed)

        # The new layout starts beside the old one and must stand by while the old one leads.
        new.start()
        new.wait_standing_by()
        for k in range(2):
            old.leader(k)  # still leading
        old.stop()
        new.wait_leading()
        phases = {"repartitioned_at_s": round(time.monotonic() - started, 1)}
        layout = sync_db.ably.find_one({"_id": f"{e2e_env['MONGODB_DATABASE']}.events#layout"})
        assert (layout["partitions"], layout["previous"]) == (3, 2)
        time.sleep(1.0)

        # SIGSTOP of a new leader: its standby takes over; woken up, it stands by and sends nothing.
        paused_at = new.leader(1)
        paused = new.procs[1][paused_at]
        assert paused.proc is not None
        paused.proc.send_signal(signal.SIGSTOP)
        new.leader(1, not_=paused_at)
        paused.proc.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + WAIT_S
        while new.role(paused) != "standby":
            assert time.monotonic() < deadline, paused.log_tail()
            time.sleep(0.05)

        # kill -9 of another new leader.
        killed = new.leader(2)
        new.procs[2][killed].kill()
        new.leader(2, not_=killed)
        phases["faults_done_at_s"] = round(time.monotonic() - started, 1)
        phases["written_then"] = writer.written

        writer.join(120)
        assert writer.error is None and writer.written == TOTAL
        messages = wait_for_all(ably, TOTAL)
        time.sleep(1.0)  # anything still in flight would show up as a duplicate now
        new.stop()
    finally:
        old.kill()
        new.kill()

    messages = ably.messages()
    result = audit(messages, TOTAL)
    result.assert_perfect(TOTAL)
    by_layout = {"2": 0, "3": 0}
    for msg in messages:
        count, index = (int(x) for x in msg["extras"]["headers"]["layout"].split(":"))
        assert bucket_of({"_ablyChannel": msg["channel"]}, count) == index, msg["channel"]
        by_layout[str(count)] += 1
    assert by_layout["2"] and by_layout["3"], by_layout
    report(
        "3 partitions x 2 after 2 x 2, kill -9, SIGSTOP, repartition",
        sent=TOTAL,
        delivered=result.delivered,
        by_layout=by_layout,
        duplicates_dropped_by_ably=ably.stats()["duplicates_dropped"],
        seconds=round(time.monotonic() - started, 1),
        **phases,
    )
