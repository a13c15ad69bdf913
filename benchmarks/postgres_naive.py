"""The naive outbox relay the Postgres benchmark compares against (run as its own process).

`python -m benchmarks.postgres_naive --dsn D --table T --rows N --ably-url U --key K`: poll 100 unprocessed
rows in `sequence_id` order, publish each with one `POST /channels/{channel}/messages`, mark it processed,
repeat until N rows are done. Prints one JSON line: rows, first_at, last_at (wall clock of the first and
last publish answered), cpu_s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
import urllib.parse

import httpx
import psycopg
from psycopg import sql

POLL_LIMIT = 100


async def relay(dsn: str, table: str, rows: int, ably_url: str, key: str) -> dict[str, float]:
    name, secret = key.split(":", 1)
    headers = {"X-Ably-Version": "6", "Content-Type": "application/json"}
    done, first_at, last_at = 0, 0.0, 0.0
    select = sql.SQL(
        "SELECT sequence_id, mutation_id, channel, name, data::text FROM {} WHERE NOT processed "
        "ORDER BY sequence_id LIMIT %s"
    ).format(sql.Identifier(table))
    mark = sql.SQL("UPDATE {} SET processed = true WHERE sequence_id = %s").format(sql.Identifier(table))
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        httpx.AsyncClient(base_url=ably_url, auth=(name, secret), headers=headers) as http,
    ):
        while done < rows:
            cur = await conn.execute(select, [POLL_LIMIT])
            for seq_id, mutation_id, channel, msg_name, data in await cur.fetchall():
                message = {
                    "id": str(seq_id),
                    "name": msg_name,
                    "data": data,
                    "encoding": "json",
                    "extras": {"headers": {"x-ably-models-event-uuid": mutation_id}},
                }
                path = f"/channels/{urllib.parse.quote(channel, safe='')}/messages"
                response = await http.post(path, content=json.dumps(message))
                response.raise_for_status()
                await conn.execute(mark, [seq_id])
                last_at = time.time()
                first_at = first_at or last_at
                done += 1
                if done >= rows:
                    break
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"rows": done, "first_at": first_at, "last_at": last_at, "cpu_s": usage.ru_utime + usage.ru_stime}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.postgres_naive")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--ably-url", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(relay(args.dsn, args.table, args.rows, args.ably_url, args.key))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
