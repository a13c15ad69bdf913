"""A small unified-test-format runner for the driver specification's change-stream tests.

It interprets only what /work/shared/mongodb-specs uses: client/database/collection entities (with
`observeEvents`, `ignoreCommandMonitoringEvents`, `uriOptions`, `useMultipleMongoses`), `initialData`, the
operations in `operations.py`, `expectResult`, `expectError` and `expectEvents` on command events. Every test
runs with real PyMongo `AsyncMongoClient`s against the server at `uri` (the emulator, or any MongoDB).

Isolation: before each test the server is reset with `{emulatorReset: 1}`; a server that does not know that
command (code 59, a real mongod) has the test's databases dropped instead. Fail points a test configures are
turned off (`mode: "off"`) when it ends, pass or fail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

from pymongo import AsyncMongoClient, ReadPreference, WriteConcern, monitoring
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.client_session import TransactionOptions
from pymongo.errors import NotPrimaryError, OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern

from tests.conformance.matcher import MatchError, match
from tests.conformance.operations import OPERATIONS, IterationTimeoutError, UnsupportedError
from tests.conformance.session_operations import SESSION_OPERATIONS, transaction_options, write_concern
from tests.conformance.specs import ServerInfo, SpecTest, Topology, parse_version

__all__ = [
    "TEST_TIMEOUT_S",
    "EventRecorder",
    "TestContext",
    "check_error",
    "check_event_list",
    "detect_server",
    "run_spec_test",
]

logger = logging.getLogger(__name__)

#: Bound on a whole test. The slowest spec tests iterate three events through two resumes (~1 s each).
TEST_TIMEOUT_S: Final = 60.0

#: Bound on each clean-up step (turning a fail point off, closing a stream or client), so a wedged server
#: cannot hang the suite after a failure.
CLEANUP_TIMEOUT_S: Final = 10.0

#: Server selection for the runner's clients: long enough for a restart/step-down, short enough to report.
SERVER_SELECTION_TIMEOUT_MS: Final = 10_000

#: CommandNotFound: a real mongod answering `emulatorReset`.
COMMAND_NOT_FOUND: Final = 59

#: Commands the unified format always hides from observed events (sensitive, per command monitoring spec).
_SENSITIVE_COMMANDS: Final = frozenset(
    {
        "authenticate",
        "saslstart",
        "saslcontinue",
        "getnonce",
        "createuser",
        "updateuser",
        "copydbgetnonce",
        "copydbsaslstart",
        "copydb",
    }
)

_HELLO_COMMANDS: Final = frozenset({"hello", "ismaster"})

#: Databases a reset never drops.
_SYSTEM_DATABASES: Final = frozenset({"admin", "config", "local"})

_EVENT_KINDS: Final = ("commandStartedEvent", "commandSucceededEvent", "commandFailedEvent")


class EventRecorder(monitoring.CommandListener):
    """Records the command events one client entity observes, minus ignored and sensitive commands."""

    def __init__(self, observe: Sequence[str], ignore: Sequence[str]) -> None:
        unsupported = set(observe) - set(_EVENT_KINDS)
        if unsupported:
            raise UnsupportedError(f"observeEvents {sorted(unsupported)}")
        self._observe = frozenset(observe)
        self._ignore = frozenset({*ignore, "configureFailPoint"})
        self.enabled = True
        self.events: list[tuple[str, Any]] = []

    def _keep(self, kind: str, name: str, command: Mapping[str, Any] | None) -> bool:
        if not self.enabled or kind not in self._observe or name in self._ignore:
            return False
        lowered = name.lower()
        if lowered in _SENSITIVE_COMMANDS:
            return False
        # hello is sensitive only with speculativeAuthenticate, which PyMongo redacts to an empty document.
        return not (lowered in _HELLO_COMMANDS and command is not None and not command)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if self._keep("commandStartedEvent", event.command_name, event.command):
            self.events.append(("commandStartedEvent", event))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if self._keep("commandSucceededEvent", event.command_name, None):
            self.events.append(("commandSucceededEvent", event))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        if self._keep("commandFailedEvent", event.command_name, None):
            self.events.append(("commandFailedEvent", event))


def _server_code(exc: BaseException) -> int | None:
    """The server's error code, for OperationFailure and for NotPrimaryError (a state-change reply)."""
    if isinstance(exc, OperationFailure):
        return exc.code
    details = getattr(exc, "details", None)
    if isinstance(details, Mapping) and isinstance(details.get("code"), int):
        return int(details["code"])
    return None


def _server_reply(exc: BaseException) -> Mapping[str, Any] | None:
    details = getattr(exc, "details", None)
    return details if isinstance(details, Mapping) else None


_EXPECT_ERROR_KEYS: Final = frozenset(
    {
        "isError",
        "isClientError",
        "errorCode",
        "errorCodeName",
        "errorContains",
        "errorLabelsContain",
        "errorLabelsOmit",
        "errorResponse",
    }
)


def _has_label(exc: Exception, label: str) -> bool:
    return isinstance(exc, PyMongoError) and exc.has_error_label(label)


def _check_error_origin(expected: Mapping[str, Any], exc: Exception) -> None:
    """isClientError, errorCode, errorCodeName, errorContains, errorResponse."""
    from_server = isinstance(exc, OperationFailure | NotPrimaryError)
    if "isClientError" in expected and expected["isClientError"] == from_server:
        raise AssertionError(f"isClientError={expected['isClientError']} but got {exc!r}")
    if "errorCode" in expected and _server_code(exc) != expected["errorCode"]:
        raise AssertionError(f"expected error code {expected['errorCode']}, got {_server_code(exc)}: {exc!r}")
    if "errorCodeName" in expected:
        reply = _server_reply(exc) or {}
        if str(reply.get("codeName", "")).lower() != expected["errorCodeName"].lower():
            raise AssertionError(
                f"expected codeName {expected['errorCodeName']}, got {reply.get('codeName')}"
            )
    if "errorContains" in expected and expected["errorContains"].lower() not in str(exc).lower():
        raise AssertionError(f"error message does not contain {expected['errorContains']!r}: {exc}")
    if "errorResponse" in expected:
        match(expected["errorResponse"], _server_reply(exc))


def check_error(expected: Mapping[str, Any], exc: Exception) -> None:
    """Assert that `exc` is the error `expectError` describes."""
    unsupported = set(expected) - _EXPECT_ERROR_KEYS
    if unsupported:
        raise UnsupportedError(f"expectError keys {sorted(unsupported)}")
    _check_error_origin(expected, exc)
    missing = [label for label in expected.get("errorLabelsContain", []) if not _has_label(exc, label)]
    if missing:
        raise AssertionError(f"error lacks labels {missing}: {exc!r} {_server_reply(exc)}")
    present = [label for label in expected.get("errorLabelsOmit", []) if _has_label(exc, label)]
    if present:
        raise AssertionError(f"error has labels it should omit {present}: {exc!r}")


class TestContext:
    """One test's entity map, event recorders and fail points; torn down by `close()`."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self.entities: dict[str, Any] = {}
        self.recorders: dict[str, EventRecorder] = {}
        self._clients: list[AsyncMongoClient[Any]] = []
        self._streams: list[AsyncChangeStream[Any]] = []
        self._fail_points: list[tuple[AsyncMongoClient[Any], str]] = []
        self._sessions: list[Any] = []
        self._internal: AsyncMongoClient[Any] | None = None
        #: Session entity id -> its lsid, for `$$sessionLsid` (kept after the session ends).
        self.lsids: dict[str, Any] = {}

    def internal_client(self) -> AsyncMongoClient[Any]:
        """A client outside the test's entities (no event recording), for the runner's own assertions."""
        if self._internal is None:
            self._internal = AsyncMongoClient(self._uri, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS)
        return self._internal

    def track_stream(self, stream: AsyncChangeStream[Any]) -> None:
        self._streams.append(stream)

    async def configure_fail_point(self, client_id: str, command: Mapping[str, Any]) -> None:
        client = self.entities[client_id]
        await client.admin.command(dict(command))
        self._fail_points.append((client, command["configureFailPoint"]))

    def create_entities(self, specs: Sequence[Mapping[str, Any]]) -> None:
        for spec in specs:
            ((kind, options),) = spec.items()
            if options["id"] in self.entities:
                raise AssertionError(f"duplicate entity id {options['id']}")
            if kind == "client":
                self.entities[options["id"]] = self._create_client(options)
            elif kind == "database":
                self.entities[options["id"]] = self._create_database(options)
            elif kind == "collection":
                self.entities[options["id"]] = self._create_collection(options)
            elif kind == "session":
                self.entities[options["id"]] = self._create_session(options)
            else:
                raise UnsupportedError(f"entity type {kind}")

    def _create_database(self, options: Mapping[str, Any]) -> Any:
        _reject(options, {"id", "client", "databaseName", "databaseOptions"}, "database entity")
        return self.entities[options["client"]].get_database(
            options["databaseName"], **_collection_options(options.get("databaseOptions", {}))
        )

    def _create_collection(self, options: Mapping[str, Any]) -> Any:
        _reject(options, {"id", "database", "collectionName", "collectionOptions"}, "collection entity")
        return self.entities[options["database"]].get_collection(
            options["collectionName"], **_collection_options(options.get("collectionOptions", {}))
        )

    def _create_session(self, options: Mapping[str, Any]) -> Any:
        _reject(options, {"id", "client", "sessionOptions"}, "session entity")
        session = self.entities[options["client"]].start_session(
            **_session_options(options.get("sessionOptions", {}))
        )
        self._sessions.append(session)
        self.lsids[options["id"]] = session.session_id
        return session

    def _create_client(self, options: Mapping[str, Any]) -> AsyncMongoClient[Any]:
        known = {"id", "uriOptions", "observeEvents", "ignoreCommandMonitoringEvents", "useMultipleMongoses"}
        _reject(options, known, "client entity")
        recorder = EventRecorder(
            options.get("observeEvents", []), options.get("ignoreCommandMonitoringEvents", [])
        )
        self.recorders[options["id"]] = recorder
        # useMultipleMongoses only matters on sharded/load-balanced topologies; this is one replica set.
        client: AsyncMongoClient[Any] = AsyncMongoClient(
            self._uri,
            event_listeners=[recorder],
            serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
            **dict(options.get("uriOptions", {})),
        )
        self._clients.append(client)
        return client

    async def run_operation(self, operation: Mapping[str, Any]) -> None:
        name, target_id = operation["name"], operation["object"]
        handler = OPERATIONS.get(name) or SESSION_OPERATIONS.get(name)
        if handler is None:
            raise UnsupportedError(f"operation {name}")
        target = self if target_id == "testRunner" else self.entities[target_id]
        try:
            result = await handler(self, target, operation.get("arguments", {}))
        except (UnsupportedError, IterationTimeoutError):
            raise
        except Exception as exc:
            if "expectError" in operation:
                check_error(operation["expectError"], exc)
                return
            if operation.get("ignoreResultAndError"):
                return
            raise AssertionError(f"{name} on {target_id} raised {exc!r}") from exc
        if "expectError" in operation:
            raise AssertionError(
                f"{name} on {target_id} returned {result!r}, expected {operation['expectError']}"
            )
        if "expectResult" in operation:
            try:
                match(operation["expectResult"], result)
            except MatchError as exc:
                raise AssertionError(f"{name} on {target_id}: {exc} (result: {result!r})") from exc
        if "saveResultAsEntity" in operation:
            self.entities[operation["saveResultAsEntity"]] = result

    def stop_recording(self) -> None:
        for recorder in self.recorders.values():
            recorder.enabled = False

    def check_events(self, expectations: Sequence[Mapping[str, Any]]) -> None:
        for expectation in expectations:
            if expectation.get("eventType", "command") != "command":
                raise UnsupportedError(f"eventType {expectation['eventType']}")
            actual = self.recorders[expectation["client"]].events
            check_event_list(expectation["client"], _with_lsids(expectation, self.lsids), actual)

    async def close(self) -> None:
        """Turn fail points off, close streams and clients; log (never raise) clean-up failures."""
        for client, name in self._fail_points:
            await _quietly(
                client.admin.command({"configureFailPoint": name, "mode": "off"}), f"disable {name}"
            )
        for stream in self._streams:
            await _quietly(stream.close(), "close change stream")
        for session in self._sessions:
            await _quietly(session.end_session(), "end session")
        for client in [*self._clients, *([self._internal] if self._internal else [])]:
            await _quietly(client.close(), "close client")


async def _quietly(awaitable: Any, what: str) -> None:
    try:
        async with asyncio.timeout(CLEANUP_TIMEOUT_S):
            await awaitable
    except (PyMongoError, TimeoutError) as exc:
        logger.warning("clean-up step %s failed: %r", what, exc)


def _collection_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """databaseOptions/collectionOptions: readConcern, writeConcern, readPreference."""
    _reject(options, {"readConcern", "writeConcern", "readPreference"}, "collection/database options")
    out: dict[str, Any] = {}
    if "readConcern" in options:
        out["read_concern"] = ReadConcern(**options["readConcern"])
    if "writeConcern" in options:
        out["write_concern"] = write_concern(options["writeConcern"])
    if "readPreference" in options:
        out["read_preference"] = getattr(ReadPreference, _snake(options["readPreference"]["mode"]).upper())
    return out


def _session_options(options: Mapping[str, Any]) -> dict[str, Any]:
    _reject(options, {"causalConsistency", "defaultTransactionOptions"}, "session options")
    out: dict[str, Any] = {}
    if "causalConsistency" in options:
        out["causal_consistency"] = options["causalConsistency"]
    if "defaultTransactionOptions" in options:
        out["default_transaction_options"] = TransactionOptions(
            **transaction_options(options["defaultTransactionOptions"])
        )
    return out


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _with_lsids(value: Any, lsids: Mapping[str, Any]) -> Any:
    """Replace `{$$sessionLsid: <session id>}` by that session's lsid document."""
    if isinstance(value, Mapping):
        if list(value) == ["$$sessionLsid"]:
            return lsids[value["$$sessionLsid"]]
        return {key: _with_lsids(item, lsids) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_lsids(item, lsids) for item in value]
    return value


def _reject(options: Mapping[str, Any], known: set[str], what: str) -> None:
    unknown = set(options) - known
    if unknown:
        raise UnsupportedError(f"{what} options {sorted(unknown)}")


def _describe(events: Sequence[tuple[str, Any]]) -> str:
    return ", ".join(f"{kind[7:-5]}:{event.command_name}" for kind, event in events) or "none"


def check_event_list(
    client_id: str, expectation: Mapping[str, Any], actual: Sequence[tuple[str, Any]]
) -> None:
    expected = expectation["events"]
    extra_ok = expectation.get("ignoreExtraEvents", False)
    if len(actual) < len(expected) or (not extra_ok and len(actual) != len(expected)):
        raise AssertionError(
            f"{client_id}: expected {len(expected)} events{' or more' if extra_ok else ''}, "
            f"observed {len(actual)} ({_describe(actual)})"
        )
    for index, (want, (kind, event)) in enumerate(zip(expected, actual, strict=False)):
        ((want_kind, fields),) = want.items()
        where = f"{client_id} event {index} ({kind[7:-5]} {event.command_name})"
        if want_kind != kind:
            raise AssertionError(f"{where}: expected a {want_kind}")
        if "commandName" in fields and fields["commandName"] != event.command_name:
            raise AssertionError(f"{where}: expected commandName {fields['commandName']}")
        if "databaseName" in fields and fields["databaseName"] != event.database_name:
            raise AssertionError(
                f"{where}: expected databaseName {fields['databaseName']}, got {event.database_name}"
            )
        try:
            if "command" in fields:
                match(fields["command"], event.command, path="command")
            if "reply" in fields:
                match(fields["reply"], event.reply, path="reply")
        except MatchError as exc:
            raise AssertionError(f"{where}: {exc}") from exc


def _test_databases(test: SpecTest) -> set[str]:
    names = {entity["database"]["databaseName"] for entity in _entity_specs(test) if "database" in entity}
    names |= {data["databaseName"] for data in test.file_doc.get("initialData", [])}
    return names - _SYSTEM_DATABASES


def _entity_specs(test: SpecTest) -> list[Mapping[str, Any]]:
    return list(test.file_doc.get("createEntities", []))


async def reset_server(internal: AsyncMongoClient[Any], test: SpecTest) -> None:
    """Reset the emulator, or drop the test's databases on a server without `emulatorReset`."""
    try:
        await internal.admin.command({"emulatorReset": 1})
        return
    except OperationFailure as exc:
        if exc.code != COMMAND_NOT_FOUND:
            raise
    for name in sorted(_test_databases(test)):
        await internal.drop_database(name)


async def load_initial_data(internal: AsyncMongoClient[Any], test: SpecTest) -> None:
    """initialData: drop each collection, then create it or insert its documents, with w:majority."""
    for data in test.file_doc.get("initialData", []):
        database = internal.get_database(data["databaseName"], write_concern=WriteConcern(w="majority"))
        name = data["collectionName"]
        await database.drop_collection(name)
        create_options = data.get("createOptions")
        if create_options is not None:
            await database.create_collection(name, check_exists=False, **create_options)
        if data["documents"]:
            await database[name].insert_many(data["documents"])
        elif create_options is None:
            await database.create_collection(name, check_exists=False)


async def detect_server(uri: str) -> ServerInfo:
    """Ask the server for its version and topology (judges `runOnRequirements`)."""
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        uri, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS
    )
    try:
        build = await client.admin.command("buildInfo")
        hello = await client.admin.command("hello")
    finally:
        await client.close()
    topology: Topology
    if hello.get("msg") == "isdbgrid":
        topology = "sharded"
    elif "serviceId" in hello:
        topology = "load-balanced"
    elif "setName" in hello:
        topology = "replicaset"
    else:
        topology = "single"
    secondaries = bool(hello.get("secondary")) or len(hello.get("hosts", [])) > 1
    return ServerInfo(
        version=parse_version(str(build["version"])), topology=topology, has_secondaries=secondaries
    )


async def run_spec_test(test: SpecTest, uri: str) -> None:
    """Run one spec test against `uri`; raise AssertionError (or a driver error) if it fails."""
    async with asyncio.timeout(TEST_TIMEOUT_S):
        internal: AsyncMongoClient[Any] = AsyncMongoClient(
            uri, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS
        )
        try:
            await reset_server(internal, test)
            await load_initial_data(internal, test)
        finally:
            await internal.close()
        context = TestContext(uri)
        try:
            context.create_entities(_entity_specs(test))
            for index, operation in enumerate(test.test_doc["operations"]):
                try:
                    await context.run_operation(operation)
                except AssertionError as exc:
                    raise AssertionError(f"operation {index} ({operation['name']}): {exc}") from exc
            context.stop_recording()
            await check_outcome(context.internal_client(), test.test_doc.get("outcome", []))
        finally:
            context.stop_recording()
            await context.close()
        context.check_events(test.test_doc.get("expectEvents", []))


async def check_outcome(client: AsyncMongoClient[Any], outcome: Sequence[Mapping[str, Any]]) -> None:
    """`outcome`: each collection holds exactly these documents (read at primary, local, by `_id`)."""
    for expected in outcome:
        collection = client[expected["databaseName"]].get_collection(
            expected["collectionName"], read_concern=ReadConcern("local")
        )
        documents = await collection.find({}, sort=[("_id", 1)]).to_list()
        try:
            match(list(expected["documents"]), documents, root=False, path="outcome")
        except MatchError as exc:
            raise AssertionError(
                f"outcome of {collection.full_name}: {exc} (documents: {documents})"
            ) from exc
