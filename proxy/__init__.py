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
                    runtime.Runtime.finished()       access log (accesslog), observers

The pure core — ``config`` (YAML → one frozen ``Config``), ``routing``, ``headers`` —
imports neither asyncio nor aiohttp and is tested without sockets. The shell around it:

- ``forwarder`` / ``upstream``: the data plane, written as protocol callbacks rather than
  on aiohttp's server and client, which cost ~7 times the CPU per request (PERF-NOTES.md);
- ``runtime``: the one mutable reference the data plane reads (``Runtime.table``), swapped
  whole by a reload or an admin change; connection pools; housekeeping ``tick``;
- ``server``: listeners, SIGHUP reload, SIGTERM drain; ``admin``: the aiohttp admin app;
- ``errors``: upstream failures carrying the status they map to (502, 504);
- ``tasks``: the one way to start background work; ``demo``: the embedded default;
- ``__main__``: the command line, and the only place that exits.

Shadow traffic, its diffs, metrics and the state database hang off ``Runtime`` observers
and the admin listener, never off the live request's path.
"""

__version__ = "0.1.0"
