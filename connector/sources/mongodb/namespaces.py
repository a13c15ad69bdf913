"""Which namespaces a change stream reports: the watch mode, `NAMESPACE_INCLUDE`/`NAMESPACE_EXCLUDE`, and
the connector's own collections (invariant 6).

A database- or deployment-wide stream reads every change of its scope server-side; what the connector is
not meant to publish is dropped there too, by leading `$match` stages, so it never crosses the network:
- the connector's own collections (token and lease, dead letters, overflow) in `MONGODB_DATABASE`, in every
  mode that can see them: otherwise each checkpoint write would stream back in as a change;
- the namespace filters: comma-separated `<db>.<coll>` globs (`tenant_*.orders`, `*.audit`, `tenant_1.*`).
  `*` matches any run of characters (none included); every other character is literal. The database part
  ends at the first dot (database names cannot hold one), so the collection part may hold dots
  (`shop.orders.archive`). Each part becomes an equality, or an anchored `$regex` with every other
  character escaped, so a name's own `.`, `+` or `(` never acts as a regex operator.

Events about a whole database (`dropDatabase`; `invalidate` on a database stream) have no `ns.coll`. An
include pattern lets them through when its database part matches (the database is at least partly
watched); an exclude pattern drops them only when it covers the whole database (`<db>.*`), so `*.audit`
never hides a `dropDatabase`.

Public API:
    WatchMode, WATCH_MODES, DEPLOYMENT_LABEL
    NamespacePattern, parse_patterns(text) -> list[NamespacePattern]   raises ValueError
    watch_problems(watch, *, collection, database, include, exclude) -> list[str]
    filter_problems(mode, *, database, include, exclude) -> list[str]
    glob_regex(glob) -> str
    kept(db, coll, include, exclude) -> bool
    filter_stages(mode, *, home, own, include, exclude) -> list[dict]
    describe_filters(include, exclude) -> str
    DEPLOYMENT_PRIVILEGES
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from connector.sources.mongodb.pipeline import exclusion_stage

__all__ = [
    "DEPLOYMENT_LABEL",
    "DEPLOYMENT_PRIVILEGES",
    "WATCH_MODES",
    "NamespacePattern",
    "WatchMode",
    "describe_filters",
    "filter_problems",
    "filter_stages",
    "glob_regex",
    "kept",
    "parse_patterns",
    "watch_problems",
]

WatchMode = Literal["collection", "database", "deployment"]
WATCH_MODES: tuple[WatchMode, ...] = ("collection", "database", "deployment")

#: The watch label (and default CONNECTOR_ID) of a deployment-wide watch. It holds a space, which no
#: database name can: a database-wide watch of any database never shares its token document.
DEPLOYMENT_LABEL = "all databases"

#: What a deployment-wide stream needs, named in the error when the server refuses it (Unauthorized).
DEPLOYMENT_PRIVILEGES = (
    'find and changeStream on every non-system collection of every database, i.e. {resource: {db: "", '
    'collection: ""}, actions: ["find", "changeStream"]} (the built-in role readAnyDatabase grants them), '
    "plus readWrite on MONGODB_DATABASE for the token, lease, dead-letter and overflow collections"
)

#: MongoDB forbids these in a database name; a pattern holding one matches nothing (a typo).
_BAD_DB_CHARS = frozenset('/\\ "$')
#: Names never hold `$` (MongoDB reserves it) nor control characters; neither may a pattern.
_BAD_CHARS = frozenset("$") | frozenset(chr(c) for c in range(32)) | {"\x7f"}
#: Characters a regex may hold unescaped. Any other ASCII character is escaped with a backslash, which
#: both PCRE (mongod) and Python's `re` read as that character literally; non-ASCII letters stand as they are.
_PLAIN = frozenset(string.ascii_letters + string.digits + "_")


@dataclass(frozen=True, slots=True)
class NamespacePattern:
    """One `<db>.<coll>` glob, split at its first dot."""

    db: str
    coll: str

    @property
    def text(self) -> str:
        return f"{self.db}.{self.coll}"

    def matches_db(self, name: str) -> bool:
        """Whether the database part matches `name` (used to validate patterns for a database watch)."""
        return re.fullmatch(glob_regex(self.db), name) is not None

    def matches(self, db: str, coll: str) -> bool:
        """Whether the namespace `db.coll` matches, as the server-side `$match` decides."""
        return self.matches_db(db) and re.fullmatch(glob_regex(self.coll), coll) is not None


def kept(
    db: str, coll: str, include: Sequence[NamespacePattern], exclude: Sequence[NamespacePattern]
) -> bool:
    """Whether the filters let a collection's changes through (`check` asks it of existing collections)."""
    included = not include or any(p.matches(db, coll) for p in include)
    return included and not any(p.matches(db, coll) for p in exclude)


def parse_patterns(text: str) -> list[NamespacePattern]:
    """The patterns of a comma-separated list, or ValueError naming each bad one (on one line: the
    configuration error shows one line per variable)."""
    if not text.strip():
        return []
    patterns: list[NamespacePattern] = []
    problems: list[str] = []
    for index, raw in enumerate(text.split(","), start=1):
        item = raw.strip()
        problem = _pattern_problem(item)
        if problem:
            problems.append(f"pattern {index} ({item!r}): {problem}")
            continue
        db, _, coll = item.partition(".")
        patterns.append(NamespacePattern(db, coll))
    if problems:
        raise ValueError("; ".join(problems))
    return patterns


def _pattern_problem(item: str) -> str | None:
    if not item:
        return "empty (a stray comma?); give <db>.<coll> globs separated by commas"
    db, dot, coll = item.partition(".")
    if not dot:
        return f"must be <db>.<coll> (e.g. {item}.* for the whole database)"
    if not db or not coll:
        return "both the database and the collection part must be non-empty (use * for any)"
    bad = sorted((set(db) & _BAD_DB_CHARS) | (set(item) & _BAD_CHARS))
    if bad:
        return f"must not contain {' '.join(repr(c) for c in bad)} (MongoDB names cannot)"
    return None


def watch_problems(
    watch: str | None, *, collection: str, database: str, include: str, exclude: str
) -> list[str]:
    """MONGODB_WATCH against MONGODB_COLLECTION, then the filters against the mode. Takes the raw values
    too (the settings' late problems): what is invalid on its own (a mode, a pattern) is its field's error
    and is skipped here."""
    mode = _mode((watch or "").strip().lower() or ("collection" if collection else "database"))
    if mode == "collection" and not collection:
        return ["MONGODB_WATCH: collection needs MONGODB_COLLECTION (the collection to watch)"]
    if mode in ("database", "deployment") and collection:
        return [f"MONGODB_WATCH: {mode} watches every collection; MONGODB_COLLECTION must be empty"]
    if mode is None or not database:
        return []
    try:
        patterns = parse_patterns(include), parse_patterns(exclude)
    except ValueError:
        return []
    return filter_problems(mode, database=database, include=patterns[0], exclude=patterns[1])


def _mode(text: str) -> WatchMode | None:
    for mode in WATCH_MODES:
        if mode == text:
            return mode
    return None


def filter_problems(
    mode: WatchMode,
    *,
    database: str,
    include: Sequence[NamespacePattern],
    exclude: Sequence[NamespacePattern],
) -> list[str]:
    """The filters against the watch mode: none on one collection; on a database watch each pattern's
    database part must match MONGODB_DATABASE (else it could never match, surely a mistake); and an
    exclusion of everything is refused."""
    problems = []
    for variable, patterns in (("NAMESPACE_INCLUDE", include), ("NAMESPACE_EXCLUDE", exclude)):
        if patterns and mode == "collection":
            problems.append(
                f"{variable}: applies to MONGODB_WATCH=database or deployment, not to a collection"
            )
        elif mode == "database":
            problems += [
                f"{variable}: {p.text!r} can never match: MONGODB_WATCH=database reads only {database!r}"
                for p in patterns
                if not p.matches_db(database)
            ]
    if any(p.db == "*" and p.coll == "*" for p in exclude):
        problems.append("NAMESPACE_EXCLUDE: '*.*' excludes every namespace")
    return problems


def glob_regex(glob: str) -> str:
    """An anchored regex matching exactly the names the glob matches (`*`: any run of characters)."""
    return "^" + ".*".join(_escape(part) for part in glob.split("*")) + "$"


def _escape(text: str) -> str:
    return "".join(c if c in _PLAIN or not c.isascii() else "\\" + c for c in text)


def _part_condition(glob: str) -> Any:
    """Equality for a plain name (an index-friendly, exact comparison), else the anchored regex."""
    return glob if "*" not in glob else {"$regex": glob_regex(glob)}


def _include_clause(pattern: NamespacePattern, *, with_db: bool) -> dict[str, Any]:
    clause: dict[str, Any] = {}
    if with_db and pattern.db != "*":
        clause["ns.db"] = _part_condition(pattern.db)
    if pattern.coll != "*":
        # An event about the whole database has no ns.coll: it passes on its database alone.
        clause["$or"] = [{"ns.coll": _part_condition(pattern.coll)}, {"ns.coll": {"$exists": False}}]
    return clause


def _exclude_clause(pattern: NamespacePattern, *, with_db: bool) -> dict[str, Any]:
    clause: dict[str, Any] = {}
    if with_db and pattern.db != "*":
        clause["ns.db"] = _part_condition(pattern.db)
    if pattern.coll != "*":
        clause["ns.coll"] = _part_condition(pattern.coll)  # a missing ns.coll never matches
    return clause


def namespace_match(
    include: Sequence[NamespacePattern], exclude: Sequence[NamespacePattern], *, with_db: bool
) -> dict[str, Any] | None:
    """The `$match` of the filters, or None when they keep everything. `with_db=False` on a database
    watch, whose events are all of one database (and whose `invalidate` has no `ns` at all)."""
    query: dict[str, Any] = {}
    includes = [_include_clause(p, with_db=with_db) for p in include]
    if includes and all(includes):  # an empty clause (`*.*`) keeps everything
        query["$or"] = includes
    excludes = [_exclude_clause(p, with_db=with_db) for p in exclude]
    if excludes:
        query["$nor"] = excludes
    return {"$match": query} if query else None


def own_collections_stage(home: str, own: Sequence[str]) -> dict[str, Any]:
    """A deployment-wide watch's leading `$match`: the connector's own collections in its home database
    are hidden (invariant 6); collections of the same names in other databases are the user's."""
    return {"$match": {"$nor": [{"ns.db": home, "ns.coll": {"$in": list(own)}}]}}


def filter_stages(
    mode: WatchMode,
    *,
    home: str,
    own: Sequence[str],
    include: Sequence[NamespacePattern] = (),
    exclude: Sequence[NamespacePattern] = (),
) -> list[dict[str, Any]]:
    """The stages that go before the user's pipeline: own collections first, then the filters."""
    if mode == "collection":
        return []  # one namespace, never one of ours (settings check MONGODB_COLLECTION)
    first = exclusion_stage(list(own)) if mode == "database" else own_collections_stage(home, own)
    match = namespace_match(include, exclude, with_db=mode == "deployment")
    return [first, match] if match else [first]


def describe_filters(include: Sequence[NamespacePattern], exclude: Sequence[NamespacePattern]) -> str:
    """`include a.*, b.*; exclude *.audit` (or `no namespace filters`), for `check` and the start-up log."""
    parts = []
    if include:
        parts.append("include " + ", ".join(p.text for p in include))
    if exclude:
        parts.append("exclude " + ", ".join(p.text for p in exclude))
    return "; ".join(parts) or "no namespace filters"
