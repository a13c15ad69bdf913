"""``AblyEmulatorAdmin``: a small httpx client of ``/_emulator`` for tests that run the emulator as a
subprocess. Every method has a sync form and an ``a``-prefixed async form (``messages`` / ``amessages``).
"""

from __future__ import annotations

from typing import Any, Final

import httpx

ADMIN_TIMEOUT_S: Final = 10.0  # admin calls are local and cheap; anything slower is a hung emulator


class AblyEmulatorAdmin:
    """Admin client for an emulator at ``url`` (its base URL, e.g. ``http://127.0.0.1:8081``)."""

    def __init__(self, url: str, timeout: float = ADMIN_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout
        # A client per call, and over plain http no CA bundle to load: httpx's default TLS context costs
        # 20 ms of CPU per client, which a harness polling the stats every 20 ms paid in full.
        self._verify = not self.url.startswith("http://")

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(
            method, f"{self.url}/_emulator/{path}", timeout=self._timeout, verify=self._verify, **kwargs
        )
        response.raise_for_status()
        return response.json()

    async def _arequest(self, method: str, path: str, **kwargs: Any) -> Any:
        async with httpx.AsyncClient(timeout=self._timeout, verify=self._verify) as client:
            response = await client.request(method, f"{self.url}/_emulator/{path}", **kwargs)
        response.raise_for_status()
        return response.json()

    @staticmethod
    def _message_params(channel: str | None, since: int) -> dict[str, Any]:
        params: dict[str, Any] = {"since": since}
        if channel is not None:
            params["channel"] = channel
        return params

    # -- sync ---------------------------------------------------------------------------------------

    def messages(self, channel: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        """Delivered messages in arrival order (optionally one channel, skipping the first ``since``)."""
        result: list[dict[str, Any]] = self._request(
            "GET", "messages", params=self._message_params(channel, since)
        )
        return result

    def stats(self) -> dict[str, Any]:
        """The emulator's counters."""
        result: dict[str, Any] = self._request("GET", "stats")
        return result

    def fault(self, **spec: Any) -> dict[str, Any]:
        """Inject a fault, e.g. ``fault(status=503, code=50003, count=2)`` or ``fault(mode="drop")``."""
        result: dict[str, Any] = self._request("POST", "faults", json=spec)
        return result

    def faults(self) -> list[dict[str, Any]]:
        """The faults in force."""
        result: list[dict[str, Any]] = self._request("GET", "faults")["faults"]
        return result

    def clear(self) -> None:
        """Clear every fault."""
        self._request("DELETE", "faults")

    def reset(self) -> None:
        """Forget messages, dedupe state, counters and faults."""
        self._request("POST", "reset")

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change settings at runtime; returns the resulting settings."""
        result: dict[str, Any] = self._request("POST", "config", json=changes)
        return result

    # -- async --------------------------------------------------------------------------------------

    async def amessages(self, channel: str | None = None, since: int = 0) -> list[dict[str, Any]]:
        """Async ``messages``."""
        result: list[dict[str, Any]] = await self._arequest(
            "GET", "messages", params=self._message_params(channel, since)
        )
        return result

    async def astats(self) -> dict[str, Any]:
        """Async ``stats``."""
        result: dict[str, Any] = await self._arequest("GET", "stats")
        return result

    async def afault(self, **spec: Any) -> dict[str, Any]:
        """Async ``fault``."""
        result: dict[str, Any] = await self._arequest("POST", "faults", json=spec)
        return result

    async def afaults(self) -> list[dict[str, Any]]:
        """Async ``faults``."""
        result: list[dict[str, Any]] = (await self._arequest("GET", "faults"))["faults"]
        return result

    async def aclear(self) -> None:
        """Async ``clear``."""
        await self._arequest("DELETE", "faults")

    async def areset(self) -> None:
        """Async ``reset``."""
        await self._arequest("POST", "reset")

    async def aconfigure(self, **changes: Any) -> dict[str, Any]:
        """Async ``configure``."""
        result: dict[str, Any] = await self._arequest("POST", "config", json=changes)
        return result
