"""The client side of the data plane: one ``ClientConnection`` protocol per client socket.

This is the hot path, written as plain ``asyncio.Protocol`` callbacks with httptools
(llhttp) parsing: no task, no request object from a framework, headers kept as raw byte
lines (see PERF-NOTES.md for why). A request moves through:

1. httptools callbacks fill an ``Exchange`` (url, header lines, a lower-case lookup);
2. ``_start`` asks ``routing`` for the route and backend (pure), builds the upstream head
   (``headers``, pure) and takes an idle pooled connection — or, only when none is idle,
   spawns a task to connect;
3. body bytes stream to the upstream as they arrive; while there is no upstream yet they
   are buffered up to ``PENDING_MAX`` and reading from the client pauses;
4. ``upstream.UpstreamConnection`` parses the response and calls ``response_head`` /
   ``response_body`` / ``response_complete`` here, which write to the client;
5. ``_finish`` writes the access-log line, releases the upstream connection and starts
   the next pipelined request, if any.

Back-pressure both ways uses the transports' ``pause_writing``/``resume_writing``: a slow
client pauses reading from the upstream, a slow upstream pauses reading from the client,
so a body of any size passes with bounded memory.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from typing import TYPE_CHECKING, Any, Final

import httptools

from . import headers as h
from .errors import UpstreamError, UpstreamMalformed
from .headers import MAX_HEAD

if TYPE_CHECKING:
    from .routing import BackendPlan, Decision, RoutePlan
    from .runtime import Runtime
    from .shadow import Mirror
    from .upstream import UpstreamConnection, UpstreamPool

log = logging.getLogger("splitproxy")

# Request body bytes held while no upstream connection is ready; past this the proxy
# stops reading from the client until the upstream takes them.
PENDING_MAX: Final = 256 * 1024

# Request headers that may come several times and combine into one list.
# RFC 9110 §5.3: several field lines combine into one list (cookie: with "; "). Connection
# and Transfer-Encoding too: only the last line counted, a second `Connection` line naming
# a header let that header through, and a `gzip` line before a `chunked` one was dropped.
_COMBINED = frozenset({b"cookie", b"x-forwarded-for", b"connection", b"transfer-encoding"})
_HOST = frozenset({b"host"})

# Retries of a request whose upstream failed before answering (see _may_retry).
MAX_RETRIES: Final = 3
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# How long a connection closed with an unread request body keeps reading it away.
LINGER_SECONDS: Final = 2.0
_METHOD: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a token (RFC 9110 §5.6.2)
UNKNOWN_METHOD: Final = (
    "request method not implemented: the HTTP parser (llhttp) knows the standard methods and "
    "the WebDAV, PATCH, PURGE, QUERY and a few more (README, Known limits)"
)

_STATUS_LINES = h.STATUS_LINES


HEAD_TOO_LARGE: Final = f"request head larger than {MAX_HEAD // 1024} KiB"


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request that is refused (data_received
    answers it): raising is the one way to stop httptools from a callback."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


def _head_size(ex: Exchange) -> int:
    """About the size of a parsed request head (target, fields), for a head that came in
    several reads (data_received checks one that comes in one)."""
    owned = sum(len(k) + len(v) + 4 for k, v in ex.hdict.items() if k in h.REQUEST_OWNED)
    return len(ex.url) + sum(map(len, ex.lines)) + owned


def _rejection(status: int, why: str) -> str:
    return f"bad request: {why}" if status == 400 else why


class Exchange:
    """One request and its response, as the forwarder tracks them."""

    RAW: Final = 0  # response body passed as it comes (Content-Length framing)
    CHUNKED: Final = 1  # re-framed as chunks for an HTTP/1.1 client
    UNTIL_CLOSE: Final = 2  # no length, HTTP/1.0 client: the body ends at close
    NONE: Final = 3  # HEAD, 204, 304: no body

    __slots__ = (
        "backend",
        "bytes_in",
        "bytes_out",
        "complete",
        "conn",
        "content_length",
        "deadline",
        "decision",
        "early_body",
        "hdict",
        "head",
        "head_read",
        "held",
        "held_body",
        "host_filled",
        "http11",
        "keep_alive",
        "lines",
        "method",
        "mirror",
        "pending",
        "pending_size",
        "plan",
        "pool",
        "req_chunked",
        "req_complete",
        "request_id",
        "resp_mode",
        "resp_started",
        "retries",
        "status",
        "t0",
        "upgrade",
        "upstream_status",
        "url",
    )

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.url = b""
        self.lines: list[bytes] = []
        self.hdict: dict[bytes, bytes] = {}
        self.method = b"GET"
        self.http11 = True
        self.keep_alive = True
        self.upgrade = False
        self.content_length: int | None = None
        self.req_chunked = False
        self.req_complete = False
        self.pending: list[bytes] | None = []
        self.pending_size = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.head = b""
        # The Host the proxy filled in for an HTTP/1.0 request without one: its upstream's
        # host:port, changed in the head when another upstream takes the request.
        self.host_filled = b""
        # Bytes of the head read in pieces after the one it began in (the first is checked
        # whole in data_received); -1 once the head is parsed.
        self.head_read = 0
        self.plan: RoutePlan | None = None
        self.backend: BackendPlan | None = None
        self.decision: Decision | None = None
        self.pool: UpstreamPool | None = None
        self.conn: UpstreamConnection | None = None
        self.deadline = 0.0  # when the upstream must have answered (checked by Runtime.tick)
        self.request_id = b""
        self.status = 0
        self.resp_started = False
        self.resp_mode = Exchange.RAW
        self.retries = 0
        self.complete = False  # the whole response reached the client
        self.upstream_status = 0  # the status the upstream answered (0: none, or our own)
        self.mirror: Mirror | None = None  # set when shadow traffic samples this request
        # The body of a pipelined request read while it waited its turn, before _start
        # could give it a mirror: handed to the mirror then.
        self.early_body: list[bytes] | None = None
        # After an Upgrade request: its body's bytes still to pass (by Content-Length), and
        # the bytes after it, held until the upstream answers 101 (_start_tunnel).
        self.held_body = 0
        self.held: list[bytes] | None = None


def unsent_bytes(transport: asyncio.Transport) -> int:
    """Bytes written to ``transport`` that its peer has not taken yet: in the transport's
    buffer and in the kernel's send queue (Linux's SIOCOUTQ); -1 where it cannot tell."""
    # Imported here, not at the top: asked only of a stalled-looking connection, and three
    # more names in this module's globals slowed every lookup of the others a request makes
    # (callgrind: ~600 instructions a request in dict lookups).
    import fcntl
    import struct
    import termios

    sock = transport.get_extra_info("socket")
    if sock is None:
        return -1
    try:
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return -1
    return int(queued) + transport.get_write_buffer_size()


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "active",
        "closed",
        "closing",
        "draining",
        "head_began",
        "ip",
        "last_io",
        "out",
        "parser",
        "parsing",
        "queue",
        "read_paused",
        "rejected",
        "rt",
        "transport",
        "tunnel",
        "unsent",
        "upstream_full",
        "write_paused",
    )

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        # Any: set to None when the connection is lost (see connection_lost)
        self.parser: Any = httptools.HttpRequestParser(self)
        self.ip = b""
        self.parsing: Exchange | None = None  # the request httptools is filling in
        self.active: Exchange | None = None  # the request whose response is in progress
        self.queue: deque[Exchange] = deque()  # pipelined requests waiting their turn
        self.out: list[bytes] = []  # response bytes not yet written (see flush)
        self.read_paused = False
        self.write_paused = False
        self.upstream_full = False
        self.closing = False  # close after the active response (shutdown, bad input)
        self.closed = False
        self.draining = False  # answered and closing: unread request bytes are discarded
        self.rejected: tuple[Exchange, int, str] | None = None  # a broken pipelined request
        self.tunnel: UpstreamConnection | None = None  # after a WebSocket upgrade
        self.last_io = rt.clock
        # When the first byte of a request head still coming arrived (coarse clock), 0 when
        # none is coming: a method trickled a byte at a time reset the idle time-out with
        # each one, before any Exchange (on_url) timed the head (Runtime.tick).
        self.head_began = 0.0
        self.unsent = -1  # bytes not yet taken by the client when last looked (sending())

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.ip = (str(peer[0]) if peer else "unix").encode()
        self.rt.connections.add(self)

    def data_received(self, data: bytes) -> None:
        last_io = self.last_io
        self.last_io = self.rt.clock
        if self.tunnel is not None:
            self.tunnel.transport.write(data)
            return
        if self.draining or self.rejected is not None:  # answered, or to be: nothing more is read
            return
        ex = self.parsing
        if ex is None:
            if not self.head_began:
                if data[0] != 13 and data[0] != 10:
                    self.head_began = self.last_io
                elif not data.strip(b"\r\n"):
                    # Empty lines alone, which a client may send between requests (RFC 9112
                    # §2.2: a CRLF after a POST body): no head (a 408 instead of the idle
                    # close), and no activity either (a CRLF a second held the connection).
                    self.last_io = last_io
            # A request starts with this read: its head must end within MAX_HEAD bytes.
            if len(data) > MAX_HEAD and data.find(b"\r\n\r\n", 0, MAX_HEAD + 4) < 0:
                self._bad_request(HEAD_TOO_LARGE, 431)
                return
        elif ex.head_read >= 0:  # a head that came in pieces: counted as they come
            ex.head_read += len(data)
        elif ex.upgrade and ex.req_complete:
            self._upgrade_bytes(ex, data)  # after an Upgrade request, before any 101
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0] :]
            if rest and self.parsing is not None:
                self._upgrade_bytes(self.parsing, rest)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):  # a callback found the request unacceptable
                self._bad_request(refused.why, refused.status)
                return
            # One of our callbacks raised: our bug, logged with its traceback, never
            # blamed on the client; the connection ends.
            log.exception("internal error while handling a request")
            self.transport.abort()
        except httptools.HttpParserError as exc:
            why = str(exc)
            if why == "Invalid HTTP version":  # HTTP/1.2, 3.0: llhttp parses 0.9 to 2.0 only
                self._bad_request("this HTTP version is not supported: HTTP/1.1 or 1.0", 505)
            elif why == "Invalid method encountered" and _METHOD.fullmatch(data.lstrip(b"\r\n").partition(b" ")[0]):
                # llhttp knows a fixed set of methods (README, Known limits): any other
                # token is a method this proxy does not implement (RFC 9110 §15.6.2), not a
                # bad request. (The read's first word: a pipelined request's own may be
                # further on; it is told the same, and its connection closes either way.)
                self._bad_request(UNKNOWN_METHOD, 501)
            else:
                self._bad_request(why)
            return
        ex = self.parsing
        if ex is not None and ex.head_read > MAX_HEAD:  # and still not whole
            self._bad_request(HEAD_TOO_LARGE, 431)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.rt.connections.discard(self)
        # The parser holds our bound methods (a reference cycle): dropped here, a closed
        # connection is freed by reference counting instead of waiting for the cycle
        # collector, whose passes over the young generation serve() lets grow cost tens of ms.
        self.parser = None
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        ex = self.active
        if ex is not None:
            # The client went away mid-request: free the upstream side now (it may be
            # streaming a large body nobody will read) and log it as nginx does, 499.
            if ex.conn is not None:
                ex.conn.abort()
                ex.conn = None
            if not ex.status:
                ex.status = 499
            self.active = None
            self.rt.finished(self, ex)
        self.queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.last_io = self.rt.clock  # the client takes bytes: the stall is timed from here
        self.unsent = unsent_bytes(self.transport)
        ex = self.active
        peer = self.tunnel or (ex.conn if ex is not None else None)
        if peer is not None and not peer.closed:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last_io = self.rt.clock
        ex = self.active
        peer = self.tunnel or (ex.conn if ex is not None else None)
        if peer is not None and not peer.closed:
            peer.transport.resume_reading()

    def sending(self) -> bool:
        """Whether the client took any of the bytes waiting for it since last asked (or the
        pause began): a slow reader, not a stalled one. Asked by Runtime.tick only of a
        connection whose writing has been paused for the idle time-out."""
        unsent = unsent_bytes(self.transport)
        moved = 0 <= unsent < self.unsent
        self.unsent = unsent
        return moved

    # -- httptools callbacks: the request ---------------------------------------------------

    # No on_message_begin: every httptools callback is a Python call, and a request
    # always starts with its target, so on_url begins the exchange.

    def on_url(self, url: bytes) -> None:
        ex = self.parsing
        if ex is None:
            self.parsing = ex = Exchange(self.rt.now())
            ex.url = url
        else:  # the target came in pieces
            ex.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        if ex.head_read < 0:
            return  # a trailer field (after a chunked body): dropped, as nginx drops them
        lname = name.lower()
        if lname == b"host":
            # RFC 9110 §5.5: whitespace around a value is not part of it, and llhttp keeps
            # the trailing one: `Host: a.example ` missed a.example's route and reached
            # another route's upstream, which reads it as a.example.
            value = value.strip(b" \t")
        hdict = ex.hdict
        if lname in hdict:
            if lname in _COMBINED:
                # RFC 6265 §5.4 / RFC 7239: several fields combine into one list.
                hdict[lname] += b"; " + value if lname == b"cookie" else b", " + value
            elif lname == b"host":  # RFC 9112 §3.2: routed by one, read by the app as another
                raise _Refused(400, "more than one Host header")
            # Any other field given twice: the first line is the one read (for stickiness and
            # overrides), as most applications read it (QA, eighth round: the last one was,
            # so a user was pinned by another identity than the application saw).
        else:
            hdict[lname] = value
        if lname not in h.REQUEST_OWNED:
            # Four parts per field: list.extend of a tuple costs half of formatting a
            # line with %, and the upstream head is joined once (headers.request_head).
            ex.lines += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        if ex.head_read > 0 and _head_size(ex) > MAX_HEAD:  # a head read in pieces: measured
            raise _Refused(431, HEAD_TOO_LARGE)
        ex.head_read = -1
        self.head_began = 0.0
        p = self.parser
        ex.method = p.get_method()
        version = p.get_http_version()
        ex.http11 = version == "1.1"
        if not ex.http11 and version != "1.0":  # HTTP/2.0 or 0.9 in an HTTP/1 request line
            raise _Refused(505, f"HTTP/{version} is not supported: HTTP/1.1 or 1.0")
        ex.keep_alive = p.should_keep_alive()
        ex.upgrade = p.should_upgrade()
        cl = ex.hdict.get(b"content-length")
        if cl is not None:
            ex.content_length = int(cl)  # llhttp has checked it is digits
        elif b"transfer-encoding" in ex.hdict:
            if not ex.http11:  # RFC 9112 §6.1: faulty framing in 1.0; nginx refuses it too
                raise _Refused(400, "Transfer-Encoding in an HTTP/1.0 request")
            # llhttp has checked that chunked comes last; a coding before it (gzip, chunked)
            # would be lost in the re-framing: refused, as nginx does.
            if ex.hdict[b"transfer-encoding"].strip().lower() != b"chunked":
                raise _Refused(501, "transfer codings other than chunked are not supported")
            ex.req_chunked = True
        if ex.upgrade:
            # llhttp hands everything after an Upgrade request's head on as raw bytes, its
            # body included: a Content-Length body is counted out of them (_upgrade_bytes);
            # a chunked one could not be told from what follows it.
            if ex.req_chunked:
                raise _Refused(501, "an Upgrade request with a chunked body is not supported")
            ex.held_body = ex.content_length or 0
        if self.active is None:
            self._start(ex)
        else:
            self.queue.append(ex)
            self.update_reading()

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        ex.bytes_in += len(body)
        if ex.bytes_in > self.rt.max_body:
            self._too_large(ex)
            return
        if ex.mirror is not None:
            ex.mirror.take_request_body(body)
        elif self.active is not ex:  # queued behind another request: not started yet
            if ex.early_body is None:
                ex.early_body = [body]
            else:
                ex.early_body.append(body)
        self._send_body(ex, h.chunk(body) if ex.req_chunked else body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        ex.req_complete = True
        if (ex.content_length or ex.req_chunked) and ex.conn is not None:
            # The body's last bytes went up now: the response time-out starts from here.
            ex.deadline = self.rt.now() + self.rt.response_timeout
        if ex.req_chunked:
            self._send_body(ex, h.LAST_CHUNK)
        if ex.mirror is not None and ex.mirror.wants_body:
            self.rt.shadow.launch(ex.mirror)
        if not ex.upgrade:
            self.parsing = None

    # -- the request's way upstream ---------------------------------------------------------

    def _start(self, ex: Exchange) -> None:
        self.active = ex
        rt = self.rt
        hdict = ex.hdict
        url = ex.url
        # RFC 9112 §3.2: a fragment is never sent (Envoy refuses it too). The byte as an int,
        # ord("#"): `b"#" in url` first tries the operand as an int, raising and clearing a
        # TypeError (~1,500 instructions a request, callgrind); find() parses its arguments.
        if 35 in url:
            ex.keep_alive = False
            self._local(ex, 400, "request target: a fragment (#...) is not part of a request")
            return
        path = url.partition(b"?")[0]
        host = hdict.get(b"host")
        lines = ex.lines
        if ex.method == b"CONNECT":  # before the target: CONNECT's is host:port
            # 501, not 405: a 405 must list the methods the target allows (RFC 9110 §15.5.6).
            self._local(ex, 501, "CONNECT is not supported")
            return
        if path[:1] != b"/":
            # absolute-form (RFC 9112 §3.2.2): route by the URL's own host and path, and
            # send that host as Host, replacing the client's. The scheme in any case
            # (RFC 3986 §3.1: HTTP://x/ is http://x/).
            if path[:8].lower().startswith((b"http://", b"https://")):
                rest = path.partition(b"//")[2]
                host, _, p = rest.partition(b"/")
                if not host or b"@" in host:  # RFC 9110 §4.2.1, §4.2.4: no empty host, no userinfo
                    ex.keep_alive = False
                    self._local(ex, 400, "request target: an absolute URI needs a host, without userinfo")
                    return
                path = b"/" + p
                url = path + (b"?" + url.partition(b"?")[2] if b"?" in url else b"")
                ex.url = url
                lines = [*h.without_options(lines, _HOST), b"Host", b": ", host, b"\r\n"]
            elif ex.method == b"OPTIONS" and url == b"*":  # exactly "*" (RFC 9112 §3.2.4)
                # RFC 9110 §9.3.7: the server's own options, forwarded as they came (as
                # Envoy does), on the route that serves the host's "/".
                path = b"/"
            else:
                ex.keep_alive = False  # as any malformed request's connection
                self._local(ex, 400, "request target must be a path")
                return
        elif host is None and ex.http11:
            ex.keep_alive = False  # as any malformed request's connection
            self._local(ex, 400, "bad request: Host header missing (required in HTTP/1.1)")
            return
        if host is not None and host not in rt.hosts_seen:  # nearly every request: one lookup
            if not h.valid_host(host):
                ex.keep_alive = False  # RFC 9112 §3.2: 400, as any malformed request
                self._local(ex, 400, "bad request: Host is not a host name or address with an optional port")
                return
            rt.saw_host(host)
        plan = rt.table.match(host, path)
        if plan is None:
            self._local(ex, 404, f"no route for {(host or b'').decode('latin-1')}{path.decode('latin-1')}")
            return
        ex.plan = plan
        ex.request_id = hdict.get(b"x-request-id") or rt.rid_prefix + b"%x" % next(rt.rid_counter)
        if ex.bytes_in > rt.max_body or (ex.content_length is not None and ex.content_length > rt.max_body):
            # bytes_in: a chunked body read past the limit while the request waited its turn
            self._too_large(ex)
            return
        ip = self.ip
        if plan.sticky_by_ip and rt.table.trusted is not None:  # behind proxies of ours
            ip = rt.table.trusted.client(ip, hdict.get(b"x-forwarded-for"))
        decision = plan.choose(hdict.get, url, ip, rt.random(), rt.new_sticky_key)
        ex.decision = decision
        backend = plan.backends[decision.backend]
        if rt.balancer.down and id(backend) in rt.balancer.down:
            # Every instance of it fails its health checks: the baseline takes over.
            backend = rt.balancer.failover(plan, backend)
        ex.backend = backend
        pool = next(rt.balancer.cycles[id(backend)])  # rt.next_pool, inlined
        ex.pool = pool
        if ex.upgrade:
            framing = b"Content-Length: %d\r\n" % ex.content_length if ex.content_length else b""
        elif ex.req_chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif ex.content_length is not None:
            framing = b"Content-Length: %d\r\n" % ex.content_length
        else:
            framing = b""
        conn_header = hdict.get(b"connection")
        if conn_header is not None:
            options = h.connection_options(conn_header)
            if options:
                lines = h.without_options(lines, options)
        if host is None:
            ex.host_filled = pool.hostport
            lines = [*lines, b"Host", b": ", pool.hostport, b"\r\n"]
        ex.head = h.request_head(
            ex.method,
            url,
            lines,
            host or b"",
            self.ip,
            hdict.get(b"x-forwarded-for"),
            ex.request_id,
            framing,
            hdict.get(b"upgrade") if ex.upgrade else None,
        )
        expect = hdict.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and ex.http11 and not ex.req_complete:
            # RFC 9110 §10.1.1: we will read the body, so say so; the upstream never
            # sees Expect, as with nginx.
            self.write(h.CONTINUE)
        if plan.route.shadow is not None:
            mirror = ex.mirror = rt.shadow.begin(ex, plan)
            if mirror is not None:
                for piece in ex.early_body or ():
                    mirror.take_request_body(piece)
                    if ex.mirror is None:  # ended: over max_body
                        break
                if ex.mirror is not None and (not mirror.wants_body or ex.req_complete):
                    rt.shadow.launch(mirror)
        if ex.early_body is not None:
            ex.early_body = None
        conn = pool.take_idle()
        if conn is not None:
            self._attach(ex, conn)
        else:
            rt.spawn(self._connect(ex, pool), "connect")

    async def _connect(self, ex: Exchange, pool: UpstreamPool) -> None:
        try:
            conn = await pool.connect(self.rt.connect_timeout)
        except UpstreamError as err:
            if self.active is ex and not self.closed:
                # Nothing of the request reached any upstream: any method may go elsewhere
                # (not when the proxy itself is out of sockets: a retry needs one too).
                self.upstream_failed(ex, err, retryable=not err.local, sent=False)
            return
        if self.active is ex and not self.closed:
            conn.reused = False
            self._attach(ex, conn)
        else:
            conn.release(reusable=True)

    def _attach(self, ex: Exchange, conn: UpstreamConnection) -> None:
        ex.conn = conn
        conn.client = self  # conn.bind(self, ex), inlined
        conn.ex = ex
        conn.got_bytes = conn.finished = False
        conn.head_bytes = 0
        pending = ex.pending
        ex.pending = None
        if pending:
            conn.transport.write(ex.head + b"".join(pending))
            ex.pending_size = sum(map(len, ex.held)) if ex.held else 0
        else:
            conn.transport.write(ex.head)
        # No timer object per request: Runtime.tick compares deadlines ten times a second.
        ex.deadline = self.rt.now() + self.rt.response_timeout
        if self.write_paused:
            conn.transport.pause_reading()
        if self.read_paused:  # the buffered body went out: reading may go on
            self.update_reading()

    def _send_body(self, ex: Exchange, data: bytes) -> None:
        pending = ex.pending
        if pending is None:
            conn = ex.conn
            if conn is not None and not conn.closed:
                conn.transport.write(data)
            return
        pending.append(data)
        ex.pending_size += len(data)
        if ex.pending_size > PENDING_MAX:
            self.update_reading()

    def _upgrade_bytes(self, ex: Exchange, data: bytes) -> None:
        """Bytes after an Upgrade request's head, before the upstream's 101: its body (by its
        Content-Length) goes upstream as it comes; the rest is held until the 101. Sent at
        once, an upstream that refuses the upgrade and keeps its connection would read them
        as its next request, one the proxy never saw (request smuggling)."""
        n = ex.held_body
        if n:
            body = data[:n]
            ex.held_body = n - len(body)
            self._send_body(ex, body)
            data = data[n:]
        if data:
            if ex.held is None:
                ex.held = [data]
            else:
                ex.held.append(data)
            ex.pending_size += len(data)  # bounds what is held: reading pauses past PENDING_MAX
            if ex.pending_size > PENDING_MAX:
                self.update_reading()

    def update_reading(self) -> None:
        """Pause reading the client while its bytes have nowhere to go."""
        parsing = self.parsing
        pause = bool(self.queue) or self.upstream_full or (parsing is not None and parsing.pending_size > PENDING_MAX)
        if pause != self.read_paused and not self.closed and not self.draining:
            self.read_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    # -- the response's way back (called by UpstreamConnection) -----------------------------

    def response_head(
        self, ex: Exchange, conn: UpstreamConnection, status: int, lines: list[bytes], hdict: dict[bytes, bytes]
    ) -> None:
        if status == 101 and not ex.upgrade:
            # RFC 9110 §15.2.2: a switch to a protocol the client did not ask for.
            self.upstream_failed(ex, UpstreamMalformed("upstream switched protocols unasked"), retryable=False)
            return
        ex.status = ex.upstream_status = status
        ex.resp_started = True
        head = [_STATUS_LINES.get(status) or h.status_line(status)]
        conn_header = hdict.get(b"connection")
        if conn_header is not None and conn_header not in h.PLAIN_CONNECTION:
            options = h.connection_options(conn_header)
            if options:
                lines = h.without_options(lines, options)
        head += lines
        if status == 101 and ex.upgrade:
            head.append(b"Connection: upgrade\r\nUpgrade: %s\r\n" % hdict.get(b"upgrade", b""))
            self._sticky_cookie(ex, head)  # a browser keeps a handshake's cookies too
            head.append(b"\r\n")
            self.write(b"".join(head))
            self._start_tunnel(ex, conn)
            return
        cl = hdict.get(b"content-length")
        if ex.method == b"HEAD" or status in (204, 304):
            ex.resp_mode = Exchange.NONE
            if cl is not None and status != 204:
                head.append(b"Content-Length: %s\r\n" % cl)
        elif cl is not None:
            ex.resp_mode = Exchange.RAW
            head.append(b"Content-Length: %s\r\n" % cl)
        elif ex.http11:
            ex.resp_mode = Exchange.CHUNKED
            head.append(b"Transfer-Encoding: chunked\r\n")
        else:
            ex.resp_mode = Exchange.UNTIL_CLOSE
            ex.keep_alive = False
        if ex.upgrade or not ex.req_complete:
            # A refused upgrade, or a response before the whole request body arrived:
            # this connection cannot carry another request (RFC 9112 §9.6).
            ex.keep_alive = False
        if not ex.keep_alive or self.closing:
            head.append(b"Connection: close\r\n")
        elif not ex.http11:
            head.append(b"Connection: keep-alive\r\n")
        if not conn.dated:  # RFC 9110 §6.6.1: a recipient with a clock adds one (nginx, Envoy do)
            head.append(self.rt.date_line)
        decision = ex.decision
        if decision is not None and decision.set_cookie is not None:
            self._sticky_cookie(ex, head)
        head.append(b"\r\n")
        if ex.mirror is not None:
            ex.mirror.live_head(status, lines, hdict)
        # Held until the end of the upstream's data_received, so that the head and the
        # first body bytes leave in one write (one syscall fewer per request).
        self.out.append(b"".join(head))

    @staticmethod
    def _sticky_cookie(ex: Exchange, head: list[bytes]) -> None:
        """The new sticky key's Set-Cookie line, when the decision issued one."""
        decision = ex.decision
        if decision is not None and decision.set_cookie is not None and ex.plan is not None:
            head.append(h.set_cookie(ex.plan.sticky_name, decision.set_cookie, ex.plan.sticky_cookie))

    def response_body(self, ex: Exchange, body: bytes) -> None:
        if ex is not self.active:
            return
        ex.bytes_out += len(body)
        if ex.mirror is not None:
            ex.mirror.live_body(body)
        mode = ex.resp_mode
        if mode in (Exchange.RAW, Exchange.UNTIL_CLOSE):
            self.out.append(body)
        elif mode == Exchange.CHUNKED:
            self.out.append(h.chunk(body))

    def response_complete(self, ex: Exchange, conn: UpstreamConnection, reusable: bool) -> None:
        if ex is not self.active:
            conn.release(reusable=False)
            return
        # Detached before the last write: a write that fills the client's buffer pauses the
        # reading of ex.conn (pause_writing), and a connection pooled paused hung the next
        # request on it (any client's, or a mirror's) until its response time-out.
        ex.conn = None
        out = self.out
        if ex.resp_mode == Exchange.CHUNKED:
            out.append(h.LAST_CHUNK)
        if out:  # flush(), inlined: once per response
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        ex.complete = True
        if self.write_paused:  # paused by an earlier write: it reads again before it is pooled
            conn.transport.resume_reading()
        # A connection whose request body was not all sent cannot carry another request.
        conn.release(reusable=reusable and ex.req_complete)
        self._finish(ex)

    def upstream_failed(self, ex: Exchange, err: UpstreamError, *, retryable: bool, sent: bool = True) -> None:
        """The upstream side failed before or during the response.

        ``retryable``: no response byte came back. ``sent``: request bytes went out.
        """
        if ex is not self.active:
            return
        if ex.conn is not None:
            ex.conn.abort()
            ex.conn = None
        self.rt.upstream_error(ex, err)
        if retryable and self._may_retry(ex, sent):
            self._retry(ex, err, sent)
            return
        if ex.resp_started:
            # Part of the response is already with the client: the only honest signal
            # left is to cut the connection.
            ex.keep_alive = False
            self.closing = True
            self._finish(ex)
            if not self.closed:
                self.transport.abort()
            return
        route = ex.plan.name if ex.plan else "-"
        backend = ex.backend.name if ex.backend else "-"
        self._local(ex, err.status, f"{err.answer}: route {route}, backend {backend}")

    def _may_retry(self, ex: Exchange, sent: bool) -> bool:
        """Retry only where it cannot do harm (issue 5): never once a response byte reached
        the client, never an upgrade, at most MAX_RETRIES times within the response
        time-out; a request that reached an upstream only when it is idempotent and has no
        body to send again — which covers the keep-alive race (RFC 9112 §9.3.1: a reused
        connection closed by the upstream just as the request went out)."""
        if ex.retries >= MAX_RETRIES or ex.upgrade or ex.resp_started or ex.backend is None:
            return False
        if self.rt.now() - ex.t0 >= self.rt.response_timeout:
            return False
        if not sent:
            return True
        return ex.method in IDEMPOTENT and ex.content_length in (None, 0) and not ex.req_chunked

    def _retry(self, ex: Exchange, err: UpstreamError, sent: bool) -> None:
        backend = ex.backend
        plan = ex.plan
        assert backend is not None
        assert plan is not None
        ex.retries += 1
        self.rt.retried(ex, err)
        if not sent and ex.retries >= len(backend.upstreams):
            # Every instance of the backend refused: nothing of the request went anywhere,
            # so the baseline may take it (a canary that died costs its users nothing,
            # even before the health checks notice).
            baseline = plan.backends[plan.baseline]
            if baseline is not backend:
                self.rt.counts.count("splitproxy_failovers", (plan.name, backend.name))
                ex.backend = backend = baseline
        failed = ex.pool
        pool = self.rt.next_pool(plan.name, backend)
        if pool is None:
            # A reload removed the backend since the request began (it retried the instance
            # that had just failed): the route's baseline now takes it, as a failover.
            now = self.rt.table.plans.get(plan.name)
            if now is not None:
                self.rt.counts.count("splitproxy_failovers", (plan.name, backend.name))
                ex.backend = backend = now.backends[now.baseline]
                pool = self.rt.next_pool(plan.name, backend)
        pool = pool or failed  # the route itself is gone: only that instance is left
        if pool is failed and len(backend.upstreams) > 1:
            pool = self.rt.next_pool(plan.name, backend) or failed  # another instance, when there is one
        assert pool is not None
        ex.pool = pool
        if ex.host_filled:
            ex.head = h.with_host(ex.head, ex.host_filled, pool.hostport)
            ex.host_filled = pool.hostport
        if ex.pending is None:
            ex.pending = []  # no body was buffered: the request is its head alone
        # After the keep-alive race (sent), on a new connection: the instance's other idle
        # ones may be as dead as the one that failed (it died or restarted), and each took
        # one of the retries, so the refused connect that would fail over to the baseline
        # came too late (QA: a single-instance canary killed under load cost 502s).
        conn = None if sent else pool.take_idle()
        if conn is not None:
            self._attach(ex, conn)
        else:
            self.rt.spawn(self._connect(ex, pool), "retry-connect")

    # -- endings ----------------------------------------------------------------------------

    def _local(self, ex: Exchange, status: int, text: str) -> None:
        """Answer from the proxy itself; keep the connection only if the request is whole."""
        ex.status = status
        ex.resp_started = True
        ex.pending = None
        if not ex.req_complete and not (ex.content_length == 0 or (ex.content_length is None and not ex.req_chunked)):
            ex.keep_alive = False
        if ex.upgrade:
            # llhttp reads what follows an Upgrade (or CONNECT) request as raw bytes from
            # now on: kept open, a request pipelined behind it waited for the idle time-out.
            ex.keep_alive = False
        keep = ex.keep_alive and not self.closing
        resp = h.local_response(
            status,
            text,
            keep_alive=keep,
            head_only=ex.method == b"HEAD",
            request_id=ex.request_id,
            http11=ex.http11,
            date=self.rt.date,
        )
        ex.bytes_out += h.body_size(resp)  # counted as an upstream's body is (nginx's $body_bytes_sent)
        self.write(resp)
        ex.keep_alive = keep
        self._finish(ex)

    def _too_large(self, ex: Exchange) -> None:
        if ex is self.active and not ex.resp_started:
            if ex.conn is not None:
                ex.conn.abort()
                ex.conn = None
            ex.keep_alive = False
            self._local(ex, 413, f"request body larger than {self.rt.max_body} bytes")
        elif ex.resp_started and ex is self.active:
            self.transport.abort()

    def head_timed_out(self) -> None:
        """The request head did not come whole within the idle time-out (Runtime.tick)."""
        self._bad_request("request head not received within the idle time-out", 408)

    def body_timed_out(self, ex: Exchange) -> None:
        """The client stopped sending its request body (Runtime.tick): 408, as nginx's
        client_body_timeout; the upstream, waiting for the rest, is not blamed."""
        if ex is not self.active or ex.resp_started:
            return
        if ex.conn is not None:
            ex.conn.abort()
            ex.conn = None
        self.closing = True
        self._local(ex, 408, "request body not received within the idle time-out")

    def _bad_request(self, why: str, status: int = 400) -> None:
        """The client sent what HTTP/1.1 does not allow: answered 400 (431 for a head too
        large), counted and logged as such, and the connection closes. When the bytes broke
        the body of the request being forwarded, that request ends here with its upstream
        connection: the upstream, left waiting for the rest, is not blamed (no time-out, no
        error, no ejection). A broken request behind others is answered in its turn."""
        ex = self.parsing
        if ex is None:  # the request line itself did not parse
            ex = Exchange(self.rt.now())
            ex.method = b""
        elif ex.head_read >= 0 and self.parser is not None:
            # Its method is parsed (on_url came after it) but copied only once the head is
            # whole: a POST refused in its head was logged as a GET.
            ex.method = self.parser.get_method()
        self.parsing = None
        self.head_began = 0.0
        ex.status = status
        ex.keep_alive = False
        ex.head_read = -1
        active = self.active
        if active is ex and not ex.req_complete:
            self.closing = True
            if ex.resp_started:
                self.transport.abort()  # too late for a 400: the client sees the cut
                return
            if ex.conn is not None:
                ex.conn.abort()
                ex.conn = None
            self.parsing = ex  # for _close: the rest of the body is read away, not reset
            self._local(ex, status, _rejection(status, why))
            self.parsing = None
        elif active is None:
            self._reject(ex, status, why)
        else:
            if ex in self.queue:
                self.queue.remove(ex)
            self.rejected = (ex, status, why)  # nothing more is parsed; see _finish

    def _reject(self, ex: Exchange, status: int, why: str) -> None:
        if not self.closed and not self.draining:
            resp = h.local_response(status, _rejection(status, why), keep_alive=False, date=self.rt.date)
            ex.bytes_out += h.body_size(resp)
            self.write(resp)
        ex.resp_started = True
        self.closing = True
        self.rt.finished(self, ex)
        self._close(linger=True)

    def _finish(self, ex: Exchange) -> None:
        self.active = None
        self.rt.finished(self, ex)
        if not ex.keep_alive or self.closing or self.closed:
            self._close()
            return
        if self.queue:
            self._start(self.queue.popleft())
            self.update_reading()
        elif self.rejected is not None:
            rejected, status, why = self.rejected
            self.rejected = None
            self._reject(rejected, status, why)
        elif self.read_paused:
            self.update_reading()

    def _close(self, linger: bool = False) -> None:
        """Close once written. If the client may still be sending a request body (or the
        rest of a request refused, ``linger``), stop sending and read it away for a moment
        first (nginx's lingering close): closing a socket with unread input sends a reset
        that can destroy the response in flight."""
        if self.closed or self.draining:
            return
        self.flush()
        parsing = self.parsing
        if (linger or (parsing is not None and not parsing.req_complete)) and self.transport.can_write_eof():
            self.draining = True
            self.queue.clear()
            self.transport.write_eof()
            if self.read_paused:
                self.read_paused = False
                self.transport.resume_reading()
            self.rt.loop.call_later(LINGER_SECONDS, self.transport.close)
            return
        # Requests pipelined behind the last answer are dropped unanswered, never sent
        # upstream (as nginx does): their answers could not reach the client, and a POST
        # would have run with the client left to retry it.
        self.queue.clear()
        self.draining = True  # nothing more is read, and Runtime.tick times only the way out
        self.transport.close()

    def _start_tunnel(self, ex: Exchange, conn: UpstreamConnection) -> None:
        conn.tunnel = True
        self.tunnel = conn
        pending = ex.pending
        ex.pending = None
        if pending:
            conn.transport.write(b"".join(pending))
        if ex.held:  # what the client sent after its Upgrade request, now for the new protocol
            conn.transport.write(b"".join(ex.held))
            ex.held = None
        self.parsing = None
        self.active = None
        self.rt.finished(self, ex)
        self.update_reading()

    def flush(self) -> None:
        """Write what responses have queued in ``out`` (see ``response_head``)."""
        out = self.out
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def write(self, data: bytes) -> None:
        self.flush()
        self.transport.write(data)

    def shutdown(self) -> None:
        """Close now if idle, else after the response in progress."""
        self.closing = True
        if self.active is None and self.tunnel is None and not self.closed:
            self._close()
