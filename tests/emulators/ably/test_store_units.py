"""Store, FaultBook, config and id rules in isolation, with a fake clock (no sleeping)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from emulators.ably.config import EmulatorConfig
from emulators.ably.errors import AblyHttpError
from emulators.ably.faults import FaultBook, parse_fault
from emulators.ably.messages import normalize_for_store, normalize_message, normalize_unit_for_store, unit_id
from emulators.ably.store import Store


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _msg(**fields: Any) -> dict[str, Any]:
    return normalize_message(fields, max_size=65536)


def _store(clock: FakeClock, **config: Any) -> Store:
    return Store(EmulatorConfig(**config), clock=clock, wall_ms=lambda: 42)


def test_dedupe_window_is_measured_from_the_first_publish() -> None:
    clock = FakeClock()
    store = _store(clock, dedupe_window_s=120)
    assert not store.publish("c", [_msg(id="a")], "a").duplicate
    clock.now += 119
    assert store.publish("c", [_msg(id="a")], "a").duplicate  # a duplicate does not extend the window
    clock.now += 1
    assert not store.publish("c", [_msg(id="a")], "a").duplicate
    assert [m["id"] for m in store.messages("c")] == ["a", "a"]
    assert store.stats()["duplicates_dropped"] == 1


def test_expired_ids_are_forgotten_so_memory_stays_bounded() -> None:
    clock = FakeClock()
    store = _store(clock, dedupe_window_s=10)
    for i in range(1000):
        store.publish("c", [_msg(id=str(i))], str(i))
    clock.now += 11
    store.publish("c", [_msg(id="new")], "new")
    assert len(store._seen) == 1
    assert len(store._seen_order) == 1


def test_token_bucket_refills_at_the_configured_rate() -> None:
    clock = FakeClock()
    store = _store(clock, channel_rate_limit=2)
    store.publish("c", [_msg()], None)
    store.publish("c", [_msg()], None)
    with pytest.raises(AblyHttpError) as limited:
        store.publish("c", [_msg()], None)
    assert (limited.value.code, limited.value.status) == (42913, 429)
    clock.now += 0.5  # one token back at 2/s
    store.publish("c", [_msg()], None)
    with pytest.raises(AblyHttpError):
        store.publish("c", [_msg()], None)
    # A publish of several messages takes one token: two of them fit in a full bucket.
    clock.now += 10
    store.publish("c", [_msg() for _ in range(5)], None)
    store.publish("c", [_msg() for _ in range(5)], None)
    assert store.stats()["rate_limited"] == 2
    assert store.stats()["rate_limited_by_channel"] == {"c": 2}


def test_a_rate_under_one_per_second_lets_a_publish_through_on_a_full_bucket() -> None:
    clock = FakeClock()
    store = _store(clock, channel_rate_limit=0.5)
    store.publish("c", [_msg()], None)
    clock.now += 1.9
    with pytest.raises(AblyHttpError):
        store.publish("c", [_msg()], None)
    clock.now += 0.1
    store.publish("c", [_msg()], None)
    assert len(store.messages("c")) == 2


def test_generated_ids_are_unique_base_colon_index() -> None:
    store = _store(FakeClock())
    first = store.publish("c", [_msg(), _msg()], None)
    second = store.publish("c", [_msg()], None)
    assert first.message_id != second.message_id
    assert [m["id"] for m in store.messages()] == [
        f"{first.message_id}:0",
        f"{first.message_id}:1",
        f"{second.message_id}:0",
    ]
    assert {m["received_at"] for m in store.messages()} == {42}


def test_listeners_see_each_delivered_message_once() -> None:
    store = _store(FakeClock())
    seen: list[str] = []

    def listener(stored: dict[str, Any]) -> None:
        seen.append(stored["id"])

    store.add_listener(listener)
    store.publish("c", [_msg(id="x")], "x")
    store.publish("c", [_msg(id="x")], "x")  # duplicate: not delivered
    store.remove_listener(listener)
    store.publish("c", [_msg(id="y")], "y")
    assert seen == ["x"]


def test_messages_returns_copies() -> None:
    store = _store(FakeClock())
    store.publish("c", [_msg(data="d")], None)
    store.messages()[0]["data"] = "changed"
    assert store.messages()[0]["data"] == "d"


def test_publish_batch_stores_units_in_order_with_listeners_called_after_as_publish_calls_them() -> None:
    clock = FakeClock()
    store = _store(clock, channel_rate_limit=3)  # a duplicate takes its token too
    heard: list[tuple[str, Any]] = []
    units_heard: list[tuple[str, int, list[str | None], str | None]] = []
    store.add_listener(lambda message: heard.append((message["id"], message["extras"])))
    store.add_delivery_listener(
        lambda channel, first, messages, origin: units_heard.append(
            (channel, first, [m["id"] for m in messages], origin)
        )
    )
    extras = {"headers": {"h": "v"}}
    owned = [normalize_for_store({"id": "a", "extras": extras}, 65536)]
    shared = [normalize_for_store({"data": "x"}, 65536), normalize_for_store({"data": "y"}, 65536)]
    outcomes = store.publish_batch(
        [
            ("c", owned, "a", True),
            ("c", [normalize_for_store({"id": "a"}, 65536)], "a", True),  # a duplicate
            ("c", shared, None, False),
            ("d", shared, None, False),
            ("c", [normalize_for_store({"id": "b"}, 65536)], "b", True),  # the fourth unit on c: limited
        ]
    )
    assert outcomes[:2] == ["a", "a"]
    base_c, base_d = outcomes[2], outcomes[3]
    assert isinstance(base_c, str) and isinstance(base_d, str) and base_c != base_d
    assert isinstance(outcomes[4], AblyHttpError) and outcomes[4].code == 42913
    history = store.history("c")
    assert history[0] is owned[0]  # an owned dict is kept, completed in place
    assert owned[0]["channel"] == "c" and owned[0]["received_at"] == 42
    assert [m["id"] for m in history] == ["a", f"{base_c}:0", f"{base_c}:1"]
    assert shared[0]["id"] is None and "channel" not in shared[0]  # shared dicts are copied
    assert heard == [("a", extras)] + [(f"{base}:{i}", None) for base in (base_c, base_d) for i in (0, 1)]
    assert units_heard == [
        ("c", 1, ["a"], None),
        ("c", 2, [f"{base_c}:0", f"{base_c}:1"], None),
        ("d", 1, [f"{base_d}:0", f"{base_d}:1"], None),
    ]
    stats = store.stats()
    assert (stats["messages_delivered"], stats["duplicates_dropped"], stats["rate_limited"]) == (5, 1, 1)


def test_messages_since_skips_the_first_and_views_agree() -> None:
    store = _store(FakeClock())
    for data in ("a", "b", "c"):
        store.publish("ch", [_msg(data=data, extras={"headers": {"k": data}})], None)
    assert [m["data"] for m in store.messages(since=1)] == ["b", "c"]
    assert [m["data"] for m in store.messages("ch", since=-1)] == ["c"]
    assert store.messages("nowhere", since=1) == []
    as_json = orjson.loads(orjson.dumps(store.messages_for_json(since=1)))
    assert as_json == store.messages(since=1)


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        (["solo"], "solo"),
        (["solo:with:colons"], "solo:with:colons"),
        ([None], None),
        ([None, None], None),
        (["b:0", "b:1", "b:2"], "b"),
        (["x:y:0", "x:y:1"], "x:y"),
    ],
)
def test_unit_id_rules(ids: list[str | None], expected: str | None) -> None:
    assert unit_id([_msg(id=i) for i in ids]) == expected


@pytest.mark.parametrize(
    "ids",
    [
        ["b:1", "b:0"],  # out of order
        ["b:1", "b:2"],  # not 0-based
        ["b:0", "c:1"],  # two bases
        ["b", "b"],  # no index
        ["b:0", "b:1", "b:1"],  # an index repeated
        ["b:00", "b:01"],  # not the index as written by Ably
        [":0", ":1"],  # an empty base
        ["b:0", None],  # a missing id after given ones
        [None, "b:1"],  # a missing id before
    ],
)
def test_unit_id_rejects_ids_not_following_base_index_with_40031(ids: list[str | None]) -> None:
    with pytest.raises(AblyHttpError) as rejected:
        unit_id([_msg(id=i) for i in ids])
    assert (rejected.value.code, rejected.value.status) == (40031, 400)
    assert rejected.value.message.startswith(
        "Client-specified message ids do not match the required format for multi-message ProtocolMessages"
    )


@pytest.mark.parametrize(("msg_id", "message"), [("", "cannot be empty"), (5, "must be a string")])
def test_an_empty_or_non_string_id_is_40031(msg_id: object, message: str) -> None:
    with pytest.raises(AblyHttpError) as rejected:
        _msg(id=msg_id)
    assert (rejected.value.code, rejected.value.status) == (40031, 400)
    assert message in rejected.value.message


def test_a_unit_is_measured_as_one_payload_against_the_size_limit() -> None:
    messages, uid = normalize_unit_for_store(
        [{"id": "u:0", "data": "x" * 6}, {"id": "u:1", "data": "y" * 4}], 10
    )
    assert uid == "u" and [m["data"] for m in messages] == ["x" * 6, "y" * 4]
    with pytest.raises(AblyHttpError) as rejected:
        normalize_unit_for_store([{"data": "x" * 6}, {"data": "y" * 5}], 10)
    assert (rejected.value.code, rejected.value.status) == (40009, 413)
    assert rejected.value.message == "Maximum message length exceeded (size was 11 bytes, limit is 10 bytes)"


def test_fault_book_counts_and_expires_with_the_clock() -> None:
    clock = FakeClock()
    book = FaultBook(clock=clock)
    book.add(parse_fault({"status": 503, "count": 2}, clock.now))
    book.add(parse_fault({"status": 500, "duration_s": 5}, clock.now))
    assert [[f.status for f in book.take("publish", ["c"])] for _ in range(3)] == [[503], [503], [500]]
    clock.now += 5
    assert book.take("publish", ["c"]) == []
    assert book.active() == []


def test_parse_fault_derives_status_from_code_and_code_from_status() -> None:
    assert (parse_fault({"code": 50320}, 0).status, parse_fault({"code": 50320}, 0).code) == (503, 50320)
    assert parse_fault({"status": 429}, 0).code == 42900
    default = parse_fault({}, 0)
    assert (default.mode, default.status, default.code) == ("status", 500, 50000)
    assert parse_fault({"mode": "refuse"}, 0).duration_s == 5.0


def test_config_rejects_bad_keys_and_values() -> None:
    for bad in ({"keys": ["nokey"]}, {"keys": ["app:secret"]}, {"keys": ["app.key:"]}, {"latency_ms": -1}):
        with pytest.raises(ValueError):
            EmulatorConfig(**bad)  # type: ignore[arg-type]
    config = EmulatorConfig(keys=("a.b:c", "a.d:e"))
    assert config.secrets_by_key_name == {"a.b": "c", "a.d": "e"}
