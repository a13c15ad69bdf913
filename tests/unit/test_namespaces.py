"""Watch modes and namespace filters: glob → anchored regex, pattern validation with its messages, the
settings' mode rules, the stages in front of the user's pipeline (evaluated by the emulator's engine as a
server would), and the Unauthorized mapping of a deployment-wide stream."""

from __future__ import annotations

import functools
import re
from typing import Any

import pytest
from pymongo.errors import OperationFailure

from connector.errors import HistoryLostError
from connector.sources.mongodb.namespaces import (
    DEPLOYMENT_LABEL,
    NamespacePattern,
    filter_stages,
    glob_regex,
    kept,
    parse_patterns,
)
from connector.sources.mongodb.stream import StartPosition, classify, stream_options
from emulators.mongodb.aggregation import run_pipeline
from tests.unit.settings_helpers import load_with, problems_with

KEY = "appid.keyid:s3cr3t-Key-Value"
PIPELINE = '[{"$addFields": {"_ablyChannel": "$ns.db"}}]'
BASE = {"MONGODB_DATABASE": "home", "ABLY_API_KEY": KEY, "PIPELINE": PIPELINE}
OWN = ["ably", "ably_deadletter", "ably_overflow"]


load = functools.partial(load_with, BASE)
problems = functools.partial(problems_with, BASE)


# ---- glob → regex ----


@pytest.mark.parametrize(
    ("glob", "matches", "misses"),
    [
        ("tenant_*", ["tenant_", "tenant_1", "tenant_a_b"], ["tenant", "xtenant_1", "Tenant_1"]),
        ("*", ["", "a", "any.thing"], []),
        ("*.audit", ["x.audit", ".audit"], ["xaudit", "x.audit2"]),  # a collection part may hold dots
        ("a.b+c(d)", ["a.b+c(d)"], ["aXb+c(d)", "a.bbc(d)", "a.b+c(d)x"]),
        ("[x]|y^z$w", ["[x]|y^z$w"], ["x", "y", "[x]"]),
        ("ünï*", ["ünïcode", "ünï"], ["uni"]),
        ("*mid*", ["mid", "amidb"], ["mi"]),
    ],
)
def test_glob_regex_is_anchored_and_literal_but_for_the_star(
    glob: str, matches: list[str], misses: list[str]
) -> None:
    regex = glob_regex(glob)
    assert regex.startswith("^") and regex.endswith("$")
    for name in matches:
        assert re.fullmatch(regex, name), (glob, name)
    for name in misses:
        assert not re.search(regex, name), (glob, name)


def test_every_escape_is_a_backslash_before_punctuation() -> None:
    """PCRE and Python's `re` both read a backslash before a non-alphanumeric character as that character
    (an escaped letter or digit could mean a class, like `\\d`): no name character is ever escaped so."""
    regex = glob_regex("a-b c#d~e/f")
    assert regex == "^a\\-b\\ c\\#d\\~e\\/f$"
    for index, char in enumerate(regex):
        if index and regex[index - 1] == "\\":
            assert not char.isalnum()


# ---- pattern validation ----


def test_patterns_split_at_the_first_dot() -> None:
    assert parse_patterns(" tenant_*.orders , *.audit,shop.orders.archive") == [
        NamespacePattern("tenant_*", "orders"),
        NamespacePattern("*", "audit"),
        NamespacePattern("shop", "orders.archive"),
    ]
    assert parse_patterns("") == parse_patterns("  ") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a.b,,c.d", "pattern 2 (''): empty (a stray comma?); give <db>.<coll> globs separated by commas"),
        ("a.b,", "pattern 2 (''): empty (a stray comma?); give <db>.<coll> globs separated by commas"),
        ("tenant_*", "pattern 1 ('tenant_*'): must be <db>.<coll> (e.g. tenant_*.* for the whole database)"),
        (".orders", "pattern 1 ('.orders'): both the database and the collection part must be non-empty"),
        ("shop.", "pattern 1 ('shop.'): both the database and the collection part must be non-empty"),
        ("sh op.x", "pattern 1 ('sh op.x'): must not contain ' ' (MongoDB names cannot)"),
        ("shop.$cmd", "pattern 1 ('shop.$cmd'): must not contain '$' (MongoDB names cannot)"),
        ('a/b".x', "pattern 1 ('a/b\".x'): must not contain '\"' '/' (MongoDB names cannot)"),
        ("shop.a\nb", "pattern 1 ('shop.a\\nb'): must not contain '\\n' (MongoDB names cannot)"),
    ],
)
def test_bad_patterns_are_named_with_their_position(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_patterns(text)
    assert str(info.value).startswith(message)


def test_every_bad_pattern_is_named_on_its_variables_one_line() -> None:
    found = problems(MONGODB_WATCH="deployment", NAMESPACE_INCLUDE="a,b.c,", NAMESPACE_EXCLUDE="x y.z")
    assert found == [
        "NAMESPACE_INCLUDE: pattern 1 ('a'): must be <db>.<coll> (e.g. a.* for the whole database); "
        "pattern 3 (''): empty (a stray comma?); give <db>.<coll> globs separated by commas",
        "NAMESPACE_EXCLUDE: pattern 1 ('x y.z'): must not contain ' ' (MongoDB names cannot)",
    ]


# ---- settings: the mode and its mismatches ----


def test_the_default_mode_keeps_todays_behaviour() -> None:
    assert load().watch_mode == "database"
    assert load(MONGODB_COLLECTION="orders").watch_mode == "collection"
    assert load(MONGODB_WATCH="").watch_mode == "database"
    assert load(MONGODB_WATCH=" Database ").watch_mode == "database"
    assert load(MONGODB_WATCH="collection", MONGODB_COLLECTION="orders").connector_id == "home.orders"


def test_deployment_mode_label_and_connector_id() -> None:
    s = load(MONGODB_WATCH="deployment")
    assert s.watch_mode == "deployment" and not s.watches_database
    assert s.watch_label == s.connector_id == DEPLOYMENT_LABEL
    assert load(MONGODB_WATCH="deployment", CONNECTOR_ID="tenants").connector_id == "tenants"
    # No database name holds a space: a database watch never shares the deployment's token document.
    assert " " in DEPLOYMENT_LABEL


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"MONGODB_WATCH": "cluster"},
            "MONGODB_WATCH: must be collection, database or deployment (got 'cluster')",
        ),
        (
            {"MONGODB_WATCH": "collection"},
            "MONGODB_WATCH: collection needs MONGODB_COLLECTION (the collection to watch)",
        ),
        (
            {"MONGODB_WATCH": "deployment", "MONGODB_COLLECTION": "orders"},
            "MONGODB_WATCH: deployment watches every collection; MONGODB_COLLECTION must be empty",
        ),
        (
            {"MONGODB_WATCH": "database", "MONGODB_COLLECTION": "orders"},
            "MONGODB_WATCH: database watches every collection; MONGODB_COLLECTION must be empty",
        ),
        (
            {"MONGODB_COLLECTION": "orders", "NAMESPACE_INCLUDE": "home.orders"},
            "NAMESPACE_INCLUDE: applies to MONGODB_WATCH=database or deployment, not to a collection",
        ),
        (
            {"NAMESPACE_EXCLUDE": "other.*"},
            "NAMESPACE_EXCLUDE: 'other.*' can never match: MONGODB_WATCH=database reads only 'home'",
        ),
        (
            {"MONGODB_WATCH": "deployment", "NAMESPACE_EXCLUDE": "*.*"},
            "NAMESPACE_EXCLUDE: '*.*' excludes every namespace",
        ),
    ],
)
def test_mode_mismatches_are_config_errors(env: dict[str, str], message: str) -> None:
    assert problems(**env) == [message]


def test_mode_mismatches_are_reported_beside_other_variables_errors() -> None:
    """A field error stops pydantic before the cross-field checks: they are reported all the same."""
    found = problems(MONGODB_WATCH="collection", MAX_MESSAGE_SIZE="big", NAMESPACE_INCLUDE="x")
    assert "MONGODB_WATCH: collection needs MONGODB_COLLECTION (the collection to watch)" in found
    assert any(p.startswith("MAX_MESSAGE_SIZE: ") for p in found)
    assert any(p.startswith("NAMESPACE_INCLUDE: pattern 1 ('x')") for p in found)
    assert len(found) == 3
    found = problems(NAMESPACE_EXCLUDE="other.*", MAX_MESSAGE_SIZE="big")
    assert "NAMESPACE_EXCLUDE: 'other.*' can never match: MONGODB_WATCH=database reads only 'home'" in found


# ---- the stages in front of the user's pipeline ----


def ev(db: str | None, coll: str | None = None, op: str = "insert") -> dict[str, Any]:
    """A change event as a stream returns it (no `ns` for an invalidate, no `ns.coll` for dropDatabase)."""
    event: dict[str, Any] = {"_id": {"_data": f"{db}.{coll}.{op}"}, "operationType": op}
    if db is not None:
        event["ns"] = {"db": db} if coll is None else {"db": db, "coll": coll}
    return event


EVENTS = [
    ev("home", "ably", "update"),
    ev("home", "ably_deadletter"),
    ev("home", "ably_overflow"),
    ev("home", "orders"),
    ev("tenant_1", "orders"),
    ev("tenant_1", "ably"),  # a tenant's own collection named like ours: theirs, published
    ev("tenant_1", "audit"),
    ev("tenant_12", "users"),
    ev("tenant_2", None, "dropDatabase"),
    ev("tenantX", "orders"),
    ev("t+1(x)", "x"),  # regex metacharacters in a name stay literal
    ev("tt1(x)", "x"),
    ev(None, None, "invalidate"),
]


def passed(stages: list[dict[str, Any]], events: list[dict[str, Any]] | None = None) -> list[str]:
    return [e["_id"]["_data"] for e in run_pipeline(list(events or EVENTS), stages)]


def deployment(include: str = "", exclude: str = "") -> list[dict[str, Any]]:
    return filter_stages(
        "deployment",
        home="home",
        own=OWN,
        include=parse_patterns(include),
        exclude=parse_patterns(exclude),
    )


def test_deployment_hides_own_collections_in_the_home_database_only() -> None:
    assert deployment() == [{"$match": {"$nor": [{"ns.db": "home", "ns.coll": {"$in": OWN}}]}}]
    assert "home.ably.update" not in passed(deployment())
    assert passed(deployment()) == [e["_id"]["_data"] for e in EVENTS[3:]]


def test_include_globs_keep_matching_namespaces_and_database_events() -> None:
    assert passed(deployment("tenant_*.orders,tenant_1*.users")) == [
        "tenant_1.orders.insert",
        "tenant_12.users.insert",
        "tenant_2.None.dropDatabase",  # about its whole database: kept on the database part alone
    ]
    assert passed(deployment("t+1(*.x")) == ["t+1(x).x.insert"]


def test_exclude_globs_drop_matching_namespaces_but_database_events_only_when_whole() -> None:
    assert passed(deployment(exclude="*.audit,tenant_1.orders")) == [
        "home.orders.insert",
        "tenant_1.ably.insert",
        "tenant_12.users.insert",
        "tenant_2.None.dropDatabase",  # `*.audit` does not hide a dropDatabase
        "tenantX.orders.insert",
        "t+1(x).x.insert",
        "tt1(x).x.insert",
        "None.None.invalidate",
    ]
    assert "tenant_2.None.dropDatabase" not in passed(deployment(exclude="tenant_2.*"))


def test_include_then_exclude() -> None:
    stages = deployment("tenant_*.*", "*.audit,tenant_12.*")
    assert passed(stages) == ["tenant_1.orders.insert", "tenant_1.ably.insert", "tenant_2.None.dropDatabase"]
    assert len(stages) == 2  # own collections first, then one $match for the filters


def test_include_everything_adds_no_stage() -> None:
    assert deployment("*.*") == deployment()


def test_database_watch_keeps_its_exclusion_stage_and_filters_collections_only() -> None:
    include = parse_patterns("home.ord*,*.audit")
    stages = filter_stages("database", home="home", own=OWN, include=include)
    assert stages[0] == {"$match": {"ns.coll": {"$nin": OWN}}}
    home_events = [e for e in EVENTS if e.get("ns", {"db": "home"})["db"] == "home"]
    home_events.append(ev("home", "audit"))
    home_events.append(ev("home", None, "dropDatabase"))
    assert passed(stages, home_events) == [
        "home.orders.insert",
        "None.None.invalidate",  # no ns at all: a database stream's invalidate always passes
        "home.audit.insert",
        "home.None.dropDatabase",
    ]


@pytest.mark.parametrize(
    ("include", "exclude"),
    [("tenant_*.orders,tenant_1*.users", ""), ("", "*.audit,tenant_1.orders"), ("tenant_*.*", "*.audit")],
)
def test_kept_agrees_with_the_server_side_match(include: str, exclude: str) -> None:
    """`check` asks `kept` of existing collections: it must say what the stream's `$match` does."""
    inc, exc = parse_patterns(include), parse_patterns(exclude)
    stages = filter_stages("deployment", home="elsewhere", own=OWN, include=inc, exclude=exc)
    with_coll = [e for e in EVENTS if "coll" in e.get("ns", {})]
    assert passed(stages, with_coll) == [
        e["_id"]["_data"] for e in with_coll if kept(e["ns"]["db"], e["ns"]["coll"], inc, exc)
    ]


def test_collection_watch_adds_nothing() -> None:
    assert filter_stages("collection", home="home", own=OWN) == []


def test_settings_stream_pipeline_puts_filters_before_the_users_stages() -> None:
    s = load(MONGODB_WATCH="deployment", NAMESPACE_INCLUDE="tenant_*.*", NAMESPACE_EXCLUDE="*.audit")
    pipeline = s.stream_pipeline()
    assert pipeline[:2] == deployment("tenant_*.*", "*.audit")
    assert pipeline[2:] == s.pipeline_stages()
    options = stream_options(s)
    assert options.deployment and options.collection == ""
    assert not stream_options(load()).deployment


# ---- errors on opening ----


def unauthorized() -> OperationFailure:
    return OperationFailure(
        "not authorized on admin to execute command { aggregate: 1 }",
        code=13,
        details={"ok": 0, "code": 13, "codeName": "Unauthorized", "errmsg": "not authorized"},
    )


def test_unauthorized_on_a_deployment_stream_names_the_privileges() -> None:
    error = classify(unauthorized(), StartPosition(), deployment=True)
    assert error.code == 72003 and not isinstance(error, HistoryLostError)
    text = str(error)
    assert text.startswith("not authorized to watch the whole deployment (MONGODB_WATCH=deployment)")
    for needed in ('{resource: {db: "", collection: ""}', '"find", "changeStream"', "readAnyDatabase"):
        assert needed in text
    assert "readWrite on MONGODB_DATABASE" in text
    assert "not authorized on admin" in text  # the server's own words stay in the line


def test_unauthorized_elsewhere_keeps_the_plain_message() -> None:
    text = str(classify(unauthorized(), StartPosition()))
    assert text.startswith("change stream failed (OperationFailure): not authorized on admin")
