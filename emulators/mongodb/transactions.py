"""Multi-document transactions, as drivers run them: ``startTransaction``/``autocommit: false`` with the
session's ``lsid`` and ``txnNumber``, then ``commitTransaction`` or ``abortTransaction``.

A transaction works on overlays of the collections it touches: its writes go to a private change set
on top of the shared store (so other sessions and change streams cannot see them, while its own reads
do), and the change events it records are held back. Commit applies the change sets and appends the
held events to the oplog with one cluster time, the session's ``lsid`` and ``txnNumber``, and their
index in the transaction, which orders their resume tokens. Abort drops both. This is read-committed
plus first-committer-wins on documents (a document changed by others since the transaction first wrote
it fails the commit with WriteConflict), not snapshot isolation.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from bson import Binary, Timestamp
from mongomock.collection import Collection as MongomockCollection

from .errors import CommandError
from .oplog import OplogEntry
from .storage import Storage
from .topology import wall_time

__all__ = [
    "TRANSIENT_LABEL",
    "Transaction",
    "TransactionStorage",
    "Transactions",
    "in_transaction",
    "transient_labels",
]

TRANSIENT_LABEL = "TransientTransactionError"
NO_SUCH_TRANSACTION = 251
WRITE_CONFLICT = 112
TRANSACTION_TOO_OLD = 225
TRANSACTION_COMMITTED = 256
NOT_SUPPORTED_IN_TRANSACTION = 263
# mongod's transactionLifetimeLimitSeconds: an idle transaction is aborted after this long.
TRANSACTION_LIFETIME_S = 60.0
# Without auth, a session's uid is the SHA-256 of the empty user name.
ANONYMOUS_UID = Binary(hashlib.sha256(b"").digest())

# Commands a transaction may run (src/mongo/db/commands/txn_cmds and the per-command
# allowedInMultiDocumentTransaction flags); everything else is OperationNotSupportedInTransaction.
ALLOWED_IN_TRANSACTION = frozenset(
    {
        "find",
        "getMore",
        "killCursors",
        "aggregate",
        "distinct",
        "insert",
        "update",
        "delete",
        "findAndModify",
        "findandmodify",
        "create",
        "createIndexes",
        "commitTransaction",
        "abortTransaction",
        "bulkWrite",
    }
)

# Codes after which a statement of a transaction may be retried with the whole transaction
# (mongo::isTransientTransactionError: retriable errors, WriteConflict, NoSuchTransaction, ...).
_TRANSIENT_CODES = frozenset(
    {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 112, 24, 225, 251}
)

State = Literal["in_progress", "committed", "aborted"]


def in_transaction(cmd: dict[str, Any]) -> bool:
    """Whether a command belongs to a transaction (drivers send ``autocommit: false`` on every one)."""
    return "autocommit" in cmd or "startTransaction" in cmd


def transient_labels(code: int, commit_or_abort: bool, write_concern_error: bool = False) -> list[str]:
    """The label mongod adds to an error in a transaction (error_labels.cpp)."""
    if commit_or_abort:
        transient = code in (NO_SUCH_TRANSACTION, WRITE_CONFLICT) and not write_concern_error
    else:
        transient = code in _TRANSIENT_CODES
    return [TRANSIENT_LABEL] if transient else []


def session_key(cmd: dict[str, Any]) -> bytes:
    lsid = cmd.get("lsid")
    raw: Any = lsid.get("id") if isinstance(lsid, dict) else None
    if raw is None:
        raise CommandError(50768, "Transaction requires a session ID (lsid)")
    return raw.bytes if hasattr(raw, "bytes") else bytes(raw)


class OverlayStore:
    """A transaction's view of one collection's store: its own changes over the shared documents.

    Implements what mongomock's Collection and the emulator's storage use of a CollectionStore.
    ``changes`` maps a store key to the new document, or None once deleted; ``origins`` remembers the
    shared document each changed key had when the transaction first wrote it (for WriteConflict).
    """

    _MISSING = object()

    def __init__(self, base: Any, claim: Callable[[Any], None]) -> None:
        self.base = base
        self.name = base.name
        self.changes: dict[Any, dict[str, Any] | None] = {}
        self.origins: dict[Any, Any] = {}
        # Called before the transaction first changes a key (raises WriteConflict if another has it).
        self._claim = claim

    @property
    def indexes(self) -> dict[str, Any]:
        return self.base.indexes

    @property
    def is_created(self) -> bool:
        return bool(self.base.is_created) or any(doc is not None for doc in self.changes.values())

    @property
    def is_empty(self) -> bool:
        return next(self.documents, None) is None

    def __len__(self) -> int:
        return sum(1 for _ in self.documents)

    def __contains__(self, key: Any) -> bool:
        if key in self.changes:
            return self.changes[key] is not None
        return key in self.base

    def __getitem__(self, key: Any) -> dict[str, Any]:
        if key in self.changes:
            doc = self.changes[key]
            if doc is None:
                raise KeyError(key)
            return doc
        return self.base[key]

    def _remember(self, key: Any) -> None:
        if key not in self.origins:
            self._claim(key)
            self.origins[key] = self.base._documents.get(key, self._MISSING)

    def __setitem__(self, key: Any, doc: dict[str, Any]) -> None:
        self._remember(key)
        self.changes[key] = doc

    def __delitem__(self, key: Any) -> None:
        if key not in self:
            raise KeyError(key)
        self._remember(key)
        self.changes[key] = None

    def create_index(self, name: str, spec: dict[str, Any]) -> None:
        # Indexes are not transactional here: created on the shared collection at once.
        self.base.create_index(name, spec)

    @property
    def documents(self) -> Iterator[dict[str, Any]]:
        changes = self.changes
        shared = list(self.base._documents.items())
        for key, doc in shared:
            if key not in changes:
                yield doc
            elif changes[key] is not None:
                yield changes[key]  # type: ignore[misc]
        for key, new in list(changes.items()):
            if new is not None and key not in self.base._documents:
                yield new

    def conflicts(self) -> bool:
        """Whether another writer changed a document this transaction changed, since it first did."""
        current = self.base._documents
        return any(current.get(key, self._MISSING) is not origin for key, origin in self.origins.items())

    def apply(self) -> None:
        for key, doc in self.changes.items():
            if doc is None:
                if key in self.base._documents:
                    del self.base[key]
            else:
                self.base[key] = doc


@dataclass(eq=False)
class Transaction:
    """One transaction of one session: its overlays and its held-back change events."""

    lsid: dict[str, Any]
    txn_number: int
    state: State = "in_progress"
    overlays: dict[tuple[str, str], OverlayStore] = field(default_factory=dict)
    entries: list[OplogEntry] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)
    # Statements run so far (a transaction whose first statement failed is still "started").
    statements: int = 0


class TransactionStorage(Storage):
    """The storage a transaction's statements run on: shared metadata and clock, overlay collections,
    and an event log of its own. Everything else is inherited from ``Storage`` unchanged."""

    def __init__(self, base: Storage, txn: Transaction, table: Transactions) -> None:
        self._table = table
        self.oplog = base.oplog
        self.clock = base.clock
        self.server_version = base.server_version
        self.client = base.client
        self.meta = base.meta
        self._handles = {}
        self._base = base
        self._txn = txn

    def collection(self, db: str, coll: str) -> Any:
        handle = self._handles.get((db, coll))
        if handle is None:
            shared = self._base.collection(db, coll)
            overlay = self._txn.overlays.get((db, coll))
            if overlay is None:
                claim = functools.partial(self._table.claim, self._txn, db, coll)
                overlay = self._txn.overlays[(db, coll)] = OverlayStore(shared._store, claim)
            handle = MongomockCollection(
                shared.database, coll, {coll: overlay}, codec_options=shared.codec_options
            )
            self._handles[(db, coll)] = handle
        return handle

    def record(self, op: str, db: str, coll: str | None, **fields: Any) -> OplogEntry:
        # The real time and position are given at commit; until then the event is the transaction's.
        entry = OplogEntry(ts=Timestamp(0, 0), wall=wall_time(), op=op, db=db, coll=coll, **fields)
        self._txn.entries.append(entry)
        return entry


@dataclass(eq=False)
class _Session:
    txn_number: int
    txn: Transaction | None = None


class Transactions:
    """The server's transaction table: the latest transaction of each session."""

    def __init__(self) -> None:
        self._sessions: dict[bytes, _Session] = {}
        # Documents written by open transactions: a second transaction writing one gets WriteConflict.
        self._locks: dict[tuple[str, str, Any], Transaction] = {}

    def clear(self) -> None:
        self._sessions.clear()
        self._locks.clear()

    def claim(self, txn: Transaction, db: str, coll: str, key: Any) -> None:
        holder = self._locks.get((db, coll, key))
        if holder is not None and holder is not txn and holder.state == "in_progress":
            raise CommandError(
                WRITE_CONFLICT,
                "Caused by :: Write conflict during plan execution and yielding is disabled. :: Please "
                "retry your operation or multi-document transaction.",
            )
        self._locks[(db, coll, key)] = txn

    def _release(self, txn: Transaction) -> None:
        for (db, coll), overlay in txn.overlays.items():
            for key in overlay.origins:
                if self._locks.get((db, coll, key)) is txn:
                    del self._locks[(db, coll, key)]

    def end_sessions(self, ids: list[Any]) -> None:
        """endSessions/killSessions: abort the sessions' open transactions."""
        for lsid in ids:
            if isinstance(lsid, dict):
                session = self._sessions.pop(session_key({"lsid": lsid}), None)
                if session is not None:
                    self._abort_open(session)

    def _expire(self) -> None:
        cutoff = time.monotonic() - TRANSACTION_LIFETIME_S
        for key, session in list(self._sessions.items()):
            if session.txn is not None and session.txn.last_used < cutoff:
                self._abort_open(session)
                del self._sessions[key]

    def note_retryable_write(self, cmd: dict[str, Any]) -> None:
        """A write outside a transaction with a newer txnNumber aborts the session's open transaction."""
        if "lsid" not in cmd or "txnNumber" not in cmd:
            return
        session = self._sessions.get(session_key(cmd))
        number = int(cmd["txnNumber"])
        if session is not None and number > session.txn_number:
            self._abort_open(session)
            session.txn_number = number
            session.txn = None

    def _abort_open(self, session: _Session) -> None:
        if session.txn is not None and session.txn.state == "in_progress":
            self.end(session.txn, "aborted")

    def end(self, txn: Transaction, state: State) -> None:
        """Finish ``txn`` (commit applied already, or abort): release its documents, drop its work."""
        self._release(txn)
        txn.state = state
        txn.overlays.clear()
        txn.entries.clear()

    def statement(self, cmd: dict[str, Any], name: str) -> Transaction:
        """The transaction a statement (any command but commit/abort) runs in; starts it if asked."""
        if cmd.get("autocommit") is not False:
            raise CommandError(72, "Specifying autocommit=true is not allowed.")
        if "txnNumber" not in cmd:
            raise CommandError(72, "'autocommit' field requires a transaction number to also be specified")
        key = session_key(cmd)
        number = int(cmd["txnNumber"])
        session = self._sessions.get(key)
        if cmd.get("startTransaction"):
            self._expire()
            if session is not None and number < session.txn_number:
                raise CommandError(
                    TRANSACTION_TOO_OLD,
                    f"Cannot start transaction {number} on session because a newer transaction "
                    f"{session.txn_number} has already started.",
                )
            if session is not None and number == session.txn_number and session.txn is not None:
                raise CommandError(
                    NO_SUCH_TRANSACTION if session.txn.state == "aborted" else 256,
                    f"Transaction with {{ txnNumber: {number} }} has already been started",
                )
            if session is None:
                session = self._sessions[key] = _Session(number)
            self._abort_open(session)
            session.txn_number = number
            session.txn = Transaction(lsid={"id": cmd["lsid"]["id"], "uid": ANONYMOUS_UID}, txn_number=number)
        elif session is None or session.txn is None or session.txn_number != number:
            raise CommandError(
                NO_SUCH_TRANSACTION,
                f"Given transaction number {number} does not match any in-progress transactions."
                + (f" The active transaction number is {session.txn_number}" if session else ""),
            )
        txn = session.txn
        assert txn is not None
        if txn.state == "committed" and name not in ("commitTransaction", "abortTransaction"):
            raise CommandError(
                TRANSACTION_COMMITTED,
                f"Transaction with {{ txnNumber: {number} }} has been committed.",
            )
        if txn.state == "aborted":
            raise CommandError(
                NO_SUCH_TRANSACTION, f"Transaction with {{ txnNumber: {number} }} has been aborted."
            )
        if name not in ALLOWED_IN_TRANSACTION:
            self.end(txn, "aborted")
            raise CommandError(
                NOT_SUPPORTED_IN_TRANSACTION, f"Cannot run '{name}' in a multi-document transaction."
            )
        txn.last_used = time.monotonic()
        return txn

    def find(self, cmd: dict[str, Any]) -> Transaction | None:
        session = self._sessions.get(session_key(cmd))
        if session is None or session.txn is None or session.txn_number != int(cmd.get("txnNumber", -1)):
            return None
        return session.txn

    def commit(self, storage: Storage, cmd: dict[str, Any]) -> None:
        """commitTransaction: apply the transaction's changes and publish its events (idempotent)."""
        txn = self.find(cmd)
        number = int(cmd.get("txnNumber", -1))
        if txn is None:
            raise CommandError(
                NO_SUCH_TRANSACTION,
                f"Given transaction number {number} does not match any in-progress transactions.",
            )
        if txn.state == "committed":
            return  # a retried commit succeeds again
        if txn.state == "aborted":
            raise CommandError(
                NO_SUCH_TRANSACTION, f"Transaction with {{ txnNumber: {number} }} has been aborted."
            )
        if any(overlay.conflicts() for overlay in txn.overlays.values()):
            self.end(txn, "aborted")
            raise CommandError(
                WRITE_CONFLICT,
                "Write conflict during plan execution and yielding is disabled. :: Please retry your "
                "operation or multi-document transaction.",
            )
        for overlay in txn.overlays.values():
            overlay.apply()
        if txn.entries:
            ts = storage.clock.tick()
            wall = wall_time()
            for index, entry in enumerate(txn.entries):
                entry.ts, entry.wall, entry.txn_index = ts, wall, index
                entry.lsid, entry.txn_number = txn.lsid, txn.txn_number
                storage.oplog.append(entry)
        self.end(txn, "committed")

    def abort(self, cmd: dict[str, Any]) -> None:
        """abortTransaction: drop the transaction's changes and events."""
        txn = self.find(cmd)
        number = int(cmd.get("txnNumber", -1))
        if txn is None or txn.state == "aborted":
            raise CommandError(
                NO_SUCH_TRANSACTION,
                f"Given transaction number {number} does not match any in-progress transactions.",
            )
        if txn.state == "committed":
            raise CommandError(TRANSACTION_COMMITTED, "Transaction has been committed")
        self.end(txn, "aborted")
