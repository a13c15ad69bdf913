"""The emulated server's state and command dispatch, independent of sockets.

Dispatch order mirrors mongod's: failpoints, then primary-only checks, then the command; every reply
gets ``$clusterTime``/``operationTime``, every state-change error the current ``topologyVersion``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .changestream import ChangeStreamCursor
from .docstore import naive_dates
from .errors import RETRYABLE_WRITE_CODES, STATE_CHANGE_CODES, CloseConnection, CommandError
from .expressions import one_clock_per_command
from .failpoints import RETRYABLE_WRITE_COMMANDS, FailPoints
from .oplog import Oplog
from .storage import Storage
from .topology import ZERO_SIGNATURE, ClusterClock, Topology
from .transactions import (
    Transactions,
    TransactionStorage,
    in_transaction,
    transient_labels,
)
from .ttl import DEFAULT_SLEEP_S as DEFAULT_TTL_SLEEP_S
from .ttl import TtlStats

log = logging.getLogger(__name__)

# Commands refused while stepped down (everything that writes).
WRITE_COMMANDS = frozenset(
    {
        "insert",
        "update",
        "delete",
        "findAndModify",
        "findandmodify",
        "create",
        "drop",
        "dropDatabase",
        "renameCollection",
        "collMod",
        "createIndexes",
        "dropIndexes",
        "deleteIndexes",
        "commitTransaction",
        "abortTransaction",
    }
)
TRANSACTION_END_COMMANDS = frozenset({"commitTransaction", "abortTransaction"})
#: Commands whose filters and values meet stored documents, whose dates the store keeps naive UTC.
STORED_DOCUMENT_COMMANDS = frozenset(
    {"find", "count", "distinct", "delete", "update", "findAndModify", "findandmodify", "aggregate"}
)
# The storage a command runs on: a transaction's overlay view while one of its statements runs (set per
# connection task, so concurrent commands of other sessions keep seeing the shared storage).
_STATEMENT_STORAGE: contextvars.ContextVar[Storage | None] = contextvars.ContextVar(
    "statement_storage", default=None
)
# Retryable-write replies remembered per (lsid, txnNumber); old ones age out (drivers retry once, at once).
RETRY_CACHE_SIZE = 10_000
# Cursors idle this long are reaped, like the server's 10-minute cursor timeout.
CURSOR_IDLE_TIMEOUT_S = 600.0


@dataclass(slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 0
    replset: str = "rs0"
    server_version: str = "7.0.0"
    oplog_size: int = 1_000_000
    standalone: bool = False
    ttl_monitor_sleep_s: float = DEFAULT_TTL_SLEEP_S

    @property
    def address(self) -> str:
        """host:port as drivers write it (IPv6 literals in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.server_version.split(".")[:3] if p.isdigit())

    @property
    def max_wire_version(self) -> int:
        major, minor = (*self.version_tuple, 0, 0)[:2]
        table = {(6, 0): 17, (7, 0): 21, (8, 0): 25}
        if (major, minor) in table:
            return table[(major, minor)]
        if major >= 8:
            return 25 + minor
        return 21 if major == 7 else 17


@dataclass(slots=True, eq=False)
class Connection:
    """Per-socket state the commands may need."""

    conn_id: int
    peer: str
    app_name: str | None = None
    closed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class FindCursor:
    cursor_id: int
    ns: str
    docs: list[Any]
    position: int = 0
    last_used: float = field(default_factory=time.monotonic)


Handler = Callable[["Engine", Connection, str, dict[str, Any]], Awaitable[dict[str, Any]]]
COMMANDS: dict[str, Handler] = {}


def command(*names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for name in names:
            COMMANDS[name] = fn
        return fn

    return register


class Engine:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.clock = ClusterClock()
        self.topology = Topology()
        self.oplog = Oplog(config.oplog_size)
        self.shared_storage = Storage(self.oplog, self.clock, config.version_tuple)
        self.transactions = Transactions()
        self.failpoints = FailPoints()
        self.cursors: dict[int, ChangeStreamCursor | FindCursor] = {}
        self.retry_cache: OrderedDict[tuple[bytes, int, str], dict[str, Any]] = OrderedDict()
        self.started = time.monotonic()
        self.ttl_stats = TtlStats()
        # Set by the server: closes every client socket (emulatorDropConnections).
        self.drop_connections: Callable[[], int] = lambda: 0
        # Set by the server: the live client connections (serverStatus, emulatorDropConnections).
        self.connections_snapshot: Callable[[], list[Connection]] = list
        self.address = config.address

    @property
    def storage(self) -> Storage:
        """What commands read and write: the shared storage, or the running transaction's view of it."""
        return _STATEMENT_STORAGE.get() or self.shared_storage

    # -- cursors --------------------------------------------------------------------------------------
    def new_cursor_id(self) -> int:
        self._reap_cursors()
        while True:
            cursor_id = secrets.randbits(62) + 1
            if cursor_id not in self.cursors:
                return cursor_id

    def _reap_cursors(self) -> None:
        cutoff = time.monotonic() - CURSOR_IDLE_TIMEOUT_S
        for cursor_id in [c for c, cur in self.cursors.items() if cur.last_used < cutoff]:
            del self.cursors[cursor_id]

    def reset(self) -> None:
        """emulatorReset: drop all data, the oplog, cursors, failpoints and any step-down."""
        if self.topology.stepped_down:
            self.topology.step_down(0)
        self.shared_storage.reset()
        self.transactions.clear()
        self.oplog.clear()
        self.cursors.clear()
        self.failpoints.clear()
        self.retry_cache.clear()

    # -- replies --------------------------------------------------------------------------------------
    def decorate(self, reply: dict[str, Any]) -> dict[str, Any]:
        if not self.config.standalone:
            now = self.clock.now()
            reply["$clusterTime"] = {"clusterTime": now, "signature": ZERO_SIGNATURE}
            reply["operationTime"] = now
        return reply

    def error_reply(self, exc: CommandError) -> dict[str, Any]:
        reply = exc.to_reply()
        if exc.code in STATE_CHANGE_CODES:
            reply["topologyVersion"] = self.topology.version()
        return reply

    # -- dispatch -------------------------------------------------------------------------------------
    async def dispatch(
        self, conn: Connection, cmd: dict[str, Any], default_db: str = "admin"
    ) -> dict[str, Any]:
        if not cmd:
            return self.decorate(CommandError(59, "no command given").to_reply())
        name = next(iter(cmd))
        db = cmd.get("$db") or default_db
        retry_key = self._retry_key(name, cmd)
        try:
            if retry_key is not None and retry_key in self.retry_cache:
                return self.decorate(dict(self.retry_cache[retry_key]))
            with one_clock_per_command():
                reply = await self._run(conn, name, db, cmd, retry_key is not None)
            if retry_key is not None and reply.get("ok") == 1:
                self.retry_cache[retry_key] = dict(reply)
                while len(self.retry_cache) > RETRY_CACHE_SIZE:
                    self.retry_cache.popitem(last=False)
        except CommandError as exc:
            if in_transaction(cmd) and not exc.fixed_labels:
                exc.labels += [
                    label
                    for label in transient_labels(exc.code, name in TRANSACTION_END_COMMANDS)
                    if label not in exc.labels
                ]
            reply = self.error_reply(exc)
        except (CloseConnection, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("command %s failed inside the emulator", name)
            reply = CommandError(1, f"emulator internal error in {name}: {exc!r}").to_reply()
        return self.decorate(reply)

    def _retry_key(self, name: str, cmd: dict[str, Any]) -> tuple[bytes, int, str] | None:
        # Statements of a transaction share its txnNumber; only the transaction as a whole is retried.
        if name not in RETRYABLE_WRITE_COMMANDS or "txnNumber" not in cmd or in_transaction(cmd):
            return None
        lsid = cmd.get("lsid") or {}
        raw_id: Any = lsid.get("id")
        ident = raw_id.bytes if hasattr(raw_id, "bytes") else bytes(raw_id or b"")
        return (ident, int(cmd["txnNumber"]), name)

    async def _run(self, conn: Connection, name: str, db: str, cmd: dict[str, Any], retryable: bool) -> dict:
        # commit/abort are retryable writes too: a failpoint's error on them gets RetryableWriteError.
        retryable = retryable or name in TRANSACTION_END_COMMANDS
        action = self.failpoints.for_command(name, conn.app_name, retryable)
        if action is not None:
            if action.block_s:
                await asyncio.sleep(action.block_s)
            if action.close_connection:
                raise CloseConnection
            if action.error is not None:
                raise action.error
        handler = COMMANDS.get(name) or COMMANDS.get(name.lower())
        if handler is None:
            raise CommandError(59, f"no such command: '{name}'")
        if name in STORED_DOCUMENT_COMMANDS and not _opens_change_stream(cmd):
            # A change stream's events carry aware dates, as they come from the oplog: left as they are.
            cmd = naive_dates(cmd)
        if name in WRITE_COMMANDS and self.topology.stepped_down:
            raise CommandError(10107, "not primary", labels=["RetryableWriteError"] if retryable else [])
        if in_transaction(cmd) and name not in TRANSACTION_END_COMMANDS:
            reply = await self._run_statement(conn, name, db, cmd, handler)
        else:
            if "txnNumber" in cmd and "lsid" in cmd:
                self.transactions.note_retryable_write(cmd)
            reply = await handler(self, conn, db, cmd)
        if action is not None and action.write_concern_error is not None:
            # Statements inside a transaction are not retryable writes; commit and abort are.
            ends = name in TRANSACTION_END_COMMANDS
            _add_write_concern_error(reply, action.write_concern_error, ends or not in_transaction(cmd))
            if reply["writeConcernError"].get("code") in STATE_CHANGE_CODES:
                # As on any state-change error: the driver sees it is not newer than what its monitor
                # knows, and retries at once instead of waiting out the monitor's awaitable hello.
                reply["writeConcernError"]["topologyVersion"] = self.topology.version()
        elif name in WRITE_COMMANDS and _unsatisfiable(cmd.get("writeConcern")):
            # A one-member set applies the write but can never acknowledge w > 1.
            reply["writeConcernError"] = {
                "code": 100,
                "codeName": "UnsatisfiableWriteConcern",
                "errmsg": "Not enough data-bearing nodes",
            }
        return reply

    async def _run_statement(
        self, conn: Connection, name: str, db: str, cmd: dict[str, Any], handler: Handler
    ) -> dict[str, Any]:
        """One statement of a transaction, on the transaction's view of the storage. Any error aborts the
        transaction and is returned as a command error (mongod throws write errors in a transaction)."""
        txn = self.transactions.statement(cmd, name)
        token = _STATEMENT_STORAGE.set(TransactionStorage(self.shared_storage, txn, self.transactions))
        try:
            _refuse_change_stream(name, cmd)
            reply = await handler(self, conn, db, cmd)
            errors = reply.get("writeErrors")
            if errors:
                first = dict(errors[0])
                code, message = int(first.pop("code")), str(first.pop("errmsg", ""))
                first.pop("index", None)
                first.pop("codeName", None)
                raise CommandError(code, message, extra=first)
        except CommandError:
            self.transactions.end(txn, "aborted")
            raise
        finally:
            _STATEMENT_STORAGE.reset(token)
        return reply


def _refuse_change_stream(name: str, cmd: dict[str, Any]) -> None:
    pipeline = cmd.get("pipeline")
    if name == "aggregate" and isinstance(pipeline, list) and pipeline and "$changeStream" in pipeline[0]:
        raise CommandError(
            263,
            "Operation not permitted in transaction :: caused by :: Aggregation stage $changeStream "
            "cannot run within a multi-document transaction.",
        )


def _add_write_concern_error(reply: dict[str, Any], error: dict[str, Any], retryable: bool) -> None:
    """A write concern error as mongod reports it: its errorLabels moved to the reply; on a retryable
    write (or commit/abort) a retryable code earns RetryableWriteError."""
    error = dict(error)
    labels = error.pop("errorLabels", None)
    if labels is None and retryable and error.get("code") in RETRYABLE_WRITE_CODES:
        labels = ["RetryableWriteError"]
    reply["writeConcernError"] = error
    if labels:
        reply["errorLabels"] = list(labels)


def _unsatisfiable(write_concern: Any) -> bool:
    if not isinstance(write_concern, dict):
        return False
    w = write_concern.get("w")
    return isinstance(w, int) and not isinstance(w, bool) and w > 1


def _opens_change_stream(cmd: dict[str, Any]) -> bool:
    pipeline = cmd.get("pipeline")
    return bool(
        isinstance(pipeline, list)
        and pipeline
        and isinstance(pipeline[0], dict)
        and "$changeStream" in pipeline[0]
    )
