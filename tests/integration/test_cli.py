"""`livesync-connector check`, `token show` and `token reset` against the emulators."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from connector.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def env(connector_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in connector_env.items():
        monkeypatch.setenv(name, value)
    return connector_env


def test_check_passes_and_publishes_nothing(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], ably: Any
) -> None:
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "replica set" in out
    assert "change stream opens" in out
    assert "supports $changeStreamSplitLargeEvent: events over 16 MiB are split and reassembled" in out
    assert "Ably credentials accepted" in out
    assert "all checks passed" in out
    assert ably.messages() == []


def test_check_warns_when_the_server_cannot_split_large_events(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.sources.mongodb.client import Mongo

    async def old_server(self: Mongo) -> tuple[int, ...]:
        return (6, 0, 8)

    monkeypatch.setattr(Mongo, "server_version", old_server)
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert "MongoDB 6.0.8 has no $changeStreamSplitLargeEvent" in out
    assert "published without its document bodies" in out


def test_check_reports_a_wrong_ably_key(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ABLY_API_KEY", "testapp.key1:not-the-secret")
    assert main(["check"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  Ably" in out
    assert "not-the-secret" not in out


def test_check_names_an_unreachable_mongodb_in_one_line(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300")
    assert main(["check"]) == 1
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "MongoDB" in line]
    assert line == "FAIL  MongoDB unreachable: cannot connect to 127.0.0.1:1: connection refused (code 72003)"


def test_check_reports_missing_pre_images(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sync_db: Any
) -> None:
    sync_db.create_collection("orders")
    monkeypatch.setenv("FULL_DOCUMENT_BEFORE_CHANGE", "required")
    assert main(["check"]) == 1
    assert "pre- and post-images are not enabled on orders" in capsys.readouterr().out
    sync_db.command({"collMod": "orders", "changeStreamPreAndPostImages": {"enabled": True}})
    assert main(["check"]) == 0
    assert "pre- and post-images enabled" in capsys.readouterr().out


def test_check_with_bad_variables_prints_one_line_each_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MONGODB_DATABASE", "")
    monkeypatch.setenv("FULL_DOCUMENT", "sometimes")
    monkeypatch.setenv("ABLY_API_KEY", "nonsense")
    monkeypatch.setenv("PIPELINE", "[]")
    assert main(["check"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "livesync-connector: invalid configuration:"
    assert sorted(line.split(":")[0].strip() for line in err[1:]) == [
        "ABLY_API_KEY",
        "FULL_DOCUMENT",
        "MONGODB_DATABASE",
    ]
    assert "Traceback" not in "\n".join(err)


def test_invalid_pipeline_exits_2_with_72005(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIPELINE", '[{"$lookup": {"from": "x"}}]')
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "72005" in err and "$lookup" in err


def test_token_show_and_reset(env: dict[str, str], capsys: pytest.CaptureFixture[str], sync_db: Any) -> None:
    connector_id = env["MONGODB_DATABASE"] + ".orders"
    assert main(["token", "show"]) == 0
    assert "no resume token stored" in capsys.readouterr().out
    sync_db.ably.insert_one(
        {"_id": connector_id, "resumeToken": {"_data": "82ABCDEF"}, "namespace": connector_id}
    )
    assert main(["token", "show"]) == 0
    shown = capsys.readouterr().out
    assert "82ABCDEF" in shown
    assert "lease: never held" in shown
    assert main(["token", "reset"]) == 2  # refuses without --yes
    assert sync_db.ably.count_documents({}) == 1
    assert main(["token", "reset", "--yes"]) == 0
    assert "deleted" in capsys.readouterr().out
    assert sync_db.ably.count_documents({}) == 0


def test_token_commands_act_on_this_partitions_own_document(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sync_db: Any
) -> None:
    connector_id = env["MONGODB_DATABASE"] + ".orders"
    monkeypatch.setenv("PARTITIONS", "3")
    monkeypatch.setenv("PARTITION", "1")
    for k in range(3):
        sync_db.ably.insert_one({"_id": f"{connector_id}#{k}of3", "resumeToken": {"_data": f"82P{k}"}})
    assert main(["token", "show"]) == 0
    shown = capsys.readouterr().out
    assert "82P1" in shown and "82P0" not in shown and "82P2" not in shown
    assert main(["token", "reset", "--yes"]) == 0
    assert f"deleted the resume token for '{connector_id}#1of3'" in capsys.readouterr().out
    assert sorted(d["_id"] for d in sync_db.ably.find()) == [f"{connector_id}#0of3", f"{connector_id}#2of3"]


def test_unreadable_stored_token_exits_1_with_72006(
    env: dict[str, str], sync_db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sync_db.ably.insert_one({"_id": env["MONGODB_DATABASE"] + ".orders", "resumeToken": "garbage"})
    assert main(["run"]) == 1
    assert any(getattr(r, "code", None) == 72006 for r in caplog.records)


def test_busy_http_port_exits_1_with_a_clear_line(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        monkeypatch.setenv("HTTP_PORT", str(busy.getsockname()[1]))
        assert main(["run"]) == 1
    assert any("cannot serve health checks on HTTP_PORT" in r.getMessage() for r in caplog.records)


async def test_token_show_names_the_lease_holder_and_reset_keeps_the_lease(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], sync_db: Any, ably: Any
) -> None:
    from connector.config import load_settings
    from tests.integration.harness import connector, until

    async with connector(env, INSTANCE_ID="sidecar-a") as running:
        await until(lambda: running.term.checkpointer.stores >= 1, what="the first position")
        assert await asyncio.to_thread(main, ["token", "show"]) == 0
        shown = capsys.readouterr().out
        assert "lease: held; last holder sidecar-a at epoch 1" in shown
    assert await asyncio.to_thread(main, ["token", "show"]) == 0
    assert "lease: free (expired or released); last holder sidecar-a at epoch 1" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["token", "reset", "--yes"]) == 0
    doc = sync_db.ably.find_one({"_id": load_settings(env, env_file=None).connector_id})
    assert "resumeToken" not in doc
    assert doc["lease"]["owner"] == "sidecar-a"
