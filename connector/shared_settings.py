"""The settings every source shares (Ably, publishing, the lease, HTTP, logging), and the helpers each
source's own settings use (`connector/sources/<name>/settings.py`).

`connector/config.py` composes the one `Settings` from these and the sources' parts, and loads it from
the environment. Each part is a pydantic model whose validators raise ValueError with the text printed
after "VARIABLE: ".
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any, Literal, NamedTuple, get_args

import orjson
from pydantic import BaseModel, Field, PrivateAttr, SecretStr, field_validator
from pydantic.fields import FieldInfo

from connector.ably.cipher import decode_key, parse_key_map
from connector.ably.oversize import OnOversize

OnUnpublishable = Literal["deadletter", "skip", "fail"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["json", "text"]
#: The sources' names (connector/sources/registry.py maps each to its package).
Source = Literal["mongodb", "postgres"]

DEFAULT_ABLY_REST_URL = "https://main.realtime.ably.net"
#: Ably's documented fallback hosts for the default endpoint (client library spec RSC15).
DEFAULT_FALLBACK_HOSTS: tuple[str, ...] = tuple(
    f"main.{letter}.fallback.ably-realtime.com" for letter in "abcde"
)

_API_KEY_RE = re.compile(r"^[^.:\s]+\.[^.:\s]+:\S+$")
#: A fallback entry: `host`, `host:port` or `http(s)://host[:port]` (a local emulator speaks plain http).
_HOST_RE = re.compile(r"^(https?://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?/?$")


def choices(field: FieldInfo) -> tuple[str, ...]:
    """The spellings a Literal setting accepts."""
    return tuple(a for a in get_args(field.annotation) if isinstance(a, str))


def canonical_choice(cls: type[BaseModel], value: Any, info: Any) -> Any:
    """Accept any letter case (`updatelookup`, `info`) and store the documented spelling (a `before`
    validator for Literal settings)."""
    if isinstance(value, str) and info.field_name is not None:
        for choice in choices(cls.model_fields[info.field_name]):
            if choice.lower() == value.strip().lower():
                return choice
    return value


def split_userinfo(uri: str) -> tuple[str, str, str | None, str] | None:
    """(scheme, user, password or None, rest from '@') of a URI with credentials, else None."""
    scheme, sep, rest = uri.partition("://")
    # The userinfo ends at the last '@' before the query string (a password may contain '/').
    query = rest.find("?")
    at = rest.rfind("@", 0, query if query >= 0 else len(rest))
    if not sep or at < 0:
        return None
    user, colon, password = rest[:at].partition(":")
    return scheme, user, password if colon else None, rest[at:]


def mask_uri(uri: str) -> str:
    """`mongodb://user:secret@host/db` -> `mongodb://user:***@host/db`; anything else unchanged."""
    parts = split_userinfo(uri)
    if parts is None or parts[2] is None:
        return uri
    scheme, user, _password, rest = parts
    return f"{scheme}://{user}:***{rest}"


def uri_password(uri: str) -> str | None:
    parts = split_userinfo(uri)
    return parts[2] or None if parts else None


def default_instance_id() -> str:
    """`<hostname>-<pid>`: unique per process, and readable in logs and the lease document."""
    return f"{socket.gethostname()}-{os.getpid()}"


class CipherKeys(NamedTuple):
    """CHANNEL_CIPHER_KEY and CHANNEL_CIPHER_KEYS decoded (`connector.ably.cipher.cipher_from` uses them)."""

    default: bytes | None
    prefixes: dict[str, bytes]


class SourceSelection(BaseModel):
    """First of every part: the sources' validators look at it."""

    source: Source = "mongodb"

    _canonical = field_validator("source", mode="before")(classmethod(canonical_choice))


class CommonSettings(SourceSelection):
    """Ably, publishing, the lease, HTTP and logging: the same for every source."""

    ably_api_key: SecretStr
    ably_rest_url: str = DEFAULT_ABLY_REST_URL
    ably_fallback_hosts: list[str] = Field(default_factory=list)
    connector_id: str = ""
    on_unpublishable: OnUnpublishable = "deadletter"
    max_message_size: int = Field(default=65536, gt=0)
    on_oversize: OnOversize = "truncate"
    checkpoint_interval_ms: int = Field(default=1000, gt=0)
    http_port: int = Field(default=8080, ge=0, le=65535)
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "json"
    publish_batch_size: int = Field(default=1000, gt=0)
    publish_linger_ms: int = Field(default=0, ge=0)
    publish_concurrency: int = Field(default=8, gt=0)
    channel_rate_limit: float = Field(default=50.0, ge=0)
    channel_max_backlog: int = Field(default=250, gt=0)
    max_in_flight: int = Field(default=5000, gt=0)
    shutdown_grace_s: float = Field(default=25.0, ge=0)
    ably_request_timeout_s: float = Field(default=10.0, gt=0)
    lease_ttl_s: float = Field(default=10.0, ge=2)
    instance_id: str = ""
    #: End-to-end encryption of `data` (connector/ably/cipher.py): base64 of a 16- or 32-byte AES key.
    channel_cipher_key: SecretStr | None = None
    #: A JSON object from channel prefix to base64 key; the longest matching prefix wins.
    channel_cipher_keys: SecretStr | None = None

    #: Variables that look like ours but are not (a misspelt name), each with the closest known one.
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return list(self._warnings)

    _canonical_common = field_validator(
        "on_unpublishable", "on_oversize", "log_level", "log_format", mode="before"
    )(classmethod(canonical_choice))

    @field_validator("ably_api_key")
    @classmethod
    def _check_api_key(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not secret:
            raise ValueError("required")
        if not _API_KEY_RE.match(secret):
            # Never echo the value: it may be a real secret pasted in the wrong place.
            raise ValueError("must look like appId.keyId:secret")
        return value

    @field_validator("channel_cipher_key")
    @classmethod
    def _check_cipher_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            decode_key(value.get_secret_value())  # the message never quotes the key
        return value

    @field_validator("channel_cipher_keys")
    @classmethod
    def _check_cipher_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_key_map(value.get_secret_value())
        return value

    def cipher_keys(self) -> CipherKeys:
        default = self.channel_cipher_key
        prefixes = self.channel_cipher_keys
        return CipherKeys(
            decode_key(default.get_secret_value()) if default is not None else None,
            parse_key_map(prefixes.get_secret_value()) if prefixes is not None else {},
        )

    def cipher_secrets(self) -> list[str]:
        """The keys as written (for the log filter): the default, the map's text and each key in it."""
        out = []
        if self.channel_cipher_key is not None:
            out.append(self.channel_cipher_key.get_secret_value().strip())
        if self.channel_cipher_keys is not None:
            text = self.channel_cipher_keys.get_secret_value()
            out.append(text)
            out += [str(key).strip() for key in orjson.loads(text).values()]
        return out

    def cipher_redacted(self) -> dict[str, Any]:
        """The cipher settings for the start-up log line: whether a key is set, which prefixes have one."""
        keys = self.cipher_keys()
        return {
            "channel_cipher_key": "***" if keys.default is not None else None,
            "channel_cipher_keys": {prefix: "***" for prefix in keys.prefixes} or None,
        }

    @field_validator("ably_rest_url")
    @classmethod
    def _check_rest_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL (got {value!r})")
        return value.rstrip("/")

    @field_validator("ably_fallback_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [host.strip() for host in value.split(",") if host.strip()]
        if isinstance(value, list | tuple):
            bad = [h for h in value if not isinstance(h, str) or not _HOST_RE.match(h)]
            if bad:
                raise ValueError(
                    f"must be a comma list of host, host:port or http(s)://host[:port] (got {bad[0]!r})"
                )
            return list(value)
        return value

    @field_validator("connector_id")
    @classmethod
    def _check_connector_id(cls, value: str) -> str:
        if value != value.strip() or "\n" in value:
            raise ValueError(f"must not have surrounding spaces or newlines (got {value!r})")
        return value
