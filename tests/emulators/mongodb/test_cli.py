"""`python -m emulators.mongodb`: prints one URI line once listening, serves drivers, stops on SIGTERM.

Subprocess tests (the demo, e2e tests and docker-less CI start the emulator this way).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

#: Needs a MongoDB server: the emulator, or MONGODB_TEST_URI.
pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
#: Bound on start-up (import + bind) and on a clean shutdown after SIGTERM.
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
SERVER_SELECTION_TIMEOUT_MS = 10_000
WATCH_ON_STANDALONE = 40573


@asynccontextmanager
async def emulator_process(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Start the CLI on a free port; yield (process, uri); kill it if a test left it running."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "emulators.mongodb",
        "--port",
        "0",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(START_TIMEOUT_S):
            line = (await process.stdout.readline()).decode().strip()
        assert line.startswith("mongodb://"), line
        yield process, line
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.usefixtures("emulator_only")
async def test_cli_prints_uri_serves_and_stops_on_sigterm() -> None:
    async with emulator_process("--replset", "rsCli") as (process, uri):
        assert "replicaSet=rsCli" in uri
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS
        )
        try:
            await client["db"]["c"].insert_one({"_id": 1})
            assert await client["db"]["c"].find_one() == {"_id": 1}
            hello = await client.admin.command("hello")
            assert hello["setName"] == "rsCli"
        finally:
            await client.close()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STOP_TIMEOUT_S):
            assert await process.wait() == 0
        assert process.stdout is not None
        assert await process.stdout.read() == b""  # exactly one line was printed


@pytest.mark.usefixtures("emulator_only")
async def test_standalone_refuses_change_streams_with_40573() -> None:
    async with emulator_process("--standalone") as (process, uri):
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri, directConnection=True, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS
        )
        try:
            hello = await client.admin.command("hello")
            assert "setName" not in hello
            await client["db"]["c"].insert_one({"_id": 1})
            with pytest.raises(OperationFailure) as excinfo:
                await client["db"]["c"].watch()
            assert excinfo.value.code == WATCH_ON_STANDALONE
        finally:
            await client.close()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STOP_TIMEOUT_S):
            assert await process.wait() == 0
