"""splitproxy — an edge reverse proxy that makes deployments safe.

How a request travels, and which module owns each step::

    client ──TCP──▶ forwarder.ClientConnection      (asyncio.Protocol + httptools; the hot path)
                      │  routing.Table.match()       which route: host, longest path prefix   (pure)
                      │  routing.RoutePlan.choose()  which backend: override > sticky > weight (pure)
                      │  headers.request_head()      hop-by-hop out, X-Forwarded-* in         (pure)
                      ▼
                    upstream.UpstreamPool            idle keep-alive connections per instance
                    upstream.UpstreamConnection ──TCP──▶ the backend's instance
                      │  response parsed by httptools, streamed back through the client
                      ▼
                    runtime.Runtime.finished()       health, metrics, access log, shadow

The pure core — ``config`` (YAML → one frozen ``Config``), ``routing``, ``headers`` —
imports neither asyncio nor aiohttp and is tested without sockets. The shell around it:

- ``forwarder`` / ``upstream``: the data plane, written as protocol callbacks rather than
  on aiohttp's server and client, which cost ~7 times the CPU per request (PERF-NOTES.md);
- ``runtime``: the one mutable reference the data plane reads (``Runtime.table``), swapped
  whole by a reload or an admin change; connection pools; housekeeping ``tick``;
- ``server``: listeners, SIGHUP reload, SIGTERM drain; ``admin``: the aiohttp admin app;
  ``process``: what a serving process sets for itself (the cycle collector, glibc's allocator);
- ``errors``: upstream failures carrying the status they map to (502, 504);
- ``tasks``: the one way to start background work; ``demo``: the embedded default;
- ``__main__``: the command line, and the only place that exits.

Shadow traffic (``shadow``: mirrors teed off the live exchange, compared by ``diffing``
after the live answer is out), health (``balancer``, ``health``, ``checker``), metrics
and the state database (``store``, ``control``, ``report``) never hold up the live
request; the admin listener and ``--workers`` supervision live in ``admin`` and ``workers``.
"""

__version__ = "0.1.0"


def data_plane_build() -> str:
    """``"compiled"`` when the hot-path modules are mypyc extensions (setup.py,
    ``SPLITPROXY_COMPILE=1``), else ``"interpreted"``. Logged at start-up, shown by
    ``splitproxy --version`` and recorded by the benchmark."""
    from . import forwarder

    return "interpreted" if forwarder.__file__ is None or forwarder.__file__.endswith(".py") else "compiled"
