"""Configuration from environment variables, validated once at startup.

`load_settings()` is the entry point: it reads the process environment (or a given mapping), a `.env`
file in the working directory (real environment variables win), and `X_FILE` variables (the value of
any variable X read from a file, for Docker/Kubernetes secrets; giving X both ways is an error). It
returns a `Settings` or raises `ConfigError` whose `problems` hold one readable line per bad variable
(`MONGODB_DATABASE: required`), never a pydantic dump. An empty value counts as unset, except for
`ABLY_FALLBACK_HOSTS`, where an explicit empty value means "no fallback hosts".

`Settings` itself reads nothing from the environment: constructing it with keyword arguments (as tests
do) validates exactly those values. Secrets never leak through it: `repr()` and `redacted()` mask the
API key secret and the password in `MONGODB_URI`; `secrets()` lists them for the log filter.

Derived values:
- `connector_id` defaults to `<db>` for a database-wide watch and `<db>.<coll>` for one collection: the
  namespace watched, so two connectors on different collections never share a token document, and
  changing the watched namespace starts a new position instead of resuming a foreign one.
- `ably_fallback_hosts` is always resolved: Ably's five fallback hosts with the default REST URL,
  none with a custom one, unless given explicitly.
- `pipeline_stages()` is the parsed user pipeline; `stream_pipeline()` is what to pass to `watch()`
  (with the own-collection exclusion in front for a database-wide watch).

`SOURCE` picks the source: `mongodb` (default) requires `MONGODB_DATABASE` and a pipeline; `postgres`
(the outbox) requires `POSTGRES_URI` and ignores the MongoDB settings. Ably's Postgres connector
variables (`ADBC_*`) are read as aliases of ours (`connector.sources.postgres.adbc`).
"""

from __future__ import annotations

import copy
import os
import re
import socket
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import unquote, urlsplit

from bson.timestamp import Timestamp
from dotenv import dotenv_values
from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from connector.ably.oversize import OnOversize
from connector.errors import ConfigError, PipelineError
from connector.sources.mongodb.pipeline import exclusion_stage, parse_pipeline
from connector.sources.postgres.adbc import apply_adbc_aliases
from connector.sources.postgres.names import parse_table_name

__all__ = [
    "DEFAULT_ABLY_REST_URL",
    "DEFAULT_FALLBACK_HOSTS",
    "Settings",
    "load_settings",
    "mask_uri",
]

FullDocument = Literal["off", "updateLookup", "whenAvailable", "required"]
FullDocumentBeforeChange = Literal["off", "whenAvailable", "required"]
OnHistoryLost = Literal["fail", "restart"]
OnUnpublishable = Literal["deadletter", "skip", "fail"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["json", "text"]
MongoDriver = Literal["pymongo", "motor"]
JsonMode = Literal["relaxed", "canonical"]
Source = Literal["mongodb", "postgres"]

DEFAULT_ABLY_REST_URL = "https://main.realtime.ably.net"
#: Ably's documented fallback hosts for the default endpoint (client library spec RSC15).
DEFAULT_FALLBACK_HOSTS: tuple[str, ...] = tuple(
    f"main.{letter}.fallback.ably-realtime.com" for letter in "abcde"
)

#: `X_FILE` for these fields is a field of its own, not the file form of X.
_OWN_FILE_FIELDS = frozenset({"pipeline"})
#: Variables where an explicit empty value means something (not "unset").
_EMPTY_IS_A_VALUE = frozenset({"ably_fallback_hosts", "mongodb_collection"})
_API_KEY_RE = re.compile(r"^[^.:\s]+\.[^.:\s]+:\S+$")
#: MongoDB forbids these in database names (and the name must be < 64 bytes).
_BAD_DB_CHARS = frozenset('/\\. "$\x00')
_MAX_DB_NAME_BYTES = 63
#: A fallback entry: `host`, `host:port` or `http(s)://host[:port]` (a local emulator speaks plain http).
_HOST_RE = re.compile(r"^(https?://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?/?$")
_CONNINFO_PASSWORD_RE = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
_TIMESTAMP_CALL_RE = re.compile(r"^Timestamp\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
_SECONDS_RE = re.compile(r"^(\d+)(?:\.(\d+))?$")
_UINT32_MAX = 2**32 - 1
#: Longest wait for a missing sequence_id before it is logged and skipped. A gap is normally resolved
#: within one poll round by proof (see connector/sources/postgres/gaps.py); the timeout only bites when
#: a transaction that drew a number stays open this long. Chosen from the measurements in the README.
GAP_TIMEOUT_MS_DEFAULT = 5000


def _split_userinfo(uri: str) -> tuple[str, str, str | None, str] | None:
    """(scheme, user, password or None, rest from '@') of a URI with credentials, else None."""
    scheme, sep, rest = uri.partition("://")
    # The userinfo ends at the last '@' before the query string (a password may contain '/').
    query = rest.find("?")
    at = rest.rfind("@", 0, query if query >= 0 else len(rest))
    if not sep or at < 0:
        return None
    user, colon, password = rest[:at].partition(":")
    return scheme, user, password if colon else None, rest[at:]


def mask_uri(uri: str) -> str:
    """`mongodb://user:secret@host/db` -> `mongodb://user:***@host/db`; anything else unchanged."""
    parts = _split_userinfo(uri)
    if parts is None or parts[2] is None:
        return uri
    scheme, user, _password, rest = parts
    return f"{scheme}://{user}:***{rest}"


def _uri_password(uri: str) -> str | None:
    parts = _split_userinfo(uri)
    return parts[2] or None if parts else None


def mask_conninfo(conninfo: str) -> str:
    """A libpq URI or `key=value` string with its password masked."""
    if "://" in conninfo:
        return mask_uri(conninfo)
    return _CONNINFO_PASSWORD_RE.sub(r"\1***", conninfo)


def _conninfo_password(conninfo: str) -> str | None:
    if "://" in conninfo:
        return _uri_password(conninfo)
    match = _CONNINFO_PASSWORD_RE.search(conninfo)
    if match is None:
        return None
    value = match.group(2)
    if value.startswith("'"):
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    return value or None


def default_instance_id() -> str:
    """`<hostname>-<pid>`: unique per process, and readable in logs and the lease document."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """Every setting of the connector; names match the environment variables in lower case."""

    # extra="forbid": a misspelt keyword in code (tests) fails loudly; the environment is filtered first.
    model_config = SettingsConfigDict(extra="forbid", arbitrary_types_allowed=True)

    # First: the validators of the source-specific settings look at it.
    source: Source = "mongodb"
    mongodb_uri: str = Field(default="mongodb://localhost:27017", repr=False)
    mongodb_database: str = Field(default="", validate_default=True)
    mongodb_collection: str = ""
    full_document: FullDocument = "off"
    full_document_before_change: FullDocumentBeforeChange = "off"
    pipeline: str | None = None
    pipeline_file: Path | None = None
    ably_api_key: SecretStr
    ably_rest_url: str = DEFAULT_ABLY_REST_URL
    ably_fallback_hosts: list[str] = Field(default_factory=list)
    resume_token_collection: str = "ably"
    connector_id: str = ""
    start_at: Timestamp | Literal["now"] = "now"
    on_history_lost: OnHistoryLost = "fail"
    on_unpublishable: OnUnpublishable = "deadletter"
    deadletter_collection: str = "ably_deadletter"
    overflow_collection: str = "ably_overflow"
    deadletter_ttl_days: int = Field(default=14, ge=0)
    max_message_size: int = Field(default=65536, gt=0)
    on_oversize: OnOversize = "truncate"
    checkpoint_interval_ms: int = Field(default=1000, gt=0)
    idle_checkpoint_interval_s: float = Field(default=60.0, gt=0)
    http_port: int = Field(default=8080, ge=0, le=65535)
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "json"
    mongo_driver: MongoDriver = "pymongo"
    json_mode: JsonMode = "relaxed"
    publish_batch_size: int = Field(default=1000, gt=0)
    publish_linger_ms: int = Field(default=0, ge=0)
    publish_concurrency: int = Field(default=8, gt=0)
    channel_rate_limit: float = Field(default=50.0, ge=0)
    channel_max_backlog: int = Field(default=250, gt=0)
    max_in_flight: int = Field(default=5000, gt=0)
    shutdown_grace_s: float = Field(default=25.0, ge=0)
    ably_request_timeout_s: float = Field(default=10.0, gt=0)
    stream_batch_size: int = Field(default=1000, gt=0)
    lease_ttl_s: float = Field(default=10.0, ge=2)
    instance_id: str = ""
    # The Postgres outbox source (SOURCE=postgres)
    postgres_uri: str = Field(default="", repr=False, validate_default=True)
    outbox_table: str = "public.outbox"
    nodes_table: str = "public.nodes"
    poll_interval_ms: int = Field(default=1000, gt=0)
    gap_timeout_ms: int = Field(default=GAP_TIMEOUT_MS_DEFAULT, gt=0)
    outbox_batch_size: int = Field(default=1000, gt=0)

    _stages: list[dict[str, Any]] = PrivateAttr(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only explicit values: `load_settings` does env, `.env` and `_FILE` with clear errors."""
        return (init_settings,)

    # ---- field validators (each raises ValueError with the text after "VARIABLE: ") ----

    @field_validator(
        "full_document",
        "full_document_before_change",
        "on_history_lost",
        "on_unpublishable",
        "on_oversize",
        "log_level",
        "log_format",
        "mongo_driver",
        "json_mode",
        "source",
        mode="before",
    )
    @classmethod
    def _canonical_choice(cls, value: Any, info: Any) -> Any:
        """Accept any letter case (`updatelookup`, `info`) and store the documented spelling."""
        if isinstance(value, str):
            for choice in _choices(info.field_name):
                if choice.lower() == value.strip().lower():
                    return choice
        return value

    @field_validator("mongodb_uri")
    @classmethod
    def _check_uri(cls, value: str) -> str:
        if not value.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return value

    @field_validator("mongodb_database")
    @classmethod
    def _check_database(cls, value: str, info: Any) -> str:
        if not value and info.data.get("source") != "mongodb":
            return value  # only the MongoDB source needs it (an invalid SOURCE is reported on its own)
        if not value:
            raise ValueError("required")
        bad = sorted(set(value) & _BAD_DB_CHARS)
        if bad:
            raise ValueError(f"must not contain {' '.join(repr(c) for c in bad)} (got {value!r})")
        if len(value.encode()) > _MAX_DB_NAME_BYTES:
            raise ValueError(f"must be at most {_MAX_DB_NAME_BYTES} bytes long")
        return value

    @field_validator("postgres_uri")
    @classmethod
    def _check_postgres_uri(cls, value: str, info: Any) -> str:
        if not value:
            if info.data.get("source") == "postgres":
                raise ValueError("required")
            return value
        if "://" in value and not value.startswith(("postgres://", "postgresql://")):
            # Never echo the value: it may hold a password.
            raise ValueError("must be a postgresql:// URI or a libpq key=value connection string")
        return value

    @field_validator("outbox_table", "nodes_table")
    @classmethod
    def _check_table(cls, value: str) -> str:
        return parse_table_name(value).text

    @field_validator(
        "mongodb_collection", "resume_token_collection", "deadletter_collection", "overflow_collection"
    )
    @classmethod
    def _check_collection(cls, value: str, info: Any) -> str:
        if not value and info.field_name != "mongodb_collection":
            raise ValueError("must not be empty")
        if "$" in value or "\x00" in value:
            raise ValueError(f"must not contain '$' (got {value!r})")
        if value.startswith("system."):
            raise ValueError(f"must not be a system collection (got {value!r})")
        return value

    @field_validator("ably_api_key")
    @classmethod
    def _check_api_key(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if not secret:
            raise ValueError("required")
        if not _API_KEY_RE.match(secret):
            # Never echo the value: it may be a real secret pasted in the wrong place.
            raise ValueError("must look like appId.keyId:secret")
        return value

    @field_validator("ably_rest_url")
    @classmethod
    def _check_rest_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL (got {value!r})")
        return value.rstrip("/")

    @field_validator("ably_fallback_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [host.strip() for host in value.split(",") if host.strip()]
        if isinstance(value, list | tuple):
            bad = [h for h in value if not isinstance(h, str) or not _HOST_RE.match(h)]
            if bad:
                raise ValueError(
                    f"must be a comma list of host, host:port or http(s)://host[:port] (got {bad[0]!r})"
                )
            return list(value)
        return value

    @field_validator("start_at", mode="before")
    @classmethod
    def _parse_start_at(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_start_at(value)
        return value

    @field_validator("connector_id")
    @classmethod
    def _check_connector_id(cls, value: str) -> str:
        if value != value.strip() or "\n" in value:
            raise ValueError(f"must not have surrounding spaces or newlines (got {value!r})")
        return value

    # ---- cross-field rules ----

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        problems: list[str] = []
        if "ably_fallback_hosts" not in self.model_fields_set and self.ably_rest_url == DEFAULT_ABLY_REST_URL:
            self.ably_fallback_hosts = list(DEFAULT_FALLBACK_HOSTS)
        if not self.connector_id:
            self.connector_id = self.watch_label
        if not self.instance_id:
            self.instance_id = default_instance_id()
        if self.source == "postgres":
            if self.outbox_table == self.nodes_table:
                raise ValueError("NODES_TABLE: must differ from OUTBOX_TABLE")
            return self
        own = {self.resume_token_collection: "RESUME_TOKEN_COLLECTION"}
        if self.deadletter_collection in own:
            problems.append("DEADLETTER_COLLECTION: must differ from RESUME_TOKEN_COLLECTION")
        own[self.deadletter_collection] = "DEADLETTER_COLLECTION"
        if self.overflow_collection in own:
            problems.append(f"OVERFLOW_COLLECTION: must differ from {own[self.overflow_collection]}")
        own[self.overflow_collection] = "OVERFLOW_COLLECTION"
        if self.mongodb_collection in own:
            problems.append(f"MONGODB_COLLECTION: must differ from {own[self.mongodb_collection]}")
        problems.extend(self._load_pipeline())
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _load_pipeline(self) -> list[str]:
        stages, problems = read_pipeline(self.pipeline, self.pipeline_file)
        self._stages = stages
        return problems

    # ---- derived values ----

    @property
    def watches_database(self) -> bool:
        """True when the whole database is watched (MONGODB_COLLECTION empty)."""
        return not self.mongodb_collection

    @property
    def watch_namespace(self) -> tuple[str, str | None]:
        """(database, collection) to watch; collection None means the whole database."""
        return self.mongodb_database, self.mongodb_collection or None

    @property
    def watch_label(self) -> str:
        """`<db>` or `<db>.<coll>` (the outbox table for SOURCE=postgres): the watched namespace for logs
        and the default connector id."""
        if self.source == "postgres":
            return self.outbox_table
        if self.mongodb_collection:
            return f"{self.mongodb_database}.{self.mongodb_collection}"
        return self.mongodb_database

    def pipeline_stages(self) -> list[dict[str, Any]]:
        """The user's pipeline, parsed and validated (a deep copy: callers may extend or edit it)."""
        return copy.deepcopy(self._stages)

    def stream_pipeline(self) -> list[dict[str, Any]]:
        """The pipeline to pass to `watch()`: own collections excluded first for a database-wide watch."""
        if self.watches_database:
            own = [self.resume_token_collection, self.deadletter_collection, self.overflow_collection]
            return [exclusion_stage(own), *self.pipeline_stages()]
        return self.pipeline_stages()

    def secrets(self) -> list[str]:
        """Values that must never appear in logs: register each with `connector.logs.register_secret`."""
        out = [self.ably_api_key.get_secret_value()]
        out.append(out[0].partition(":")[2])
        password = _uri_password(self.mongodb_uri)
        if password:
            out.extend({password, unquote(password)})
        pg_password = _conninfo_password(self.postgres_uri)
        if pg_password:
            out.extend({pg_password, unquote(pg_password)})
        return [s for s in out if s]

    def redacted(self) -> dict[str, Any]:
        """All settings with secrets masked, for the startup log line."""
        out = self.model_dump(exclude={"ably_api_key", "mongodb_uri", "postgres_uri"})
        out["mongodb_uri"] = mask_uri(self.mongodb_uri)
        out["postgres_uri"] = mask_conninfo(self.postgres_uri)
        out["ably_api_key"] = self.ably_api_key.get_secret_value().partition(":")[0] + ":***"
        out["start_at"] = _format_start_at(self.start_at)
        out["pipeline_file"] = str(self.pipeline_file) if self.pipeline_file else None
        return out

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield from self.redacted().items()


def parse_start_at(value: str) -> Timestamp | Literal["now"]:
    """`now`, `<seconds>[.<increment>]`, `Timestamp(t, i)` or an ISO-8601 datetime (UTC if naive)."""
    text = value.strip()
    if text.lower() == "now":
        return "now"
    match = _TIMESTAMP_CALL_RE.match(text) or _SECONDS_RE.match(text)
    if match:
        seconds, increment = int(match.group(1)), int(match.group(2) or 0)
        if seconds > _UINT32_MAX or increment > _UINT32_MAX:
            raise ValueError(f"seconds and increment must fit in 32 bits (got {value!r})")
        return Timestamp(seconds, increment)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"must be now, <seconds>[.<increment>], Timestamp(t, i) or an ISO-8601 datetime (got {value!r})"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = int(moment.timestamp())
    if not 0 <= seconds <= _UINT32_MAX:
        raise ValueError(f"must be between 1970 and 2106 (got {value!r})")
    return Timestamp(seconds, 0)


def _format_start_at(value: Timestamp | str) -> str:
    return f"Timestamp({value.time}, {value.inc})" if isinstance(value, Timestamp) else value


def _choices(field_name: str) -> tuple[str, ...]:
    annotation = Settings.model_fields[field_name].annotation
    return tuple(a for a in get_args(annotation) if isinstance(a, str))


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


# ---- loading from the environment ----


def read_pipeline(
    pipeline: str | None, pipeline_file: str | Path | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The stages from PIPELINE or PIPELINE_FILE (exactly one), or the problems, one line each."""
    if (pipeline is None) == (pipeline_file is None):
        given = "both are set" if pipeline is not None else "neither is set"
        return [], [f"PIPELINE: set exactly one of PIPELINE or PIPELINE_FILE ({given})"]
    source, text = "PIPELINE", pipeline
    if pipeline_file is not None:
        source = "PIPELINE_FILE"
        try:
            text = Path(pipeline_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            return [], [f"PIPELINE_FILE: cannot read {str(pipeline_file)!r}: {_reason(exc)}"]
    try:
        return parse_pipeline(text or "", source=source), []
    except PipelineError as exc:
        return [], exc.problems


def load_settings(env: Mapping[str, str] | None = None, *, env_file: str | Path | None = ".env") -> Settings:
    """Build Settings from `env` (default: os.environ) plus `env_file` and `X_FILE` variables.

    Raises ConfigError (PipelineError when only the pipeline is wrong) with one line per problem.
    """
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update({k.upper(): v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update({k.upper(): v for k, v in (os.environ if env is None else env).items()})

    merged, alias_problems = apply_adbc_aliases(merged)
    values, problems = _collect(merged)
    problems = alias_problems + problems
    if problems:
        raise ConfigError(problems)
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = [line for err in exc.errors() for line in _describe(err, values)]
    if values.get("source", "mongodb") == "mongodb" and not any(p.startswith("PIPELINE") for p in problems):
        # A field error stops pydantic before the cross-field checks: report the pipeline's problems too,
        # so one run lists every bad variable.
        problems += read_pipeline(values.get("pipeline"), values.get("pipeline_file"))[1]
    if problems and all(p.startswith("PIPELINE") and ": set exactly" not in p for p in problems):
        raise PipelineError(problems)
    raise ConfigError(problems)


def _collect(env: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Pick our variables out of the environment, resolving `X_FILE`."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name in Settings.model_fields:
        var = name.upper()
        direct = env.get(var)
        file_var = f"{var}_FILE" if name not in _OWN_FILE_FIELDS else None
        path = env.get(file_var) if file_var else None
        if direct and path:
            problems.append(f"{var}: set either {var} or {file_var}, not both")
            continue
        if path:
            try:
                direct = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                problems.append(f"{file_var}: cannot read {path!r}: {_reason(exc)}")
                continue
        if direct is not None and (direct != "" or name in _EMPTY_IS_A_VALUE):
            values[name] = direct
    return values, problems


def _describe(err: Mapping[str, Any], values: Mapping[str, Any]) -> list[str]:
    """One readable line for one pydantic error (several for the cross-field check)."""
    loc = err.get("loc") or ()
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if not loc or not isinstance(loc[0], str):
        return str(ctx.get("error", err["msg"])).splitlines()
    name = loc[0]
    var = name.upper()
    shown = values.get(name)
    if name == "ably_api_key":
        shown = "***"
    elif name == "mongodb_uri" and isinstance(shown, str):
        shown = mask_uri(shown)
    elif name == "postgres_uri" and isinstance(shown, str):
        shown = mask_conninfo(shown)
    text: str
    if kind == "missing":
        text = "required"
    elif kind == "value_error":
        text = str(ctx.get("error", err["msg"]))
    elif kind == "literal_error":
        text = f"must be one of {', '.join(_choices(name))} (got {shown!r})"
    elif kind in ("int_parsing", "int_from_float", "int_type"):
        text = f"must be a whole number (got {shown!r})"
    elif kind in ("float_parsing", "float_type"):
        text = f"must be a number (got {shown!r})"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        ops = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
        bound = next(iter(ctx.values()))
        text = f"must be {ops[kind]} {bound:g} (got {shown!r})"
    else:
        text = f"{err['msg']} (got {shown!r})"
    return [f"{var}: {text}"]
