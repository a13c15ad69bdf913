"""Prometheus metrics, read from the components' own counters at scrape time.

A custom collector keeps the hot path free of metric bookkeeping: the reader, publisher and
checkpointer already count what they do, and a scrape simply reads those numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

Snapshot = Callable[[], dict[str, Any]]

# name → (kind, help). Counters are exposed with the `_total` suffix by prometheus_client.
METRICS: dict[str, tuple[str, str]] = {
    "livesync_events_read": ("counter", "Change events read from the stream"),
    "livesync_messages_published": ("counter", "Messages acknowledged by Ably"),
    "livesync_unpublishable_events": (
        "counter",
        "Events that could not be published (dead-lettered, skipped)",
    ),
    "livesync_events_deadlettered": ("counter", "Events written to the dead-letter collection"),
    "livesync_events_skipped": ("counter", "Unpublishable events skipped (ON_UNPUBLISHABLE=skip)"),
    "livesync_unpublishable_by_kind": (
        "counter",
        "Dead-lettered or skipped events by reason (label kind: no_channel, invalid, too_large, "
        "undecodable, rejected)",
    ),
    "livesync_throttled_channels": ("gauge", "Channels waiting for their rate budget with a backlog"),
    "livesync_throttled_seconds": ("counter", "Time channels spent throttled, summed over channels"),
    "livesync_rate_limited_messages": (
        "counter",
        "Messages Ably refused with its channel rate limit (42913)",
    ),
    "livesync_rate_limited_requests": ("counter", "Publish requests with at least one 42913 refusal"),
    "livesync_order_hazards": (
        "counter",
        "Messages Ably accepted after refusing an earlier one of their channel in the same request",
    ),
    "livesync_spilling_channels": ("gauge", "Throttled channels whose backlog is in the overflow store"),
    "livesync_messages_spilled": ("counter", "Messages written to the overflow store"),
    "livesync_messages_unspilled": ("counter", "Messages loaded back from the overflow store to publish"),
    "livesync_channel_backlog": (
        "gauge",
        "Messages waiting in memory for the busiest channels (label channel: the top 5)",
    ),
    "livesync_messages_truncated": (
        "counter",
        "Changes over MAX_MESSAGE_SIZE published without their document bodies (ON_OVERSIZE=truncate)",
    ),
    "livesync_messages_encrypted": (
        "counter",
        "Messages whose data was encrypted with a channel key (CHANNEL_CIPHER_KEY, CHANNEL_CIPHER_KEYS)",
    ),
    "livesync_events_reassembled": ("counter", "Change events over 16 MiB reassembled from split fragments"),
    "livesync_lossy_decodes": ("counter", "Events with invalid UTF-8 replaced by U+FFFD when decoded"),
    "livesync_undecodable_events": ("counter", "Events that could not be decoded at all (dead-lettered)"),
    "livesync_publish_requests": ("counter", "Batch publish requests sent to Ably"),
    "livesync_publish_retries": ("counter", "Publish attempts retried after a retryable failure"),
    "livesync_stream_reopens": ("counter", "Times the change stream was reopened after an error"),
    "livesync_checkpoints_stored": ("counter", "Resume tokens stored"),
    "livesync_in_flight_events": ("gauge", "Events read and not yet acknowledged or dead-lettered"),
    "livesync_in_flight_capacity": ("gauge", "Ledger capacity (the backpressure bound)"),
    "livesync_stream_open": ("gauge", "1 while the change stream is open"),
    "livesync_ready": ("gauge", "1 while /readyz answers 200"),
    "livesync_lag_seconds": (
        "gauge",
        "While changes wait for Ably, seconds since the newest one read was committed; 0 when none waits",
    ),
    "livesync_checkpoint_cluster_time_seconds": ("gauge", "Cluster time of the stored position (unix s)"),
    "livesync_checkpoint_age_seconds": ("gauge", "Now minus the cluster time of the stored position"),
    "livesync_leader": ("gauge", "1 while this instance holds the lease and publishes, 0 on a standby"),
    "livesync_lease_epoch": ("gauge", "Epoch of the lease this instance last held (0 if never)"),
    "livesync_leader_changes": ("counter", "Times this instance became the leader"),
    "livesync_publish_latency_seconds": (
        "histogram",
        "Seconds from a change's commit to Ably's acknowledgement (Postgres: from the read of the row)",
    ),
    # Postgres outbox source only: sequence gaps (a lower sequence_id not committed yet).
    "livesync_gaps_proven": ("counter", "Outbox gaps resolved by proof (no open transaction can fill them)"),
    "livesync_gaps_timed_out": ("counter", "Outbox gaps skipped after GAP_TIMEOUT_MS (logged)"),
    "livesync_late_rows": ("counter", "Outbox rows published after their gap was given up on"),
    "livesync_max_gap_wait_seconds": ("gauge", "Longest time rows were held back behind a gap"),
    "livesync_outbox_oldest_row_age_seconds": (
        "gauge",
        "Seconds since the connector first read the oldest outbox row not yet done and stored; 0 when none",
    ),
    "livesync_outbox_backlog_rows": (
        "gauge",
        "Outbox ids above the stored watermark: MAX(sequence_id) minus the watermark",
    ),
}


#: The label of a metric whose value is a mapping (label value -> number).
LABELS: dict[str, str] = {"livesync_channel_backlog": "channel", "livesync_unpublishable_by_kind": "kind"}


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Snapshot, labels: Mapping[str, str] | None = None) -> None:
        self._snapshot = snapshot
        self._labels = dict(labels or {})

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        if self._labels:
            # Which instance (INSTANCE_ID) of which connector (CONNECTOR_ID) these numbers come from.
            info = GaugeMetricFamily(
                "livesync_instance_info", "This connector instance", labels=list(self._labels)
            )
            info.add_metric(list(self._labels.values()), 1.0)
            yield info
        values = self._snapshot()
        now = time.time()
        if values.get("checkpoint_cluster_time_seconds"):
            values.setdefault("checkpoint_age_seconds", now - values["checkpoint_cluster_time_seconds"])
        for name, (kind, help_text) in METRICS.items():
            key = name.removeprefix("livesync_")
            value = values.get(key)
            if value is None:
                continue
            if kind == "histogram":
                yield HistogramMetricFamily(name, help_text, buckets=value["buckets"], sum_value=value["sum"])
                continue
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            if isinstance(value, Mapping):  # one series per label value: a small, bounded set
                labelled = family(name, help_text, labels=[LABELS.get(name, "kind")])
                for label, count in sorted(value.items()):
                    labelled.add_metric([str(label)], float(count))
                yield labelled
                continue
            yield family(name, help_text, value=float(value))


def build_registry(snapshot: Snapshot, labels: Mapping[str, str] | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot, labels))
    return registry
