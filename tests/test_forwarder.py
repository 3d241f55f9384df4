"""Tier 2: the real proxy in front of real upstream servers, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gc
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from proxy.forwarder import ClientConnection

from .conftest import (
    RawResponse,
    RunningProxy,
    StartProcess,
    StartProxy,
    StartUpstream,
    config_text,
    raw_exchange,
    read_response,
    route,
)


def header_map(info: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in info["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def raw_upstream(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """An upstream written on asyncio streams, for answers no HTTP server library gives: its URL.
    Its connections still open at the end (the proxy pools them) are closed with it."""
    writers: list[asyncio.StreamWriter] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await handle(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def test_get_is_proxied_with_forwarding_headers(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    async with aiohttp.ClientSession() as s, s.get(px.url + "/a/b?x=1", headers={"Host": "shop.example.com"}) as r:
        assert r.status == 200
        info = await r.json()
    assert info["path"] == "/a/b?x=1"
    hs = header_map(info)
    assert hs["host"] == ["shop.example.com"]
    assert hs["x-forwarded-for"] == ["127.0.0.1"]
    assert hs["x-forwarded-proto"] == ["http"]
    assert hs["x-forwarded-host"] == ["shop.example.com"]
    assert len(hs["x-request-id"][0]) > 8


async def test_request_id_kept_and_xff_appended(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    headers = {"X-Request-Id": "abc-123", "X-Forwarded-For": "203.0.113.9"}
    async with aiohttp.ClientSession() as s, s.get(px.url + "/", headers=headers) as r:
        hs = header_map(await r.json())
    assert hs["x-request-id"] == ["abc-123"]
    assert hs["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]


async def test_hop_by_hop_and_connection_named_headers_are_removed(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    request = (
        b"GET /h HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n"
    )
    (resp,) = await raw_exchange(px.port, request)
    hs = header_map(json.loads(resp.body))
    for gone in ("x-secret", "keep-alive", "te", "proxy-connection"):
        assert gone not in hs, gone
    assert hs["x-kept"] == ["yes"]
    assert hs.get("connection", ["keep-alive"]) != ["keep-alive, X-Secret"]


async def test_post_body_with_content_length(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    body = bytes(range(256)) * 1000
    async with aiohttp.ClientSession() as s, s.post(px.url + "/upload", data=body) as r:
        info = await r.json()
    assert info["body_len"] == len(body)
    assert info["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_chunked_request_body_is_streamed(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    request = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    (resp,) = await raw_exchange(px.port, request)
    info = json.loads(resp.body)
    assert info["body_len"] == 11
    assert info["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()


async def test_chunked_response_is_rechunked_for_http11(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    (resp,) = await raw_exchange(px.port, b"GET /stream?n=200000 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.body == b"x" * 200000


async def test_http10_client_gets_a_close_delimited_body(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    (resp,) = await raw_exchange(px.port, b"GET /stream?n=70000 HTTP/1.0\r\n\r\n")
    assert resp.status == 200
    assert resp.header("transfer-encoding") is None
    assert resp.body == b"x" * 70000
    info = up.seen  # /stream is not echoed; check HTTP/1.0 Host filling on /echo instead
    (resp2,) = await raw_exchange(px.port, b"GET /e HTTP/1.0\r\n\r\n")
    hs = header_map(json.loads(resp2.body))
    assert hs["host"] == [f"127.0.0.1:{up.port}"]
    assert info


async def test_http10_request_without_host_retried_on_another_instance_names_it(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """QA: the Host the proxy fills in for an HTTP/1.0 request without one named the first
    instance tried; a retry on another instance (a refused connection) kept that name."""
    up = await start_upstream()
    dead = f"http://127.0.0.1:{free_port()}"
    px = await start_proxy([route(stable=([dead, up], 1))])
    for _ in range(2):  # round-robin: one of the two tries the dead instance first
        (resp,) = await raw_exchange(px.port, b"GET /e HTTP/1.0\r\n\r\n")
        assert resp.status == 200
        assert header_map(json.loads(resp.body))["host"] == [f"127.0.0.1:{up.port}"]
    assert px.server.runtime.counts.extra_counters.get("splitproxy_retries")


async def test_http10_keep_alive(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    req = b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    a, b = await raw_exchange(px.port, req + req, responses=2)
    assert a.status == b.status == 200
    assert a.header("connection") == "keep-alive"


@pytest.mark.parametrize(
    ("request_line", "head"),
    [
        pytest.param(b"HEAD /x HTTP/1.1", True, id="head"),
        pytest.param(b"GET /status/204 HTTP/1.1", False, id="204"),
        pytest.param(b"GET /status/304 HTTP/1.1", False, id="304"),
    ],
)
async def test_bodiless_responses_keep_the_connection_usable(
    start_upstream: StartUpstream, start_proxy: StartProxy, request_line: bytes, head: bool
) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    try:
        writer.write(request_line + b"\r\nHost: x\r\n\r\n")
        first = await read_response(reader, head_request=head)
        writer.write(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        second = await read_response(reader)
    finally:
        writer.close()
    assert first.body == b""
    if head:
        assert first.header("content-length") is not None
    assert second.status == 200
    assert json.loads(second.body)["path"] == "/after"


async def test_pipelined_requests_are_answered_in_order(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    reqs = b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
    responses = await raw_exchange(px.port, reqs, responses=5)
    assert [json.loads(r.body)["path"] for r in responses] == [f"/p{i}" for i in range(5)]


async def test_expect_100_continue(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    try:
        writer.write(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = await read_response(reader)
        assert interim.status == 100
        writer.write(b"hello")
        final = await read_response(reader)
    finally:
        writer.close()
    info = json.loads(final.body)
    assert info["body_len"] == 5
    assert "expect" not in header_map(info)


async def test_expect_100_continue_over_limit_gets_413_without_continue(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)], limits={"max_request_body": 1000})
    (resp,) = await raw_exchange(
        px.port, b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    )
    assert resp.status == 413
    assert up.hits == 0


async def test_body_over_limit_is_413(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)], limits={"max_request_body": 1000})
    async with aiohttp.ClientSession() as s:
        async with s.post(px.url + "/big", data=b"z" * 5000) as r:
            assert r.status == 413
            assert "larger than 1000" in await r.text()
        async with s.post(px.url + "/small", data=b"z" * 1000) as r:
            assert r.status == 200


async def test_chunked_body_over_limit_is_413(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)], limits={"max_request_body": 1000})
    chunk = b"400\r\n" + b"a" * 1024 + b"\r\n"
    (resp,) = await raw_exchange(
        px.port, b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3 + b"0\r\n\r\n"
    )
    assert resp.status == 413


async def test_no_route_is_404(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    up = await start_upstream()
    px = await start_proxy([route(prefix="/api", stable=up)])
    async with aiohttp.ClientSession() as s, s.get(px.url + "/other") as r:
        assert r.status == 404
        text = await r.text()
    assert "no route" in text
    assert "Traceback" not in text


async def test_connect_failure_is_502_naming_route_and_backend(start_proxy: StartProxy) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    px = await start_proxy([route(name="shop", canary=dead)])
    async with aiohttp.ClientSession() as s, s.get(px.url + "/") as r:
        assert r.status == 502
        text = await r.text()
    assert "route shop" in text
    assert "backend canary" in text


async def test_slow_upstream_is_504(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    up = await start_upstream()
    px = await start_proxy([route(name="shop", stable=up)], timeouts={"response": "200ms"})
    async with aiohttp.ClientSession() as s:
        async with s.get(px.url + "/slow?s=3") as r:
            assert r.status == 504
            assert "route shop, backend stable" in await r.text()
        # The proxy is still fine for the next request.
        async with s.get(px.url + "/ok") as r:
            assert r.status == 200


async def test_malformed_request_is_400(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    (resp,) = await raw_exchange(px.port, b"GARBAGE\x00\x01 / HTTP/1.1\r\n\r\n")
    assert resp.status == 400
    assert up.hits == 0
    # counted like the proxy's other answers (route "" as for a request no route matched)
    assert px.server.runtime.counts.requests == {("", "", "OTHER", "400"): 1}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"zz\r\nhello\r\n0\r\n\r\n", id="chunk-size-not-hex"),
        pytest.param(b"5\nhello\r\n0\r\n\r\n", id="bare-lf"),
    ],
)
async def test_a_broken_request_body_is_400_at_once_and_not_the_upstreams_fault(
    start_upstream: StartUpstream, start_proxy: StartProxy, body: bytes
) -> None:
    """The head went upstream, then the body broke its framing: the client gets its 400 now
    (not a 504 when the upstream, waiting for the rest, times out), and the upstream is
    charged nothing: no error, no failure towards ejection."""
    a, b = await start_upstream("a"), await start_upstream("b")
    r = route(stable=[a, b])
    r["outlier_detection"] = {"consecutive_failures": 1}
    px = await start_proxy([r], timeouts={"response": "30s"})
    t0 = time.monotonic()
    for _ in range(4):
        head = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        (resp,) = await raw_exchange(px.port, head + body)
        assert resp.status == 400
        assert b"bad request" in resp.body
        assert resp.header("connection") == "close"
    assert time.monotonic() - t0 < 10  # not the 30 s response time-out
    counts = px.server.runtime.counts
    assert counts.upstream_errors == {}
    assert counts.requests == {("main", "stable", "POST", "400"): 4}
    async with aiohttp.ClientSession() as s:
        for _ in range(4):  # both instances still take traffic
            async with s.get(px.url + "/ok") as resp:
                assert resp.status == 200
    assert a.hits >= 3
    assert b.hits >= 3


async def test_request_head_is_limited_to_64_kib(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    """httptools has no limit: an endless header would be read (and, coming in pieces, copied
    over and over) until memory ran out. 431 past 64 KiB; just under it, and large bodies in
    the same reads as the heads around them, are fine."""
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (8 << 20) + b"\r\n\r\n"
    (resp,) = await raw_exchange(px.port, big)
    assert resp.status == 431
    assert resp.header("connection") == "close"
    assert b"request head larger than 64 KiB" in resp.body
    (resp,) = await raw_exchange(px.port, b"GET /" + b"u" * (70 << 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.status == 431
    assert up.hits == 0
    near = b"GET /near HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: %s\r\n" % (b"p" * 1000) * 60 + b"\r\n"
    body = b"b" * (300 << 10)
    post = b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    responses = await raw_exchange(px.port, near + post + post + near, responses=4)
    assert [r.status for r in responses] == [200, 200, 200, 200]
    # and in pieces: the rest of a head larger than 64 KiB after a first small read, whole or
    # still coming
    for rest in (b"X-Big: " + b"a" * (70 << 10) + b"\r\n\r\n", b"X-Big: " + b"a" * (200 << 10)):
        reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
        writer.write(b"GET /pieces HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # most likely two reads (one is refused as well)
        writer.write(rest)
        assert (await read_response(reader)).status == 431
        writer.close()
    assert up.hits == 4  # the four good ones
    counts = px.server.runtime.counts.requests
    assert sum(n for (_route, _backend, _method, code), n in counts.items() if code == "431") == 4


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"X-Big: " + b"h" * (2 << 20) + b"\r\n", id="2-mib-field"),
        # QA: a head whose end came in the read that took it past the limit was forwarded.
        pytest.param(b"X-Big: " + b"a" * 66_000 + b"\r\n", id="one-field-just-over"),
        pytest.param(b"".join(b"X-F%d: v\r\n" % i for i in range(8000)), id="many-small-fields"),
    ],
)
async def test_upstream_response_head_is_limited_to_64_kib(start_proxy: StartProxy, head: bytes) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: 2\r\n\r\nok")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async with raw_upstream(handle) as url:
        px = await start_proxy([route(stable=url)])
        (resp,) = await raw_exchange(px.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.status == 502  # the log names the reason: "upstream response head larger than 64 KiB"
    assert px.server.runtime.counts.upstream_errors == {("main", "stable", "reset"): 1}


async def test_response_time_out_counts_from_the_whole_request_sent(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """An upload slower than timeouts.response is no upstream time-out (it was a 504 charged to
    the upstream); a client that stops sending its body for timeouts.idle gets a 408, and
    the upstream is charged nothing either."""
    up = await start_upstream()
    px = await start_proxy([route(stable=up)], timeouts={"response": "300ms", "idle": "700ms"})
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    writer.write(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
    for byte in b"abcdefgh":  # 8 x 100 ms: well past the response time-out, never idle
        await asyncio.sleep(0.1)
        writer.write(bytes([byte]))
    resp = await read_response(reader)
    assert resp.status == 200
    assert json.loads(resp.body)["body_len"] == 8
    writer.write(b"POST /stalled HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nab")
    t0 = time.monotonic()
    resp = await read_response(reader)
    assert resp.status == 408
    assert resp.header("connection") == "close"
    assert 0.5 < time.monotonic() - t0 < 5
    writer.close()
    counts = px.server.runtime.counts
    assert counts.upstream_errors == {}
    assert counts.requests == {("main", "stable", "POST", "200"): 1, ("main", "stable", "POST", "408"): 1}


async def test_host_rules_of_rfc_9112(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    """§3.2: an HTTP/1.1 request without Host, or with two, is 400 (a proxy routing by one
    while the application reads the other is how requests get smuggled past host rules);
    §3.2.2: an absolute-form target's authority replaces Host; Host is never a connection
    option that the proxy would drop."""
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    for head in (b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"):
        (resp,) = await raw_exchange(px.port, head)
        assert resp.status == 400
        assert resp.header("connection") == "close"
    assert up.hits == 0

    def host_seen() -> list[str]:
        return [v for k, v in up.seen[-1]["headers"] if k.lower() == "host"]

    for head, host in [
        (b"GET http://other.test/abs?q=1 HTTP/1.1\r\nHost: hostheader.test\r\n\r\n", "other.test"),
        (b"GET http://other.test/abs HTTP/1.0\r\n\r\n", "other.test"),
        (b"GET HTTP://other.test/abs HTTP/1.1\r\nHost: h\r\n\r\n", "other.test"),  # QA: a scheme in any case
        (b"GET / HTTP/1.1\r\nHost: x.test\r\nConnection: host, x-drop\r\nX-Drop: 1\r\n\r\n", "x.test"),
        (b"GET / HTTP/1.0\r\n\r\n", up.url.removeprefix("http://")),  # the upstream's own
    ]:
        (resp,) = await raw_exchange(px.port, head)
        assert resp.status == 200
        assert host_seen() == [host]
    assert "X-Drop" not in dict(up.seen[-2]["headers"])
    assert up.seen[0]["path"] == "/abs?q=1"


async def test_host_is_routed_without_the_whitespace_around_it(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """llhttp keeps a value's trailing whitespace: `Host: a.example ` missed a.example's route
    and went to another one, whose upstream reads it as a.example (RFC 9110 §5.5)."""
    a = await start_upstream("a")
    other = await start_upstream("other")
    px = await start_proxy([route(name="a", host="a.example", stable=a), route(name="rest", stable=other)])
    (resp,) = await raw_exchange(px.port, b"GET / HTTP/1.1\r\nHost: a.example \t\r\n\r\n")
    assert resp.status == 200
    assert (a.hits, other.hits) == (1, 0)
    assert [v for k, v in a.seen[0]["headers"] if k.lower() == "host"] == ["a.example"]


async def test_an_upstream_that_answers_head_with_a_body_does_not_cross_the_next_response(
    start_proxy: StartProxy,
) -> None:
    """A non-compliant server sends a body after its HEAD answer, perhaps in a later read:
    on a reused connection those bytes would be taken for the next request's response."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            path = head.split(b" ")[1]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (9 + len(path)))
            await writer.drain()
            writer.write(b"body-for-" + path)  # for HEAD too, in a read of its own
            await writer.drain()
        writer.close()

    async with raw_upstream(handle) as url:
        px = await start_proxy([route(stable=url)])
        reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
        try:
            for _ in range(2):  # pipelined: GET /g is sent upstream as soon as HEAD is answered
                writer.write(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await read_response(reader, head_request=True)
                assert (head.status, head.header("content-length")) == (200, "11")
                async with asyncio.timeout(5):
                    got = await read_response(reader)
                assert (got.status, got.body) == (200, b"body-for-/g")
        finally:
            writer.close()


@pytest.mark.parametrize(
    ("head", "status"),
    [
        pytest.param(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, id="http-2.0-in-an-http-1-line"),
        pytest.param(b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505, id="http-1.2"),  # QA: was 400
        pytest.param(b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505, id="http-3.0"),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, id="te-gzip"
        ),
    ],
)
async def test_what_the_proxy_cannot_forward_faithfully_is_refused(
    start_upstream: StartUpstream, start_proxy: StartProxy, head: bytes, status: int
) -> None:
    """A version it does not speak, a transfer coding its re-framing would drop: as nginx."""
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    (resp,) = await raw_exchange(px.port, head)
    assert resp.status == status
    assert up.hits == 0


SLOW_LORIS_LINES = [b"GET / HTTP/1.1\r\nHost: x\r\n", *(b"X-Line-%d: 1\r\n" % i for i in range(30))]
# QA: until the method was whole (httptools' first callback is the target) the head was not
# timed and each byte reset the idle time-out: "UNSUBSCRIBE" a byte every 2.5 s held a
# connection 33 s against an idle time-out of 3 s. A byte every 300 ms: the method alone
# takes 3.6 s, so a head timed from its target could not be answered before then.
TRICKLED_METHOD = [bytes([b]) for b in b"UNSUBSCRIBE /x HTTP/1.1\r\nHost: x\r\n"]


@pytest.mark.parametrize(
    ("pieces", "every", "within"),
    [
        pytest.param(SLOW_LORIS_LINES, 0.2, 3.0, id="a-header-line-every-200-ms"),
        pytest.param(TRICKLED_METHOD, 0.3, 3.3, id="the-method-a-byte-every-300-ms"),
    ],
)
async def test_a_request_head_must_come_whole_within_the_idle_time_out(
    start_upstream: StartUpstream, start_proxy: StartProxy, pieces: list[bytes], every: float, within: float
) -> None:
    """A slow-loris client sends a piece of its head now and then, each before the idle
    time-out: the head as a whole must still come within it, timed from its first byte
    (nginx's client_header_timeout)."""
    up = await start_upstream()
    px = await start_proxy([route(stable=up)], timeouts={"idle": "600ms"})
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    t0 = time.monotonic()

    async def trickle() -> None:
        for piece in pieces:
            if writer.is_closing():
                return
            writer.write(piece)
            await asyncio.sleep(every)

    sending = asyncio.create_task(trickle())
    try:
        resp = await read_response(reader)
    finally:
        sending.cancel()
        writer.close()
    assert resp.status == 408
    assert time.monotonic() - t0 < within
    assert up.hits == 0


async def test_an_empty_line_after_a_request_is_no_head_and_idles_out_silently(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """RFC 9112 §2.2: a server ignores empty lines before a request (old clients send a CRLF
    after a POST body). Timed as a head coming, it turned the idle close into a 408."""
    up = await start_upstream()
    px = await start_proxy([route(stable=up)], timeouts={"idle": "300ms"})
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    writer.write(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
    resp = await read_response(reader)
    assert resp.status == 200
    writer.write(b"\r\n")  # a read of its own
    async with asyncio.timeout(5):
        rest = await reader.read()  # closed after the idle time-out
    writer.close()
    assert rest == b""


async def test_empty_lines_alone_do_not_hold_a_connection_open(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """Review: each read reset the idle time-out, and empty lines start no head, so a CRLF a
    second held a connection for good (nginx's client_header_timeout is not reset by bytes)."""
    up = await start_upstream()
    px = await start_proxy([route(stable=up)], timeouts={"idle": "600ms"})
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    t0 = time.monotonic()

    async def a_crlf_every_200_ms() -> None:
        for _ in range(30):
            if writer.is_closing():
                return
            writer.write(b"\r\n")
            await asyncio.sleep(0.2)

    sending = asyncio.create_task(a_crlf_every_200_ms())
    try:
        async with asyncio.timeout(10):
            try:
                rest = await reader.read()
            except ConnectionResetError:  # a CRLF that came after the close: the kernel resets
                rest = b""
    finally:
        sending.cancel()
        writer.close()
    assert rest == b""  # closed as an idle connection, no answer
    assert time.monotonic() - t0 < 3  # the CRLFs would have gone on for 6 s


async def test_a_request_refused_in_its_head_is_counted_with_its_method(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """QA: a POST refused while its headers were read (Content-Length and chunked) was logged
    and counted as a GET."""
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    (resp,) = await raw_exchange(
        px.port, b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert resp.status == 400
    assert px.server.runtime.counts.requests == {("", "", "POST", "400"): 1}
    px.server.runtime.access_log.flush()
    assert [line["method"] for line in px.access_lines()] == ["POST"]


async def test_a_broken_request_behind_a_good_one_is_answered_in_its_turn(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    data = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost x\r\n\r\n"
    first, second, third = await raw_exchange(px.port, data, responses=3)
    assert (first.status, second.status, third.status) == (200, 200, 400)
    assert third.header("connection") == "close"


async def test_client_disconnect_frees_the_upstream(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    writer.write(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(up.event("forever-started").wait(), 5)
    await reader.readexactly(1000)
    writer.transport.abort()
    await asyncio.wait_for(up.event("forever-gone").wait(), 5)
    assert px.access_lines()[-1]["status"] == 200 or px.access_lines()[-1]["status"] == 499


async def test_websocket_is_tunnelled(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    async with aiohttp.ClientSession() as s, s.ws_connect(px.url + "/ws") as ws:
        await ws.send_str("hi")
        assert (await ws.receive_str()) == "echo:hi"
        payload = bytes(range(256)) * 400
        await ws.send_bytes(payload)
        assert (await ws.receive_bytes()) == payload


async def test_a_websocket_handshake_carries_the_new_sticky_cookie(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """QA: the 101 of a client's first request (a WebSocket) had no Set-Cookie, so its next
    request drew a new key, and maybe another backend."""
    up = await start_upstream()
    r = route(stable=up)
    r["sticky"] = {"by": "cookie", "name": "sp_main", "max_age": "1h"}
    px = await start_proxy([r])
    jar = aiohttp.CookieJar(unsafe=True)  # unsafe: it keeps cookies of an IP address
    async with aiohttp.ClientSession(cookie_jar=jar) as s, s.ws_connect(px.url + "/ws") as ws:
        [cookie] = [c for c in jar if c.key == "sp_main"]  # as set, with its attributes
        await ws.send_str("hi")
        assert (await ws.receive_str()) == "echo:hi"
    assert len(cookie.value) == 32
    assert (cookie["max-age"], cookie["path"], cookie["httponly"]) == ("3600", "/", True)


async def test_the_sticky_cookie_carries_its_configured_attributes(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """QA (eighth round): the cookie was always `Path=/; HttpOnly; SameSite=Lax`, never
    `Secure`, with no `Domain` (Traefik's sticky cookie has all five). A returning user's
    cookie is taken, and no new one issued."""
    up = await start_upstream()
    r = route(prefix="/shop/", stable=up)
    r["sticky"] = {
        "by": "cookie",
        "name": "sp_main",
        "max_age": 0,
        "secure": True,
        "same_site": "none",
        "http_only": False,
        "path": "/shop",
        "domain": "Example.COM",
    }
    px = await start_proxy([r])
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    try:
        writer.write(b"GET /shop/x HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
        first = await read_response(reader)
        [line] = first.all("set-cookie")
        name, _, rest = line.partition("=")
        key, _, attributes = rest.partition(";")
        assert (name, len(key)) == ("sp_main", 32)
        assert attributes == " Path=/shop; Domain=example.com; Secure; SameSite=None"  # a session cookie
        writer.write(b"GET /shop/y HTTP/1.1\r\nHost: shop.example.com\r\nCookie: sp_main=%s\r\n\r\n" % key.encode())
        again = await read_response(reader)
        assert again.status == 200
        assert again.all("set-cookie") == []
    finally:
        writer.close()


async def test_a_header_given_twice_is_read_by_its_first_line(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """QA (eighth round): the last line was read for overrides and sticky keys, while both
    went upstream, where most applications read the first."""
    stable = await start_upstream("stable")
    canary = await start_upstream("canary")
    r = route(stable=(stable, 100), canary=(canary, 0))
    r["overrides"] = [{"header": "X-Canary", "value": "always", "backend": "canary"}]
    px = await start_proxy([r])
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    try:
        for first, second, served in (("always", "no", "canary"), ("no", "always", "stable")):
            writer.write(
                b"GET /x HTTP/1.1\r\nHost: h\r\nX-Canary: %s\r\nX-Canary: %s\r\n\r\n"
                % (first.encode(), second.encode())
            )
            resp = await read_response(reader)
            assert (resp.status, json.loads(resp.body)["upstream"]) == (200, served), (first, second)
    finally:
        writer.close()


async def test_sticky_by_ip_behind_a_trusted_proxy_reads_x_forwarded_for(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """QA (eighth round): behind the TLS terminator the README recommends, `by: ip` hashed
    the terminator's address: every user on one backend. With the terminator in
    `trusted_proxies` the client it names in X-Forwarded-For is hashed."""
    stable = await start_upstream("stable")
    canary = await start_upstream("canary")

    async def served(px: RunningProxy, users: list[str]) -> dict[str, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", px.port)  # one connection: the proxy in front
        got = {}
        try:
            for user in users:
                writer.write(b"GET /x HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6, %s\r\n\r\n" % user.encode())
                resp = await read_response(reader)
                got[user] = json.loads(resp.body)["upstream"]
        finally:
            writer.close()
        return got

    users = [f"198.51.100.{i}" for i in range(1, 101)]
    r = route(stable=(stable, 50), canary=(canary, 50))
    r["sticky"] = {"by": "ip"}
    untrusted = await start_proxy([r])
    assert len(set((await served(untrusted, users)).values())) == 1  # the peer's address: one backend
    trusted = await start_proxy([r], trusted_proxies=["127.0.0.1/32"])
    first = await served(trusted, users)
    assert set(first.values()) == {"stable", "canary"}
    assert await served(trusted, users) == first  # each user stays


async def test_weighted_split_of_10000_requests(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    stable = await start_upstream("stable")
    canary = await start_upstream("canary")
    px = await start_proxy([route(stable=(stable, 90), canary=(canary, 10))], access_log="off")

    async def client(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
        try:
            for _ in range(n):
                writer.write(b"GET /w HTTP/1.1\r\nHost: x\r\n\r\n")
                resp = await read_response(reader)
                assert resp.status == 200
        finally:
            writer.close()

    await asyncio.gather(*(client(500) for _ in range(20)))
    assert stable.hits + canary.hits == 10_000
    # Binomial(10000, 0.1): sd = 30; 5 sd either side fails by chance ~1 in 3.5 million.
    assert 850 <= canary.hits <= 1150, canary.hits


async def test_header_override(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    stable = await start_upstream("stable")
    canary = await start_upstream("canary")
    r = route(stable=(stable, 100), canary=(canary, 0))
    r["overrides"] = [
        {"header": "X-Canary", "value": "always", "backend": "canary"},
        {"cookie": "beta", "value": "1", "backend": "canary"},
    ]
    px = await start_proxy([r])
    async with aiohttp.ClientSession() as s:
        for _ in range(5):
            async with s.get(px.url + "/", headers={"X-Canary": "always"}) as resp:
                assert (await resp.json())["upstream"] == "canary"
            async with s.get(px.url + "/", headers={"Cookie": "a=b; beta=1"}) as resp:
                assert (await resp.json())["upstream"] == "canary"
            async with s.get(px.url + "/") as resp:
                assert (await resp.json())["upstream"] == "stable"


async def test_round_robin_across_instances(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    a = await start_upstream("a")
    b = await start_upstream("b")
    px = await start_proxy([route(stable=([a, b], 1))])
    async with aiohttp.ClientSession() as s:
        for _ in range(10):
            async with s.get(px.url + "/") as resp:
                assert resp.status == 200
    assert a.hits == b.hits == 5


async def test_host_and_prefix_routing(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    api = await start_upstream("api")
    web_ = await start_upstream("web")
    shop = await start_upstream("shop")
    px = await start_proxy(
        [
            route(name="web", prefix="/", stable=web_),
            route(name="api", prefix="/api", stable=api),
            route(name="shop", prefix="/", host="*.shop.example", stable=shop),
        ]
    )
    async with aiohttp.ClientSession() as s:
        for path, host, expect in [
            ("/api/x", "a.test", "api"),
            ("/apix", "a.test", "api"),  # a plain string prefix, as in Envoy and Traefik
            ("/index", "a.test", "web"),
            ("/api/x", "eu.shop.example:8080", "shop"),
        ]:
            async with s.get(px.url + path, headers={"Host": host}) as resp:
                assert (await resp.json())["upstream"] == expect, (path, host)


async def test_access_log_has_one_line_per_request(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    up = await start_upstream()
    px = await start_proxy([route(name="shop", stable=up)])
    async with aiohttp.ClientSession() as s:
        async with s.get(px.url + "/a", headers={"X-Request-Id": "rid-1"}) as r:
            await r.read()
        async with s.post(px.url + "/b", data=b"12345") as r:
            await r.read()
    lines = px.access_lines()
    assert len(lines) == 2
    first, second = lines
    assert first["route"] == "shop"
    assert first["backend"] == "stable"
    assert first["status"] == 200
    assert first["request_id"] == "rid-1"
    assert first["path"] == "/a"
    assert first["duration_ms"] >= 0
    assert second["bytes_in"] == 5
    assert second["bytes_out"] > 0


async def test_access_log_counts_the_body_of_answers_the_proxy_writes(start_proxy: StartProxy) -> None:
    """QA: a 502, 504, 404 or 400 written by the proxy was logged with ``bytes_out: 0``
    (nginx's $body_bytes_sent counts those bytes)."""
    px = await start_proxy([route("dead", "/dead", stable="http://127.0.0.1:9")])
    exchanges = [
        b"GET /dead HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"HEAD /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /dead HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET /dead HTTP/9.1\r\nHost: x\r\n\r\n",
    ]
    sizes = []
    for request in exchanges:
        (resp,) = await raw_exchange(px.port, request, head=request.startswith(b"HEAD"))
        sizes.append((resp.status, len(resp.body)))
    assert [status for status, _ in sizes] == [502, 404, 404, 400, 505]
    await px.server.stop()
    assert [(line["status"], line["bytes_out"]) for line in px.access_lines()] == sizes
    assert [n > 0 for _, n in sizes] == [True, True, False, True, True]  # HEAD: no body


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
async def test_a_response_without_length_ends_at_the_upstreams_close(start_proxy: StartProxy, version: str) -> None:
    """RFC 9112 §6.3 (8): neither Content-Length nor chunked, the body ends when the upstream
    closes. Re-chunked for an HTTP/1.1 client, whose last chunk the close must send; an
    upstream that closes in the middle of a chunked body, though, cut the response short."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"/cut" in head:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        else:
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil-")
            await writer.drain()
            writer.write(b"close-body")
        await writer.drain()
        writer.close()

    async with raw_upstream(handle) as url:
        px = await start_proxy([route(stable=url)])
        for _ in range(2):  # and the client's connection stays usable
            [resp] = await raw_exchange(px.port, f"GET /x {version}\r\nHost: x\r\n\r\n".encode())
            assert (resp.status, resp.body) == (200, b"until-close-body")
            assert resp.header("transfer-encoding") == ("chunked" if version == "HTTP/1.1" else None)
        reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
        writer.write(b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises((ValueError, asyncio.IncompleteReadError)):
            await read_response(reader)  # no last chunk: the client sees the body cut short
        writer.close()
    # the cut one; a close that ends a body is no error
    assert px.server.runtime.counts.upstream_errors == {("main", "stable", "reset"): 1}


async def test_keep_alive_race_is_retried(start_proxy: StartProxy) -> None:
    """An upstream that closes every connection after one response without saying so:
    the second request meets a dead pooled connection and must be retried, not 502."""
    hits = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal hits
        await reader.readuntil(b"\r\n\r\n")
        hits += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async with raw_upstream(handle) as url:
        px = await start_proxy([route(stable=url)])
        async with aiohttp.ClientSession() as s:
            for _ in range(5):
                async with s.get(px.url + "/") as r:
                    assert r.status == 200
                    assert await r.read() == b"ok"
    assert hits == 5


async def test_closed_connections_are_freed_without_the_cycle_collector(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """A protocol and its httptools parser refer to each other; the proxy drops the parser
    when the connection is lost, so reference counting frees the connection at once. Left
    to the cycle collector (whose young generation serve() makes large), clients that open
    a connection per request made ~40 ms collector passes, the p99 of every request."""
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    runtime = px.server.runtime
    # One request first: connecting to the upstream runs a coroutine, which (compiled by
    # mypyc) keeps its frame in a cycle; the requests below reuse that pooled connection.
    [resp] = await raw_exchange(px.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.status == 200
    gc.collect()
    gc.disable()
    try:
        for _ in range(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await read_response(reader)).status == 200
            assert await reader.read() == b""  # the proxy closed its side
            writer.close()
        # Lost connections are gone; one the proxy has closed but not yet been told about
        # (connection_lost runs in a later callback) is still in runtime.connections.
        assert len(runtime.connections) < 10
        lost = [o for o in gc.get_objects() if isinstance(o, ClientConnection) and o.closed]
    finally:
        gc.enable()
    assert lost == []


async def test_response_trailers_stay_out_of_the_next_response(start_proxy: StartProxy) -> None:
    """A chunked response's trailer fields are dropped (as nginx drops them): they must not
    become header fields of the next response read on the same upstream connection, which
    may be another client's."""
    answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\nX-Checksum: aaa\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond",
    ]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:  # one connection, two requests
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        writer.close()

    async with raw_upstream(handle) as url:
        px = await start_proxy([route(stable=url)])
        (first,) = await raw_exchange(px.port, b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        (second,) = await raw_exchange(px.port, b"GET /2 HTTP/1.1\r\nHost: y\r\n\r\n")  # another client
    assert (first.status, first.body) == (200, b"first")
    assert (second.status, second.body) == (200, b"second")
    assert first.header("x-checksum") is None
    assert second.header("x-checksum") is None


async def test_request_trailers_are_dropped(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    """A chunked request's trailer fields do not join its header fields after the fact (a
    trailer `Host` was "more than one Host header", a 400 after the request had gone
    upstream), nor the next request's."""
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    body = (
        b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nHost: evil\r\nX-Late: 1\r\n\r\n"
    )
    first, second = await raw_exchange(px.port, body + b"GET /n HTTP/1.1\r\nHost: x\r\n\r\n", responses=2)
    assert first.status == 200
    assert json.loads(first.body)["body_len"] == 5
    assert second.status == 200
    for seen in up.seen:
        assert "x-late" not in {k.lower() for k, _ in seen["headers"]}


async def test_bytes_after_an_upgrade_request_wait_for_the_101(start_proxy: StartProxy) -> None:
    """What a client sends after an Upgrade request goes upstream only once the upstream has
    switched protocols: sent at once, an upstream that refused the upgrade and kept its
    connection read it as its next request, one the proxy never routed (request smuggling).
    An Upgrade request's own body (Content-Length) goes upstream as a body, framed."""
    seen: list[tuple[bytes, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:  # keep-alive, never switching protocols: an upstream that refuses
                head = await reader.readuntil(b"\r\n\r\n")
                fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
                body = await reader.readexactly(int(fields.get(b"content-length", b"0")))
                seen.append((head.split(b"\r\n")[0], body))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
                await writer.drain()

    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    async with raw_upstream(handle) as url:
        px = await start_proxy([route(stable=url)])
        upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        (resp,) = await raw_exchange(px.port, upgrade + smuggled)
        assert (resp.status, resp.body) == (200, b"no")
        post = b"POST /p HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\n"
        (resp,) = await raw_exchange(px.port, post + b"hello" + smuggled)
        assert (resp.status, resp.body) == (200, b"no")
        (after,) = await raw_exchange(px.port, b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        assert after.status == 200
        chunked = (
            b"POST /c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        (resp,) = await raw_exchange(px.port, chunked + b"5\r\nhello\r\n0\r\n\r\n" + smuggled)
        assert resp.status == 501
    assert seen == [(b"GET /ws HTTP/1.1", b""), (b"POST /p HTTP/1.1", b"hello"), (b"GET /after HTTP/1.1", b"")]


def scripted_upstream(
    answers: dict[bytes, bytes], seen: list[bytes]
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A keep-alive upstream answering each request line's path with the exact bytes of
    ``answers`` (else a plain 200 naming the path), recording each request line it reads."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n")[0]
                seen.append(line)
                path = line.split(b" ")[1]
                body = b"real " + path
                writer.write(answers.get(path, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)))
                await writer.drain()
        writer.close()

    return handle


async def test_bytes_after_a_response_never_reach_another_request(start_proxy: StartProxy) -> None:
    """RFC 9112 §6.3: data after a response is not a response. An upstream connection with
    bytes after its response went back to the pool; the next request on it, anyone's, got
    those bytes as its response (or a 502 for a half head)."""
    fake = b"HTTP/1.1 200 OK\r\nX-Evil: 1\r\nContent-Length: 4\r\n\r\nEVIL"
    seen: list[bytes] = []
    answers = {
        b"/full": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + fake,
        b"/half": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 302 Found\r\nLocation: http://evil/\r\n",
        b"/head": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" + fake,
    }
    async with raw_upstream(scripted_upstream(answers, seen)) as url:
        px = await start_proxy([route(stable=url)])
        for first in (b"/full", b"/half"):
            (a,) = await raw_exchange(px.port, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % first)
            (b,) = await raw_exchange(px.port, b"GET /victim HTTP/1.1\r\nHost: y\r\n\r\n")
            assert (a.status, a.body) == (200, b"ok")
            assert (b.status, b.body, b.header("x-evil")) == (200, b"real /victim", None)
        # The same client's next request, pipelined: taken from the pool while the rest of
        # the read was still to be parsed.
        two = b"GET /full HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n"
        a, b = await raw_exchange(px.port, two, responses=2)
        assert (a.body, b.body, b.header("x-evil")) == (b"ok", b"real /next", None)
        head = b"HEAD /head HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n"
        a = (await raw_exchange(px.port, head, head=True))[0]
        (b,) = await raw_exchange(px.port, b"GET /victim HTTP/1.1\r\nHost: y\r\n\r\n")
        assert (a.status, b.body, b.header("x-evil")) == (200, b"real /victim", None)


async def test_what_an_upstream_may_not_answer_is_a_502(start_proxy: StartProxy) -> None:
    """A status outside 100-599 (below 100 its head was dropped as interim and its body went
    to the client raw: a response of the upstream's making), a transfer coding the proxy
    would drop while re-framing, and a 101 the request did not ask for (RFC 9110 §15.2.2;
    the switched connection was pooled and carried the next request)."""
    seen: list[bytes] = []
    forged = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"
    answers = {
        b"/low": b"HTTP/1.1 000 X\r\nContent-Length: %d\r\n\r\n%s" % (len(forged), forged),
        b"/high": b"HTTP/1.1 600 X\r\nContent-Length: 2\r\n\r\nno",
        b"/gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nzz\r\n0\r\n\r\n",
        b"/switch": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n",
    }
    async with raw_upstream(scripted_upstream(answers, seen)) as url:
        px = await start_proxy([route(stable=url)])
        for path in answers:
            (resp,) = await raw_exchange(px.port, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
            assert resp.status == 502, (path, resp)
            (after,) = await raw_exchange(px.port, b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (after.status, after.body) == (200, b"real /after"), path
        assert seen.count(b"GET /after HTTP/1.1") == len(answers)


async def test_every_connection_line_counts(start_proxy: StartProxy) -> None:
    """RFC 9110 §7.6.1, §5.3: the options of every Connection field line are removed; only the
    last line counted, so a header named on another line passed, in both directions."""
    seen: list[bytes] = []
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        seen.append(head.split(b"\r\n")[0])
        writer.write(
            b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nConnection: keep-alive\r\nX-Secret: s\r\n"
            b"Content-Length: 2\r\n\r\nok"
        )
        await writer.drain()
        writer.close()

    async with raw_upstream(handle) as url:
        px = await start_proxy([route(stable=url)])
        request = (
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: x-internal\r\nConnection: keep-alive\r\nX-Internal: s\r\n\r\n"
        )
        (resp,) = await raw_exchange(px.port, request)
    assert resp.status == 200
    assert resp.header("x-secret") is None
    assert b"x-internal" not in heads[0].lower()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(
            b"POST / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            400,
            id="transfer-encoding-in-http-1.0",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            501,
            id="a-coding-on-its-own-line",
        ),
        pytest.param(b"GET http://evil@a/x HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="absolute-form-with-userinfo"),
        pytest.param(b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="absolute-form-without-host"),
        pytest.param(b"GET /cb#access_token=x HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="fragment"),
        pytest.param(b"GET /a?b=1#&token=x HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="fragment-after-query"),
        pytest.param(b"GET http://a/cb#x HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="fragment-in-absolute-form"),
        # QA: an invalid Host was routed and forwarded as it came (RFC 9112 §3.2: 400).
        pytest.param(b"GET /x HTTP/1.1\r\nHost: a b/c@d\r\n\r\n", 400, id="host-with-space-slash-at"),
        pytest.param(b"GET /x HTTP/1.1\r\nHost: a.example:80/evil\r\n\r\n", 400, id="host-with-a-path"),
        pytest.param(b"GET /x HTTP/1.1\r\nHost: a.example\\b\r\n\r\n", 400, id="host-with-backslash"),
        pytest.param(b"GET /x HTTP/1.1\r\nHost: a.example:x\r\n\r\n", 400, id="host-port-not-digits"),
        pytest.param(b"GET /x HTTP/1.1\r\nHost: a.example:99999999\r\n\r\n", 400, id="host-port-too-long"),
        pytest.param(b"GET /x HTTP/1.1\r\nHost:\r\n\r\n", 400, id="host-empty"),
        pytest.param(b"GET /x HTTP/1.0\r\nHost:\r\n\r\n", 400, id="host-empty-http-1.0"),
        pytest.param(b"GET http://:80/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="absolute-form-port-only"),
        pytest.param(b"OPTIONS *?a=1 HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="asterisk-form-with-a-query"),
        pytest.param(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="asterisk-form-not-options"),
    ],
)
async def test_framing_and_targets_refused(
    start_upstream: StartUpstream, start_proxy: StartProxy, request_bytes: bytes, status: int
) -> None:
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    (resp,) = await raw_exchange(px.port, request_bytes + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.status == status
    assert resp.header("connection") == "close"
    assert up.seen == []


def recording(heads: list[bytes]) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A raw upstream's handler: keeps each request head byte for byte, answers 200 "ok"."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

    return handle


async def test_connect_in_authority_form_is_named_unsupported(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """QA: ``CONNECT host:443`` was "request target must be a path"."""
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    (resp,) = await raw_exchange(px.port, b"CONNECT ex.com:443 HTTP/1.1\r\nHost: ex.com:443\r\n\r\n")
    assert (resp.status, resp.body) == (501, b"CONNECT is not supported\n")  # 405 would need Allow
    assert up.hits == 0


async def test_options_asterisk_is_forwarded_on_the_route_of_slash(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """QA: ``OPTIONS *`` was let through, then "404 no route for ex.com*" (no prefix can
    match ``*``). A proxy forwards it (RFC 9110 §9.3.7), as Envoy does."""
    api = await start_upstream("api")
    heads: list[bytes] = []
    async with raw_upstream(recording(heads)) as site:
        px = await start_proxy([route("api", "/api", stable=api), route("site", "/", stable=site)])
        (resp,) = await raw_exchange(px.port, b"OPTIONS * HTTP/1.1\r\nHost: ex.com\r\n\r\n")
    assert resp.status == 200, resp
    assert api.hits == 0
    [head] = heads
    assert head.startswith(b"OPTIONS * HTTP/1.1\r\n"), head


async def test_a_valid_host_in_every_form_is_forwarded(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    hosts = [b"a.example", b"a.example:8080", b"127.0.0.1:80", b"[::1]:8080", b"[::1]", b"xn--bcher-kva.example"]
    heads: list[bytes] = []
    async with raw_upstream(recording(heads)) as up:
        px = await start_proxy([route(stable=up)])
        for host in hosts:
            (resp,) = await raw_exchange(px.port, b"GET /x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            assert resp.status == 200, host
    assert [b"\r\nHost: " + host + b"\r\n" in head for host, head in zip(hosts, heads, strict=True)] == [True] * 6


async def test_a_host_with_a_trailing_dot_takes_its_hosts_route(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """QA: ``Host: A.EXAMPLE.`` (the same host, fully qualified) missed a.example's route and
    reached the catch-all route's upstream, which reads it as a.example."""
    tenant, other = await start_upstream("tenant"), await start_upstream("other")
    px = await start_proxy([route("tenant", "/", host="a.example", stable=tenant), route("any", "/", stable=other)])
    for host in (b"A.EXAMPLE.", b"a.example.:8080", b"a.example"):
        (resp,) = await raw_exchange(px.port, b"GET /x HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        assert resp.status == 200
    assert (tenant.hits, other.hits) == (3, 0)


async def test_underscore_spellings_of_the_proxys_own_headers_are_dropped(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """QA: CGI, WSGI and Rack read ``X_Shadow_Request`` as ``X-Shadow-Request``
    (``HTTP_X_SHADOW_REQUEST``): a client could pass a live request as a mirror and forge
    ``X-Forwarded-*`` and ``X-Request-Id`` for such apps. nginx drops them too."""
    forged = [b"X_Shadow_Request", b"X_Forwarded_For", b"x_forwarded-proto", b"X-Forwarded_Host", b"X_Request_Id"]
    request = b"GET /x HTTP/1.1\r\nHost: a\r\nX_Custom_Name: kept\r\n"
    request += b"".join(name + b": forged\r\n" for name in forged)
    heads: list[bytes] = []
    async with raw_upstream(recording(heads)) as up:
        px = await start_proxy([route(stable=up)])
        (resp,) = await raw_exchange(px.port, request + b"\r\n")
    assert resp.status == 200
    [head] = heads
    assert b"forged" not in head, head
    assert b"\r\nX_Custom_Name: kept\r\n" in head  # other names with "_" pass, unlike nginx's default


async def test_a_request_answered_locally_after_an_upgrade_closes_its_connection(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """llhttp reads what follows an Upgrade or CONNECT request as raw bytes: a request
    pipelined behind one the proxy answered itself waited for the idle time-out."""
    up = await start_upstream()
    px = await start_proxy([route(stable=up)], timeouts={"idle": "30s"})
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    writer.write(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        resp = await read_response(reader)
        assert resp.status == 501
        assert await reader.read() == b""  # closed, not left waiting
    writer.close()


# A client in its own process, reading in blocking steps: in the test's event loop the
# proxy and the client would share the CPU and pace each other.
SLOW_READER = """
import socket, sys, time
port, size = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"GET /big HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
got = 0
while True:
    b = s.recv(8000)
    if not b:
        break
    got += len(b)
    time.sleep(0.004)
print(got)
"""


async def test_a_slow_reader_gets_its_whole_download(tmp_path: Path, proxy_process: StartProcess) -> None:
    """QA: a client reading a large body steadily but slowly (~2 MB/s here) was cut off
    after timeouts.idle: only bytes received counted as activity, and the kernel reports a
    full socket writable again only once a third of its buffer (megabytes, on loopback) has
    drained. Bytes the client takes count now (nginx's send_timeout); one that takes none
    is still cut (below)."""
    size = 6 << 20  # more than the kernel's buffers hold (~4 MB on loopback)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head)
        with contextlib.suppress(ConnectionError):
            for _ in range(size >> 16):
                writer.write(b"x" * (1 << 16))
                await writer.drain()

    async with raw_upstream(handle) as url:
        config = tmp_path / "slow.yaml"
        config.write_text(config_text(tmp_path, [route(stable=url)], timeouts={"idle": "300ms"}))
        px = await proxy_process(config)
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SLOW_READER, str(px.port), str(size), stdout=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(60):
            out, _ = await client.communicate()
    # ~3 s for the body; the proxy's head is its own: what matters is every byte of the body
    assert size < int(out) < size + len(head) + len("Date: Fri, 04 Dec 2026 19:04:00 GMT\r\n")
    assert not [line for line in px.lines if "upstream error" in line]


async def test_a_client_that_stops_reading_is_cut_and_the_upstream_not_blamed(start_proxy: StartProxy) -> None:
    size = 64 << 20

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        with contextlib.suppress(ConnectionError):
            for _ in range(size >> 16):
                writer.write(b"x" * (1 << 16))
                await writer.drain()

    async with raw_upstream(handle) as url:
        px = await start_proxy([route(stable=url)], timeouts={"idle": "500ms"})
        reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(3)  # a client that takes nothing for 3 s, six idle time-outs
        got = 0
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(10):
                while chunk := await reader.read(1 << 20):  # what the buffers held, then the cut
                    got += len(chunk)
        writer.close()
    assert got < size
    assert px.server.runtime.counts.upstream_errors == {}


async def test_a_response_whose_upstream_stalls_mid_body_is_an_upstream_time_out(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: cut after timeouts.idle, as before, and now counted as the upstream's time-out
    (towards ejecting it): it was counted nowhere. Logged as a stall, not as "did not
    answer in time" (QA, fourth round: it had answered)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            await reader.read()

    async with raw_upstream(handle) as url:
        px = await start_proxy([route(stable=url)], timeouts={"idle": "500ms"})
        reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
        writer.write(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(5):
            data = await reader.read()
        writer.close()
    assert data.endswith(b"partial")  # the head and what came, then the cut
    assert px.server.runtime.counts.upstream_errors == {("main", "stable", "timeout"): 1}
    assert [r.getMessage().rpartition("reason=")[2] for r in caplog.records if "upstream error" in r.getMessage()] == [
        "timeout: upstream stalled mid-answer"
    ]


async def test_a_head_that_stops_coming_is_answered_408_not_dropped(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """QA: a head cut short and then silent was mostly closed without a word: the idle
    check on the coarse clock fired a tick before the head's own deadline."""
    up = await start_upstream()
    # Not a multiple of the 100 ms tick: the coarse clock then passes the idle time-out a
    # tick before the head's own deadline for heads that start late in a tick.
    px = await start_proxy([route(stable=up)], timeouts={"idle": "550ms"})

    async def half_a_head(i: int) -> RawResponse:
        await asyncio.sleep(0.03 * i)  # heads starting at different points of a tick
        reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n")
        try:
            return await read_response(reader)
        finally:
            writer.close()

    async with asyncio.timeout(10):
        answers = await asyncio.gather(*(half_a_head(i) for i in range(4)))
    assert [resp.status for resp in answers] == [408] * 4
    assert px.server.runtime.counts.requests == {("", "", "GET", "408"): 4}
    assert up.hits == 0


async def test_an_upstream_head_just_under_64_kib_with_its_body_in_the_same_read_passes(
    start_proxy: StartProxy,
) -> None:
    body = b"b" * 200_000

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Big: %s\r\n\r\n" % (len(body), b"a" * 60_000)
        writer.write(head + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            await reader.read()

    async with raw_upstream(handle) as url:
        px = await start_proxy([route(stable=url)])
        (resp,) = await raw_exchange(px.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert resp.status == 200
    assert resp.body == body


async def test_answers_cut_mid_body_eject_the_instance(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    """QA: a reset mid-body was counted as an upstream error, and then, the status being
    200, as a success that ended the instance's failure streak: never ejected."""
    good = await start_upstream("good")

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"p" * 100)
                await writer.drain()
                writer.transport.abort()
                return

    async with raw_upstream(cut) as bad:
        r = route(stable=[bad, good])
        r["outlier_detection"] = {"consecutive_failures": 3, "base_ejection": "30s"}
        px = await start_proxy([r])
        for _ in range(12):  # round robin: the bad instance's third cut ejects it
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):  # the cut ones
                await raw_exchange(px.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    counts = px.server.runtime.counts
    assert counts.upstream_errors == {("main", "stable", "reset"): 3}
    assert sum(counts.extra_counters.get("splitproxy_outlier_ejections", {}).values()) == 1
    assert good.hits == 9


async def test_the_proxy_out_of_sockets_is_not_the_upstreams_fault(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """QA: with the proxy at its file-descriptor limit, every connect failed EMFILE and was
    charged to the (healthy) upstream as a connect error: retried, and ejected for 30 s."""
    import resource

    a, b = await start_upstream("a"), await start_upstream("b")
    rb = route("b", prefix="/b", stable=[b])
    rb["outlier_detection"] = {"consecutive_failures": 1}
    px = await start_proxy([route("a", prefix="/", stable=a), rb])
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")  # accepted, and a's connection made
        assert (await read_response(reader)).status == 200
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 2, hard))
        spare: list[int] = []
        try:
            with contextlib.suppress(OSError):
                while True:  # take every descriptor left: none to spare
                    spare.append(os.dup(0))
            writer.write(b"GET /b/1 HTTP/1.1\r\nHost: x\r\n\r\n")  # b's first: a new connection
            answer = await read_response(reader)
        finally:
            for fd in spare:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert answer.status == 503
        assert b"proxy out of sockets" in answer.body
        writer.write(b"GET /b/2 HTTP/1.1\r\nHost: x\r\n\r\n")  # sockets again: b serves, never ejected
        assert (await read_response(reader)).status == 200
    finally:
        writer.close()
    counts = px.server.runtime.counts
    assert counts.upstream_errors == {}
    assert counts.extra_counters.get("splitproxy_outlier_ejections", {}) == {}
    assert counts.extra_counters.get("splitproxy_retries", {}) == {}


# ---- nothing kept per request ---------------------------------------------------------------


class _Recording(asyncio.Transport):
    """A transport that takes what is written and keeps nothing of it."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def abort(self) -> None:
        self.closing = True

    def get_write_buffer_size(self) -> int:
        return 0


UPSTREAM_ANSWER = b"HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize(
    ("route_yaml", "request_bytes", "answered_by_upstream"),
    [
        pytest.param("", b"GET /a HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n", True, id="forwarded"),
        pytest.param("", b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True, id="http-1.0-without-host"),
        pytest.param(
            "    sticky: {by: header, name: X-User}\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nX-User: 42\r\nX-Request-Id: r1\r\n\r\n",
            True,
            id="sticky",
        ),
        pytest.param(
            "", b"GET /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n", True, id="expect"
        ),
        pytest.param("", b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n", False, id="404-answered-here"),
    ],
)
def test_a_proxied_request_leaves_no_memory_behind(
    route_yaml: str, request_bytes: bytes, answered_by_upstream: bool
) -> None:
    """The mypyc build (``make compiled``, what Docker and bench run) of mypy < 2.2 leaked
    the left operand of every ``bytes + bytes`` (mypyc#1192): one or two objects a request
    through ``headers.request_head`` (~67 bytes each, GBs a day at production rates), which
    no test saw (the interpreted build has no such leak). Run on both builds: the count of
    memory blocks after N requests must not grow with N."""
    from proxy.config import parse_text
    from proxy.runtime import Runtime
    from proxy.upstream import UpstreamConnection

    loop = asyncio.new_event_loop()
    text = (
        'listen: "127.0.0.1:0"\naccess_log: "off"\nroutes:\n  - name: main\n    match: {path_prefix: /a}\n'
        '    backends:\n      stable: {upstreams: ["http://127.0.0.1:9"], weight: 90}\n'
        '      canary: {upstreams: ["http://127.0.0.1:9"], weight: 10}\n' + route_yaml
    )
    rt = Runtime(parse_text(text, "<test>"), loop)
    pool = next(iter(rt.pools.values()))
    upstream = UpstreamConnection(pool)
    upstream.connection_made(_Recording())
    pool.put(upstream)

    def one() -> None:
        client = ClientConnection(rt)
        client.connection_made(_Recording())
        client.data_received(request_bytes)
        if answered_by_upstream:
            upstream.data_received(UPSTREAM_ANSWER)
        client.connection_lost(None)

    try:
        for _ in range(500):  # warm: caches filled, free lists grown
            one()
        gc.collect()
        before = sys.getallocatedblocks()
        for _ in range(3000):
            one()
        gc.collect()
        grown = sys.getallocatedblocks() - before
    finally:
        rt.close()
        loop.close()
    assert grown < 300, f"{grown} memory blocks more after 3000 requests"


# ---- QA, fifth round: how connections end ----------------------------------------------------


async def _answer_until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream whose answers end at its close (no length): the client's connection ends too."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil-close")
        await writer.drain()
        writer.close()


async def test_a_head_pipelined_behind_the_last_answer_does_not_stop_the_time_outs(
    start_upstream: StartUpstream, start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """QA (fifth round): an answer that closes the connection, with the start of another head
    pipelined behind it. The close read the rest away (lingering), the head then timed out,
    and its 408 was written after the write side was shut: the exception ended the data
    plane's housekeeping task for good, so no response time-out, idle close or access-log
    write happened again in that process."""
    slow = await start_upstream("slow")
    async with raw_upstream(_answer_until_close) as url:
        px = await start_proxy(
            [route(name="ends", prefix="/ends", stable=url), route(name="slow", prefix="/", stable=slow)],
            timeouts={"idle": "300ms", "response": "500ms"},
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
        writer.write(
            b"GET /ends HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\nGET /partial HTTP/1.1\r\nHost: x\r\n"
        )
        async with asyncio.timeout(10):
            data = await reader.read(-1)  # the answer, then the end of the proxy's writes
        assert data.startswith(b"HTTP/1.1 200 OK")
        assert data.endswith(b"until-close")
        # Kept open (the proxy reads it away for 2 s) while the head's idle time-out passes:
        # the response time-out is still kept, a 504 and not a 200 a second later.
        async with asyncio.timeout(10):
            (resp,) = await raw_exchange(px.port, b"GET /slow?s=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        writer.close()
    assert resp.status == 504
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_a_request_pipelined_behind_a_closing_answer_is_never_sent(
    tmp_path: Path, start_proxy: StartProxy
) -> None:
    """QA (fifth round): after an answer that closes the connection, a request already read
    behind it was still sent upstream and run (a POST!), its answer lost and logged as the
    client's 499. Dropped unsent, as nginx does."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head.split(b" ", 2)[1])
                if head.startswith(b"GET /ends"):
                    writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil-close")
                    await writer.drain()
                    writer.close()
                    return
                if head.startswith(b"POST"):
                    await reader.readexactly(3)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    async with raw_upstream(handle) as url:
        px = await start_proxy([route(stable=url)])
        reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
        writer.write(
            b"GET /ends HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
            b"POST /must-not-run HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        )
        async with asyncio.timeout(10):
            data = await reader.read(-1)
        writer.close()
        assert data.endswith(b"until-close")
        async with asyncio.timeout(10):  # another connection's request, after the first is gone
            (after,) = await raw_exchange(px.port, b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.sleep(0)
    assert after.status == 200
    assert seen[0] == b"/ends"
    assert b"/must-not-run" not in seen
    assert [(line["path"], line["status"]) for line in px.access_lines()] == [("/ends", 200), ("/after", 200)]


async def test_a_pipelined_chunked_body_over_the_limit_is_a_413_not_cut(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """QA (fifth round): a chunked body that passed max_request_body while its request
    waited behind another was sent upstream cut at the limit and answered 200."""
    up = await start_upstream()
    px = await start_proxy([route(stable=up)], limits={"max_request_body": 10})
    first, second = await raw_exchange(
        px.port,
        b"GET /slow?s=0.2 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nabcde\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
        responses=2,
    )
    assert first.status == 200
    assert second.status == 413
    assert b"larger than 10 bytes" in second.body
    assert second.header("x-request-id")  # review: this 413 had none, nor its access-log line
    assert [info["path"] for info in up.seen] == []  # /slow is not echoed; /upload never arrived
    assert up.hits == 1


class _Pausing(_Recording):
    """A client transport whose buffer fills on a write that carries ``at`` (as uvloop's
    does: pause_writing is called from within write)."""

    def __init__(self, at: bytes) -> None:
        super().__init__()
        self.at = at
        self.protocol: ClientConnection | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.protocol is not None and self.at in bytes(data):
            self.protocol.pause_writing()


class _Reading(_Recording):
    """An upstream transport that says whether it reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


@pytest.mark.parametrize("paused", ["by-the-last-write", "before-the-answer"])
def test_an_upstream_connection_goes_back_to_its_pool_reading(paused: str) -> None:
    """QA (fifth round): the last write of an answer that filled the client's buffer paused
    the upstream connection's reading (pause_writing pauses the peer), and the connection
    was pooled paused: the next request on it, any client's or a mirror's, hung until its
    response time-out (504, the upstream charged a time-out). Also when the client's
    buffer was full already and the answer's last bytes came in the same read."""
    from proxy.config import parse_text
    from proxy.runtime import Runtime
    from proxy.upstream import UpstreamConnection

    loop = asyncio.new_event_loop()
    text = 'listen: "127.0.0.1:0"\naccess_log: "off"\nroutes:\n  - name: main\n    match: {path_prefix: /}\n'
    text += '    backends:\n      stable: {upstreams: ["http://127.0.0.1:9"], weight: 1}\n'
    rt = Runtime(parse_text(text, "<test>"), loop)
    try:
        pool = next(iter(rt.pools.values()))
        upstream = UpstreamConnection(pool)
        up_transport = _Reading()
        upstream.connection_made(up_transport)
        pool.put(upstream)
        client = ClientConnection(rt)
        transport = _Pausing(b"the-end" if paused == "by-the-last-write" else b"\x00never")
        transport.protocol = client
        client.connection_made(transport)
        client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert pool.idle == []  # taken by the request
        if paused == "before-the-answer":
            client.pause_writing()
            assert not up_transport.reading
        upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nthe-end")
        assert pool.idle == [upstream]
        assert up_transport.reading
        client.connection_lost(None)
    finally:
        rt.close()
        loop.close()


def test_a_closed_connection_whose_client_takes_nothing_is_cut_after_the_idle_time_out() -> None:
    """QA (fifth round): an answer that closes its connection, to a client that never reads
    it: uvloop's close() waits for the buffer to drain, and the idle check only closed it
    again, so the socket and megabytes of buffer were held for good despite timeouts.idle."""
    from proxy.config import parse_text
    from proxy.runtime import Runtime

    class Stuck(_Recording):
        aborted = False

        def get_write_buffer_size(self) -> int:
            return 3 << 20  # what the client never takes

        def abort(self) -> None:
            self.aborted = True
            self.closing = True

    loop = asyncio.new_event_loop()
    text = 'listen: "127.0.0.1:0"\naccess_log: "off"\ntimeouts: {idle: 1s}\nroutes:\n  - name: main\n'
    text += "    match: {path_prefix: /nowhere}\n"
    text += '    backends:\n      stable: {upstreams: ["http://127.0.0.1:9"], weight: 1}\n'
    rt = Runtime(parse_text(text, "<test>"), loop)
    try:
        clock = [1000.0]
        rt.now = lambda: clock[0]  # type: ignore[method-assign]
        rt.clock = clock[0]
        client = ClientConnection(rt)
        transport = Stuck()
        client.connection_made(transport)
        client.data_received(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")  # a 404 from the proxy, and the close
        assert client.draining
        transport.close()  # what the lingering read's end does (call_later on a loop not run here)
        assert client in rt.connections  # the buffer not drained: no connection_lost
        for step in range(1, 40):  # 4 s of ticks
            clock[0] = 1000.0 + step / 10
            rt.tick()
        assert transport.aborted
    finally:
        rt.close()
        loop.close()


async def test_round_robin_goes_on_where_it_was_across_weight_changes(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """QA (fifth round): every weight change (and health flip) started each backend's
    round-robin afresh at its first instance: ten changes between ten requests sent all
    ten to one instance."""
    a = await start_upstream("a")
    b = await start_upstream("b")
    c = await start_upstream("c")
    px = await start_proxy([route(stable=([a, b], 100), canary=(c, 0))])
    async with aiohttp.ClientSession() as s:
        for i in range(10):
            async with s.get(px.url + "/") as resp:
                assert resp.status == 200
            weights = {"weights": {"canary": i % 2 * 1e-6}}
            async with s.put(px.admin_url + "/api/v1/routes/main/weights", json=weights) as resp:
                assert resp.status == 200, await resp.text()
    assert (a.hits, b.hits) == (5, 5)


# ---- QA, fifth round: what the proxy's own answers say ---------------------------------------


async def test_an_http10_keep_alive_client_is_told_its_connection_stays_open(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """QA (fifth round): the proxy's own answers (404, 502, ...) to an HTTP/1.0 client that
    asked for keep-alive kept the connection open without saying so; a 1.0 client reading
    to the end waited for the idle time-out after every such answer."""
    up = await start_upstream()
    px = await start_proxy([route(prefix="/here", stable=up)])
    first, second = await raw_exchange(
        px.port,
        b"GET /elsewhere HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
        b"GET /here HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        responses=2,
    )
    assert (first.status, first.header("connection")) == (404, "keep-alive")
    assert (second.status, second.header("connection")) == (200, "keep-alive")
    (plain,) = await raw_exchange(px.port, b"GET /elsewhere HTTP/1.0\r\nHost: x\r\n\r\n")
    assert (plain.status, plain.header("connection")) == (404, "close")


async def test_every_answer_carries_a_date(start_proxy: StartProxy) -> None:
    """QA (fifth round): RFC 9110 §6.6.1. The proxy's own answers had no Date, and upstream
    answers without one were passed on without one (nginx and Envoy add it); an upstream's
    own Date is passed on as it came."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                date = b""
                for spelling in (b"Date", b"date", b"DATE"):  # review: `date:` got a second Date
                    if b"/dated-" + spelling in head:
                        date = spelling + b": Tue, 01 Dec 2026 00:00:00 GMT\r\n"
                writer.write(b"HTTP/1.1 200 OK\r\n" + date + b"Content-Length: 2\r\n\r\nok")

    async with raw_upstream(handle) as url:
        px = await start_proxy([route(prefix="/up", stable=url)])
        undated, *dated, local = await raw_exchange(
            px.port,
            b"GET /up HTTP/1.1\r\nHost: x\r\n\r\nGET /up/dated-Date HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /up/dated-date HTTP/1.1\r\nHost: x\r\n\r\nGET /up/dated-DATE HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /none HTTP/1.1\r\nHost: x\r\n\r\n",
            responses=5,
        )
    now = time.time()
    for resp in (undated, local):
        (date,) = resp.all("date")
        assert abs(email.utils.parsedate_to_datetime(date).timestamp() - now) < 5
    assert [resp.all("date") for resp in dated] == [["Tue, 01 Dec 2026 00:00:00 GMT"]] * 3
    assert local.status == 404


async def test_a_method_the_parser_does_not_know_is_501_not_a_bad_request(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """QA (fifth round): llhttp knows a fixed set of methods; any other (FOO, BREW) was "400
    bad request: Invalid method encountered". It is a method this proxy does not implement
    (RFC 9110 §15.6.2), and the README says so; PURGE, PATCH and QUERY are proxied."""
    up = await start_upstream()
    px = await start_proxy([route(stable=up)])
    for request in (b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\nBREW /pot HTTP/1.1\r\nHost: x\r\n\r\n"):
        (resp,) = await raw_exchange(px.port, request)
        assert resp.status == 501
        assert resp.body.startswith(b"request method not implemented")
    for method in (b"PURGE", b"PATCH", b"QUERY"):
        (ok,) = await raw_exchange(px.port, method + b" /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert ok.status == 200
        assert json.loads(ok.body)["method"] == method.decode()


async def test_a_malformed_answer_is_named_so_in_the_502(start_proxy: StartProxy) -> None:
    """QA (fifth round): an upstream that answered, but not in HTTP the proxy can pass on,
    got a 502 saying "upstream unavailable" (one would look for a network fault). Still
    counted as a reset: SPEC §6 names the reasons."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok")
            await writer.drain()

    async with raw_upstream(handle) as url:
        px = await start_proxy([route(stable=url)])
        (resp,) = await raw_exchange(px.port, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert (resp.status, resp.body) == (502, b"upstream sent a malformed response: route main, backend stable\n")
    assert px.server.runtime.counts.upstream_errors == {("main", "stable", "reset"): 1}


def test_an_ipv6_upstream_is_named_with_brackets() -> None:
    """QA (fifth round): ``::1:8080`` in logs and, for an HTTP/1.0 request without Host, in
    the Host sent upstream (RFC 3986 §3.2.2: ``[::1]:8080``)."""
    from proxy.upstream import UpstreamPool

    assert (UpstreamPool("::1", 8080).address, UpstreamPool("::1", 8080).hostport) == ("[::1]:8080", b"[::1]:8080")
    assert UpstreamPool("127.0.0.1", 80).address == "127.0.0.1:80"


def test_only_short_hosts_are_remembered() -> None:
    """QA (sixth round): every valid Host was remembered (up to 4,096, to skip validating it
    again), however long: 4,096 Host values of 60 KB held 240 MiB. Only one as long as a
    DNS name with a port can be is remembered; a longer one is checked each time."""
    from proxy.config import parse_text
    from proxy.runtime import MAX_HOST_REMEMBERED, Runtime

    loop = asyncio.new_event_loop()
    text = 'listen: "127.0.0.1:0"\naccess_log: "off"\nroutes:\n  - name: main\n    match: {path_prefix: /}\n'
    text += '    backends:\n      stable: {upstreams: ["http://127.0.0.1:9"], weight: 1}\n'
    rt = Runtime(parse_text(text, "<test>"), loop)
    try:
        rt.saw_host(b"shop.example.com:8080")
        rt.saw_host(b"a" * (MAX_HOST_REMEMBERED + 1))
        assert rt.hosts_seen == {b"shop.example.com:8080"}
    finally:
        loop.close()
