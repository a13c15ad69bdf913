"""Structural rules: the product never depends on the test emulators."""

from __future__ import annotations

import ast
from pathlib import Path

CONNECTOR = Path(__file__).resolve().parents[2] / "connector"


def test_connector_never_imports_emulators() -> None:
    offenders = []
    for path in sorted(CONNECTOR.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {name}" for name in names if name.split(".")[0] in ("emulators", "tests")
            ]
    assert len(list(CONNECTOR.rglob("*.py"))) > 10
    assert offenders == []


def test_brief_error_names_each_server_cause_without_the_topology_description() -> None:
    from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

    from connector.sources.mongodb.client import brief_error

    refused = ServerSelectionTimeoutError(
        "127.0.0.1:1: [Errno 111] Connect call failed ('127.0.0.1', 1) (configured timeouts: "
        "socketTimeoutMS: 20000.0ms, connectTimeoutMS: 20000.0ms), Timeout: 0.5s, Topology Description: "
        "<TopologyDescription id: 1, topology_type: Unknown, servers: [...]>"
    )
    assert brief_error(refused) == "cannot connect to 127.0.0.1:1: connection refused"
    unknown = ServerSelectionTimeoutError(
        "db.invalid:27017: [Errno -2] Name or service not known (configured timeouts: x), Timeout: 1s, "
        "Topology Description: <...>"
    )
    assert brief_error(unknown) == "cannot connect to db.invalid:27017: name or service not known"
    no_primary = ServerSelectionTimeoutError(
        "No replica set members found yet, Timeout: 1s, Topology Description: <>"
    )
    assert brief_error(no_primary) == "No replica set members found yet"
    assert brief_error(OperationFailure("not authorized", code=13)) == "not authorized"
    too_large = OperationFailure(
        "BSONObj size: 18874803 is invalid", code=10334, details={"ok": 0, "x": "y" * 500}
    )
    assert brief_error(too_large) == "BSONObj size: 18874803 is invalid"
