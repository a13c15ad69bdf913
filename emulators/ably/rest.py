"""The Ably REST surface: publish, batch publish, history and time, behind auth, version, latency and
fault checks (see ABLY-CONTRACT.md; what the emulator decides where Ably's docs are silent is in README.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlencode

import orjson
from aiohttp import web

from emulators.ably.config import BATCH_RESULT_MIN_VERSION, EmulatorConfig
from emulators.ably.errors import (
    AUTH_FAILED,
    BAD_REQUEST,
    BATCH_PARTIAL,
    INVALID_BODY,
    TOKEN_INVALID,
    AblyHttpError,
    error_response,
    json_response,
)
from emulators.ably.faults import Fault, FaultBook, RequestKind
from emulators.ably.messages import (
    MESSAGE_FIELDS,
    normalize_for_store,
    normalize_unit_for_store,
    validate_channel,
)
from emulators.ably.protocol import parse_channel_serial
from emulators.ably.store import BatchUnit, Store

logger = logging.getLogger(__name__)

ADMIN_PREFIX: Final = "/_emulator"
REALTIME_PATH: Final = "/"
MAX_BODY_BYTES: Final = 2 * 1024 * 1024  # Ably: a request body must be smaller than 2 MiB
MAX_BATCH_CHANNELS: Final = 100  # distinct channels per batch publish request
MAX_BATCH_MESSAGES: Final = 1000  # messages per BatchSpec
DEFAULT_HISTORY_LIMIT: Final = 100
MAX_HISTORY_LIMIT: Final = 1000
INVALID_PARAMETER: Final = 40003
NOT_FOUND: Final = 40400
DROPPED_STATUS: Final = 499  # never sent: the placeholder response of a dropped connection

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConnectionDropped(Exception):
    """Raised by a ``drop`` fault after closing the connection; no response follows."""


class RestApi:
    """Handlers and middleware for the Ably-compatible endpoints."""

    def __init__(self, config: EmulatorConfig, store: Store, faults: FaultBook) -> None:
        self._config = config
        self._store = store
        self._faults = faults
        # Set at shutdown so that injected delays end at once instead of holding the server's stop.
        self.closing = asyncio.Event()

    def add_routes(self, app: web.Application) -> None:
        """Register the public endpoints on ``app``."""
        app.router.add_post("/channels/{channel}/messages", self.publish)
        app.router.add_get("/channels/{channel}/messages", self.history)
        app.router.add_post("/messages", self.batch_publish)
        app.router.add_get("/time", self.time)

    # -- middleware ---------------------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Latency, header checks, request-wide faults, Ably error rendering and request counting."""
        if request.path.startswith(ADMIN_PREFIX) or request.path == REALTIME_PATH:
            return await handler(request)  # the realtime endpoint checks version and credentials itself
        latency_ms = self._config.latency_ms
        if latency_ms > 0:
            await asyncio.sleep(latency_ms / 1000)
        try:
            response = await self._guarded(request, handler)
        except ConnectionDropped:
            self._store.record_response("dropped")
            # The transport is closed: aiohttp's attempt to send this fails quietly (ConnectionError).
            return web.Response(status=DROPPED_STATUS)
        self._store.record_response(response.status)
        if request.query.get("envelope") == "json" and isinstance(response, web.Response):
            return _envelope(response)
        return response

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            self._check_version(request)
            if request.path != "/time":
                self._authenticate(request)
            if request.method != "POST":  # publishes check faults once their channels are known
                await self._apply_fault(request, "other", ())
            return await handler(request)
        except AblyHttpError as exc:
            return error_response(exc.code, exc.status, exc.message)
        except web.HTTPException as exc:  # routing: unknown path or method
            code = NOT_FOUND if exc.status == 404 else exc.status * 100
            return error_response(code, exc.status, exc.reason)

    @staticmethod
    def _check_version(request: web.Request) -> None:
        # Ably accepts the protocol version as a header or as the `v` query parameter.
        if not (request.headers.get("X-Ably-Version") or request.query.get("v")):
            raise AblyHttpError(BAD_REQUEST, 400, "X-Ably-Version header required")

    def _authenticate(self, request: web.Request) -> None:
        header = request.headers.get("Authorization")
        if not header:
            raise AblyHttpError(AUTH_FAILED, 401, "no authentication credentials provided")
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise AblyHttpError(AUTH_FAILED, 401, "malformed Basic credentials") from exc
            key_name, sep, secret = decoded.partition(":")
            expected = self._config.secrets_by_key_name.get(key_name)
            if not sep or expected is None:
                raise AblyHttpError(AUTH_FAILED, 401, f"invalid key name {key_name!r}")
            if secret != expected:
                raise AblyHttpError(AUTH_FAILED, 401, f"invalid credentials for key {key_name!r}")
            self._store.count_key(key_name)
        elif scheme == "bearer":
            if not self._known_token(value.strip()):
                raise AblyHttpError(TOKEN_INVALID, 401, "invalid or unknown token")
        else:
            raise AblyHttpError(AUTH_FAILED, 401, f"unsupported authorization scheme {scheme!r}")

    def _known_token(self, credential: str) -> bool:
        """A configured token, sent as is or base64-encoded (as the Ably SDKs send it)."""
        if credential in self._config.tokens:
            return True
        try:
            decoded = base64.b64decode(credential, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return decoded in self._config.tokens

    async def _apply_fault(self, request: web.Request, kind: RequestKind, channels: Any) -> list[Fault]:
        """Serve the matching fault: raise its error, drop, or delay. Partial faults (all that match) are
        returned for a batch to apply per entry; a single-channel publish is its channel's only entry."""
        faults = self._faults.take(kind, channels)
        if not faults:
            return faults
        self._store.count("faults_served", len(faults))
        fault = faults[0]
        logger.debug("serving fault %s (%s) to %s %s", fault.id, fault.mode, request.method, request.path)
        if fault.mode == "delay":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), fault.delay_ms / 1000)
            if not self.closing.is_set():
                return []
        if fault.mode in ("drop", "delay"):  # a delay cut short by shutdown ends like a drop
            request.protocol.force_close()
            raise ConnectionDropped
        if fault.mode == "partial":
            if request.path == "/messages":
                return faults
            [channel] = channels
            for partial in faults:
                if partial.selects(channel, 0, 1):
                    raise AblyHttpError(partial.code, partial.status, partial.message)
            return []
        raise AblyHttpError(fault.code, fault.status, fault.message)

    # -- helpers ------------------------------------------------------------------------------------

    @staticmethod
    async def _read_json(request: web.Request) -> Any:
        if request.content_type == "application/x-msgpack":
            raise AblyHttpError(BAD_REQUEST, 400, "the emulator accepts JSON bodies only, not msgpack")
        body = await request.read()
        if len(body) >= MAX_BODY_BYTES:
            raise AblyHttpError(BAD_REQUEST, 400, f"request body of {len(body)} bytes is not under 2 MiB")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise AblyHttpError(INVALID_BODY, 400, f"request body is not valid JSON: {exc}") from exc

    # -- endpoints ----------------------------------------------------------------------------------

    async def publish(self, request: web.Request) -> web.Response:
        """POST /channels/{channel}/messages: one message or an id-linked array, atomically."""
        channel = request.match_info["channel"]
        self._store.count("publish_requests")
        body = await self._read_json(request)
        raw_messages = body if isinstance(body, list) else [body]
        try:
            await self._apply_fault(request, "publish", (channel,))
            validate_channel(channel)
            if not raw_messages:
                raise AblyHttpError(INVALID_BODY, 400, "no messages to publish")
            messages, uid = normalize_unit_for_store(raw_messages, self._config.max_message_size)
            result = self._store.publish(channel, messages, uid)
        except AblyHttpError:
            self._store.count("messages_rejected", len(raw_messages))
            raise
        return json_response({"channel": channel, "messageId": result.message_id}, status=201)

    async def batch_publish(self, request: web.Request) -> web.Response:
        """POST /messages: BatchSpecs, each published atomically per channel, results in request order.

        The hot path of every benchmark (hundreds of one-message BatchSpecs per request): validation is per
        message, but channel names are checked once per request and the store is entered once.
        """
        self._store.count("publish_requests")
        specs, channels = _parse_batch(await self._read_json(request))
        if len(channels) > MAX_BATCH_CHANNELS:
            raise AblyHttpError(
                BAD_REQUEST, 400, f"{len(channels)} channels in one batch; the limit is {MAX_BATCH_CHANNELS}"
            )
        partial = await self._apply_fault(request, "publish", channels)
        response = self._publish_batch(specs, channels, partial)
        if (
            self._config.batch_response == "by_version"
            and _protocol_version(request) >= BATCH_RESULT_MIN_VERSION
        ):
            return _as_batch_results(response, specs)
        return response

    def _publish_batch(
        self, specs: list[tuple[list[str], list[Any]]], channels: set[str], partial: list[Fault]
    ) -> web.Response:
        # Per distinct channel, why it fails every entry (a bad name), checked once.
        channel_errors: dict[str, AblyHttpError] = {}
        for channel in channels:
            try:
                validate_channel(channel)
            except AblyHttpError as exc:
                channel_errors[channel] = exc
        # Partial faults: per (channel, its n-th entry in the request), the error; entries counted as
        # they come (`seen`), every entry of the channel included.
        fault_errors = _fault_errors(specs, partial) if partial else None
        seen: Counter[str] = Counter()
        max_size = self._config.max_message_size
        # One entry per (spec, channel) in request order: its channel, the error known before publishing
        # (None: its unit goes to the store) and how many messages it would have published.
        entries: list[tuple[str, AblyHttpError | None, int]] = []
        units: list[BatchUnit] = []
        try:
            for spec_channels, raw_messages in specs:
                count = len(raw_messages)
                try:
                    if count == 1:
                        message = normalize_for_store(raw_messages[0], max_size)
                        messages, uid = [message], message["id"]
                    else:
                        messages, uid = normalize_unit_for_store(raw_messages, max_size)
                except AblyHttpError as exc:
                    entries.extend((channel, exc, count) for channel in spec_channels)
                    if fault_errors is not None:
                        seen.update(spec_channels)
                    continue
                if len(spec_channels) == 1:  # the store may keep these dicts: no other channel needs them
                    channel = spec_channels[0]
                    error = channel_errors.get(channel) if channel_errors else None
                    if fault_errors is not None:
                        error = _entry_fault(fault_errors, seen, channel, error)
                    entries.append((channel, error, count))
                    if error is None:
                        units.append((channel, messages, uid, True))
                    continue
                for channel in spec_channels:
                    error = channel_errors.get(channel)
                    if fault_errors is not None:
                        error = _entry_fault(fault_errors, seen, channel, error)
                    entries.append((channel, error, count))
                    if error is None:
                        units.append((channel, messages, uid, False))
        except Exception:
            # Not an Ably error but a failure (a 500): the BatchSpecs before this one are published and
            # counted all the same, as when each was published in turn.
            self._publish_entries(entries, units)
            raise
        return self._publish_entries(entries, units)

    def _publish_entries(
        self, entries: list[tuple[str, AblyHttpError | None, int]], units: list[BatchUnit]
    ) -> web.Response:
        """Publish the units, then answer: one result per entry, in order (40020 if any failed)."""
        outcomes = self._store.publish_batch(units) if units else []
        results: list[dict[str, Any]] = []
        failed = False
        rejected = 0
        published = 0
        for channel, error, count in entries:
            if error is None:
                outcome = outcomes[published]
                published += 1
                if isinstance(outcome, str):
                    results.append({"channel": channel, "messageId": outcome})
                    continue
                error = outcome
            failed = True
            rejected += count
            results.append({"channel": channel, "error": error.to_info()})
        if failed:
            self._store.count("messages_rejected", rejected)
            return error_response(
                BATCH_PARTIAL, 400, "Batched response includes errors", extra={"batchResponse": results}
            )
        return json_response(results, status=201)

    async def history(self, request: web.Request) -> web.Response:
        """GET /channels/{channel}/messages: newest first unless direction=forwards; limit ≤ 1000.

        ``from_serial`` (what ably-js sends for ``history({untilAttach: true})``) ends the history at that
        channel serial, the attach point; a longer history is paginated with a ``Link: rel="next"`` header.
        """
        channel = request.match_info["channel"]
        validate_channel(channel)
        query = request.query
        direction = query.get("direction", "backwards")
        if direction not in ("backwards", "forwards"):
            raise AblyHttpError(INVALID_PARAMETER, 400, f"invalid direction {direction!r}")
        limit = _int_param(query, "limit", DEFAULT_HISTORY_LIMIT)
        if not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise AblyHttpError(INVALID_PARAMETER, 400, f"limit must be between 1 and {MAX_HISTORY_LIMIT}")
        start = _int_param(query, "start", None)
        end = _int_param(query, "end", None)
        cursor = _int_param(query, "cursor", None)
        items = self._store.history(channel)
        upto = len(items)
        if "from_serial" in query:
            position = parse_channel_serial(query["from_serial"], self._store.epoch)
            if position is None:
                raise AblyHttpError(
                    INVALID_PARAMETER,
                    400,
                    f"from_serial {query['from_serial']!r} is not a serial of this emulator "
                    "(malformed, or from before a reset)",
                )
            upto = min(position, upto)
        positioned = list(enumerate(items[:upto], 1))
        if start is not None or end is not None:
            lo, hi = start or 0, end if end is not None else 2**63
            positioned = [(p, m) for p, m in positioned if lo <= m["received_at"] <= hi]
        if direction == "backwards":
            positioned.reverse()
            if cursor is not None:
                positioned = [(p, m) for p, m in positioned if p < cursor]
        elif cursor is not None:
            positioned = [(p, m) for p, m in positioned if p > cursor]
        page = positioned[:limit]
        headers = None
        if len(positioned) > limit:
            params = {k: v for k, v in query.items() if k != "cursor"}
            headers = {
                "Link": f'<./messages?{urlencode(params)}>; rel="first", '
                f'<./messages?{urlencode({**params, "cursor": page[-1][0]})}>; rel="next"'
            }
        return json_response([history_view(m) for _, m in page], headers=headers)

    async def time(self, request: web.Request) -> web.Response:
        """GET /time: ``[server time in ms]``."""
        return json_response([time.time_ns() // 1_000_000])


def _envelope(response: web.Response) -> web.Response:
    """``envelope=json``: status, body and headers wrapped in a 200 answer's JSON body.

    ably-js asks for this where it cannot read response headers (XHR in browsers): it takes the ``Link``
    header of a history page from the envelope's ``headers``.
    """
    body = orjson.loads(response.body) if isinstance(response.body, bytes) and response.body else None
    headers = {str(name): value for name, value in response.headers.items()}  # istr keys: orjson wants str
    wrapped = {"statusCode": response.status, "response": body, "headers": headers}
    return json_response(wrapped)


def history_view(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored message as Ably history returns it: absent fields omitted, ``timestamp`` in ms.

    For JSON encoding only: ``extras`` is the stored JSON, embedded as is (an orjson.Fragment).
    """
    view = {key: stored[key] for key in MESSAGE_FIELDS if stored[key] is not None}
    if "extras" in view:
        view["extras"] = orjson.Fragment(view["extras"])
    view["timestamp"] = stored["received_at"]
    return view


def _int_param(query: Any, name: str, default: int | None) -> Any:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise AblyHttpError(INVALID_PARAMETER, 400, f"{name} must be an integer") from exc


def _protocol_version(request: web.Request) -> int:
    """The request's protocol version (X-Ably-Version, or the ``v`` parameter); 0 if not a number."""
    raw = request.headers.get("X-Ably-Version") or request.query.get("v") or ""
    try:
        return int(raw.strip())
    except ValueError:
        return 0


def _as_batch_results(legacy: web.Response, specs: list[tuple[list[str], list[Any]]]) -> web.Response:
    """A batch answer in the protocol-v3 shape: per BatchSpec ``{successCount, failureCount, results}``
    (its entries, one per channel, in order), HTTP 201 whether or not entries failed."""
    assert isinstance(legacy.body, bytes)
    body = orjson.loads(legacy.body)
    entries = body["batchResponse"] if isinstance(body, dict) else body
    grouped: list[dict[str, Any]] = []
    position = 0
    for spec_channels, _ in specs:
        results = entries[position : position + len(spec_channels)]
        position += len(spec_channels)
        failures = sum(1 for result in results if "error" in result)
        grouped.append(
            {"successCount": len(results) - failures, "failureCount": failures, "results": results}
        )
    return json_response(grouped, status=201)


def _fault_errors(
    specs: list[tuple[list[str], list[Any]]], faults: list[Fault]
) -> dict[tuple[str, int], AblyHttpError]:
    """The entries that partial ``faults`` fail: (channel, its n-th entry in the request) → the error of
    the first fault selecting it."""
    totals: Counter[str] = Counter()
    for spec_channels, _ in specs:
        totals.update(spec_channels)
    errors: dict[tuple[str, int], AblyHttpError] = {}
    for channel, total in totals.items():
        for occurrence in range(total):
            for fault in faults:
                if fault.selects(channel, occurrence, total):
                    errors[(channel, occurrence)] = AblyHttpError(fault.code, fault.status, fault.message)
                    break
    return errors


def _entry_fault(
    fault_errors: dict[tuple[str, int], AblyHttpError],
    seen: Counter[str],
    channel: str,
    error: AblyHttpError | None,
) -> AblyHttpError | None:
    """Count the next entry of ``channel``; its error: ``error`` (a bad name) first, else a fault's."""
    occurrence = seen[channel]
    seen[channel] = occurrence + 1
    return error if error is not None else fault_errors.get((channel, occurrence))


def _parse_batch(body: Any) -> tuple[list[tuple[list[str], list[Any]]], set[str]]:
    """Check the shape of a batch body; return (channels, raw messages) per BatchSpec, and the distinct
    channels."""
    raw_specs = body if isinstance(body, list) else [body]
    if not raw_specs:
        raise AblyHttpError(INVALID_BODY, 400, "no BatchSpec in the request")
    specs = []
    distinct: set[str] = set()
    for index, spec in enumerate(raw_specs):
        if not isinstance(spec, dict):
            raise AblyHttpError(INVALID_BODY, 400, f"BatchSpec {index} is not an object")
        channels, messages = spec.get("channels"), spec.get("messages")
        if isinstance(channels, str):
            channels = [channels]
            distinct.add(channels[0])
        elif isinstance(channels, list) and channels and all(isinstance(c, str) for c in channels):
            distinct.update(channels)
        else:
            raise AblyHttpError(INVALID_BODY, 400, f"BatchSpec {index}: bad channels (a name or a list)")
        if isinstance(messages, dict):
            messages = [messages]
        elif not isinstance(messages, list) or not messages:
            raise AblyHttpError(INVALID_BODY, 400, f"BatchSpec {index}: messages must be a message or a list")
        elif len(messages) > MAX_BATCH_MESSAGES:
            raise AblyHttpError(
                BAD_REQUEST,
                400,
                f"BatchSpec {index}: {len(messages)} messages, limit {MAX_BATCH_MESSAGES}",
            )
        specs.append((channels, messages))
    return specs, distinct
