"""Where a change stream may be opened, and the scope it then watches (assertIsLegalSpecification).

mongod (src/mongo/db/pipeline/document_source_change_stream.cpp) checks, in this order: a
deployment-wide stream (`allChangesForCluster`) only as `{aggregate: 1}` on `admin` (72 InvalidOptions,
naming the namespace); no other stream on `admin`, none on `local`, none on `config` without
`allowToRunOnConfigDB` (73 InvalidNamespace); none on a `system.` collection without
`allowToRunOnSystemNS` (73); then `resumeAfter` with `startAfter` (50865) and `startAtOperationTime`
with either (40674).
"""

from __future__ import annotations

from typing import Any

from .changestream import Scope
from .errors import CommandError

__all__ = ["scope_for"]

INVALID_OPTIONS = 72
INVALID_NAMESPACE = 73


def scope_for(db: str, target: Any, spec: dict[str, Any]) -> Scope:
    """The scope of a `$changeStream` opened by `aggregate: target` on `db`, or mongod's refusal."""
    if target != 1 and not isinstance(target, str):
        raise CommandError(INVALID_NAMESPACE, f"Invalid aggregate target {target!r}")
    ns = f"{db}.$cmd.aggregate" if target == 1 else f"{db}.{target}"
    cluster = bool(spec.get("allChangesForCluster"))
    if cluster and (db != "admin" or target != 1):
        raise CommandError(
            INVALID_OPTIONS,
            "A $changeStream with 'allChangesForCluster:true' may only be opened on the 'admin' database, "
            f"and with no collection name; found {ns}",
        )
    allowed_db = (
        cluster if db == "admin" else db != "local" and (db != "config" or spec.get("allowToRunOnConfigDB"))
    )
    if not allowed_db:
        raise CommandError(
            INVALID_NAMESPACE, f"$changeStream may not be opened on the internal {db} database"
        )
    if isinstance(target, str) and target.startswith("system.") and not spec.get("allowToRunOnSystemNS"):
        raise CommandError(
            INVALID_NAMESPACE, f"$changeStream may not be opened on the internal {ns} collection"
        )
    if "resumeAfter" in spec and "startAfter" in spec:
        raise CommandError(
            50865, "Do not specify both 'resumeAfter' and 'startAfter' in a $changeStream stage"
        )
    if "startAtOperationTime" in spec and ("resumeAfter" in spec or "startAfter" in spec):
        raise CommandError(40674, "Only one type of resume option is allowed, but multiple were found")
    system = bool(spec.get("showSystemEvents"))
    if cluster:
        return Scope("cluster", db, show_system_events=system)
    return Scope("db", db, show_system_events=system) if target == 1 else Scope("coll", db, target)
