"""Interpreter cost of one proxied request, without sockets.

Drives the real ``ClientConnection`` and ``UpstreamConnection`` protocols with transports
that only record what is written, so the figure is the proxy's own Python work per
request (parse, route, rewrite, log) with the kernel's share left out. It is far steadier
than req/s on a shared machine, and it is the number to watch when changing the hot path.

    .venv/bin/python bench/bench_hotpath.py [--seconds 3] [--scenario routing]
    .venv-compiled/bin/python bench/bench_hotpath.py     # the mypyc build (make compiled)

It measures the ``proxy`` package that the running interpreter has installed (the source
tree in ``.venv``, an editable install; the compiled build in ``.venv-compiled``) and says
which.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

from proxy import data_plane_build
from proxy.config import parse_text
from proxy.forwarder import ClientConnection
from proxy.runtime import Runtime
from proxy.upstream import UpstreamConnection

REQUEST = b"GET /products/1 HTTP/1.1\r\nHost: shop.example.com\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 23 Nov 2026 16:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n" + b"x" * 100
)

SCENARIOS = {
    "routing": """
    backends:
      stable: {upstreams: ["http://127.0.0.1:9"], weight: 90}
      canary: {upstreams: ["http://127.0.0.1:9"], weight: 10}
    overrides:
      - {header: X-Canary, value: always, backend: canary}
""",
    "sticky": """
    backends:
      stable: {upstreams: ["http://127.0.0.1:9"], weight: 90}
      canary: {upstreams: ["http://127.0.0.1:9"], weight: 10}
    sticky: {by: header, name: User-Agent}
""",
}


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

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


def run(scenario: str, seconds: float, access_log: str) -> list[float]:
    loop = asyncio.new_event_loop()
    text = f"""
listen: "127.0.0.1:0"
access_log: "{access_log}"
routes:
  - name: bench
{SCENARIOS[scenario]}"""
    rt = Runtime(parse_text(text, "<bench>"), loop)
    pool = next(iter(rt.pools.values()))
    upstream = UpstreamConnection(pool)
    upstream.connection_made(RecordingTransport())
    pool.put(upstream)
    client = ClientConnection(rt)
    client_transport = RecordingTransport()
    client.connection_made(client_transport)

    def one() -> None:
        client.data_received(REQUEST)
        upstream.data_received(RESPONSE)

    for _ in range(2000):  # warm up
        one()
    samples = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        n = 5000
        t0 = time.perf_counter()
        for _ in range(n):
            one()
        samples.append((time.perf_counter() - t0) / n * 1e6)
        rt.access_log.flush()
    assert client_transport.written > 0, "requests were not answered"
    assert not client_transport.closing, "the connection was closed"
    rt.close()
    loop.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), action="append")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log_file = os.path.join(tmp, "access.log")
        print(f"data plane: {data_plane_build()}")
        print(f"{'scenario':<10} {'access log':<10} {'µs/request (median)':>20} {'min':>8}")
        for scenario in args.scenario or ["routing"]:
            for target in (log_file, "off"):
                samples = run(scenario, args.seconds, target)
                label = "file" if target != "off" else "off"
                print(f"{scenario:<10} {label:<10} {statistics.median(samples):>20.2f} {min(samples):>8.2f}")


if __name__ == "__main__":
    main()
