"""The delta a pipeline-style update writes to the oplog, and the updateDescription it becomes.

Pipeline updates (and only those) are logged by the server as a structural diff of the pre- and
post-image (``$v: 2`` oplog entries). The diff is built field by field in document order; a
sub-document or array whose diff would be larger than its new value is logged as a plain update of the
whole value, and when the whole diff is not smaller than the new document the server logs a full
replacement instead (a ``replace`` change event). This module follows those rules, measuring sizes on
the BSON form of the v2 delta, so event shapes match: ``truncatedArrays`` for shrunk arrays, the new
sub-document when most of it was removed, ``replace`` when most of the document changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .bsonvalues import encode, same

# Bytes the server adds to the delta's size for the rest of its oplog entry when deciding between a
# delta and a full replacement (update_oplog_entry::kSizeOfDeltaOplogEntryMetadata).
DELTA_ENTRY_PADDING = 15


def _value_size(value: Any) -> int:
    """Size of a BSON element's value (what BSONElement::valuesize counts)."""
    return len(encode({"": value})) - 7  # envelope, type byte, key


def _doc_size(doc: dict[str, Any]) -> int:
    return len(encode(doc))


def _same(a: Any, b: Any) -> bool:
    """Binary equality (1, 1.0 and True differ; so do 0.0 and -0.0), as the server compares elements."""
    return same(a, b)


# The server sizes a delta approximately while building it (ApproxBSONSizeTracker); these are its
# increments: an empty document diff, an empty array diff (header `a: true`), a section wrapper
# (type, one-letter name, terminator, empty object), an entry's type byte and name terminator.
_EMPTY_DOC_DELTA = 5
_EMPTY_ARRAY_DELTA = 9
_SECTION_WRAPPER = 8
_ENTRY_OVERHEAD = 2
_RESIZE_ENTRY = 1 + 4 + 2


@dataclass(slots=True)
class DocDelta:
    size: int = _EMPTY_DOC_DELTA
    deletes: list[str] = field(default_factory=list)
    updates: dict[str, Any] = field(default_factory=dict)
    inserts: dict[str, Any] = field(default_factory=dict)
    children: dict[str, DocDelta | ArrayDelta] = field(default_factory=dict)

    def add_leaf(self, section: list[str] | dict[str, Any], name: str, value: Any = None) -> None:
        if not section:
            self.size += _SECTION_WRAPPER
        self.size += len(name.encode()) + _ENTRY_OVERHEAD + (1 if value is None else _value_size(value))
        if isinstance(section, list):
            section.append(name)
        else:
            section[name] = value

    def add_child(self, name: str, child: DocDelta | ArrayDelta) -> None:
        self.size += len(name.encode()) + _ENTRY_OVERHEAD + child.size + 1  # `s` prefix
        self.children[name] = child

    def serialize(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.deletes:
            out["d"] = dict.fromkeys(self.deletes, False)
        if self.updates:
            out["u"] = dict(self.updates)
        if self.inserts:
            out["i"] = dict(self.inserts)
        for name, child in self.children.items():
            out["s" + name] = child.serialize()
        return out


@dataclass(slots=True)
class ArrayDelta:
    size: int = _EMPTY_ARRAY_DELTA
    updates: dict[int, Any] = field(default_factory=dict)
    children: dict[int, DocDelta | ArrayDelta] = field(default_factory=dict)
    new_size: int | None = None

    def add(self, index: int, value: Any, child: DocDelta | ArrayDelta | None = None) -> None:
        self.size += 1 + len(str(index)) + _ENTRY_OVERHEAD
        if child is not None:
            self.size += child.size
            self.children[index] = child
        else:
            self.size += _value_size(value)
            self.updates[index] = value

    def resize(self, new_size: int) -> None:
        self.new_size = new_size
        self.size += _RESIZE_ENTRY

    def serialize(self) -> dict[str, Any]:
        out: dict[str, Any] = {"a": True}
        if self.new_size is not None:
            out["l"] = self.new_size
        for index in sorted({*self.updates, *self.children}):
            if index in self.children:
                out[f"s{index}"] = self.children[index].serialize()
            else:
                out[f"u{index}"] = self.updates[index]
        return out


def _nested(before: Any, after: Any) -> bool:
    return type(before) is type(after) and isinstance(before, dict | list)


def _sub_delta(before: Any, after: Any) -> DocDelta | ArrayDelta | None:
    if isinstance(before, dict):
        return _doc_delta(before, after, _doc_size(after))
    return _array_delta(before, after, _value_size(after))


def _array_delta(before: list[Any], after: list[Any], limit: int) -> ArrayDelta | None:
    """None when the delta is not smaller than the new array (the server then logs the array)."""
    delta = ArrayDelta()
    for index, (old, new) in enumerate(zip(before, after, strict=False)):
        if limit < delta.size:
            return None
        if not _same(old, new):
            child = _sub_delta(old, new) if _nested(old, new) else None
            delta.add(index, new, child)
    for index in range(len(before), len(after)):
        delta.add(index, after[index])
    if len(before) > len(after):
        delta.resize(len(after))
    return delta if limit > delta.size else None


def _doc_delta(
    before: dict[str, Any], after: dict[str, Any], limit: int, padding: int = 0
) -> DocDelta | None:
    """Fields are matched by position, as the server walks both documents; None when too large."""
    delta = DocDelta(size=_EMPTY_DOC_DELTA + padding)
    pre, post = list(before.items()), list(after.items())
    i = j = 0
    out_of_place: set[str] = set()
    while i < len(pre) and j < len(post):
        if limit < delta.size:
            return None
        (old_name, old), (new_name, new) = pre[i], post[j]
        if old_name != new_name:
            out_of_place.add(old_name)  # deleted, unless re-inserted below
            i += 1
            continue
        if not _same(old, new):
            child = _sub_delta(old, new) if _nested(old, new) else None
            if child is not None:
                delta.add_child(old_name, child)
            else:
                delta.add_leaf(delta.updates, old_name, new)
        i += 1
        j += 1
    for name, _ in pre[i:]:
        delta.add_leaf(delta.deletes, name)
    for name, value in post[j:]:
        delta.add_leaf(delta.inserts, name, value)
        out_of_place.discard(name)
    for name in sorted(out_of_place):
        delta.add_leaf(delta.deletes, name)
    return delta if limit > delta.size else None


def oplog_delta(pre: dict[str, Any], post: dict[str, Any]) -> DocDelta | None:
    """The delta the server would log, or None when it logs a full replacement."""
    post_size = _doc_size(post)
    delta = _doc_delta(pre, post, post_size, DELTA_ENTRY_PADDING)
    if delta is not None and _doc_size(delta.serialize()) < post_size:
        return delta
    return None


def _describe(delta: DocDelta | ArrayDelta, prefix: str, desc: dict[str, Any]) -> None:
    if isinstance(delta, ArrayDelta):
        if delta.new_size is not None:
            desc["truncatedArrays"].append({"field": prefix.rstrip("."), "newSize": delta.new_size})
        for index in sorted({*delta.updates, *delta.children}):
            if index in delta.children:
                _describe(delta.children[index], f"{prefix}{index}.", desc)
            else:
                desc["updatedFields"][f"{prefix}{index}"] = delta.updates[index]
        return
    for name in delta.deletes:
        desc["removedFields"].append(prefix + name)
    for name, value in {**delta.updates, **delta.inserts}.items():
        desc["updatedFields"][prefix + name] = value
    for name, child in delta.children.items():
        _describe(child, f"{prefix}{name}.", desc)


def describe_delta(delta: DocDelta) -> dict[str, Any]:
    """updateDescription of an update logged as ``delta``."""
    desc: dict[str, Any] = {"updatedFields": {}, "removedFields": [], "truncatedArrays": []}
    _describe(delta, "", desc)
    return desc
