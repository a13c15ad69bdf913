"""The backend half of a Models SDK `sync()` on MongoDB channels: a `sequenceId` consistent with the state.

A model calls the backend's `sync()` for `{sequenceId, data}`, then replays channel history newer than
`sequenceId` on top of `data`. The connector's message ids are resume tokens (`_id._data`), so the
`sequenceId` must be a resume token too, and it must be read BEFORE the state:

    sequence_id = await current_sequence_id(db.orders)   # 1. where the change stream is now
    data = await db.orders.find(...).to_list()            # 2. the state, read after
    return {"sequenceId": sequence_id, "data": data}

Every event at or before the token was committed before the token was read, so it is in `data`; every
later event sorts after the token and is replayed. Replaying can therefore only repeat an event that `data`
already reflects (harmless: change events carry values, not deltas, so a merge applies them idempotently),
never skip one. Read the other way round, a change committed between the read and the token would be in
neither.

The token is the change stream's post-batch resume token, which the server returns with the (empty) first
batch of a new stream: no event has to happen, and nothing is written.
"""

from __future__ import annotations

from typing import Any, Final

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

__all__ = ["current_sequence_id"]

#: How long one getMore may wait for an event when the first batch carried no token (rare: a stream that
#: returned events in its first batch has the last one's token instead).
MAX_AWAIT_MS: Final = 100
#: Bound on getMores before giving up; one is nearly always enough.
MAX_ATTEMPTS: Final = 50


async def current_sequence_id(
    watched: AsyncCollection[Any] | AsyncDatabase[Any],
) -> str:
    """The current change-stream position of ``watched`` as a Models SDK `sequenceId` (a resume token's
    `_data` hex string). Call it before reading the state you return from `sync()`.

    Pass what the connector watches (the collection, or the database for a database-wide watch); tokens of
    one deployment compare by cluster time first, so either gives a correct boundary. Raises RuntimeError
    if the server returns no resume token (a MongoDB before 4.0.7).
    """
    async with await watched.watch(max_await_time_ms=MAX_AWAIT_MS) as stream:
        for _ in range(MAX_ATTEMPTS):
            token = stream.resume_token
            if token is not None and isinstance(token.get("_data"), str):
                return str(token["_data"])
            await stream.try_next()  # an event (its token) or an empty batch (the post-batch token)
    raise RuntimeError("the change stream returned no resume token (MongoDB 4.0.7+ is needed)")
