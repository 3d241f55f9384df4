"""The access log: one JSON object per request, on one line.

Written from the hot path, so it avoids the ``logging`` module (its record machinery
costs several µs a call) and ``json.dumps`` for fields that cannot need escaping:
route and backend names are restricted by the config, methods are HTTP tokens, paths
and request ids are escaped only when they hold anything but printable ASCII. The hot
path only appends the fields; lines are formatted and written in bulk when ``FLUSH_ROWS``
have gathered or on the next tick (``flush``), and at shutdown.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import IO

FLUSH_ROWS = 512  # lines kept before writing (and at least every tick, ~0.1 s)
Row = tuple[float, str, bytes, bytes, int, str, float, int, int, bytes, str]
_SAFE = frozenset(range(0x20, 0x7F)) - {ord('"'), ord("\\")}


def _text(raw: bytes) -> str:
    """A JSON string literal for bytes from the wire."""
    if _SAFE.issuperset(raw):
        return '"' + raw.decode("ascii") + '"'
    return json.dumps(raw.decode("utf-8", "replace"))


_LINE = (
    '{"ts":%s,"client":"%s","method":"%s","path":"%s","status":%d,%s,"duration_ms":%.3f,'
    '"bytes_in":%d,"bytes_out":%d,"request_id":"%s","by":"%s","pid":%d}\n'
)
_TOKENS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"CONNECT"})


def where(route: str, backend: str, upstream: str) -> str:
    """The route, backend and upstream fields (names the config restricts to safe characters)."""
    return f'"route":"{route}","backend":"{backend}","upstream":"{upstream}"'


class AccessLog:
    __slots__ = ("_out", "_pid", "_rows", "enabled", "target")

    def __init__(self, target: str) -> None:
        """``target``: ``-`` for standard output, ``off``, or a file path (appended to)."""
        self.target = target
        self.enabled = target != "off"
        self._rows: list[Row] = []
        self._pid = os.getpid()  # which worker served it, with --workers
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
        self.add(
            (
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
        )

    def add(self, row: Row) -> None:
        """The hot path's form of ``request``: the fields as they are, route, backend and
        upstream pre-rendered (``where``). Lines are formatted in bulk when flushed, which
        saves a call and its argument handling per request."""
        rows = self._rows
        rows.append(row)
        if len(rows) >= FLUSH_ROWS:
            self.flush()

    def _format(self, rows: list[Row]) -> str:
        out = []
        pid = self._pid
        last_ms = -1
        ts_text = ""
        safe = _SAFE.issuperset
        for ts, client, method, url, status, fields, duration, bytes_in, bytes_out, rid, by in rows:
            ms = int(ts * 1000)
            if ms != last_ms:  # the timestamp text changes once a millisecond, not per line
                last_ms = ms
                seconds, millis = divmod(ms, 1000)
                ts_text = f"{seconds}.{millis:03d}"
            out.append(
                _LINE
                % (
                    ts_text,
                    client,
                    method.decode("latin-1") if method in _TOKENS else _text(method)[1:-1],
                    url.decode("ascii") if safe(url) else _text(url)[1:-1],
                    status,
                    fields,
                    duration * 1000,
                    bytes_in,
                    bytes_out,
                    rid.decode("ascii") if safe(rid) else _text(rid)[1:-1],
                    by,
                    pid,
                )
            )
        return "".join(out)

    def flush(self) -> None:
        rows = self._rows
        if not rows:
            return
        self._rows = []
        if self._out is None:
            return
        data = self._format(rows).encode("utf-8", "replace")
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
