"""Logging setup: one JSON object per line (the sidecar default) or plain text, secrets always masked.

Masking happens twice, on purpose. `SecretMaskFilter`, on the handler, rewrites each record before any
formatter sees it: the rendered message (args folded in), string extras (recursively), the traceback
and the stack. Then the formatters mask their final output again, so a secret that reaches the text
some other way (a formatter field, an exception `__str__` computed late) is still caught. Masked are
every value given to `register_secret()` (the API key, its secret part, the MongoDB password) and any
`user:password@` inside a URI.

Usage:
    configure_logging("INFO", "json", secrets=settings.secrets())
    log.error("publish failed: %s", err, extra={"code": 72001, "channel": ch})
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable
from typing import IO, Any, Literal

from pythonjsonlogger.json import JsonFormatter

__all__ = [
    "CHATTY_LOGGERS",
    "MASK",
    "JsonLogFormatter",
    "SecretMaskFilter",
    "TextLogFormatter",
    "configure_logging",
    "mask_secrets",
    "register_secret",
]

MASK = "***"
#: Shorter values would mask ordinary words; URI passwords are masked by pattern whatever their length.
MIN_SECRET_LENGTH = 4
#: `scheme://user:password@` anywhere in a text; the password stops at '@' or whitespace.
_URI_PASSWORD_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)([^\s@]+)@")
#: Libraries that log one INFO line per HTTP request (every publish, every health probe): at INFO the
#: connector's own lifecycle lines would drown. They speak again at DEBUG.
CHATTY_LOGGERS: tuple[str, ...] = ("httpx", "httpcore", "hpack")
#: Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

_secrets: frozenset[str] = frozenset()
_secrets_lock = threading.Lock()


def register_secret(secret: str | None) -> None:
    """Mask `secret` (and its JSON-escaped form) in every log line from now on."""
    global _secrets
    if not secret or len(secret) < MIN_SECRET_LENGTH:
        return
    escaped = json.dumps(secret)[1:-1]
    with _secrets_lock:
        _secrets = _secrets | {secret, escaped}


def mask_secrets(text: str) -> str:
    """`text` with every registered secret and every URI password replaced by ***."""
    if "://" in text:
        text = _URI_PASSWORD_RE.sub(rf"\1{MASK}@", text)
    # Longest first, so a secret that contains another is masked whole.
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, dict):
        return {k: _mask_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(v) for v in value]
    if isinstance(value, BaseException):
        return mask_secrets(str(value))
    return value


class SecretMaskFilter(logging.Filter):
    """Rewrites a record so that no registered secret or URI password survives in it."""

    _tb_formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception as exc:  # a filter that raises fails the call that logged
            # A library's message object that cannot render itself (PyMongo's command log of a document
            # holding invalid UTF-8): the record goes out without it, and the code that logged goes on.
            message = f"unprintable {type(record.msg).__name__} message ({type(exc).__name__}: {exc})"
        record.msg = mask_secrets(message)
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS:
                setattr(record, key, _mask_value(value))
        if record.exc_info:
            record.exc_text = mask_secrets(self._tb_formatter.formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


def _iso_time(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class JsonLogFormatter(JsonFormatter):
    """`{"time", "level", "logger", "message", ...extras}` per line, masked once more at the end."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            json_ensure_ascii=False,
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso_time(record)

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


class TextLogFormatter(logging.Formatter):
    """`time LEVEL logger: message [code=72001 ...]` per line, masked once more at the end."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso_time(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = [f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD_ATTRS]
        if extras:
            head, sep, tail = text.partition("\n")
            text = f"{head} [{' '.join(extras)}]{sep}{tail}"
        return mask_secrets(text)


def configure_logging(
    level: str,
    fmt: Literal["json", "text"],
    *,
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send all logging to `stream` (default stderr) at `level`, formatted as `fmt`, secrets masked.

    Replaces handlers installed by an earlier call (idempotent), and returns the new handler. Below
    DEBUG, per-request INFO lines of `CHATTY_LOGGERS` are silenced.
    """
    for secret in secrets:
        register_secret(secret)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(SecretMaskFilter())
    handler.setFormatter(JsonLogFormatter() if fmt == "json" else TextLogFormatter())
    handler.set_name("livesync-connector")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "livesync-connector"]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if level.upper() == "DEBUG" else logging.WARNING)
    return handler
