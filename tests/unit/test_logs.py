"""Logging: JSON and text shapes, and that secrets never reach the formatted output."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Callable, Iterator

import pytest

from connector.config import load_settings
from connector.logs import (
    CHATTY_LOGGERS,
    MASK,
    SecretMaskFilter,
    configure_logging,
    mask_secrets,
    register_secret,
)

SECRET = "Zx9-very-secret-part"
API_KEY = f"app1.key1:{SECRET}"
PASSWORD = "pa55w0rd-xyz"

Capture = Callable[[str], io.StringIO]


@pytest.fixture
def capture() -> Iterator[Capture]:
    """Configure logging into a buffer; restore the root logger afterwards."""
    root = logging.getLogger()
    level = root.level
    installed: list[logging.Handler] = []

    def setup(fmt: str) -> io.StringIO:
        buffer = io.StringIO()
        installed.append(configure_logging("DEBUG", fmt, secrets=[API_KEY, SECRET], stream=buffer))  # type: ignore[arg-type]
        return buffer

    yield setup
    for handler in installed:
        root.removeHandler(handler)
    root.setLevel(level)


def lines(buffer: io.StringIO) -> list[str]:
    return buffer.getvalue().splitlines()


def raise_with(text: str) -> None:
    raise RuntimeError(text)


def test_json_lines_have_time_level_logger_message_and_extras(capture: Capture) -> None:
    out = capture("json")
    logging.getLogger("connector.test").warning("publish failed for %s", "ch", extra={"code": 72001, "n": 3})
    (line,) = lines(out)
    record = json.loads(line)
    assert record["level"] == "WARNING"
    assert record["logger"] == "connector.test"
    assert record["message"] == "publish failed for ch"
    assert (record["code"], record["n"]) == (72001, 3)
    assert record["time"].endswith("Z") and record["time"][10] == "T"


def test_text_lines_carry_extras(capture: Capture) -> None:
    out = capture("text")
    logging.getLogger("connector.test").error("no channel", extra={"code": 72004})
    (line,) = lines(out)
    assert line.endswith(" ERROR connector.test: no channel [code=72004]")


def test_configure_twice_replaces_handler(capture: Capture) -> None:
    capture("json")
    second = capture("text")
    logging.getLogger("connector.test").info("once")
    assert len(lines(second)) == 1
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "livesync-connector"]
    assert len(ours) == 1


def test_level_is_applied(capture: Capture) -> None:
    out = io.StringIO()
    handler = configure_logging("warning", "text", stream=out)
    try:
        logging.getLogger("connector.test").info("hidden")
        logging.getLogger("connector.test").warning("shown")
    finally:
        logging.getLogger().removeHandler(handler)
    assert [line.rsplit(": ", 1)[1] for line in lines(out)] == ["shown"]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_secrets_masked_in_message_args_and_extras(capture: Capture, fmt: str) -> None:
    out = capture(fmt)
    log = logging.getLogger("connector.test")
    log.info("key is %s", API_KEY)
    log.info(f"inline {SECRET}")
    log.info(
        "extra", extra={"detail": {"nested": [f"x{SECRET}y"]}, "flat": SECRET, "err": ValueError(SECRET)}
    )
    text = out.getvalue()
    assert SECRET not in text
    assert text.count(MASK) >= 5


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_secrets_masked_in_exceptions_and_tracebacks(capture: Capture, fmt: str) -> None:
    out = capture(fmt)
    log = logging.getLogger("connector.test")
    try:
        raise_with(f"auth failed for {API_KEY} at mongodb://app:{PASSWORD}@db:27017/")
    except RuntimeError as exc:
        log.exception("boom")
        log.error("failed: %s", exc)
        log.error("with info", exc_info=sys.exc_info())
    log.warning("where", stack_info=True, extra={"uri": f"mongodb://app:{PASSWORD}@db/"})
    text = out.getvalue()
    assert "Traceback (most recent call last)" in text
    assert "raise_with" in text
    assert SECRET not in text and PASSWORD not in text
    assert "mongodb://app:***@db" in text


def test_uri_passwords_masked_without_registration(capture: Capture) -> None:
    out = capture("json")
    logging.getLogger("connector.test").info("connecting to %s", "mongodb+srv://u:Unregistered1@c.example/")
    assert "Unregistered1" not in out.getvalue()
    assert "mongodb+srv://u:***@c.example/" in json.loads(out.getvalue())["message"]


def test_json_escaped_secret_is_masked(capture: Capture) -> None:
    tricky = 'quote"and\\slash-secret'
    register_secret(tricky)
    out = capture("json")
    logging.getLogger("connector.test").info("value", extra={"v": tricky})
    logging.getLogger("connector.test").info("again %s", tricky)
    assert tricky not in out.getvalue()
    assert json.dumps(tricky)[1:-1] not in out.getvalue()


def test_short_values_are_not_registered() -> None:
    register_secret("ab")
    register_secret("")
    register_secret(None)
    assert mask_secrets("tab stop ab") == "tab stop ab"


def test_settings_secrets_feed_the_filter(capture: Capture) -> None:
    settings = load_settings(
        {
            "MONGODB_DATABASE": "d",
            "PIPELINE": "[]",
            "ABLY_API_KEY": "a.b:Settings-Secret-42",
            "MONGODB_URI": "mongodb://u:Pw%2Fsettings@h/",
        },
        env_file=None,
    )
    buffer = io.StringIO()
    handler = configure_logging("INFO", "json", secrets=settings.secrets(), stream=buffer)
    try:
        log = logging.getLogger("connector.test")
        log.info("raw %s %s", "Settings-Secret-42", "Pw/settings")
        log.info("settings %s", settings.redacted())
    finally:
        logging.getLogger().removeHandler(handler)
    text = buffer.getvalue()
    assert "Settings-Secret-42" not in text and "Pw/settings" not in text and "Pw%2Fsettings" not in text


def test_per_request_library_lines_silenced_below_debug(capture: Capture) -> None:
    out = io.StringIO()
    handler = configure_logging("INFO", "text", stream=out)
    try:
        logging.getLogger("httpx").info('HTTP Request: POST https://x/messages "HTTP/1.1 201 Created"')
        logging.getLogger("httpx").warning("retrying")
        handler = configure_logging("DEBUG", "text", stream=out)
        logging.getLogger("httpx").info("now visible")
    finally:
        logging.getLogger().removeHandler(handler)
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
    assert [line.rsplit(": ", 1)[1] for line in lines(out)] == ["retrying", "now visible"]


def test_a_message_that_cannot_render_is_logged_without_failing_the_call() -> None:
    """PyMongo's DEBUG command log renders the command's documents lazily; one holding invalid UTF-8
    raises when rendered, and an exception out of a handler's filter would fail the command itself."""

    class Unprintable:
        def __str__(self) -> str:
            raise ValueError("'utf-8' codec can't decode byte 0xff")

    record = logging.LogRecord("pymongo.command", logging.DEBUG, __file__, 1, Unprintable(), None, None)
    assert SecretMaskFilter().filter(record) is True
    assert record.getMessage() == (
        "unprintable Unprintable message (ValueError: 'utf-8' codec can't decode byte 0xff)"
    )
