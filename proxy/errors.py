"""Errors at the upstream boundary, each carrying the status it maps to (httpcore style).

One ``except UpstreamError as e`` turns any of them into a response with ``e.status``;
``e.reason`` is the ``reason`` label of ``splitproxy_upstream_errors_total``. And
``os_reason``: what an OSError about a file's path says, for the messages of the state
database and the access log.
"""

from __future__ import annotations

import errno
from pathlib import Path


class UpstreamError(Exception):
    status = 502
    reason = "reset"
    local = False  # the proxy's own failure, not the upstream's: nothing is charged to it
    answer = "upstream unavailable"  # what the proxy's own answer to the client says


class ProxyOutOfResources(UpstreamError):
    """No socket for the connection: the proxy's file descriptors (or the system's, or its
    memory for buffers) ran out. The upstream did nothing wrong: neither counted as its
    error nor towards ejecting it (it took healthy instances out), and not retried."""

    status = 503
    reason = "connect"
    local = True
    answer = "proxy out of sockets"


class UpstreamConnectError(UpstreamError):
    """The upstream refused or did not accept the connection."""

    status = 502
    reason = "connect"


class UpstreamTimeout(UpstreamError):
    """Connecting or waiting for the response took longer than the configured time-out."""

    status = 504
    reason = "timeout"
    answer = "upstream timed out"


class UpstreamReset(UpstreamError):
    """The upstream closed or broke the connection, or sent something that is not HTTP."""

    status = 502
    reason = "reset"


class UpstreamMalformed(UpstreamReset):
    """The upstream answered, but not in HTTP/1.1 the proxy can pass on (a bad status line,
    conflicting framing, a 101 nobody asked for). Counted as a ``reset``, as SPEC §6 names
    the reasons; the client's answer says what happened (it said "unavailable")."""

    answer = "upstream sent a malformed response"


# socket() or connect() failing for want of the proxy's own resources, not the upstream's.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def connect_failed(address: str, exc: OSError) -> UpstreamError:
    """The error a failed connect to ``address`` is. Here, not in proxy/upstream.py: every
    name in that module's globals slows the lookups a request makes there."""
    if exc.errno in _OUT_OF_RESOURCES:
        return ProxyOutOfResources(f"no socket to connect to {address}: {exc.strerror or exc}")
    return UpstreamConnectError(f"connect to {address} failed: {exc.strerror or exc}")


def os_reason(e: OSError, directory: Path) -> str:
    """An OSError's reason, naming the file in the way when a directory on the path to
    ``directory`` is one ("File exists" said nothing of which)."""
    if isinstance(e, (FileExistsError, NotADirectoryError)):
        for parent in (directory, *directory.parents):
            if parent.exists() and not parent.is_dir():
                return f"{parent} is a file, not a directory"
    return str(e.strerror or e)
