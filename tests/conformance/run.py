"""Run the change-stream spec tests without pytest and print `N passed, M failed, K skipped`.

Usage (from the repository root):

    .venv/bin/python -m tests.conformance.run            # every spec test, one line per failure
    .venv/bin/python -m tests.conformance.run -v         # one line per test
    .venv/bin/python -m tests.conformance.run -k resume  # only tests whose id contains "resume"
    .venv/bin/python -m tests.conformance.run --markdown # failures as STATUS.md lines
    .venv/bin/python -m tests.conformance.run --server-version 8.2.0   # emulate another version
    .venv/bin/python -m tests.conformance.run --standalone             # emulate a standalone server
    .venv/bin/python -m tests.conformance.run --suite transactions     # the transactions spec tests
    .venv/bin/python -m tests.conformance.run --suite project          # the project's own (project-tests/)

The server is `MONGODB_TEST_URI` if set, else an in-process emulator (by default a 7.0 single-node
replica set; the runOnRequirements are judged against whatever version and topology the server reports); the
spec files come from `MONGODB_SPECS_DIR` (default: the pinned copy in `tests/conformance/spec-tests/`).
The same tests run under pytest as `tests/conformance/test_change_stream_spec.py` (marker
`conformance`). Exit status 1 if any failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Literal

from tests.conformance.server import mongodb_uri
from tests.conformance.specs import (
    PROJECT_SPECS_DIR,
    TRANSACTIONS_GLOB,
    TRANSACTIONS_SUBDIR,
    ServerInfo,
    SpecTest,
    load_spec_tests,
    skip_reason,
    specs_dir,
)
from tests.conformance.unified import detect_server, run_spec_test

Outcome = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class Result:
    """One spec test's outcome, with the skip reason or the failure's first line."""

    test: SpecTest
    outcome: Outcome
    detail: str = ""
    seconds: float = 0.0


def run_one(test: SpecTest, uri: str, server: ServerInfo) -> Result:
    """Run a test on a fresh event loop (as pytest-asyncio does), classifying its outcome."""
    reason = skip_reason(test, server)
    if reason is not None:
        return Result(test, "skipped", reason)
    started = time.perf_counter()
    try:
        asyncio.run(run_spec_test(test, uri))
    except Exception as exc:  # a failing test is a result to report, not a crash of the runner
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return Result(test, "failed", detail, time.perf_counter() - started)
    return Result(test, "passed", seconds=time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-k", dest="keyword", default="", help="run only tests whose id contains this")
    parser.add_argument("-v", dest="verbose", action="store_true", help="print every test's outcome")
    parser.add_argument("--markdown", action="store_true", help="print failures as STATUS.md list items")
    parser.add_argument(
        "--server-version", help="version the emulator reports (ignored with MONGODB_TEST_URI)"
    )
    parser.add_argument("--standalone", action="store_true", help="emulate a standalone server")
    parser.add_argument(
        "--suite",
        choices=["change-streams", "transactions", "project"],
        default="change-streams",
        help="which spec tests to run (default: change-streams; project: the project's own, project-tests/)",
    )
    args = parser.parse_args(argv)

    directory = specs_dir()
    if args.suite == "transactions":
        directory = directory / TRANSACTIONS_SUBDIR
    elif args.suite == "project":
        directory = PROJECT_SPECS_DIR
    if not directory.is_dir():
        print(f"spec directory {directory} not found (set MONGODB_SPECS_DIR)", file=sys.stderr)
        return 2
    pattern = TRANSACTIONS_GLOB if args.suite == "transactions" else None
    loaded = load_spec_tests(directory, pattern) if pattern else load_spec_tests(directory)
    tests = [test for test in loaded if args.keyword in test.test_id]
    results: list[Result] = []
    emulator_options: dict[str, object] = {"standalone": True} if args.standalone else {}
    if args.server_version:
        emulator_options["server_version"] = args.server_version
    with mongodb_uri(**emulator_options) as uri:
        server = asyncio.run(detect_server(uri))
        print(f"server {'.'.join(map(str, server.version))} {server.topology} at {uri}; {len(tests)} tests")
        for test in tests:
            result = run_one(test, uri, server)
            results.append(result)
            if args.verbose or result.outcome == "failed":
                print(f"{result.outcome.upper():7} {test.test_id} ({result.seconds:.2f} s) {result.detail}")
    if args.markdown:
        for result in results:
            if result.outcome == "failed":
                print(f"- `{result.test.test_id}` — {result.detail}")
    counts = {
        outcome: sum(1 for r in results if r.outcome == outcome)
        for outcome in ("passed", "failed", "skipped")
    }
    print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
