"""The README's metrics table lists exactly what `/metrics` exports (adding a metric without documenting
it, or documenting one that is gone, fails here)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from connector.ably.latency import LatencyHistogram
from connector.metrics import LABELS, METRICS, build_registry

README = Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `(livesync_[a-z_]+)(?:\{[^}]*\})?` \| (counter|gauge|histogram) \|", re.MULTILINE)


def exported_names() -> dict[str, str]:
    """Every series name the collector writes when every value is present, with its type."""
    snapshot: dict[str, object] = {
        name.removeprefix("livesync_"): ({"x": 1} if name in LABELS else 1) for name in METRICS
    }
    snapshot["publish_latency_seconds"] = LatencyHistogram().snapshot()
    text = generate_latest(build_registry(lambda: dict(snapshot), {"instance_id": "i", "connector_id": "c"}))
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text.decode(), re.MULTILINE))
    names: dict[str, str] = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            series = re.split(r"[{ ]", line, maxsplit=1)[0]
            base = re.sub(r"_(total|bucket|sum|count)$", "", series)
            names[series] = types.get(base, types.get(series, ""))
    return names


def test_every_exported_metric_is_in_the_readme_table_and_nothing_else() -> None:
    documented = dict(ROW.findall(README.read_text()))
    exported = exported_names()
    assert sorted(documented) == sorted(exported)
    for name, kind in documented.items():
        assert exported[name] == kind, name


def test_every_log_code_the_connector_emits_is_listed_in_the_readme() -> None:
    source = "\n".join(p.read_text() for p in (README.parent / "connector").rglob("*.py"))
    emitted = set(re.findall(r"""(?:code\s*=\s*|"code":\s*)(720\d\d)""", source))
    logs = README.read_text().split("**Logs.**", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"\b(720\d\d)\b", logs))
    assert emitted and emitted <= listed, sorted(emitted - listed)


def test_the_documented_role_grants_what_check_needs_for_images() -> None:
    """`check` calls listCollections to see whether pre- and post-images are enabled
    (connector/sources/mongodb/check.py): the least-privilege role must grant it."""
    check = (README.parent / "connector/sources/mongodb/check.py").read_text()
    assert "list_collections" in check
    role = README.read_text().split("createRole(", 1)[1].split("```", 1)[0]
    assert re.search(r"""\{db: "shop", collection: ""\}, actions: \[[^\]]*"listCollections\"""", role)


def test_the_licence_pyproject_names_is_in_the_repository() -> None:
    licence = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]["license"]
    assert licence == "Apache-2.0"
    text = " ".join((README.parent / "LICENSE").read_text().split())
    assert text.startswith("Apache License Version 2.0, January 2004")
    assert "END OF TERMS AND CONDITIONS" in text
    assert "[LICENSE](LICENSE)" in README.read_text().replace("`", "")


# ---- the Postgres figures are a committed result's ----

POSTGRES_RESULT = "benchmarks/results/2026-12-06-32f8729-full.json"
DASH = "\u2013"  # the README's en dash in ranges


def _k(rate: float) -> str:
    return f"{rate / 1000:.1f}k"


def postgres_rows(report: dict[str, Any]) -> list[str]:
    """The README's Postgres table body, as it must read for `report` (a `make bench` result's "postgres")."""
    rows = {(r["reader"], r["ably_ms"]): r for r in report["throughput"]}
    backlog, live, naive = rows[("connector", 0.0)], rows[("conn-live", 0.0)], rows[("naive", 0.0)]
    slow, slow_live, slow_naive = rows[("connector", 20.0)], rows[("conn-live", 20.0)], rows[("naive", 20.0)]
    mine = [r["cpu_per_10k_s"] for r in report["throughput"] if r["reader"] != "naive"]
    naive_cpu = sorted(r["cpu_per_10k_s"] for r in report["throughput"] if r["reader"] == "naive")
    lat, rolled, later = report["latency"], report["gaps"]["rolled back"], report["gaps"]["committed later"]
    times = slow["rate"] / slow_naive["rate"]
    return [
        f"| {backlog['rows'] // 1000}k rows (~300 B JSON) over 100 channels, inserted first, Ably at 0 ms "
        f"| {_k(backlog['rate'])} rows/s ({_k(backlog['from_spawn_rate'])}/s from process start) "
        f"| {naive['rate']:,.0f} rows/s |",
        f"| insert \u2192 Ably (connector running, {live['rows'] // 1000}k rows inserted as fast as one "
        f"writer can), Ably at 0 ms | {_k(live['rate'])} rows/s | |",
        f"| same two runs, Ably 20 ms away | {_k(slow['rate'])} rows/s backlog, "
        f"{_k(slow_live['rate'])} rows/s insert \u2192 Ably "
        f"| {slow_naive['rate']:.0f} rows/s (connector \u2248 {times:,.0f}\u00d7) |",
        f"| CPU per 10k rows | {min(mine):.2f}{DASH}{max(mine):.2f} s "
        f"| {naive_cpu[0]:.0f}{DASH}{naive_cpu[-1]:.0f} s |",
        f"| commit \u2192 Ably latency at {lat['target_rate']:,.0f} rows/s (from the moment COMMIT returned) "
        f"| p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.0f} ms | |",
        "| delay of a committed row above a gap, after the blocking transaction ends "
        f"| rolled back: p50 {rolled['p50_ms']:.1f} ms, max {rolled['max_ms']:.0f} ms; "
        f"committed later: p50 {later['p50_ms']:.1f} ms, max {later['max_ms']:.0f} ms | |",
    ]


def test_the_postgres_figures_are_those_of_the_committed_result_the_readme_names() -> None:
    text = README.read_text()
    table = text.split("| Postgres outbox, 2 vCPUs", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    report = json.loads((README.parent / POSTGRES_RESULT).read_text())["postgres"]
    assert table == postgres_rows(report)
    assert (
        f"`{POSTGRES_RESULT}`" in text.split("| Postgres outbox, 2 vCPUs", 1)[0].rstrip().rsplit("\n\n", 1)[1]
    )
    gaps = report["gaps"]
    assert (
        f"delays the row above it by {gaps['rolled back']['p50_ms']:.1f} ms after the rollback "
        f"(p50; max {gaps['rolled back']['max_ms']:.0f} ms), a row whose\nlower neighbour commits later by "
        f"{gaps['committed later']['p50_ms']:.1f} ms after that commit "
        f"(p50; max {gaps['committed later']['max_ms']:.0f} ms)"
    ) in text


SETTING_ROW = re.compile(r"^\| `([A-Z][A-Z0-9_]+)`(?: / `([A-Z][A-Z0-9_]+)`)? \| ", re.MULTILINE)


def test_every_setting_is_in_a_readme_table_and_every_row_is_a_setting() -> None:
    """Adding a setting without documenting it (or documenting one that does not exist) fails here."""
    from connector.config import Settings
    from connector.sources.registry import SETTINGS_PARTS

    documented = {name for row in SETTING_ROW.findall(README.read_text()) for name in row if name}
    settings = {name.upper() for name in Settings.model_fields}
    aliases = set().union(*(part.ALIASES for part in SETTINGS_PARTS.values()))
    assert sorted(settings - documented) == [], "settings missing from the README's tables"
    metric_or_code = {name for name in documented if name.startswith("LIVESYNC_")}
    assert sorted(documented - settings - aliases - metric_or_code) == [], "README rows naming no setting"
