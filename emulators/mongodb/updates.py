"""updateDescription of update events, derived the way the server's v2 oplog entries describe them.

Operator updates describe the paths the update document names (with the value now stored there);
pipeline updates are described by a structural diff of the pre- and post-image, which is where
``truncatedArrays`` comes from. Unchanged paths are left out; an update that changes nothing writes no
oplog entry at all.
"""

from __future__ import annotations

from typing import Any

from . import docdiff
from .bsonvalues import same
from .update_ops import is_positional

_MISSING = object()

# Operators whose target path is removed rather than set.
_REMOVING = frozenset({"$unset"})
_ARRAY_OPERATORS = frozenset({"$push", "$addToSet"})


def is_operator_update(update: Any) -> bool:
    return isinstance(update, dict) and bool(update) and next(iter(update)).startswith("$")


def _get(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for part in parts:
        if isinstance(cur, dict):
            if part not in cur:
                return _MISSING
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def _existing_prefix(pre: dict[str, Any], parts: list[str]) -> list[str]:
    """The path up to and including the first component that did not exist before the update."""
    cur: Any = pre
    for n, part in enumerate(parts):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return parts[: n + 1]
    return parts


def _target_paths(update: dict[str, Any]) -> list[tuple[str, str]]:
    """(operator, path) pairs; $rename contributes its source (removed) and target (set)."""
    out: list[tuple[str, str]] = []
    for op, spec in update.items():
        if not isinstance(spec, dict):
            continue
        for path, value in spec.items():
            if op == "$rename":
                out.append(("$unset", path))
                out.append(("$set", str(value)))
            else:
                out.append((op, path))
    return out


def _strip_positional(path: str) -> list[str]:
    """The path up to the first positional component (`a.$.b`, `a.$[].b`, `a.$[x].b` → `a`)."""
    parts = path.split(".")
    for n, part in enumerate(parts):
        if is_positional(part):
            return parts[:n]
    return parts


def describe_operator_update(
    pre: dict[str, Any], post: dict[str, Any], update: dict[str, Any]
) -> dict[str, Any]:
    updated: dict[str, Any] = {}
    removed: list[str] = []
    for op, path in _target_paths(update):
        parts = _strip_positional(path)
        if not parts or op == "$setOnInsert":
            continue
        before, after = _get(pre, parts), _get(post, parts)
        if len(parts) < len(path.split(".")) and isinstance(before, list) and isinstance(after, list):
            # Positional paths name the elements they changed (`a.1.b`), found by diffing the array.
            desc: dict[str, Any] = {"updatedFields": updated, "removedFields": removed, "truncatedArrays": []}
            _diff_value(before, after, ".".join(parts), desc)
            continue
        if op in _REMOVING:
            if before is not _MISSING and after is _MISSING:
                removed.append(".".join(parts))
            continue
        if after is _MISSING or same(before, after):
            continue
        if (
            op in _ARRAY_OPERATORS
            and before  # pushing onto an empty array logs the whole new array
            and isinstance(before, list)
            and isinstance(after, list)
            and len(after) > len(before)
            and after[: len(before)] == before
        ):
            for index in range(len(before), len(after)):
                updated[f"{'.'.join(parts)}.{index}"] = after[index]
            continue
        created = _existing_prefix(pre, parts)
        updated[".".join(created)] = _get(post, created)
    return {"updatedFields": updated, "removedFields": removed, "truncatedArrays": []}


def _diff_value(before: Any, after: Any, path: str, desc: dict[str, Any]) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        _diff_doc(before, after, path + ".", desc)
    elif isinstance(before, list) and isinstance(after, list):
        if len(after) < len(before):
            desc["truncatedArrays"].append({"field": path, "newSize": len(after)})
        for index, item in enumerate(after):
            if index >= len(before):
                desc["updatedFields"][f"{path}.{index}"] = item
            else:
                _diff_value(before[index], item, f"{path}.{index}", desc)
    elif not same(before, after):
        desc["updatedFields"][path] = after


def _diff_doc(before: dict[str, Any], after: dict[str, Any], prefix: str, desc: dict[str, Any]) -> None:
    for name in before:
        if name not in after:
            desc["removedFields"].append(prefix + name)
    for name, value in after.items():
        if name not in before:
            desc["updatedFields"][prefix + name] = value
        else:
            _diff_value(before[name], value, prefix + name, desc)


def describe_diff(pre: dict[str, Any], post: dict[str, Any]) -> dict[str, Any] | None:
    """Pipeline updates: the server's oplog delta as an updateDescription; None = logged as a replace."""
    delta = docdiff.oplog_delta(pre, post)
    return docdiff.describe_delta(delta) if delta is not None else None


def _ambiguous_parts(doc: dict[str, Any], path: str) -> list[Any] | None:
    """Path components typed by what they address (int for array indexes), if any is ambiguous."""
    parts: list[Any] = []
    ambiguous = False
    cur: Any = doc
    for part in path.split("."):
        if isinstance(cur, list) and part.isdigit():
            parts.append(int(part))
            cur = cur[int(part)] if int(part) < len(cur) else None
            continue
        if part.isdigit():
            ambiguous = True
        parts.append(part)
        cur = cur.get(part) if isinstance(cur, dict) else None
    return parts if ambiguous else None


def disambiguated_paths(pre: dict[str, Any], post: dict[str, Any], desc: dict[str, Any]) -> dict[str, Any]:
    """``disambiguatedPaths`` (showExpandedEvents): paths with numeric field names, typed per component."""
    out: dict[str, Any] = {}
    for path in desc["updatedFields"]:
        parts = _ambiguous_parts(post, path)
        if parts is not None:
            out[path] = parts
    for path in desc["removedFields"]:
        parts = _ambiguous_parts(pre, path)
        if parts is not None:
            out[path] = parts
    return out
