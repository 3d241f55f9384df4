"""Shadow upstreams that misbehave, for bench/run.py's `shadow-reset` and `shadow-huge`.

    python bench/bad_shadows.py RESET_PORT HUGE_PORT

Both listen on 127.0.0.1 and answer every request (keep-alive on the huge one):

- RESET_PORT: a 200 head announcing a 1 MiB body, 16 KiB of it, then a TCP reset
  (SO_LINGER 0): an upstream that crashes mid-body;
- HUGE_PORT: a 200 with a 50 MB body, written as fast as the client reads it, until it is
  all sent or the client goes: splitproxy reads a mirror's answer up to `shadow.max_body`
  and then drops the connection.

Runs until killed (run.py starts it in its own process group and ends it). Stdlib only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys

RESET_BODY = 1 << 20  # announced
RESET_SENT = 16 << 10  # sent before the reset
HUGE_BODY = 50_000_000
CHUNK = b"\0" * (1 << 20)
HEAD_END = b"\r\n\r\n"


def head(content_type: str, length: int) -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n").encode()


RESET_ANSWER = head("text/plain", RESET_BODY) + b"x" * RESET_SENT
HUGE_HEAD = head("application/octet-stream", HUGE_BODY)


async def resetting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        await reader.readuntil(HEAD_END)
        writer.write(RESET_ANSWER)
        await writer.drain()
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # with SO_LINGER 0: RST, not FIN


async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        while True:  # keep-alive: one answer per request head
            await reader.readuntil(HEAD_END)
            writer.write(HUGE_HEAD)
            left = HUGE_BODY
            while left:
                piece = CHUNK if left >= len(CHUNK) else CHUNK[:left]
                writer.write(piece)
                left -= len(piece)
                await writer.drain()
    writer.transport.abort()


async def serve(reset_port: int, huge_port: int) -> None:
    a = await asyncio.start_server(resetting, "127.0.0.1", reset_port, backlog=4096)
    b = await asyncio.start_server(huge, "127.0.0.1", huge_port, backlog=4096)
    async with a, b:
        await asyncio.gather(a.serve_forever(), b.serve_forever())


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not all(arg.isdigit() for arg in argv):
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(serve(int(argv[0]), int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
