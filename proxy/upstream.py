"""The upstream side of the data plane: pooled keep-alive connections, parsed with httptools.

One ``UpstreamPool`` per upstream instance (host, port) holds idle connections. An
``UpstreamConnection`` is bound to one exchange at a time; it parses the response with
llhttp and hands each event to the client connection that owns the exchange
(``forwarder.ClientConnection``), which writes it on to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Final, Protocol

import httptools

from .errors import UpstreamError, UpstreamMalformed, UpstreamReset, UpstreamTimeout, connect_failed
from .headers import MAX_HEAD, RESPONSE_OWNED

if TYPE_CHECKING:
    from .runtime import Runtime


# What this module uses of the side it serves: a forwarder.ClientConnection with its
# Exchange, or a shadow.ShadowLeg standing in for both. Protocols, not those classes: in
# the compiled build (setup.py) a class annotation is checked at run time, and a ShadowLeg
# would be refused where a ClientConnection is named. Keep them Protocols.


class Exchangeish(Protocol):
    """What this module reads of its exchange."""

    @property
    def method(self) -> bytes: ...
    @property
    def resp_started(self) -> bool: ...


class Client(Protocol):
    """What this module calls on its client."""

    last_io: float
    upstream_full: bool

    @property
    def rt(self) -> Runtime: ...
    @property
    def transport(self) -> Any: ...
    def flush(self) -> None: ...
    def write(self, data: bytes) -> None: ...
    def update_reading(self) -> None: ...
    def response_head(
        self, ex: Any, conn: UpstreamConnection, status: int, lines: list[bytes], hdict: dict[bytes, bytes]
    ) -> None: ...
    def response_body(self, ex: Any, body: bytes) -> None: ...
    def response_complete(self, ex: Any, conn: UpstreamConnection, reusable: bool) -> None: ...
    def upstream_failed(self, ex: Any, err: UpstreamError, *, retryable: bool, sent: bool = True) -> None: ...


log = logging.getLogger("splitproxy")

# Response headers in their usual spelling that are always passed on unchanged: the
# lower-casing and lookup the others need is skipped for them.
_PASSED_AS_IS = frozenset(
    {
        b"Server",
        b"Date",
        b"Content-Type",
        b"Cache-Control",
        b"ETag",
        b"Last-Modified",
        b"Expires",
        b"Vary",
        b"Set-Cookie",
        b"Location",
        b"Accept-Ranges",
        b"Content-Encoding",
        b"Content-Language",
        b"Access-Control-Allow-Origin",
        b"Strict-Transport-Security",
        b"X-Content-Type-Options",
        b"X-Frame-Options",
        b"X-Request-Id",
        b"date",
        b"server",
        b"content-type",
        b"cache-control",
        b"etag",
        b"vary",
        b"set-cookie",
    }
)

_DATE: Final = frozenset({b"Date", b"date"})  # its spellings in _PASSED_AS_IS

# Idle keep-alive connections kept per upstream instance; more are closed on release.
MAX_IDLE_PER_UPSTREAM = 256


# Owned response headers whose field lines form one list: every line counts (a second
# `Connection` line naming a header to drop was ignored, the header passed on).
_LISTS = frozenset({b"connection", b"transfer-encoding"})


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "client",
        "closed",
        "dated",
        "ended",
        "ex",
        "extra",
        "finished",
        "got_bytes",
        "hdict",
        "head_bytes",
        "interim",
        "keep_alive",
        "lines",
        "parser",
        "pool",
        "reset_parser",
        "reused",
        "transport",
        "tunnel",
        "until_close",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.parser: Any = httptools.HttpResponseParser(self)  # None once lost (connection_lost)
        self.client: Client | None = None
        self.ex: Exchangeish | None = None
        self.lines: list[bytes] = []
        self.hdict: dict[bytes, bytes] = {}
        self.dated = False  # the response being read has a Date (the forwarder adds one if not)
        self.closed = False
        self.reused = False
        self.got_bytes = False
        self.interim = False
        self.keep_alive = True
        self.finished = False  # the bound exchange's response is complete
        # ... and is to be handed on once the read it ended in is parsed (data_received),
        # when it is known whether anything followed it in that read (``extra``; also set
        # for a HEAD answer that announced a body): then the connection is not reused.
        self.ended = False
        self.extra = False
        self.reset_parser = False
        self.tunnel = False
        self.until_close = False  # the response in hand has no length: its body ends at close
        self.head_bytes = 0  # bytes read of the response head in progress; -1 past it

    # -- binding ----------------------------------------------------------------------------

    def bind(self, client: Client, ex: Exchangeish) -> None:
        # ClientConnection._attach does the same inline (once per request).
        self.client = client
        self.ex = ex
        self.got_bytes = False
        self.finished = False
        self.head_bytes = 0

    def release(self, reusable: bool) -> None:
        """Give the connection back to its pool, or close it when it cannot be reused."""
        self.client = None
        self.ex = None
        if reusable and not self.closed and self.keep_alive:
            pool = self.pool
            if len(pool.idle) < pool.max_idle:  # UpstreamPool.put, inlined: once per request
                pool.idle.append(self)
                return
        self.close()

    def close(self) -> None:
        self.client = None
        self.ex = None
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        self.client = None
        self.ex = None
        if not self.closed:
            self.closed = True
            self.transport.abort()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if self.tunnel:
            if client is not None:
                client.transport.write(data)
            return
        if client is None:
            # Bytes on an idle connection: the upstream is not speaking HTTP we can reuse.
            self.close()
            return
        self.got_bytes = True
        client.last_io = client.rt.clock
        ex = self.ex
        if self.head_bytes >= 0 and not self.finished:
            # Counted before the parse: a head that ends in this read is measured by
            # on_headers_complete, which would otherwise not know it passed the limit.
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0] :]
            if self.client is not None and rest:
                self.client.write(rest)
        except httptools.HttpParserCallbackError:
            # One of our callbacks raised: a bug of ours, not the upstream's fault. Logged
            # with its traceback; the exchange fails as cleanly as it can.
            log.exception("internal error while handling an upstream response")
            self._failed(UpstreamReset("internal error"))
        except httptools.HttpParserError:
            if self.ended:  # garbage after a whole response: that response stands
                self.extra = True
            else:
                self._failed(UpstreamMalformed("upstream sent a malformed response"))
        if self.head_bytes > MAX_HEAD and not self.finished:  # and the head still not whole
            self._failed(UpstreamMalformed(f"upstream response head larger than {MAX_HEAD // 1024} KiB"))
        if self.ended and ex is not None:
            # Handed on only now: released from inside the parse, the connection could
            # be taken (by the client's next pipelined request) while the rest of this
            # read was still to be parsed, and that rest read as the next response.
            self.ended = False
            client.response_complete(ex, self, reusable=not self.extra)
        client.flush()
        if self.reset_parser:
            self.reset_parser = False
            self.parser = httptools.HttpResponseParser(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
        self.parser = None  # a reference cycle through our bound methods (ClientConnection)
        client, ex = self.client, self.ex
        if client is None or ex is None:
            return
        if self.tunnel:
            client.transport.close()
            return
        if not self.finished:
            if ex.resp_started and self.until_close:
                # RFC 9112 §6.3 (8): the body ends when the server closes the connection
                # (then re-framed as chunks for an HTTP/1.1 client, whose last chunk this sends).
                self.finished = True
                client.response_complete(ex, self, reusable=False)
            else:
                err = UpstreamReset("upstream closed the connection")
                client.upstream_failed(ex, err, retryable=self.reused and not self.got_bytes)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.upstream_full = True
            self.client.update_reading()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.upstream_full = False
            self.client.update_reading()

    # -- httptools callbacks ----------------------------------------------------------------

    # Every httptools callback is a Python call, so the per-message state is reset in
    # on_headers_complete, after it has been handed on. on_message_begin is there only to
    # tell that a message began after the bound exchange's response (one call a response).

    def on_message_begin(self) -> None:
        if self.finished:
            # A message after the bound exchange's whole response, in the same read: extra
            # data, never a response (RFC 9112 §6.3), and the connection is not reused.
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_bytes < 0:
            # A trailer field (after a chunked body): dropped, as nginx drops them. Kept,
            # it became a header of the next response on this connection.
            return
        # Header parts, four per field (name, ": ", value, CRLF): list.extend of a tuple
        # costs half of formatting a line with %, and b"".join makes the head once.
        if name in _PASSED_AS_IS:  # the common response headers: nothing to decide
            self.lines += (name, b": ", value, b"\r\n")
            # The forwarder adds a Date to an answer without one. The length first: a set
            # lookup per header cost ~110 instructions a header (callgrind).
            if len(name) == 4 and name in _DATE:
                self.dated = True
            return
        lname = name.lower()
        if lname in RESPONSE_OWNED:
            hdict = self.hdict
            if lname in _LISTS and lname in hdict:  # RFC 9110 §5.3: one list, every line of it
                hdict[lname] += b", " + value
            else:
                hdict[lname] = value
        else:
            self.lines += (name, b": ", value, b"\r\n")
            if lname == b"date":
                self.dated = True

    def on_headers_complete(self) -> None:
        if self.finished:
            self.dated = False
            return  # extra data after the response (on_message_begin): not passed on
        lines, hdict = self.lines, self.hdict
        self.lines = []
        self.hdict = {}
        status = self.parser.get_status_code()
        if self.head_bytes > MAX_HEAD and _head_size(lines, hdict) > MAX_HEAD:
            # The head ended in the read that took the count past the limit (that read may
            # hold body bytes too): measured by its fields.
            self._failed(UpstreamMalformed(f"upstream response head larger than {MAX_HEAD // 1024} KiB"))
            return
        if not 100 <= status <= 599:
            # RFC 9110 §15: three digits from 100. Below, the head was dropped as interim
            # and its body passed on raw: a response of the upstream's making to the client.
            self._failed(UpstreamMalformed(f"upstream sent status {status}"))
            return
        te = hdict.get(b"transfer-encoding")
        if te is not None and te.strip().lower() != b"chunked":
            # A coding the proxy would drop while re-framing (gzip, chunked): refused, as nginx does.
            self._failed(UpstreamMalformed(f"upstream sent transfer coding {te.decode('latin-1')!r}"))
            return
        if status < 200 and status != 101:
            # An interim response (103 Early Hints, a stray 100): not passed on.
            self.interim = True
            self.head_bytes = 0  # the final response's head follows
            self.dated = False
            return
        self.head_bytes = -1
        # A connection that switched protocols is never pooled again, whoever took the 101.
        self.keep_alive = status != 101 and self.parser.should_keep_alive()
        # RFC 9112 §6.3: neither Content-Length nor a final chunked coding: read until close.
        self.until_close = b"content-length" not in hdict and te is None
        client, ex = self.client, self.ex
        if client is None or ex is None:
            self.dated = False
            return
        client.response_head(ex, self, status, lines, hdict)
        self.dated = False
        if ex.method == b"HEAD" and status != 101 and not self.finished:
            # llhttp cannot be told that a response to HEAD has no body (RFC 9110 §9.3.2),
            # so the message ends here and the parser is replaced after this feed. A server
            # that sends the body a GET would have had anyway would have those bytes read
            # as the next request's response: reused only when the head announces no body,
            # and nothing followed it in this read (handed on by data_received).
            self.reset_parser = True
            self.finished = self.ended = True
            cl = hdict.get(b"content-length")
            if b"transfer-encoding" in hdict or (cl is not None and cl.strip(b" \t0") != b""):
                self.extra = True

    def on_body(self, body: bytes) -> None:
        if self.client is not None and self.ex is not None and not self.finished:
            self.client.response_body(self.ex, body)
        elif self.finished:
            self.extra = True  # bytes after the response (as llhttp reads them after a HEAD's)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.finished or self.tunnel or self.client is None or self.ex is None:
            return
        self.finished = self.ended = True  # handed on by data_received

    # -- failures ---------------------------------------------------------------------------

    def timed_out(self) -> None:
        if self.client is not None and self.ex is not None and not self.finished:
            # Its answer begun, the upstream stalled mid-body (Runtime.tick): said as such.
            what = "stalled mid-answer" if self.got_bytes else "did not answer in time"
            self._failed(UpstreamTimeout(f"upstream {what}"))

    def _failed(self, err: UpstreamError) -> None:
        client, ex = self.client, self.ex
        self.abort()
        if client is not None and ex is not None and not self.finished:
            self.finished = True
            client.upstream_failed(ex, err, retryable=False)


def _head_size(lines: list[bytes], hdict: dict[bytes, bytes]) -> int:
    """About the bytes of a response head: its header lines (the status line aside)."""
    return sum(map(len, lines)) + sum(len(k) + len(v) + 4 for k, v in hdict.items())


class UpstreamPool:
    """Idle keep-alive connections to one upstream instance."""

    __slots__ = ("address", "host", "hostport", "idle", "max_idle", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        # [v6]:port, as a Host header and a log line name it (RFC 3986 §3.2.2)
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.hostport = self.address.encode()
        self.idle: list[UpstreamConnection] = []
        self.max_idle = MAX_IDLE_PER_UPSTREAM  # 0 once closed: a connection given back is closed

    def take_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    def put(self, conn: UpstreamConnection) -> None:
        if len(self.idle) < self.max_idle:
            self.idle.append(conn)
        else:
            conn.close()

    def discard(self, conn: UpstreamConnection) -> None:
        with contextlib.suppress(ValueError):  # not idle: it was in use
            self.idle.remove(conn)

    async def connect(self, timeout: float) -> UpstreamConnection:  # noqa: ASYNC109  # config value
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port)
        except TimeoutError:
            raise UpstreamTimeout(f"connect to {self.address} timed out") from None
        except OSError as exc:
            raise connect_failed(self.address, exc) from None
        if log.isEnabledFor(logging.DEBUG):  # `-v`: once per new connection, not per request
            log.debug("upstream %s: connected (%d idle in the pool)", self.address, len(self.idle))
        return conn

    def close(self) -> None:
        """Close the idle connections, and each one in use when its request ends (a reload
        dropped this upstream: they were kept open, and their file descriptors, for good)."""
        self.max_idle = 0
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()
