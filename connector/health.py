"""Health, readiness and metrics over HTTP (aiohttp), for probes and Prometheus.

`/healthz` answers while the event loop runs (liveness). `/readyz` is honest: 200 only while the change
stream is open, Ably is answering and checkpoint writes succeed; otherwise 503 with the reasons, so an
orchestrator or a human sees *why*. `/metrics` is the Prometheus text format.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class HealthServer:
    """Serves the three endpoints on `port` (0 = an ephemeral port, for tests)."""

    def __init__(
        self, port: int, readiness: Readiness, registry: CollectorRegistry, host: str = "0.0.0.0"
    ) -> None:
        self._host = host
        self._port = port
        self._readiness = readiness
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else self._port
        log.info("health server listening on %s:%s", self._host, self.port)

    async def aclose(self) -> None:
        """Stop serving; closing twice is harmless."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"}, 200)

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, details = self._readiness()
        return _json({"ready": ready, **details}, 200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _json(payload: dict[str, Any], status: int) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload, default=str), status=status, content_type="application/json"
    )
