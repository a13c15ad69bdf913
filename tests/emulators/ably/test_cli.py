"""``python -m emulators.ably`` as a subprocess, driven through AblyEmulatorAdmin."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from emulators.ably import AblyEmulatorAdmin
from emulators.ably.__main__ import parse_args

READY_PREFIX = "ably emulator listening on "
PROCESS_TIMEOUT_S = 15.0


@pytest.fixture
def cli_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The CLI on a free port with two keys and a 64-byte message limit; yields (process, url)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emulators.ably",
            "--port",
            "0",
            "--key",
            "app.key:secret",
            "--key",
            "app.two:other",
            "--max-message-size",
            "64",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # bounded by the pytest timeout; the process prints it at start
        assert line.startswith(READY_PREFIX), (
            line,
            process.stderr.read() if process.poll() is not None else "",
        )
        yield process, line[len(READY_PREFIX) :].strip()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=PROCESS_TIMEOUT_S)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_cli_prints_one_ready_line_serves_and_stops_on_sigterm(
    cli_process: tuple[subprocess.Popen[str], str],
) -> None:
    process, url = cli_process
    admin = AblyEmulatorAdmin(url)
    with httpx.Client(base_url=url, auth=("app.two", "other"), headers={"X-Ably-Version": "6"}) as http:
        assert http.post("/channels/c/messages", json={"id": "1", "data": "x"}).status_code == 201
        assert http.post("/channels/c/messages", json={"data": "x" * 65}).status_code == 413
        admin.fault(status=503, code=50003, count=1)
        assert http.post("/channels/c/messages", json={"data": "y"}).status_code == 503
        assert admin.faults() == []
        admin.fault(status=500)
        admin.clear()
        assert http.post("/channels/c/messages", json={"data": "z"}).status_code == 201
    assert [m["data"] for m in admin.messages("c")] == ["x", "z"]
    assert [m["data"] for m in admin.messages(since=1)] == ["z"]
    assert admin.stats()["faults_served"] == 1
    assert admin.configure(latency_ms=5)["latency_ms"] == 5
    admin.reset()
    assert admin.messages() == []

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=PROCESS_TIMEOUT_S) == 0
    assert process.stdout is not None
    assert process.stdout.read() == ""  # exactly one line was printed


async def test_async_admin_client_against_the_cli(cli_process: tuple[subprocess.Popen[str], str]) -> None:
    _, url = cli_process
    admin = AblyEmulatorAdmin(url)
    async with httpx.AsyncClient(
        base_url=url, auth=("app.key", "secret"), headers={"X-Ably-Version": "6"}
    ) as http:
        await admin.afault(mode="partial", channels=["b"], code=50000, count=1)
        assert [f["mode"] for f in await admin.afaults()] == ["partial"]
        response = await http.post("/messages", json={"channels": ["a", "b"], "messages": {"data": "d"}})
        assert response.json()["error"]["code"] == 40020
    assert [m["channel"] for m in await admin.amessages()] == ["a"]
    assert (await admin.astats())["status_counts"] == {"400": 1}
    await admin.aclear()
    assert (await admin.aconfigure(channel_rate_limit=3))["channel_rate_limit"] == 3
    assert (await admin.aconfigure(batch_response="by_version"))["batch_response"] == "by_version"
    fault = (await admin.afault(mode="partial", channels="c", entries=[0], code=42913))["faults"][0]
    assert (fault["entries"], fault["status"]) == ([0], 429)
    await admin.areset()
    assert await admin.amessages() == []


def test_cli_rejects_a_malformed_key_with_status_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "emulators.ably", "--port", "0", "--key", "nocolon"],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 2
    assert "appId.keyId:secret" in result.stderr
    assert result.stdout == ""


def test_cli_exits_1_when_the_port_is_taken(cli_process: tuple[subprocess.Popen[str], str]) -> None:
    _, url = cli_process
    port = url.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, "-m", "emulators.ably", "--port", port],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


def test_refuse_through_the_admin_client_answers_then_refuses_then_recovers(
    cli_process: tuple[subprocess.Popen[str], str],
) -> None:
    _, url = cli_process
    admin = AblyEmulatorAdmin(url)
    answer = admin.fault(mode="refuse", duration_s=0.5)
    assert answer["faults"][0]["mode"] == "refuse"
    # Refused, or (a connection that reached the backlog as the listener closed, right after the answer)
    # reset or closed unanswered: never served.
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        admin.stats()
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while True:
        try:
            stats = admin.stats()
            break
        except httpx.ConnectError:
            assert time.monotonic() < deadline, "the emulator did not listen again"
            time.sleep(0.05)
    assert stats["messages_delivered"] == 0


def test_cli_batch_response_option() -> None:
    assert parse_args([]).batch_response == "legacy"
    assert parse_args(["--batch-response", "by_version"]).batch_response == "by_version"
    with pytest.raises(SystemExit):
        parse_args(["--batch-response", "v3"])
