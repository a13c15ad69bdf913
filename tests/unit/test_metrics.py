"""/metrics reads the components' counters at scrape time; leadership and gap metrics included."""

from __future__ import annotations

from prometheus_client import generate_latest

from connector.metrics import build_registry


def scrape(snapshot: dict[str, object], labels: dict[str, str] | None = None) -> dict[str, float]:
    text = generate_latest(build_registry(lambda: dict(snapshot), labels)).decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_leadership_metrics_and_the_instance_label() -> None:
    values = scrape(
        {"leader": 1, "lease_epoch": 7, "leader_changes": 2, "events_read": 5},
        {"instance_id": "mongo-0", "connector_id": "shop.orders"},
    )
    assert values["livesync_leader"] == 1
    assert values["livesync_lease_epoch"] == 7
    assert values["livesync_leader_changes_total"] == 2
    assert values["livesync_events_read_total"] == 5
    assert values['livesync_instance_info{connector_id="shop.orders",instance_id="mongo-0"}'] == 1


def test_outbox_gap_metrics_and_unknown_values_left_out() -> None:
    values = scrape({"gaps_proven": 3, "gaps_timed_out": 1, "late_rows": 0, "max_gap_wait_seconds": 0.25})
    assert values["livesync_gaps_proven_total"] == 3
    assert values["livesync_gaps_timed_out_total"] == 1
    assert values["livesync_late_rows_total"] == 0
    assert values["livesync_max_gap_wait_seconds"] == 0.25
    assert "livesync_leader" not in values  # a value the source does not report is not invented
