"""Ably's Postgres connector settings (`ADBC_*`) read as aliases of ours, so a deployment switches images.

| Ably's variable | ours |
| --- | --- |
| `ADBC_POSTGRES_CONNECTION_URI` | `POSTGRES_URI` |
| `ADBC_POSTGRES_{HOST,PORT,DATABASE,USER,PASSWORD}` | `POSTGRES_URI` (built as a libpq key=value string) |
| `ADBC_ABLY_API_KEY` | `ABLY_API_KEY` |
| `ADBC_OUTBOX_TABLE_TABLE_SCHEMA`, `ADBC_OUTBOX_TABLE_TABLE_NAME` | `OUTBOX_TABLE` (`schema.name`) |
| `ADBC_NODES_TABLE_TABLE_SCHEMA`, `ADBC_NODES_TABLE_TABLE_NAME` | `NODES_TABLE` |
| `ADBC_POLL_INTERVAL` (a Go duration such as `1s`, or seconds) | `POLL_INTERVAL_MS` |
| `ADBC_HEARTBEAT_TIMEOUT` (a Go duration, or seconds) | `LEASE_TTL_S` |
| `ADBC_{OUTBOX,NODES}_TABLE_AUTO_CREATE` | `{OUTBOX,NODES}_TABLE_AUTO_CREATE` |
| `ADBC_POLL_FIXED_RATE` | `POLL_FIXED_RATE` |
| `ADBC_HEALTH_ADDRESS` (`[host]:port`) | `HTTP_PORT` (the port; we listen on every interface) |

Every `X_FILE` form (`ADBC_POSTGRES_PASSWORD_FILE`) reads the value from a file, as ours do. Any
`ADBC_POSTGRES_*` variable without `SOURCE` selects `SOURCE=postgres`, unless MongoDB settings are set
too (then SOURCE must say which). Giving one of ours and its alias with different values is an error (one
line, like any bad variable); equal values are fine. An `ADBC_*` variable Ably's connector does not have is
an error, never ignored.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = ["apply_adbc_aliases", "parse_duration_s"]

_DIRECT = {
    "ADBC_POSTGRES_CONNECTION_URI": "POSTGRES_URI",
    "ADBC_ABLY_API_KEY": "ABLY_API_KEY",
}
_TABLES = {"OUTBOX_TABLE": ("ADBC_OUTBOX_TABLE", "outbox"), "NODES_TABLE": ("ADBC_NODES_TABLE", "nodes")}
_PARTS = (
    ("HOST", "host"),
    ("PORT", "port"),
    ("DATABASE", "dbname"),
    ("USER", "user"),
    ("PASSWORD", "password"),
)
_FLAGS = {
    "ADBC_OUTBOX_TABLE_AUTO_CREATE": "OUTBOX_TABLE_AUTO_CREATE",
    "ADBC_NODES_TABLE_AUTO_CREATE": "NODES_TABLE_AUTO_CREATE",
    "ADBC_POLL_FIXED_RATE": "POLL_FIXED_RATE",
}
#: Every variable of Ably's Postgres connector: each is honoured here.
KNOWN: frozenset[str] = frozenset(
    {
        *_DIRECT,
        *(f"ADBC_POSTGRES_{suffix}" for suffix, _ in _PARTS),
        *(f"{prefix}_TABLE_{part}" for prefix, _ in _TABLES.values() for part in ("SCHEMA", "NAME")),
        *_FLAGS,
        "ADBC_POLL_INTERVAL",
        "ADBC_HEARTBEAT_TIMEOUT",
        "ADBC_HEALTH_ADDRESS",
    }
)
#: Settings that mean the MongoDB source: with ADBC_POSTGRES_* and no SOURCE, the source is ambiguous.
_MONGODB_SIGNS = ("MONGODB_DATABASE", "MONGODB_URI", "PIPELINE", "PIPELINE_FILE")
_HEALTH_RE = re.compile(r"^(?:\[?[^\]]*\]?|[^:]*):(\d{1,5})$|^(\d{1,5})$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration_s(text: str) -> float:
    """Seconds in a Go duration (`1s`, `500ms`, `1m30s`) or a plain number of seconds."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos != len(value) or not value:
        raise ValueError(f"must be a duration such as 1s, 500ms or 1m30s (got {text!r})")
    return total


def _conninfo_value(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _read_files(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """`ADBC_X_FILE` read into `ADBC_X` (Docker and Kubernetes secrets), as for our own variables."""
    out = dict(env)
    problems: list[str] = []
    for var, path in env.items():
        name = var.removesuffix("_FILE")
        if not var.startswith("ADBC_") or name == var or name not in KNOWN or not path:
            continue
        if env.get(name):
            problems.append(f"{name}: set either {name} or {var}, not both")
            continue
        try:
            out[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problems.append(f"{var}: cannot read {path!r}: {reason}")
        del out[var]
    return out, problems


def _unknown(env: Mapping[str, str]) -> list[str]:
    problems = []
    for var in sorted(env):
        if var.startswith("ADBC_") and var not in KNOWN and var.removesuffix("_FILE") not in KNOWN:
            close = difflib.get_close_matches(var, sorted(KNOWN), n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(f"{var}: not a setting of Ably's Postgres connector{hint}")
    return problems


def _health_port(value: str) -> str:
    match = _HEALTH_RE.match(value.strip())
    port = match and (match.group(1) or match.group(2))
    if not port or not 0 < int(port) <= 65535:
        raise ValueError(f"must be [host]:port or a port (got {value!r})")
    return port


def _aliases(env: Mapping[str, str]) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Our variable -> (value, the alias it came from), and problems with the aliases themselves."""
    out: dict[str, tuple[str, str]] = {}
    problems: list[str] = []
    for alias, ours in _FLAGS.items():
        if env.get(alias):
            out[ours] = (env[alias], alias)
    if env.get("ADBC_HEALTH_ADDRESS"):
        try:
            out["HTTP_PORT"] = (_health_port(env["ADBC_HEALTH_ADDRESS"]), "ADBC_HEALTH_ADDRESS")
        except ValueError as exc:
            problems.append(f"ADBC_HEALTH_ADDRESS: {exc}")
    for alias, ours in _DIRECT.items():
        if env.get(alias):
            out[ours] = (env[alias], alias)
    parts = [
        (key, env[f"ADBC_POSTGRES_{suffix}"]) for suffix, key in _PARTS if env.get(f"ADBC_POSTGRES_{suffix}")
    ]
    if parts and "POSTGRES_URI" not in out:
        conninfo = " ".join(f"{key}={_conninfo_value(value)}" for key, value in parts)
        out["POSTGRES_URI"] = (conninfo, "ADBC_POSTGRES_HOST")
    for ours, (prefix, default_name) in _TABLES.items():
        schema, name = env.get(f"{prefix}_TABLE_SCHEMA"), env.get(f"{prefix}_TABLE_NAME")
        if schema or name:
            out[ours] = (f"{schema or 'public'}.{name or default_name}", f"{prefix}_TABLE_NAME")
    for alias, ours, scale in (
        ("ADBC_POLL_INTERVAL", "POLL_INTERVAL_MS", 1000.0),
        ("ADBC_HEARTBEAT_TIMEOUT", "LEASE_TTL_S", 1.0),
    ):
        if env.get(alias):
            try:
                seconds = parse_duration_s(env[alias])
            except ValueError as exc:
                problems.append(f"{alias}: {exc}")
                continue
            value = seconds * scale
            out[ours] = (str(round(value)) if scale != 1.0 else f"{value:g}", alias)
    return out, problems


def apply_adbc_aliases(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """`env` with Ably's `ADBC_*` variables translated to ours, and one line per conflict."""
    env, problems = _read_files(env)
    problems += _unknown(env)
    merged = dict(env)
    translated, alias_problems = _aliases(env)
    problems += alias_problems
    for ours, (value, alias) in translated.items():
        given = env.get(ours)
        if given and given != value:
            problems.append(f"{ours}: set either {ours} or {alias}, not both")
        else:
            merged[ours] = value
    adbc = sorted(k for k, v in env.items() if k.startswith("ADBC_POSTGRES_") and v)
    if not env.get("SOURCE") and adbc:
        mongodb = [k for k in _MONGODB_SIGNS if env.get(k)]
        if mongodb:
            problems.append(
                f"SOURCE: both Ably's Postgres settings ({adbc[0]}) and MongoDB settings ({mongodb[0]}) are "
                "set: set SOURCE=postgres or SOURCE=mongodb"
            )
        else:
            merged["SOURCE"] = "postgres"
    return merged, problems
