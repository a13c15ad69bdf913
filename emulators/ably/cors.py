"""Cross-origin access, as Ably grants it: a web page on any origin may call the REST API.

ably-js in a browser sends ``Authorization``, ``X-Ably-Version`` and ``Ably-Agent`` headers, so every such
request is preflighted (OPTIONS); its XHR requests carry credentials (``withCredentials``), so the answer
must name the origin (a ``*`` is refused) and allow credentials; and a script can read the ``Link``
header only if the response exposes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web

ALLOWED_METHODS: Final = "GET, POST, DELETE, OPTIONS"
EXPOSED_HEADERS: Final = "Link, X-Ably-ErrorCode, X-Ably-ErrorMessage, X-Ably-ServerId"
PREFLIGHT_MAX_AGE_S: Final = "600"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer preflights; mark every other answer to a cross-origin request as readable by that origin."""
    origin = request.headers.get("Origin")
    if origin is None:
        return await handler(request)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Credentials": "true",
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Vary": "Origin",
                # Echoed: a wildcard would not cover Authorization.
                "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", ""),
                "Access-Control-Max-Age": PREFLIGHT_MAX_AGE_S,
            },
        )
    response = await handler(request)
    if not response.prepared:  # a WebSocket or a dropped connection is past adding headers
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.headers["Vary"] = "Origin"
    return response
