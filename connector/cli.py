"""Command line: `livesync-connector [run|check|create-tables|token show|token reset --yes|deadletter ...]`.

Exit status: 0 success, 1 a fatal runtime error (one log line names it), 2 invalid configuration or
usage (one line per bad variable, no traceback). `deadletter` adds 3: nothing selected (`show` of an
unknown id, `replay` or `purge` whose selection is empty), and uses 1 also when some records still could
not be replayed (connector/deadletter/commands.py).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Sequence

from connector import __version__
from connector.config import Settings, load_settings
from connector.deadletter import commands as deadletter_commands
from connector.errors import ConfigError, PipelineError
from connector.logs import configure_logging
from connector.sources import registry

log = logging.getLogger("connector")

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livesync-connector",
        description=(
            "Publish MongoDB change-stream events or Postgres outbox rows (SOURCE=postgres) to Ably channels "
            "(configured by environment)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"livesync-connector {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the connector (default)")
    sub.add_parser(
        "check", help="validate configuration, the database and Ably credentials; publishes nothing"
    )
    sub.add_parser(
        "create-tables", help="SOURCE=postgres: create Ably's outbox and nodes tables and the connector's own"
    )
    token = sub.add_parser("token", help="show or reset the stored resume token")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    token_sub.add_parser("show", help="print the stored resume-token document")
    reset = token_sub.add_parser("reset", help="delete the stored resume token (next start uses START_AT)")
    reset.add_argument("--yes", action="store_true", help="confirm the deletion")
    deadletter_commands.add_parser(sub)
    return parser


def console() -> int:
    """The process entry point (the console script, `python -m connector`): `main()` with what only a
    whole process may do, freezing its start-up objects (see `_run`). `main()` also runs inside other
    processes (the tests), whose objects it must leave to their own collector."""
    return main(whole_process=True)


def main(argv: Sequence[str] | None = None, *, whole_process: bool = False) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    try:
        settings = load_settings()
    except ConfigError as exc:
        kind = "invalid pipeline (code 72005)" if isinstance(exc, PipelineError) else "invalid configuration"
        print(f"livesync-connector: {kind}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level, settings.log_format, secrets=settings.secrets())
    log.info(
        "livesync-connector %s starting (%s)",
        __version__,
        settings.watch_label,
        extra={"settings": settings.redacted()},
    )
    for warning in settings.warnings:
        log.warning("%s", warning)
    return _dispatch(settings, command, args, whole_process)


def _dispatch(settings: Settings, command: str, args: argparse.Namespace, whole_process: bool) -> int:
    """`run` for every source; any other command through the source's registry entry."""
    source = registry.entry(settings.source)
    if command == "run":
        return asyncio.run(_run(settings, freeze=whole_process))
    if command == "deadletter" and source.deadletters is not None:
        return asyncio.run(deadletter_commands.run_command(settings, args, source.deadletters, print))
    if command == "token":
        command = f"token {args.token_command}"
        if args.token_command == "reset" and not args.yes:
            print("token reset deletes the stored position; repeat with --yes to confirm", file=sys.stderr)
            return EXIT_USAGE
    handler = source.commands.get(command)
    if handler is None:
        family = command.split()[0]
        owners = [name for name, other in registry.SOURCES.items() if command in other.commands]
        print(source.refusals.get(family, f"{command} applies to SOURCE={'|'.join(owners)}"), file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(handler(settings, print))


async def _run(settings: Settings, *, freeze: bool = False) -> int:
    from connector.runtime import Runtime  # here: `--help` and configuration errors stay quick

    worker = Runtime(settings, registry.build_source(settings))
    if freeze:
        # Everything built so far (modules, settings, clients) lives as long as the process: move it out
        # of the collector's way, or each full collection walks it again while events stream through
        # (measured: about an eighth of the connector's CPU per event).
        gc.collect()
        gc.freeze()
    loop = asyncio.get_running_loop()
    signals_seen: list[int] = []

    def on_signal(signum: int) -> None:
        # Only record and set the stop event; a second signal forces exit (as uvicorn does).
        signals_seen.append(signum)
        if len(signals_seen) > 1:
            log.warning("second signal: forcing exit")
            for task in asyncio.all_tasks(loop):
                task.cancel()
            return
        log.info("received %s: stopping", signal.Signals(signum).name)
        worker.request_stop(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await worker.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
