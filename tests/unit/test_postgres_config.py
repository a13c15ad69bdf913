"""SOURCE=postgres settings: defaults, validation lines, Ably's ADBC_* aliases, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import load_settings
from connector.errors import ConfigError
from connector.sources.postgres.adbc import parse_duration_s

KEY = "appid.keyid:s3cr3t-Key-Value"
BASE = {"SOURCE": "postgres", "POSTGRES_URI": "postgresql://app:pw@db:5432/shop", "ABLY_API_KEY": KEY}


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(env, env_file=None)
    return info.value.problems


def test_defaults_and_mongodb_settings_not_required() -> None:
    s = load_settings(BASE, env_file=None)
    assert s.source == "postgres"
    assert (s.outbox_table, s.nodes_table) == ("public.outbox", "public.nodes")
    assert (s.poll_interval_ms, s.gap_timeout_ms, s.outbox_batch_size) == (1000, 5000, 1000)
    assert s.connector_id == s.watch_label == "public.outbox"
    assert s.mongodb_database == "" and s.pipeline is None


def test_mongodb_is_still_the_default_source_and_needs_its_settings() -> None:
    assert problems({"ABLY_API_KEY": KEY}) == [
        "MONGODB_DATABASE: required",
        "PIPELINE: set exactly one of PIPELINE or PIPELINE_FILE (neither is set)",
    ]
    assert problems({"ABLY_API_KEY": KEY, "MONGODB_DATABASE": "shop"}) == [
        "PIPELINE: set exactly one of PIPELINE or PIPELINE_FILE (neither is set)"
    ]


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        ({"POSTGRES_URI": ""}, "POSTGRES_URI: required"),
        (
            {"POSTGRES_URI": "mysql://u:hunter2@db/x"},
            "POSTGRES_URI: must be a postgresql:// URI or a libpq key=value connection string",
        ),
        ({"OUTBOX_TABLE": "a.b.c"}, "OUTBOX_TABLE: must be <schema>.<table> or <table> (got 'a.b.c')"),
        ({"NODES_TABLE": 'x"y'}, "NODES_TABLE: must not contain quotes or surrounding spaces (got 'x\"y')"),
        ({"NODES_TABLE": "outbox"}, "NODES_TABLE: must differ from OUTBOX_TABLE"),
        ({"POLL_INTERVAL_MS": "0"}, "POLL_INTERVAL_MS: must be > 0 (got '0')"),
        ({"GAP_TIMEOUT_MS": "soon"}, "GAP_TIMEOUT_MS: must be a whole number (got 'soon')"),
        ({"SOURCE": "mysql"}, "SOURCE: must be one of mongodb, postgres (got 'mysql')"),
    ],
)
def test_each_bad_setting_gives_one_line(overrides: dict[str, str], line: str) -> None:
    found = problems({**BASE, **overrides})
    assert found == [line]
    assert "hunter2" not in line


def test_table_names_default_to_public() -> None:
    s = load_settings({**BASE, "OUTBOX_TABLE": "events", "NODES_TABLE": "app.nodes"}, env_file=None)
    assert (s.outbox_table, s.nodes_table) == ("public.events", "app.nodes")


def test_ablys_variables_switch_an_existing_deployment() -> None:
    env = {
        "ADBC_POSTGRES_CONNECTION_URI": "postgres://u:p%40ss@db/app",
        "ADBC_ABLY_API_KEY": KEY,
        "ADBC_OUTBOX_TABLE_TABLE_SCHEMA": "ably",
        "ADBC_OUTBOX_TABLE_TABLE_NAME": "box",
        "ADBC_NODES_TABLE_TABLE_NAME": "members",
        "ADBC_POLL_INTERVAL": "250ms",
        "ADBC_HEARTBEAT_TIMEOUT": "15s",
    }
    s = load_settings(env, env_file=None)
    assert s.source == "postgres" and s.postgres_uri == "postgres://u:p%40ss@db/app"
    assert s.ably_api_key.get_secret_value() == KEY
    assert (s.outbox_table, s.nodes_table) == ("ably.box", "public.members")
    assert (s.poll_interval_ms, s.lease_ttl_s) == (250, 15.0)
    assert {"p%40ss", "p@ss"} <= set(s.secrets())
    assert s.redacted()["postgres_uri"] == "postgres://u:***@db/app"


def test_adbc_connection_parts_become_a_conninfo_with_the_password_masked() -> None:
    env = {"ADBC_POSTGRES_HOST": "db", "ADBC_POSTGRES_PORT": "6432", "ADBC_POSTGRES_USER": "app",
           "ADBC_POSTGRES_PASSWORD": "it's secret", "ADBC_ABLY_API_KEY": KEY}  # fmt: skip
    s = load_settings(env, env_file=None)
    assert s.postgres_uri == "host='db' port='6432' user='app' password='it\\'s secret'"
    assert "it's secret" in s.secrets()
    assert "secret" not in s.redacted()["postgres_uri"]


def test_an_alias_that_contradicts_our_variable_is_one_line() -> None:
    env = {**BASE, "ADBC_POSTGRES_CONNECTION_URI": "postgresql://other/db", "ADBC_POLL_INTERVAL": "often"}
    assert problems(env) == [
        "ADBC_POLL_INTERVAL: must be a duration such as 1s, 500ms or 1m30s (got 'often')",
        "POSTGRES_URI: set either POSTGRES_URI or ADBC_POSTGRES_CONNECTION_URI, not both",
    ]


@pytest.mark.parametrize(("text", "seconds"), [("1s", 1.0), ("1m30s", 90.0), ("250ms", 0.25), ("2", 2.0)])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


# ---- every ADBC_* variable honoured or refused, never ignored (issue 22, point 4) ----


def test_adbc_password_file_is_read_like_our_own_file_variables(tmp_path: Path) -> None:
    secret = tmp_path / "pg-password"
    secret.write_text("s3cr3t pass\n")
    env = {
        "ABLY_API_KEY": KEY,
        "ADBC_POSTGRES_HOST": "db",
        "ADBC_POSTGRES_USER": "app",
        "ADBC_POSTGRES_PASSWORD_FILE": str(secret),
    }
    s = load_settings(env, env_file=None)
    assert s.source == "postgres"
    assert "password='s3cr3t pass'" in s.postgres_uri
    assert "s3cr3t pass" in s.secrets()
    assert "s3cr3t" not in repr(s)
    missing = {**env, "ADBC_POSTGRES_PASSWORD_FILE": str(tmp_path / "nope")}
    assert problems(missing)[0].startswith("ADBC_POSTGRES_PASSWORD_FILE: cannot read")
    both = {**env, "ADBC_POSTGRES_PASSWORD": "x"}
    either = (
        "ADBC_POSTGRES_PASSWORD: set either ADBC_POSTGRES_PASSWORD or ADBC_POSTGRES_PASSWORD_FILE, not both"
    )
    assert either in problems(both)


def test_adbc_auto_create_fixed_rate_and_health_address_are_honoured() -> None:
    s = load_settings(
        {
            **BASE,
            "ADBC_OUTBOX_TABLE_AUTO_CREATE": "true",
            "ADBC_NODES_TABLE_AUTO_CREATE": "true",
            "ADBC_POLL_FIXED_RATE": "true",
            "ADBC_HEALTH_ADDRESS": "0.0.0.0:9090",
        },
        env_file=None,
    )
    assert (s.outbox_table_auto_create, s.nodes_table_auto_create, s.poll_fixed_rate) == (True, True, True)
    assert s.http_port == 9090
    defaults = load_settings(BASE, env_file=None)
    assert (defaults.outbox_table_auto_create, defaults.nodes_table_auto_create) == (False, False)
    assert load_settings({**BASE, "ADBC_HEALTH_ADDRESS": ":8181"}, env_file=None).http_port == 8181
    assert problems({**BASE, "ADBC_HEALTH_ADDRESS": "localhost"}) == [
        "ADBC_HEALTH_ADDRESS: must be [host]:port or a port (got 'localhost')"
    ]
    assert problems({**BASE, "ADBC_POLL_FIXED_RATE": "sometimes"}) == [
        "POLL_FIXED_RATE: must be true or false (got 'sometimes')"
    ]


def test_an_adbc_variable_ably_does_not_have_is_refused_with_the_closest_name() -> None:
    assert problems({**BASE, "ADBC_POLL_INTERVALL": "1s", "ADBC_SOMETHING": "x"}) == [
        "ADBC_POLL_INTERVALL: not a setting of Ably's Postgres connector (did you mean ADBC_POLL_INTERVAL?)",
        "ADBC_SOMETHING: not a setting of Ably's Postgres connector",
    ]


def test_adbc_postgres_settings_beside_mongodb_ones_need_source_to_say_which() -> None:
    env = {"ABLY_API_KEY": KEY, "ADBC_POSTGRES_HOST": "db", "MONGODB_DATABASE": "shop", "PIPELINE": "[]"}
    assert problems(env) == [
        "SOURCE: both Ably's Postgres settings (ADBC_POSTGRES_HOST) and MongoDB settings (MONGODB_DATABASE) "
        "are set: set SOURCE=postgres or SOURCE=mongodb"
    ]
    assert load_settings({**env, "SOURCE": "mongodb"}, env_file=None).source == "mongodb"
    assert load_settings({**env, "SOURCE": "postgres"}, env_file=None).source == "postgres"


def test_a_misspelt_variable_of_ours_is_named_with_the_closest_one() -> None:
    env = {
        "ABLY_API_KEY": KEY,
        "MONGODB_DATABASE": "shop",
        "PIPELINE": "[]",
        "MONGODB_COLECTION": "orders",
        "PUBLISH_BATCHSIZE": "10",
        "LOG_DIR": "/var/log",
        "PATH": "/usr/bin",
        "MONGODB_URI_FILE": "",
        # The official postgres image's variables, often in the same env file: not ours, not misspelt.
        "POSTGRES_USER": "app",
        "POSTGRES_PASSWORD": "secret",
        "POSTGRES_URL": "postgres://db/app",
    }
    assert load_settings(env, env_file=None).warnings == [
        "MONGODB_COLECTION is not a setting (ignored); did you mean MONGODB_COLLECTION?",
        "POSTGRES_URL is not a setting (ignored); did you mean POSTGRES_URI?",
        "PUBLISH_BATCHSIZE is not a setting (ignored); did you mean PUBLISH_BATCH_SIZE?",
    ]


def test_a_variable_only_the_other_source_reads_is_named_as_ignored() -> None:
    env = {
        "SOURCE": "postgres",
        "POSTGRES_URI": "postgresql://localhost/app",
        "ABLY_API_KEY": KEY,
        "PARTITIONS": "3",
        "MONGODB_WATCH": "deployment",
        "MAX_MESSAGE_SIZE": "1000",  # shared: no warning
    }
    assert load_settings(env, env_file=None).warnings == [
        "MONGODB_WATCH applies to SOURCE=mongodb only: ignored with SOURCE=postgres",
        "PARTITIONS applies to SOURCE=mongodb only: ignored with SOURCE=postgres",
    ]
