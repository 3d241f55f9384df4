"""The embedded default: two versions of a small JSON API and a proxy in front of them.

``splitproxy demo`` needs nothing but the package: v1 and v2 run in-process on loopback
ports (aiohttp), and the proxy splits traffic between them. The two versions differ in
one real field (``price`` is in cents in v2) and both carry noisy fields (``served_at``,
a timestamp, and ``trace``, a random id), so a shadow diff has both real differences and
noise to tell apart. Which version answered is in the ``X-Demo-Version`` header.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from . import tasks
from .config import Address, Config, parse_text
from .server import Server, serve

log = logging.getLogger("splitproxy")

PRODUCTS = {
    1: {"id": 1, "name": "kettle", "price": 24.5},
    2: {"id": 2, "name": "teapot", "price": 18.0},
    3: {"id": 3, "name": "mug", "price": 6.25},
}


def demo_app(version: str) -> web.Application:
    """One version of the demo API: ``/products``, ``/products/{id}``, ``/healthz``."""

    def product(p: dict[str, object]) -> dict[str, object]:
        out = dict(p)
        if version == "v2":
            out["price"] = round(float(p["price"]) * 100)  # type: ignore[arg-type]  # the real change
        return out

    def envelope(data: object) -> dict[str, object]:
        return {
            "data": data,
            "meta": {"served_at": time.time(), "trace": uuid.uuid4().hex},
        }

    async def list_products(request: web.Request) -> web.Response:
        return web.json_response(envelope([product(p) for p in PRODUCTS.values()]))

    async def get_product(request: web.Request) -> web.Response:
        try:
            p = PRODUCTS[int(request.match_info["id"])]
        except (KeyError, ValueError):
            return web.json_response({"error": "no such product"}, status=404)
        return web.json_response(envelope(product(p)))

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": version})

    async def root(request: web.Request) -> web.Response:
        return web.json_response(envelope({"hello": "splitproxy demo", "try": ["/products", "/products/1"]}))

    @web.middleware
    async def version_header(request: web.Request, handler: Handler) -> web.StreamResponse:
        # Which version answered is said in a header (ignored by the shadow diff), so that
        # the bodies differ only where the versions really do, and in the noisy fields.
        resp = await handler(request)
        resp.headers["X-Demo-Version"] = version
        return resp

    app = web.Application(middlewares=[version_header])
    app.router.add_get("/", root)
    app.router.add_get("/products", list_products)
    app.router.add_get("/products/{id}", get_product)
    app.router.add_get("/healthz", health)
    return app


@dataclass
class DemoUpstreams:
    runners: list[web.AppRunner]
    ports: dict[str, int]

    async def close(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


async def start_demo_upstreams(host: str = "127.0.0.1") -> DemoUpstreams:
    runners = []
    ports = {}
    for version in ("v1", "v2"):
        runner = web.AppRunner(demo_app(version), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, 0)
        await site.start()
        ports[version] = runner.addresses[0][1]
        runners.append(runner)
    return DemoUpstreams(runners, ports)


def demo_config_text(v1: int, v2: int, *, listen: str, admin: str, state_path: str) -> str:
    return f"""\
listen: "{listen}"
admin: {{listen: "{admin}"}}
state: {{path: "{state_path}"}}
access_log: "off"
routes:
  - name: demo
    match: {{path_prefix: /}}
    backends:
      v1: {{upstreams: ["http://127.0.0.1:{v1}"], weight: 90}}
      v2: {{upstreams: ["http://127.0.0.1:{v2}"], weight: 10}}
    baseline: v1
    sticky: {{by: cookie, name: sp_demo, max_age: 1h}}
    overrides:
      - {{header: X-Canary, value: always, backend: v2}}
      - {{cookie: canary, value: "1", backend: v2}}
    shadow:
      backend: v2
      percent: 100
      noise: {{percent: 25}}
      diff:
        ignore_headers: [date, server, x-request-id, x-demo-version]
"""


def shares(config: Config) -> str:
    """The demo route's weights in force as shares ("90 % v1, 10 % v2"): the banner said
    90/10 whatever a kept state database had."""
    backends = config.routes[0].backends
    total = sum(b.weight for b in backends)
    return ", ".join(f"{b.weight * 100 / total:.4g} % {b.name}" for b in backends)


async def run_demo(listen: str, admin: str, *, traffic: bool, grace: float = 5.0) -> None:
    """Raises ConfigError for a bad ``listen``/``admin`` and StartupError as ``run`` does.
    The state directory is made for this run and removed after it, unless
    $SPLITPROXY_DEMO_STATE names one."""
    kept = os.environ.get("SPLITPROXY_DEMO_STATE")
    state_dir = kept or tempfile.mkdtemp(prefix="splitproxy-demo-")
    try:
        await _run_demo(listen, admin, traffic=traffic, grace=grace, state_dir=state_dir)
    finally:
        if not kept:
            shutil.rmtree(state_dir, ignore_errors=True)


async def _run_demo(listen: str, admin: str, *, traffic: bool, grace: float, state_dir: str) -> None:
    upstreams = await start_demo_upstreams()
    try:
        text = demo_config_text(
            upstreams.ports["v1"],
            upstreams.ports["v2"],
            listen=listen,
            admin=admin,
            state_path=os.path.join(state_dir, "state.db"),
        )
        await _serve_demo(parse_text(text, "<demo>"), upstreams, traffic=traffic, grace=grace)
    finally:
        await upstreams.close()


async def _serve_demo(config: Config, upstreams: DemoUpstreams, *, traffic: bool, grace: float) -> None:

    def started(server: Server) -> None:
        # Printed once the listeners are bound, with the ports they got (port 0 works).
        proxy = (
            f"127.0.0.1:{server.data_port}"
            if config.listen.host in ("0.0.0.0", "::")
            else str(Address(config.listen.host, server.data_port))
        )
        admin_at = str(Address(config.admin.listen.host, server.admin_port))
        print(
            "splitproxy demo\n"
            f"  demo versions: v1 on 127.0.0.1:{upstreams.ports['v1']}, v2 on 127.0.0.1:{upstreams.ports['v2']}\n"
            f"  proxy:   http://{proxy}/products   ({shares(server.config)}, sticky by cookie sp_demo)\n"
            f"           curl -H 'X-Canary: always' http://{proxy}/products   forces v2\n"
            f"  admin:   http://{admin_at}/healthz\n"
            f"  routes:  http://{admin_at}/api/v1/routes\n"
            f"  report:  http://{admin_at}/ui/   (shadow diff of v2 against the live answers)\n"
            f"  metrics: http://{admin_at}/metrics\n"
            f"  state:   {config.state.path}\n"
            "Ctrl-C to stop.",
            flush=True,
        )
        if traffic:
            tasks.spawn(_drive_traffic(proxy), "demo-traffic")

    await serve(config, None, grace=grace, on_started=started)


async def _drive_traffic(listen: str, requests: int = 200) -> None:
    """A little load so that the numbers have something to show."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        counts: dict[str, int] = {}
        for i in range(requests):
            path = "/products" if i % 2 else f"/products/{i % 3 + 1}"
            async with session.get(f"http://{listen}{path}") as resp:
                await resp.read()
                who = resp.headers.get("X-Demo-Version", "?")
                counts[who] = counts.get(who, 0) + 1
    log.info("demo traffic: %d requests sent, answered by %s", requests, counts)
