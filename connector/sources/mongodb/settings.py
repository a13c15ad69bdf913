"""The MongoDB source's settings: what to watch, the pipeline, and the connector's own collections.

A part of the one `Settings` (connector/sources/registry.py composes it). Derived values:
- the watch mode (`MONGODB_WATCH`, else a collection when `MONGODB_COLLECTION` is set, else the database);
- the watch label (`<db>` for a database-wide watch, `<db>.<coll>` for one collection, `all databases` for
  the deployment) is the default `CONNECTOR_ID`: two connectors on different collections never share a
  token document, and changing the watched namespace starts a new position instead of resuming a foreign
  one;
- `pipeline_stages()` is the parsed user pipeline; `stream_pipeline()` is what to pass to `watch()` (with
  the own-collection exclusion and the namespace filters in front, `namespaces.filter_stages`).
"""

from __future__ import annotations

import copy
import re
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import unquote

from bson.timestamp import Timestamp
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from connector.errors import PipelineError
from connector.shared_settings import SourceSelection, canonical_choice, mask_uri, uri_password
from connector.sources.mongodb.namespaces import (
    DEPLOYMENT_LABEL,
    WATCH_MODES,
    NamespacePattern,
    WatchMode,
    filter_stages,
    parse_patterns,
    watch_problems,
)
from connector.sources.mongodb.partitions import MAX_PARTITIONS, Partition, resolve_partition
from connector.sources.mongodb.pipeline import parse_pipeline

FullDocument = Literal["off", "updateLookup", "whenAvailable", "required"]
FullDocumentBeforeChange = Literal["off", "whenAvailable", "required"]
OnHistoryLost = Literal["fail", "restart"]
MongoDriver = Literal["pymongo", "motor"]
JsonMode = Literal["relaxed", "canonical"]

#: MongoDB forbids these in database names (and the name must be < 64 bytes).
_BAD_DB_CHARS = frozenset('/\\. "$\x00')
_MAX_DB_NAME_BYTES = 63
_TIMESTAMP_CALL_RE = re.compile(r"^Timestamp\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
_SECONDS_RE = re.compile(r"^(\d+)(?:\.(\d+))?$")
_UINT32_MAX = 2**32 - 1


class MongoSettings(SourceSelection):
    """SOURCE=mongodb (the default): `MONGODB_DATABASE` and a pipeline are required."""

    model_config = ConfigDict(arbitrary_types_allowed=True)  # bson's Timestamp

    SOURCE: ClassVar[str] = "mongodb"
    #: Variables where an explicit empty value means something (here: watch the whole database).
    EMPTY_IS_A_VALUE: ClassVar[frozenset[str]] = frozenset({"mongodb_collection"})
    #: `X_FILE` for these is a setting of its own, not the file form of X.
    OWN_FILE_FIELDS: ClassVar[frozenset[str]] = frozenset({"pipeline"})
    #: Settings holding a secret, and how to show them masked.
    MASKS: ClassVar[Mapping[str, Callable[[str], str]]] = {"mongodb_uri": mask_uri}
    #: Other names this source reads (none).
    ALIASES: ClassVar[frozenset[str]] = frozenset()

    mongodb_uri: str = Field(default="mongodb://localhost:27017", repr=False)
    mongodb_database: str = Field(default="", validate_default=True)
    mongodb_collection: str = ""
    mongodb_watch: WatchMode | None = None  # None: from MONGODB_COLLECTION (see `watch_mode`)
    namespace_include: str = ""
    namespace_exclude: str = ""
    full_document: FullDocument = "off"
    full_document_before_change: FullDocumentBeforeChange = "off"
    pipeline: str | None = None
    pipeline_file: Path | None = None
    resume_token_collection: str = "ably"
    start_at: Timestamp | Literal["now"] = "now"
    on_history_lost: OnHistoryLost = "fail"
    deadletter_collection: str = "ably_deadletter"
    overflow_collection: str = "ably_overflow"
    deadletter_ttl_days: int = Field(default=14, ge=0)
    idle_checkpoint_interval_s: float = Field(default=60.0, gt=0)
    mongo_driver: MongoDriver = "pymongo"
    json_mode: JsonMode = "relaxed"
    stream_batch_size: int = Field(default=1000, gt=0)
    partitions: int = Field(default=1, ge=1, le=MAX_PARTITIONS)
    partition: int | None = Field(default=None, ge=0)  # None: from the host name (partitions.py)

    _stages: list[dict[str, Any]] = PrivateAttr(default_factory=list)

    _canonical_mongodb = field_validator(
        "full_document",
        "full_document_before_change",
        "on_history_lost",
        "mongo_driver",
        "json_mode",
        mode="before",
    )(classmethod(canonical_choice))

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

    @field_validator("mongodb_watch", mode="before")
    @classmethod
    def _check_watch(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        text = value.strip().lower()
        if not text:
            return None
        if text not in WATCH_MODES:
            raise ValueError(f"must be {', '.join(WATCH_MODES[:-1])} or {WATCH_MODES[-1]} (got {value!r})")
        return text

    @field_validator("namespace_include", "namespace_exclude")
    @classmethod
    def _check_namespaces(cls, value: str) -> str:
        parse_patterns(value)
        return value

    @field_validator("start_at", mode="before")
    @classmethod
    def _parse_start_at(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_start_at(value)
        return value

    @model_validator(mode="after")
    def _check_mongodb(self) -> MongoSettings:
        if self.source != "mongodb":  # not self.SOURCE: on the composed class that is the first part's
            return self
        problems: list[str] = []
        own = {self.resume_token_collection: "RESUME_TOKEN_COLLECTION"}
        if self.deadletter_collection in own:
            problems.append("DEADLETTER_COLLECTION: must differ from RESUME_TOKEN_COLLECTION")
        own[self.deadletter_collection] = "DEADLETTER_COLLECTION"
        if self.overflow_collection in own:
            problems.append(f"OVERFLOW_COLLECTION: must differ from {own[self.overflow_collection]}")
        own[self.overflow_collection] = "OVERFLOW_COLLECTION"
        if self.mongodb_collection in own:
            problems.append(f"MONGODB_COLLECTION: must differ from {own[self.mongodb_collection]}")
        problems.extend(_watch_problems(self.model_dump(include=_WATCH_FIELDS)))
        self.partition, partition_problems = resolve_partition(
            self.partitions, self.partition, socket.gethostname()
        )
        problems.extend(partition_problems)
        stages, pipeline_problems = read_pipeline(self.pipeline, self.pipeline_file)
        self._stages = stages
        problems.extend(pipeline_problems)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # ---- the registry's hooks (called on this class, whatever the composed class's MRO) ----

    def source_label(self) -> str:
        """`<db>`, `<db>.<coll>` or `all databases`: the watched namespace for logs and the default
        connector id."""
        if self.watch_mode == "deployment":
            return DEPLOYMENT_LABEL
        if self.mongodb_collection:
            return f"{self.mongodb_database}.{self.mongodb_collection}"
        return self.mongodb_database

    def source_secrets(self) -> list[str]:
        password = uri_password(self.mongodb_uri)
        return [password, unquote(password)] if password else []

    def source_redacted(self, out: dict[str, Any]) -> None:
        out["start_at"] = format_start_at(self.start_at)
        out["pipeline_file"] = str(self.pipeline_file) if self.pipeline_file else None

    @staticmethod
    def late_problems(values: Mapping[str, Any]) -> list[str]:
        """Problems of the cross-field checks, reported even when a field error stopped pydantic first
        (so one run lists every bad variable)."""
        return read_pipeline(values.get("pipeline"), values.get("pipeline_file"))[1] + _watch_problems(values)

    @staticmethod
    def pipeline_only(problems: list[str]) -> bool:
        """Whether these problems are the pipeline's alone (then code 72005, invalid pipeline)."""
        return all(p.startswith("PIPELINE") and ": set exactly" not in p for p in problems)

    @staticmethod
    def aliases(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
        return dict(env), []

    # ---- derived values ----

    @property
    def watch_mode(self) -> WatchMode:
        """MONGODB_WATCH, else today's rule: the collection when MONGODB_COLLECTION is set, else the
        database."""
        return self.mongodb_watch or ("collection" if self.mongodb_collection else "database")

    @property
    def include(self) -> list[NamespacePattern]:
        """NAMESPACE_INCLUDE, parsed (validated when the settings were built)."""
        return parse_patterns(self.namespace_include)

    @property
    def exclude(self) -> list[NamespacePattern]:
        """NAMESPACE_EXCLUDE, parsed (validated when the settings were built)."""
        return parse_patterns(self.namespace_exclude)

    @property
    def watches_database(self) -> bool:
        """True when the whole database is watched (MONGODB_WATCH=database)."""
        return self.watch_mode == "database"

    @property
    def watch_namespace(self) -> tuple[str, str | None]:
        """(database, collection) to watch; collection None means the whole database."""
        return self.mongodb_database, self.mongodb_collection or None

    @property
    def partition_spec(self) -> Partition:
        """PARTITION of PARTITIONS (resolved from the host name when PARTITION is unset)."""
        return Partition(self.partition or 0, self.partitions)

    def pipeline_stages(self) -> list[dict[str, Any]]:
        """The user's pipeline, parsed and validated (a deep copy: callers may extend or edit it)."""
        return copy.deepcopy(self._stages)

    def stream_pipeline(self) -> list[dict[str, Any]]:
        """The pipeline to pass to `watch()`: own collections excluded first (a database- or deployment-wide
        watch), then the namespace filters, then the user's stages."""
        own = [self.resume_token_collection, self.deadletter_collection, self.overflow_collection]
        first = filter_stages(
            self.watch_mode, home=self.mongodb_database, own=own, include=self.include, exclude=self.exclude
        )
        return [*first, *self.pipeline_stages()]


_WATCH_FIELDS = {
    "mongodb_watch",
    "mongodb_collection",
    "mongodb_database",
    "namespace_include",
    "namespace_exclude",
}


def _watch_problems(values: Mapping[str, Any]) -> list[str]:
    """MONGODB_WATCH against MONGODB_COLLECTION and the namespace filters (`namespaces.watch_problems`)."""
    return watch_problems(
        values.get("mongodb_watch"),
        collection=values.get("mongodb_collection") or "",
        database=values.get("mongodb_database") or "",
        include=values.get("namespace_include") or "",
        exclude=values.get("namespace_exclude") or "",
    )


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


def format_start_at(value: Timestamp | str) -> str:
    return f"Timestamp({value.time}, {value.inc})" if isinstance(value, Timestamp) else value


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


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
