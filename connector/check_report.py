"""What both sources' `check` commands share: one line per check, and the Ably credential check.

Each check prints `ok`, `warn` or `FAIL` (with the reason and the managed connector's code); the exit status
is 0 only when every check passed.
"""

from __future__ import annotations

from collections.abc import Callable

from connector.ably.cipher import cipher_from
from connector.ably.client import ably_from
from connector.config import Settings
from connector.errors import AblyError

Out = Callable[[str], None]


class Report:
    def __init__(self, out: Out) -> None:
        self._out = out
        self.failed = 0

    def ok(self, what: str) -> None:
        self._out(f"ok    {what}")

    def warn(self, what: str) -> None:
        self._out(f"warn  {what}")

    def fail(self, what: str, code: int) -> None:
        self.failed += 1
        self._out(f"FAIL  {what} (code {code})")

    def finish(self) -> int:
        """Print the verdict line; the exit status."""
        self._out("all checks passed" if not self.failed else f"{self.failed} check(s) failed")
        return 0 if not self.failed else 1


def check_cipher(settings: Settings, report: Report) -> None:
    """Which channels are encrypted, with what (never the key: configuration already validated it)."""
    cipher = cipher_from(settings)
    if cipher is None:
        report.ok("channel encryption off (no CHANNEL_CIPHER_KEY or CHANNEL_CIPHER_KEYS)")
        return
    for line in cipher.describe():
        report.ok(f"channel encryption: {line}")


async def check_ably(settings: Settings, report: Report) -> None:
    """The channel encryption in use, and the key is accepted (an authenticated read; nothing is
    published)."""
    check_cipher(settings, report)
    client = ably_from(settings)
    try:
        await client.check_credentials()
        report.ok(f"Ably credentials accepted by {settings.ably_rest_url}")
    except AblyError as exc:
        report.fail(f"Ably: {exc}", exc.code)
    finally:
        await client.aclose()
