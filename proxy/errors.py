"""Errors at the upstream boundary, each carrying the status it maps to (httpcore style).

One ``except UpstreamError as e`` turns any of them into a response with ``e.status``;
``e.reason`` is the ``reason`` label of ``splitproxy_upstream_errors_total``.
"""

from __future__ import annotations


class UpstreamError(Exception):
    status = 502
    reason = "reset"


class UpstreamConnectError(UpstreamError):
    """The upstream refused or did not accept the connection."""

    status = 502
    reason = "connect"


class UpstreamTimeout(UpstreamError):
    """Connecting or waiting for the response took longer than the configured time-out."""

    status = 504
    reason = "timeout"


class UpstreamReset(UpstreamError):
    """The upstream closed or broke the connection, or sent something that is not HTTP."""

    status = 502
    reason = "reset"
