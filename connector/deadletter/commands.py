"""`livesync-connector deadletter list | show | replay | purge`, for any source with a dead-letter store.

Exit status (also in connector/cli.py and the README):
    0  done (`list` printed what matched, even nothing; every selected record replayed or purged)
    1  a fatal error (the database or Ably unreachable, Ably refusing the key), or some records could
       not be replayed: they stay dead letters with the new reason, and are listed
    2  usage: a bad option or time, replay/purge without a selection, purge without --yes
    3  nothing selected: `show` of an unknown id, `replay` or `purge` whose selection is empty (a second
       replay of the same records: they are marked replayed; add --again to send them once more)

The parser is built here with standard-library imports only, so `--help` stays quick.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from connector.deadletter.model import DeadLetter, Selection, parse_when

if TYPE_CHECKING:
    from connector.ably.publisher import BatchClient
    from connector.config import Settings
    from connector.deadletter.replay import Planned
    from connector.deadletter.store import DeadLetterStore
    from connector.errors import AblyError

__all__ = [
    "EXIT_FATAL",
    "EXIT_NOTHING",
    "EXIT_OK",
    "EXIT_USAGE",
    "add_parser",
    "run_command",
]

EXIT_OK: Final = 0
EXIT_FATAL: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOTHING: Final = 3
#: `list` prints at most this many records unless --limit says otherwise.
LIST_LIMIT: Final = 100
#: Records a replay reads, publishes and marks at a time (memory stays bounded).
REPLAY_PAGE: Final = 1000
#: How long a replay may take to get Ably's answer for everything one page sends (the publisher retries
#: transient failures meanwhile); what is still unsettled then is reported and left unmarked.
REPLAY_TIMEOUT_S: Final = 120.0

Out = Callable[[str], None]
OpenStore = Callable[["Settings"], "DeadLetterStore"]


def _filters() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("filters (all given must match)")
    group.add_argument("--kind", help="no_channel, invalid, too_large, undecodable, rejected")
    group.add_argument("--reason", help="a substring of the reason (case-insensitive)")
    group.add_argument("--channel", help="a channel name, or a glob (orders:*)")
    group.add_argument("--since", help="dead-lettered at or after: ISO 8601 time or a time ago (2h, 7d)")
    group.add_argument("--until", help="dead-lettered before: ISO 8601 time or a time ago")
    group.add_argument("--limit", type=int, help="at most this many records, oldest first")
    return parent


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `deadletter` command and its four subcommands."""
    filters = _filters()
    parser = sub.add_parser("deadletter", help="list, inspect, replay or purge dead letters")
    commands = parser.add_subparsers(dest="deadletter_command", required=True)
    listing = commands.add_parser("list", parents=[filters], help="print dead letters as a table")
    listing.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    state = listing.add_mutually_exclusive_group()
    state.add_argument("--replayed", action="store_true", help="only records already replayed")
    state.add_argument("--pending", action="store_true", help="only records not replayed yet")
    show = commands.add_parser("show", help="print one dead letter whole (JSON)")
    show.add_argument("id", help="its message id (resume token _data, or outbox sequence_id)")
    replay = commands.add_parser(
        "replay", parents=[filters], help="republish dead letters once the cause is fixed, and mark them"
    )
    replay.add_argument("--id", action="append", default=[], help="a record's id (repeatable)")
    replay.add_argument("--all", action="store_true", help="every record not replayed yet")
    replay.add_argument("--again", action="store_true", help="include records already replayed")
    replay.add_argument(
        "--as-original",
        action="store_true",
        help="send the stored message whole instead of the compact 'changed, refetch' form",
    )
    replay.add_argument("--dry-run", action="store_true", help="print what would be sent; send nothing")
    replay.add_argument(
        "--timeout", type=float, default=REPLAY_TIMEOUT_S, help="seconds to wait for Ably's answers, per page"
    )
    purge = commands.add_parser("purge", parents=[filters], help="delete dead letters (needs --yes)")
    purge.add_argument("--id", action="append", default=[], help="a record's id (repeatable)")
    purge.add_argument("--all", action="store_true", help="every record")
    purge.add_argument("--replayed", action="store_true", help="only records already replayed")
    purge.add_argument("--yes", action="store_true", help="confirm the deletion")


class UsageError(ValueError):
    """Raised when the options cannot select anything meaningful (exit 2)."""


def selection_from(args: argparse.Namespace) -> Selection:
    """The Selection the options describe; raises UsageError."""
    command = args.deadletter_command
    if command == "show":
        return Selection(ids=(args.id,))
    try:
        since = parse_when(args.since) if args.since else None
        until = parse_when(args.until) if args.until else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    replayed: bool | None = None
    if command == "list":
        replayed = True if args.replayed else False if args.pending else None
    elif command == "replay":
        replayed = None if args.again else False
    elif command == "purge":
        replayed = True if args.replayed else None
    selection = Selection(
        ids=tuple(getattr(args, "id", ())),
        kind=args.kind,
        reason=args.reason,
        channel=args.channel,
        since=since,
        until=until,
        replayed=replayed,
        limit=args.limit if args.limit is not None or command != "list" else LIST_LIMIT,
    )
    if command in ("replay", "purge"):
        if args.all and selection.ids:
            raise UsageError(f"{command}: --all and --id exclude each other")
        if not (args.all or selection.narrowed or (command == "purge" and args.replayed)):
            raise UsageError(
                f"{command}: say which records: --id ID, filters (--kind, --channel ...), or --all"
            )
    return selection


async def run_command(settings: Settings, args: argparse.Namespace, open_store: OpenStore, out: Out) -> int:
    """Run one `deadletter` subcommand; errors go to stderr as one line each."""
    from connector.errors import ConnectorError

    command = args.deadletter_command
    try:
        selection = selection_from(args)
    except UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if command == "purge" and not args.yes:
        _err("purge deletes dead letters for good; repeat with --yes to confirm")
        return EXIT_USAGE
    store: DeadLetterStore | None = None
    try:
        store = open_store(settings)
        await store.open()
        if command == "list":
            return await _list(store, selection, args, out)
        if command == "show":
            return await _show(store, args.id, out)
        if command == "replay":
            return await _replay(store, selection, settings, args, out)
        return await _purge(store, selection, out)
    except ConnectorError as exc:
        _err(f"deadletter {command}: {exc} (code {exc.code})")
        return EXIT_FATAL
    finally:
        if store is not None:
            await store.close()


def _err(text: str) -> None:
    print(f"livesync-connector: {text}", file=sys.stderr)


async def _list(store: DeadLetterStore, selection: Selection, args: argparse.Namespace, out: Out) -> int:
    from connector.deadletter import output

    records = await store.find(selection)
    if args.json:
        output.records_json(records, out)
        return EXIT_OK
    if not records:
        out(f"no dead letters match in {store.where}")
        return EXIT_OK
    output.table(records, out)
    more = " (the limit: --limit N shows more)" if selection.limit and len(records) == selection.limit else ""
    out(f"{len(records)} dead letter(s) in {store.where}{more}")
    return EXIT_OK


async def _show(store: DeadLetterStore, record_id: str, out: Out) -> int:
    from connector.deadletter import output

    record = await store.get(record_id)
    if record is None:
        _err(f"no dead letter {record_id!r} in {store.where}")
        return EXIT_NOTHING
    output.record_json(record, out)
    return EXIT_OK


async def _selected(store: DeadLetterStore, selection: Selection, what: str) -> list[DeadLetter] | None:
    records = await store.find(selection)
    missing = [i for i in selection.ids if i not in {r.id for r in records}]
    if missing:
        hint = " (or already replayed: add --again)" if what == "replay" else ""
        _err(f"{what}: no such dead letter{hint}: {', '.join(missing)}")
    if not records:
        _err(f"{what}: no dead letters match in {store.where}; nothing to do")
        return None
    return records


async def _replay(
    store: DeadLetterStore, selection: Selection, settings: Settings, args: argparse.Namespace, out: Out
) -> int:
    """Page by page (REPLAY_PAGE records, in stream order), so memory stays bounded however many are
    selected; each page is published, settled and marked before the next is read."""
    from connector.ably.client import ably_from

    first = replace(selection, limit=_page_limit(selection.limit, 0))
    records = await _selected(store, first, "replay")
    if records is None:
        return EXIT_NOTHING
    tally = _Tally()
    async with ably_from(settings) as client:
        while records:
            fatal = await _replay_page(store, records, settings, args, client, out, tally)
            if fatal is not None or (selection.limit and tally.selected >= selection.limit):
                break
            limit = _page_limit(selection.limit, tally.selected)
            records = await store.find(replace(selection, after=records[-1].id, limit=limit))
    if args.dry_run:
        out(f"dry run: {tally.selected} dead letter(s) selected; nothing sent, nothing marked")
        return EXIT_OK
    out(
        f"replayed {tally.published} of {tally.selected} dead letter(s) from {store.where}"
        + (f"; {tally.failed} still cannot be published (they stay dead letters)" if tally.failed else "")
        + (f"; {tally.unsent} not settled, left unmarked (replay them again)" if tally.unsent else "")
    )
    if tally.fatal is not None:
        _err(f"replay stopped: {tally.fatal}; {_hint(tally.fatal, None)}")
    return EXIT_OK if not tally.failed and not tally.unsent and tally.fatal is None else EXIT_FATAL


@dataclass(slots=True)
class _Tally:
    selected: int = 0
    published: int = 0
    failed: int = 0
    unsent: int = 0
    fatal: AblyError | None = None


def _page_limit(limit: int | None, done: int) -> int:
    return REPLAY_PAGE if not limit else min(REPLAY_PAGE, limit - done)


def _hint(error: AblyError, channel: str | None) -> str:
    from connector.deadletter.replay import refusal_hint

    return refusal_hint(error, channel)


async def _replay_page(
    store: DeadLetterStore,
    records: list[DeadLetter],
    settings: Settings,
    args: argparse.Namespace,
    client: BatchClient,
    out: Out,
    tally: _Tally,
) -> AblyError | None:
    """Plan, publish and mark one page; the fatal error that stopped it, if any."""
    from connector.deadletter import replay

    tally.selected += len(records)
    planned = replay.plan(store, records, settings, as_original=args.as_original)
    if args.dry_run:
        _dry_run(planned, out)
        return None
    for item in planned:
        if item.error is not None:
            tally.failed += 1
            await store.mark_failed(
                item.record, replay.now(), item.error.reason, item.error.code, item.error.kind
            )
            record = item.record
            out(f"FAILED    {record.id} on {record.channel!r}: {item.error.reason} (stays a dead letter)")
    sent, fatal = await replay.publish(planned, settings, client, timeout=args.timeout)
    for outcome in sent:
        record = outcome.planned.record
        if not outcome.done:
            tally.unsent += 1
            continue
        if outcome.error is None:
            tally.published += 1
            await store.mark_published(record, replay.now(), outcome.planned.form)
            out(f"replayed  {record.id} on {record.channel!r} ({outcome.planned.form})")
            continue
        tally.failed += 1
        error = outcome.error
        await store.mark_failed(
            record, replay.now(), f"rejected by Ably: {error}", error.ably_code or error.code, "rejected"
        )
        out(f"FAILED    {record.id} on {record.channel!r}: {error}; {_hint(error, record.channel)}")
    tally.fatal = fatal
    return fatal


def _dry_run(planned: list[Planned], out: Out) -> None:
    """Print what one page would send."""
    import orjson

    for item in planned:
        record = item.record
        if item.message is None:
            assert item.error is not None
            out(f"would fail  {record.id} on {record.channel!r}: {item.error.reason}")
            continue
        headers = (item.message.message.get("extras") or {}).get("headers", {})
        out(
            f"would send  {record.id} to {item.message.channel!r} as {item.message.message.get('name')!r} "
            f"({item.form}, {item.message.size} bytes, headers {orjson.dumps(headers).decode()})"
        )


async def _purge(store: DeadLetterStore, selection: Selection, out: Out) -> int:
    records = await _selected(store, selection, "purge")
    if records is None:
        return EXIT_NOTHING
    deleted = await store.delete(records)
    out(f"purged {deleted} dead letter(s) from {store.where}")
    return EXIT_OK
