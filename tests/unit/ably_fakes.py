"""An in-memory fake of Ably REST behind `httpx.MockTransport`, instrumented for the publisher's invariants.

It checks the batch-publish limits on every request, records per-channel delivery (deduplicated by message
id, as Ably's idempotent publishing does), counts requests in flight per channel, and lets a test inject
faults: whole-request responses or exceptions per host, per-entry errors, latency and a gate.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from connector.ably.outbound import AblyMessage, OutboundMessage

API_KEY = "appid.keyid:s3cr3t-K3Y-value"
KEY_SECRET = "s3cr3t-K3Y-value"
MAX_BODY = 2 * 1024 * 1024


def error_body(code: int, status: int, message: str = "fake error") -> dict[str, Any]:
    return {"error": {"code": code, "statusCode": status, "message": message}}


def error_response(code: int, status: int, message: str = "fake error", **headers: str) -> httpx.Response:
    return httpx.Response(status, json=error_body(code, status, message), headers=headers)


def make_message(seq: int, channel: str, *, data: str | None = None, name: str = "update") -> OutboundMessage:
    payload = data if data is not None else json.dumps({"seq": seq, "channel": channel})
    message: AblyMessage = {"id": f"id-{seq:08d}", "name": name, "data": payload, "encoding": "json"}
    return OutboundMessage(seq=seq, channel=channel, message=message, size=len(payload), token={"_data": seq})


@dataclass
class Recorded:
    """One request as the fake saw it."""

    host: str
    method: str
    path: str
    headers: httpx.Headers
    body: Any
    raw_size: int
    query: str = ""
    # (channel, message id) per BatchSpec, in request order (batch publish only).
    entries: list[tuple[str, str]] = field(default_factory=list)

    @property
    def channels(self) -> set[str]:
        return {ch for ch, _ in self.entries}


# A per-host fault returns a Response to send instead of the normal answer, raises an httpx exception,
# or returns None to answer normally.
HostFault = Callable[[httpx.Request], httpx.Response | None]
# A per-entry fault gets (channel, message) and returns an Ably error dict for that entry, or None.
EntryFault = Callable[[str, dict[str, Any]], dict[str, Any] | None]


class FakeAbly:
    """The fake server; `transport` is what AblyRestClient takes."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.delivered: dict[str, list[str]] = defaultdict(list)  # channel -> message ids, first delivery
        self.seen_ids: set[str] = set()
        self.resent_ids: list[str] = []  # duplicates dropped by idempotency
        self.host_faults: dict[str, list[HostFault]] = defaultdict(list)  # consumed one per request
        self.entry_fault: EntryFault | None = None
        # A failed entry fails every later entry of its channel in the same request (a rate-limited or
        # unavailable channel does not accept the next message either).
        self.sticky_channel_failures = True
        self.latency: Callable[[], float] | None = None
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()  # set when any request reaches the fake
        self.in_flight: Counter[str] = Counter()
        self.channel_overlaps = 0
        self.max_concurrent = 0
        self.concurrent = 0
        self.limit_violations: list[str] = []
        self.transport = httpx.MockTransport(self.handle)

    # -- fault helpers ------------------------------------------------------------------------------------

    def fail_next(self, host: str, *faults: HostFault) -> None:
        self.host_faults[host].extend(faults)

    @property
    def batch_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/messages"]

    # -- the server -----------------------------------------------------------------------------------------

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        host = f"{request.url.scheme}://{request.url.netloc.decode()}"
        rec = Recorded(
            host,
            request.method,
            request.url.path,
            request.headers,
            body,
            len(request.content),
            request.url.query.decode(),
        )
        if rec.path == "/messages" and isinstance(body, list):
            rec.entries = [(spec["channels"], spec["messages"]["id"]) for spec in body]
        self.requests.append(rec)
        self.started.set()
        faults = self.host_faults.get(host)
        if faults:
            override = faults.pop(0)(request)
            if override is not None:
                return override
        if rec.path == "/messages":
            return await self._batch(rec)
        if rec.path == "/time":
            return httpx.Response(200, json=[1_700_000_000_000])
        if request.method == "GET" and rec.path.endswith("/messages"):
            return httpx.Response(200, json=[])
        if request.method == "POST" and rec.path.startswith("/channels/"):
            return httpx.Response(201, json={"channel": rec.path.split("/")[2], "messageId": "x"})
        return error_response(40400, 404, "not found")

    async def _batch(self, rec: Recorded) -> httpx.Response:
        self._check_limits(rec)
        channels = rec.channels
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        for ch in channels:
            if self.in_flight[ch]:
                self.channel_overlaps += 1
            self.in_flight[ch] += 1
        try:
            if self.gate is not None:
                await asyncio.wait_for(self.gate.wait(), 10)
            if self.latency is not None:
                await asyncio.sleep(self.latency())
            return self._apply(rec)
        finally:
            self.concurrent -= 1
            for ch in channels:
                self.in_flight[ch] -= 1

    def _check_limits(self, rec: Recorded) -> None:
        if len(rec.channels) > 100:
            self.limit_violations.append(f"{len(rec.channels)} channels")
        if rec.raw_size >= MAX_BODY:
            self.limit_violations.append(f"body of {rec.raw_size} bytes")
        for spec in rec.body:
            msgs = spec["messages"]
            if isinstance(msgs, list) and len(msgs) > 1000:
                self.limit_violations.append(f"{len(msgs)} messages in a BatchSpec")

    def _apply(self, rec: Recorded) -> httpx.Response:
        results: list[dict[str, Any]] = []
        failed: dict[str, dict[str, Any]] = {}
        for spec in rec.body:
            channel, message = spec["channels"], spec["messages"]
            error = failed.get(channel) if self.sticky_channel_failures else None
            if error is None and self.entry_fault is not None:
                error = self.entry_fault(channel, message)
            if error is not None:
                failed[channel] = error
                results.append({"channel": channel, "error": error})
                continue
            if message["id"] in self.seen_ids:
                self.resent_ids.append(message["id"])
            else:
                self.seen_ids.add(message["id"])
                self.delivered[channel].append(message["id"])
            results.append({"channel": channel, "messageId": message["id"]})
        if failed:
            body = error_body(40020, 400, "Batched response includes errors")
            body["batchResponse"] = results
            return httpx.Response(400, json=body)
        return httpx.Response(201, json=results)


def basic_auth(key: str) -> str:
    return "Basic " + base64.b64encode(key.encode()).decode()


class SleepRecorder:
    """An instant `sleep` that records the delays asked for (so retry tests take no time)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)
