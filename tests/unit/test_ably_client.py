"""AblyRestClient against a fake Ably behind httpx.MockTransport: wire format, errors, retries, hosts."""

from __future__ import annotations

import logging
import platform
import random
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

import connector.ably.client as ably_module
from connector import __version__
from connector.ably.client import (
    DEFAULT_FALLBACK_HOSTS,
    FALLBACK_RETENTION_S,
    MAX_BODY_BYTES,
    AblyRestClient,
    classify_error,
    map_transport_error,
)
from connector.errors import (
    AblyAuthError,
    AblyError,
    AblyRateLimitError,
    AblyRejectedError,
    AblyRetryableError,
    ConfigError,
)
from tests.unit.ably_fakes import (
    API_KEY,
    KEY_SECRET,
    FakeAbly,
    SleepRecorder,
    basic_auth,
    error_response,
    make_message,
)

PRIMARY = "http://ably.test"
FALLBACKS = ["fb1.test", "fb2.test", "fb3.test"]
FALLBACK_URLS = {f"http://{h}" for h in FALLBACKS}


@pytest.fixture
def fake() -> FakeAbly:
    return FakeAbly()


@pytest.fixture
def sleep() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
async def client(fake: FakeAbly, sleep: SleepRecorder) -> AsyncIterator[AblyRestClient]:
    async with AblyRestClient(
        api_key=API_KEY, rest_url=PRIMARY, fallback_hosts=FALLBACKS, transport=fake.transport, sleep=sleep
    ) as c:
        yield c


def always(response: Callable[[], httpx.Response]) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _request: response()


def raising(exc: Exception) -> Callable[[httpx.Request], httpx.Response]:
    def fault(_request: httpx.Request) -> httpx.Response:
        raise exc

    return fault


# -- wire format ---------------------------------------------------------------------------------------------


async def test_every_request_carries_basic_auth_protocol_version_and_agent(
    client: AblyRestClient, fake: FakeAbly
) -> None:
    await client.publish_batch([make_message(0, "a")])
    await client.time()
    await client.check_credentials()
    assert len(fake.requests) == 3
    for rec in fake.requests:
        assert rec.headers["authorization"] == basic_auth(API_KEY)
        assert rec.headers["x-ably-version"] == "6"
        assert (
            rec.headers["ably-agent"]
            == f"livesync-connector/{__version__} python/{platform.python_version()}"
        )
        assert rec.headers["accept"] == "application/json"
    assert fake.requests[0].headers["content-type"] == "application/json"


async def test_batch_publish_sends_one_batchspec_per_message_keeping_ids(
    client: AblyRestClient, fake: FakeAbly
) -> None:
    msgs = [make_message(0, "a"), make_message(1, "b"), make_message(2, "a")]
    outcomes = await client.publish_batch(msgs)
    assert outcomes == [None, None, None]
    (rec,) = fake.requests
    assert (rec.method, rec.path) == ("POST", "/messages")
    assert rec.body == [{"channels": m.channel, "messages": dict(m.message)} for m in msgs]
    assert fake.delivered == {"a": ["id-00000000", "id-00000002"], "b": ["id-00000001"]}
    assert client.last_success_at is not None


async def test_single_channel_publish_quotes_the_channel(client: AblyRestClient, fake: FakeAbly) -> None:
    await client.publish("orders:eu/1", {"id": "x", "name": "n", "data": "{}"})
    assert fake.requests[0].path == "/channels/orders:eu/1/messages"
    assert fake.requests[0].body == {"id": "x", "name": "n", "data": "{}"}


async def test_time_returns_server_milliseconds(client: AblyRestClient) -> None:
    assert await client.time() == 1_700_000_000_000


async def test_empty_batch_sends_nothing(client: AblyRestClient, fake: FakeAbly) -> None:
    assert await client.publish_batch([]) == []
    assert fake.requests == []


# -- retries and fallback hosts ----------------------------------------------------------------------------


async def test_5xx_then_success_on_a_custom_host_without_fallbacks(
    fake: FakeAbly, sleep: SleepRecorder
) -> None:
    fake.fail_next(PRIMARY, always(lambda: error_response(50000, 500)))
    async with AblyRestClient(api_key=API_KEY, rest_url=PRIMARY, transport=fake.transport, sleep=sleep) as c:
        assert c.fallback_hosts == []
        assert await c.publish_batch([make_message(0, "a")]) == [None]
    assert [r.host for r in fake.requests] == [PRIMARY, PRIMARY]
    assert len(sleep.delays) == 1 and sleep.delays[0] > 0
    assert fake.delivered == {"a": ["id-00000000"]}


@pytest.mark.parametrize(
    "fault",
    [
        always(lambda: error_response(50000, 500)),
        always(lambda: error_response(50320, 503)),
        always(lambda: httpx.Response(504, text="<html>gateway timeout</html>")),
        raising(httpx.ReadTimeout("timed out")),
        raising(httpx.ConnectTimeout("timed out")),
        raising(httpx.ConnectError("name or service not known")),
    ],
    ids=["500", "503", "504-html", "read-timeout", "connect-timeout", "connect-error"],
)
async def test_fallback_host_after_server_error_timeout_or_unreachable_and_reused(
    client: AblyRestClient,
    fake: FakeAbly,
    sleep: SleepRecorder,
    fault: Callable[[httpx.Request], httpx.Response],
) -> None:
    fake.fail_next(PRIMARY, fault)
    assert await client.publish_batch([make_message(0, "a")]) == [None]
    first, second = fake.requests
    assert first.host == PRIMARY
    assert second.host in FALLBACK_URLS
    assert sleep.delays == [0.0]  # an untried fallback is tried at once
    # The fallback that worked is reused by the next requests.
    await client.publish_batch([make_message(1, "a")])
    await client.time()
    assert [r.host for r in fake.requests[2:]] == [second.host, second.host]


async def test_working_fallback_is_given_up_after_ten_minutes(fake: FakeAbly, sleep: SleepRecorder) -> None:
    now = [1000.0]
    async with AblyRestClient(
        api_key=API_KEY,
        rest_url=PRIMARY,
        fallback_hosts=FALLBACKS,
        transport=fake.transport,
        sleep=sleep,
        clock=lambda: now[0],
    ) as client:
        fake.fail_next(PRIMARY, always(lambda: error_response(50000, 500)))
        await client.publish_batch([make_message(0, "a")])
        fallback = fake.requests[-1].host
        now[0] += FALLBACK_RETENTION_S - 1
        assert client.active_host == fallback
        now[0] += 2
        assert client.active_host == PRIMARY
        await client.publish_batch([make_message(1, "a")])
        assert fake.requests[-1].host == PRIMARY


async def test_failing_preferred_fallback_goes_back_to_other_hosts(
    client: AblyRestClient, fake: FakeAbly
) -> None:
    fake.fail_next(PRIMARY, always(lambda: error_response(50000, 500)))
    await client.publish_batch([make_message(0, "a")])
    fallback = fake.requests[-1].host
    fake.fail_next(fallback, always(lambda: error_response(50300, 503)))
    await client.publish_batch([make_message(1, "a")])
    hosts = [r.host for r in fake.requests[2:]]
    assert hosts == [fallback, PRIMARY]
    assert client.active_host == PRIMARY


async def test_fallbacks_are_tried_in_random_order(fake: FakeAbly, sleep: SleepRecorder) -> None:
    first_fallbacks = set()
    for seed in range(30):
        fake.fail_next(PRIMARY, always(lambda: error_response(50000, 500)))
        async with AblyRestClient(
            api_key=API_KEY,
            rest_url=PRIMARY,
            fallback_hosts=FALLBACKS,
            transport=fake.transport,
            sleep=sleep,
            rng=random.Random(seed),
        ) as c:
            await c.time()
        first_fallbacks.add(fake.requests[-1].host)
    assert first_fallbacks == FALLBACK_URLS


async def test_rate_limit_backs_off_with_growing_delay_on_the_same_host(
    client: AblyRestClient, fake: FakeAbly, sleep: SleepRecorder
) -> None:
    fake.fail_next(PRIMARY, *[always(lambda: error_response(42910, 429, "rate limit"))] * 3)
    assert await client.publish_batch([make_message(0, "a")]) == [None]
    assert [r.host for r in fake.requests] == [PRIMARY] * 4
    assert len(sleep.delays) == 3
    assert sleep.delays[0] > 0
    assert sleep.delays == sorted(sleep.delays) and sleep.delays[0] < sleep.delays[-1]


async def test_rate_limit_honours_retry_after(
    client: AblyRestClient, fake: FakeAbly, sleep: SleepRecorder
) -> None:
    fake.fail_next(PRIMARY, always(lambda: error_response(42918, 429, "api rate", **{"Retry-After": "7"})))
    await client.time()
    assert sleep.delays == [7.0]


async def test_rate_limit_exhausted_raises_rate_limit_error(
    client: AblyRestClient, fake: FakeAbly, sleep: SleepRecorder
) -> None:
    fake.fail_next(PRIMARY, *[always(lambda: error_response(42913, 429, "channel rate"))] * 10)
    with pytest.raises(AblyRateLimitError) as info:
        await client.publish_batch([make_message(0, "a")])
    assert info.value.ably_code == 42913
    assert len(fake.requests) == 4  # first try + max_retries
    assert {r.host for r in fake.requests} == {PRIMARY}


@pytest.mark.parametrize("code,status", [(40013, 400), (40009, 413), (40000, 400)])
async def test_whole_request_4xx_is_rejected_without_retry_or_fallback(
    client: AblyRestClient, fake: FakeAbly, sleep: SleepRecorder, code: int, status: int
) -> None:
    fake.fail_next(PRIMARY, always(lambda: error_response(code, status)))
    with pytest.raises(AblyRejectedError) as info:
        await client.publish_batch([make_message(0, "a")])
    assert (info.value.ably_code, info.value.status) == (code, status)
    assert len(fake.requests) == 1 and sleep.delays == []


async def test_retries_are_bounded_then_the_last_error_is_raised(
    client: AblyRestClient, fake: FakeAbly, sleep: SleepRecorder
) -> None:
    for host in [PRIMARY, *FALLBACK_URLS]:
        fake.fail_next(host, *[always(lambda: error_response(50000, 500))] * 5)
    with pytest.raises(AblyRetryableError) as info:
        await client.publish_batch([make_message(0, "a")])
    assert info.value.ably_code == 50000
    assert len(fake.requests) == 4
    assert len({r.host for r in fake.requests}) == 4  # primary, then each fallback once


async def test_retry_duration_bounds_retries(fake: FakeAbly, sleep: SleepRecorder) -> None:
    fake.fail_next(PRIMARY, *[always(lambda: error_response(42910, 429))] * 10)
    async with AblyRestClient(
        api_key=API_KEY,
        rest_url=PRIMARY,
        transport=fake.transport,
        sleep=sleep,
        max_retry_duration=2.5,
        max_retries=9,
    ) as c:
        with pytest.raises(AblyRateLimitError):
            await c.time()
    # Delays 1 + 2 fit in 2.5 s only partly: the next delay would overshoot, so it stops first.
    assert sum(sleep.delays) <= 2.5
    assert len(fake.requests) == len(sleep.delays) + 1 < 10


# -- auth ----------------------------------------------------------------------------------------------------


async def test_auth_failure_is_fatal_at_once_with_a_clear_message_and_no_secret(
    client: AblyRestClient, fake: FakeAbly, sleep: SleepRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.fail_next(PRIMARY, always(lambda: error_response(40101, 401, "Invalid credentials")))
    with pytest.raises(AblyAuthError) as info:
        await client.publish_batch([make_message(0, "a")])
    assert info.value.ably_code == 40101
    assert "Invalid credentials" in str(info.value) and "40101" in str(info.value)
    assert len(fake.requests) == 1 and sleep.delays == []
    assert KEY_SECRET not in str(info.value)
    assert KEY_SECRET not in repr(client)
    assert KEY_SECRET not in caplog.text
    assert "appid.keyid" in caplog.text  # the key NAME identifies which key failed


async def test_auth_error_is_raised_even_from_a_later_split_request(
    client: AblyRestClient, fake: FakeAbly
) -> None:
    msgs = [make_message(i, f"ch{i}") for i in range(150)]
    fake.fail_next(PRIMARY, lambda _r: None, always(lambda: error_response(40101, 401)))
    with pytest.raises(AblyAuthError):
        await client.publish_batch(msgs)


async def test_check_credentials(client: AblyRestClient, fake: FakeAbly) -> None:
    await client.check_credentials()
    rec = fake.requests[-1]
    assert (rec.method, rec.path, rec.query) == (
        "GET",
        "/channels/livesync-connector-check/messages",
        "limit=1",
    )
    assert fake.delivered == {}  # nothing was published
    # A key without history capability still authenticated.
    fake.fail_next(PRIMARY, always(lambda: error_response(40160, 401, "capability")))
    await client.check_credentials()
    fake.fail_next(PRIMARY, always(lambda: error_response(40101, 401)))
    with pytest.raises(AblyAuthError):
        await client.check_credentials()
    fake.fail_next(PRIMARY, always(lambda: error_response(40300, 403, "forbidden")))
    with pytest.raises(AblyAuthError):
        await client.check_credentials()


def test_malformed_key_is_a_config_error_that_does_not_echo_it() -> None:
    with pytest.raises(ConfigError) as info:
        AblyRestClient(api_key="justasecretwithoutcolon")
    assert "justasecretwithoutcolon" not in str(info.value)


async def test_default_url_gets_ablys_fallbacks_custom_url_gets_none() -> None:
    async with AblyRestClient(api_key=API_KEY) as default:
        assert default.fallback_hosts == [f"https://{h}" for h in DEFAULT_FALLBACK_HOSTS]
    async with AblyRestClient(api_key=API_KEY, rest_url="http://localhost:8081/") as custom:
        assert custom.primary_host == "http://localhost:8081"
        assert custom.fallback_hosts == []
    async with AblyRestClient(
        api_key=API_KEY, rest_url="http://localhost:8081", fallback_hosts=["localhost:8082"]
    ) as c:
        assert c.fallback_hosts == ["http://localhost:8082"]


def test_invalid_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        AblyRestClient(api_key=API_KEY, rest_url="ftp://example.com")


# -- 40020 partial failure -----------------------------------------------------------------------------------


async def test_partial_failure_returns_one_outcome_per_message(
    client: AblyRestClient, fake: FakeAbly
) -> None:
    fake.sticky_channel_failures = False
    errors = {
        "b": {"code": 42913, "statusCode": 429, "message": "channel rate"},
        "c": {"code": 40010, "statusCode": 400, "message": "bad channel"},
        "d": {"code": 50000, "statusCode": 500, "message": "internal"},
        "e": {"code": 40160, "statusCode": 401, "message": "capability"},
    }
    fake.entry_fault = lambda channel, _msg: errors.get(channel)
    msgs = [make_message(i, ch) for i, ch in enumerate("abcdea")]
    outcomes = await client.publish_batch(msgs)
    assert outcomes[0] is None and outcomes[5] is None
    assert isinstance(outcomes[1], AblyRateLimitError) and outcomes[1].ably_code == 42913
    assert isinstance(outcomes[2], AblyRejectedError) and outcomes[2].ably_code == 40010
    assert isinstance(outcomes[3], AblyRetryableError)
    assert isinstance(outcomes[4], AblyRejectedError) and outcomes[4].ably_code == 40160
    assert len(fake.requests) == 1  # a partial failure is an answer, not retried by the client


BATCH_RESULT_PARTIAL = {
    "error": {"code": 40020, "statusCode": 400, "message": "Batched response includes errors"},
    "batchResponse": [
        {"successCount": 1, "failureCount": 0, "results": [{"channel": "a", "messageId": "m"}]},
        {"successCount": 0, "failureCount": 1, "results": [{"channel": "b", "error": {"code": 40010}}]},
    ],
}
ERROR_ENTRY_IN_2XX = [
    {"channel": "a", "messageId": "m"},
    {"channel": "b", "error": {"code": 40010, "statusCode": 400}},
]


@pytest.mark.parametrize(
    ("status", "body"),
    [(400, BATCH_RESULT_PARTIAL), (201, ERROR_ENTRY_IN_2XX)],
    ids=["batch-result-shape-of-newer-protocols", "error-entry-in-a-2xx-reply"],
)
async def test_a_per_entry_error_is_that_messages_outcome(
    client: AblyRestClient, fake: FakeAbly, status: int, body: object
) -> None:
    """An all-accepted 2xx reply is read without parsing; one with an error entry, entry by entry."""
    fake.fail_next(PRIMARY, always(lambda: httpx.Response(status, json=body)))
    outcomes = await client.publish_batch([make_message(0, "a"), make_message(1, "b")])
    assert outcomes[0] is None
    assert isinstance(outcomes[1], AblyRejectedError) and outcomes[1].ably_code == 40010


async def test_short_batch_response_marks_missing_entries_retryable(
    client: AblyRestClient, fake: FakeAbly
) -> None:
    body = {
        "error": {"code": 40020, "statusCode": 400},
        "batchResponse": [{"channel": "a", "messageId": "m"}],
    }
    fake.fail_next(PRIMARY, always(lambda: httpx.Response(400, json=body)))
    outcomes = await client.publish_batch([make_message(0, "a"), make_message(1, "b")])
    assert outcomes[0] is None and isinstance(outcomes[1], AblyRetryableError)


# -- request limits ------------------------------------------------------------------------------------------


async def test_client_splits_requests_over_100_channels(client: AblyRestClient, fake: FakeAbly) -> None:
    msgs = [make_message(i, f"ch{i % 250}") for i in range(500)]
    assert await client.publish_batch(msgs) == [None] * 500
    assert [len(r.channels) for r in fake.requests] == [100] * 5
    assert fake.limit_violations == []
    assert [mid for r in fake.requests for _, mid in r.entries] == [m.message["id"] for m in msgs]


async def test_client_splits_bodies_at_2_mib(client: AblyRestClient, fake: FakeAbly) -> None:
    big = "x" * 300_000
    msgs = [make_message(i, "a", data=big) for i in range(20)]
    assert await client.publish_batch(msgs) == [None] * 20
    assert len(fake.requests) > 1
    assert all(r.raw_size <= MAX_BODY_BYTES for r in fake.requests)
    assert fake.limit_violations == []
    assert fake.delivered["a"] == [m.message["id"] for m in msgs]


async def test_message_too_large_for_any_request_is_rejected_without_sending(
    client: AblyRestClient, fake: FakeAbly
) -> None:
    msgs = [make_message(0, "a"), make_message(1, "a", data="x" * (MAX_BODY_BYTES + 1)), make_message(2, "a")]
    outcomes = await client.publish_batch(msgs)
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], AblyRejectedError) and outcomes[1].ably_code == 40009
    assert all(r.raw_size <= MAX_BODY_BYTES for r in fake.requests)


async def test_later_split_request_failure_becomes_per_entry_outcome(
    client: AblyRestClient, fake: FakeAbly, sleep: SleepRecorder
) -> None:
    msgs = [make_message(i, f"ch{i}") for i in range(150)]
    fake.fail_next(PRIMARY, lambda _r: None, *[always(lambda: error_response(42910, 429))] * 4)
    outcomes = await client.publish_batch(msgs)
    assert outcomes[:100] == [None] * 100
    assert all(isinstance(o, AblyRateLimitError) for o in outcomes[100:])


# -- classification and exception mapping ------------------------------------------------------------------


@pytest.mark.parametrize(
    "status,code,expected",
    [
        (401, 40101, AblyAuthError),
        (401, 40142, AblyAuthError),
        (403, 40300, AblyAuthError),
        (401, 0, AblyAuthError),
        (401, 40160, AblyRejectedError),
        (429, 42910, AblyRateLimitError),
        (429, 42913, AblyRateLimitError),
        (429, 0, AblyRateLimitError),
        (400, 40009, AblyRejectedError),
        (413, 40009, AblyRejectedError),
        (400, 40010, AblyRejectedError),
        (400, 40013, AblyRejectedError),
        (404, 0, AblyRejectedError),
        (500, 50000, AblyRetryableError),
        (503, 50320, AblyRetryableError),
        (504, 50003, AblyRetryableError),
        (502, 0, AblyRetryableError),
        (302, 0, AblyRetryableError),
    ],
)
def test_classification_by_code_and_status(status: int, code: int, expected: type[AblyError]) -> None:
    body = {"error": {"code": code, "statusCode": status, "message": "m"}} if code else None
    err = classify_error(status, body)
    assert type(err) is expected
    assert err.status == status
    assert err.ably_code == (code or status * 100)


def test_classification_ignores_message_text_and_reads_headers() -> None:
    err = classify_error(400, {"error": {"code": 40013, "message": "rate limit auth failed timeout"}})
    assert type(err) is AblyRejectedError
    err = classify_error(401, None, {"x-ably-errorcode": "40101", "x-ably-errormessage": "bad key"})
    assert type(err) is AblyAuthError and err.ably_code == 40101 and err.message == "bad key"


def _httpx_exception_classes() -> list[type[Exception]]:
    classes = [getattr(httpx, name) for name in httpx.__all__]
    return [c for c in classes if isinstance(c, type) and issubclass(c, Exception)]


def test_every_httpx_exception_class_is_mapped() -> None:
    mapped = tuple(t for t, *_ in ably_module._TRANSPORT_ERRORS)
    unmapped = [c.__name__ for c in _httpx_exception_classes() if not issubclass(c, mapped)]
    assert unmapped == []


def _instance(cls: type[Exception]) -> Exception:
    request = httpx.Request("POST", "http://ably.test/messages")
    if cls is httpx.HTTPStatusError:
        return cls("boom", request=request, response=httpx.Response(500, request=request))
    if cls in (httpx.RequestNotRead, httpx.ResponseNotRead, httpx.StreamClosed, httpx.StreamConsumed):
        return cls()
    return cls("boom")


@pytest.mark.parametrize("cls", _httpx_exception_classes(), ids=lambda c: c.__name__)
def test_every_httpx_exception_maps_to_an_ably_error(cls: type[Exception]) -> None:
    err = map_transport_error(_instance(cls), PRIMARY)
    assert isinstance(err, AblyError)
    if issubclass(cls, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        assert isinstance(err, AblyRetryableError)


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("bad"),
        httpx.PoolTimeout("pool"),
        httpx.WriteTimeout("w"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_transport_exceptions_surface_as_ably_errors_with_cause(fake: FakeAbly, exc: Exception) -> None:
    fake.fail_next(PRIMARY, *[raising(exc)] * 4)
    async with AblyRestClient(
        api_key=API_KEY, rest_url=PRIMARY, transport=fake.transport, sleep=SleepRecorder()
    ) as c:
        with pytest.raises(AblyRetryableError) as info:
            await c.time()
    assert info.value.__cause__ is exc


# -- lifecycle -----------------------------------------------------------------------------------------------


async def test_aclose_is_idempotent_and_closed_client_refuses_requests(fake: FakeAbly) -> None:
    c = AblyRestClient(api_key=API_KEY, rest_url=PRIMARY, transport=fake.transport)
    await c.aclose()
    await c.aclose()
    with pytest.raises(RuntimeError):
        await c.time()


async def test_error_text_inside_names_does_not_make_an_accepted_reply_fail(
    client: AblyRestClient, fake: FakeAbly
) -> None:
    channel = 'room "error": 1'  # escaped in JSON, so never the bare key
    body = [{"channel": channel, "messageId": '"error":'}]
    fake.fail_next(PRIMARY, always(lambda: httpx.Response(201, json=body)))
    assert await client.publish_batch([make_message(0, channel)]) == [None]
