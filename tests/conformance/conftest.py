"""Conformance fixtures: one MongoDB (the emulator, or `MONGODB_TEST_URI`) for the whole session."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from tests.conformance.server import URI_ENV, emulator_unavailable_reason, mongodb_uri
from tests.conformance.specs import ServerInfo
from tests.conformance.unified import detect_server


@pytest.fixture(scope="session")
def conformance_uri() -> Iterator[str]:
    """Connection string of the server under test, started once for the whole session."""
    if not os.environ.get(URI_ENV):
        reason = emulator_unavailable_reason()
        if reason is not None:
            pytest.skip(reason)
    with mongodb_uri() as uri:
        yield uri


@pytest.fixture(scope="session")
def conformance_server(conformance_uri: str) -> ServerInfo:
    """Version and topology the server reports; the spec's runOnRequirements are judged against it."""
    return asyncio.run(detect_server(conformance_uri))
