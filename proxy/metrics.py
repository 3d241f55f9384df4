"""Prometheus metrics (SPEC §6): counted cheaply on the hot path, exposed on the admin listener.

The hot path does not touch prometheus-client objects: ``Counts`` keeps plain dicts keyed
by label tuples, and a request costs two dict updates and a bisect (PERF-NOTES: a labelled
Counter + Histogram costs ~1-3 µs a request; this costs a fraction). A custom collector
turns the counts into metric families at scrape time. ``Counts`` is plain data: workers
send theirs to the supervisor, which sums them (``merge``), so ``/metrics`` reports the
whole process group.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Buckets suited to a proxy: 1 ms … 10 s (issue 3); +Inf is implicit.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

# Labels stay bounded (SPEC §6): methods outside this set are counted as OTHER.
KNOWN_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"CONNECT", b"TRACE"})
_METHOD_LABEL = {m: m.decode() for m in KNOWN_METHODS}
_STATUS_LABEL = {code: str(code) for code in range(100, 600)}


@dataclass
class Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound falls in that bucket (le = "less or equal").
        self.buckets[bisect_left(DURATION_BUCKETS, value)] += 1
        self.total += value


@dataclass
class Counts:
    """Everything counted in one process, keyed by label values."""

    requests: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    durations: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    upstream_errors: dict[tuple[str, str, str], int] = field(default_factory=dict)
    shadow_durations: dict[tuple[str, str], Histogram] = field(default_factory=dict)  # (route, role)
    # Filled by later features (shadow, health), same shape: labels → count.
    extra_counters: dict[str, dict[tuple[str, ...], int]] = field(default_factory=dict)

    def request(self, route: str, backend: str, method: bytes, status: int, seconds: float) -> None:
        key = (route, backend, _METHOD_LABEL.get(method, "OTHER"), _STATUS_LABEL.get(status) or str(status))
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        hist = self.durations.get((route, backend))
        if hist is None:
            hist = self.durations[(route, backend)] = Histogram()
        # Histogram.observe, inlined: this runs once per request.
        hist.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        hist.total += seconds

    def shadow_duration(self, route: str, role: str, seconds: float) -> None:
        hist = self.shadow_durations.get((route, role))
        if hist is None:
            hist = self.shadow_durations[(route, role)] = Histogram()
        hist.observe(seconds)

    def upstream_error(self, route: str, backend: str, reason: str) -> None:
        key = (route, backend, reason)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def count(self, metric: str, labels: tuple[str, ...], n: int = 1) -> None:
        table = self.extra_counters.setdefault(metric, {})
        table[labels] = table.get(labels, 0) + n

    # -- between processes ----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": [[*k, v] for k, v in self.requests.items()],
            "durations": [[*k, h.buckets, h.total] for k, h in self.durations.items()],
            "upstream_errors": [[*k, v] for k, v in self.upstream_errors.items()],
            "shadow_durations": [[*k, h.buckets, h.total] for k, h in self.shadow_durations.items()],
            "extra": {m: [[list(k), v] for k, v in t.items()] for m, t in self.extra_counters.items()},
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Counts:
        c = cls()
        for *k, v in doc.get("requests", []):
            c.requests[tuple(k)] = int(v)
        for route, backend, buckets, total in doc.get("durations", []):
            c.durations[(route, backend)] = Histogram(list(buckets), float(total))
        for route, role, buckets, total in doc.get("shadow_durations", []):
            c.shadow_durations[(route, role)] = Histogram(list(buckets), float(total))
        for *k, v in doc.get("upstream_errors", []):
            c.upstream_errors[tuple(k)] = int(v)
        for metric, rows in doc.get("extra", {}).items():
            c.extra_counters[metric] = {tuple(k): int(v) for k, v in rows}
        return c


def merge(parts: Iterable[Counts]) -> Counts:
    out = Counts()
    for part in parts:
        for k, v in part.requests.items():
            out.requests[k] = out.requests.get(k, 0) + v
        for target_h, source_h in ((out.durations, part.durations), (out.shadow_durations, part.shadow_durations)):
            for hk, h in source_h.items():
                mine = target_h.setdefault(hk, Histogram())
                mine.buckets = [a + b for a, b in zip(mine.buckets, h.buckets, strict=True)]
                mine.total += h.total
        for ek, v in part.upstream_errors.items():
            out.upstream_errors[ek] = out.upstream_errors.get(ek, 0) + v
        for metric, table in part.extra_counters.items():
            target = out.extra_counters.setdefault(metric, {})
            for lk, v in table.items():
                target[lk] = target.get(lk, 0) + v
    return out


def _histogram(
    name: str, doc: str, labels: tuple[str, str], table: Mapping[tuple[str, str], Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    bounds = [*(repr(b) for b in DURATION_BUCKETS), "+Inf"]
    for key, h in sorted(table.items()):
        running = 0
        cumulative = []
        for bound, n in zip(bounds, h.buckets, strict=True):
            running += n
            cumulative.append((bound, running))
        family.add_metric(list(key), cumulative, h.total)
    return family


@dataclass(frozen=True)
class CounterSpec:
    """A counter kept in ``Counts.extra_counters``, declared by the feature that counts it."""

    name: str
    help: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class GaugeSample:
    labels: tuple[str, ...]
    value: float


class SplitproxyCollector(Collector):
    """Builds the metric families from the counts at scrape time."""

    def __init__(
        self,
        *,
        counts: Callable[[], Counts],
        weights: Callable[[], Mapping[str, Mapping[str, float]]],
        config_version: Callable[[], int],
        healthy_upstreams: Callable[[], Iterable[GaugeSample]],
        reloads: Callable[[], tuple[Mapping[str, int], bool]] = lambda: ({}, True),
        configured: Callable[[], Mapping[str, Collection[str]]] | None = None,
        extra_counters: Iterable[CounterSpec] = (
            CounterSpec(
                "splitproxy_shadow_requests",
                "Mirrored requests by outcome: compared, dropped_full, skipped_body, skipped_method, timeout, error.",
                ("route", "outcome"),
            ),
            CounterSpec(
                "splitproxy_retries",
                "Requests sent again after an upstream failed before answering, by reason.",
                ("route", "backend", "reason"),
            ),
            CounterSpec(
                "splitproxy_outlier_ejections",
                "Instances ejected after consecutive failures of live requests, by route and backend.",
                ("route", "backend"),
            ),
            CounterSpec(
                "splitproxy_failovers",
                "Requests sent to the route's baseline instead of their backend: down (no instance passing its health "
                "checks), every instance refused the connection, or removed by a reload.",
                ("route", "backend"),
            ),
            CounterSpec(
                "splitproxy_shadow_diffs",
                "Mirrored requests whose answers differed, by endpoint and kind: real (a real field "
                "differed) or noise (only noise fields did).",
                ("route", "endpoint", "kind"),
            ),
        ),
    ) -> None:
        self._counts = counts
        self._weights = weights
        self._config_version = config_version
        self._healthy = healthy_upstreams
        self._reloads = reloads
        self._extra = tuple(extra_counters)
        self._configured = configured

    def _in_config(self) -> Callable[[tuple[str, ...], tuple[str, ...]], bool]:
        """Whether a series' route (and backend, where it has one) is in the config in force:
        a route or backend a reload removed leaves /metrics, as Envoy drops a removed
        cluster's stats (its counts are kept, and go on if it comes back). Requests that
        matched no route (route "") and those that reached no backend stay."""
        if self._configured is None:
            return lambda labels, names: True
        routes = self._configured()

        def kept(labels: tuple[str, ...], names: tuple[str, ...]) -> bool:
            route = labels[0]
            if route == "":
                return True
            backends = routes.get(route)
            if backends is None:
                return False
            if len(names) > 1 and names[1] == "backend":
                return labels[1] == "" or labels[1] in backends
            return True

        return kept

    def collect(self) -> Iterator[Metric]:
        c = self._counts()
        kept = self._in_config()
        requests = CounterMetricFamily(
            "splitproxy_requests", "Requests answered, by route, backend, method and status code.",
            labels=("route", "backend", "method", "code"),
        )  # fmt: skip
        names4 = ("route", "backend", "method", "code")
        for labels, v in sorted(c.requests.items()):
            if kept(labels, names4):
                requests.add_metric(labels, v)
        yield requests

        yield _histogram(
            "splitproxy_request_duration_seconds",
            "Time from the request's first byte to the response's last, by route and backend.",
            ("route", "backend"),
            {k: h for k, h in c.durations.items() if kept(k, ("route", "backend"))},
        )
        yield _histogram(
            "splitproxy_shadow_duration_seconds",
            "Latency of mirrored requests: the live answer and the shadow's, by route and role.",
            ("route", "role"),
            {k: h for k, h in c.shadow_durations.items() if kept(k, ("route", "role"))},
        )

        errors = CounterMetricFamily(
            "splitproxy_upstream_errors", "Upstream failures, by reason: connect, timeout, reset.",
            labels=("route", "backend", "reason"),
        )  # fmt: skip
        for labels3, v in sorted(c.upstream_errors.items()):
            if kept(labels3, ("route", "backend", "reason")):
                errors.add_metric(labels3, v)
        yield errors

        weights = GaugeMetricFamily(
            "splitproxy_backend_weight", "The weight as set (not the share).", labels=("route", "backend")
        )
        for route, ws in sorted(self._weights().items()):
            for backend, w in ws.items():
                weights.add_metric([route, backend], w)
        yield weights

        healthy = GaugeMetricFamily(
            "splitproxy_backend_healthy_upstreams",
            "Instances of a backend passing their active health checks (when it has some) and not ejected; "
            "0 for a down backend, even one whose instances are tried anyway.",
            labels=("route", "backend"),
        )
        for sample in self._healthy():
            healthy.add_metric(list(sample.labels), sample.value)
        yield healthy

        version = GaugeMetricFamily("splitproxy_config_version", "The version of the weights and config in force.")
        version.add_metric([], self._config_version())
        yield version

        counts, last_ok = self._reloads()
        reloads = CounterMetricFamily(
            "splitproxy_config_reloads",
            "Reloads of the config file (SIGHUP), by result: applied, or refused (a bad file: the running "
            "config stays).",
            labels=("result",),
        )
        for result, n in sorted(counts.items()):
            reloads.add_metric([result], n)
        yield reloads
        last = GaugeMetricFamily(
            "splitproxy_config_last_reload_successful",
            "1 if the last reload of the config file was applied (or none was asked for), 0 if it was refused.",
        )
        last.add_metric([], 1 if last_ok else 0)
        yield last

        for spec in self._extra:
            family = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
            for labels_n, v in sorted(c.extra_counters.get(spec.name, {}).items()):
                if spec.labels[0] != "route" or kept(labels_n, spec.labels):
                    family.add_metric(list(labels_n), v)
            yield family
