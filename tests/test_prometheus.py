"""Tier 2 with a real Prometheus: the canary-analysis templates work on splitproxy's metrics.

``config/flagger-metric-template.yaml`` (two Flagger MetricTemplates) and
``config/argo-analysis-template.yaml`` (an Argo Rollouts AnalysisTemplate) are loaded, their
queries rendered as Flagger and Argo Rollouts render them, and run on a real ``prometheus``
(Debian's package, installed by ``scripts/install-test-deps.sh``) that scrapes the real
proxy's admin ``/metrics`` every second. Traffic of a known mix goes to the canary backend —
fast answers, 500s and slow answers — and only fast answers to the stable one; the success
rate must come out as that mix, the p99 in the slow answers' bucket.

The one substitution beyond the route and backend: the rate() range. It is a template
variable in both files (Flagger's ``{{ interval }}``, the AnalysisTemplate's ``window``
argument, 1m by default); the test passes ``WINDOW`` as a Canary or a Rollout would, since
this Prometheus scrapes every second.

Prometheus runs with a config that names one scrape target and nothing else: no rules, no
alerting, no remote write; it listens on loopback only and is killed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml

from .conftest import StartProxy, StartUpstream, route

PROMETHEUS = Path("/usr/bin/prometheus")
ROOT = Path(__file__).resolve().parent.parent
FLAGGER = ROOT / "config" / "flagger-metric-template.yaml"
ARGO = ROOT / "config" / "argo-analysis-template.yaml"

needs_prometheus = pytest.mark.skipif(
    not PROMETHEUS.exists(),
    reason=f"{PROMETHEUS} is not installed: run `bash scripts/install-test-deps.sh` (make test does)",
)

SCRAPE_SECONDS = 1
WINDOW_SECONDS = 10
WINDOW = f"{WINDOW_SECONDS}s"
POLL = 0.25  # how often Prometheus's API is asked again while waiting for data
SLOW = 0.6  # seconds a slow answer takes: its durations land in the (0.5, 1] bucket

# ---- rendering the templates as Flagger and Argo Rollouts do ---------------------------------

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")


def render(query: str, values: Mapping[str, str]) -> str:
    """Replace every ``{{ name }}``; a name the controller would not know fails the test."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        assert name in values, f"{m.group(0)} is not a variable the controller provides ({sorted(values)})"
        return values[name]

    out = PLACEHOLDER.sub(value, query)
    assert "{{" not in out, out
    return " ".join(out.split())


def flagger_queries(route_name: str, backend: str, interval: str) -> dict[str, str]:
    """Each MetricTemplate's query, with the variables a Canary's analysis metric supplies:
    ``interval``, and ``templateVariables`` as ``variables.*`` (Flagger's docs, "Custom metrics")."""
    docs = [d for d in yaml.safe_load_all(FLAGGER.read_text()) if d]
    assert {d["kind"] for d in docs} == {"MetricTemplate"}
    assert {d["apiVersion"] for d in docs} == {"flagger.app/v1beta1"}
    values = {"interval": interval, "variables.route": route_name, "variables.backend": backend}
    out = {}
    for doc in docs:
        assert doc["spec"]["provider"]["type"] == "prometheus"
        out[doc["metadata"]["name"]] = render(doc["spec"]["query"], values)
    return out


@dataclass(frozen=True)
class ArgoMetric:
    query: str
    success_condition: str


def argo_metrics(args: Mapping[str, str]) -> dict[str, ArgoMetric]:
    """Each metric's query with ``{{args.NAME}}`` resolved as Argo Rollouts does: the value the
    Rollout passes, else the argument's default ``value`` from the template."""
    doc = yaml.safe_load(ARGO.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("argoproj.io/v1alpha1", "AnalysisTemplate")
    resolved = {a["name"]: a.get("value") for a in doc["spec"]["args"]}
    unknown = set(args) - set(resolved)
    assert not unknown, f"the template has no args {unknown}"
    resolved.update(args)
    missing = [name for name, v in resolved.items() if v is None]
    assert not missing, f"args without a value: {missing}"
    values = {f"args.{name}": str(v) for name, v in resolved.items()}
    return {
        m["name"]: ArgoMetric(render(m["provider"]["prometheus"]["query"], values), m["successCondition"])
        for m in doc["spec"]["metrics"]
    }


CONDITION = re.compile(r"result\[0\]\s*(<=|>=|<|>)\s*([0-9.]+)")


def holds(condition: str, result: float) -> bool:
    """Evaluate a ``successCondition`` of the form ``result[0] OP NUMBER`` (what the template
    uses; a new form fails here until the test learns it)."""
    m = CONDITION.fullmatch(condition.strip())
    assert m, f"unexpected successCondition {condition!r}"
    op, bound = m.group(1), float(m.group(2))
    return {"<=": result <= bound, ">=": result >= bound, "<": result < bound, ">": result > bound}[op]


def test_templates_are_named_as_the_readme_says_with_a_1m_default_window() -> None:
    """What users apply and reference by name; shortened windows are only the test's business."""
    flagger = [d for d in yaml.safe_load_all(FLAGGER.read_text()) if d]
    assert [d["metadata"]["name"] for d in flagger] == ["splitproxy-success-rate", "splitproxy-p99-latency"]
    argo = yaml.safe_load(ARGO.read_text())
    assert argo["metadata"]["name"] == "splitproxy-canary"
    assert [m["name"] for m in argo["spec"]["metrics"]] == ["success-rate", "p99-latency"]
    assert {a["name"]: a.get("value") for a in argo["spec"]["args"]} == {
        "route": None,
        "backend": "canary",
        "window": "1m",
    }


# ---- a real Prometheus -----------------------------------------------------------------------

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Prometheus:
    proc: asyncio.subprocess.Process
    url: str
    log: Path
    session: aiohttp.ClientSession

    async def query(self, expr: str, at: float | None = None) -> Any:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        async with self.session.get(self.url + "/api/v1/query", params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", body
        return body["data"]

    async def until(self, what: str, probe: Callable[[], Awaitable[T | None]], within: float = 30) -> T:
        """Ask ``probe`` again every POLL seconds until it returns something, for at most ``within``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            got = await probe()
            if got is not None:
                return got
            if self.proc.returncode is not None:
                raise AssertionError(f"prometheus exited ({self.proc.returncode}):\n{self.log.read_text()}")
            if loop.time() > deadline:
                raise AssertionError(
                    f"Prometheus did not show {what} within {within}s:\n{self.log.read_text()[-3000:]}"
                )
            await asyncio.sleep(POLL)


StartPrometheus = Callable[[list[str]], Awaitable[Prometheus]]


@pytest.fixture
async def prometheus(tmp_path: Path) -> AsyncIterator[StartPrometheus]:
    started: list[asyncio.subprocess.Process] = []

    async with aiohttp.ClientSession() as session:

        async def start(targets: list[str]) -> Prometheus:
            config = {
                "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "scrape_timeout": f"{SCRAPE_SECONDS}s"},
                "scrape_configs": [
                    {"job_name": "splitproxy", "metrics_path": "/metrics", "static_configs": [{"targets": targets}]}
                ],
            }
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
            port = free_port()
            log = tmp_path / "prometheus.log"
            with log.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    str(PROMETHEUS),
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                )
            started.append(proc)
            prom = Prometheus(proc, f"http://127.0.0.1:{port}", log, session)

            async def ready() -> bool | None:
                try:
                    async with session.get(prom.url + "/-/ready") as resp:
                        return True if resp.status == 200 else None
                except aiohttp.ClientConnectionError:
                    return None

            await prom.until("/-/ready", ready)
            return prom

        try:
            yield start
        finally:
            for proc in started:
                with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
                    proc.kill()
                await proc.wait()


# ---- the test --------------------------------------------------------------------------------

BACKENDS = ("canary", "stable")
CANARY_HEADERS = {"X-Canary": "always"}


@dataclass(frozen=True)
class Mix:
    """Requests of each kind; the canary gets all three kinds, stable only ``ok``."""

    ok: int
    errors: int
    slow: int

    @property
    def total(self) -> int:
        return self.ok + self.errors + self.slow


# The same proportions before and during the measured window: 4 in 5 canary answers are not 5xx.
PRIME = Mix(ok=15, errors=5, slow=5)
MEASURED = Mix(ok=60, errors=20, slow=20)
STABLE_PRIME, STABLE_MEASURED = 20, 50
CANARY_SUCCESS = (MEASURED.ok + MEASURED.slow) / MEASURED.total


async def drive(session: aiohttp.ClientSession, url: str, mix: Mix, stable: int) -> None:
    async def get(path: str, status: int, headers: dict[str, str]) -> None:
        async with session.get(url + path, headers=headers) as resp:
            assert resp.status == status, await resp.text()
            await resp.read()

    # The slow ones side by side, the rest one after another meanwhile.
    slow = [asyncio.ensure_future(get(f"/slow?s={SLOW}", 200, CANARY_HEADERS)) for _ in range(mix.slow)]
    for _ in range(mix.ok):
        await get("/ok", 200, CANARY_HEADERS)
    for _ in range(mix.errors):
        await get("/status/500", 500, CANARY_HEADERS)
    for _ in range(stable):
        await get("/ok", 200, {})
    await asyncio.gather(*slow)


def scalar(data: Any) -> float:
    assert data["resultType"] == "vector", data
    assert len(data["result"]) == 1, data
    return float(data["result"][0]["value"][1])


@needs_prometheus
async def test_canary_templates_evaluate_on_a_real_prometheus(
    start_upstream: StartUpstream, start_proxy: StartProxy, prometheus: StartPrometheus
) -> None:
    # Rendered first: a template that does not render fails before anything is started.
    flagger = {b: flagger_queries("main", b, WINDOW) for b in BACKENDS}
    argo = {b: argo_metrics({"route": "main", "backend": b, "window": WINDOW}) for b in BACKENDS}

    stable, canary = await start_upstream("stable"), await start_upstream("canary")
    main = route("main", stable=(stable, 100), canary=(canary, 0))
    main["overrides"] = [{"header": "X-Canary", "value": "always", "backend": "canary"}]
    px = await start_proxy([main])
    prom = await prometheus([f"127.0.0.1:{px.server.admin_port}"])
    series = '{__name__="splitproxy_requests_total",route="main"}'

    async def scraped() -> bool | None:
        data = await prom.query('up{job="splitproxy"}')
        return True if [r["value"][1] for r in data["result"]] == ["1"] else None

    async def settled() -> bool | None:
        # rate() counts only increases after a series' first sample, and extrapolates
        # differently for a series born inside the window: before the measured traffic,
        # every series must exist and have been scraped for longer than the window.
        data = await prom.query(f"count_over_time({series}[1m])")
        counts = [int(r["value"][1]) for r in data["result"]]
        return True if len(counts) == 3 and min(counts) >= WINDOW_SECONDS / SCRAPE_SECONDS + 2 else None

    final = {"canary": PRIME.total + MEASURED.total, "stable": STABLE_PRIME + STABLE_MEASURED}

    async def caught_up() -> float | None:
        # The raw samples of the last seconds: the newest scrape, its time and its values.
        data = await prom.query(f"{series}[{3 * SCRAPE_SECONDS}s]")
        newest = [r["values"][-1] for r in data["result"]]
        totals: dict[str, int] = {}
        for r, (_, v) in zip(data["result"], newest, strict=True):
            totals[r["metric"]["backend"]] = totals.get(r["metric"]["backend"], 0) + int(v)
        times = {ts for ts, _ in newest}
        return float(times.pop()) if totals == final and len(times) == 1 else None

    async with aiohttp.ClientSession() as session, asyncio.timeout(90):
        await prom.until("the proxy as a healthy target", scraped)
        await drive(session, px.url, PRIME, STABLE_PRIME)
        await prom.until("every series for longer than the window", settled, within=WINDOW_SECONDS + 30)
        await drive(session, px.url, MEASURED, STABLE_MEASURED)
        at = await prom.until("the final counts", caught_up)

        results: dict[tuple[str, str, str], float] = {}
        for backend in BACKENDS:
            for name, query in flagger[backend].items():
                results[("flagger", name, backend)] = scalar(await prom.query(query, at))
            for name, metric in argo[backend].items():
                results[("argo", name, backend)] = r = scalar(await prom.query(metric.query, at))
                # What the AnalysisRun would decide: the canary's 5xx and slow answers fail it.
                assert holds(metric.success_condition, r) is (backend == "stable"), (name, backend, r)

    assert set(results) == {
        (tool, name, backend)
        for tool, names in (
            ("flagger", ("splitproxy-success-rate", "splitproxy-p99-latency")),
            ("argo", ("success-rate", "p99-latency")),
        )
        for name in names
        for backend in BACKENDS
    }
    for backend in BACKENDS:
        success = results[("flagger", "splitproxy-success-rate", backend)]
        p99 = results[("flagger", "splitproxy-p99-latency", backend)]
        # Both files hold the same expressions.
        assert results[("argo", "success-rate", backend)] == pytest.approx(success)
        assert results[("argo", "p99-latency", backend)] == pytest.approx(p99)
        if backend == "canary":
            assert success == pytest.approx(CANARY_SUCCESS, abs=0.01)
            # 20 % of the answers took SLOW seconds: the 99th percentile is in their bucket.
            assert 0.5 < p99 <= 1.0
        else:
            assert success == 1.0
            assert p99 < 0.25
