"""The access log: one JSON object per request, on one line.

Written from the hot path, so it avoids the ``logging`` module (its record machinery
costs several µs a call) and ``json.dumps`` for fields that cannot need escaping:
route and backend names are restricted by the config, methods are HTTP tokens, the
request id is escaped when it is not one of ours. Lines go into a buffer that is flushed
when it grows or on a timer (``flush``), and at shutdown.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import IO

FLUSH_BYTES = 64 * 1024
_SAFE = frozenset(range(0x20, 0x7F)) - {ord('"'), ord("\\")}


def _text(raw: bytes) -> str:
    """A JSON string literal for bytes from the wire."""
    if _SAFE.issuperset(raw):
        return '"' + raw.decode("ascii") + '"'
    return json.dumps(raw.decode("utf-8", "replace"))


_LINE = (
    '{"ts":%s,"client":"%s","method":"%s","path":%s,"status":%d,%s,"duration_ms":%.3f,'
    '"bytes_in":%d,"bytes_out":%d,"request_id":%s,"by":"%s","pid":%d}\n'
)
_TOKENS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"CONNECT"})


def where(route: str, backend: str, upstream: str) -> str:
    """The route, backend and upstream fields (names the config restricts to safe characters)."""
    return f'"route":"{route}","backend":"{backend}","upstream":"{upstream}"'


class AccessLog:
    __slots__ = ("_buf", "_ms", "_out", "_pid", "_size", "_ts", "enabled", "target")

    def __init__(self, target: str) -> None:
        """``target``: ``-`` for standard output, ``off``, or a file path (appended to)."""
        self.target = target
        self.enabled = target != "off"
        self._buf: list[str] = []
        self._size = 0
        self._pid = os.getpid()  # which worker served it, with --workers
        self._ms = -1
        self._ts = ""
        self._out: IO[bytes] | None = None
        if target == "-":
            self._out = sys.stdout.buffer
        elif self.enabled:
            os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
            self._out = open(target, "ab")  # noqa: SIM115  # kept open for the process's life

    def request(
        self,
        *,
        ts: float,
        client: bytes,
        method: bytes,
        url: bytes,
        status: int,
        route: str,
        backend: str,
        upstream: str,
        duration: float,
        bytes_in: int,
        bytes_out: int,
        request_id: bytes,
        decided_by: str,
    ) -> None:
        self.line(
            ts,
            client.decode("latin-1"),
            method,
            url,
            status,
            where(route, backend, upstream),
            duration,
            bytes_in,
            bytes_out,
            request_id,
            decided_by,
        )

    def line(  # noqa: PLR0917  # positional on purpose: the hot path's call
        self,
        ts: float,
        client: str,
        method: bytes,
        url: bytes,
        status: int,
        where: str,
        duration: float,
        bytes_in: int,
        bytes_out: int,
        request_id: bytes,
        decided_by: str,
    ) -> None:
        """The hot path's form of ``request``: positional, with the route, backend and
        upstream fields pre-rendered (``where``); %-formatting is ~40 % cheaper than an
        f-string with the same fields here."""
        ms = int(ts * 1000)
        if ms != self._ms:  # the timestamp text changes once a millisecond, not per line
            self._ms = ms
            seconds, millis = divmod(ms, 1000)
            self._ts = f"{seconds}.{millis:03d}"
        line = _LINE % (
            self._ts,
            client,
            method.decode("latin-1") if method in _TOKENS else _text(method)[1:-1],
            _text(url),
            status,
            where,
            duration * 1000,
            bytes_in,
            bytes_out,
            _text(request_id),
            decided_by,
            self._pid,
        )
        self._buf.append(line)
        self._size += len(line)
        if self._size > FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._out is None:
            self._buf.clear()
            self._size = 0
            return
        if not self._buf:
            return
        data = "".join(self._buf).encode("utf-8", "replace")
        self._buf.clear()
        self._size = 0
        try:
            self._out.write(data)
            self._out.flush()
        except OSError:
            # A full disk or closed pipe must not take the proxy down; lines are lost.
            pass

    def close(self) -> None:
        self.flush()
        out, self._out = self._out, None
        if out is not None and out is not sys.stdout.buffer:
            # Lines a full disk refused are lost; shutdown goes on.
            with contextlib.suppress(OSError):
                out.close()
