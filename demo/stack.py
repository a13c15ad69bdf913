"""The whole LiveSync chain on this machine: MongoDB emulator → connector(s) → Ably emulator → clients.

`Stack` starts the MongoDB emulator, the Ably emulator (REST and realtime), one connector per pipeline
(each its own `CONNECTOR_ID`) and the application backend with the demo page (`demo.backend`); it stops
them in the order the data flows (backend, connectors — which drain and store their resume tokens — then
the emulators). `make demo` uses it; so do the client tests:

    python -m demo.stack --pipeline models-sdk.json --pipeline models-sdk-collection.json

prints one JSON line (the URLs, the key, the connectors' ids and health URLs) once everything is ready, and
runs until SIGTERM/SIGINT; then it stops and exits 0 (1 if a connector did not stop cleanly).
`--cipher-key KEY` (base64, 16 or 32 bytes) encrypts the channels: the connectors get it as
CHANNEL_CIPHER_KEY, the page's config and the JSON line (`cipherKey`) carry it for the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import httpx
import orjson
from aiohttp import web

from demo.backend import WEB_DIR, Backend
from demo.processes import ROOT, STARTUP_TIMEOUT_S, Child

API_KEY: Final = "demo.key:demo-secret"
DATABASE: Final = "shop"
COLLECTION: Final = "orders"
READY_POLL_S: Final = 0.1
BUNDLE_ENTRY: Final = WEB_DIR / "vendor.js"
BUNDLE: Final = WEB_DIR / "build" / "vendor.js"
ESBUILD: Final = ROOT / "node_modules" / ".bin" / "esbuild"
BUNDLE_TIMEOUT_S: Final = 120.0
LOG_LEVEL_KNOB: Final = "DEMO_LOG_LEVEL"  # the connectors' LOG_LEVEL (default WARNING); LOG_LEVEL is ignored


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_page_bundle() -> str | None:
    """Bundle ably-js and the Models SDK for the browser (esbuild from node_modules); None if built,
    else why not. Rebuilt only when the lockfile or the entry changed."""
    if not ESBUILD.exists():
        return "node_modules is missing: run `npm ci` for the web page"
    inputs = [ROOT / "package-lock.json", BUNDLE_ENTRY]
    if BUNDLE.exists() and all(BUNDLE.stat().st_mtime >= p.stat().st_mtime for p in inputs):
        return None
    command = [
        str(ESBUILD),
        str(BUNDLE_ENTRY),
        "--bundle",
        "--format=esm",
        "--platform=browser",
        "--log-level=warning",
        f"--outfile={BUNDLE}",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=BUNDLE_TIMEOUT_S)
    if result.returncode != 0:
        return f"esbuild failed: {result.stderr.strip()}"
    return None


async def wait_ready(connector: Child, url: str, timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Wait until the connector leads and its change stream is open (`/readyz` answers 200 with role
    leader; a standby answers 200 too), so no write is missed."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:  # 127.0.0.1: never a proxy
        while time.monotonic() < deadline:
            if not connector.running:
                raise RuntimeError(f"the connector exited with status {connector.proc.returncode}")
            try:
                ready = await http.get(url)
                if ready.status_code == 200 and ready.json().get("role") == "leader":
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            await asyncio.sleep(READY_POLL_S)
    raise RuntimeError(f"the connector was not ready within {timeout:.0f}s")


class Stack:
    """Start with `await stack.start()` (returns `info`), stop with `await stack.stop()` (idempotent)."""

    def __init__(
        self,
        pipelines: list[str],
        *,
        connection_state_ttl_s: float | None = None,
        cipher_key: str | None = None,
    ) -> None:
        self.pipelines = pipelines
        self.connection_state_ttl_s = connection_state_ttl_s
        #: CHANNEL_CIPHER_KEY for the connectors, and the key the page's channel is opened with.
        self.cipher_key = cipher_key
        self.mongo: Child | None = None
        self.ably: Child | None = None
        self.connectors: dict[str, Child] = {}
        self.info: dict[str, Any] = {}
        self._runner: web.AppRunner | None = None
        # The connectors' working directory: empty, so a `.env` in the checkout configures nothing.
        self._workdir: tempfile.TemporaryDirectory[str] | None = None

    async def start(self) -> dict[str, Any]:
        self.mongo, mongo_uri = await Child.start(
            "MongoDB emulator", ["emulators.mongodb", "--port", str(free_port())]
        )
        ably_port = free_port()
        ably_args = ["emulators.ably", "--port", str(ably_port), "--key", API_KEY]
        if self.connection_state_ttl_s is not None:
            ably_args += ["--connection-state-ttl-s", str(self.connection_state_ttl_s)]
        self.ably, _ = await Child.start("Ably emulator", ably_args)
        ably_url = f"http://127.0.0.1:{ably_port}"
        connectors: dict[str, dict[str, str]] = {}
        for pipeline in self.pipelines:
            connectors[Path(pipeline).stem] = await self._start_connector(pipeline, mongo_uri, ably_url)
        bundle_problem = await asyncio.to_thread(build_page_bundle)
        page_config = {
            "ably": {"endpoint": "127.0.0.1", "port": ably_port, "key": API_KEY},
            "channel": COLLECTION,
            "bundle": None if bundle_problem else "/web/build/vendor.js",
            "bundleProblem": bundle_problem,
            "cipherKey": self.cipher_key,  # a demo key for a local page; never how a real page gets one
        }
        backend = Backend(mongo_uri, DATABASE, COLLECTION, page_config)
        if connectors:
            backend.watch_metrics(next(iter(connectors.values()))["metrics"])
        self._runner = web.AppRunner(backend.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        backend_port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", backend_port).start()
        self.info = {
            "mongodb": mongo_uri,
            "database": DATABASE,
            "collection": COLLECTION,
            "ably": ably_url,
            "ablyKey": API_KEY,
            "backend": f"http://127.0.0.1:{backend_port}",
            "connectors": connectors,
            "pageProblem": bundle_problem,
            "cipherKey": self.cipher_key,
        }
        return self.info

    async def _start_connector(self, pipeline: str, mongo_uri: str, ably_url: str) -> dict[str, str]:
        path = Path(pipeline) if Path(pipeline).is_absolute() else ROOT / "pipelines" / pipeline
        connector_id = f"{DATABASE}.{COLLECTION}.{path.stem}"
        http_port = free_port()
        if self._workdir is None:
            self._workdir = tempfile.TemporaryDirectory(prefix="livesync-demo-")
        settings = {  # the connector's whole configuration: child_env() passes nothing else of ours
            "MONGODB_URI": mongo_uri,
            "MONGODB_DATABASE": DATABASE,
            "MONGODB_COLLECTION": COLLECTION,
            "PIPELINE_FILE": str(path),
            "FULL_DOCUMENT": "updateLookup",
            "CONNECTOR_ID": connector_id,
            "ABLY_API_KEY": API_KEY,
            "ABLY_REST_URL": ably_url,
            "HTTP_PORT": str(http_port),
            "LOG_FORMAT": "text",
            "LOG_LEVEL": os.environ.get(LOG_LEVEL_KNOB, "WARNING"),
        }
        if self.cipher_key:
            settings["CHANNEL_CIPHER_KEY"] = self.cipher_key
        child, _ = await Child.start(
            f"connector ({path.name})",
            ["connector", "run"],
            settings,
            ready_line=False,
            cwd=Path(self._workdir.name),
        )
        self.connectors[connector_id] = child
        await wait_ready(child, f"http://127.0.0.1:{http_port}/readyz")
        return {"id": connector_id, "metrics": f"http://127.0.0.1:{http_port}/metrics"}

    async def stop_connectors(self) -> dict[str, int]:
        """SIGTERM every connector (they drain and store their tokens); their exit statuses."""
        return {cid: await child.stop() for cid, child in self.connectors.items()}

    async def stop(self) -> dict[str, int]:
        """Stop in data-flow order: backend, connectors, Ably, MongoDB. Returns the connectors' statuses."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        statuses = await self.stop_connectors()
        for child in (self.ably, self.mongo):
            if child is not None:
                await child.stop()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        return statuses


async def _serve(args: argparse.Namespace) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    stack = Stack(
        args.pipeline, connection_state_ttl_s=args.connection_state_ttl_s, cipher_key=args.cipher_key
    )
    try:
        info = await stack.start()
        print(orjson.dumps(info).decode(), flush=True)
        await stopping.wait()
    except (RuntimeError, OSError) as exc:
        print(f"stack failed: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        statuses = await stack.stop()
    return 0 if all(status == 0 for status in statuses.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", action="append", default=[], help="a file in pipelines/ (repeatable)")
    parser.add_argument("--connection-state-ttl-s", type=float, default=None)
    parser.add_argument(
        "--cipher-key", default=None, help="CHANNEL_CIPHER_KEY for the connectors and clients"
    )
    args = parser.parse_args()
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    raise SystemExit(main())
