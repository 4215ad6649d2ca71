"""The operators' listener: `/healthz` (alive), `/readyz` (serving with keys), `/metrics`.

One app for both shapes of the gateway: a single in-process Gateway answers for itself,
and a supervisor answers for all its workers. Neither is imported here."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from gateway.obs.exposition import CONTENT_TYPE_LATEST


class AdminSource(Protocol):
    async def health(self) -> dict[str, Any]:
        """What /healthz reports beside `"status": "ok"`."""
        ...

    async def waiting(self) -> list[str]:
        """What readiness still waits for; empty when ready."""
        ...

    async def exposition(self) -> bytes:
        """The metrics, in Prometheus' text format."""
        ...


def admin_app(source: AdminSource) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", **await source.health()})

    async def readyz(_: web.Request) -> web.Response:
        waiting = await source.waiting()
        if not waiting:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "waiting_for": waiting}, status=503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=await source.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
