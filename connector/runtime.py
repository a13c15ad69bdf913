"""The runtime: one connector instance, whatever its source. `run()` returns the process exit status.

    run() ─ health server ─ source.open() (wait for the database, check it)
      └─ until a stop request or a fatal error:
           stand by until the lease is ours (connector/leadership.py, invariant 8)
           one Term (connector/term.py): open it (retried while the lease holds), run it, then
             - a stop request or a fatal error: shutdown() in the order of invariant 7, release the lease
             - the lease lost: drop() (nothing drained, nothing stored), back to standby
             - the database gone (DatabaseUnavailable): drop(), release, back off, compete again
    exit: release the lease, leave the lease store, close Ably, the health server and the source

A fatal error takes the shutdown path and the process exits 1 with one log line naming the cause. Terms'
counters are summed so the metrics stay cumulative across leaderships.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, Final

from connector.ably.client import AblyRestClient, ably_from
from connector.ably.latency import LatencyHistogram
from connector.config import Settings
from connector.errors import (
    AblyError,
    ConnectorError,
    DatabaseUnavailable,
    LeadershipLost,
    StreamError,
)
from connector.health import HealthServer, serve_health
from connector.leadership import Leadership
from connector.metrics import build_registry
from connector.sources.protocol import Counter, Source
from connector.term import Term

log = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FATAL: Final = 1
#: Waiting for the database when a term opens, and between terms after a database error.
RETRY_BACKOFF_INITIAL_S: Final = 0.5
RETRY_BACKOFF_MAX_S: Final = 10.0


class Runtime:
    """One connector instance: a source, the lease, one term at a time, health and metrics."""

    def __init__(self, settings: Settings, source: Source, *, ably: AblyRestClient | None = None) -> None:
        self.settings = settings
        self.source = source
        self.stop_event = asyncio.Event()
        self._stop_reason = ""
        self.ably = ably or ably_from(settings)
        self.leadership = Leadership(
            source.lease_store, owner=settings.instance_id, ttl_s=settings.lease_ttl_s
        )
        # Checked before every publish attempt, retries included: a leader past its deadline sends nothing.
        self.ably.before_publish = self.leadership.ensure_may_publish
        self.health: HealthServer | None = None
        self.latency = LatencyHistogram()  # commit → Ably's acknowledgement, for the whole process
        #: The current term, or the last one (`retired`) between terms.
        self.term: Term | None = None
        # Every counter at zero from the start (a fresh term's), so rates exist before the first term.
        self._past: dict[str, Counter] = {
            name: {} if isinstance(value, dict) else 0 for name, value in self._new_term().counters().items()
        }
        self._past_throttled_s = 0.0
        self._retry_delay = RETRY_BACKOFF_INITIAL_S

    def request_stop(self, reason: str = "signal") -> None:
        """Called from a signal handler: only records the request and sets the events."""
        if not self._stop_reason:
            self._stop_reason = reason
        self.stop_event.set()
        if self.term is not None:
            self.term.stop.set()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> int:
        fatal: BaseException | None = None
        try:
            registry = build_registry(self.snapshot, self.labels())
            self.health = await serve_health(self.settings.http_port, self.readiness, registry)
            if await self.source.open(self.stop_event):
                while fatal is None and await self.leadership.acquire(self.stop_event):
                    fatal = await self._lead()
                    if self.stop_event.is_set():
                        break
        except ConnectorError as exc:
            fatal = exc
        finally:
            await self._close()
        if fatal is not None:
            log.critical("stopping: %s", fatal, extra={"code": getattr(fatal, "code", 72000)})
            return EXIT_FATAL
        log.info("stopped cleanly (%s)", self._stop_reason or "requested")
        return EXIT_OK

    def _new_term(self) -> Term:
        return Term(self.settings, self.source, self.ably, self.leadership, self.latency)

    async def _lead(self) -> BaseException | None:
        """One term as the leader. Returns a fatal error, or None after a clean stop or a lost lease."""
        term = self.term = self._new_term()
        try:
            opened = await self._open(term)
        except LeadershipLost as exc:
            await term.close()
            self._retire(term)
            self.leadership.step_down(str(exc))
            return None
        except ConnectorError as exc:
            await term.close()
            self._retire(term)
            await self.leadership.release()
            return exc
        if not opened:  # stopped while waiting for the database
            await term.close()
            self._retire(term)
            await self.leadership.release()
            return None
        fatal = await term.run(self.stop_event)
        if isinstance(fatal, LeadershipLost):
            await term.drop()
            self._retire(term)
            self.leadership.step_down(str(fatal))
            return None
        if isinstance(fatal, DatabaseUnavailable):
            log.error("leadership term ended: %s", fatal, extra={"code": fatal.code})
            await term.drop()
            self._retire(term)
            await self.leadership.release()
            await self._sleep(self._retry_delay)  # back off before competing again
            self._retry_delay = min(RETRY_BACKOFF_MAX_S, self._retry_delay * 2)
            return None
        # Events read before a fatal error still get their chance to publish, unless Ably is the problem
        # (then draining would only wait out the grace period).
        await term.shutdown(drain=not isinstance(fatal, AblyError))
        self._retire(term)
        # 4. hand the lease over at once instead of letting it expire
        await self.leadership.release()
        return fatal

    async def _open(self, term: Term) -> bool:
        """Open the term, waiting for the database while the lease holds; False if stopped meanwhile."""
        while True:
            try:
                await term.open()
            except StreamError as exc:  # unreachable; a corrupt position is a different, fatal error
                await term.source.close()
                log.error(
                    "cannot reach %s, retrying in %.1fs: %s",
                    self.source.database,
                    self._retry_delay,
                    exc,
                    extra={"code": 72003},
                )
                await self._sleep(self._retry_delay)
                self._retry_delay = min(RETRY_BACKOFF_MAX_S, self._retry_delay * 2)
                if self.stop_event.is_set():
                    return False
                self.leadership.ensure_may_publish()  # the lease could not be renewed meanwhile
                continue
            self._retry_delay = RETRY_BACKOFF_INITIAL_S
            return True

    def _retire(self, term: Term) -> None:
        """Keep the finished term's counters (metrics are cumulative)."""
        if term.retired:
            return
        term.retired = True
        for name, value in term.counters().items():
            self._past[name] = _add(self._past.get(name, 0), value)
        self._past_throttled_s += term.throttled_seconds()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), seconds)

    async def _close(self) -> None:
        if self.term is not None and not self.term.retired:  # an error outside a term's own handling
            await self.term.close()
            self._retire(self.term)
        await self.leadership.release()
        await self.leadership.close()
        with contextlib.suppress(Exception):
            await self.ably.aclose()
        if self.health is not None:
            await self.health.aclose()
        await self.source.close()

    # -- observability -------------------------------------------------------------------------------

    def _live_term(self) -> Term | None:
        term = self.term
        return term if term is not None and not term.retired else None

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Leader: reading, Ably answering, positions stored. Standby: the lease is reachable (a standby
        sidecar must not make its database pod unready)."""
        role = self.leadership.role
        term = self._live_term()
        problems: list[str] = []
        details: dict[str, Any] = {
            "role": role,
            "problems": problems,
            "instance": self.leadership.owner,
            "epoch": self.leadership.epoch,
        }
        if role == "standby" or term is None:
            if not self.leadership.store_reachable:
                problems.append(f"cannot reach {self.source.database} to poll the lease")
            elif not self.leadership.polled:
                problems.append("starting: the lease not polled yet")
            return not problems, details
        problems.extend(term.source.problems())
        if not self.ably.answering:
            problems.append("Ably not answering")
        details.update(in_flight=term.ledger.pending, **term.source.details())
        return not problems, details

    def labels(self) -> dict[str, str]:
        """Constant labels of the info metric: which instance of which connector (partition) this is."""
        return {"instance_id": self.settings.instance_id, "connector_id": self.source.lease_id}

    def snapshot(self) -> dict[str, Any]:
        term = self._live_term()
        values: dict[str, Any] = dict(self._past)
        throttled_s = self._past_throttled_s
        if term is not None:
            for name, value in term.counters().items():
                values[name] = _add(values.get(name, 0), value)
            values.update(term.gauges())
            throttled_s += term.throttled_seconds()
        else:
            values.update(
                stream_open=0,
                throttled_channels=0,
                spilling_channels=0,
                channel_backlog={},
                in_flight_events=0,
                lag_seconds=0.0,
            )
        values.update(self.source.values())
        ready, _ = self.readiness()
        values.update(
            throttled_seconds=throttled_s,
            in_flight_capacity=self.settings.max_in_flight,
            ready=int(ready),
            leader=int(self.leadership.is_leader),
            lease_epoch=self.leadership.epoch,
            leader_changes=self.leadership.changes,
            publish_latency_seconds=self.latency.snapshot(),
        )
        return values


def _add(a: Counter, b: Counter) -> Counter:
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        out = dict(a) if isinstance(a, Mapping) else {}
        for key, count in b.items() if isinstance(b, Mapping) else ():
            out[key] = out.get(key, 0) + count
        return out
    return a + b
