"""Channel encryption: Ably's own test vectors byte for byte, the key settings' validation, the key kept out
of logs, the redacted settings and `check`, and both sources' routers encrypting (sizes counted encrypted)."""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from bson import ObjectId
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from connector.ably.cipher import ChannelCipher, cipher_from, decode_key, sealed_size
from connector.ably.outbound import AblyMessage
from connector.ably.oversize import TRUNCATED_HEADER
from connector.ably.validation import message_size
from connector.check_report import Report, check_cipher
from connector.errors import UnpublishableEvent
from connector.logs import configure_logging
from connector.sources.mongodb.messages import make_router
from connector.sources.postgres.messages import OutboxRow, row_to_message
from tests.unit.settings_helpers import load_with, problems_with

FIXTURES = Path(__file__).parent / "fixtures"
KEY_256 = base64.b64encode(bytes(range(32))).decode()
KEY_128 = base64.b64encode(bytes(range(100, 116))).decode()
API_KEY = "appid.keyid:s3cr3t-Key-Value"
BASE = {"MONGODB_DATABASE": "shop", "ABLY_API_KEY": API_KEY, "PIPELINE": '[{"$match": {}}]'}


def vectors(bits: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    data = json.loads((FIXTURES / f"ably-crypto-data-{bits}.json").read_text())
    return data, data["items"]


def fixed_iv(iv: bytes) -> Any:
    def source(size: int) -> bytes:
        assert size == len(iv)
        return iv

    return source


@pytest.mark.parametrize("bits", [256, 128])
def test_every_ably_vector_is_reproduced_byte_for_byte(bits: int) -> None:
    data, items = vectors(bits)
    assert (data["algorithm"], data["mode"], data["keylength"]) == ("aes", "cbc", bits)
    key = base64.b64decode(data["key"])
    cipher = ChannelCipher(key, iv_source=fixed_iv(base64.b64decode(data["iv"])))
    for item in items:
        plain: AblyMessage = item["encoded"]
        sealed = cipher.seal(plain, "any")
        assert sealed == item["encrypted"]
        # The size Ably counts is the binary size, computed before encrypting.
        raw = base64.b64decode(plain["data"]) if plain.get("encoding") == "base64" else plain["data"].encode()
        assert len(base64.b64decode(sealed["data"])) == sealed_size(len(raw))
    assert cipher.sealed == len(items)


@pytest.mark.parametrize("bits", [256, 128])
def test_decrypt_undoes_every_ably_vector_and_refuses_the_wrong_key(bits: int) -> None:
    data, items = vectors(bits)
    key = base64.b64decode(data["key"])
    cipher = ChannelCipher(key)
    for item in items:
        plain, sealed = item["encoded"], item["encrypted"]
        raw = base64.b64decode(plain["data"]) if plain.get("encoding") == "base64" else plain["data"].encode()
        assert cipher.decrypt("any", sealed["data"]) == raw
    other = ChannelCipher(bytes(len(key)))
    with pytest.raises(ValueError, match="padding"):
        # A wrong key yields garbage whose last byte is rarely a valid padding; this vector's is not.
        other.decrypt("any", items[0]["encrypted"]["data"])
    with pytest.raises(ValueError, match="no cipher key"):
        ChannelCipher(None, {"secret:": key}).decrypt("public", items[0]["encrypted"]["data"])
    with pytest.raises(ValueError, match="whole AES blocks"):
        cipher.decrypt("any", base64.b64encode(b"short").decode())


def test_seal_leaves_id_name_and_extras_alone_and_draws_a_fresh_iv_each_time() -> None:
    cipher = ChannelCipher(base64.b64decode(KEY_256))
    message: AblyMessage = {"id": "t:1", "name": "insert", "data": '{"a":1}', "encoding": "json"}
    message["extras"] = {"headers": {"x-ably-models-event-uuid": "m1"}}
    first, second = cipher.seal(message, "c"), cipher.seal(message, "c")
    for sealed in (first, second):
        assert {k: v for k, v in sealed.items() if k not in ("data", "encoding")} == {
            k: v for k, v in message.items() if k not in ("data", "encoding")
        }
        assert sealed["encoding"] == "json/utf-8/cipher+aes-256-cbc/base64"
        assert decrypt(KEY_256, sealed["data"]) == b'{"a":1}'
    assert first["data"][:24] != second["data"][:24], "the same IV twice"
    assert message["data"] == '{"a":1}', "seal must not change its argument"


def decrypt(key_b64: str, data: str) -> bytes:
    raw = base64.b64decode(data)
    decryptor = Cipher(algorithms.AES(base64.b64decode(key_b64)), modes.CBC(raw[:16])).decryptor()
    padded = decryptor.update(raw[16:]) + decryptor.finalize()
    return padded[: -padded[-1]]


def test_longest_prefix_wins_and_the_default_covers_the_rest() -> None:
    default, short, long = bytes(32), bytes([1]) * 16, bytes([2]) * 32
    cipher = ChannelCipher(default, {"secure:": short, "secure:vip:": long})
    assert cipher.key_for("secure:vip:42") == long
    assert cipher.key_for("secure:7") == short
    assert cipher.key_for("public") == default
    assert ChannelCipher(None, {"secure:": short}).key_for("public") is None
    assert cipher.describe() == [
        "channels starting with 'secure:vip:': aes-256-cbc",
        "channels starting with 'secure:': aes-128-cbc",
        "every other channel: aes-256-cbc",
    ]
    message: AblyMessage = {"id": "1", "data": "x", "encoding": "json"}
    assert ChannelCipher(None, {"secure:": short}).seal(message, "public") is message


load = functools.partial(load_with, BASE)
problems = functools.partial(problems_with, BASE)


SECRET_LOOKING = "c2VjcmV0LWtleS1zZWNyZXQ="  # base64 of 16 + 1 bytes: wrong length, must not be echoed


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"CHANNEL_CIPHER_KEY": "not base64!"},
            "CHANNEL_CIPHER_KEY: must be base64 (standard alphabet, with padding), "
            "e.g. the output of `openssl rand -base64 32`",
        ),
        (
            {"CHANNEL_CIPHER_KEY": SECRET_LOOKING},
            "CHANNEL_CIPHER_KEY: must decode to 16 or 32 bytes (AES-128 or AES-256), got 17 bytes; "
            "make one with `openssl rand -base64 32`",
        ),
        (
            {"CHANNEL_CIPHER_KEY": base64.b64encode(bytes(24)).decode()},
            "CHANNEL_CIPHER_KEY: must decode to 16 or 32 bytes (AES-128 or AES-256), got 24 bytes; "
            "make one with `openssl rand -base64 32`",
        ),
        (
            {"CHANNEL_CIPHER_KEYS": "[1]"},
            "CHANNEL_CIPHER_KEYS: must be a JSON object from channel prefix to base64 key (got a list)",
        ),
        (
            {"CHANNEL_CIPHER_KEYS": "{nope"},
            "CHANNEL_CIPHER_KEYS: must be a JSON object from channel prefix to base64 key, "
            'e.g. {"secure:": "<key>"}',
        ),
        (
            {"CHANNEL_CIPHER_KEYS": json.dumps({"": KEY_256})},
            "CHANNEL_CIPHER_KEYS: a channel prefix must not be empty "
            "(CHANNEL_CIPHER_KEY is the key for every channel)",
        ),
        (
            {"CHANNEL_CIPHER_KEYS": json.dumps({"secure:": SECRET_LOOKING})},
            "CHANNEL_CIPHER_KEYS: the key for prefix 'secure:' must decode to 16 or 32 bytes (AES-128 or "
            "AES-256), got 17 bytes; make one with `openssl rand -base64 32`",
        ),
        (
            {"CHANNEL_CIPHER_KEYS": json.dumps({"secure:": 7})},
            "CHANNEL_CIPHER_KEYS: the key for prefix 'secure:' must be a base64 string",
        ),
    ],
)
def test_bad_keys_are_refused_with_one_clear_line(overrides: dict[str, str], expected: str) -> None:
    assert problems(**overrides) == [expected]


def test_keys_from_files_and_both_settings_together(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(KEY_256 + "\n")
    settings = load(CHANNEL_CIPHER_KEY_FILE=str(path), CHANNEL_CIPHER_KEYS=json.dumps({"s:": KEY_128}))
    cipher = cipher_from(settings)
    assert cipher is not None
    assert cipher.key_for("s:1") == base64.b64decode(KEY_128)
    assert cipher.key_for("x") == base64.b64decode(KEY_256)
    assert cipher_from(load()) is None
    assert problems(CHANNEL_CIPHER_KEY=KEY_256, CHANNEL_CIPHER_KEY_FILE=str(path)) == [
        "CHANNEL_CIPHER_KEY: set either CHANNEL_CIPHER_KEY or CHANNEL_CIPHER_KEY_FILE, not both"
    ]


def test_the_keys_never_reach_redacted_settings_repr_logs_or_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = load(CHANNEL_CIPHER_KEY=KEY_256, CHANNEL_CIPHER_KEYS=json.dumps({"secure:": KEY_128}))
    redacted = settings.redacted()
    assert redacted["channel_cipher_key"] == "***"
    assert redacted["channel_cipher_keys"] == {"secure:": "***"}
    shown = [repr(settings), str(settings), orjson.dumps(redacted, default=str).decode()]

    root = logging.getLogger()
    level = root.level
    buffer = io.StringIO()
    handler = configure_logging("DEBUG", "json", secrets=settings.secrets(), stream=buffer)
    try:
        log = logging.getLogger("connector.test_cipher")
        log.info("settings %s and key %s", settings.channel_cipher_key, KEY_256, extra={"k": KEY_128})
        assert settings.channel_cipher_keys is not None
        log.warning("keys map: %s", settings.channel_cipher_keys.get_secret_value())
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert buffer.getvalue().count("\n") == 2
    shown.append(buffer.getvalue())

    lines: list[str] = []
    report = Report(lines.append)
    check_cipher(settings, report)
    assert lines == [
        "ok    channel encryption: channels starting with 'secure:': aes-128-cbc",
        "ok    channel encryption: every other channel: aes-256-cbc",
    ]
    shown += lines
    for text in shown:
        assert KEY_256 not in text and KEY_128 not in text, text

    lines.clear()
    check_cipher(load(), report)
    assert lines == ["ok    channel encryption off (no CHANNEL_CIPHER_KEY or CHANNEL_CIPHER_KEYS)"]


# -- the routers -------------------------------------------------------------------------------------


def event(channel: str = "orders", body: str = "x") -> dict[str, Any]:
    return {
        "_id": {"_data": "8263A1"},
        "operationType": "insert",
        "documentKey": {"_id": ObjectId("65a000000000000000000001")},
        "fullDocument": {"_id": ObjectId("65a000000000000000000001"), "body": body},
        "_ablyChannel": channel,
        "_ablyMsgHeaders": {"x-ably-models-event-uuid": "m1"},
    }


def plain_and_sealed_mongo(ev: dict[str, Any], max_size: int, **cipher_args: Any) -> tuple[Any, Any]:
    plain = make_router(json_mode="relaxed", max_message_size=max_size)(0, ev)
    cipher = ChannelCipher(base64.b64decode(KEY_256), **cipher_args)
    sealed = make_router(json_mode="relaxed", max_message_size=max_size, cipher=cipher)(0, ev)
    return plain, sealed


def test_mongodb_router_encrypts_data_and_counts_the_encrypted_size() -> None:
    plain, sealed = plain_and_sealed_mongo(event(), 65536)
    assert sealed.message["encoding"] == "json/utf-8/cipher+aes-256-cbc/base64"
    assert decrypt(KEY_256, sealed.message["data"]).decode() == plain.message["data"]
    for field in ("id", "name", "extras"):
        assert sealed.message[field] == plain.message[field]
    data_len = len(plain.message["data"].encode())
    assert sealed.size == plain.size - data_len + sealed_size(data_len)
    assert sealed.size == message_size(
        sealed.message["name"], base64.b64decode(sealed.message["data"]), sealed.message["extras"]
    )


def test_mongodb_truncation_is_decided_on_the_encrypted_size() -> None:
    ev = event(body="y" * 200)
    plain = make_router(json_mode="relaxed", max_message_size=10**6)(0, ev)
    data_len = len(plain.message["data"].encode())
    # A limit the plain message fits and the encrypted one (padding and IV: 17 to 32 bytes more) does not.
    limit = plain.size + (sealed_size(data_len) - data_len) - 1
    fits, truncated = plain_and_sealed_mongo(ev, limit)
    assert TRUNCATED_HEADER not in fits.message["extras"]["headers"]
    assert truncated.message["extras"]["headers"][TRUNCATED_HEADER] == "true"
    assert truncated.message["extras"]["headers"]["x-livesync-original-size"] == str(limit + 1)
    assert truncated.message["encoding"] == "json/utf-8/cipher+aes-256-cbc/base64"
    assert b'"fullDocument"' not in decrypt(KEY_256, truncated.message["data"])
    assert truncated.size <= limit


def row(data: str | None = '{"total": 12}', channel: str = "orders") -> OutboxRow:
    return OutboxRow(7, "mut-1", channel, "order.created", False, data, '{"h": "v"}')


def test_postgres_row_encrypts_data_and_only_on_channels_with_a_key() -> None:
    cipher = ChannelCipher(None, {"secure:": base64.b64decode(KEY_128)})
    plain = row_to_message(0, row(channel="secure:1"), max_message_size=65536, token={})
    sealed = row_to_message(0, row(channel="secure:1"), max_message_size=65536, token={}, cipher=cipher)
    assert sealed.message["encoding"] == "json/utf-8/cipher+aes-128-cbc/base64"
    assert decrypt(KEY_128, sealed.message["data"]) == b'{"total": 12}'
    assert (sealed.message["id"], sealed.message["name"], sealed.message["extras"]) == (
        plain.message["id"],
        plain.message["name"],
        plain.message["extras"],
    )
    assert sealed.size == plain.size - 13 + sealed_size(13)
    clear = row_to_message(0, row(channel="public"), max_message_size=65536, token={}, cipher=cipher)
    assert clear.message["encoding"] == "json"
    no_data = row_to_message(
        0, row(data=None, channel="secure:1"), max_message_size=65536, token={}, cipher=cipher
    )
    assert "data" not in no_data.message and "encoding" not in no_data.message
    assert cipher.sealed == 1


def test_postgres_oversize_is_decided_on_the_encrypted_size() -> None:
    cipher = ChannelCipher(base64.b64decode(KEY_256))
    big = row(data=json.dumps({"note": "z" * 300}))
    plain = row_to_message(0, big, max_message_size=65536, token={})
    data_len = len(plain.message["data"].encode())
    limit = plain.size + (sealed_size(data_len) - data_len) - 1
    fits = row_to_message(0, big, max_message_size=limit, token={})
    assert "data" in fits.message
    truncated = row_to_message(0, big, max_message_size=limit, token={}, cipher=cipher)
    assert "data" not in truncated.message
    assert truncated.message["extras"]["headers"]["x-livesync-original-size"] == str(limit + 1)
    assert cipher.sealed == 0, "nothing left to encrypt"
    with pytest.raises(UnpublishableEvent, match="over MAX_MESSAGE_SIZE"):
        row_to_message(0, big, max_message_size=limit, token={}, on_oversize="deadletter", cipher=cipher)


def test_decode_key_accepts_both_lengths_and_surrounding_whitespace() -> None:
    assert decode_key(f" {KEY_256}\n") == bytes(range(32))
    assert len(decode_key(KEY_128)) == 16


def test_the_demo_view_reads_encrypted_messages_with_the_key() -> None:
    from demo.__main__ import ChannelView
    from demo.summary import RunSummary

    change = {"operationType": "insert", "documentKey": {"_id": "order-1"}, "fullDocument": {"total": 7}}
    plain: AblyMessage = {
        "id": "1",
        "name": "insert",
        "data": orjson.dumps(change).decode(),
        "encoding": "json",
    }
    sealed = dict(ChannelCipher(base64.b64decode(KEY_256)).seal(plain, "orders"))
    view = ChannelView(None, RunSummary(), KEY_256)  # type: ignore[arg-type]
    assert view._plaintext(sealed) == view._plaintext(dict(plain)) == change
    assert ChannelView(None, RunSummary())._plaintext(sealed) == {}, "without the key: nothing to show"  # type: ignore[arg-type]


def test_a_connector_without_a_key_never_loads_the_crypto_library() -> None:
    """`cryptography` costs about 7 MiB of memory: only a configured key loads it."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from connector.config import load_settings\n"
        "from connector.ably.cipher import cipher_from\n"
        "from connector.sources.mongodb.source import MongoSource\n"
        "from connector.sources.postgres.source import PostgresSource\n"
        "import connector.runtime\n"
        f"settings = load_settings({BASE!r}, env_file=None)\n"
        "assert cipher_from(settings) is None\n"
        "assert 'cryptography' not in sys.modules, 'loaded without a key'\n"
        f"keyed = load_settings({{**{BASE!r}, 'CHANNEL_CIPHER_KEY': {KEY_256!r}}}, env_file=None)\n"
        "assert cipher_from(keyed) is not None and 'cryptography' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
