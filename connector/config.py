"""Configuration from environment variables, validated once at startup.

`load_settings()` is the entry point: it reads the process environment (or a given mapping), a `.env`
file in the working directory (real environment variables win), and `X_FILE` variables (the value of
any variable X read from a file, for Docker/Kubernetes secrets; giving X both ways is an error). It
returns a `Settings` or raises `ConfigError` whose `problems` hold one readable line per bad variable
(`MONGODB_DATABASE: required`), never a pydantic dump. An empty value counts as unset, except for
`ABLY_FALLBACK_HOSTS`, where an explicit empty value means "no fallback hosts".

Where settings live: the shared ones (Ably, publishing, the lease, HTTP, logging) in
`connector/shared_settings.py`, each source's beside its code (`connector/sources/<name>/settings.py`);
`connector/sources/registry.py` composes them into the one `Settings`, re-exported here.

`Settings` itself reads nothing from the environment: constructing it with keyword arguments (as tests
do) validates exactly those values. Secrets never leak through it: `repr()` and `redacted()` mask the
API key secret and the databases' passwords; `secrets()` lists them for the log filter.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import ValidationError

from connector.errors import ConfigError, PipelineError
from connector.shared_settings import DEFAULT_ABLY_REST_URL, DEFAULT_FALLBACK_HOSTS, choices, mask_uri
from connector.sources.registry import SETTINGS_PARTS, Settings

__all__ = [
    "DEFAULT_ABLY_REST_URL",
    "DEFAULT_FALLBACK_HOSTS",
    "Settings",
    "load_settings",
    "mask_uri",
]

#: Variables where an explicit empty value means something (not "unset").
_EMPTY_IS_A_VALUE = frozenset({"ably_fallback_hosts"}).union(
    *(p.EMPTY_IS_A_VALUE for p in SETTINGS_PARTS.values())
)
#: `X_FILE` for these fields is a field of its own, not the file form of X.
_OWN_FILE_FIELDS = frozenset().union(*(p.OWN_FILE_FIELDS for p in SETTINGS_PARTS.values()))


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def load_settings(env: Mapping[str, str] | None = None, *, env_file: str | Path | None = ".env") -> Settings:
    """Build Settings from `env` (default: os.environ) plus `env_file` and `X_FILE` variables.

    Raises ConfigError (PipelineError when only the pipeline is wrong) with one line per problem.
    """
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update({k.upper(): v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update({k.upper(): v for k, v in (os.environ if env is None else env).items()})

    alias_problems: list[str] = []
    for each in SETTINGS_PARTS.values():
        merged, problems = each.aliases(merged)
        alias_problems += problems
    values, problems = _collect(merged)
    problems = alias_problems + problems
    if problems:
        raise ConfigError(problems)
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        problems = [line for err in exc.errors() for line in _describe(err, values)]
    else:
        settings._warnings = unknown_variables(merged) + other_sources_variables(values, settings.source)
        return settings
    part = SETTINGS_PARTS.get(values.get("source", "mongodb"))
    if part is not None:
        # A field error stops pydantic before the cross-field checks: report theirs too, so one run
        # lists every bad variable.
        problems += [p for p in part.late_problems(values) if p not in problems]
        if problems and part.pipeline_only(problems):
            raise PipelineError(problems)
    raise ConfigError(problems)


def _known_variables() -> frozenset[str]:
    names = {name.upper() for name in Settings.model_fields}
    names |= {f"{name}_FILE" for name in names}
    for part in SETTINGS_PARTS.values():
        names |= part.ALIASES | {f"{name}_FILE" for name in part.ALIASES}
    return frozenset(names)


#: Variables of the tools a connector is deployed beside (the official postgres and mongo images read
#: them from the same env files): never a misspelling of ours.
_NEIGHBOURS_VARIABLES = frozenset(
    {
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "POSTGRES_DB",
        "POSTGRES_INITDB_ARGS",
        "POSTGRES_INITDB_WALDIR",
        "POSTGRES_HOST_AUTH_METHOD",
        "MONGO_INITDB_ROOT_USERNAME",
        "MONGO_INITDB_ROOT_PASSWORD",
        "MONGO_INITDB_DATABASE",
    }
)


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """One warning per variable that looks like one of ours but is not (`MONGODB_COLECTION`): it shares
    a first word with a known variable and is close to one. Other processes' variables are not named."""
    known = _known_variables()
    by_prefix: dict[str, list[str]] = {}
    for name in sorted(known):
        by_prefix.setdefault(name.split("_", 1)[0], []).append(name)
    warnings = []
    for var in sorted(env):
        if var in known or var in _NEIGHBOURS_VARIABLES:
            continue
        # Only names with the same first word: `POSTGRES_USER` is no misspelling of `ADBC_POSTGRES_USER`.
        close = difflib.get_close_matches(var, by_prefix.get(var.split("_", 1)[0], []), n=1, cutoff=0.85)
        if close:
            warnings.append(f"{var} is not a setting (ignored); did you mean {close[0]}?")
    return warnings


def other_sources_variables(values: Mapping[str, Any], source: str) -> list[str]:
    """One warning per variable set that only another source reads (`PARTITIONS` with SOURCE=postgres):
    it has no effect, which its author most likely did not mean. A shared env file may hold both."""
    own = set(SETTINGS_PARTS[source].model_fields)
    warnings = []
    for name, part in SETTINGS_PARTS.items():
        if name == source:
            continue
        for field in sorted(set(part.model_fields) - own):
            if field in values:
                var = field.upper()
                warnings.append(f"{var} applies to SOURCE={name} only: ignored with SOURCE={source}")
    return warnings


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


def _shown(name: str, value: Any) -> Any:
    """A value as an error line may show it: secrets masked."""
    if name == "ably_api_key":
        return "***"
    for part in SETTINGS_PARTS.values():
        mask = part.MASKS.get(name)
        if mask is not None and isinstance(value, str):
            return mask(value)
    return value


def _describe(err: Mapping[str, Any], values: Mapping[str, Any]) -> list[str]:
    """One readable line for one pydantic error (several for the cross-field check)."""
    loc = err.get("loc") or ()
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if not loc or not isinstance(loc[0], str):
        return str(ctx.get("error", err["msg"])).splitlines()
    name = loc[0]
    var = name.upper()
    shown = _shown(name, values.get(name))
    text: str
    if kind == "missing":
        text = "required"
    elif kind == "value_error":
        text = str(ctx.get("error", err["msg"]))
    elif kind == "literal_error":
        text = f"must be one of {', '.join(choices(Settings.model_fields[name]))} (got {shown!r})"
    elif kind in ("int_parsing", "int_from_float", "int_type"):
        text = f"must be a whole number (got {shown!r})"
    elif kind in ("bool_parsing", "bool_type"):
        text = f"must be true or false (got {shown!r})"
    elif kind in ("float_parsing", "float_type"):
        text = f"must be a number (got {shown!r})"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        ops = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
        bound = next(iter(ctx.values()))
        text = f"must be {ops[kind]} {bound:g} (got {shown!r})"
    else:
        text = f"{err['msg']} (got {shown!r})"
    return [f"{var}: {text}"]
