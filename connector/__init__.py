"""livesync-connector: every committed database change published to Ably channels, in order per channel.

    a source (sources/mongodb: a change stream; sources/postgres: Ably's outbox table)
      └─ reader ──> publisher (ably/) ──> Ably REST batch publish
           └── in-flight ledger ──> position writer (fenced by the lease's epoch)

`runtime.py` runs one instance for whichever source `SOURCE` picks (`sources/registry.py`): the health
server and metrics, the lease (`leadership.py`), and one term at a time (`term.py`) with the stop order of
invariant 7. A source implements the small protocol in `sources/protocol.py`.
"""

__version__ = "0.1.0"
