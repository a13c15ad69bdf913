"""The Postgres outbox source: a drop-in for Ably's Postgres connector (its `outbox` and `nodes` tables).

Data flow: `outbox.OutboxReader` (LISTEN/NOTIFY plus polling, commit-order gaps held back by `gaps`)
→ `messages.row_to_message` → the shared `connector.ably` publisher → `store.OutboxStore` (rows deleted
once published, a processed tombstone kept, the `sync()` watermark advanced). `leader.Leadership` keeps
one publisher per outbox; `worker.PostgresWorker` wires it all; `schema` is `create-tables`; `check` is
`check`.
"""
