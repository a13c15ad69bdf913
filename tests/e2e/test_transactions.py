"""Transactions through the connector, killed with kill -9 mid-stream (issue 8, item 5).

Each committed transaction reaches the change stream as several events that share one clusterTime and
have their own resume tokens; a connector killed between two of them must resume in the middle of the
transaction, so subscribers still see every event once and in order per channel.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from pymongo.errors import PyMongoError

from tests.e2e.procs import ConnectorProcess
from tests.e2e.test_faults import report, wait_for_all
from tests.e2e.workload import audit

pytestmark = pytest.mark.e2e

OPS_PER_TRANSACTION = 3
CHANNELS = 20
TRANSACTIONS = 1500
#: Transactions per second; the kills below span most of the writer's run.
RATE = 120.0
KILLS = 10
#: A transaction failing with a transient error (as drivers label them) is retried as a whole, this often.
TRANSIENT_RETRIES = 5


class TransactionWriter(threading.Thread):
    """Commits `transactions` transactions, each inserting OPS_PER_TRANSACTION numbered documents
    `{_id: i, seq: i, ch: "ch<i % channels>"}`, at about `rate` transactions per second."""

    def __init__(self, collection: Any, transactions: int, channels: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.collection = collection
        self.transactions = transactions
        self.channels = channels
        self.rate = rate
        self.committed = 0
        self.error: BaseException | None = None

    @property
    def total(self) -> int:
        return self.transactions * OPS_PER_TRANSACTION

    def run(self) -> None:
        try:
            started = time.monotonic()
            with self.collection.database.client.start_session() as session:
                for n in range(self.transactions):
                    self._commit(session, n)
                    self.committed += 1
                    ahead = self.committed / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except BaseException as exc:  # surfaced by the test through `.error`
            self.error = exc

    def _commit(self, session: Any, n: int) -> None:
        first = n * OPS_PER_TRANSACTION
        docs = [{"_id": i, "seq": i, "ch": f"ch{i % self.channels}"} for i in range(first, first + 3)]
        for attempt in range(TRANSIENT_RETRIES):
            try:
                with session.start_transaction():
                    for doc in docs:
                        self.collection.insert_one(doc, session=session)
                return
            except PyMongoError as exc:
                if not exc.has_error_label("TransientTransactionError") or attempt == TRANSIENT_RETRIES - 1:
                    raise


def test_kill_9_during_transactions_loses_and_duplicates_nothing(
    e2e_env: dict[str, str], sync_db: Any, ably: Any, tmp_path: Path
) -> None:
    rng = random.Random(20261130)
    writer = TransactionWriter(sync_db.events, TRANSACTIONS, CHANNELS, RATE)
    log = tmp_path / "connector.log"
    first = ConnectorProcess(e2e_env, log).start()
    first.wait_ready()  # the stream is open before the first commit, so it sees every event
    writer.start()
    committed_at_kills = []
    for run in range(KILLS):
        proc = first if run == 0 else ConnectorProcess(e2e_env, log).start()
        time.sleep(rng.uniform(0.4, 1.2))
        proc.kill()
        committed_at_kills.append(writer.committed)
    final = ConnectorProcess(e2e_env, log).start()
    final.wait_ready()
    writer.join(120)
    assert writer.error is None and writer.committed == TRANSACTIONS, writer.error
    total = writer.total
    wait_for_all(ably, total)
    time.sleep(1.0)  # anything still in flight would show up as a duplicate now
    assert final.terminate() == 0
    messages = ably.messages()
    result = audit(messages, total)
    events = [orjson.loads(message["data"]) for message in messages]
    report(
        "kill -9 x10 during transactions",
        transactions=TRANSACTIONS,
        sent=total,
        delivered=result.delivered,
        duplicates_delivered=result.duplicate_ids,
        lost=len(result.missing),
        kills_while_writing=sum(1 for n in committed_at_kills if 0 < n < TRANSACTIONS),
    )
    # The kills landed while transactions were being committed, not before or after the workload.
    assert sum(1 for n in committed_at_kills if 0 < n < TRANSACTIONS) >= KILLS // 2, committed_at_kills
    result.assert_perfect(total)
    # Every event came from a transaction: three per commit, sharing its clusterTime and txnNumber.
    by_txn: dict[tuple[Any, ...], set[int]] = {}
    for event in events:
        key = (orjson.dumps(event["clusterTime"]), orjson.dumps(event["txnNumber"]))
        by_txn.setdefault(key, set()).add(event["fullDocument"]["seq"] // OPS_PER_TRANSACTION)
    assert len(by_txn) == TRANSACTIONS
    assert all(len(numbers) == 1 for numbers in by_txn.values())
