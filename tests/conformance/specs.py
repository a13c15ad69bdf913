"""Loading unified-format spec files and judging `runOnRequirements` against the server under test.

The spec directory comes from env `MONGODB_SPECS_DIR`, defaulting to the pinned copy in `spec-tests/`
(the driver specification's change-stream tests).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from bson import json_util

__all__ = [
    "EMULATED_SERVER",
    "PROJECT_SPECS_DIR",
    "TRANSACTIONS_GLOB",
    "TRANSACTIONS_SUBDIR",
    "ServerInfo",
    "SpecTest",
    "Topology",
    "load_spec_tests",
    "parse_version",
    "skip_reason",
    "specs_dir",
]

Topology = Literal["single", "replicaset", "sharded", "load-balanced"]

#: Schema versions this runner interprets: the change-stream files use 1.4 and 1.7; any 1.x file only adds
#: optional features, which an unknown operation or key then reports as a failure rather than a silent pass.
SUPPORTED_SCHEMA_MAJOR: Final = 1

#: Files holding tests (schema-latest.json is the format's JSON schema, not a test file).
SPEC_GLOB: Final = "change-streams*.json"

#: The project's own tests in the unified format (not from the specification): deployment-wide streams.
PROJECT_SPECS_DIR: Final = Path(__file__).resolve().parent / "project-tests"

#: The transactions spec files, in their own folder of the spec directory.
TRANSACTIONS_SUBDIR: Final = "transactions"
TRANSACTIONS_GLOB: Final = "*.json"

#: runOnRequirement keys this runner can judge; any other key makes the requirement unsatisfiable here.
_KNOWN_REQUIREMENT_KEYS: Final = frozenset(
    {"minServerVersion", "maxServerVersion", "topologies", "serverless"}
)


def specs_dir() -> Path:
    """Return the spec directory: `MONGODB_SPECS_DIR`, else the pinned copy in `spec-tests/`."""
    configured = os.environ.get("MONGODB_SPECS_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent / "spec-tests"


def parse_version(text: str) -> tuple[int, int, int]:
    """Parse "7.0", "4.2.99" or "8.0.0-rc1" into a comparable (major, minor, patch) triple."""
    parts = text.split("-", 1)[0].split(".")
    numbers = [int(part) for part in parts[:3]]
    numbers += [0] * (3 - len(numbers))
    return numbers[0], numbers[1], numbers[2]


@dataclass(frozen=True)
class ServerInfo:
    """What the requirements are judged against: the version and topology the server reports."""

    version: tuple[int, int, int]
    topology: Topology
    serverless: bool = False
    #: A replica set with readable secondaries (the emulator is a single node: none).
    has_secondaries: bool = False


#: The deployment the emulator presents: a single-node replica set reporting server 7.0.0.
EMULATED_SERVER: Final = ServerInfo(version=(7, 0, 0), topology="replicaset")


@dataclass(frozen=True)
class SpecTest:
    """One test of a spec file, with the file-level context it runs in."""

    file_stem: str
    description: str
    file_doc: Mapping[str, Any] = field(repr=False)
    test_doc: Mapping[str, Any] = field(repr=False)

    @property
    def test_id(self) -> str:
        """Readable pytest id: `<file>: <description>`."""
        return f"{self.file_stem}: {self.description}"


def load_spec_tests(directory: Path, pattern: str = SPEC_GLOB) -> list[SpecTest]:
    """Load every test of every spec file matching `pattern` (by default the change-stream files), in file
    then declaration order."""
    tests: list[SpecTest] = []
    for path in sorted(directory.glob(pattern)):
        doc = json_util.loads(path.read_text(encoding="utf-8"))
        for test_doc in doc["tests"]:
            tests.append(SpecTest(path.stem, test_doc["description"], doc, test_doc))
    return tests


def _requirement_unmet(requirement: Mapping[str, Any], server: ServerInfo) -> str | None:
    """Return why one runOnRequirement is not satisfied, or None if it is."""
    unknown = set(requirement) - _KNOWN_REQUIREMENT_KEYS
    if unknown:
        return f"requirement keys {sorted(unknown)} are not supported by this runner"
    version = ".".join(map(str, server.version))
    if "minServerVersion" in requirement and server.version < parse_version(requirement["minServerVersion"]):
        return f"needs server >= {requirement['minServerVersion']} (have {version})"
    if "maxServerVersion" in requirement and server.version > parse_version(requirement["maxServerVersion"]):
        return f"needs server <= {requirement['maxServerVersion']} (have {version})"
    topologies: Sequence[str] = requirement.get("topologies", ())
    if topologies and server.topology not in topologies:
        return f"needs topology {list(topologies)} (have {server.topology})"
    serverless = requirement.get("serverless", "allow")
    if serverless == "require" and not server.serverless:
        return "needs Atlas Serverless"
    if serverless == "forbid" and server.serverless:
        return "forbidden on Atlas Serverless"
    return None


def _requirements_unmet(requirements: Sequence[Mapping[str, Any]] | None, server: ServerInfo) -> str | None:
    """A list of requirements is met if any one of them is; otherwise report every reason."""
    if not requirements:
        return None
    reasons = [_requirement_unmet(requirement, server) for requirement in requirements]
    if any(reason is None for reason in reasons):
        return None
    return "; or ".join(reason for reason in reasons if reason is not None)


#: Tests that read from a secondary inside a transaction and expect the driver's "read preference in a
#: transaction must be primary" error: PyMongo checks that only after selecting a secondary, so on a
#: replica set without secondaries they end in a server-selection timeout, on any server.
NEEDS_SECONDARY: Final = frozenset(
    {
        "read-pref: secondary readPreference",
        "run-command: run command fails with explicit secondary read preference",
        "run-command: run command fails with secondary read preference from transaction options",
        "transaction-options: readPreference inherited from client",
        "transaction-options: readPreference inherited from defaultTransactionOptions",
        "transaction-options: startTransaction overrides readPreference",
    }
)


def skip_reason(test: SpecTest, server: ServerInfo) -> str | None:
    """Return why `test` does not apply to `server` (file or test requirements), or None if it applies."""
    if test.test_id in NEEDS_SECONDARY and not server.has_secondaries:
        return "needs a secondary (PyMongo selects one before refusing it in a transaction)"
    schema = str(test.file_doc.get("schemaVersion", ""))
    if parse_version(schema)[0] != SUPPORTED_SCHEMA_MAJOR:
        return f"schemaVersion {schema} is not supported (runner supports {SUPPORTED_SCHEMA_MAJOR}.x)"
    if "skipReason" in test.test_doc:
        return str(test.test_doc["skipReason"])
    file_reason = _requirements_unmet(test.file_doc.get("runOnRequirements"), server)
    if file_reason is not None:
        return f"file requirements: {file_reason}"
    test_reason = _requirements_unmet(test.test_doc.get("runOnRequirements"), server)
    if test_reason is not None:
        return f"test requirements: {test_reason}"
    return None
