"""The admin listener: health, readiness and (later) the control API, with aiohttp.

Off the hot path: aiohttp's comfort costs nothing here.
"""

from __future__ import annotations

from aiohttp import web

from .server import Server

SERVER_KEY = web.AppKey("server", Server)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    if not server.ready:
        return web.json_response({"status": "not ready"}, status=503)
    return web.json_response({"status": "ready", "routes": len(server.config.routes)})


def make_admin_app(server: Server) -> web.Application:
    app = web.Application()
    app[SERVER_KEY] = server
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
