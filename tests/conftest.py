"""Shared fixtures: real upstream servers on port 0 and the real proxy in front of them.

Nothing sleeps to wait for a server: ``start`` returns once the listener is bound and
the port read back (STYLE.md, tier 2).

``SPLITPROXY_TEST_INSTALLED=1`` tests the *installed* package instead of the source tree:
``make test`` runs the suite a second time that way in ``.venv-compiled``, against the
mypyc-compiled data plane that ``make bench`` measures and the Dockerfile ships.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if os.environ.get("SPLITPROXY_TEST_INSTALLED") == "1":
    # pytest put the project root on sys.path (tests/ is a package), and `python -m`
    # the working directory: drop both so that `import proxy` finds site-packages.
    _root = Path(__file__).resolve().parent.parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _root]
    import proxy

    assert Path(proxy.__file__ or "").resolve().parent.parent != _root, "still testing the source tree"
    if proxy.data_plane_build() != "compiled":
        raise SystemExit(f"SPLITPROXY_TEST_INSTALLED=1 but {proxy.__file__} is not the compiled build")

import asyncio
import hashlib
import json
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import WSMsgType, web

from proxy.config import parse_text
from proxy.server import Server

# ---- upstream servers ------------------------------------------------------------------------


@dataclass
class Upstream:
    name: str
    runner: web.AppRunner
    port: int
    hits: int = 0
    events: dict[str, asyncio.Event] = field(default_factory=dict)
    seen: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def event(self, name: str) -> asyncio.Event:
        return self.events.setdefault(name, asyncio.Event())


def echo_app(up: Upstream) -> web.Application:
    """An upstream that says what it received, and a few that misbehave on purpose."""

    async def echo(request: web.Request) -> web.Response:
        up.hits += 1
        body = await request.read()
        info = {
            "upstream": up.name,
            "method": request.method,
            "path": request.path_qs,
            "version": f"{request.version.major}.{request.version.minor}",
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        up.seen.append(info)
        up.event("echo").set()
        return web.json_response(info, headers={"X-Upstream": up.name})

    async def sink(request: web.Request) -> web.Response:
        up.hits += 1
        total = 0
        digest = hashlib.sha256()
        async for chunk in request.content.iter_any():
            total += len(chunk)
            digest.update(chunk)
        return web.json_response({"bytes": total, "sha256": digest.hexdigest()})

    async def stream(request: web.Request) -> web.StreamResponse:
        up.hits += 1
        n = int(request.query.get("n", "1000000"))
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        block = b"x" * 65536
        while n > 0:
            part = block[: min(n, len(block))]
            await resp.write(part)
            n -= len(part)
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        up.hits += 1
        up.event("slow-started").set()
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.json_response({"slept": True, "upstream": up.name})

    async def status(request: web.Request) -> web.Response:
        up.hits += 1
        code = int(request.match_info["code"])
        if code in (204, 304):
            return web.Response(status=code)
        return web.Response(status=code, text=f"status {code}")

    async def forever(request: web.Request) -> web.StreamResponse:
        up.hits += 1
        resp = web.StreamResponse()
        await resp.prepare(request)
        up.event("forever-started").set()
        try:
            while True:
                await resp.write(b"y" * 65536)
                await asyncio.sleep(0.01)
        except (ConnectionResetError, asyncio.CancelledError):
            up.event("forever-gone").set()
            raise

    async def ws(request: web.Request) -> web.WebSocketResponse:
        up.hits += 1
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str("echo:" + msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/sink", sink)
    app.router.add_get("/stream", stream)
    app.router.add_get("/slow", slow)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/forever", forever)
    app.router.add_get("/ws", ws)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


StartUpstream = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def start_upstream() -> AsyncIterator[StartUpstream]:
    started: list[Upstream] = []

    async def start(name: str = "up", app_factory: Callable[[Upstream], web.Application] = echo_app) -> Upstream:
        up = Upstream(name=name, runner=None, port=0)  # type: ignore[arg-type]
        runner = web.AppRunner(app_factory(up), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        up.runner = runner
        up.port = runner.addresses[0][1]
        started.append(up)
        return up

    yield start
    for up in started:
        await up.runner.cleanup()


# ---- the proxy -------------------------------------------------------------------------------


def config_text(tmp: Path, routes: list[dict[str, Any]], **top: Any) -> str:
    doc: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "state": {"path": str(tmp / "state.db")},
        "access_log": str(tmp / "access.log"),
        "routes": routes,
    }
    doc.update(top)
    return yaml.safe_dump(doc, sort_keys=False)


def route(name: str = "main", prefix: str = "/", host: str | None = None, **backends: Any) -> dict[str, Any]:
    """A route dict; each backend is ``name=(upstreams, weight)`` or ``name=upstream``."""
    bs = {}
    for bname, spec in backends.items():
        ups, weight = spec if isinstance(spec, tuple) else (spec, 1)
        urls = [u.url if isinstance(u, Upstream) else u for u in (ups if isinstance(ups, list) else [ups])]
        bs[bname] = {"upstreams": urls, "weight": weight}
    match: dict[str, Any] = {"path_prefix": prefix}
    if host:
        match["host"] = host
    return {"name": name, "match": match, "backends": bs}


@dataclass
class RunningProxy:
    server: Server
    tmp: Path

    @property
    def port(self) -> int:
        return self.server.data_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.data_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.server.admin_port}"

    def access_lines(self) -> list[dict[str, Any]]:
        self.server.runtime.access_log.flush()
        path = self.tmp / "access.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


StartProxy = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
async def start_proxy(tmp_path: Path) -> AsyncIterator[StartProxy]:
    started: list[Server] = []

    async def start(routes: list[dict[str, Any]], **top: Any) -> RunningProxy:
        if "state" not in top and any(s.state_lock is not None and s.state_lock.held for s in started):
            # One running proxy per state file (StateLock): a second one at the same time
            # gets its own, unless the test names one.
            top["state"] = {"path": str(tmp_path / f"state-{len(started)}.db")}
        config = parse_text(config_text(tmp_path, routes, **top), "<test>")
        server = Server(config, grace=2.0)
        await server.start()
        started.append(server)
        return RunningProxy(server, tmp_path)

    yield start
    for server in started:
        await server.stop()


# ---- a small independent HTTP/1.1 client for raw-socket tests ---------------------------------


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


async def read_response(reader: asyncio.StreamReader, *, head_request: bool = False) -> RawResponse:
    """Read one response; framing by RFC 9112 §6.3, written independently of the proxy."""
    line = await reader.readline()
    if not line:
        raise ConnectionError("closed before a response")
    parts = line.decode("latin-1").split(" ", 2)
    status = int(parts[1])
    headers = []
    while True:
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        k, _, v = raw.decode("latin-1").partition(":")
        headers.append((k.strip(), v.strip()))
    resp = RawResponse(status, headers, b"")
    if head_request or status in (204, 304) or 100 <= status < 200:
        return resp
    te = resp.header("transfer-encoding")
    cl = resp.header("content-length")
    if te and "chunked" in te.lower():
        body = bytearray()
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        resp.body = bytes(body)
    elif cl is not None:
        resp.body = await reader.readexactly(int(cl))
    else:
        resp.body = await reader.read()
    return resp


async def raw_exchange(port: int, data: bytes, *, responses: int = 1, head: bool = False) -> list[RawResponse]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return [await read_response(reader, head_request=head) for _ in range(responses)]
    finally:
        writer.close()


# ---- the installed command in a subprocess (tier 3) -------------------------------------------

SPLITPROXY = str(Path(sys.executable).parent / "splitproxy")


class ProxyProcess:
    """``splitproxy run -c FILE`` as a user runs it; stderr lines are collected as they come,
    and waiting for one is waiting on an event, not a sleep."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.port = 0
        self.admin_port = 0

    @classmethod
    async def start(cls, config_path: Path, *args: str, session: bool = False) -> ProxyProcess:
        """``session``: in a session (and process group) of its own, as a service manager or
        a terminal starts it, so that a test may signal the group without signalling itself."""
        proc = await asyncio.create_subprocess_exec(
            SPLITPROXY,
            "run",
            "-c",
            str(config_path),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=session,
        )
        self = cls(proc)
        line = await self.wait_for("listening:", within=20)
        m = re.search(r"proxy on \S+:(\d+), admin on \S+:(\d+)", line)
        assert m, line
        self.port, self.admin_port = int(m.group(1)), int(m.group(2))
        return self

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())
            self._changed.set()
        self._changed.set()

    async def wait_for(self, text: str, *, within: float = 10, after: int = 0) -> str:
        """The first stderr line from index ``after`` on that contains ``text``."""
        async with asyncio.timeout(within):
            while True:
                for line in self.lines[after:]:
                    if text in line:
                        return line
                if self._reader.done():
                    raise AssertionError(f"process ended without {text!r}: {self.lines}")
                self._changed.clear()
                await self._changed.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(15):
                code = await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        await self._reader
        return code


StartProcess = Callable[..., Awaitable[ProxyProcess]]


@pytest.fixture
async def proxy_process() -> AsyncIterator[StartProcess]:
    started: list[ProxyProcess] = []

    async def start(config_path: Path, *args: str, session: bool = False) -> ProxyProcess:
        p = await ProxyProcess.start(config_path, *args, session=session)
        started.append(p)
        return p

    yield start
    for p in started:
        await p.stop()


# ---- load beside a test --------------------------------------------------------------------


def upstream_of(body: bytes) -> str:
    """Who answered: the echo upstream's ``upstream`` field, else the body's text."""
    try:
        return str(json.loads(body)["upstream"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")


class Load:
    """Clients that GET ``url + path`` in a loop while the ``async with`` block runs; they
    count who answered and keep every failure. Waiting on them is waiting on an event."""

    def __init__(self, url: str, *, clients: int = 4, path: str = "/load") -> None:
        self.url = url + path
        self.clients = clients
        self.answered: Counter[str] = Counter()
        self.failures: list[str] = []
        self._progressed = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Future[None]] = []

    async def _client(self) -> None:
        async with aiohttp.ClientSession() as s:
            while not self._stop.is_set():
                try:
                    async with s.get(self.url) as r:
                        body = await r.read()
                        if r.status != 200:
                            self.failures.append(f"status {r.status}: {body[:200]!r}")
                            continue
                        self.answered[upstream_of(body)] += 1
                        self._progressed.set()
                except aiohttp.ClientError as exc:
                    self.failures.append(repr(exc))

    async def __aenter__(self) -> Load:
        self._tasks = [asyncio.ensure_future(self._client()) for _ in range(self.clients)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def until(self, cond: Callable[[], bool], within: float = 10) -> None:
        """Until ``cond()`` holds, re-checked as answers come in (bounded)."""
        async with asyncio.timeout(within):
            while not cond():
                self._progressed.clear()
                await self._progressed.wait()

    async def answers(self, n: int, within: float = 10) -> None:
        """Until ``n`` more answers came in."""
        goal = self.answered.total() + n
        await self.until(lambda: self.answered.total() >= goal, within)
