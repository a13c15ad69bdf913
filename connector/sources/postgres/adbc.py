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

Any `ADBC_POSTGRES_*` variable without `SOURCE` selects `SOURCE=postgres`. Giving one of ours and its
alias with different values is an error (one line, like any bad variable); equal values are fine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

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


def _aliases(env: Mapping[str, str]) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Our variable -> (value, the alias it came from), and problems with the aliases themselves."""
    out: dict[str, tuple[str, str]] = {}
    problems: list[str] = []
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
    merged = dict(env)
    translated, problems = _aliases(env)
    for ours, (value, alias) in translated.items():
        given = env.get(ours)
        if given and given != value:
            problems.append(f"{ours}: set either {ours} or {alias}, not both")
        else:
            merged[ours] = value
    if not env.get("SOURCE") and any(k.startswith("ADBC_POSTGRES_") and v for k, v in env.items()):
        merged["SOURCE"] = "postgres"
    return merged, problems
