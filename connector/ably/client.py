"""Ably REST client on httpx: batch publish with Ably's retry, fallback-host and error rules.

Why batch publish (`POST /messages`) with ONE BatchSpec per message: each message keeps its own
idempotent `id` (an array in one BatchSpec is deduplicated as a unit), while many channels still share
one HTTP request, and Ably preserves the relative order of BatchSpecs for a channel.

Error handling has exactly two boundaries:
- `classify_error()` turns an Ably error (HTTP status, body, `X-Ably-ErrorCode` header) into one of our
  `AblyError` subclasses, by Ably code and status, never by message text;
- `map_transport_error()` turns every httpx exception into an `AblyError` subclass.

Retry rules (ABLY-CONTRACT.md): 5xx, timeouts and unreachable hosts are retried on fallback hosts (random
order; a fallback that worked is reused for 10 minutes); 429 is retried with a growing delay on the SAME
host; everything else is not retried here. Retries are bounded by `max_retries` and `max_retry_duration`;
the publisher keeps retrying beyond that, because the connector must never drop an event.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import logging
import platform
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import httpx
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)
from tenacity.stop import stop_base

from connector import __version__

if TYPE_CHECKING:
    from connector.config import Settings
from connector.ably.outbound import AblyMessage, OutboundMessage
from connector.errors import (
    AblyAuthError,
    AblyError,
    AblyRateLimitError,
    AblyRejectedError,
    AblyRetryableError,
    ConfigError,
)

__all__ = [
    "ABLY_PROTOCOL_VERSION",
    "DEFAULT_FALLBACK_HOSTS",
    "DEFAULT_REST_URL",
    "MAX_BODY_BYTES",
    "MAX_CHANNELS_PER_REQUEST",
    "MAX_MESSAGES_PER_SPEC",
    "AblyRestClient",
    "classify_error",
    "encode_spec",
    "map_transport_error",
]

logger = logging.getLogger(__name__)

DEFAULT_REST_URL: Final = "https://main.realtime.ably.net"
# Ably's published fallback hosts for the default endpoint; a custom endpoint has none unless configured.
DEFAULT_FALLBACK_HOSTS: Final = tuple(f"main.{x}.fallback.ably-realtime.com" for x in "abcde")
ABLY_PROTOCOL_VERSION: Final = "6"

# Batch-publish request limits (ABLY-CONTRACT.md). The body limit is "< 2 MiB", so the largest allowed
# body is one byte less.
MAX_CHANNELS_PER_REQUEST: Final = 100
MAX_MESSAGES_PER_SPEC: Final = 1000
MAX_BODY_BYTES: Final = 2 * 1024 * 1024 - 1

# A fallback host that answered is preferred for this long (Ably client spec), then the primary is retried.
FALLBACK_RETENTION_S: Final = 600.0
# 429 backoff on the same host: first delay, growth factor, and cap (a Retry-After header wins if smaller
# than the cap). Rate limits are per second, so starting at 1 s lets the window roll over.
RATE_LIMIT_BACKOFF_BASE_S: Final = 1.0
RATE_LIMIT_BACKOFF_CAP_S: Final = 10.0
# Retry delay for a 5xx/timeout when no untried fallback host is left: short, the publisher backs off more.
HOST_RETRY_BACKOFF_BASE_S: Final = 0.5
HOST_RETRY_BACKOFF_CAP_S: Final = 4.0

# Ably codes used when the failure has no Ably body: a transport timeout, an unreachable host, and a
# response that is not Ably's (e.g. a proxy's HTML page).
TIMEOUT_CODE: Final = 50003
UNREACHABLE_CODE: Final = 80000
BATCH_PARTIAL_CODE: Final = 40020
CAPABILITY_DENIED_CODE: Final = 40160
# Ably code ranges (an Ably code is the HTTP status times 100 plus a detail).
_AUTH_CODES: Final = range(40100, 40400)  # 401xx unauthorised, 403xx forbidden
_RATE_CODES: Final = range(42900, 43000)
_SERVER_CODES: Final = range(50000, 60000)

Outcome = AblyError | None


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


# ---------------------------------------------------------------------------------------------------------
# The two error boundaries


def classify_error(status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> AblyError:
    """The ONE place an Ably failure becomes an `AblyError` subclass (by code and status, never text).

    `body` is the decoded JSON body (or None); Ably's error may also be given only in headers.
    """
    err = body.get("error") if isinstance(body, Mapping) else None
    err = err if isinstance(err, Mapping) else {}
    headers = headers or {}
    code = _as_int(err.get("code")) or _as_int(headers.get("x-ably-errorcode")) or status * 100
    http_status = _as_int(err.get("statusCode")) or status
    message = str(err.get("message") or headers.get("x-ably-errormessage") or f"HTTP {status} from Ably")
    return _error_class(code, http_status)(message, ably_code=code, status=http_status)


def _error_class(code: int, status: int) -> type[AblyError]:
    if code == CAPABILITY_DENIED_CODE:
        # The key is valid but may not publish on this channel: permanent for that channel only.
        return AblyRejectedError
    if code in _AUTH_CODES or status in (401, 403):
        return AblyAuthError
    if code in _RATE_CODES or status == 429:
        return AblyRateLimitError
    if code in _SERVER_CODES or status >= 500 or status < 400:
        # 5xx, and anything that is not a 4xx answer (a 3xx from a proxy, a 1xx) is not a verdict on the
        # message: retry it.
        return AblyRetryableError
    return AblyRejectedError


def _as_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


# Every httpx exception, most specific first; `map_transport_error` walks this table.
_TRANSPORT_ERRORS: Final[tuple[tuple[type[Exception], type[AblyError], int, str], ...]] = (
    (httpx.TimeoutException, AblyRetryableError, TIMEOUT_CODE, "request to Ably timed out"),
    (httpx.UnsupportedProtocol, AblyError, UNREACHABLE_CODE, "unsupported URL scheme for Ably"),
    (httpx.TransportError, AblyRetryableError, UNREACHABLE_CODE, "cannot reach Ably"),
    (httpx.DecodingError, AblyRetryableError, 50000, "undecodable response from Ably"),
    (httpx.TooManyRedirects, AblyRetryableError, 50000, "too many redirects from Ably"),
    (httpx.HTTPStatusError, AblyRetryableError, 50000, "unexpected HTTP status from Ably"),
    (httpx.HTTPError, AblyRetryableError, 50000, "HTTP error talking to Ably"),
    # Programming or configuration errors: not retryable, so they surface as fatal (plain AblyError).
    (httpx.InvalidURL, AblyError, UNREACHABLE_CODE, "invalid Ably URL"),
    (httpx.CookieConflict, AblyError, 0, "cookie conflict in the Ably client"),
    (httpx.StreamError, AblyError, 0, "HTTP stream misuse in the Ably client"),
)


def map_transport_error(exc: Exception, host: str) -> AblyError:
    """Map an httpx exception to our tree (the caller raises it `from exc`)."""
    for exc_type, err_type, code, text in _TRANSPORT_ERRORS:
        if isinstance(exc, exc_type):
            # The exception's own text can contain the URL but never the key (it is sent in a header only).
            return err_type(f"{text} ({host}): {type(exc).__name__}: {exc}", ably_code=code, status=0)
    return AblyError(f"unexpected error talking to Ably ({host}): {type(exc).__name__}", ably_code=0)


_HTTPX_ERRORS: Final = tuple(t for t, *_ in _TRANSPORT_ERRORS)


@contextlib.contextmanager
def _mapped_errors(host: str) -> Iterator[None]:
    try:
        yield
    except _HTTPX_ERRORS as exc:
        raise map_transport_error(exc, host) from exc


# ---------------------------------------------------------------------------------------------------------
# Encoding


def encode_spec(msg: OutboundMessage) -> bytes:
    """One BatchSpec as JSON bytes (encoded once, then cached); its length is its cost in a request body."""
    if msg.spec is None:
        # Copied to an exact-size object: orjson's result keeps its whole working buffer (16 KiB for a
        # 1.5 KB spec), and the publisher holds one spec per in-flight message (10k: 160 MB against 15 MB).
        msg.spec = bytes(memoryview(orjson.dumps({"channels": msg.channel, "messages": msg.message})))
    return msg.spec


def _chunks(specs: Sequence[tuple[str, bytes]]) -> Iterator[tuple[int, int]]:
    """Split encoded specs into [start, end) ranges that respect the channel and body limits."""
    start, size, channels = 0, 2, set[str]()  # 2 = the enclosing "[" and "]"
    for i, (channel, raw) in enumerate(specs):
        extra = len(raw) + (1 if i > start else 0)  # a comma between specs
        new_channel = channel not in channels
        if i > start and (
            size + extra > MAX_BODY_BYTES or (new_channel and len(channels) >= MAX_CHANNELS_PER_REQUEST)
        ):
            yield start, i
            start, size, channels = i, 2, set()
            extra = len(raw)
        size += extra
        channels.add(channel)
    if start < len(specs):
        yield start, len(specs)


# ---------------------------------------------------------------------------------------------------------
# Hosts


class _HostPlan:
    """Which host each attempt of one request goes to: the preferred host, then fallbacks in random order."""

    def __init__(self, first: str, primary: str, fallbacks: Sequence[str], rng: random.Random) -> None:
        rest = [h for h in fallbacks if h != first]
        rng.shuffle(rest)
        self.hosts = [first] + ([primary] if first != primary else []) + rest
        self.index = 0
        self.moved = False  # did the last failure move us to an untried host?
        self.retry_after = 0.0  # the last 429's Retry-After, in seconds

    @property
    def current(self) -> str:
        return self.hosts[self.index]

    def has_untried(self) -> bool:
        return self.index + 1 < len(self.hosts)

    def advance(self) -> None:
        """Move to the next untried host; stay on the last one when all were tried."""
        self.moved = self.has_untried()
        if self.moved:
            self.index += 1


def _host_url(entry: str, default_scheme: str) -> str:
    """A fallback entry is a bare host (`host` or `host:port`) or a full URL; returns `scheme://host[:port]`."""
    url = httpx.URL(entry if "://" in entry else f"{default_scheme}://{entry}")
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError([f"invalid Ably host {entry!r}: expected host[:port] or http(s)://host[:port]"])
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}"


def _agent() -> str:
    return f"livesync-connector/{__version__} python/{platform.python_version()}"


# ---------------------------------------------------------------------------------------------------------
# The client


class AblyRestClient:
    """Ably REST over one pooled httpx client. Use as `async with AblyRestClient(...) as client:`."""

    def __init__(
        self,
        *,
        api_key: str,
        rest_url: str = DEFAULT_REST_URL,
        fallback_hosts: Sequence[str] | None = None,
        request_timeout: float = 10.0,
        connect_timeout: float = 4.0,
        max_retry_duration: float = 15.0,
        max_retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        key_name, sep, secret = api_key.partition(":")
        if not sep or not key_name or not secret:
            # Never echo the key: it may be a secret pasted in the wrong variable.
            raise ConfigError(["ABLY_API_KEY must look like 'appId.keyId:secret'"])
        self._key_name = key_name
        self._secret = secret
        self._primary = _host_url(rest_url.rstrip("/"), "https")
        scheme = httpx.URL(self._primary).scheme
        if fallback_hosts is None:
            fallback_hosts = DEFAULT_FALLBACK_HOSTS if self._primary == DEFAULT_REST_URL else ()
        self._fallbacks = [_host_url(h, scheme) for h in fallback_hosts]
        self._max_retries = max_retries
        self._max_retry_duration = max_retry_duration
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock  # monotonic seconds; a test seam for the fallback retention period
        self._preferred: str | None = None
        self._preferred_until = 0.0
        self._state = _State.OPEN
        self._last_success_at: float | None = None
        self._last_error: AblyError | None = None
        self._last_outage_at: float | None = None  # last 5xx / 429 / transport / auth failure
        # Called before every publish attempt (retries and fallback hosts included); raising stops the
        # attempt and propagates. The worker's lease check: a leader past its deadline sends nothing.
        self.before_publish: Callable[[], None] | None = None
        auth = base64.b64encode(api_key.encode()).decode()
        self._http = httpx.AsyncClient(
            headers={
                "Authorization": f"Basic {auth}",
                "X-Ably-Version": ABLY_PROTOCOL_VERSION,
                "Ably-Agent": _agent(),
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            timeout=httpx.Timeout(request_timeout, connect=connect_timeout),
            transport=transport,
            http2=transport is None,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"AblyRestClient(key={self._key_name}:***, host={self._primary})"

    @property
    def last_success_at(self) -> float | None:
        """Monotonic time (the client's clock) of the last answer from Ably that was not a failure."""
        return self._last_success_at

    @property
    def last_error(self) -> AblyError | None:
        """The most recent failed attempt (kept after later successes; compare with last_success_at)."""
        return self._last_error

    @property
    def answering(self) -> bool:
        """True unless the latest attempt failed for a server, network, rate or auth reason (for /readyz)."""
        if self._last_outage_at is None:
            return True
        return self._last_success_at is not None and self._last_success_at >= self._last_outage_at

    @property
    def primary_host(self) -> str:
        return self._primary

    @property
    def fallback_hosts(self) -> list[str]:
        return list(self._fallbacks)

    @property
    def active_host(self) -> str:
        """The host the next request goes to first (a recently working fallback, or the primary)."""
        if self._preferred is not None and self._clock() < self._preferred_until:
            return self._preferred
        return self._primary

    # -- lifecycle --------------------------------------------------------------------------------------

    async def __aenter__(self) -> AblyRestClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool; closing twice is harmless."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        await self._http.aclose()

    # -- public API -------------------------------------------------------------------------------------

    async def publish_batch(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        """Publish each message as its own BatchSpec; per-message outcome in input order (None = accepted).

        Raises the whole-request error (after retries) when the first request fails as a whole;
        AblyAuthError is always raised. When the limits force several requests (the publisher normally
        prevents that), a later request's whole-request failure becomes the outcome of its entries.
        """
        if not messages:
            return []
        specs = [(m.channel, encode_spec(m)) for m in messages]
        outcomes: list[Outcome] = []
        for start, end in _chunks(specs):
            part = specs[start:end]
            if len(part) == 1 and len(part[0][1]) + 2 > MAX_BODY_BYTES:
                outcomes.append(
                    AblyRejectedError("message too large for a request", ably_code=40009, status=413)
                )
                continue
            body = b"[" + b",".join(raw for _, raw in part) + b"]"
            try:
                outcomes.extend(await self._post_batch(body, len(part)))
            except AblyAuthError:
                raise
            except AblyError as err:
                if start == 0:
                    raise
                outcomes.extend([err] * len(part))
        return outcomes

    async def publish(self, channel: str, message: AblyMessage) -> None:
        """Publish one message on one channel (`POST /channels/{channel}/messages`)."""
        path = f"/channels/{urllib.parse.quote(channel, safe='')}/messages"
        await self._request("POST", path, content=orjson.dumps(message))

    async def check_credentials(self, channel: str = "livesync-connector-check") -> None:
        """Verify the key without publishing: an authenticated history read of one message.

        A key without the `history` capability still authenticated (Ably answered 40160), which is enough.
        """
        path = f"/channels/{urllib.parse.quote(channel, safe='')}/messages"
        try:
            await self._request("GET", path, params={"limit": "1"})
        except AblyRejectedError as err:
            if err.ably_code != CAPABILITY_DENIED_CODE:
                raise
            logger.info("Ably key %s authenticated (no history capability on %s)", self._key_name, channel)

    async def time(self) -> int:
        """Ably server time in milliseconds since the epoch."""
        body = await self._request("GET", "/time")
        if isinstance(body, list) and body and isinstance(body[0], int):
            return body[0]
        raise AblyRetryableError("unexpected /time response from Ably", ably_code=50000, status=200)

    # -- internals --------------------------------------------------------------------------------------

    async def _post_batch(self, body: bytes, count: int) -> list[Outcome]:
        try:
            raw = await self._request("POST", "/messages", content=body, raw=True)
        except _BatchPartial as partial:
            return _batch_outcomes(partial.body, count)
        # The common answer, every message accepted, is read without parsing it: an entry that failed has
        # an "error" key, and that text cannot appear unescaped inside a JSON string.
        if b'"error":' not in raw:
            return [None] * count
        result = _loads(raw)
        if isinstance(result, list) and len(result) == count:
            return [_entry_outcome(item) for item in result]
        return [None] * count

    async def _request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        raw: bool = False,
    ) -> Any:
        """One logical request with Ably's retry policy; returns the decoded JSON body of a 2xx (its bytes
        with `raw`)."""
        if self._state is _State.CLOSED:
            raise RuntimeError("AblyRestClient is closed")
        plan = _HostPlan(self.active_host, self._primary, self._fallbacks, self._rng)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((AblyRetryableError, AblyRateLimitError)),
            stop=stop_after_attempt(self._max_retries + 1) | _RetryBudget(self._max_retry_duration),
            wait=lambda state: self._retry_delay(state, plan),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(plan, method, path, content, params, raw)
        raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover

    async def _attempt(
        self,
        plan: _HostPlan,
        method: str,
        path: str,
        content: bytes | None,
        params: Mapping[str, str] | None,
        raw: bool,
    ) -> Any:
        host = plan.current
        if method == "POST" and self.before_publish is not None:
            self.before_publish()
        try:
            with _mapped_errors(host):
                response = await self._http.request(method, host + path, content=content, params=params)
            if response.is_success:
                self._note_success(host)
                return response.content if raw else _decode(response)
            body = _decode(response)
            if (
                response.status_code == 400
                and _code_of(body) == BATCH_PARTIAL_CODE
                and "batchResponse" in body
            ):
                self._note_success(host)  # Ably answered: the host works
                raise _BatchPartial(body)
            err = classify_error(response.status_code, body, response.headers)
            plan.retry_after = float(_as_int(response.headers.get("retry-after")))
            raise err
        except AblyError as err:
            self._last_error = err
            if not isinstance(err, AblyRejectedError):
                self._last_outage_at = self._clock()
            if isinstance(err, AblyRetryableError):
                # Only server-side/transport failures move to another host; 429 and 4xx never do.
                if host == self._preferred:
                    self._preferred = None
                plan.advance()
            if isinstance(err, AblyAuthError):
                logger.error("Ably refused the key %s: %s", self._key_name, err)
            raise

    def _note_success(self, host: str) -> None:
        self._last_success_at = now = self._clock()
        if host != self._primary and host != self._preferred:
            logger.info("using Ably fallback host %s", host)
            self._preferred, self._preferred_until = host, now + FALLBACK_RETENTION_S
        elif host == self._primary:
            self._preferred = None

    def _retry_delay(self, state: RetryCallState, plan: _HostPlan) -> float:
        exc = state.outcome.exception() if state.outcome else None
        n = state.attempt_number
        if isinstance(exc, AblyRateLimitError):
            delay = min(RATE_LIMIT_BACKOFF_CAP_S, RATE_LIMIT_BACKOFF_BASE_S * 2.0 ** (n - 1))
            return min(RATE_LIMIT_BACKOFF_CAP_S, max(delay, plan.retry_after))
        if plan.moved:
            return 0.0  # an untried host: try it at once
        return min(HOST_RETRY_BACKOFF_CAP_S, HOST_RETRY_BACKOFF_BASE_S * 2.0 ** (n - 1))

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "Ably request failed (attempt %d), retrying in %.2fs: %s", state.attempt_number, delay, exc
        )


class _RetryBudget(stop_base):
    """Stop before a delay would overrun the retry budget. Time spent is the wall clock or, with an
    injected sleep that lets no real time pass (tests), the sum of the delays asked for."""

    def __init__(self, max_duration: float) -> None:
        self.max_duration = max_duration

    def __call__(self, retry_state: RetryCallState) -> bool:
        spent = max(retry_state.seconds_since_start or 0.0, retry_state.idle_for)
        return spent + retry_state.upcoming_sleep > self.max_duration


class _BatchPartial(Exception):
    """Internal: a 40020 answer, which is a per-entry result rather than a request failure."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        super().__init__("batch partial failure")
        self.body = body


def _decode(response: httpx.Response) -> Any:
    return _loads(response.content)


def _loads(content: bytes) -> Any:
    if not content:
        return None
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None


def _code_of(body: Any) -> int:
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        return _as_int(body["error"].get("code"))
    return 0


def _entry_outcome(item: Any) -> Outcome:
    """Outcome of one batchResponse entry: `{channel, messageId}`, `{channel, error}`, or a BatchResult
    (`{successCount, failureCount, results: [...]}`, the shape newer protocol versions use)."""
    if not isinstance(item, Mapping):
        return AblyRetryableError("malformed batch response entry", ably_code=50000, status=0)
    if isinstance(item.get("error"), Mapping):
        err = item["error"]
        return classify_error(_as_int(err.get("statusCode")) or 400, item)
    results = item.get("results")
    if isinstance(results, list):
        for result in results:
            outcome = _entry_outcome(result)
            if outcome is not None:
                return outcome
    return None


def _batch_outcomes(body: Mapping[str, Any], count: int) -> list[Outcome]:
    entries = body.get("batchResponse")
    entries = entries if isinstance(entries, list) else []
    outcomes: list[Outcome] = [_entry_outcome(item) for item in entries[:count]]
    missing = AblyRetryableError("batch response has no entry for this message", ably_code=50000, status=400)
    outcomes.extend([missing] * (count - len(outcomes)))
    return outcomes


def ably_from(settings: Settings) -> AblyRestClient:
    """The Ably REST client the settings describe (used by the runtime and by `check`)."""
    return AblyRestClient(
        api_key=settings.ably_api_key.get_secret_value(),
        rest_url=settings.ably_rest_url,
        fallback_hosts=settings.ably_fallback_hosts,
        request_timeout=settings.ably_request_timeout_s,
    )
