"""Header rewriting and the heads the proxy writes itself. Pure.

Headers stay raw byte pairs end to end (PERF-NOTES: copying them into a case-insensitive
multidict cost ~22 µs a request). The forwarder lower-cases each *name* once to classify
it, keeps a pre-formatted ``Name: value\\r\\n`` line for every header it passes on, and
these functions add what the proxy owns.
"""

from __future__ import annotations

import itertools
import re
from email.utils import formatdate
from http import HTTPStatus
from typing import Final

# RFC 9110 §7.6.1: "a proxy or gateway MUST ... remove any header or trailer field that
# is a connection option"; the fixed list is the hop-by-hop set of RFC 2616 §13.5.1 plus
# Proxy-Connection, which old clients still send.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

# Request headers the proxy rewrites itself rather than passing on as they came:
# framing (we choose it), Expect (we answer 100-continue ourselves, as nginx does),
# and the X-Forwarded-* set (appended to or replaced).
_OWNED = HOP_BY_HOP | {
    b"content-length",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-request-id",
    b"x-shadow-request",  # set on mirrors only: a client's own would pass a live request as one
}


def _spellings(name: bytes) -> set[bytes]:
    """``name`` with each ``-`` also spelt ``_``: CGI, WSGI and Rack fold both to ``_``
    (``HTTP_X_FORWARDED_FOR``), so ``X_Forwarded_For`` passed on would reach such an app as
    the header the proxy sets. nginx drops every name with ``_`` for this reason
    (``underscores_in_headers off``); only the spellings of the proxy's own are dropped here."""
    pieces = name.split(b"-")
    return {
        pieces[0] + b"".join(sep + piece for sep, piece in zip(seps, pieces[1:], strict=True))
        for seps in itertools.product((b"-", b"_"), repeat=len(pieces) - 1)
    }


# The set above in every spelling (one set lookup a header, whatever its size).
REQUEST_OWNED = frozenset(spelt for name in _OWNED for spelt in _spellings(name))

# RFC 9110 §7.2 / RFC 3986 §3.2.2: uri-host [":" port], where uri-host is an IP literal or
# a reg-name (IPv4 addresses are reg-names by their characters). RFC 9112 §3.2: a Host
# with an invalid value MUST be answered 400; RFC 9110 §4.2.1: an empty host is invalid.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+)(?::[0-9]{0,5})?")


def valid_host(value: bytes) -> bool:
    """A ``Host`` value (or an absolute URI's authority) that names a host, with its port."""
    return _HOST.fullmatch(value) is not None


# The largest head (request line or status line, and the fields) read from a client or an
# upstream (Envoy's default is 60 KiB; nginx answers 400 past 32 KiB): httptools has no limit
# of its own, and it joins a field that comes in pieces by copying, so a head growing without
# end costs time as well as memory. A client's is answered 431, an upstream's fails with 502.
MAX_HEAD: Final = 64 * 1024

# Response headers whose framing the proxy decides for the client connection.
RESPONSE_OWNED = HOP_BY_HOP | {b"content-length"}

CRLF = b"\r\n"


_NO_OPTIONS: frozenset[bytes] = frozenset()
# Connection header values that name no other header: nearly all of them.
PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"upgrade", b"Keep-Alive", b"Close", b"Upgrade"})


def connection_options(value: bytes) -> frozenset[bytes]:
    """Lower-case tokens of a ``Connection`` header, minus the framing ones."""
    if value in PLAIN_CONNECTION:  # nearly every Connection header: nothing to parse
        return _NO_OPTIONS
    tokens = {t.strip().lower() for t in value.split(b",")}
    tokens.discard(b"")
    # Host is no connection option: a request must reach the upstream with its Host.
    tokens -= {b"close", b"keep-alive", b"upgrade", b"host"}
    return frozenset(tokens)


def without_options(parts: list[bytes], options: frozenset[bytes]) -> list[bytes]:
    """Header parts (four per field: name, ``b": "``, value, CRLF) minus the fields whose
    name is a connection option.

    Rare (a ``Connection`` header naming more than close/keep-alive/upgrade), so the names
    are lower-cased here rather than kept for every request."""
    out: list[bytes] = []
    for i in range(0, len(parts), 4):
        if parts[i].strip().lower() not in options:
            out += parts[i : i + 4]
    return out


def forwarded_for(prior: bytes | None, client_ip: bytes) -> bytes:
    return prior + b", " + client_ip if prior else client_ip


def request_head(  # noqa: PLR0917  # positional-friendly: called once per request
    method: bytes,
    url: bytes,
    lines: list[bytes],
    host: bytes,
    client_ip: bytes,
    prior_xff: bytes | None,
    request_id: bytes,
    framing: bytes,
    upgrade: bytes | None = None,
    extra: bytes = b"",
) -> bytes:
    """The head sent upstream: always HTTP/1.1, keep-alive unless upgrading.

    ``lines`` are the client's passed-on header parts, four per field (name, ``b": "``,
    value, CRLF), with Host among them when it sent one (the forwarder adds one for
    HTTP/1.0 clients that sent none). ``framing`` is
    ``b"content-length: N\\r\\n"``, ``b"transfer-encoding: chunked\\r\\n"`` or ``b""``.
    """
    parts = [method, b" ", url, b" HTTP/1.1\r\n", *lines]
    if host:
        parts.append(b"X-Forwarded-Host: " + host + CRLF)
    parts += [
        b"X-Forwarded-For: ",
        prior_xff + b", " + client_ip if prior_xff else client_ip,  # forwarded_for()
        b"\r\nX-Forwarded-Proto: http\r\nX-Request-Id: ",
        request_id,
        CRLF,
        framing,
    ]
    if upgrade is not None:
        parts += [b"Connection: upgrade\r\nUpgrade: ", upgrade, CRLF]
    parts += [extra, CRLF]
    return b"".join(parts)


def with_host(head: bytes, old: bytes, new: bytes) -> bytes:
    """``head`` with the Host line the proxy filled in (``old``: a request that came without
    one, HTTP/1.0) naming ``new``: the only Host line such a head has. ``head`` itself when
    the proxy filled in none (``old`` empty) or ``new`` is that upstream."""
    if not old or old == new:
        return head
    return head.replace(b"\r\nHost: " + old + CRLF, b"\r\nHost: " + new + CRLF, 1)


STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


def http_date(t: float) -> bytes:
    """``t`` as an HTTP-date (RFC 9110 §5.6.7: ``Fri, 04 Dec 2026 19:04:00 GMT``)."""
    return formatdate(t, usegmt=True).encode()


def local_response(
    status: int,
    text: str,
    *,
    keep_alive: bool,
    head_only: bool = False,
    request_id: bytes = b"",
    http11: bool = True,
    date: bytes = b"",
) -> bytes:
    """A complete short plain-text response written by the proxy itself (errors, 404).

    Never a traceback: ``text`` is one line naming what failed (route, backend). ``date``:
    the ``Date`` value (RFC 9110 §6.6.1: a server with a clock sends one). An HTTP/1.0
    client is told ``Connection: keep-alive`` when the connection stays open (RFC 9112
    Appendix C.2.2): without it, one reading to the end waited for the idle time-out.
    """
    body = text.encode() + b"\n"
    parts = [
        status_line(status),
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
    ]
    if date:
        parts.append(b"Date: " + date + CRLF)
    if request_id:
        parts.append(b"X-Request-Id: " + request_id + CRLF)
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    elif not http11:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(CRLF)
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def body_size(response: bytes) -> int:
    """The body's length in a whole response the proxy wrote (``local_response``)."""
    return len(response) - response.find(b"\r\n\r\n") - 4


def cookie_attributes(
    *, max_age: int, path: str, domain: str | None, secure: bool, http_only: bool, same_site: str
) -> bytes:
    """What follows the sticky cookie's value in its Set-Cookie line (RFC 6265 §4.1); a
    max_age of 0 makes it a session cookie (no Max-Age)."""
    parts = [b"; Max-Age=%d" % max_age] if max_age > 0 else []
    parts.append(b"; Path=" + path.encode())
    if domain:
        parts.append(b"; Domain=" + domain.encode())
    if secure:
        parts.append(b"; Secure")
    if http_only:
        parts.append(b"; HttpOnly")
    parts.append(b"; SameSite=" + same_site.encode())
    return b"".join(parts)


def set_cookie(name: bytes, value: bytes, attributes: bytes) -> bytes:
    """The sticky-session cookie line (RFC 6265 §4.1): ``attributes`` from
    ``cookie_attributes``."""
    return b"Set-Cookie: %s=%s%s\r\n" % (name, value, attributes)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 §7.1)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
