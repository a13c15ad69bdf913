"""`make demo-postgres` / `python -m demo.postgres`: outbox rows flowing from PostgreSQL to Ably channels.

Starts a throwaway PostgreSQL (emulators/postgres, as the tests do), the Ably emulator and the connector
(`python -m connector run` with SOURCE=postgres, configured only by environment variables), after
`python -m connector create-tables`. Then an "application" writes comments on a few posts the outbox
way (its change and an outbox row in one transaction), and now and then commits out of sequence order
(a slow transaction draws an id, a quick one draws the next and commits first). Every message is printed
as the Ably emulator receives it, with the sync() watermark (`SELECT outbox_sync_sequence_id()`): the
held-back row still arrives first. Ctrl-C (or DEMO_SECONDS=N) stops everything; the connector drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import psycopg
from psycopg.types.json import Jsonb

from demo.processes import child_env
from emulators.ably import AblyEmulatorAdmin
from emulators.postgres import PostgresServer, free_port

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "demo.key:demo-secret"
POSTS = ["post:1", "post:2", "post:3"]
WORDS = ["nice", "agreed", "interesting", "+1", "why?", "great point", "citation needed"]
STARTUP_TIMEOUT_S = 60.0
COLOURS = ["\033[36m", "\033[35m", "\033[33m"]
RESET = "\033[0m"
POLL_S = 0.1


async def start_ably() -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "emulators.ably", "--port", "0", "--key", API_KEY,
        stdout=asyncio.subprocess.PIPE, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT_S)).decode().strip()
    if not line:
        raise RuntimeError("the Ably emulator exited before it was ready")
    return proc, line.rsplit(" ", 1)[-1]


async def stop(proc: asyncio.subprocess.Process, timeout: float = 30.0) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        return await proc.wait()


async def wait_ready(port: int, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    async with httpx.AsyncClient(timeout=2.0) as http:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"the connector exited with status {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                response = await http.get(f"http://127.0.0.1:{port}/readyz")
                if response.status_code == 200 and response.json().get("role") == "leader":
                    return
            await asyncio.sleep(POLL_S)
    raise RuntimeError("the connector did not become ready")


async def write_comments(dsn: str, stopping: asyncio.Event) -> None:
    """The application: a comment and its outbox row in one transaction; every fifth, out of order."""
    rng = random.Random(11)
    async with (
        await psycopg.AsyncConnection.connect(dsn) as app,
        await psycopg.AsyncConnection.connect(dsn) as slow,
    ):
        await app.execute("CREATE TABLE IF NOT EXISTS comments (id SERIAL PRIMARY KEY, post TEXT, text TEXT)")
        await app.commit()
        n = 0
        while not stopping.is_set():
            n += 1
            if n % 5 == 0:
                await comment(slow, rng.choice(POSTS), "(slow transaction, drawn first)", rng)
                await comment(app, POSTS[0], "(quick transaction, committed first)", rng)
                await app.commit()
                print("   app: a later row committed first; the connector holds it back", flush=True)
                await asyncio.sleep(0.8)
                await slow.commit()
            else:
                await comment(app, rng.choice(POSTS), rng.choice(WORDS), rng)
                await app.commit()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.6)


async def comment(
    conn: psycopg.AsyncConnection[tuple[object, ...]], post: str, text: str, rng: random.Random
) -> None:
    await conn.execute("INSERT INTO comments (post, text) VALUES (%s, %s)", [post, text])
    await conn.execute(
        "INSERT INTO outbox (mutation_id, channel, name, data, headers) "
        "VALUES (%s, %s, 'addComment', %s, %s)",
        [
            f"mut-{rng.getrandbits(32):08x}",
            post,
            Jsonb({"post": post, "text": text}),
            Jsonb({"author": "demo"}),
        ],
    )


async def show(admin: AblyEmulatorAdmin, dsn: str, stopping: asyncio.Event) -> int:
    seen = 0
    colours: dict[str, str] = {}
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while not stopping.is_set():
            messages = await admin.amessages(since=seen)
            if messages:
                cur = await conn.execute("SELECT outbox_sync_sequence_id(), count(*) FROM outbox")
                row = await cur.fetchone()
                watermark, left = row if row else (0, 0)
            for msg in messages:
                seen += 1
                colour = colours.setdefault(msg["channel"], COLOURS[len(colours) % len(COLOURS)])
                text = orjson.loads(msg["data"])["text"] if msg.get("encoding") == "json" else msg.get("data")
                print(
                    f"{colour}[{msg['channel']}]{RESET} id {msg['id']:>3} {msg['name']} {text!r:<40} "
                    f"sync() watermark {watermark}, outbox rows left {left}",
                    flush=True,
                )
            await asyncio.sleep(POLL_S)
    return seen


async def main() -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    seconds = float(os.environ.get("DEMO_SECONDS", "0"))
    if seconds:
        loop.call_later(seconds, stopping.set)
    pg = PostgresServer()
    await asyncio.to_thread(lambda: pg.init().start())
    ably, connector = None, None
    workdir = tempfile.TemporaryDirectory(prefix="livesync-demo-")
    try:
        dsn = pg.dsn("postgres")
        print(f"PostgreSQL {pg.version} ({pg.source}): {dsn}", flush=True)
        ably, ably_url = await start_ably()
        print(f"Ably emulator: {ably_url}", flush=True)
        port = free_port()
        # The same run for everyone: only the demo's settings (and DEMO_LOG_LEVEL) reach the connector,
        # whatever the shell exports, and it runs in an empty directory, so no `.env` is read either.
        env = child_env(
            {
                "SOURCE": "postgres",
                "POSTGRES_URI": dsn,
                "ABLY_API_KEY": API_KEY,
                "ABLY_REST_URL": ably_url,
                "HTTP_PORT": str(port),
                "LOG_FORMAT": "text",
                "LOG_LEVEL": os.environ.get("DEMO_LOG_LEVEL", "WARNING"),
                "CHECKPOINT_INTERVAL_MS": "200",
            }
        )
        create = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "connector", "create-tables", env=env, cwd=workdir.name
        )
        if await create.wait() != 0:
            raise RuntimeError("create-tables failed")
        # Children in sessions of their own: a terminal's Ctrl-C reaches only the demo, which stops
        # them in order (the connector first, so it drains and stores its position).
        connector = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "connector", "run", env=env, cwd=workdir.name, start_new_session=True
        )
        await wait_ready(port, connector)
        print("connector leading: writing comments (Ctrl-C stops)\n", flush=True)
        admin = AblyEmulatorAdmin(ably_url)
        writer = asyncio.create_task(write_comments(dsn, stopping))
        shown = await show(admin, dsn, stopping)
        await writer
        status = await stop(connector)
        print(f"\nSummary: {shown} messages shown; the connector stopped with status {status}.", flush=True)
        return 0 if status == 0 else 1
    finally:
        for proc in (connector, ably):
            if proc is not None:
                await stop(proc)
        workdir.cleanup()
        await asyncio.to_thread(pg.cleanup)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
