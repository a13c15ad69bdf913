"""The demo's application backend: what a Models SDK app's server does, plus the demo's web page.

- `GET /api/orders` and `GET /api/orders/{id}`: the models' `sync()`: `{sequenceId, data}`, with the
  sequenceId read BEFORE the state (`current_sequence_id`), so replaying history can only repeat events;
- `POST /api/orders`, `PATCH /api/orders/{id}`, `DELETE /api/orders/{id}`: mutations, written to MongoDB
  with the client's `mutationId` in the same write (the pipeline turns it into the Models SDK header);
- `POST /api/orders/{id}/reject`: reject a client's optimistic mutation (`rejectedMutationId`);
- `GET /api/metrics`: the connector's events read, messages published and lag, from its `/metrics`;
- `GET /api/config`: where the page's ably-js connects; `/` and the page's files.

Documents travel as relaxed Extended JSON, the same form the connector gives change events.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

import httpx
import orjson
from aiohttp import web
from bson import json_util
from bson.json_util import RELAXED_JSON_OPTIONS
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from connector.sources.mongodb.models_sync import current_sequence_id

logger = logging.getLogger(__name__)

WEB_DIR: Final = Path(__file__).resolve().parent / "web"
METRICS_TIMEOUT_S: Final = 2.0
# Prometheus name → what the page shows.
PAGE_METRICS: Final = {
    "livesync_events_read_total": "eventsRead",
    "livesync_messages_published_total": "messagesPublished",
    "livesync_lag_seconds": "lagSeconds",
    "livesync_in_flight_events": "inFlight",
}


def to_json(value: Any) -> Any:
    """BSON values as relaxed Extended JSON (ObjectId → {"$oid": ...}), as the connector publishes them."""
    return orjson.loads(json_util.dumps(value, json_options=RELAXED_JSON_OPTIONS))


def parse_metrics(text: str) -> dict[str, float]:
    """The page's metrics from the connector's Prometheus text."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in PAGE_METRICS:
            values[PAGE_METRICS[name]] = float(value)
    return values


class Backend:
    """An aiohttp app over one MongoDB collection."""

    def __init__(self, mongo_uri: str, database: str, collection: str, page_config: dict[str, Any]) -> None:
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
        self._orders: AsyncCollection[dict[str, Any]] = self._client[database][collection]
        self._page_config = page_config
        self._metrics_url: str | None = None
        self._http = httpx.AsyncClient(timeout=METRICS_TIMEOUT_S)

    def watch_metrics(self, url: str) -> None:
        """Serve this connector's metrics at /api/metrics."""
        self._metrics_url = url

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/config", self.config)
        app.router.add_get("/api/orders", self.sync_all)
        app.router.add_post("/api/orders", self.insert)
        app.router.add_get("/api/orders/{id}", self.sync_one)
        app.router.add_patch("/api/orders/{id}", self.update)
        app.router.add_delete("/api/orders/{id}", self.delete)
        app.router.add_post("/api/orders/{id}/reject", self.reject)
        app.router.add_get("/api/metrics", self.metrics)
        app.router.add_get("/", self.index)
        app.router.add_static("/web/", WEB_DIR)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, app: web.Application) -> None:
        await self._http.aclose()
        await self._client.close()

    # -- sync() -------------------------------------------------------------------------------------

    async def sync_all(self, request: web.Request) -> web.Response:
        sequence_id = await current_sequence_id(self._orders)  # before the state: see models_sync
        orders = await self._orders.find().sort("_id").to_list()
        return web.json_response({"sequenceId": sequence_id, "data": to_json(orders)})

    async def sync_one(self, request: web.Request) -> web.Response:
        sequence_id = await current_sequence_id(self._orders)
        order = await self._orders.find_one({"_id": request.match_info["id"]})
        return web.json_response({"sequenceId": sequence_id, "data": to_json(order)})

    # -- mutations ----------------------------------------------------------------------------------

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        body = await request.json(loads=orjson.loads)
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="expected a JSON object")
        return body

    async def insert(self, request: web.Request) -> web.Response:
        order = await self._body(request)
        if not isinstance(order.get("_id"), str):
            raise web.HTTPBadRequest(text="an order needs a string _id")
        await self._orders.insert_one(order)
        return web.json_response({"inserted": order["_id"]}, status=201)

    async def update(self, request: web.Request) -> web.Response:
        """`{"set": {...}, "mutationId": "..."}`: `$set` the fields and the mutation id in one write."""
        body = await self._body(request)
        fields = dict(body.get("set") or {})
        if isinstance(body.get("mutationId"), str):
            fields["mutationId"] = body["mutationId"]
        result = await self._orders.update_one({"_id": request.match_info["id"]}, {"$set": fields})
        return web.json_response({"matched": result.matched_count})

    async def reject(self, request: web.Request) -> web.Response:
        """`{"mutationId": "..."}`: publish the rejection of a client's optimistic mutation."""
        body = await self._body(request)
        if not isinstance(body.get("mutationId"), str):
            raise web.HTTPBadRequest(text="mutationId required")
        update = {"$set": {"rejectedMutationId": body["mutationId"]}}
        result = await self._orders.update_one({"_id": request.match_info["id"]}, update)
        return web.json_response({"matched": result.matched_count})

    async def delete(self, request: web.Request) -> web.Response:
        result = await self._orders.delete_one({"_id": request.match_info["id"]})
        return web.json_response({"deleted": result.deleted_count})

    # -- the page -----------------------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        if self._metrics_url is None:
            return web.json_response({})
        try:
            response = await self._http.get(self._metrics_url)
        except httpx.HTTPError as exc:
            return web.json_response({"error": f"connector metrics unavailable: {exc}"}, status=503)
        return web.json_response(parse_metrics(response.text))

    async def config(self, request: web.Request) -> web.Response:
        return web.json_response(self._page_config)

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / "index.html")
