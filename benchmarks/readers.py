"""The baselines, each run as its own process: `python -m benchmarks.readers limit|raw|naive ...`.

- limit: the change-stream read with PyMongo's async API (`watch()`), counting events and doing nothing
  else; what no connector built on this driver's change-stream API can beat. The driver decodes every
  event into a dict.
- raw: the same read with no per-event work at all: the reader opens the change stream itself (an
  `aggregate` command with `$changeStream`), then loops `getMore` in one explicit session and counts
  `len(nextBatch)`; the batches stay raw bytes (RawBSONDocument). How far both readers are from what the
  wire and the server allow.
- naive: what a tutorial writes: `async for change in stream: await http.post(...)` to Ably's
  single-channel publish endpoint, one request per event (httpx, Basic auth, X-Ably-Version).

All replay the backlog from `--start-at` and print one JSON line when done: events, wall times (first
event, last event, process start), and their own CPU seconds and peak RSS from getrusage.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from bson import json_util
from bson.codec_options import CodecOptions
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import AsyncMongoClient

from benchmarks.workloads import PIPELINE

PROCESS_STARTED_AT = time.time()
ABLY_PROTOCOL_VERSION = "6"
#: As Ably's own client libraries default to (ABLY-CONTRACT.md): a hung request cannot stall the run.
HTTP_TIMEOUT_S = 10.0
SERVER_SELECTION_TIMEOUT_MS = 10_000
#: The raw reader's awaitData wait per getMore (the server's default), as the driver's watch() uses.
RAW_MAX_TIME_MS = 1000
#: The raw reader's replies stay bytes: each event of a batch is a RawBSONDocument, never decoded.
RAW_CODEC = CodecOptions(document_class=RawBSONDocument)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readers", description=__doc__)
    parser.add_argument("mode", choices=["limit", "raw", "naive"])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--collection", default="", help="empty: watch the whole database")
    parser.add_argument("--start-at", required=True, help="seconds.increment of an operation time")
    parser.add_argument("--events", type=int, required=True, help="stop after this many events")
    parser.add_argument("--batch-size", type=int, default=0, help="getMore batch size; 0: the server's")
    parser.add_argument("--ably-url", default="")
    parser.add_argument("--key", default="")
    return parser.parse_args(argv)


def cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Clock:
    """Counts events; remembers when the first and last came, and the CPU spent before the first
    (imports and connecting), so the steady-state CPU cost per event can be told apart from start-up."""

    def __init__(self) -> None:
        self.first_at = 0.0
        self.last_at = 0.0
        self.cpu_at_first = 0.0
        self.count = 0

    def tick(self, events: int = 1) -> None:
        """`events` more arrived (the raw reader counts a whole batch at once)."""
        if events <= 0:
            return
        self.last_at = time.time()
        if not self.count:
            self.first_at = self.last_at
            self.cpu_at_first = cpu_now()
        self.count += events


def start_timestamp(args: argparse.Namespace) -> Timestamp:
    seconds, _, increment = args.start_at.partition(".")
    return Timestamp(int(seconds), int(increment or 0))


async def replay(args: argparse.Namespace, clock: Clock, http: httpx.AsyncClient | None) -> None:
    start = start_timestamp(args)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        args.uri, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS
    )
    try:
        db = client[args.db]
        target = db[args.collection] if args.collection else db
        options: dict[str, Any] = {"batch_size": args.batch_size} if args.batch_size else {}
        async with await target.watch(PIPELINE, start_at_operation_time=start, **options) as stream:
            async for change in stream:
                if http is not None:
                    channel = quote(change["_ablyChannel"], safe="")
                    body = {
                        "name": change["operationType"],
                        "data": json_util.dumps(change),
                        "encoding": "json",
                    }
                    response = await http.post(f"/channels/{channel}/messages", json=body)
                    response.raise_for_status()
                clock.tick()
                if clock.count >= args.events:
                    break
    finally:
        await client.close()


async def replay_raw(args: argparse.Namespace, clock: Clock) -> None:
    """The change stream by hand: `aggregate` with `$changeStream`, then `getMore` until `--events` have
    come, all in one explicit session (the server ties the cursor to it); only the batch lengths are
    looked at. Counts at most `--events`, like the other readers, even if the last batch brought more."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        args.uri, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS
    )
    db = client[args.db]
    cursor_name = args.collection or "$cmd.aggregate"
    aggregate: dict[str, Any] = {
        "aggregate": args.collection or 1,
        "pipeline": [{"$changeStream": {"startAtOperationTime": start_timestamp(args)}}, *PIPELINE],
        "cursor": {"batchSize": args.batch_size} if args.batch_size else {},
    }
    try:
        async with client.start_session(causal_consistency=False) as session:
            reply = await db.command(aggregate, session=session, codec_options=RAW_CODEC)
            cursor = reply["cursor"]
            cursor_id: Int64 = cursor["id"]
            clock.tick(min(len(cursor["firstBatch"]), args.events))
            get_more: dict[str, Any] = {
                "getMore": cursor_id,
                "collection": cursor_name,
                "maxTimeMS": RAW_MAX_TIME_MS,
            }
            if args.batch_size:
                get_more["batchSize"] = args.batch_size
            try:
                while clock.count < args.events:
                    if not cursor_id:
                        raise RuntimeError(f"the server closed the change stream after {clock.count} events")
                    reply = await db.command(get_more, session=session, codec_options=RAW_CODEC)
                    cursor = reply["cursor"]
                    cursor_id = cursor["id"]
                    clock.tick(min(len(cursor["nextBatch"]), args.events - clock.count))
            finally:
                if cursor_id:
                    await db.command(
                        {"killCursors": cursor_name, "cursors": [cursor_id]},
                        session=session,
                        codec_options=RAW_CODEC,
                    )
    finally:
        await client.close()


async def run(args: argparse.Namespace) -> Clock:
    clock = Clock()
    if args.mode == "limit":
        await replay(args, clock, None)
        return clock
    if args.mode == "raw":
        await replay_raw(args, clock)
        return clock
    key_name, _, secret = args.key.partition(":")
    async with httpx.AsyncClient(
        base_url=args.ably_url,
        auth=(key_name, secret),
        headers={"X-Ably-Version": ABLY_PROTOCOL_VERSION},
        timeout=HTTP_TIMEOUT_S,
    ) as http:
        await replay(args, clock, http)
    return clock


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock = asyncio.run(run(args))
    report = {
        "events": clock.count,
        "process_started_at": PROCESS_STARTED_AT,
        "first_at": clock.first_at,
        "last_at": clock.last_at,
        "cpu_s": cpu_now(),
        "cpu_at_first": clock.cpu_at_first,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # KiB on Linux
    }
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
