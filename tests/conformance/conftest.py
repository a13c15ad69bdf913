"""Conformance fixtures: one MongoDB (the emulator, or `MONGODB_TEST_URI`) for the whole session."""

from __future__ import annotations

import asyncio

import pytest

from tests.conformance.specs import ServerInfo
from tests.conformance.unified import detect_server


@pytest.fixture(scope="session")
def conformance_uri(mongo_uri: str) -> str:
    """The session's one MongoDB (tests/conftest.py): the emulator, or `MONGODB_TEST_URI`."""
    return mongo_uri


@pytest.fixture(scope="session")
def conformance_server(conformance_uri: str) -> ServerInfo:
    """Version and topology the server reports; the spec's runOnRequirements are judged against it."""
    return asyncio.run(detect_server(conformance_uri))
