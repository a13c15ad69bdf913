"""Fixtures: an in-process Ably emulator on a free port and an httpx client speaking to it like the
connector does (Basic auth, X-Ably-Version)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Final

import httpx
import pytest

from emulators.ably import AblyEmulator

KEY: Final = "app.key:secret"
ABLY_HEADERS: Final = {"X-Ably-Version": "6", "Accept": "application/json"}
CLIENT_TIMEOUT_S: Final = 10.0


def ably_client(url: str, key: str = KEY) -> httpx.AsyncClient:
    """An httpx client authenticated with ``key`` against the emulator at ``url``."""
    name, _, secret = key.partition(":")
    return httpx.AsyncClient(
        base_url=url, auth=(name, secret), headers=ABLY_HEADERS, timeout=CLIENT_TIMEOUT_S
    )


ClientFactory = Callable[..., httpx.AsyncClient]


@pytest.fixture
def connect() -> ClientFactory:
    """``connect(url, key=KEY)``: a client authenticated with ``key`` (tests import no conftest)."""
    return ably_client


@pytest.fixture
async def ably() -> AsyncIterator[AblyEmulator]:
    """A started emulator with the default test key."""
    async with AblyEmulator(host="127.0.0.1", port=0, keys=[KEY]) as emulator:
        yield emulator


@pytest.fixture
async def client(ably: AblyEmulator) -> AsyncIterator[httpx.AsyncClient]:
    """An authenticated client of ``ably``."""
    async with ably_client(ably.url) as http:
        yield http
