"""CHANNEL_CIPHER_KEY(S) end to end on the Postgres outbox: rows on a channel with a key reach Ably with
the cipher encoding and decrypt to exactly the data their twin on a clear channel carries; the size limit
applies to the encrypted message; after a kill -9 the unprocessed rows go out again with the same ids (a new
IV), and Ably drops them. The key never reaches the connector's log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg

from connector.ably.cipher import sealed_size
from connector.sources.postgres.source import PostgresSource
from emulators.ably.messages import measure_message
from tests.e2e.procs import ConnectorProcess
from tests.encryption import KEY_128, KEY_256, decrypt_data
from tests.postgres.harness import insert_row, outbox_ids, running, wait_delivered

BIG = {"blob": "p" * 2000}


async def test_rows_on_keyed_channels_decrypt_to_their_clear_twins_and_size_counts_encrypted(
    pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any
) -> None:
    # Twins: the same name, data and headers on a clear and on an encrypted channel (Ably does not count
    # the channel name, so each pair differs in size by the encryption only).
    payloads = [{"title": "Zoë's post", "n": 1}, {"list": [1, 2.5, None, True]}, BIG, None]
    for i, data in enumerate(payloads):
        for prefix in ("plain:", "secure:"):
            insert_row(outbox, f"{prefix}{i}", data, name=f"op{i}", mutation_id=f"m{i}", headers={"h": "v"})
    big_plain_data = len(json.dumps(BIG).encode())  # JSONB's text of BIG has the same spacing
    probe = {"name": "op2", "data": json.dumps(BIG), "encoding": "json"}
    probe["extras"] = {"headers": {"h": "v", "x-ably-models-event-uuid": "m2"}}  # type: ignore[assignment]
    big_size = measure_message(probe)[1]
    limit = big_size + sealed_size(big_plain_data) - big_plain_data - 1  # fits in clear, not encrypted
    keys = json.dumps({"secure:": KEY_256})
    async with running(pg_env, CHANNEL_CIPHER_KEYS=keys, MAX_MESSAGE_SIZE=str(limit)) as handle:
        got = await wait_delivered(ably, 2 * len(payloads))
        source = handle.worker.source
        assert isinstance(source, PostgresSource) and source.cipher is not None
        assert source.cipher.sealed == 2  # the NULL row has nothing to encrypt, BIG went out compact
    by_channel = {m["channel"]: m for m in got}
    for i, data in enumerate(payloads):
        clear, sealed = by_channel[f"plain:{i}"], by_channel[f"secure:{i}"]
        assert int(sealed["id"]) == int(clear["id"]) + 1 and sealed["name"] == clear["name"]
        if data is None:
            assert sealed.get("data") is None and sealed.get("encoding") is None
            assert sealed["extras"] == clear["extras"]
        elif data is BIG:
            assert clear["encoding"] == "json" and clear["payload"] == BIG
            assert sealed.get("data") is None, "over the limit once encrypted: published without its data"
            assert sealed["extras"]["headers"]["x-livesync-truncated"] == "true"
            assert sealed["extras"]["headers"]["x-livesync-original-size"] == str(limit + 1)
        else:
            assert clear["encoding"] == "json"
            assert decrypt_data(sealed, KEY_256) == clear["data"], (
                "decrypted data differs from the clear row's"
            )
            assert sealed["extras"] == clear["extras"]


def test_after_kill_9_the_replayed_rows_keep_their_ids_and_ably_drops_them(
    pg_env: dict[str, str], outbox: psycopg.Connection[Any], ably: Any, tmp_path: Path
) -> None:
    # Positions are stored only every 10 minutes: at the kill, every published row is still unprocessed.
    env = {**pg_env, "CHANNEL_CIPHER_KEY": KEY_128, "CHECKPOINT_INTERVAL_MS": "600000", "LEASE_TTL_S": "2"}
    ids = [
        insert_row(outbox, f"orders:{i % 3}", {"i": i, "note": "é"}, mutation_id=f"m{i}") for i in range(12)
    ]
    log = tmp_path / "connector.log"
    first = ConnectorProcess(env, log).start()
    first.wait_ready()
    deadline = time.monotonic() + 30
    while len(ably.messages()) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.metrics()["livesync_messages_encrypted_total"] == len(ids)
    first.kill()
    assert outbox_ids(outbox) == [(i, False) for i in ids], "the kill must leave the rows to replay"
    before = {m["id"]: m for m in ably.messages()}
    assert sorted(before) == sorted(str(i) for i in ids)
    with ConnectorProcess(env, log) as second:
        second.wait_ready()
        deadline = time.monotonic() + 30
        while ably.stats()["duplicates_dropped"] < len(ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert second.metrics()["livesync_messages_encrypted_total"] == len(ids)
        assert second.terminate() == 0, second.log_tail()
    assert ably.stats()["duplicates_dropped"] == len(ids), "the replay must carry the same ids"
    assert {m["id"]: m for m in ably.messages()} == before
    for msg in before.values():
        assert json.loads(decrypt_data(msg, KEY_128))["note"] == "é"
    text = log.read_text()
    assert "channel_cipher_key" in text, "the start-up line lists the settings"
    assert KEY_128 not in text
