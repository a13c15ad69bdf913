"""Change-stream cursors: an oplog position, a scope, options and the compiled user pipeline.

A getMore scans the oplog forward from the cursor's position, renders the events in scope the way the
server shapes them for these options, runs the user pipeline and stops at the batch limit. Events
that pass untouched through an empty pipeline with default options are encoded to BSON once per oplog
entry and shared by every cursor (the hot path of a connector tailing a busy collection).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from bson import Int64, Timestamp
from bson.raw_bson import RawBSONDocument

from .aggregation import run_pipeline
from .bsonvalues import encode
from .errors import CommandError
from .oplog import (
    HISTORY_LOST_MESSAGE,
    KIND_EVENT,
    KIND_INVALIDATE,
    Key,
    Oplog,
    OplogEntry,
    decode_token,
    encode_token,
    high_water_key,
)
from .storage import SYSTEM_DATABASES, Storage

ALLOWED_STAGES = frozenset(
    {
        "$match",
        "$project",
        "$addFields",
        "$set",
        "$unset",
        "$replaceRoot",
        "$replaceWith",
        "$redact",
        "$changeStreamSplitLargeEvent",
    }
)
KNOWN_STAGES = frozenset(
    {
        "$group",
        "$sort",
        "$limit",
        "$skip",
        "$lookup",
        "$unwind",
        "$out",
        "$merge",
        "$facet",
        "$count",
        "$bucket",
        "$sample",
        "$graphLookup",
        "$sortByCount",
        "$changeStream",
        "$geoNear",
        "$densify",
    }
)
_CHANGE_STREAM_OPTIONS = frozenset(
    {
        "fullDocument",
        "fullDocumentBeforeChange",
        "resumeAfter",
        "startAfter",
        "startAtOperationTime",
        "allChangesForCluster",
        "showExpandedEvents",
        "showSystemEvents",
        "showMigrationEvents",
        "allowToRunOnConfigDB",
        "allowToRunOnSystemNS",
    }
)

# The server's batch limit: a reply holds at most 16 MiB of documents (plus envelope); the first document
# of a batch always goes in (FindCommon::haveSpaceForNext).
MAX_BATCH_BYTES = 16 * 1024 * 1024
# An event, as the pipeline outputs it, is serialised with BSONObj's default size limit
# (BSONObjMaxInternalSize = 16 MiB + 16 KiB; PlanExecutorPipeline::_trySerializeToBson): a larger one fails
# the command with 10334 BSONObjectTooLarge. The check applies to the pipeline's output, so stages that
# shrink an event (dropping its images) keep it under the limit.
MAX_EVENT_BYTES = 16 * 1024 * 1024 + 16 * 1024
# $changeStreamSplitLargeEvent returns events up to kBSONObjMaxChangeEventSize (BSONObjMaxInternalSize less
# 8 KiB) whole and splits larger ones into fragments of at most that size less the resume token's
# (document_source_change_stream_split_large_event.{h,cpp}).
SPLIT_EVENT_BYTES = MAX_EVENT_BYTES - 8 * 1024
# The stage exists from 7.0.0, and in the 6.0 series from 6.0.9 (not in the 6.1-6.3 rapid releases);
# elsewhere it is an unknown stage (40324).
SPLIT_STAGE = "$changeStreamSplitLargeEvent"
_ID_MODIFIED_MESSAGE = (
    "Encountered an event whose _id field, which contains the resume token, was modified by the pipeline. "
    "Modifying the _id field of an event makes it impossible to resume the stream from that point. Only "
    "transformations that retain the unmodified _id field are allowed."
)
DEFAULT_FIRST_BATCH = 101
# Default awaitData wait when getMore has no maxTimeMS (the server's default is 1 s).
DEFAULT_AWAIT_S = 1.0

_CRUD = frozenset({"insert", "update", "replace", "delete"})
# A document of a batch with its position (its token is the postBatchResumeToken when it ends the batch).
Rendered = tuple[Key, RawBSONDocument]
_UPDATE_LIKE = frozenset({"update", "replace", "delete"})


def exposed_system_collection(coll: str) -> bool:
    """The system collections a database or deployment stream shows with `showSystemEvents` (mongod's
    kRegexAllCollectionsShowSystemEvents); every other `system.` collection stays hidden."""
    return coll in ("system.js", "system.views") or coll.startswith(("system.resharding.", "system.buckets."))


@dataclass(slots=True)
class Scope:
    """What a stream watches; decides which oplog entries it sees and which one invalidates it."""

    kind: Literal["cluster", "db", "coll"]
    db: str
    coll: str | None = None
    show_system_events: bool = False

    @property
    def ns(self) -> str:
        if self.kind == "coll":
            return f"{self.db}.{self.coll}"
        return f"{self.db}.$cmd.aggregate"

    def includes(self, entry: OplogEntry) -> bool:
        if self.kind == "coll":
            return entry.db == self.db and entry.coll == self.coll
        system = entry.coll is not None and entry.coll.startswith("system.")
        if system and not (self.show_system_events and exposed_system_collection(entry.coll or "")):
            return False
        if self.kind == "db":
            return entry.db == self.db
        return entry.db not in SYSTEM_DATABASES

    def invalidated_by(self, entry: OplogEntry) -> bool:
        if self.kind == "coll":
            return entry.op in ("drop", "rename") and entry.db == self.db and entry.coll == self.coll
        return self.kind == "db" and entry.op == "dropDatabase" and entry.db == self.db


@dataclass(slots=True)
class Options:
    """The $changeStream options that change how an event is rendered."""

    full_document: str = "default"
    before_change: str = "off"
    show_expanded: bool = False

    @property
    def default_shape(self) -> bool:
        return self.full_document == "default" and self.before_change == "off" and not self.show_expanded


def parse_options(spec: Any) -> tuple[Options, dict[str, Any]]:
    if not isinstance(spec, dict):
        raise CommandError(14, "the $changeStream stage must be an object")
    unknown = set(spec) - _CHANGE_STREAM_OPTIONS
    if unknown:
        raise CommandError(40415, f"BSON field '$changeStream.{sorted(unknown)[0]}' is an unknown field.")
    opts = Options(
        full_document=spec.get("fullDocument", "default"),
        before_change=spec.get("fullDocumentBeforeChange", "off"),
        show_expanded=bool(spec.get("showExpandedEvents", False)),
    )
    if opts.full_document not in ("default", "updateLookup", "whenAvailable", "required"):
        raise CommandError(2, f"unknown fullDocument mode: {opts.full_document!r}")
    if opts.before_change not in ("off", "whenAvailable", "required"):
        raise CommandError(2, f"unknown fullDocumentBeforeChange mode: {opts.before_change!r}")
    return opts, spec


def check_read_concern(read_concern: Any) -> None:
    """A change stream reads only majority-committed history: mongod refuses any other explicit level
    (document_source_change_stream.h, ``onlySingleReadConcernSupported``). No readConcern, or one with
    no level (empty, or only ``afterClusterTime`` from a causally consistent session), is accepted:
    the server upgrades the implicit default to majority."""
    if not isinstance(read_concern, dict) or "level" not in read_concern:
        return
    level = read_concern["level"]
    if level != "majority":
        raise CommandError(
            72,
            "Aggregation stage $changeStream cannot run with a readConcern other than 'majority'. "
            f"Current readConcern: {level}",
        )


def split_stage_supported(version: tuple[int, ...]) -> bool:
    """Whether a server of this version knows $changeStreamSplitLargeEvent (SERVER-71828, in 7.0.0 and
    backported to 6.0.9; the manual: "New in MongoDB 7.0 (and 6.0.9)")."""
    return version >= (7, 0) or (6, 0, 9) <= version < (6, 1)


def validate_pipeline(stages: list[Any], version: tuple[int, ...] = (7, 0, 0)) -> None:
    """Refuse the user pipeline at aggregate time, as the server does (errors there never resume)."""
    for n, stage in enumerate(stages):
        if not isinstance(stage, dict) or len(stage) != 1:
            raise CommandError(40323, "A pipeline stage specification object must contain exactly one field.")
        name = next(iter(stage))
        if name == SPLIT_STAGE:
            if not split_stage_supported(version):
                raise CommandError(40324, f"Unrecognized pipeline stage name: '{name}'")
            if stage[name] != {}:
                raise CommandError(7182800, "$changeStreamSplitLargeEvent spec should be an empty object")
            if n != len(stages) - 1:
                raise CommandError(
                    7182802, "$changeStreamSplitLargeEvent must be the last stage in the pipeline"
                )
            continue
        if name in ALLOWED_STAGES:
            continue
        if name == "$changeStream":
            raise CommandError(40602, "$changeStream is only valid as the first stage in a pipeline.")
        if name in KNOWN_STAGES:
            raise CommandError(40324, f"{name} is not permitted in a $changeStream pipeline")
        raise CommandError(40324, f"Unrecognized pipeline stage name: '{name}'")


@dataclass(slots=True, eq=False)
class ChangeStreamCursor:
    """A server-side cursor: any connection may getMore it, one at a time (``busy``)."""

    cursor_id: int
    scope: Scope
    options: Options
    pipeline: list[dict[str, Any]]
    next_seq: int
    oplog: Oplog
    storage: Storage
    pending_invalidate: OplogEntry | None = None
    exhausted: bool = False
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False
    # $changeStreamSplitLargeEvent was the last stage (stripped from ``pipeline``).
    split_large: bool = False
    # Resuming from fragment k of a split event: that event's first k fragments were already seen.
    skip_fragments: int = 0
    # Documents rendered but not yet returned (the rest of a split event after a full batch), with their
    # resume tokens: the next batch starts with them, as mongod's split stage keeps its fragment queue.
    pending: deque[Rendered] = field(default_factory=deque)

    @property
    def ns(self) -> str:
        return self.scope.ns

    # -- rendering ------------------------------------------------------------------------------------
    def _render(self, entry: OplogEntry) -> dict[str, Any]:
        event: dict[str, Any] = {
            "_id": encode_token(entry.key),
            "operationType": entry.op,
            "clusterTime": entry.ts,
            "wallTime": entry.wall,
        }
        opts = self.options
        if opts.show_expanded and entry.collection_uuid is not None:
            event["collectionUUID"] = entry.collection_uuid
        if entry.lsid is not None:
            # Operations of a committed transaction name the session and transaction that made them.
            event["lsid"] = entry.lsid
            event["txnNumber"] = Int64(entry.txn_number or 0)
        if entry.op in ("insert", "replace"):
            event["fullDocument"] = entry.full_document
        event["ns"] = {"db": entry.db, "coll": entry.coll} if entry.coll is not None else {"db": entry.db}
        if entry.document_key is not None:
            event["documentKey"] = entry.document_key
        if entry.op == "update":
            desc = dict(entry.update_description or {})
            ambiguous = entry.extra.get("disambiguatedPaths")
            if opts.show_expanded and ambiguous:
                desc["disambiguatedPaths"] = ambiguous
            event["updateDescription"] = desc
            self._add_full_document(event, entry)
        if entry.op in _UPDATE_LIKE and opts.before_change != "off":
            if entry.pre_image is None and opts.before_change == "required":
                raise CommandError(
                    47,
                    "Change stream was configured to require a pre-image for all update, delete and "
                    f"replace events, but the pre-image was not found for event: {event['_id']}",
                )
            event["fullDocumentBeforeChange"] = entry.pre_image
        if entry.op not in _CRUD:
            self._add_ddl_fields(event, entry)
        return event

    def _add_full_document(self, event: dict[str, Any], entry: OplogEntry) -> None:
        mode = self.options.full_document
        if mode == "updateLookup":
            assert entry.coll is not None and entry.document_key is not None
            meta = self.storage.get_meta(entry.db, entry.coll)
            event["fullDocument"] = (
                self.storage.find_one_by_id(entry.db, entry.coll, entry.document_key["_id"]) if meta else None
            )
        elif mode in ("whenAvailable", "required"):
            if entry.post_image is None and mode == "required":
                raise CommandError(
                    47,
                    "Change stream was configured to require a post-image for all update, delete and "
                    f"replace events, but the post-image was not found for event: {event['_id']}",
                )
            event["fullDocument"] = entry.post_image

    def _add_ddl_fields(self, event: dict[str, Any], entry: OplogEntry) -> None:
        if "to" in entry.extra:
            event["to"] = entry.extra["to"]
        if self.options.show_expanded:
            if "operationDescription" in entry.extra:
                event["operationDescription"] = entry.extra["operationDescription"]
            if entry.op == "modify" and "stateBeforeChange" in entry.extra:
                event["stateBeforeChange"] = entry.extra["stateBeforeChange"]
            if "nsType" in entry.extra and self.storage.server_version >= (8, 1):
                event["nsType"] = entry.extra["nsType"]

    def _apply_pipeline(self, event: dict[str, Any], key: Key, skip: int = 0) -> list[Rendered]:
        """The event after the user pipeline, encoded, with its position: [] if filtered out, the
        fragments after the first ``skip`` if the split stage splits it."""
        token = event["_id"]
        if self.pipeline:
            out = run_pipeline([event], self.pipeline)
            if not out:
                return []
            event = out[0]
            if event.get("_id") != token:
                raise CommandError(280, _ID_MODIFIED_MESSAGE, labels=["NonResumableChangeStreamError"])
        raw = RawBSONDocument(encode(event))
        size = len(raw.raw)
        if self.split_large and size > SPLIT_EVENT_BYTES:
            return _split_event(event, key, skip)
        if skip:
            raise CommandError(
                280,
                "Attempted to resume from a split event fragment, but the event in the resumed stream was "
                "not large enough to be split",
            )
        if size > MAX_EVENT_BYTES:
            raise CommandError(
                10334,
                f"BSONObj size: {size} (0x{size:X}) is invalid. Size must be between 0 and "
                f"{MAX_EVENT_BYTES}(16MB) First element: _id: {token!r}",
            )
        return [(key, raw)]

    def _event(self, entry: OplogEntry, skip: int = 0) -> list[Rendered]:
        if self.options.default_shape and not self.pipeline and not skip:
            raw = entry.raw_default
            if raw is None:
                docs = self._apply_pipeline(self._render(entry), entry.key)
                if len(docs) != 1 or len(docs[0][1].raw) > SPLIT_EVENT_BYTES:
                    return docs  # split, or whole only for streams without the split stage
                raw = entry.raw_default = docs[0][1]
            return [(entry.key, raw)]
        return self._apply_pipeline(self._render(entry), entry.key, skip)

    def _invalidate_event(self, entry: OplogEntry) -> list[Rendered]:
        key = entry.key_of(KIND_INVALIDATE)
        event = {
            "_id": encode_token(key),
            "operationType": "invalidate",
            "clusterTime": entry.ts,
            "wallTime": entry.wall,
        }
        return self._apply_pipeline(event, key)

    # -- batches --------------------------------------------------------------------------------------
    def fill(self, max_docs: int, max_bytes: int = MAX_BATCH_BYTES) -> tuple[list[RawBSONDocument], dict]:
        """Scan forward; return (events, postBatchResumeToken). Sets ``exhausted`` after an invalidate.

        The first document always goes in; others while the batch stays within 16 MiB (mongod's
        FindCommon::haveSpaceForNext). A batch that ends inside a split event (``batchSize``, or the byte
        limit) keeps the remaining fragments for the next one, and its postBatchResumeToken is the last
        returned fragment's token, as mongod's split stage keeps its fragment queue.
        """
        oplog = self.oplog
        docs: list[RawBSONDocument] = []
        size = 0
        last: Key | None = None
        pending = self.pending
        while pending and len(docs) < max_docs:
            raw = pending[0][1]
            if docs and size + len(raw.raw) > max_bytes:
                break
            last = pending.popleft()[0]
            docs.append(raw)
            size += len(raw.raw)
        if pending:
            assert last is not None
            return docs, encode_token(last)
        if self.next_seq < oplog.first_seq:
            raise CommandError(286, HISTORY_LOST_MESSAGE)
        if self.pending_invalidate is not None:
            entry, self.pending_invalidate = self.pending_invalidate, None
            if len(docs) < max_docs:
                return self._finish_invalidate(entry, docs)
            self.pending_invalidate = entry
            return docs, encode_token(last or entry.key)
        scope = self.scope
        show_expanded = self.options.show_expanded
        end = oplog.end_seq
        while self.next_seq < end and len(docs) < max_docs:
            entry = oplog.get(self.next_seq)
            self.next_seq += 1
            if not scope.includes(entry) or (entry.expanded and not show_expanded):
                continue
            skip, self.skip_fragments = self.skip_fragments, 0
            rendered = self._event(entry, skip)
            for index, (key, raw) in enumerate(rendered):
                n = len(raw.raw)
                if len(docs) >= max_docs or (docs and size + n > max_bytes):
                    self.pending = deque(rendered[index:])
                    if scope.invalidated_by(entry):
                        self.pending_invalidate = entry
                    return docs, encode_token(last or entry.key)
                docs.append(raw)
                size += n
                last = key
            if scope.invalidated_by(entry):
                if len(docs) < max_docs:
                    return self._finish_invalidate(entry, docs)
                self.pending_invalidate = entry
                return docs, encode_token(last or entry.key)
        if self.next_seq < end and last is not None:
            return docs, encode_token(last)
        return docs, encode_token(high_water_key(self.storage.clock.now()))

    def _finish_invalidate(self, entry: OplogEntry, docs: list[RawBSONDocument]) -> tuple[list, dict]:
        docs.extend(raw for _, raw in self._invalidate_event(entry))
        self.exhausted = True
        return docs, encode_token(entry.key_of(KIND_INVALIDATE))

    async def next_batch(self, batch_size: int | None, max_await_s: float) -> tuple[list, dict]:
        """getMore: return matching events at once, else wait for new ones up to ``max_await_s``."""
        limit = batch_size if batch_size else 1 << 30
        deadline = time.monotonic() + max_await_s
        while True:
            docs, pbrt = self.fill(limit)
            if docs or self.exhausted:
                return docs, pbrt
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return docs, pbrt
            await self.oplog.wait_for_append(remaining)
            await asyncio.sleep(0)


def position_cursor(cursor: ChangeStreamCursor, spec: dict[str, Any]) -> None:
    """Set where a new stream starts reading (and what it owes first: fragments, an invalidate)."""
    oplog = cursor.oplog
    if "startAtOperationTime" in spec:
        ts = spec["startAtOperationTime"]
        if not isinstance(ts, Timestamp):
            raise CommandError(14, "startAtOperationTime must be a timestamp")
        cursor.next_seq = oplog.seq_at_or_after(ts)
        return
    if "resumeAfter" not in spec and "startAfter" not in spec:
        cursor.next_seq = oplog.end_seq
        return
    key = decode_token(spec.get("resumeAfter") or spec.get("startAfter"))
    kind = key[3]
    if kind == KIND_INVALIDATE and "resumeAfter" in spec:
        raise CommandError(
            260,
            "Attempting to resume a change stream using 'resumeAfter' is not allowed from an "
            "invalidate notification.",
        )
    if KIND_EVENT < kind < KIND_INVALIDATE:
        # A fragment of a split event (pipeline.cpp, Pipeline::validateCommon): only a pipeline that
        # splits can reproduce the split; it resumes inside that event, after the fragments seen.
        if not cursor.split_large:
            raise CommandError(
                280,
                "To resume from a split event, the $changeStream pipeline must include a "
                "$changeStreamSplitLargeEvent stage",
            )
        cursor.next_seq = oplog.seq_at_key((key[0], key[1], key[2], KIND_EVENT))
        if cursor.next_seq < oplog.end_seq and oplog.get(cursor.next_seq).key[:3] == key[:3]:
            cursor.skip_fragments = kind
        return
    cursor.next_seq = oplog.seq_after(key)
    if kind == KIND_EVENT and cursor.next_seq > oplog.first_seq:
        # Resuming after the event that invalidated this stream: the invalidate comes first.
        entry = oplog.get(cursor.next_seq - 1)
        if entry.key == key and cursor.scope.invalidated_by(entry):
            cursor.pending_invalidate = entry


def _split_event(event: dict[str, Any], key: Key, skip: int) -> list[Rendered]:
    """$changeStreamSplitLargeEvent (change_stream_split_event_helpers.cpp, splitChangeEvent): the
    top-level fields but `_id`, ordered by their BSON size and then by name, are packed greedily into
    fragments (so the first holds as many fields as possible), each under the size limit less the resume
    token's size; every fragment starts with its own `_id` token and `splitEvent: {fragment, of}`. The
    first ``skip`` fragments (already seen by a resuming client) are not returned."""
    token_size = len(encode(event["_id"]))
    limit = SPLIT_EVENT_BYTES - token_size
    fields = sorted(
        ((len(encode({name: value})) - 5, name.encode("utf-8", "surrogateescape"), name, value))
        for name, value in event.items()
        if name != "_id"
    )
    if not fields:
        raise CommandError(7182502, "Cannot split an empty event or an event containing solely '_id' field")
    groups: list[list[tuple[str, Any]]] = []
    index = 0
    while index < len(fields):
        number = len(groups) + 1
        head = {"_id": encode_token(_fragment_key(key, number)), "splitEvent": {"fragment": number, "of": 0}}
        # The fragment with its metadata ($sortKey: the token) as the server sizes it.
        used = len(encode(head)) + len("$sortKey") + 2 + token_size
        group: list[tuple[str, Any]] = []
        while True:
            field_size, _, name, value = fields[index]
            group.append((name, value))
            used += field_size
            index += 1
            if index == len(fields) or used + fields[index][0] > limit:
                break
        if used > limit:
            raise CommandError(
                7182500,
                f"Splitting change event failed: fragment size {used} is greater than maximum allowed "
                f"fragment size {limit}",
            )
        groups.append(group)
    if skip >= len(groups):
        raise CommandError(
            280,
            "Attempted to resume from a split event, but the resumed stream produced a different split. "
            "Ensure that the pipeline used to resume is the same as the original",
        )
    fragments: list[Rendered] = []
    for number, group in enumerate(groups, start=1):
        if number <= skip:
            continue
        fragment_key = _fragment_key(key, number)
        doc: dict[str, Any] = {
            "_id": encode_token(fragment_key),
            "splitEvent": {"fragment": number, "of": len(groups)},
        }
        doc.update(group)
        fragments.append((fragment_key, RawBSONDocument(encode(doc))))
    return fragments


def _fragment_key(key: Key, number: int) -> Key:
    if number >= KIND_INVALIDATE:
        raise CommandError(7182500, "Splitting change event failed: too many fragments")
    return (key[0], key[1], key[2], number)


__all__ = [
    "KIND_EVENT",
    "ChangeStreamCursor",
    "Options",
    "Scope",
    "check_read_concern",
    "parse_options",
    "position_cursor",
    "split_stage_supported",
    "validate_pipeline",
]
