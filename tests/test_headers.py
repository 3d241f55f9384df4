"""Tier 1: header rewriting and the heads the proxy writes itself (proxy/headers.py)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.headers import (
    CONTINUE,
    HOP_BY_HOP,
    LAST_CHUNK,
    REQUEST_OWNED,
    RESPONSE_OWNED,
    chunk,
    connection_options,
    cookie_attributes,
    forwarded_for,
    local_response,
    request_head,
    set_cookie,
    status_line,
    without_options,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(b"close", set(), id="close"),
        pytest.param(b"Keep-Alive", set(), id="keep-alive-any-case"),
        pytest.param(b"Upgrade", set(), id="upgrade"),
        pytest.param(b"", set(), id="empty"),
        pytest.param(b" , ,", set(), id="only-commas"),
        pytest.param(b"keep-alive, X-Foo", {b"x-foo"}, id="framing-plus-option"),
        pytest.param(b"Upgrade, HTTP2-Settings", {b"http2-settings"}, id="h2c-settings"),
        pytest.param(b"TE,x-a ,  X-A,close", {b"te", b"x-a"}, id="case-and-spaces-folded"),
        pytest.param(b"CLOSE, Foo", {b"foo"}, id="upper-case-close"),
    ],
)
def test_connection_options(value: bytes, expected: set[bytes]) -> None:
    assert connection_options(value) == frozenset(expected)


def _parts(*fields: tuple[bytes, bytes]) -> list[bytes]:
    return [part for name, value in fields for part in (name, b": ", value, b"\r\n")]


def test_without_options_drops_named_fields_and_keeps_order() -> None:
    parts = _parts((b"Host", b"a"), (b"X-Foo", b"1"), (b"Accept", b"*/*"), (b"x-foo", b"2"), (b"X-Bar", b"3"))
    assert without_options(parts, frozenset({b"x-foo", b"x-missing"})) == _parts(
        (b"Host", b"a"), (b"Accept", b"*/*"), (b"X-Bar", b"3")
    )
    assert b"".join(without_options(parts, frozenset({b"x-foo"}))) == b"Host: a\r\nAccept: */*\r\nX-Bar: 3\r\n"
    assert without_options(parts, frozenset()) == parts


@pytest.mark.parametrize(
    ("prior", "expected"),
    [
        pytest.param(None, b"10.0.0.9", id="first-hop"),
        pytest.param(b"", b"10.0.0.9", id="empty-prior"),
        pytest.param(b"203.0.113.7", b"203.0.113.7, 10.0.0.9", id="appended"),
        pytest.param(b"1.1.1.1, 2.2.2.2", b"1.1.1.1, 2.2.2.2, 10.0.0.9", id="appended-to-chain"),
    ],
)
def test_forwarded_for(prior: bytes | None, expected: bytes) -> None:
    assert forwarded_for(prior, b"10.0.0.9") == expected


def test_owned_header_sets() -> None:
    # RFC 9110 §7.6.1 plus Proxy-Connection; framing and X-Forwarded-* are ours to write.
    assert {b"connection", b"keep-alive", b"te", b"transfer-encoding", b"upgrade"} <= HOP_BY_HOP
    assert b"proxy-connection" in HOP_BY_HOP
    assert {b"content-length", b"expect", b"x-forwarded-for", b"x-request-id"} <= REQUEST_OWNED
    assert b"host" not in REQUEST_OWNED  # SPEC §4: the client's Host is forwarded unchanged
    assert b"content-length" in RESPONSE_OWNED
    assert b"x-request-id" not in RESPONSE_OWNED


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param(
            {
                "method": b"GET",
                "url": b"/a?b=1",
                "lines": [b"Host: shop.example.com\r\n", b"Accept: */*\r\n"],
                "host": b"shop.example.com",
                "prior_xff": None,
                "framing": b"",
            },
            b"GET /a?b=1 HTTP/1.1\r\n"
            b"Host: shop.example.com\r\n"
            b"Accept: */*\r\n"
            b"X-Forwarded-Host: shop.example.com\r\n"
            b"X-Forwarded-For: 10.0.0.9\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"X-Request-Id: rid-1\r\n"
            b"\r\n",
            id="get-with-host",
        ),
        pytest.param(
            {
                "method": b"GET",
                "url": b"/",
                "lines": [b"Host: 10.0.0.1:8000\r\n"],
                "host": b"",
                "prior_xff": b"203.0.113.7",
                "framing": b"",
            },
            b"GET / HTTP/1.1\r\n"
            b"Host: 10.0.0.1:8000\r\n"
            b"X-Forwarded-For: 203.0.113.7, 10.0.0.9\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"X-Request-Id: rid-1\r\n"
            b"\r\n",
            id="http10-without-host-no-x-forwarded-host",
        ),
        pytest.param(
            {
                "method": b"POST",
                "url": b"/orders",
                "lines": [b"Host: h\r\n"],
                "host": b"h",
                "prior_xff": None,
                "framing": b"Content-Length: 5\r\n",
            },
            b"POST /orders HTTP/1.1\r\n"
            b"Host: h\r\n"
            b"X-Forwarded-Host: h\r\n"
            b"X-Forwarded-For: 10.0.0.9\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"X-Request-Id: rid-1\r\n"
            b"Content-Length: 5\r\n"
            b"\r\n",
            id="content-length-framing",
        ),
        pytest.param(
            {
                "method": b"PUT",
                "url": b"/up",
                "lines": [b"Host: h\r\n"],
                "host": b"h",
                "prior_xff": None,
                "framing": b"Transfer-Encoding: chunked\r\n",
                "extra": b"X-Shadow-Request: 1\r\n",
            },
            b"PUT /up HTTP/1.1\r\n"
            b"Host: h\r\n"
            b"X-Forwarded-Host: h\r\n"
            b"X-Forwarded-For: 10.0.0.9\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"X-Request-Id: rid-1\r\n"
            b"Transfer-Encoding: chunked\r\n"
            b"X-Shadow-Request: 1\r\n"
            b"\r\n",
            id="chunked-framing-and-extra",
        ),
        pytest.param(
            {
                "method": b"GET",
                "url": b"/ws",
                "lines": [b"Host: h\r\n", b"Sec-WebSocket-Key: abc==\r\n"],
                "host": b"h",
                "prior_xff": None,
                "framing": b"",
                "upgrade": b"websocket",
            },
            b"GET /ws HTTP/1.1\r\n"
            b"Host: h\r\n"
            b"Sec-WebSocket-Key: abc==\r\n"
            b"X-Forwarded-Host: h\r\n"
            b"X-Forwarded-For: 10.0.0.9\r\n"
            b"X-Forwarded-Proto: http\r\n"
            b"X-Request-Id: rid-1\r\n"
            b"Connection: upgrade\r\n"
            b"Upgrade: websocket\r\n"
            b"\r\n",
            id="websocket-upgrade",
        ),
    ],
)
def test_request_head_exact_bytes(kwargs: dict[str, Any], expected: bytes) -> None:
    assert request_head(client_ip=b"10.0.0.9", request_id=b"rid-1", **kwargs) == expected


def test_request_head_is_always_http11_and_ends_the_head_once() -> None:
    head = request_head(
        b"GET",
        b"/",
        [],
        host=b"h",
        client_ip=b"::1",
        prior_xff=None,
        request_id=b"r",
        framing=b"",
    )
    assert head.startswith(b"GET / HTTP/1.1\r\n")
    assert head.count(b"\r\n\r\n") == 1
    assert head.endswith(b"\r\n\r\n")
    assert b"X-Forwarded-For: ::1\r\n" in head


@pytest.mark.parametrize(
    ("status", "text", "options", "expected"),
    [
        pytest.param(
            404,
            "no route for x/y",
            {"keep_alive": True},
            b"HTTP/1.1 404 Not Found\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 17\r\n"
            b"\r\n"
            b"no route for x/y\n",
            id="404-keep-alive",
        ),
        pytest.param(
            502,
            "upstream connect failed: shop/canary",
            {"keep_alive": False},
            b"HTTP/1.1 502 Bad Gateway\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 37\r\n"
            b"Connection: close\r\n"
            b"\r\n"
            b"upstream connect failed: shop/canary\n",
            id="502-close",
        ),
        pytest.param(
            504,
            "timeout",
            {"keep_alive": True, "request_id": b"abc123"},
            b"HTTP/1.1 504 Gateway Timeout\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 8\r\n"
            b"X-Request-Id: abc123\r\n"
            b"\r\n"
            b"timeout\n",
            id="504-with-request-id",
        ),
        pytest.param(
            404,
            "no route",
            {"keep_alive": True, "head_only": True},
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 9\r\n\r\n",
            id="head-keeps-length-drops-body",
        ),
        pytest.param(
            400,
            "bad request: x",
            {"keep_alive": False, "head_only": True, "request_id": b"r"},
            b"HTTP/1.1 400 Bad Request\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 15\r\n"
            b"X-Request-Id: r\r\n"
            b"Connection: close\r\n"
            b"\r\n",
            id="head-close-with-request-id",
        ),
        pytest.param(
            404,
            "no route for café",
            {"keep_alive": True},
            b"HTTP/1.1 404 Not Found\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 19\r\n"
            b"\r\n" + "no route for café\n".encode(),
            id="length-counts-utf8-bytes",
        ),
    ],
)
def test_local_response_exact_bytes(status: int, text: str, options: dict[str, Any], expected: bytes) -> None:
    assert local_response(status, text, **options) == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(200, b"HTTP/1.1 200 OK\r\n", id="200"),
        pytest.param(413, b"HTTP/1.1 413 Request Entity Too Large\r\n", id="413"),
        pytest.param(599, b"HTTP/1.1 599 Unknown\r\n", id="unknown-code"),
    ],
)
def test_status_line(status: int, expected: bytes) -> None:
    assert status_line(status) == expected


def test_set_cookie_exact_bytes() -> None:
    default = cookie_attributes(max_age=86400, path="/", domain=None, secure=False, http_only=True, same_site="Lax")
    assert (
        set_cookie(b"sp_shop", b"0123456789abcdef0123456789abcdef", default)
        == b"Set-Cookie: sp_shop=0123456789abcdef0123456789abcdef; Max-Age=86400; Path=/;"
        b" HttpOnly; SameSite=Lax\r\n"
    )
    every = cookie_attributes(
        max_age=0, path="/shop", domain="example.com", secure=True, http_only=False, same_site="None"
    )  # a session cookie: no Max-Age
    assert (
        set_cookie(b"s", b"v", every) == b"Set-Cookie: s=v; Path=/shop; Domain=example.com; Secure; SameSite=None\r\n"
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"hello", b"5\r\nhello\r\n", id="short"),
        pytest.param(b"x" * 10, b"a\r\n" + b"x" * 10 + b"\r\n", id="lower-case-hex"),
        pytest.param(b"y" * 4096, b"1000\r\n" + b"y" * 4096 + b"\r\n", id="4KiB"),
        pytest.param(b"\r\n0\r\n\r\n", b"7\r\n\r\n0\r\n\r\n\r\n", id="data-that-looks-like-framing"),
    ],
)
def test_chunk(data: bytes, expected: bytes) -> None:
    assert chunk(data) == expected


def test_fixed_framing_lines() -> None:
    assert LAST_CHUNK == b"0\r\n\r\n"
    assert CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"
