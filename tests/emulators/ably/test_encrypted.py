"""Encrypted messages (`.../cipher+aes-256-cbc/base64`) are stored and delivered opaquely, as Ably does:
the emulator never needs the key, keeps data and encoding as published, and counts the payload by its
decoded bytes (Ably's rule for base64 data over a text transport), not by the base64 text."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import httpx
import orjson

from connector.ably.cipher import ChannelCipher
from connector.ably.outbound import AblyMessage
from emulators.ably import AblyEmulator
from emulators.ably.protocol import Action

KEY = "app.key:secret"
HEADERS = {"X-Ably-Version": "6"}
FRAME_TIMEOUT_S = 10.0  # a bound on waiting for a frame the emulator must send; never reached when it works
CIPHER_KEY = bytes(range(32))


def sealed(data: dict[str, Any], msg_id: str) -> AblyMessage:
    plain: AblyMessage = {
        "id": msg_id,
        "name": "update",
        "data": orjson.dumps(data).decode(),
        "encoding": "json",
    }
    plain["extras"] = {"headers": {"x-ably-models-event-uuid": msg_id}}
    return ChannelCipher(CIPHER_KEY).seal(plain, "secure:1")


def rest(ably: AblyEmulator) -> httpx.AsyncClient:
    name, _, secret = KEY.partition(":")
    return httpx.AsyncClient(base_url=ably.url, auth=(name, secret), headers=HEADERS)


async def test_an_encrypted_message_comes_back_unchanged_from_history_and_realtime(
    ably: AblyEmulator,
) -> None:
    message = sealed({"total": 12, "note": "é"}, "m:1")
    async with aiohttp.ClientSession() as session:
        query = {"key": KEY, "v": "6", "format": "json", "heartbeats": "true"}
        ws = await session.ws_connect(f"{ably.url}/", params=query)
        assert orjson.loads((await ws.receive(timeout=FRAME_TIMEOUT_S)).data)["action"] == Action.CONNECTED
        await ws.send_str(orjson.dumps({"action": Action.ATTACH, "channel": "secure:1"}).decode())
        assert orjson.loads((await ws.receive(timeout=FRAME_TIMEOUT_S)).data)["action"] == Action.ATTACHED
        async with rest(ably) as http:
            response = await http.post("/messages", json=[{"channels": "secure:1", "messages": message}])
            assert response.status_code == 201, response.text
            history = (await http.get("/channels/secure:1/messages")).json()
        frame = orjson.loads((await ws.receive(timeout=FRAME_TIMEOUT_S)).data)
        await ws.close()
    assert frame["action"] == Action.MESSAGE
    for got in (history[0], frame["messages"][0]):
        assert {k: got[k] for k in ("id", "name", "data", "encoding", "extras")} == message


async def test_the_size_limit_counts_the_decoded_ciphertext_not_its_base64() -> None:
    message = sealed({"body": "x" * 500}, "m:2")
    binary = len(base64.b64decode(message["data"]))
    text_size = len(message["name"]) + len(orjson.dumps(message["extras"]))
    limit = text_size + binary  # fits exactly; the base64 text alone is a third larger
    assert len(message["data"]) > binary + 100
    async with (
        AblyEmulator(host="127.0.0.1", port=0, keys=[KEY], max_message_size=limit) as ably,
        rest(ably) as http,
    ):
        ok = await http.post("/channels/secure:1/messages", json=message)
        ably.configure(max_message_size=limit - 1)
        refused = await http.post("/channels/secure:1/messages", json={**message, "id": "m:3"})
    assert ok.status_code == 201, ok.text
    assert refused.status_code == 413 and refused.json()["error"]["code"] == 40009
    assert f"size was {limit} bytes" in refused.json()["error"]["message"]
