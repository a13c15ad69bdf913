"""`python -m benchmarks.run [--quick] [--workload W] [--only throughput,latency,backlog]` (`make bench`).

For each workload a backlog is written into a fresh MongoDB emulator BEFORE any reader starts; then the
change-stream read through the driver (limit), the bare getMore loop that decodes nothing (raw), the naive
per-event loop and the connector each replay it from the same START_AT, the last two with the Ably
emulator answering at once and with 20 ms added per request. Then the connector alone under live writes at
1k/s and 5k/s (latency), and catching up a big backlog (peak RSS). The MongoDB emulator, the Ably emulator
and the reader under test are separate processes sharing the machine's cores.

Prints the tables and the targets of issue 12 (reported, never asserted) and writes
`benchmarks/results/latest.json` (`--dated` also writes `benchmarks/results/<date>-<commit>-<what>.json`:
the UTC date, the short commit measured, and `--what` or the mode, `quick` or `full`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import itertools
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bson.timestamp import Timestamp
from pymongo import MongoClient

from benchmarks import measure, procs, profile
from benchmarks import partitions as partitions_bench
from benchmarks import postgres as postgres_bench
from benchmarks import throttled as throttled_bench
from benchmarks.measure import LatencyResult, ThroughputResult
from benchmarks.workloads import PIPELINE, WORKLOADS, LiveWriter, Workload, start_at, write_backlog
from emulators.ably import AblyEmulatorAdmin

log = logging.getLogger("benchmarks")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PARTS = ("throughput", "latency", "backlog", "postgres", "throttled", "partitions")
#: The baselines (`limit`, `raw`: benchmarks/readers.py, one run per workload, Ably not involved), then
#: the two that publish (at 0 and 20 ms).
READERS = ("limit", "raw", "naive", "connector")
BASELINES = ("limit", "raw")
#: One RSS sample per this many seconds while the connector runs: enough to tell a plateau from growth.
RSS_SAMPLE_S = 1.0
SLOW_ABLY_MS = measure.SLOW_ABLY_MS
LIVE_RATES = (1000.0, 5000.0)
#: The connector is done when the Ably emulator has every event; polling its stats this often bounds
#: the error of "first event seen" (the last one is read exactly from `received_at`).
POLL_S = 0.02
#: No reader may run longer than this; a stuck run fails loudly instead of hanging `make bench`.
RUN_TIMEOUT_S = 1800.0
#: After a live run's writer stops, the connector gets this long to deliver the rest.
DRAIN_TIMEOUT_S = 60.0
#: The emulator's oplog must hold the whole backlog, or a replay from START_AT would lose history.
OPLOG_MARGIN = 1.2
OPLOG_SPARE = 1000
PROFILE_LINES = 12


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small backlogs: a smoke run of about 2 minutes")
    parser.add_argument(
        "--workload", action="append", choices=sorted(WORKLOADS), help="repeatable; default all"
    )
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    parser.add_argument("--events", type=int, help="backlog per workload (default 100000, quick 10000)")
    parser.add_argument("--naive-events", type=int, help="naive prefix at 0 ms (default 20000, quick 2000)")
    parser.add_argument(
        "--naive-events-slow", type=int, help="naive prefix at 20 ms (default 1500, quick 200)"
    )
    parser.add_argument("--live-seconds", type=float, help="duration of each live run (default 20, quick 4)")
    parser.add_argument(
        "--backlog", type=int, help="backlog of the memory run (default 1000000, quick 50000)"
    )
    parser.add_argument("--readers", default=",".join(READERS), help=f"comma list of {', '.join(READERS)}")
    parser.add_argument(
        "--connector-env", action="append", default=[], metavar="VAR=VALUE", help="extra connector setting"
    )
    parser.add_argument("--profile", action="store_true", help="sample each connector run with py-spy")
    parser.add_argument(
        "--profile-idle", action="store_true", help="with --profile: sample waiting threads too"
    )
    parser.add_argument(
        "--dated", action="store_true", help="also write results/<date>-<commit>-<what>.json (to commit)"
    )
    parser.add_argument("--what", help="with --dated: what was measured (default: the mode)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.events = args.events or (10_000 if quick else 100_000)
    args.naive_events = min(args.events, args.naive_events or (2_000 if quick else 20_000))
    args.naive_events_slow = min(args.events, args.naive_events_slow or (200 if quick else 1_500))
    args.live_seconds = args.live_seconds or (4.0 if quick else 20.0)
    args.backlog = args.backlog or (50_000 if quick else 1_000_000)
    args.parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}")
    args.workloads = [WORKLOADS[name] for name in (args.workload or WORKLOADS)]
    args.readers = [r.strip() for r in args.readers.split(",") if r.strip()]
    if set(args.readers) - set(READERS):
        parser.error(f"--readers: choose from {', '.join(READERS)}")
    if any("=" not in item for item in args.connector_env):
        parser.error("--connector-env takes VAR=VALUE")
    args.extra_env = dict(item.split("=", 1) for item in args.connector_env)
    if args.profile and profile.executable() is None:
        parser.error("--profile needs py-spy (pip install 'py-spy>=0.4')")
    return args


@dataclass(frozen=True)
class Backlog:
    """A written backlog every reader replays: where it is and from which operation time."""

    mongo: procs.Emulator
    db: str
    workload: Workload
    start: Timestamp
    events: int


class Bench:
    """One benchmark session: a shared Ably emulator, a log file, and the results gathered."""

    def __init__(self, args: argparse.Namespace, ably: procs.Emulator) -> None:
        self.args = args
        self.ably = ably
        self.admin = AblyEmulatorAdmin(ably.address)
        self.log_path = Path(tempfile.gettempdir()) / f"livesync-bench-{os.getpid()}-connector.log"
        self.throughput: list[ThroughputResult] = []
        self.latency: list[LatencyResult] = []
        self.backlog: ThroughputResult | None = None
        self.notes: list[str] = []
        self.load_at_start = os.getloadavg()[0]
        self._ids = itertools.count()

    # ------------------------------------------------------------ helpers

    def fresh_ably(self, latency_ms: float) -> None:
        """Forget earlier runs (their message ids would otherwise be dropped as duplicates)."""
        self.admin.reset()
        self.admin.configure(latency_ms=latency_ms)

    def connector_env(
        self, mongo: procs.Emulator, db: str, workload: Workload, start: Timestamp | None
    ) -> dict[str, str]:
        return {
            "MONGODB_URI": mongo.address,
            "MONGODB_DATABASE": db,
            "MONGODB_COLLECTION": workload.watched_collection,
            "PIPELINE": json.dumps(PIPELINE),
            "ABLY_API_KEY": procs.ABLY_KEY,
            "ABLY_REST_URL": self.ably.address,
            "ABLY_FALLBACK_HOSTS": "",
            "START_AT": f"Timestamp({start.time}, {start.inc})" if start else "now",
            # A fresh token document per run: a stored position from an earlier run must not be resumed.
            "CONNECTOR_ID": f"bench-{os.getpid()}-{next(self._ids)}",
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "json",
            # The Ably emulator runs without a per-channel rate limit here: the connector is told so, as
            # an account without that limit would configure it (`--connector-env` may override).
            "CHANNEL_RATE_LIMIT": "0",
            **self.args.extra_env,
        }

    def wait_delivered(
        self,
        conn: procs.ConnectorProcess,
        count: int,
        timeout: float,
        rss: list[tuple[float, int, float, int | None]],
    ) -> tuple[float, float]:
        """Poll until the Ably emulator holds `count` messages; returns when the first one was seen and
        the connector's CPU seconds at that moment. Appends (seconds, delivered, RSS MiB, in-flight events)
        samples to `rss`."""
        deadline = time.monotonic() + timeout
        first_seen = cpu_at_first = next_sample = 0.0
        while True:
            delivered = int(self.admin.stats()["messages_delivered"])
            now = time.time()
            if delivered and not first_seen:
                first_seen, cpu_at_first = now, conn.cpu_seconds()
            if now >= next_sample:
                mib = round(conn.rss() / measure.MIB, 1)
                rss.append((round(now - conn.started_at, 1), delivered, mib, conn.in_flight()))
                next_sample = now + RSS_SAMPLE_S
            if delivered >= count:
                return first_seen, cpu_at_first
            conn.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {delivered}/{count} messages after {timeout}s; see {conn.log_path}")
            time.sleep(POLL_S)

    def emulator_cpu(self, mongo: procs.Emulator) -> tuple[float, float]:
        return mongo.cpu_seconds(), self.ably.cpu_seconds()

    def charge_emulators(
        self, row: ThroughputResult, mongo: procs.Emulator, before: tuple[float, float]
    ) -> None:
        """What the run cost the two emulators, per 10k events: the share of the machine the reader
        under test did not get."""
        after = self.emulator_cpu(mongo)
        per = measure.PER_CPU_EVENTS / row.events
        row.extra["mongo_emulator_cpu_per_10k_s"] = (after[0] - before[0]) * per
        row.extra["ably_emulator_cpu_per_10k_s"] = (after[1] - before[1]) * per

    # ------------------------------------------------------------ readers

    def run_reader(self, mode: str, backlog: Backlog, events: int, latency_ms: float) -> ThroughputResult:
        command = [
            sys.executable, "-m", "benchmarks.readers", mode,
            "--uri", backlog.mongo.address, "--db", backlog.db,
            "--collection", backlog.workload.watched_collection,
            "--start-at", f"{backlog.start.time}.{backlog.start.inc}", "--events", str(events),
            "--ably-url", self.ably.address, "--key", procs.ABLY_KEY,
        ]  # fmt: skip
        before = self.emulator_cpu(backlog.mongo)
        spawned = time.time()
        done = subprocess.run(
            command, cwd=procs.ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{mode} reader failed ({done.returncode}):\n{done.stderr[-3000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        row = measure.throughput_result(
            workload=backlog.workload.name, reader=mode, latency_ms=latency_ms,
            backlog=backlog.events, events=int(report["events"]), spawned_at=spawned,
            first_at=report["first_at"], last_at=report["last_at"], cpu_s=report["cpu_s"],
            cpu_at_first=report["cpu_at_first"],
            peak_rss=int(report["peak_rss"]), requests=int(report["events"]) if mode == "naive" else None,
        )  # fmt: skip
        self.charge_emulators(row, backlog.mongo, before)
        return row

    def run_connector(self, backlog: Backlog, latency_ms: float) -> ThroughputResult:
        events = backlog.events
        env = self.connector_env(backlog.mongo, backlog.db, backlog.workload, backlog.start)
        recorder, raw = None, Path(tempfile.gettempdir()) / f"livesync-bench-{os.getpid()}-profile.raw"
        before = self.emulator_cpu(backlog.mongo)
        with procs.ConnectorProcess(env, self.log_path) as conn:
            if self.args.profile:
                recorder = profile.start(conn.pid, raw, idle=self.args.profile_idle)
            rss: list[tuple[float, int, float, int | None]] = []
            first_seen, cpu_at_first = self.wait_delivered(conn, events, RUN_TIMEOUT_S, rss)
            cpu, peak = conn.cpu_seconds(), conn.peak_rss()
            last = self.admin.messages(since=events - 1)
            stats = self.admin.stats()
            result = measure.throughput_result(
                workload=backlog.workload.name, reader="connector", latency_ms=latency_ms, backlog=events,
                events=events, spawned_at=conn.started_at, first_at=first_seen,
                last_at=max(float(m["received_at"]) for m in last) / 1000, cpu_s=cpu,
                cpu_at_first=cpu_at_first, peak_rss=peak, requests=int(stats["publish_requests"]),
            )  # fmt: skip
            self.charge_emulators(result, backlog.mongo, before)
            result.extra["messages_delivered"] = int(stats["messages_delivered"])
            result.extra["duplicates_dropped"] = int(stats["duplicates_dropped"])
            result.extra["rss_series"] = rss  # (s since spawn, delivered, RSS MiB, in flight)
            result.extra["connector_env"] = self.args.extra_env
        if recorder is not None:
            profile.finish(recorder)
            result.extra["profile"] = profile.top_frames(raw)
            self.print_profile(result)
        return result

    def print_profile(self, result: ThroughputResult) -> None:
        """Log where the connector's samples landed (self time), so a run shows its hot spots."""
        top = result.extra["profile"]["self"][:PROFILE_LINES]
        log.info("profile of connector (%s @%g ms), self time:", result.workload, result.latency_ms)
        for frame, share in top:
            log.info("  %5.1f%%  %s", share * 100, frame)

    # ------------------------------------------------------------ parts

    @contextlib.contextmanager
    def written_backlog(self, workload: Workload, events: int, db: str) -> Iterator[Backlog]:
        """A fresh MongoDB emulator holding `events` documents written before any reader starts."""
        with procs.mongo_emulator(int(events * OPLOG_MARGIN) + OPLOG_SPARE) as mongo:
            client: MongoClient[dict[str, Any]] = MongoClient(mongo.address)
            try:
                start = start_at(client)
                rate = write_backlog(client, db, workload, events)
            finally:
                client.close()
            self.notes.append(f"{db}: backlog of {events:,} written at {rate:,.0f} docs/s")
            log.info("%s: backlog of %d written at %.0f docs/s", db, events, rate)
            yield Backlog(mongo, db, workload, start, events)
        self.admin.reset()  # frees the emulator's copy of the messages

    def throughput_part(self, workload: Workload) -> None:
        with self.written_backlog(workload, self.args.events, f"bench_{workload.name}") as backlog:
            readers = self.args.readers
            for baseline in BASELINES:  # never touch Ably: one run is the bound at both latencies
                if baseline in readers:
                    self.fresh_ably(0.0)
                    self.emit(self.run_reader(baseline, backlog, backlog.events, 0.0))
            for latency in (0.0, SLOW_ABLY_MS):
                prefix = self.args.naive_events if latency == 0 else self.args.naive_events_slow
                if "naive" in readers:
                    self.fresh_ably(latency)
                    self.emit(self.run_reader("naive", backlog, prefix, latency))
                if "connector" in readers:
                    self.fresh_ably(latency)
                    self.emit(self.run_connector(backlog, latency))

    def emit(self, row: ThroughputResult) -> None:
        row.extra["load_avg_1m"] = os.getloadavg()[0]
        row.extra["connector_tree"] = tree_digest()
        self.throughput.append(row)
        for line in measure.format_throughput([row])[2:3]:
            log.info("%s", line)

    def latency_part(self) -> None:
        workload = WORKLOADS["uniform"]
        total = int(max(LIVE_RATES) * self.args.live_seconds)
        with procs.mongo_emulator(int(total * len(LIVE_RATES) * OPLOG_MARGIN) + OPLOG_SPARE) as mongo:
            client: MongoClient[dict[str, Any]] = MongoClient(mongo.address)
            try:
                for rate in LIVE_RATES:
                    self.latency.append(self.live_run(client, mongo, workload, rate))
                    log.info("%s", measure.format_latency([self.latency[-1]])[2])
            finally:
                client.close()
        self.admin.reset()

    def live_run(
        self, client: MongoClient[dict[str, Any]], mongo: procs.Emulator, workload: Workload, rate: float
    ) -> LatencyResult:
        db = f"bench_live_{int(rate)}"
        client.drop_database(db)
        self.fresh_ably(0.0)
        with procs.ConnectorProcess(self.connector_env(mongo, db, workload, None), self.log_path) as conn:
            conn.wait_ready()
            cpu_before = conn.cpu_seconds()
            writer = LiveWriter(client, db, workload, rate, self.args.live_seconds)
            writer.start()
            writer.join(self.args.live_seconds + RUN_TIMEOUT_S)
            if writer.error is not None or writer.is_alive():
                raise RuntimeError(f"live writer failed: {writer.error!r}")
            self.wait_delivered(conn, writer.written, DRAIN_TIMEOUT_S, [])
            cpu, peak = conn.cpu_seconds(), conn.peak_rss()
        messages = self.admin.messages()
        commit, write = measure.latencies_of(messages)
        return LatencyResult(
            target_rate=rate, achieved_rate=writer.achieved_rate, written=writer.written,
            delivered=len(messages), commit_ms=measure.summarize(commit), write_ms=measure.summarize(write),
            cpu_s=cpu - cpu_before, peak_rss_mib=peak / measure.MIB,
        )  # fmt: skip

    def backlog_part(self) -> None:
        events = self.args.backlog
        with self.written_backlog(WORKLOADS["uniform"], events, "bench_backlog") as backlog:
            self.fresh_ably(0.0)
            self.backlog = self.run_connector(backlog, 0.0)
            self.backlog.workload = f"backlog-{events // 1000}k"
            self.backlog.extra["load_avg_1m"] = os.getloadavg()[0]
            self.backlog.extra["connector_tree"] = tree_digest()
            log.info("%s", measure.format_throughput([self.backlog])[2])

    # ------------------------------------------------------------ output

    def report(self) -> dict[str, Any]:
        return {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "mode": "quick" if self.args.quick else "full",
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "note": "MongoDB emulator, Ably emulator and the reader under test are separate processes "
                "sharing these cores; anything else running on the machine shows in the load averages",
                "load_avg_1m_at_start": self.load_at_start,
                "load_avg_1m_at_end": os.getloadavg()[0],
            },
            "settings": {
                "events": self.args.events,
                "naive_events_0ms": self.args.naive_events,
                "naive_events_20ms": self.args.naive_events_slow,
                "live_seconds": self.args.live_seconds,
                "backlog": self.args.backlog,
                "doc_bytes": 1024,
                "pipeline": PIPELINE,
                "readers": self.args.readers,
                "connector_env": self.args.extra_env,
            },
            "code": code_version(),
            "notes": self.notes,
            "throughput": [r.as_dict() for r in self.throughput],
            "latency": [r.as_dict() for r in self.latency],
            "backlog": self.backlog.as_dict() if self.backlog else None,
            "targets": measure.targets(
                self.throughput, self.latency, self.backlog, publish_batch_size(self.args.extra_env)
            ),
        }

    def print_tables(self, report: dict[str, Any]) -> None:
        out = [
            f"livesync-connector benchmark ({report['mode']}), {report['date']}: {os.cpu_count()} CPUs "
            "shared by the MongoDB emulator, the Ably emulator and the reader (each its own process)"
        ]
        load = report["machine"]
        out.append(
            f"  1-minute load average {load['load_avg_1m_at_start']:.2f} at start, "
            f"{load['load_avg_1m_at_end']:.2f} at end (anything above ~1 before we start is someone else)"
        )
        code = report["code"]
        changed = (
            f", with uncommitted changes to {', '.join(code['uncommitted'])}" if code["uncommitted"] else ""
        )
        out.append(f"  code: {code['commit'][:10]}{changed}")
        out += [f"  {note}" for note in self.notes]
        if self.throughput:
            out += ["", "Replaying the same backlog (1 KiB docs); CPU and RSS are the reader process's own:"]
            out += measure.format_throughput(self.throughput)
        if self.latency:
            title = f"Live writes for {self.args.live_seconds:g} s each, connector only (latency: commit = "
            out += ["", title + "the event's wallTime, to the Ably emulator's received_at):"]
            out += measure.format_latency(self.latency)
        if self.backlog:
            out += ["", "Catching up a big backlog (connector, Ably at 0 ms):"]
            out += measure.format_throughput([self.backlog])
        out += [
            "",
            "Targets of issue 12 (reported, not asserted; ratios of events/s from process start, steady in "
            "brackets; n/a: not measured in this run):",
        ]
        out += measure.format_targets(report["targets"])
        out += measure.cpu_summary(self.throughput)
        print("\n".join(out))


def publish_batch_size(extra_env: dict[str, str]) -> int:
    """The connector's PUBLISH_BATCH_SIZE in this run: `--connector-env` if it sets one, else the
    connector's default."""
    value = extra_env.get("PUBLISH_BATCH_SIZE", "")
    try:
        return int(value) if value.strip() else measure.DEFAULT_PUBLISH_BATCH_SIZE
    except ValueError:
        return measure.DEFAULT_PUBLISH_BATCH_SIZE  # the connector itself refuses it; its run fails


def tree_digest() -> str:
    """A short digest of the connector's source as it is now: rows measured on different code (others
    commit while a long run goes on) can be told apart."""
    digest = hashlib.sha1(usedforsecurity=False)
    for path in sorted((procs.ROOT / "connector").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def code_version() -> dict[str, Any]:
    """The commit measured, and which files under test differed from it (others may be mid-change)."""

    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], cwd=procs.ROOT, capture_output=True, text=True, check=False)
        return done.stdout.rstrip("\n") if done.returncode == 0 else ""

    dirty = git("status", "--porcelain", "--", "connector", "emulators").splitlines()
    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted": [line[3:] for line in dirty if line],
        "connector_tree": tree_digest(),
    }


def dated_name(report: dict[str, Any], what: str | None) -> str:
    """`YYYY-MM-DD-<short commit>-<what>.json`: when, on which code, and what was measured (a run on a
    tree with uncommitted changes under connector/ or emulators/ says so in its name too)."""
    code = report.get("code", {})
    commit = str(code.get("commit") or "nocommit")[:7]
    label = what or report["mode"]
    if code.get("uncommitted"):
        label += "-uncommitted"
    return f"{report['date'][:10]}-{commit}-{label}.json"


def write_report(report: dict[str, Any], dated: bool, what: str | None = None) -> list[Path]:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    paths = [RESULTS_DIR / "latest.json"]
    if dated:
        paths.append(RESULTS_DIR / dated_name(report, what))
    text = json.dumps(measure.json_safe(report), indent=2, default=str, allow_nan=False) + "\n"
    for path in paths:
        path.write_text(text)
    return paths


def run(args: argparse.Namespace, parts: Iterable[str]) -> dict[str, Any]:
    with procs.ably_emulator() as ably:
        bench = Bench(args, ably)
        if "throughput" in parts:
            for workload in args.workloads:
                bench.throughput_part(workload)
        if "latency" in parts:
            bench.latency_part()
        if "backlog" in parts:
            bench.backlog_part()
        report = bench.report()
        if "postgres" in parts:  # the Postgres outbox source, on a real PostgreSQL (benchmarks/postgres.py)
            report["postgres"] = postgres_bench.run_all(args.quick, ably)
        if "throttled" in parts:  # busy channels under the per-channel rate limit (benchmarks/throttled.py)
            events = 10_000 if args.quick else 20_000
            report["throttled"] = throttled_bench.run_all(events, 50.0, 10.0 if args.quick else 20.0, ably)
        if "partitions" in parts:  # PARTITIONS=1, 2, 4 processes on one backlog (benchmarks/partitions.py)
            report["partitions"] = partitions_bench.run_all(10_000 if args.quick else 50_000, ably)
        bench.print_tables(report)
        if "postgres" in parts:
            print("\n".join(postgres_bench.format_report(report["postgres"])))
        if "throttled" in parts:
            print("\n".join(throttled_bench.format_report(report["throttled"])))
        if "partitions" in parts:
            print("\n".join(partitions_bench.format_report(report["partitions"])))
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per admin call drowns the progress
    report = run(args, args.parts)
    for path in write_report(report, args.dated, args.what):
        print(f"wrote {path.relative_to(procs.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
