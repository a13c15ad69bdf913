"""deploy/: the Prometheus alert rules pass their promtool unit tests, the Grafana dashboard is importable,
and every series either of them queries exists, with the labels they use, on a running connector's
/metrics (one on MongoDB, one on the Postgres outbox), so the three never drift apart."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymongo import MongoClient

from emulators.postgres import running_postgres
from tests.e2e.procs import ConnectorProcess

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "livesync-connector.json"
PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = "promtool not on PATH (Debian: apt-get install prometheus; .ci/run installs it when apt works)"
PROMTOOL_TIMEOUT_S = 60
SCRAPE_TIMEOUT_S = 30.0
POLL_S = 0.2

#: Grafana's variables, replaced by what Prometheus would receive for "All" (to check the PromQL).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$connector_id": ".*", "$instance_id": ".*"}
#: Labels every series has once Prometheus scraped it (target labels), not the connector's own.
TARGET_LABELS = {"job", "instance"}
#: The series only the Postgres outbox source exports; every other one is checked on MongoDB.
POSTGRES_ONLY = {
    "livesync_max_gap_wait_seconds",
    "livesync_gaps_proven_total",
    "livesync_gaps_timed_out_total",
    "livesync_late_rows_total",
    "livesync_outbox_oldest_row_age_seconds",
    "livesync_outbox_backlog_rows",
}
#: Prometheus' own series (`up` is written by the scrape, not by the connector).
PROMETHEUS_SERIES = {"up"}
METRIC = re.compile(r"\b(livesync_[a-z0-9_]+|up)\b(\{[^}]*\})?")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|on|group_left|group_right|without|ignoring)\s*\(([^)]*)\)")
DEADLETTER_PIPELINE = '[{"$set": {"_ablyChannel": "$fullDocument.ch"}}]'


def _alert_exprs() -> list[str]:
    # The rules file is YAML; its `expr:` values are plain or `|` blocks, read without a YAML parser.
    exprs, current = [], None
    for line in ALERTS.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("expr:"):
            value = stripped.removeprefix("expr:").strip()
            current = [] if value == "|" else None
            if current is None:
                exprs.append(value)
            indent = len(line) - len(line.lstrip()) + 2
            continue
        if current is not None:
            if stripped and len(line) - len(line.lstrip()) < indent:
                exprs.append(" ".join(current))
                current = None
            elif stripped:
                current.append(stripped)
    return exprs


def _panel_targets(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield from panel.get("targets", [])
        for inner in panel.get("panels", []):
            yield from inner.get("targets", [])


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for target in _panel_targets(dashboard)]
    exprs += [var["query"]["query"] for var in dashboard["templating"]["list"] if var["type"] == "query"]
    return exprs


def _as_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return re.sub(r"label_values\((.*), *([a-z_]+)\)$", r"group by (\2) (\1)", expr)


def queries() -> list[tuple[set[str], set[str]]]:
    """Each query of the dashboard and the rules: the series it reads, and the labels it matches or
    groups on (each must be a target label or one that a series of the same query exports)."""
    found = []
    for expr in _alert_exprs() + [_as_promql(e) for e in _dashboard_exprs()]:
        names: set[str] = set()
        labels: set[str] = set()
        for name, selector in METRIC.findall(expr):
            names.add(name)
            labels.update(MATCHER_LABEL.findall(selector))
        for group in GROUPING.findall(expr):
            labels.update(label.strip() for label in group.split(",") if label.strip())
        found.append((names, labels))
    return found


def test_the_rules_and_the_dashboard_query_the_series_the_alerts_promise() -> None:
    names = set().union(*(names for names, _ in queries()))
    labels = set().union(*(labels for _, labels in queries()))
    assert {"livesync_instance_info", "livesync_publish_latency_seconds_bucket", "up"} <= names
    assert {"connector_id", "instance_id", "kind", "le"} <= labels


def test_dashboard_is_importable_with_connector_and_instance_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "livesync-connector" and dashboard["schemaVersion"] >= 36
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("connector_id", "instance_id"):
        assert variables[name]["query"]["query"].startswith("label_values(livesync_instance_info")
        assert variables[name]["includeAll"] and variables[name]["multi"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for target in _panel_targets(dashboard):
        assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        # Every panel follows the variables: its series are joined to the filtered info metric.
        assert (
            'livesync_instance_info{connector_id=~"$connector_id", instance_id=~"$instance_id"}'
            in (target["expr"])
        )
    cells = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        area = {
            (x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S, check=False
    )


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_alert_rules_fire_and_stay_quiet_as_their_promtool_tests_say() -> None:
    checked = _promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _promtool("test", "rules", str(ALERT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    # promtool parses expressions in rule files: each query becomes a recording rule.
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(_dashboard_exprs()):
        rules += [f"      - record: dashboard_query_{i}", f"        expr: {json.dumps(_as_promql(expr))}"]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text("\n".join(rules) + "\n")
    checked = _promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- a running connector's /metrics ------------------------------------------------------------------


def _scrape(port: int) -> dict[str, list[dict[str, str]]]:
    """Series name -> the label sets it has, as Prometheus would store them."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2, verify=False).text
    series: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, []).append(dict(sample.labels))
    return series


def _scrape_until(connector: ConnectorProcess, wanted: set[str]) -> dict[str, list[dict[str, str]]]:
    """Scrapes until every wanted series is there (some appear only after an event, a dead letter or a
    checkpoint), or the time is up; returns the last scrape either way."""
    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    while True:
        series = _scrape(connector.port)
        if wanted <= set(series) or time.monotonic() > deadline:
            return series
        time.sleep(POLL_S)


def _check_series(series: dict[str, list[dict[str, str]]], postgres: bool) -> None:
    """Every query of this source's scope finds its series, with the labels it uses."""
    checked = 0
    for names, labels in queries():
        connector_series = names - PROMETHEUS_SERIES
        if bool(connector_series & POSTGRES_ONLY) != postgres:
            continue
        checked += 1
        missing = sorted(connector_series - set(series))
        assert not missing, f"series the dashboard or alerts use but /metrics lacks: {missing}"
        exported = {label for name in connector_series for labelset in series[name] for label in labelset}
        unknown = labels - exported - TARGET_LABELS
        assert not unknown, f"{sorted(names)} use labels none of them exports: {sorted(unknown)}"
    assert checked
    (info,) = series["livesync_instance_info"]
    assert set(info) == {"connector_id", "instance_id"}
    for name, labelsets in series.items():
        for labelset in labelsets:
            # Only the info metric names the connector: the others are joined to it on (job, instance).
            assert name == "livesync_instance_info" or not {"connector_id", "instance_id"} & set(labelset)
    if not postgres:
        assert all(set(ls) == {"kind"} for ls in series["livesync_unpublishable_by_kind_total"])
        buckets = series["livesync_publish_latency_seconds_bucket"]
        assert all("le" in ls for ls in buckets) and any(ls["le"] == "+Inf" for ls in buckets)


@pytest.mark.e2e
def test_a_mongodb_connector_exports_every_series_the_dashboard_and_alerts_use(
    connector_env: dict[str, str], mongo_uri: str, db_name: str, tmp_path: Path
) -> None:
    wanted = set().union(*(names for names, _ in queries())) - PROMETHEUS_SERIES - POSTGRES_ONLY
    env = {
        **connector_env,
        "PIPELINE": DEADLETTER_PIPELINE,
        "CONNECTOR_ID": "deploy-test",
        "INSTANCE_ID": "deploy-a",
        "IDLE_CHECKPOINT_INTERVAL_S": "1",
    }
    with ConnectorProcess(env, tmp_path / "connector.log") as connector:
        connector.wait_ready()
        client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
        try:
            orders = client[db_name]["orders"]
            orders.insert_one({"_id": 1, "ch": "orders:1"})  # published
            orders.insert_one({"_id": 2})  # no channel: dead-lettered (kind no_channel)
        finally:
            client.close()
        series = _scrape_until(connector, wanted)
    _check_series(series, postgres=False)
    assert series["livesync_instance_info"] == [{"connector_id": "deploy-test", "instance_id": "deploy-a"}]
    assert {"kind": "no_channel"} in series["livesync_unpublishable_by_kind_total"]


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_postgres_connector_exports_the_gap_series_the_dashboard_uses(ably: Any, tmp_path: Path) -> None:
    wanted = POSTGRES_ONLY | {"livesync_instance_info"}
    with running_postgres() as pg:
        env = {
            "SOURCE": "postgres",
            "POSTGRES_URI": pg.uri,
            "ABLY_API_KEY": "testapp.key1:s3cr3t-value",
            "ABLY_REST_URL": ably.url,
            "ABLY_FALLBACK_HOSTS": "",
            "CONNECTOR_ID": "deploy-pg",
            "INSTANCE_ID": "deploy-b",
        }
        created = subprocess.run(
            [sys.executable, "-m", "connector", "create-tables"],
            env={**ConnectorProcess(env, tmp_path / "unused.log").env, "HTTP_PORT": "0"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        with ConnectorProcess(env, tmp_path / "connector.log") as connector:
            connector.wait_ready()
            with psycopg.connect(pg.uri, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO outbox (mutation_id, channel, name, data) VALUES ('m', 'c:1', 'n', '{}')"
                )
            series = _scrape_until(connector, wanted)
    _check_series(series, postgres=True)
    assert series["livesync_instance_info"] == [{"connector_id": "deploy-pg", "instance_id": "deploy-b"}]


# ---- k8s/statefulset.yaml: partitioned connectors with standbys ----

K8S = ROOT / "deploy" / "k8s" / "statefulset.yaml"


def _k8s_documents() -> dict[str, dict[str, Any]]:
    from ruamel.yaml import YAML  # check-jsonschema's YAML parser (a dev dependency)

    docs = [doc for doc in YAML(typ="safe").load_all(K8S.read_text()) if doc]
    return {doc["kind"]: doc for doc in docs}


def test_the_statefulset_gives_every_partition_a_leader_and_a_standby() -> None:
    from connector.sources.mongodb.partitions import resolve_partition

    docs = _k8s_documents()
    assert set(docs) == {"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"}
    sts = docs["StatefulSet"]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    count = int(env["PARTITIONS"]["value"])
    assert "PARTITION" not in env, "each pod's partition comes from its ordinal"
    assert env["INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    replicas = sts["spec"]["replicas"]
    assert count > 1 and replicas % count == 0 and replicas >= 2 * count
    pods = [f"{sts['metadata']['name']}-{ordinal}" for ordinal in range(replicas)]
    partitions = [resolve_partition(count, None, pod) for pod in pods]
    assert all(problems == [] for _, problems in partitions)
    per_partition = [index for index, _ in partitions]
    assert all(per_partition.count(k) == replicas // count for k in range(count))
    assert sts["spec"]["serviceName"] == docs["Service"]["metadata"]["name"]
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 25  # SHUTDOWN_GRACE_S
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_the_statefulset_sets_only_the_connectors_settings() -> None:
    from connector.config import Settings
    from connector.sources.mongodb.pipeline import parse_pipeline

    docs = _k8s_documents()
    container = docs["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    for item in container["env"]:
        name = item["name"].removesuffix("_FILE")
        assert name.lower() in Settings.model_fields, item["name"]
    for text in docs["ConfigMap"]["data"].values():
        assert parse_pipeline(text)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {item["name"]: item.get("value", "") for item in container["env"]}
    assert env["PIPELINE_FILE"].startswith(mounts["pipelines"] + "/")
    assert env["PIPELINE_FILE"].rsplit("/", 1)[1] in docs["ConfigMap"]["data"]
