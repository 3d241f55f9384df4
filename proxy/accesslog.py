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


class AccessLog:
    __slots__ = ("_buf", "_out", "_pid", "_size", "enabled", "target")

    def __init__(self, target: str) -> None:
        """``target``: ``-`` for standard output, ``off``, or a file path (appended to)."""
        self.target = target
        self.enabled = target != "off"
        self._buf: list[str] = []
        self._size = 0
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
        line = (
            f'{{"ts":{ts:.3f},"client":"{client.decode("latin-1")}","method":"{method.decode("latin-1")}",'
            f'"path":{_text(url)},"status":{status},"route":"{route}","backend":"{backend}",'
            f'"upstream":"{upstream}","duration_ms":{duration * 1000:.3f},"bytes_in":{bytes_in},'
            f'"bytes_out":{bytes_out},"request_id":{_text(request_id)},"by":"{decided_by}","pid":{self._pid}}}\n'
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
