"""Reading encrypted messages back in tests, as a subscriber holding the key does (ably-js's decoding:
base64, then AES-CBC with the IV in front, then PKCS#7 unpadding, then UTF-8): shared by the MongoDB and
Postgres integration suites."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

#: A 32-byte key (AES-256) and a 16-byte one (AES-128), base64 as CHANNEL_CIPHER_KEY takes them.
KEY_256 = base64.b64encode(bytes(range(1, 33))).decode()
KEY_128 = base64.b64encode(bytes(range(64, 80))).decode()


def decrypt_data(message: Mapping[str, Any], key_b64: str) -> str:
    """The plaintext JSON text of an encrypted message; AssertionError if its encoding is not the cipher's."""
    key = base64.b64decode(key_b64)
    assert message["encoding"] == f"json/utf-8/cipher+aes-{len(key) * 8}-cbc/base64", message["encoding"]
    raw = base64.b64decode(message["data"], validate=True)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(raw[:16])).decryptor()
    padded = decryptor.update(raw[16:]) + decryptor.finalize()
    pad = padded[-1]
    assert 1 <= pad <= 16 and padded.endswith(bytes((pad,)) * pad), "bad PKCS#7 padding"
    return padded[:-pad].decode("utf-8")
