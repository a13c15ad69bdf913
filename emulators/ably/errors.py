"""Ably-style errors raised inside the emulator and rendered as Ably error bodies.

Ably reports every failure as ``{"error": {"code", "statusCode", "message", "href"}}`` and repeats the
code and message in the ``X-Ably-ErrorCode`` / ``X-Ably-ErrorMessage`` headers; clients classify by
``code``, so the emulator must get codes right more than messages.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from aiohttp import web

HELP_HREF: Final = "https://help.ably.io/error/"

# The codes the emulator emits (see ABLY-CONTRACT.md for the connector's reaction to each).
BAD_REQUEST: Final = 40000
INVALID_BODY: Final = 40001
MESSAGE_TOO_LARGE: Final = 40009
INVALID_CHANNEL: Final = 40010
INVALID_DATA: Final = 40013
BATCH_PARTIAL: Final = 40020
INVALID_MESSAGE_ID: Final = 40031  # a client-supplied id empty, not a string, or breaking <base>:<index>
AUTH_FAILED: Final = 40101
TOKEN_INVALID: Final = 40140
CHANNEL_RATE_LIMIT: Final = 42913
INTERNAL: Final = 50000


class AblyHttpError(Exception):
    """Raised by request handling when Ably would answer with an error body."""

    def __init__(self, code: int, status: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message

    def to_info(self) -> dict[str, Any]:
        """The ErrorInfo object, as used at the top level and inside batch entries."""
        return error_info(self.code, self.status, self.message)


def error_info(code: int, status: int, message: str) -> dict[str, Any]:
    """An Ably ErrorInfo dict."""
    return {"code": code, "statusCode": status, "message": message, "href": f"{HELP_HREF}{code}"}


def status_for_code(code: int) -> int:
    """Ably codes embed their HTTP status in the first three digits (40009 → 400, 50320 → 503)."""
    status = code // 100
    return status if 400 <= status < 600 else 500


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response encoded with orjson (the emulator's hot path; the stdlib encoder is 5x slower)."""
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type="application/json", headers=headers
    )


def error_response(code: int, status: int, message: str, extra: dict[str, Any] | None = None) -> web.Response:
    """An Ably error response with the error repeated in headers, as Ably does."""
    body: dict[str, Any] = {"error": error_info(code, status, message)}
    if extra:
        body.update(extra)
    headers = {"X-Ably-ErrorCode": str(code), "X-Ably-ErrorMessage": message.replace("\n", " ")}
    return json_response(body, status=status, headers=headers)
