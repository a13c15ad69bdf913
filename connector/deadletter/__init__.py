"""Dead letters an operator can list, inspect, replay and purge (`livesync-connector deadletter ...`).

One source-agnostic core over a small store per source:

    model.py     a dead letter as both sources show it (`DeadLetter`), what a command selects (`Selection`)
    store.py     what a source's store offers (`DeadLetterStore`): find, get, route, mark, delete
    output.py    the table, `--json` and `show`
    replay.py    replay through the connector's own publisher (batching, retries, pacing, size rules),
                 in the compact "changed, refetch" form by default; marks each record with its outcome
    commands.py  the four commands and their exit statuses

The stores live beside their sources (`sources/mongodb/deadletter_store.py`,
`sources/postgres/deadletter_store.py`); the registry says which one a SOURCE uses.
"""
