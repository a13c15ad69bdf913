"""The health server: the three endpoints, HTTP/1.1 behaviour probes and scrapers rely on, a clean close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from connector.errors import FatalError
from connector.health import HealthServer, serve_health
from connector.metrics import build_registry

READY: dict[str, Any] = {"ready": True, "details": {"role": "leader", "problems": []}}


@pytest.fixture
async def server() -> AsyncIterator[HealthServer]:
    def readiness() -> tuple[bool, dict[str, Any]]:
        return READY["ready"], dict(READY["details"])

    health = HealthServer(0, readiness, build_registry(lambda: {"events_read": 42}), host="127.0.0.1")
    await health.start()
    try:
        yield health
    finally:
        await health.aclose()
        READY.update(ready=True, details={"role": "leader", "problems": []})


@pytest.fixture
async def http(server: HealthServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=5) as client:
        yield client


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send bytes on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_healthz_readyz_and_metrics(http: httpx.AsyncClient) -> None:
    healthz = await http.get("/healthz")
    assert (healthz.status_code, healthz.json()) == (200, {"status": "ok"})
    assert healthz.headers["content-type"] == "application/json"
    ready = await http.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"ready": True, "role": "leader", "problems": []})
    metrics = await http.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "livesync_events_read_total 42.0" in metrics.text


async def test_readyz_is_503_with_the_reasons_when_not_ready(http: httpx.AsyncClient) -> None:
    READY.update(ready=False, details={"role": "leader", "problems": ["Ably not answering"]})
    response = await http.get("/readyz?verbose=1")  # a query string does not change the endpoint
    assert response.status_code == 503
    assert response.json() == {"ready": False, "role": "leader", "problems": ["Ably not answering"]}


async def test_head_unknown_path_and_other_methods(http: httpx.AsyncClient) -> None:
    head = await http.head("/healthz")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(b'{"status":"ok"}')
    missing = await http.get("/nope")
    assert missing.status_code == 404 and "no such endpoint" in missing.json()["error"]
    post = await http.post("/readyz", content=b"x" * 100)
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


async def test_keep_alive_answers_pipelined_requests_in_order(server: HealthServer) -> None:
    assert server.port is not None
    two = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    replies = await raw_exchange(server.port, two)
    assert replies.startswith(b"HTTP/1.1 200 ")
    assert replies.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 404 " in replies


async def test_a_malformed_request_is_a_400_and_the_connection_closes(server: HealthServer) -> None:
    assert server.port is not None
    reply = await raw_exchange(server.port, b"NOT HTTP AT ALL\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")


async def test_an_oversized_request_is_refused(server: HealthServer) -> None:
    assert server.port is not None
    huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40_000 + b"\r\n\r\n"
    reply = await raw_exchange(server.port, huge)
    assert reply.startswith(b"HTTP/1.1 431 ")


async def test_close_ends_idle_keep_alive_connections_and_stops_listening(server: HealthServer) -> None:
    assert server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    await asyncio.wait_for(server.aclose(), 5)  # the connection is idle, kept alive
    assert await asyncio.wait_for(reader.read(), 5) == b'{"status":"ok"}'  # the rest, then closed
    writer.close()
    await writer.wait_closed()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)
    await server.aclose()  # twice is harmless


async def test_serve_health_is_off_at_port_0_and_fatal_on_a_taken_port(server: HealthServer) -> None:
    registry = build_registry(lambda: {})
    assert await serve_health(0, lambda: (True, {}), registry) is None
    assert server.port is not None
    with pytest.raises(FatalError, match=f"cannot serve health checks on HTTP_PORT {server.port}"):
        await serve_health(server.port, lambda: (True, {}), registry)
