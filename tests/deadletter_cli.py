"""`livesync-connector deadletter ...` run in-process, for the MongoDB and the Postgres suites alike."""

from __future__ import annotations

import json

import pytest

from connector.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `deadletter <args>`."""
    status = main(["deadletter", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def listed(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    """The ids `deadletter list --json <args>` prints, in its order."""
    status, out, err = run(capsys, "list", "--json", *args)
    assert status == 0, err
    return [r["id"] for r in json.loads(out)]
