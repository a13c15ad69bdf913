"""Result records, percentiles, the target ratios and the printed table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

MIB = 1024 * 1024
PER_CPU_EVENTS = 10_000
# The targets of issue 5, reported (never asserted): benchmarks on a shared 2-core VM are indicative.
TARGET_VS_LIMIT = 0.5
TARGET_VS_NAIVE_AT_20MS = 100.0
TARGET_P99_MS_AT_1K = 50.0
TARGET_PEAK_RSS_MIB = 200.0
SLOW_ABLY_MS = 20.0


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: every reported latency was really observed)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class ThroughputResult:
    """One reader over one backlog. `rate` counts from process start (imports and connecting included),
    `steady_rate` from the first event out to the last. A naive run measured on a prefix has
    `extrapolated` set and its `rate` is what the whole backlog would take at its steady rate."""

    workload: str
    reader: str
    latency_ms: float
    backlog: int
    events: int
    startup_s: float
    elapsed_s: float
    steady_rate: float
    rate: float
    cpu_s: float
    steady_cpu_s: float
    peak_rss_mib: float
    extrapolated: bool = False
    requests: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_per_10k(self) -> float:
        """CPU seconds per 10k events from the first event on: start-up (imports, connecting) excluded,
        so a short prefix and a long backlog are comparable."""
        return self.steady_cpu_s / (self.events - 1) * PER_CPU_EVENTS if self.events > 1 else math.nan

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["cpu_per_10k_s"] = self.cpu_per_10k
        return out


def throughput_result(
    *,
    workload: str,
    reader: str,
    latency_ms: float,
    backlog: int,
    events: int,
    spawned_at: float,
    first_at: float,
    last_at: float,
    cpu_s: float,
    cpu_at_first: float,
    peak_rss: int,
    requests: int | None = None,
) -> ThroughputResult:
    startup = max(0.0, first_at - spawned_at)
    window = last_at - first_at
    steady = (events - 1) / window if events > 1 and window > 0 else math.nan
    elapsed = last_at - spawned_at
    extrapolated = events < backlog
    if extrapolated:
        elapsed = startup + backlog / steady
    return ThroughputResult(
        workload=workload,
        reader=reader,
        latency_ms=latency_ms,
        backlog=backlog,
        events=events,
        startup_s=startup,
        elapsed_s=elapsed,
        steady_rate=steady,
        rate=backlog / elapsed if elapsed > 0 else math.nan,
        cpu_s=cpu_s,
        steady_cpu_s=cpu_s - cpu_at_first,
        peak_rss_mib=peak_rss / MIB,
        extrapolated=extrapolated,
        requests=requests,
    )


@dataclass
class LatencyResult:
    """Live writes at a steady target rate, connector only. Latencies in ms: `commit` from the event's
    wallTime (set by the server when the write commits), `write` from the writer's clock just before its
    insert call (an upper bound that includes the insert round trip)."""

    target_rate: float
    achieved_rate: float
    written: int
    delivered: int
    commit_ms: dict[str, float]
    write_ms: dict[str, float]
    cpu_s: float
    peak_rss_mib: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def summarize(latencies: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
        "max": max(latencies) if latencies else math.nan,
    }


def wall_time_ms(value: Any) -> float:
    """An Extended JSON date (relaxed ISO string or canonical/relaxed millis) as ms since the epoch."""
    date = value["$date"] if isinstance(value, dict) else value
    if isinstance(date, dict):  # canonical: {"$numberLong": "..."}
        return float(date["$numberLong"])
    if isinstance(date, int | float):
        return float(date)
    return datetime.fromisoformat(str(date).replace("Z", "+00:00")).timestamp() * 1000


def latencies_of(messages: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(commit→receipt, write→receipt) in ms for every delivered message."""
    commit, write = [], []
    for msg in messages:
        event = orjson.loads(msg["data"])
        received = float(msg["received_at"])
        commit.append(received - wall_time_ms(event["wallTime"]))
        write.append(received - float(event["fullDocument"]["t"]))
    return commit, write


# ---------------------------------------------------------------- targets and the table


def _find(
    rows: list[ThroughputResult], workload: str, reader: str, latency_ms: float
) -> ThroughputResult | None:
    for row in rows:
        if (row.workload, row.reader, row.latency_ms) == (workload, reader, latency_ms):
            return row
    return None


def _ratio(a: ThroughputResult | None, b: ThroughputResult | None, steady: bool = False) -> float | None:
    if a is None or b is None:
        return None
    num, den = (a.steady_rate, b.steady_rate) if steady else (a.rate, b.rate)
    return num / den if den and not math.isnan(den) else None


def _ratio_targets(rows: list[ThroughputResult]) -> list[dict[str, Any]]:
    """connector vs limit at 0 and 20 ms, and vs naive at 20 ms, for every workload that was run. The raw
    read never touches Ably, so its one run (at 0 ms) is the limit for both latencies."""
    out: list[dict[str, Any]] = []
    for workload in dict.fromkeys(r.workload for r in rows):
        limit = _find(rows, workload, "limit", 0.0)
        for latency in (0.0, SLOW_ABLY_MS):
            connector = _find(rows, workload, "connector", latency)
            name = f"{workload} @{latency:g} ms: connector / limit"
            out.append(
                _target(name, _ratio(connector, limit), ">=", TARGET_VS_LIMIT, _ratio(connector, limit, True))
            )
        naive = _find(rows, workload, "naive", SLOW_ABLY_MS)
        connector = _find(rows, workload, "connector", SLOW_ABLY_MS)
        name = f"{workload} @{SLOW_ABLY_MS:g} ms: connector / naive"
        out.append(
            _target(
                name, _ratio(connector, naive), ">=", TARGET_VS_NAIVE_AT_20MS, _ratio(connector, naive, True)
            )
        )
    return out


def cpu_summary(rows: list[ThroughputResult]) -> list[str]:
    """CPU seconds per 10k events of each reader, per workload (at 0 ms: the cheapest case)."""
    lines = []
    for workload in dict.fromkeys(r.workload for r in rows):
        parts = [
            f"{reader} {_fmt(row.cpu_per_10k, '.2f')}"
            for reader in ("connector", "limit", "naive")
            if (row := _find(rows, workload, reader, 0.0)) is not None
        ]
        lines.append(f"  CPU s per 10k events, {workload} @0 ms: " + ", ".join(parts))
    return lines


def _target(
    name: str, value: float | None, op: str, goal: float, steady: float | None = None
) -> dict[str, Any]:
    """One target line; `steady` is the same ratio from first to last event (start-up excluded)."""
    met = None if value is None or math.isnan(value) else (value >= goal if op == ">=" else value < goal)
    return {"target": name, "value": value, "steady": steady, "goal": f"{op} {goal:g}", "met": met}


def targets(
    rows: list[ThroughputResult], latency: list[LatencyResult], backlog: ThroughputResult | None
) -> list[dict[str, Any]]:
    out = _ratio_targets(rows)
    for res in latency:
        if res.target_rate == 1000:
            out.append(
                _target(
                    "latency p99 at 1k/s (commit→Ably, ms)", res.commit_ms["p99"], "<", TARGET_P99_MS_AT_1K
                )
            )
    if backlog is not None:
        name = f"peak RSS catching up a {backlog.backlog:,}-event backlog (MiB)"
        out.append(_target(name, backlog.peak_rss_mib, "<", TARGET_PEAK_RSS_MIB))
    return out


def json_safe(value: Any) -> Any:
    """NaN (a rate that could not be measured) as null, so the result file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    """A number for the table; `-` for a value that was not measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_throughput(rows: list[ThroughputResult]) -> list[str]:
    head = (
        f"{'workload':<11} {'reader':<9} {'Ably ms':>7} {'events':>9} {'events/s':>9} {'steady/s':>9} "
        f"{'start s':>7} {'CPU s/10k':>9} {'peak RSS':>9} {'requests':>8} {'emu CPU M/A':>11} {'load':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        events = f"{r.events:,}" + ("*" if r.extrapolated else "")
        mongo_cpu = _fmt(r.extra.get("mongo_emulator_cpu_per_10k_s"), ".2f")
        emulators = f"{mongo_cpu}/{_fmt(r.extra.get('ably_emulator_cpu_per_10k_s'), '.2f')}"
        lines.append(
            f"{r.workload:<11} {r.reader:<9} {r.latency_ms:>7g} {events:>9} {_fmt(r.rate):>9} "
            f"{_fmt(r.steady_rate):>9} {_fmt(r.startup_s, '.2f'):>7} {_fmt(r.cpu_per_10k, '.2f'):>9} "
            f"{_fmt(r.peak_rss_mib, '.0f') + ' MiB':>9} {_fmt(r.requests):>8} {emulators:>11} "
            f"{_fmt(r.extra.get('load_avg_1m'), '.2f'):>5}"
        )
    lines.append(
        "CPU s/10k: the reader's CPU seconds per 10k events after its first event (start-up excluded); "
        "emu CPU M/A: the MongoDB and Ably emulators' CPU seconds per 10k events over the whole run"
    )
    if any(r.extrapolated for r in rows):
        lines.append(
            "* measured on a prefix of the backlog; events/s is extrapolated to the whole backlog "
            "(start-up + backlog / steady rate)"
        )
    return lines


def format_latency(results: list[LatencyResult]) -> list[str]:
    head = (
        f"{'target/s':>8} {'achieved/s':>10} {'written':>8} {'delivered':>9} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7}   "
        f"{'write→Ably p50/p99':>18} {'CPU s/10k':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        c, w = r.commit_ms, r.write_ms
        cpu10k = r.cpu_s / r.written * PER_CPU_EVENTS if r.written else math.nan
        lines.append(
            f"{r.target_rate:>8,.0f} {r.achieved_rate:>10,.0f} {r.written:>8,} {r.delivered:>9,} "
            f"{_fmt(c['p50'], '.1f'):>7} {_fmt(c['p95'], '.1f'):>7} {_fmt(c['p99'], '.1f'):>7} "
            f"{_fmt(c['max'], '.1f'):>7}   {_fmt(w['p50'], '.1f') + ' / ' + _fmt(w['p99'], '.1f'):>18} "
            f"{_fmt(cpu10k, '.2f'):>9}"
        )
    return lines


def format_targets(items: list[dict[str, Any]]) -> list[str]:
    lines = []
    for item in items:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[item["met"]]
        steady = f"  (steady {_fmt(item['steady'], ',.2f')})" if item.get("steady") is not None else ""
        value = _fmt(item["value"], ",.2f")
        lines.append(f"  {item['target']:<55} {value:>8}  goal {item['goal']:<6} {verdict:<6}{steady}")
    return lines
