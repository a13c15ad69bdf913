"""End-to-end channel encryption, as Ably's SDKs do it (client library spec RSL5, ably-js `Crypto`).

Only a message's `data` is encrypted: id, name and extras (headers) stay readable, so routing, idempotent
publishing and the Models SDK's headers keep working, and Ably never sees the key. The cipher is AES-CBC
with PKCS#7 padding and a random 16-byte IV per message written in front of the ciphertext; the result
goes out base64 over JSON, and the encoding chain records every step so that a client holding the key
(`channels.get(name, {cipher: {key}})`) undoes them in reverse:

    data = base64(IV + AES-CBC(PKCS#7(plaintext)))
    JSON object  -> plaintext = its utf-8 JSON; encoding "json/utf-8/cipher+aes-256-cbc/base64"
    string       -> plaintext = its utf-8;      encoding "utf-8/cipher+aes-256-cbc/base64"
    base64 bytes -> plaintext = the bytes;      encoding "cipher+aes-256-cbc/base64"

(`aes-128-cbc` for a 16-byte key.) A client without the key receives the ciphertext, encoding unchanged.

Size: Ably counts binary data sent base64 over a text transport by its decoded bytes ("How does Ably
measure message size?", Ably's FAQ), so an encrypted payload counts as IV + padded ciphertext,
`sealed_size(len(plaintext))`, never the longer base64 text. The routers measure that before encrypting,
so MAX_MESSAGE_SIZE and ON_OVERSIZE apply to the message as Ably will count it.

Keys: CHANNEL_CIPHER_KEY applies to every channel; CHANNEL_CIPHER_KEYS maps channel prefixes to keys of
their own (the longest matching prefix wins, the default key covers the rest; without a default, only
matching channels are encrypted).
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

import orjson

from connector.ably.outbound import AblyMessage

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers import algorithms

    from connector.shared_settings import CommonSettings

__all__ = [
    "BLOCK_SIZE",
    "KEY_SIZES",
    "ChannelCipher",
    "IvSource",
    "algorithm_name",
    "cipher_from",
    "decode_key",
    "parse_key_map",
    "sealed_size",
]

#: AES block size, and the IV's size (bytes).
BLOCK_SIZE: Final = 16
#: Key lengths Ably's SDKs accept for AES-CBC: 128 and 256 bits.
KEY_SIZES: Final = (16, 32)
#: Channel -> key lookups remembered (a stream reuses few channels); bounded, then looked up afresh.
KEY_CACHE_SIZE: Final = 10_000

#: n -> n random bytes: the IV of each message (tests inject a fixed one to reproduce Ably's vectors).
IvSource = Callable[[int], bytes]


def algorithm_name(key: bytes) -> str:
    """`aes-256-cbc` or `aes-128-cbc`: the name in the encoding chain (ably-js checks it against its own)."""
    return f"aes-{len(key) * 8}-cbc"


def sealed_size(plain_size: int) -> int:
    """Bytes of IV + ciphertext for `plain_size` bytes of plaintext (PKCS#7 always adds 1 to 16 bytes).

    This is what Ably counts for an encrypted payload (binary data, whatever its base64 length)."""
    return BLOCK_SIZE + (plain_size // BLOCK_SIZE + 1) * BLOCK_SIZE


def decode_key(text: str) -> bytes:
    """A base64 key as bytes; ValueError (never quoting the key) unless it is base64 of 16 or 32 bytes."""
    try:
        key = binascii.a2b_base64(text.strip(), strict_mode=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "must be base64 (standard alphabet, with padding), e.g. the output of `openssl rand -base64 32`"
        ) from None
    if len(key) not in KEY_SIZES:
        raise ValueError(
            f"must decode to 16 or 32 bytes (AES-128 or AES-256), got {len(key)} bytes; "
            "make one with `openssl rand -base64 32`"
        )
    return key


def parse_key_map(text: str) -> dict[str, bytes]:
    """CHANNEL_CIPHER_KEYS: a JSON object from channel prefix to base64 key; ValueError (naming the prefix,
    never a key) for anything else."""
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValueError(
            'must be a JSON object from channel prefix to base64 key, e.g. {"secure:": "<key>"}'
        ) from None
    if not isinstance(raw, dict):
        raise ValueError(
            f"must be a JSON object from channel prefix to base64 key (got a {type(raw).__name__})"
        )
    out: dict[str, bytes] = {}
    for prefix, key in raw.items():
        if not prefix:
            raise ValueError(
                "a channel prefix must not be empty (CHANNEL_CIPHER_KEY is the key for every channel)"
            )
        if not isinstance(key, str):
            raise ValueError(f"the key for prefix {prefix!r} must be a base64 string")
        try:
            out[prefix] = decode_key(key)
        except ValueError as exc:
            raise ValueError(f"the key for prefix {prefix!r} {exc}") from None
    return out


class ChannelCipher:
    """The keys, which channel each applies to, and the encryption of a message's data.

    `sealed` counts the messages encrypted (the metric livesync_messages_encrypted_total)."""

    def __init__(
        self,
        key: bytes | None = None,
        prefixes: Mapping[str, bytes] | None = None,
        *,
        iv_source: IvSource = os.urandom,
    ) -> None:
        for each in (key, *(prefixes or {}).values()):
            if each is not None and len(each) not in KEY_SIZES:
                raise ValueError(f"a cipher key must be 16 or 32 bytes, not {len(each)}")
        self.default_key = key
        # Longest first: the first match is the longest prefix.
        self.prefixes: tuple[tuple[str, bytes], ...] = tuple(
            sorted((prefixes or {}).items(), key=lambda item: len(item[0]), reverse=True)
        )
        self._iv_source = iv_source
        self._cache: dict[str, bytes | None] = {}
        # Imported here: a connector without a key never loads `cryptography` (about 7 MiB of memory).
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        self._cipher, self._algorithms, self._modes = Cipher, algorithms, modes
        self._aes: dict[bytes, algorithms.AES] = {}
        self._json_encodings = {size: f"json/utf-8/cipher+aes-{size * 8}-cbc/base64" for size in KEY_SIZES}
        self.sealed = 0

    def key_for(self, channel: str) -> bytes | None:
        """The key of `channel` (longest matching prefix, else the default), or None: sent in clear."""
        if not self.prefixes:
            return self.default_key
        try:
            return self._cache[channel]
        except KeyError:
            pass
        found = next((key for prefix, key in self.prefixes if channel.startswith(prefix)), self.default_key)
        if len(self._cache) >= KEY_CACHE_SIZE:
            self._cache.clear()
        self._cache[channel] = found
        return found

    def encrypt(self, key: bytes, plaintext: bytes) -> str:
        """base64(IV + AES-CBC(PKCS#7(plaintext))), with a fresh IV; counts one sealed message."""
        iv = self._iv_source(BLOCK_SIZE)
        pad = BLOCK_SIZE - len(plaintext) % BLOCK_SIZE
        aes = self._aes.get(key)
        if aes is None:
            aes = self._aes[key] = self._algorithms.AES(key)  # one per key: made, it checks the key
        encryptor = self._cipher(aes, self._modes.CBC(iv)).encryptor()
        sealed = iv + encryptor.update(plaintext + bytes((pad,)) * pad) + encryptor.finalize()
        self.sealed += 1
        return binascii.b2a_base64(sealed, newline=False).decode("ascii")

    def decrypt(self, channel: str, data: str) -> bytes:
        """The plaintext of `data` as `encrypt` made it for `channel` (a message Ably refused is
        dead-lettered as the change it carried, not as ciphertext). Raises ValueError."""
        key = self.key_for(channel)
        if key is None:
            raise ValueError(f"no cipher key applies to channel {channel!r}")
        try:
            sealed = binascii.a2b_base64(data)
        except binascii.Error as exc:
            raise ValueError(f"encrypted data is not base64: {exc}") from None
        if len(sealed) < 2 * BLOCK_SIZE or len(sealed) % BLOCK_SIZE:
            raise ValueError(f"encrypted data of {len(sealed)} bytes is not IV + whole AES blocks")
        aes = self._aes.get(key) or self._algorithms.AES(key)
        decryptor = self._cipher(aes, self._modes.CBC(sealed[:BLOCK_SIZE])).decryptor()
        padded = decryptor.update(sealed[BLOCK_SIZE:]) + decryptor.finalize()
        pad = padded[-1]
        if not 1 <= pad <= BLOCK_SIZE or padded[-pad:] != bytes((pad,)) * pad:
            raise ValueError("encrypted data has no valid PKCS#7 padding (another key?)")
        return padded[:-pad]

    def seal_json(self, key: bytes, json_bytes: bytes) -> tuple[str, str]:
        """(data, encoding) of an encrypted JSON payload given as its UTF-8 bytes (the routers' fast path)."""
        return self.encrypt(key, json_bytes), self._json_encodings[len(key)]

    def seal(self, message: AblyMessage, channel: str) -> AblyMessage:
        """`message` with its data encrypted for `channel` (a new dict; id, name and extras unchanged), or
        `message` itself when no key applies or it has no data.

        Data whose encoding ends in `base64` is binary: the bytes it encodes are encrypted (that step is
        undone first); any other string is encrypted as UTF-8 text, so a JSON payload gets
        `json/utf-8/cipher+aes-...-cbc/base64` (Ably's encoding chain, RSL4 and RSL5)."""
        key = self.key_for(channel)
        data = message.get("data")
        if key is None or data is None:
            return message
        encoding = message.get("encoding") or ""
        steps = encoding.split("/") if encoding else []
        if steps and steps[-1] == "base64":
            plaintext = binascii.a2b_base64(data)
            steps.pop()
        else:
            plaintext = data.encode("utf-8")
            steps.append("utf-8")
        steps += [f"cipher+{algorithm_name(key)}", "base64"]
        sealed: AblyMessage = {**message, "data": self.encrypt(key, plaintext), "encoding": "/".join(steps)}
        return sealed

    def describe(self) -> list[str]:
        """What is encrypted with what, without the keys (for `check`)."""
        lines = [f"channels starting with {prefix!r}: {algorithm_name(key)}" for prefix, key in self.prefixes]
        if self.default_key is not None:
            rest = "every other channel" if self.prefixes else "every channel"
            lines.append(f"{rest}: {algorithm_name(self.default_key)}")
        elif self.prefixes:
            lines.append("every other channel: not encrypted")
        return lines


def cipher_from(settings: CommonSettings, *, iv_source: IvSource = os.urandom) -> ChannelCipher | None:
    """The cipher CHANNEL_CIPHER_KEY / CHANNEL_CIPHER_KEYS configure, or None (nothing encrypted)."""
    keys = settings.cipher_keys()
    if keys.default is None and not keys.prefixes:
        return None
    return ChannelCipher(keys.default, keys.prefixes, iv_source=iv_source)
