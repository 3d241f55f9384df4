"""Tier 3: the installed ``splitproxy run`` in a subprocess — reload, shutdown, big bodies."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import pytest

from .conftest import (
    Load,
    ProxyProcess,
    RawResponse,
    StartProcess,
    StartUpstream,
    Upstream,
    config_text,
    read_response,
    route,
)


def write_config(tmp: Path, routes: list, **top: object) -> Path:
    path = tmp / "splitproxy.yaml"
    path.write_text(config_text(tmp, routes, **top))
    return path


def weighted(stable: Upstream, canary: Upstream, ws: int, wc: int) -> list:
    return [route(stable=(stable, ws), canary=(canary, wc))]


async def test_sighup_reload_under_load_loses_nothing(
    tmp_path: Path, start_upstream: StartUpstream, proxy_process: StartProcess
) -> None:
    stable = await start_upstream("stable")
    canary = await start_upstream("canary")
    cfg = write_config(tmp_path, weighted(stable, canary, 100, 0))
    px: ProxyProcess = await proxy_process(cfg)

    async with asyncio.timeout(60), Load(px.url, clients=8) as load:
        results = load.answered
        await load.answers(200)
        assert results["canary"] == 0

        # A valid new file: all traffic to canary, applied without a restart.
        cfg.write_text(config_text(tmp_path, weighted(stable, canary, 0, 100)))
        mark = len(px.lines)
        px.signal(signal.SIGHUP)
        await px.wait_for("reloaded", after=mark)
        await load.until(lambda: results["canary"] > 0)
        before = results.copy()
        await load.answers(200)
        assert results["stable"] == before["stable"], "stable still served after the reload"

        # An invalid file: logged, and the running config stays.
        cfg.write_text("routes: [{name: broken, backends: {}}]\nbogus: 1\n")
        mark = len(px.lines)
        px.signal(signal.SIGHUP)
        line = await px.wait_for("reload of", after=mark)
        assert "failed" in line
        assert any("bogus" in ln for ln in px.lines[mark:])
        before = results.copy()
        await load.answers(200)
        assert results["stable"] == before["stable"]
    assert load.failures == []
    assert results["canary"] >= 400


async def test_sigterm_lets_a_slow_request_finish(
    tmp_path: Path, start_upstream: StartUpstream, proxy_process: StartProcess
) -> None:
    up = await start_upstream()
    px: ProxyProcess = await proxy_process(write_config(tmp_path, [route(stable=up)]), "--grace", "10s")
    async with aiohttp.ClientSession() as s:
        slow = asyncio.ensure_future(s.get(px.url + "/slow?s=1.5"))
        await asyncio.wait_for(up.event("slow-started").wait(), 10)
        mark = len(px.lines)
        px.signal(signal.SIGTERM)
        await px.wait_for("stopping", after=mark)
        # No new connections once stopping...
        try:
            _, w = await asyncio.open_connection("127.0.0.1", px.port)
        except ConnectionRefusedError:
            pass
        else:
            w.close()
            raise AssertionError("still accepting after SIGTERM")
        # ...but the request in flight completes.
        resp = await slow
        assert resp.status == 200
        assert (await resp.json())["slept"] is True
    assert await px.stop() == 0


async def _sink_server() -> tuple[asyncio.Server, dict[str, int]]:
    """A raw upstream that reads a body of any size away and says how much it got."""
    got = {"bytes": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")))
        while length:
            chunk = await reader.read(min(length, 1 << 20))
            if not chunk:
                break
            length -= len(chunk)
            got["bytes"] += len(chunk)
        body = b"%d" % got["bytes"]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), got


async def _source_server(size: int) -> asyncio.Server:
    """A raw upstream that answers with a body of ``size`` bytes, written as fast as read."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"\0" * (1 << 20)
        left = size
        while left:
            n = min(left, len(block))
            writer.write(block[:n])
            await writer.drain()
            left -= n
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _watch_rss(px: ProxyProcess, done: asyncio.Event) -> int:
    peak = 0
    while not done.is_set():
        peak = max(peak, px.rss_kib())
        await asyncio.sleep(0.05)  # sampling memory, not waiting for a server
    return peak


GIB = 1 << 30
# "A few MiB": the proxy holds at most a transport's buffers and one read at a time.
RSS_GROWTH_LIMIT_KIB = 24 * 1024


async def upload_gib(px: ProxyProcess, server: asyncio.Server) -> tuple[RawResponse, int]:
    """POST 1 GiB through the proxy; its answer and the proxy's RSS growth (KiB) meanwhile.
    Closes ``server`` (the sink upstream) afterwards."""
    baseline = px.rss_kib()
    done = asyncio.Event()
    watcher = asyncio.ensure_future(_watch_rss(px, done))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % GIB)
        block = b"\1" * (1 << 20)
        for _ in range(GIB // len(block)):
            writer.write(block)
            await writer.drain()
        resp = await asyncio.wait_for(read_response(reader), 120)
        writer.close()
    finally:
        done.set()
        peak = await watcher
        server.close()
    return resp, peak - baseline


async def test_1gib_upload_streams_with_flat_rss(tmp_path: Path, proxy_process: StartProcess) -> None:
    server, got = await _sink_server()
    port = server.sockets[0].getsockname()[1]
    px: ProxyProcess = await proxy_process(
        write_config(tmp_path, [route(stable=f"http://127.0.0.1:{port}")], limits={"max_request_body": "2GiB"})
    )
    resp, growth = await upload_gib(px, server)
    assert resp.status == 200
    assert int(resp.body) == GIB == got["bytes"]
    assert growth < RSS_GROWTH_LIMIT_KIB, f"RSS grew by {growth // 1024} MiB"


async def test_1gib_download_streams_with_flat_rss(tmp_path: Path, proxy_process: StartProcess) -> None:
    server = await _source_server(GIB)
    port = server.sockets[0].getsockname()[1]
    px: ProxyProcess = await proxy_process(write_config(tmp_path, [route(stable=f"http://127.0.0.1:{port}")]))
    baseline = px.rss_kib()
    done = asyncio.Event()
    watcher = asyncio.ensure_future(_watch_rss(px, done))
    received = 0
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", px.port, limit=1 << 20)
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        async with asyncio.timeout(120):
            while received < GIB:
                chunk = await reader.read(1 << 20)
                assert chunk, "closed early"
                received += len(chunk)
        writer.close()
    finally:
        done.set()
        peak = await watcher
        server.close()
    assert received == GIB
    assert peak - baseline < RSS_GROWTH_LIMIT_KIB, f"RSS grew by {(peak - baseline) // 1024} MiB"


async def test_access_log_write_failures_and_changes_are_logged(
    tmp_path: Path, start_upstream: StartUpstream, proxy_process: StartProcess
) -> None:
    """QA: writes to a full disk lost the access log's lines without a word (nginx logs
    "write() to access log failed"); a reload that changed access_log was silently not
    applied."""
    up = await start_upstream()
    px: ProxyProcess = await proxy_process(write_config(tmp_path, [route(stable=up)], access_log="/dev/full"))
    async with aiohttp.ClientSession() as s:
        for path in ("/a", "/b", "/c"):
            async with s.get(px.url + path) as r:
                assert r.status == 200
        line = await px.wait_for("access log /dev/full: write failed")
        assert "No space left on device" in line
        for path in ("/d", "/e"):  # more lost lines: not one log line each
            async with s.get(px.url + path) as r:
                assert r.status == 200
        mark = len(px.lines)
        write_config(tmp_path, [route(stable=up)], access_log=str(tmp_path / "other.log"))
        px.signal(signal.SIGHUP)
        restart = await px.wait_for("a restart to change", after=mark)
        assert "reload: access_log needs a restart to change" in restart, restart
        async with s.get(px.url + "/f") as r:
            assert r.status == 200
    assert sum("write failed" in ln for ln in px.lines) == 1
    assert not (tmp_path / "other.log").exists()


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sigusr1_reopens_the_access_log_after_a_rotation(
    tmp_path: Path, start_upstream: StartUpstream, proxy_process: StartProcess, workers: str
) -> None:
    """QA (fifth round): logrotate moves the file and sends SIGUSR1 (nginx's reopen, also
    Envoy's and Traefik's habit). The lines kept going to the moved file, and SIGUSR1 killed
    the proxy at once, without draining."""
    up = await start_upstream()
    px = await proxy_process(write_config(tmp_path, [route(stable=up)]), "--workers", workers)
    log = tmp_path / "access.log"
    async with aiohttp.ClientSession() as s:
        async with s.get(px.url + "/before") as r:
            assert r.status == 200
        rotated = tmp_path / "access.log.1"
        mark = len(px.lines)
        log.rename(rotated)  # a line not yet flushed goes to it too: reopen() flushes first
        px.signal(signal.SIGUSR1)
        for _ in range(int(workers)):
            mark = px.lines.index(await px.wait_for("reopened", after=mark)) + 1
        async with s.get(px.url + "/after") as r:
            assert r.status == 200
    assert await px.stop() == 0  # flushes every process's lines
    assert [json.loads(line)["path"] for line in rotated.read_text().splitlines()] == ["/before"]
    assert [json.loads(line)["path"] for line in log.read_text().splitlines()] == ["/after"]


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_verbose_logs_what_the_proxy_does(
    tmp_path: Path, start_upstream: StartUpstream, proxy_process: StartProcess, workers: str
) -> None:
    """QA (fifth round): `-v` promised debug logging and gave none (not one debug call)."""
    up = await start_upstream()
    px = await proxy_process(write_config(tmp_path, [route(stable=up)]), "--workers", workers, "-v")
    async with aiohttp.ClientSession() as s:
        async with s.get(px.url + "/x") as r:
            assert r.status == 200
        async with s.get(f"http://127.0.0.1:{px.admin_port}/api/v1/routes") as r:
            assert r.status == 200
    await px.wait_for(f"upstream 127.0.0.1:{up.port}: connected")
    await px.wait_for("data plane: config installed: main stable=1")
    await px.wait_for('"GET /api/v1/routes HTTP/1.1" 200')


async def test_two_reloads_close_together_end_on_the_newer_file(
    tmp_path: Path, start_upstream: StartUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review (fifth round): with the file parsed in a thread, a slow parse of the older file
    could finish after a quick parse of the newer one and be applied over it (a 5,000-route
    file left in force after the file went back to one route). One reload at a time, each
    reading the file when its turn comes."""
    import threading

    from proxy import server as server_module
    from proxy.config import load_file as real_load_file
    from proxy.server import Server

    up = await start_upstream()
    path = write_config(tmp_path, [route(name="first", stable=up)])
    server = Server(real_load_file(path), path, grace=1.0)
    await server.start()
    try:
        parsing, release = threading.Event(), threading.Event()
        calls: list[int] = []

        def slow_then_quick(p: object) -> object:
            config = real_load_file(p)  # type: ignore[arg-type]  # the file as it is now
            calls.append(len(calls))
            if len(calls) == 1:
                parsing.set()
                release.wait(10)  # the older file's parse, still going when the newer SIGHUP comes
            return config

        monkeypatch.setattr(server_module, "load_file", slow_then_quick)
        write_config(tmp_path, [route(name="older", stable=up)])
        older = asyncio.ensure_future(server.reload_file())
        assert await asyncio.to_thread(parsing.wait, 10)
        write_config(tmp_path, [route(name="newer", stable=up)])
        newer = asyncio.ensure_future(server.reload_file())
        # The newer reload waits its turn (it finished first, before the fix), then the older
        # parse ends.
        await asyncio.wait({newer}, timeout=0.5)
        release.set()
        assert await older
        assert await newer
        assert [r.name for r in server.config.routes] == ["newer"]
    finally:
        await server.stop()


async def test_reloads_are_counted_in_metrics(tmp_path: Path, start_upstream: StartUpstream) -> None:
    """QA (fifth round): a refused reload showed only in the log; automation that edits the
    file and sends SIGHUP could not tell."""
    from proxy.config import load_file
    from proxy.server import Server

    up = await start_upstream()
    path = write_config(tmp_path, [route(stable=up)])
    server = Server(load_file(path), path, grace=1.0)
    await server.start()

    async def scrape() -> list[str]:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{server.admin_port}/metrics") as r:
            return [ln for ln in (await r.text()).splitlines() if ln.startswith("splitproxy_config_")]

    try:
        before = await scrape()
        assert "splitproxy_config_last_reload_successful 1.0" in before
        assert 'splitproxy_config_reloads_total{result="applied"} 0.0' in before  # both, from the start
        assert 'splitproxy_config_reloads_total{result="refused"} 0.0' in before
        path.write_text("routes: []\n")
        assert not await server.reload_file()
        refused = await scrape()
        assert 'splitproxy_config_reloads_total{result="refused"} 1.0' in refused
        assert "splitproxy_config_last_reload_successful 0.0" in refused
        write_config(tmp_path, [route(stable=up)])
        assert await server.reload_file()
        applied = await scrape()
        assert 'splitproxy_config_reloads_total{result="applied"} 1.0' in applied
        assert 'splitproxy_config_reloads_total{result="refused"} 1.0' in applied
        assert "splitproxy_config_last_reload_successful 1.0" in applied
    finally:
        await server.stop()


async def test_a_route_or_backend_a_reload_removed_leaves_metrics(
    tmp_path: Path, start_upstream: StartUpstream
) -> None:
    """QA (seventh round, a side note): the series of a route a reload removed stayed in
    /metrics until restart. Now a removed route's, or a removed backend's, series go at the
    next scrape (Envoy drops a removed cluster's stats); requests that matched no route stay;
    a route that comes back goes on from its count."""
    from proxy.config import load_file
    from proxy.server import Server

    stable = await start_upstream("stable")
    canary = await start_upstream("canary")
    both = [
        route(name="kept", prefix="/k", stable=(stable, 0), canary=(canary, 100)),
        route(name="gone", stable=stable),
    ]
    path = write_config(tmp_path, both)
    server = Server(load_file(path), path, grace=1.0)
    await server.start()

    async def scrape() -> str:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{server.admin_port}/metrics") as r:
            return await r.text()

    try:
        async with aiohttp.ClientSession() as s:
            for url in ("/k", "/k", "/other", "/nowhere"):  # /nowhere: "gone" takes every path but /k
                async with s.get(f"http://127.0.0.1:{server.plane.port}{url}") as r:
                    assert r.status == 200
            one = [
                route(name="kept", prefix="/k", stable=(stable, 100)),
                route(name="nothing", prefix="/n0", stable=stable),
            ]
            write_config(tmp_path, one)
            assert await server.reload_file()
            async with s.get(f"http://127.0.0.1:{server.plane.port}/elsewhere") as r:
                assert r.status == 404  # no route: counted with route=""
        after = await scrape()
        series = [ln for ln in after.splitlines() if ln.startswith("splitproxy_") and "{" in ln]
        assert series
        assert not [ln for ln in series if 'route="gone"' in ln or 'backend="canary"' in ln]
        assert 'splitproxy_requests_total{backend="",code="404",method="GET",route=""} 1.0' in after
        write_config(tmp_path, both)
        assert await server.reload_file()
        again = await scrape()
        assert 'splitproxy_requests_total{backend="stable",code="200",method="GET",route="gone"} 2.0' in again
        assert 'splitproxy_requests_total{backend="canary",code="200",method="GET",route="kept"} 2.0' in again
    finally:
        await server.stop()
