"""Configuration: defaults, every validation rule with its exact one-line message, .env, _FILE, masking."""

from __future__ import annotations

from pathlib import Path

import pytest
from bson.timestamp import Timestamp
from pydantic import ValidationError

from connector.config import DEFAULT_FALLBACK_HOSTS, Settings, load_settings, mask_uri
from connector.errors import ConfigError, PipelineError

KEY = "appid.keyid:s3cr3t-Key-Value"
PIPELINE = '[{"$addFields": {"_ablyChannel": "$ns.coll"}}]'
BASE = {"MONGODB_DATABASE": "shop", "ABLY_API_KEY": KEY, "PIPELINE": PIPELINE}


def load(**overrides: str) -> Settings:
    env = {**BASE, **overrides}
    return load_settings({k: v for k, v in env.items() if v is not None}, env_file=None)


def problems(**overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(**overrides)
    return info.value.problems


def only_problem(**overrides: str) -> str:
    found = problems(**overrides)
    assert len(found) == 1, found
    return found[0]


def test_defaults() -> None:
    s = load()
    assert s.mongodb_uri == "mongodb://localhost:27017"
    assert (s.mongodb_database, s.mongodb_collection) == ("shop", "")
    assert (s.full_document, s.full_document_before_change) == ("off", "off")
    assert s.ably_rest_url == "https://main.realtime.ably.net"
    assert s.ably_fallback_hosts == list(DEFAULT_FALLBACK_HOSTS)
    assert s.ably_fallback_hosts[0] == "main.a.fallback.ably-realtime.com"
    assert len(s.ably_fallback_hosts) == 5
    assert (s.resume_token_collection, s.deadletter_collection) == ("ably", "ably_deadletter")
    assert s.start_at == "now"
    assert (s.on_history_lost, s.on_unpublishable) == ("fail", "deadletter")
    assert (s.deadletter_ttl_days, s.max_message_size) == (14, 65536)
    assert (s.checkpoint_interval_ms, s.idle_checkpoint_interval_s, s.http_port) == (1000, 60.0, 8080)
    assert (s.log_level, s.log_format, s.mongo_driver, s.json_mode) == ("INFO", "json", "pymongo", "relaxed")
    assert (s.publish_batch_size, s.publish_linger_ms, s.publish_concurrency) == (1000, 0, 8)
    assert (s.max_in_flight, s.shutdown_grace_s, s.ably_request_timeout_s) == (5000, 25.0, 10.0)


def test_connector_id_derived_from_namespace() -> None:
    assert load().connector_id == "shop"
    assert load(MONGODB_COLLECTION="orders").connector_id == "shop.orders"
    assert load(MONGODB_COLLECTION="orders", CONNECTOR_ID="blue").connector_id == "blue"


def test_watch_namespace_and_stream_pipeline() -> None:
    db_wide = load()
    assert db_wide.watches_database and db_wide.watch_namespace == ("shop", None)
    assert db_wide.stream_pipeline() == [
        {"$match": {"ns.coll": {"$nin": ["ably", "ably_deadletter", "ably_overflow"]}}},
        {"$addFields": {"_ablyChannel": "$ns.coll"}},
    ]
    one = load(MONGODB_COLLECTION="orders")
    assert not one.watches_database and one.watch_namespace == ("shop", "orders")
    assert one.stream_pipeline() == one.pipeline_stages() == [{"$addFields": {"_ablyChannel": "$ns.coll"}}]


def test_fallback_hosts_none_for_custom_url() -> None:
    assert load(ABLY_REST_URL="http://localhost:8081/").ably_fallback_hosts == []
    assert load(ABLY_REST_URL="http://localhost:8081/").ably_rest_url == "http://localhost:8081"


def test_fallback_hosts_explicit_list_and_explicit_empty() -> None:
    hosts = " localhost:8082, b.example.com ,http://127.0.0.1:8083,[::1]:8084"
    s = load(ABLY_REST_URL="http://localhost:8081", ABLY_FALLBACK_HOSTS=hosts)
    assert s.ably_fallback_hosts == ["localhost:8082", "b.example.com", "http://127.0.0.1:8083", "[::1]:8084"]
    assert load(ABLY_FALLBACK_HOSTS="").ably_fallback_hosts == []


def test_enumerations_accept_any_case() -> None:
    s = load(FULL_DOCUMENT="UPDATELOOKUP", LOG_LEVEL="debug", LOG_FORMAT="Text", JSON_MODE="CANONICAL")
    assert (s.full_document, s.log_level, s.log_format, s.json_mode) == (
        "updateLookup",
        "DEBUG",
        "text",
        "canonical",
    )


def test_empty_value_counts_as_unset() -> None:
    s = load(LOG_LEVEL="", MAX_MESSAGE_SIZE="", MONGODB_URI="")
    assert (s.log_level, s.max_message_size, s.mongodb_uri) == ("INFO", 65536, "mongodb://localhost:27017")


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("MONGODB_DATABASE", None, "MONGODB_DATABASE: required"),
        ("MONGODB_DATABASE", "", "MONGODB_DATABASE: required"),
        ("MONGODB_DATABASE", "my.db", "MONGODB_DATABASE: must not contain '.' (got 'my.db')"),
        ("MONGODB_DATABASE", "x" * 64, "MONGODB_DATABASE: must be at most 63 bytes long"),
        ("ABLY_API_KEY", None, "ABLY_API_KEY: required"),
        ("MONGODB_URI", "http://db:27017", "MONGODB_URI: must start with mongodb:// or mongodb+srv://"),
        ("MONGODB_COLLECTION", "a$b", "MONGODB_COLLECTION: must not contain '$' (got 'a$b')"),
        (
            "MONGODB_COLLECTION",
            "system.views",
            "MONGODB_COLLECTION: must not be a system collection (got 'system.views')",
        ),
        ("MONGODB_COLLECTION", "ably", "MONGODB_COLLECTION: must differ from RESUME_TOKEN_COLLECTION"),
        ("DEADLETTER_COLLECTION", "ably", "DEADLETTER_COLLECTION: must differ from RESUME_TOKEN_COLLECTION"),
        (
            "FULL_DOCUMENT",
            "x",
            "FULL_DOCUMENT: must be one of off, updateLookup, whenAvailable, required (got 'x')",
        ),
        (
            "FULL_DOCUMENT_BEFORE_CHANGE",
            "updateLookup",
            "FULL_DOCUMENT_BEFORE_CHANGE: must be one of off, whenAvailable, required (got 'updateLookup')",
        ),
        ("ON_HISTORY_LOST", "retry", "ON_HISTORY_LOST: must be one of fail, restart (got 'retry')"),
        (
            "ON_UNPUBLISHABLE",
            "drop",
            "ON_UNPUBLISHABLE: must be one of deadletter, skip, fail (got 'drop')",
        ),
        ("LOG_LEVEL", "TRACE", "LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR (got 'TRACE')"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT: must be one of json, text (got 'xml')"),
        ("MONGO_DRIVER", "pymongo2", "MONGO_DRIVER: must be one of pymongo, motor (got 'pymongo2')"),
        ("JSON_MODE", "legacy", "JSON_MODE: must be one of relaxed, canonical (got 'legacy')"),
        (
            "ABLY_REST_URL",
            "main.realtime.ably.net",
            "ABLY_REST_URL: must be an http:// or https:// URL (got 'main.realtime.ably.net')",
        ),
        (
            "ABLY_FALLBACK_HOSTS",
            "a.com,ftp://b.com",
            "ABLY_FALLBACK_HOSTS: must be a comma list of host, host:port or http(s)://host[:port] "
            "(got 'ftp://b.com')",
        ),
        ("MAX_MESSAGE_SIZE", "0", "MAX_MESSAGE_SIZE: must be > 0 (got '0')"),
        ("MAX_MESSAGE_SIZE", "64k", "MAX_MESSAGE_SIZE: must be a whole number (got '64k')"),
        ("DEADLETTER_TTL_DAYS", "-1", "DEADLETTER_TTL_DAYS: must be >= 0 (got '-1')"),
        ("CHECKPOINT_INTERVAL_MS", "0", "CHECKPOINT_INTERVAL_MS: must be > 0 (got '0')"),
        ("IDLE_CHECKPOINT_INTERVAL_S", "0", "IDLE_CHECKPOINT_INTERVAL_S: must be > 0 (got '0')"),
        ("IDLE_CHECKPOINT_INTERVAL_S", "soon", "IDLE_CHECKPOINT_INTERVAL_S: must be a number (got 'soon')"),
        ("HTTP_PORT", "70000", "HTTP_PORT: must be <= 65535 (got '70000')"),
        ("HTTP_PORT", "-1", "HTTP_PORT: must be >= 0 (got '-1')"),
        ("PUBLISH_BATCH_SIZE", "0", "PUBLISH_BATCH_SIZE: must be > 0 (got '0')"),
        ("PUBLISH_LINGER_MS", "-5", "PUBLISH_LINGER_MS: must be >= 0 (got '-5')"),
        ("PUBLISH_CONCURRENCY", "0", "PUBLISH_CONCURRENCY: must be > 0 (got '0')"),
        ("MAX_IN_FLIGHT", "0", "MAX_IN_FLIGHT: must be > 0 (got '0')"),
        ("SHUTDOWN_GRACE_S", "-1", "SHUTDOWN_GRACE_S: must be >= 0 (got '-1')"),
        ("ABLY_REQUEST_TIMEOUT_S", "0", "ABLY_REQUEST_TIMEOUT_S: must be > 0 (got '0')"),
        ("CONNECTOR_ID", " x", "CONNECTOR_ID: must not have surrounding spaces or newlines (got ' x')"),
        (
            "START_AT",
            "yesterday",
            "START_AT: must be now, <seconds>[.<increment>], Timestamp(t, i) or an ISO-8601 datetime "
            "(got 'yesterday')",
        ),
        ("START_AT", "4294967296", "START_AT: seconds and increment must fit in 32 bits (got '4294967296')"),
        (
            "START_AT",
            "1960-01-01T00:00:00Z",
            "START_AT: must be between 1970 and 2106 (got '1960-01-01T00:00:00Z')",
        ),
        ("PIPELINE", None, "PIPELINE: set exactly one of PIPELINE or PIPELINE_FILE (neither is set)"),
    ],
)
def test_each_bad_variable_gives_one_readable_line(var: str, value: str | None, message: str) -> None:
    assert only_problem(**{var: value}) == message  # type: ignore[arg-type]


def test_bad_api_key_never_echoed() -> None:
    line = only_problem(ABLY_API_KEY="notakey-but-a-secret")
    assert line == "ABLY_API_KEY: must look like appId.keyId:secret"
    assert "notakey" not in line


def test_many_problems_one_line_each_no_pydantic_dump() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"FULL_DOCUMENT": "x", "MAX_MESSAGE_SIZE": "0", "PIPELINE": PIPELINE}, env_file=None)
    err = info.value
    assert err.problems == [
        "MONGODB_DATABASE: required",
        "FULL_DOCUMENT: must be one of off, updateLookup, whenAvailable, required (got 'x')",
        "ABLY_API_KEY: required",
        "MAX_MESSAGE_SIZE: must be > 0 (got '0')",
    ]
    assert err.code == 2
    assert "validation error" not in str(err) and "pydantic" not in str(err) and "\n" not in str(err)


def test_both_pipeline_and_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(PIPELINE)
    line = only_problem(PIPELINE_FILE=str(path))
    assert line == "PIPELINE: set exactly one of PIPELINE or PIPELINE_FILE (both are set)"


def test_pipeline_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('[{"$match": {"wallTime": {"$gt": {"$date": "2024-01-01T00:00:00Z"}}}}, ' + PIPELINE[1:])
    s = load(PIPELINE=None, PIPELINE_FILE=str(path))  # type: ignore[arg-type]
    assert s.pipeline_file == path
    assert len(s.pipeline_stages()) == 2
    assert s.pipeline_stages()[0]["$match"]["wallTime"]["$gt"].year == 2024


def test_missing_pipeline_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    line = only_problem(PIPELINE=None, PIPELINE_FILE=str(missing))  # type: ignore[arg-type]
    assert line == f"PIPELINE_FILE: cannot read {str(missing)!r}: No such file or directory"


def test_invalid_pipeline_raises_pipeline_error_72005() -> None:
    with pytest.raises(PipelineError) as info:
        load(PIPELINE='[{"$group": {"_id": 1}}]')
    assert info.value.code == 72005
    assert info.value.problems[0].startswith(
        "PIPELINE: stage 0: $group is not allowed in a change stream pipeline"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", "now"),
        ("NOW", "now"),
        ("1700000000", Timestamp(1700000000, 0)),
        ("1700000000.7", Timestamp(1700000000, 7)),
        ("Timestamp(1700000000, 7)", Timestamp(1700000000, 7)),
        ("Timestamp(1700000000,7)", Timestamp(1700000000, 7)),
        ("2023-11-14T22:13:20Z", Timestamp(1700000000, 0)),
        ("2023-11-14T22:13:20", Timestamp(1700000000, 0)),
        ("2023-11-15T00:13:20+02:00", Timestamp(1700000000, 0)),
    ],
)
def test_start_at_forms(text: str, expected: object) -> None:
    assert load(START_AT=text).start_at == expected


def test_dotenv_honoured_and_real_env_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"MONGODB_DATABASE=fromfile\nABLY_API_KEY={KEY}\nPIPELINE='{PIPELINE}'\nLOG_LEVEL=DEBUG\n"
    )
    s = load_settings({"LOG_LEVEL": "WARNING"}, env_file=env_file)
    assert (s.mongodb_database, s.log_level) == ("fromfile", "WARNING")
    assert s.pipeline_stages() == [{"$addFields": {"_ablyChannel": "$ns.coll"}}]


def test_dotenv_in_working_directory_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text(f"MONGODB_DATABASE=cwd\nABLY_API_KEY={KEY}\nPIPELINE='{PIPELINE}'\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings({}).mongodb_database == "cwd"


def test_file_secrets(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(KEY + "\n")
    (tmp_path / "uri").write_text("mongodb://app:pw%2Fx@db1,db2/?replicaSet=rs0\r\n")
    (tmp_path / "db").write_text("fromfile")
    env = {
        "PIPELINE": PIPELINE,
        "ABLY_API_KEY_FILE": str(tmp_path / "key"),
        "MONGODB_URI_FILE": str(tmp_path / "uri"),
        "MONGODB_DATABASE_FILE": str(tmp_path / "db"),
    }
    s = load_settings(env, env_file=None)
    assert s.ably_api_key.get_secret_value() == KEY
    assert s.mongodb_uri == "mongodb://app:pw%2Fx@db1,db2/?replicaSet=rs0"
    assert s.mongodb_database == "fromfile"


def test_file_secret_given_both_ways_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(KEY)
    line = only_problem(ABLY_API_KEY_FILE=str(tmp_path / "key"))
    assert line == "ABLY_API_KEY: set either ABLY_API_KEY or ABLY_API_KEY_FILE, not both"


def test_unreadable_file_secret(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    line = only_problem(ABLY_API_KEY=None, ABLY_API_KEY_FILE=str(path))  # type: ignore[arg-type]
    assert line == f"ABLY_API_KEY_FILE: cannot read {str(path)!r}: No such file or directory"


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("mongodb://localhost:27017", "mongodb://localhost:27017"),
        (
            "mongodb://user:pass@h1:27017,h2/db?replicaSet=rs",
            "mongodb://user:***@h1:27017,h2/db?replicaSet=rs",
        ),
        ("mongodb+srv://u:p%40ss@cluster.example.net/", "mongodb+srv://u:***@cluster.example.net/"),
        ("mongodb://u:pa/ss@h/db", "mongodb://u:***@h/db"),
        ("mongodb://onlyuser@h/db", "mongodb://onlyuser@h/db"),
        (
            "mongodb://u:p@h/db?authMechanismProperties=a@b",
            "mongodb://u:***@h/db?authMechanismProperties=a@b",
        ),
        ("not a uri", "not a uri"),
    ],
)
def test_mask_uri(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked


def test_repr_and_redacted_hide_secrets() -> None:
    s = load(MONGODB_URI="mongodb://app:hunter2pw@db/?replicaSet=rs0")
    for text in (repr(s), str(s), str(s.redacted())):
        assert "hunter2pw" not in text and "s3cr3t-Key-Value" not in text
        assert "app:***@db" in text and "appid.keyid:***" in text
    red = s.redacted()
    assert red["mongodb_database"] == "shop" and red["start_at"] == "now"
    assert load(START_AT="5.6").redacted()["start_at"] == "Timestamp(5, 6)"


def test_secrets_lists_key_secret_and_password_forms() -> None:
    s = load(MONGODB_URI="mongodb://app:p%40ss@db/")
    assert set(s.secrets()) == {KEY, "s3cr3t-Key-Value", "p%40ss", "p@ss"}
    assert set(load().secrets()) == {KEY, "s3cr3t-Key-Value"}


def test_settings_constructed_directly_ignore_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "ERROR")
    s = Settings(mongodb_database="d", ably_api_key=KEY, pipeline=PIPELINE)  # type: ignore[arg-type]
    assert s.log_level == "INFO"
    assert s.connector_id == "d"


def test_unknown_keyword_is_rejected_but_unknown_variables_ignored() -> None:
    with pytest.raises(ValidationError):
        Settings(mongodb_database="d", ably_api_key=KEY, pipeline=PIPELINE, log_levle="DEBUG")  # type: ignore[arg-type, call-arg]
    assert load(LOG_LEVLE="DEBUG", HOME="/root").log_level == "INFO"


def test_stream_batch_size_defaults_to_1000_and_must_be_positive() -> None:
    assert load().stream_batch_size == 1000
    assert load(STREAM_BATCH_SIZE="250").stream_batch_size == 250
    assert only_problem(STREAM_BATCH_SIZE="0") == "STREAM_BATCH_SIZE: must be > 0 (got '0')"


def test_every_bad_variable_is_reported_at_once_pipeline_included() -> None:
    """A missing PIPELINE used to appear only once MONGODB_DATABASE and ABLY_API_KEY were fixed."""
    with pytest.raises(ConfigError) as info:
        load_settings({}, env_file=None)
    assert info.value.problems == [
        "MONGODB_DATABASE: required",
        "ABLY_API_KEY: required",
        "PIPELINE: set exactly one of PIPELINE or PIPELINE_FILE (neither is set)",
    ]
    with pytest.raises(ConfigError) as info:
        load_settings({"MONGODB_DATABASE": "shop", "PIPELINE": "[{"}, env_file=None)
    assert [p.split(":")[0] for p in info.value.problems] == ["ABLY_API_KEY", "PIPELINE"]
