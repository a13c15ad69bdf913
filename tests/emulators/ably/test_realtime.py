"""The realtime protocol over WebSocket (JSON), frame by frame, as ably-js 2.x speaks it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import orjson
import pytest

from emulators.ably import AblyEmulator
from emulators.ably.protocol import FLAG_RESUMED, MODE_SUBSCRIBE, Action

KEY = "app.key:secret"
FRAME_TIMEOUT_S = 10.0  # a bound on waiting for a frame the emulator must send; never reached when it works


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


async def connect(
    http: aiohttp.ClientSession, ably: AblyEmulator, **params: str
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """Open a realtime connection; return it and its first frame."""
    query = {"key": KEY, "v": "6", "format": "json", "heartbeats": "true", **params}
    ws = await http.ws_connect(f"{ably.url}/", params=query)
    return ws, await recv(ws)


async def recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    frame = await ws.receive(timeout=FRAME_TIMEOUT_S)
    assert frame.type is aiohttp.WSMsgType.TEXT, frame
    message: dict[str, Any] = orjson.loads(frame.data)
    return message


async def send(ws: aiohttp.ClientWebSocketResponse, **frame: Any) -> None:
    await ws.send_str(orjson.dumps(frame).decode())


async def attach(ws: aiohttp.ClientWebSocketResponse, channel: str, **extra: Any) -> dict[str, Any]:
    await send(ws, action=Action.ATTACH, channel=channel, **extra)
    attached = await recv(ws)
    assert attached["action"] == Action.ATTACHED and attached["channel"] == channel
    return attached


def rest(ably: AblyEmulator) -> httpx.AsyncClient:
    name, _, secret = KEY.partition(":")
    return httpx.AsyncClient(base_url=ably.url, auth=(name, secret), headers={"X-Ably-Version": "6"})


async def publish(ably: AblyEmulator, channel: str, *messages: dict[str, Any]) -> None:
    async with rest(ably) as http:
        response = await http.post(f"/channels/{channel}/messages", json=list(messages))
    assert response.status_code == 201, response.text


async def test_connected_carries_connection_details(
    session: aiohttp.ClientSession, ably: AblyEmulator
) -> None:
    ws, connected = await connect(session, ably, clientId="alice")
    assert connected["action"] == Action.CONNECTED
    details = connected["connectionDetails"]
    assert details["connectionKey"].startswith(connected["connectionId"])
    assert details["connectionStateTtl"] == 120_000 and details["maxIdleInterval"] == 15_000
    assert details["maxMessageSize"] == 65536 and details["clientId"] == "alice"
    assert "error" not in connected
    assert ably.stats()["realtime"]["connections"] == 1
    await ws.close()


@pytest.mark.parametrize(
    ("params", "code"),
    [({"key": "app.key:wrong"}, 40101), ({"key": "nope.key:x"}, 40101), ({"v": ""}, 40000)],
)
async def test_bad_credentials_or_version_get_an_error_then_close(
    session: aiohttp.ClientSession, ably: AblyEmulator, params: dict[str, str], code: int
) -> None:
    ws, error = await connect(session, ably, **params)
    assert error["action"] == Action.ERROR and error["error"]["code"] == code
    assert (await ws.receive(timeout=FRAME_TIMEOUT_S)).type is aiohttp.WSMsgType.CLOSE


async def test_msgpack_clients_get_a_msgpack_error_they_can_read(
    session: aiohttp.ClientSession, ably: AblyEmulator
) -> None:
    ws = await session.ws_connect(f"{ably.url}/", params={"key": KEY, "v": "6", "format": "msgpack"})
    frame = await ws.receive(timeout=FRAME_TIMEOUT_S)
    assert frame.type is aiohttp.WSMsgType.BINARY
    # fixmap(2) "action" 9 "error" {...}: the ERROR action, then the reason in plain UTF-8.
    assert frame.data[:9] == b"\x82\xa6action\x09"
    assert b"useBinaryProtocol: false" in frame.data
    await ws.close()


async def test_rest_and_batch_publishes_reach_attached_connections_with_serials(
    session: aiohttp.ClientSession, ably: AblyEmulator
) -> None:
    ws, _ = await connect(session, ably)
    attached = await attach(ws, "orders:1")
    assert attached["flags"] & MODE_SUBSCRIBE and not attached["flags"] & FLAG_RESUMED
    await publish(
        ably, "orders:1", {"id": "t1", "name": "insert", "data": {"a": 1}, "extras": {"headers": {"h": "v"}}}
    )
    async with rest(ably) as http:
        batch = [{"channels": ["orders:1", "other"], "messages": {"id": "t2", "name": "update", "data": "x"}}]
        assert (await http.post("/messages", json=batch)).status_code == 201
    first, second = await recv(ws), await recv(ws)
    assert first["action"] == Action.MESSAGE and first["channel"] == "orders:1"
    [message] = first["messages"]
    assert message["id"] == "t1" and message["name"] == "insert" and message["encoding"] == "json"
    assert orjson.loads(message["data"]) == {"a": 1} and message["extras"] == {"headers": {"h": "v"}}
    assert [m["id"] for m in second["messages"]] == ["t2"]
    epoch = attached["channelSerial"].split(":")[0]
    assert (attached["channelSerial"], first["channelSerial"], second["channelSerial"]) == (
        f"{epoch}:0",
        f"{epoch}:1",
        f"{epoch}:2",
    )
    await ws.close()


async def test_batch_fan_out_reaches_attached_channels_only_one_frame_per_unit(
    session: aiohttp.ClientSession, ably: AblyEmulator
) -> None:
    ws, _ = await connect(session, ably)
    epoch = (await attach(ws, "sub"))["channelSerial"].split(":")[0]
    extras = {"headers": {"x-ably-models-event-uuid": "u"}}
    specs = [
        {"channels": "unsubscribed", "messages": {"id": "u1", "data": "no one listens"}},
        {"channels": "sub", "messages": {"id": "s1", "data": "one", "extras": extras}},
        {"channels": "sub", "messages": [{"id": "s2:0", "data": "two"}, {"id": "s2:1", "data": {"n": 3}}]},
        {"channels": "sub", "messages": {"id": "s1", "data": "duplicate: not delivered again"}},
        {"channels": ["unsubscribed", "sub"], "messages": {"name": "both"}},
    ]
    async with rest(ably) as http:
        response = await http.post("/messages", json=specs)
    assert response.status_code == 201
    frames = [await recv(ws) for _ in range(3)]
    assert [f["channel"] for f in frames] == ["sub", "sub", "sub"]
    assert [[m["id"] for m in f["messages"]] for f in frames] == [
        ["s1"],
        ["s2:0", "s2:1"],
        [f"{response.json()[5]['messageId']}:0"],
    ]
    assert [f["channelSerial"] for f in frames] == [f"{epoch}:1", f"{epoch}:3", f"{epoch}:4"]
    assert frames[0]["messages"][0]["extras"] == extras and "connectionId" not in frames[0]
    assert frames[1]["messages"][1] == {
        "id": "s2:1",
        "data": '{"n":3}',
        "encoding": "json",
        "timestamp": frames[1]["timestamp"],
    }
    assert frames[2]["messages"][0]["name"] == "both"
    # Nothing for the channel without a subscriber, which stored its messages all the same.
    await send(ws, action=Action.HEARTBEAT, id="after-the-batch")
    assert await recv(ws) == {"action": Action.HEARTBEAT, "id": "after-the-batch"}
    assert [m["data"] for m in ably.messages("unsubscribed")] == ["no one listens", None]
    # A client attaching later resumes from the start of the channel with the same frames.
    await ws.close()
    ws, _ = await connect(session, ably)
    await attach(ws, "sub", channelSerial=f"{epoch}:0")
    replayed = [await recv(ws) for _ in range(4)]
    assert [m["id"] for f in replayed for m in f["messages"]] == [
        "s1",
        "s2:0",
        "s2:1",
        frames[2]["messages"][0]["id"],
    ]
    assert replayed[0]["messages"][0]["extras"] == extras
    await ws.close()


async def test_history_until_attach_ends_at_the_attach_serial_and_pages(
    session: aiohttp.ClientSession, ably: AblyEmulator
) -> None:
    await publish(ably, "c", *({"id": f"m:{i}", "data": str(i)} for i in range(3)))
    ws, _ = await connect(session, ably)
    attach_serial = (await attach(ws, "c"))["channelSerial"]
    await publish(ably, "c", {"id": "after", "data": "later"})
    async with rest(ably) as http:
        page = await http.get("/channels/c/messages", params={"from_serial": attach_serial, "limit": 2})
        assert [m["id"] for m in page.json()] == ["m:2", "m:1"]
        next_link = page.headers["Link"].split(", ")[1]
        assert next_link.endswith('rel="next"')
        query = next_link[next_link.index("?") + 1 : next_link.index(">")]
        rest_of_it = await http.get(f"/channels/c/messages?{query}")
        assert [m["id"] for m in rest_of_it.json()] == ["m:0"] and "Link" not in rest_of_it.headers
        stale = await http.get("/channels/c/messages", params={"from_serial": "0000:1"})
        assert stale.status_code == 400 and stale.json()["error"]["code"] == 40003
    await ws.close()


async def test_reattach_with_a_known_serial_resumes_with_what_was_missed(
    session: aiohttp.ClientSession, ably: AblyEmulator
) -> None:
    ws, _ = await connect(session, ably)
    serial = (await attach(ws, "c"))["channelSerial"]
    await ws.close()
    await publish(ably, "c", {"id": "missed-1", "data": "a"})
    await publish(ably, "c", {"id": "missed-2", "data": "b"})
    ws, _ = await connect(session, ably)
    resumed = await attach(ws, "c", channelSerial=serial)
    assert resumed["flags"] & FLAG_RESUMED
    frames = [await recv(ws), await recv(ws)]
    assert [f["messages"][0]["id"] for f in frames] == ["missed-1", "missed-2"]
    assert frames[-1]["channelSerial"] == resumed["channelSerial"]
    fresh = await attach(ws, "c", channelSerial="stale:3")
    assert not fresh["flags"] & FLAG_RESUMED
    await ws.close()


async def test_a_connection_resumes_within_its_state_ttl_and_not_after(
    session: aiohttp.ClientSession, ably: AblyEmulator
) -> None:
    ws, first = await connect(session, ably)
    key = first["connectionDetails"]["connectionKey"]
    await ws.close()
    ws, again = await connect(session, ably, resume=key)
    assert again["connectionId"] == first["connectionId"] and "error" not in again
    await send(ws, action=Action.CLOSE)
    assert (await recv(ws))["action"] == Action.CLOSED  # a closed connection cannot be resumed
    ws, expired = await connect(session, ably, resume=key)
    assert expired["connectionId"] != first["connectionId"] and expired["error"]["code"] == 80008
    await ws.close()


async def test_heartbeats_and_pings(session: aiohttp.ClientSession, ably: AblyEmulator) -> None:
    ably.configure(heartbeat_interval_s=0.2)
    ws, _ = await connect(session, ably)
    assert (await recv(ws)) == {"action": Action.HEARTBEAT}  # idle: the server shows it is alive
    await send(ws, action=Action.HEARTBEAT, id="ping-1")
    assert (await recv(ws)) == {"action": Action.HEARTBEAT, "id": "ping-1"}
    await ws.close()


async def test_realtime_publish_is_acked_delivered_and_echo_can_be_off(
    session: aiohttp.ClientSession, ably: AblyEmulator
) -> None:
    sender, connected = await connect(session, ably, echo="false")
    listener, _ = await connect(session, ably)
    await attach(sender, "c")
    await attach(listener, "c")
    await send(sender, action=Action.MESSAGE, channel="c", msgSerial=0, messages=[{"name": "n", "data": "d"}])
    assert await recv(sender) == {"action": Action.ACK, "msgSerial": 0, "count": 1}
    delivered = await recv(listener)
    assert delivered["messages"][0]["id"] == f"{connected['connectionId']}:0:0"
    assert delivered["connectionId"] == connected["connectionId"]
    await send(sender, action=Action.MESSAGE, channel="c", msgSerial=1, messages=[{"data": 42}])
    nack = await recv(sender)  # the sender got no echo of message 0: its next frame is this NACK
    assert nack["action"] == Action.NACK and nack["error"]["code"] == 40013
    await send(sender, action=Action.PRESENCE, channel="c", msgSerial=2, presence=[{"action": 2}])
    unsupported = await recv(sender)
    assert unsupported["action"] == Action.NACK and "presence" in unsupported["error"]["message"]
    assert [m["name"] for m in ably.messages("c")] == ["n"]
    await sender.close()
    await listener.close()


async def test_detach_stops_delivery(session: aiohttp.ClientSession, ably: AblyEmulator) -> None:
    ws, _ = await connect(session, ably)
    await attach(ws, "a")
    await attach(ws, "b")
    await send(ws, action=Action.DETACH, channel="a")
    assert await recv(ws) == {"action": Action.DETACHED, "channel": "a"}
    await publish(ably, "a", {"id": "x", "data": "ignored"})
    await publish(ably, "b", {"id": "y", "data": "seen"})
    assert (await recv(ws))["channel"] == "b"
    assert ably.stats()["realtime"]["attached"] == {"b": 1}
    await ws.close()


async def test_invalid_channel_and_malformed_frames(
    session: aiohttp.ClientSession, ably: AblyEmulator
) -> None:
    ws, _ = await connect(session, ably)
    await send(ws, action=Action.ATTACH, channel=":bad")
    error = await recv(ws)
    assert error["action"] == Action.ERROR and error["channel"] == ":bad" and error["error"]["code"] == 40010
    await ws.send_str("[1, 2]")
    fatal = await recv(ws)
    assert fatal["action"] == Action.ERROR and "channel" not in fatal and fatal["error"]["code"] == 40001
    assert (await ws.receive(timeout=FRAME_TIMEOUT_S)).type is aiohttp.WSMsgType.CLOSE


async def test_disconnect_fault_drops_connections_and_refuses_realtime_only(
    session: aiohttp.ClientSession, ably: AblyEmulator
) -> None:
    ws, _ = await connect(session, ably)
    ably.inject_fault(mode="disconnect", duration_s=60)
    assert (await ws.receive(timeout=FRAME_TIMEOUT_S)).type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSED,
    )
    with pytest.raises(aiohttp.ClientError):
        await connect(session, ably)
    await publish(ably, "c", {"id": "rest-still-works", "data": "x"})
    assert [f["mode"] for f in ably.active_faults()] == ["disconnect"]
    ably.clear_faults()
    ws, connected = await connect(session, ably)
    assert connected["action"] == Action.CONNECTED
    await ws.close()


async def test_cors_preflight_and_exposed_link_header(ably: AblyEmulator) -> None:
    async with httpx.AsyncClient(base_url=ably.url) as http:
        preflight = await http.options(
            "/channels/c/messages",
            headers={
                "Origin": "http://page.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization,x-ably-version",
            },
        )
    assert preflight.status_code == 204
    # ably-js's XHR sends credentials: the origin must be named (a "*" is refused) and credentials allowed.
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://page.example"
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
    assert preflight.headers["Access-Control-Allow-Headers"] == "authorization,x-ably-version"
    async with rest(ably) as http:
        response = await http.get("/channels/c/messages", headers={"Origin": "http://page.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "http://page.example"
    assert "Link" in response.headers["Access-Control-Expose-Headers"]


async def test_envelope_wraps_status_body_and_headers(ably: AblyEmulator) -> None:
    await publish(ably, "c", {"id": "a", "data": "1"})
    await publish(ably, "c", {"id": "b", "data": "2"})
    async with rest(ably) as http:
        page = await http.get("/channels/c/messages", params={"limit": 1, "envelope": "json"})
        missing = await http.get("/channels/:bad/messages", params={"envelope": "json"})
    assert page.status_code == 200
    assert page.json()["statusCode"] == 200 and [m["id"] for m in page.json()["response"]] == ["b"]
    assert 'rel="next"' in page.json()["headers"]["Link"]
    assert missing.status_code == 200 and missing.json()["statusCode"] == 400
    assert missing.json()["response"]["error"]["code"] == 40010


async def test_bearer_tokens_are_accepted_raw_or_base64_encoded_as_sdks_send_them() -> None:
    async with (
        AblyEmulator(keys=[KEY], tokens=["tok-1"]) as emulator,
        httpx.AsyncClient(base_url=emulator.url) as http,
    ):
        for credential in ("tok-1", "dG9rLTE=", "dG9rLTI="):  # the last is base64 of an unknown token
            answer = await http.get(
                "/channels/c/messages",
                headers={"X-Ably-Version": "6", "Authorization": f"Bearer {credential}"},
            )
            assert answer.status_code == (401 if credential == "dG9rLTI=" else 200)


async def test_realtime_publish_follows_the_id_rule_with_40031(
    session: aiohttp.ClientSession, ably: AblyEmulator
) -> None:
    ws, _ = await connect(session, ably)
    mixed = [{"id": "m:0", "data": "a"}, {"data": "b"}]
    await send(ws, action=Action.MESSAGE, channel="c", msgSerial=0, messages=mixed)
    nack = await recv(ws)
    assert nack["action"] == Action.NACK and nack["msgSerial"] == 0
    assert (nack["error"]["code"], nack["error"]["statusCode"]) == (40031, 400)
    linked = [{"id": "m:0", "data": "a"}, {"id": "m:1", "data": "b"}]
    await send(ws, action=Action.MESSAGE, channel="c", msgSerial=1, messages=linked)
    assert await recv(ws) == {"action": Action.ACK, "msgSerial": 1, "count": 1}
    assert [m["id"] for m in ably.messages("c")] == ["m:0", "m:1"]
    await ws.close()


async def test_realtime_publish_counts_one_toward_the_channel_budget_it_shares_with_rest(
    session: aiohttp.ClientSession,
) -> None:
    # A clock that stands still: no token comes back however slowly the test runs.
    async with AblyEmulator(keys=[KEY], channel_rate_limit=2, clock=lambda: 1000.0) as ably:
        await _publish_through_the_shared_budget(session, ably)


async def _publish_through_the_shared_budget(session: aiohttp.ClientSession, ably: AblyEmulator) -> None:
    ws, _ = await connect(session, ably)
    three = [{"data": str(i)} for i in range(3)]
    await send(ws, action=Action.MESSAGE, channel="c", msgSerial=0, messages=three)
    assert (await recv(ws))["action"] == Action.ACK  # three messages in one publish: one of two tokens
    await publish(ably, "c", {"data": "rest"})  # the second token, taken over REST
    await send(ws, action=Action.MESSAGE, channel="c", msgSerial=1, messages=[{"data": "late"}])
    nack = await recv(ws)
    assert nack["action"] == Action.NACK
    assert (nack["error"]["code"], nack["error"]["statusCode"]) == (42913, 429)
    assert [m["data"] for m in ably.messages("c")] == ["0", "1", "2", "rest"]
    stats = ably.stats()
    assert (stats["rate_limited"], stats["rate_limited_by_channel"], stats["rate_limited_requests"]) == (
        1,
        {"c": 1},
        1,
    )
    await ws.close()
