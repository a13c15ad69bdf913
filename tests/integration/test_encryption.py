"""CHANNEL_CIPHER_KEY end to end on the MongoDB source: what reaches Ably carries the cipher encoding and
decrypts to exactly what an unencrypted run sends; the size limit applies to the encrypted message; a
replay of the same changes keeps their ids (a fresh IV each time), so Ably drops it."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from connector.ably.cipher import sealed_size
from emulators.ably.messages import measure_message
from tests.encryption import KEY_128, KEY_256, decrypt_data
from tests.integration.harness import connector, delivered, until, wait_delivered

pytestmark = pytest.mark.integration

BIG = {"_id": "big", "blob": "b" * 3000}


async def write_changes(db: Any) -> None:
    await db.orders.insert_one({"_id": "a", "status": "placed", "name": "Zoë"})
    await db.orders.update_one({"_id": "a"}, {"$set": {"status": "paid"}})
    await db.orders.insert_one(BIG)
    await db.orders.delete_one({"_id": "a"})


def by_id(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in messages}


async def test_encrypted_run_decrypts_to_the_plain_run_and_a_replay_keeps_its_ids(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    async with connector(connector_env):
        await write_changes(db)
        plain = by_id(await wait_delivered(ably, 4))
    assert all(m["encoding"] == "json" for m in plain.values())
    first = min(plain.values(), key=lambda m: m["id"])["event"]["clusterTime"]["$timestamp"]
    start_at = f"{first['t']}.{first['i']}"

    # The same changes again, encrypted, from a forgotten position: the emulator's store starts empty.
    big_id = next(i for i, m in plain.items() if m["event"]["documentKey"]["_id"] == "big")
    big_data = len(plain[big_id]["data"].encode())
    big_size = measure_message(dict(plain[big_id]))[1]
    # Fits in clear, not encrypted (IV + padding): published truncated, decided on the encrypted size.
    limit = big_size + sealed_size(big_data) - big_data - 1
    ably.reset()
    await db.ably.delete_many({})
    env = {
        **connector_env,
        "CHANNEL_CIPHER_KEY": KEY_256,
        "START_AT": start_at,
        "MAX_MESSAGE_SIZE": str(limit),
    }
    async with connector(env) as running:
        sealed = by_id(await wait_delivered(ably, 4))
        assert running.source.cipher is not None and running.source.cipher.sealed == 4
        assert running.source.route_stats.truncated == 1
    assert sealed.keys() == plain.keys()
    for msg_id, msg in sealed.items():
        assert msg["name"] == plain[msg_id]["name"]
        text = decrypt_data(msg, KEY_256)
        if msg_id != big_id:
            assert msg["extras"] == plain[msg_id]["extras"]
            assert text == plain[msg_id]["data"], "decrypted data differs from the unencrypted run's"
    big = sealed[big_id]
    assert big["extras"]["headers"]["x-livesync-truncated"] == "true"
    assert big["extras"]["headers"]["x-livesync-original-size"] == str(limit + 1)
    compact = json.loads(decrypt_data(big, KEY_256))
    assert compact["documentKey"] == {"_id": "big"} and "fullDocument" not in compact
    assert measure_message(dict(big))[1] <= limit

    # A replay (as after a crash, before the position was stored): same ids, new IVs; Ably drops them all.
    await db.ably.delete_many({})
    async with connector(env) as running:
        await wait_delivered(ably, 4)
        cipher = running.source.cipher
        assert cipher is not None
        await until(lambda: cipher.sealed >= 4, what="4 messages encrypted")
        await until(lambda: ably.stats()["duplicates_dropped"] >= 4, what="4 duplicates dropped")
    assert len(ably.messages()) == 4 and ably.stats()["duplicates_dropped"] == 4


async def test_a_replay_of_the_same_change_carries_a_fresh_iv(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    """With the emulator keeping duplicates (no dedupe window), the two copies of each change are visible:
    the same id and plaintext, different ciphertext (a new IV per publish)."""
    env = {**connector_env, "CHANNEL_CIPHER_KEYS": json.dumps({"orders:": KEY_128})}
    async with connector(env):
        await db.orders.insert_one({"_id": "x", "v": 1})
        first = (await wait_delivered(ably, 1))[0]
    ts = json.loads(decrypt_data(first, KEY_128))["clusterTime"]["$timestamp"]
    ably.configure(dedupe_window_s=0)
    await db.ably.delete_many({})
    async with connector(env, START_AT=f"{ts['t']}.{ts['i']}"):
        again = (await wait_delivered(ably, 2))[1]
    assert again["id"] == first["id"]
    assert again["data"] != first["data"]
    assert base64.b64decode(again["data"])[:16] != base64.b64decode(first["data"])[:16]
    assert decrypt_data(again, KEY_128) == decrypt_data(first, KEY_128)
    assert [m["encoding"] for m in delivered(ably)] == ["json/utf-8/cipher+aes-128-cbc/base64"] * 2


def test_check_reports_the_cipher_and_never_the_keys(
    connector_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    from connector.cli import main

    monkeypatch.chdir(tmp_path)  # no stray .env
    env = {
        **connector_env,
        "CHANNEL_CIPHER_KEY": KEY_256,
        "CHANNEL_CIPHER_KEYS": json.dumps({"vip:": KEY_128}),
    }
    for name, value in {**env, "LOG_LEVEL": "DEBUG"}.items():
        monkeypatch.setenv(name, value)
    assert main(["check"]) == 0
    out, err = capsys.readouterr()
    assert "ok    channel encryption: channels starting with 'vip:': aes-128-cbc" in out
    assert "ok    channel encryption: every other channel: aes-256-cbc" in out
    assert "all checks passed" in out
    assert "starting" in err, "the start-up line was logged"
    for text in (out, err):
        assert KEY_256 not in text and KEY_128 not in text


async def test_an_encrypted_message_ably_refuses_is_dead_lettered_as_the_change_it_carried(
    connector_env: dict[str, str], db: Any, ably: Any
) -> None:
    """A refused message (40160) is dead-lettered as its decrypted event, never as ciphertext, and one
    sent truncated is stored marked as such (with the whole message's size), so a replay cannot take its
    compact form for the whole change."""
    ably.inject_fault(
        mode="partial", status=401, code=40160, message="capability denied", channels=["orders:"]
    )
    env = {
        **connector_env,
        "CHANNEL_CIPHER_KEY": KEY_256,
        "PIPELINE": '[{"$set": {"_ablyChannel": "orders:"}}]',
        "MAX_MESSAGE_SIZE": "2000",
    }
    async with connector(env) as running:
        await db.orders.insert_one({"_id": "small", "v": 1})
        await db.orders.insert_one(BIG)
        await until(lambda: running.source.unpublishable.deadlettered == 2, what="2 dead letters")
    assert ably.messages() == []
    letters = {doc["event"]["documentKey"]["_id"]: doc async for doc in db.ably_deadletter.find()}
    small, big = letters["small"], letters["big"]
    assert small["kind"] == "rejected" and small["code"] == 40160
    assert small["event"]["fullDocument"] == {"_id": "small", "v": 1}
    assert small["event"]["_ablyChannel"] == "orders:"
    assert "eventTruncated" not in small
    assert big["eventTruncated"] is True and big["eventSize"] > 2000
    assert "fullDocument" not in big["event"] and big["event"]["operationType"] == "insert"
