"""Tier 2: instances that die and come back, ejection, retries, failover between versions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import pytest

from proxy.config import parse_text

from .conftest import Load, StartProxy, config_text, read_response


class Instance:
    """A raw keep-alive HTTP/1.1 upstream that can be killed (every connection reset, the
    port closed) and started again on the same port."""

    def __init__(self, name: str, status: int = 200) -> None:
        self.name = name
        self.status = status
        self.port = 0
        self.hits = 0
        self.bodies: list[bytes] = []
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.handlers: set[asyncio.Task[None]] = set()
        self.close_after_request = False  # read the whole request, then close without answering
        self.reset_on_request = False  # read the whole request, then reset the connection
        self.hold: asyncio.Event | None = None  # when set: requests wait for it before answering
        self.held = 0
        self.arrived = asyncio.Event()  # set whenever a request is held

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Instance:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                self.hits += 1
                self.heads.append(head)
                self.bodies.append(body)
                if self.close_after_request:
                    writer.close()
                    return
                if self.reset_on_request:
                    writer.transport.abort()
                    return
                if self.hold is not None and not self.hold.is_set():
                    self.held += 1
                    self.arrived.set()
                    await self.hold.wait()
                text = self.name.encode()
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (self.status, len(text), text))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()
            self.handlers.discard(task)

    def kill(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            if not w.transport.is_closing():
                w.transport.abort()
        self.writers.clear()
        if self.hold is not None:
            self.hold.set()  # held handlers end (their connections are gone)
        self.arrived.set()

    async def close(self) -> None:
        if self.server is not None:
            self.kill()
            # Let every connection's handler see its end before the loop goes away.
            await asyncio.gather(*self.handlers, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.server.wait_closed()


def backends(**spec: tuple[list[Instance], float]) -> dict[str, Any]:
    return {name: {"upstreams": [i.url for i in insts], "weight": w} for name, (insts, w) in spec.items()}


async def balancer_settles(balancer: Any, cond: Any, within: float = 5) -> None:
    """Wait until ``cond()`` holds, re-checked whenever the balancer changes who serves."""
    changed = asyncio.Event()
    balancer.listeners.append(changed.set)
    async with asyncio.timeout(within):
        while not cond():
            changed.clear()
            await changed.wait()


async def test_killed_instance_costs_no_request_and_comes_back(start_proxy: StartProxy) -> None:
    a = await Instance("a").start()
    b = await Instance("b").start()
    px = await start_proxy(
        [
            {
                "name": "main",
                "backends": backends(stable=([a, b], 1)),
                "outlier_detection": {"consecutive_failures": 2, "base_ejection": "300ms", "max_ejection": "1s"},
            }
        ],
        access_log="off",
    )
    try:
        async with Load(px.url) as load:
            results = load.answered
            await load.until(lambda: results["a"] > 50 and results["b"] > 50)
            b.kill()
            mark = results.copy()
            await load.until(lambda: results["a"] - mark["a"] > 300)
            counts = px.server.runtime.counts.extra_counters
            assert sum(counts.get("splitproxy_outlier_ejections", {}).values()) >= 1
            # b is out of rotation: what it served after the kill is at most what was in flight.
            assert results["b"] - mark["b"] <= 4
            # It comes back on the same port and, once its ejection ran out, serves again.
            await b.start()
            mark = results.copy()
            await load.until(lambda: results["b"] - mark["b"] > 20)
    finally:
        await a.close()
        await b.close()
    assert load.failures == []  # every idempotent request was retried elsewhere


async def test_dead_canary_fails_over_to_baseline_and_sticky_users_return(start_proxy: StartProxy) -> None:
    stable = await Instance("stable").start()
    canary = await Instance("canary").start()
    route = {
        "name": "main",
        "backends": backends(stable=([stable], 50), canary=([canary], 50)),
        "sticky": {"by": "header", "name": "X-User"},
        "health_check": {"path": "/healthz", "interval": "100ms", "timeout": "50ms", "unhealthy_threshold": 1},
    }
    px = await start_proxy([route], access_log="off")
    users = [f"u{i}" for i in range(40)]

    async def who(session: aiohttp.ClientSession, user: str) -> str:
        async with session.get(px.url + "/", headers={"X-User": user}) as r:
            assert r.status == 200, await r.text()
            return (await r.read()).decode()

    async with aiohttp.ClientSession() as s:
        before = {u: await who(s, u) for u in users}
        on_canary = [u for u, b in before.items() if b == "canary"]
        assert on_canary
        canary.kill()
        # Right away — before any health check noticed — refused connections go to the
        # baseline: zero failed requests, even in the window before failover.
        during = {u: await who(s, u) for u in users}
        assert set(during.values()) == {"stable"}
        balancer = px.server.runtime.balancer
        await balancer_settles(balancer, lambda: balancer.down)  # the active check marks it down
        assert {u: await who(s, u) for u in users} == dict.fromkeys(users, "stable")
        # The canary comes back: its sticky users return to it.
        await canary.start()
        await balancer_settles(balancer, lambda: not balancer.down)
        after = {u: await who(s, u) for u in users}
    await stable.close()
    await canary.close()
    assert after == before
    counts = px.server.runtime.counts.extra_counters.get("splitproxy_failovers", {})
    assert sum(counts.values()) >= len(on_canary)


async def test_a_shadow_its_health_checks_have_down_is_not_mirrored_to(start_proxy: StartProxy) -> None:
    """QA (seventh round, a side note): a shadow backend whose checks failed on every
    instance still got every mirror. Now it is not dialled while down, the mirrors end as
    errors at once, and mirroring resumes when it passes its checks again."""
    from .test_shadow import outcomes, wait_outcome

    stable = await Instance("stable").start()
    candidate = await Instance("candidate", status=500).start()  # its health check fails
    route = {
        "name": "main",
        "backends": backends(stable=([stable], 100), candidate=([candidate], 0)),
        "shadow": {"backend": "candidate", "percent": 100, "noise": {"percent": 0}},
        "health_check": {"path": "/healthz", "interval": "100ms", "timeout": "50ms", "unhealthy_threshold": 1},
    }
    px = await start_proxy([route], access_log="off")
    balancer = px.server.runtime.balancer

    def mirrors() -> int:
        return sum(b"x-shadow-request: 1" in h.lower() for h in candidate.heads)

    try:
        await balancer_settles(balancer, lambda: balancer.down)
        async with aiohttp.ClientSession() as s:
            for _ in range(10):
                async with s.get(px.url + "/x") as r:
                    assert (r.status, await r.read()) == (200, b"stable")
            assert mirrors() == 0
            assert outcomes(px) == {"error": 10}
            candidate.status = 200
            await balancer_settles(balancer, lambda: not balancer.down)
            async with s.get(px.url + "/x") as r:
                assert r.status == 200
            await wait_outcome(px, "compared", 1)
        assert mirrors() == 1
    finally:
        await stable.close()
        await candidate.close()


async def test_requests_in_flight_when_a_canary_dies_are_the_bound_on_failures(start_proxy: StartProxy) -> None:
    """The bound: only requests already sent to the canary when it dies can fail (their
    upstream may have acted on them); every request after that reaches the baseline."""
    stable = await Instance("stable").start()
    canary = await Instance("canary").start()
    route = {
        "name": "main",
        "backends": backends(stable=([stable], 0), canary=([canary], 100)),
        "baseline": "stable",
        "health_check": {"path": "/healthz", "interval": "100ms", "timeout": "50ms", "unhealthy_threshold": 1},
    }
    px = await start_proxy([route], access_log="off")
    canary.hold = asyncio.Event()  # canary answers nothing until released (or killed)
    in_flight = 5
    async with aiohttp.ClientSession() as s:

        async def get() -> int:
            async with s.get(px.url + "/x") as r:
                await r.read()
                return r.status

        flying = [asyncio.ensure_future(get()) for _ in range(in_flight)]
        async with asyncio.timeout(5):
            while canary.held < in_flight:  # every one of them reached the canary
                canary.arrived.clear()
                await canary.arrived.wait()
        canary.kill()
        statuses = await asyncio.gather(*flying)
        after = [await get() for _ in range(20)]
    await stable.close()
    await canary.close()
    failed = sum(status != 200 for status in statuses)
    assert failed <= in_flight  # the bound
    assert after == [200] * 20  # nothing after the death fails


async def test_a_canary_dead_behind_idle_connections_fails_over_to_the_baseline(start_proxy: StartProxy) -> None:
    """QA (seventh round): a canary killed under load left idle pooled connections that only
    failed once used; each keep-alive race retried on the next of them, the retries ran out
    before the refused connect that fails over to the baseline, and the client got a 502."""
    stable = await Instance("stable").start()
    canary = await Instance("canary").start()
    route = {"name": "main", "backends": backends(stable=([stable], 0), canary=([canary], 100)), "baseline": "stable"}
    px = await start_proxy([route], access_log="off")
    canary.hold = asyncio.Event()
    async with aiohttp.ClientSession() as s:

        async def get() -> tuple[int, str]:
            async with s.get(px.url + "/x") as r:
                return r.status, (await r.read()).decode()

        warm = [asyncio.ensure_future(get()) for _ in range(4)]  # four connections to the canary
        async with asyncio.timeout(5):
            while canary.held < 4:
                canary.arrived.clear()
                await canary.arrived.wait()
        canary.hold.set()
        assert await asyncio.gather(*warm) == [(200, "canary")] * 4
        # The canary dies as the proxy does not see: its port refuses, and each connection
        # the proxy keeps is reset by the next request it carries.
        assert canary.server is not None
        canary.server.close()
        canary.reset_on_request = True
        assert await get() == (200, "stable")
    await stable.close()
    await canary.close()
    assert canary.hits == 5  # the four, and the one request that met a dead connection
    counts = px.server.runtime.counts.extra_counters.get("splitproxy_failovers", {})
    assert counts == {("main", "canary"): 1}


async def test_post_whose_body_was_sent_is_not_retried(start_proxy: StartProxy) -> None:
    a = await Instance("a").start()
    b = await Instance("b").start()
    a.close_after_request = b.close_after_request = True
    px = await start_proxy([{"name": "main", "backends": backends(stable=([a, b], 1))}], access_log="off")
    reader, writer = await asyncio.open_connection("127.0.0.1", px.port)
    writer.write(b"POST /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    resp = await read_response(reader)
    writer.close()
    assert resp.status == 502
    assert a.hits + b.hits == 1  # sent once, never again
    assert (a.bodies + b.bodies) == [b"hello"]
    # A GET on a new connection that the upstream closes after reading it is not the
    # keep-alive race either: the upstream may have acted on it, so it is not sent again.
    async with aiohttp.ClientSession() as s, s.get(px.url + "/read") as r:
        assert r.status == 502
    assert a.hits + b.hits == 2
    await a.close()
    await b.close()


async def test_ejection_back_off_grows_and_caps(start_proxy: StartProxy) -> None:
    bad = await Instance("bad", status=500).start()
    good = await Instance("good").start()
    px = await start_proxy(
        [
            {
                "name": "main",
                "backends": backends(stable=([bad, good], 1)),
                "outlier_detection": {
                    "consecutive_failures": 1,
                    "base_ejection": "200ms",
                    "max_ejection": "400ms",
                    "max_ejection_percent": 50,
                },
            }
        ],
        access_log="off",
    )
    balancer = px.server.runtime.balancer
    (bh,) = [b for b in balancer.backends.values() if b.backend.name == "stable"]
    state = bh.avail.outliers[0]
    seen: list[float] = []
    async with aiohttp.ClientSession() as s, asyncio.timeout(10):
        while len(seen) < 4:
            async with s.get(px.url + "/") as r:
                await r.read()
            now = px.server.runtime.now()
            if state.is_ejected(now) and (not seen or state.ejected_until != seen[-1]):
                assert state.ejected_until is not None
                seen.append(state.ejected_until)
                durations = state.policy.ejection_time(state.level)
                assert durations in (0.2, 0.4)
    levels = [state.policy.ejection_time(n) for n in (1, 2, 3, 4)]
    assert levels == [0.2, 0.4, 0.4, 0.4]  # grows, then caps
    assert state.level >= 2
    await bad.close()
    await good.close()


async def test_health_is_visible_in_the_admin_api_and_metrics(start_proxy: StartProxy) -> None:
    up = await Instance("up").start()
    down = await Instance("down").start()
    route = {
        "name": "main",
        "backends": backends(stable=([up, down], 1)),
        "health_check": {"path": "/healthz", "interval": "100ms", "timeout": "50ms", "unhealthy_threshold": 1},
    }
    px = await start_proxy([route], access_log="off")
    down.kill()
    async with aiohttp.ClientSession() as s, asyncio.timeout(5):
        while True:
            async with s.get(px.admin_url + "/api/v1/routes/main") as r:
                doc = await r.json()
            ups = {u["url"]: u for u in doc["backends"][0]["upstreams"]}
            if not ups[down.url]["healthy"]:
                break
            await asyncio.sleep(0.05)
        async with s.get(px.admin_url + "/metrics") as r:
            text = await r.text()
    assert ups[up.url]["healthy"] is True
    assert ups[down.url]["check"]["consecutive_fail"] >= 1
    assert 'splitproxy_backend_healthy_upstreams{backend="stable",route="main"} 1.0' in text
    await up.close()
    await down.close()


async def test_a_route_removed_while_down_is_not_logged_as_recovered(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """QA (seventh round): removing a route whose backend its checks had down logged
    "recovered: route dead, backend ... takes its traffic again" (alerts key on that line)."""
    live = await Instance("live").start()
    dead = await Instance("dead", status=500).start()
    check = {"path": "/hc", "interval": "100ms", "timeout": "50ms", "unhealthy_threshold": 1}
    kept = {"name": "main", "backends": backends(stable=([live], 1))}
    gone = {"name": "dead", "match": {"path_prefix": "/dead"}, "backends": backends(only=([dead], 1))}
    px = await start_proxy([kept, {**gone, "health_check": check}], access_log="off")
    balancer = px.server.runtime.balancer
    await balancer_settles(balancer, lambda: bool(balancer.down))
    caplog.set_level(logging.INFO, logger="splitproxy")
    await px.server.controller.reload(parse_text(config_text(px.tmp, [kept], access_log="off")))
    assert px.server._active_down == frozenset()
    assert not balancer.down
    assert [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()] == []
    await live.close()
    await dead.close()


async def test_a_reload_keeps_ejections_through_new_outlier_settings_and_ends_them_when_off(
    start_proxy: StartProxy,
) -> None:
    """QA: any change of `outlier_detection` wiped every ejection and failure streak of the
    route (users got the bad instance's 500s again at once), while `enabled: false` kept an
    instance ejected for up to max_ejection after the operator had turned detection off."""
    bad = await Instance("bad", status=500).start()
    good = await Instance("good").start()

    def routes(**outliers: Any) -> list[dict[str, Any]]:
        od = {"consecutive_failures": 1, "base_ejection": "30s", "max_ejection_percent": 50, **outliers}
        return [{"name": "main", "backends": backends(stable=([bad, good], 1)), "outlier_detection": od}]

    px = await start_proxy(routes(), access_log="off")
    balancer = px.server.runtime.balancer

    def bad_state() -> Any:
        (bh,) = balancer.backends.values()
        return bh.avail.outliers[0]

    async with aiohttp.ClientSession() as s, asyncio.timeout(10):
        while not bad_state().is_ejected(px.server.runtime.now()):
            async with s.get(px.url + "/") as r:
                await r.read()
        until = bad_state().ejected_until
        await px.server.controller.reload(
            parse_text(config_text(px.tmp, routes(max_ejection_percent=60), access_log="off"))
        )
        assert bad_state().ejected_until == until  # kept, under the new settings
        assert bad_state().policy.max_ejection_percent == 60
        hits = bad.hits
        for _ in range(4):
            async with s.get(px.url + "/") as r:
                assert r.status == 200
        assert bad.hits == hits
        await px.server.controller.reload(parse_text(config_text(px.tmp, routes(enabled=False), access_log="off")))
        assert not bad_state().is_ejected(px.server.runtime.now())
        for _ in range(4):
            async with s.get(px.url + "/") as r:
                await r.read()
        assert bad.hits == hits + 2  # back in the round-robin at once
    await bad.close()
    await good.close()


async def test_an_instance_down_by_checks_serves_again_once_it_is_no_longer_probed(start_proxy: StartProxy) -> None:
    """QA: an instance down by its health checks when a reload stopped probing it (the
    check removed, the instance or its route gone) stayed down for good: no probe would
    ever report it up, and its backend failed over until a restart."""
    stable = await Instance("stable").start()
    canary = await Instance("canary", status=500).start()

    def routes(checked: bool) -> list[dict[str, Any]]:
        r: dict[str, Any] = {"name": "main", "backends": backends(stable=([stable], 0), canary=([canary], 1))}
        r["baseline"] = "stable"
        if checked:
            r["health_check"] = {"path": "/hc", "interval": "100ms", "timeout": "50ms", "unhealthy_threshold": 1}
        return [r]

    px = await start_proxy(routes(checked=True), access_log="off")
    balancer = px.server.runtime.balancer
    await balancer_settles(balancer, lambda: bool(balancer.down))  # the canary failed its probe
    canary.status = 200
    await px.server.controller.reload(parse_text(config_text(px.tmp, routes(checked=False), access_log="off")))
    assert px.server._active_down == frozenset()
    assert not balancer.down
    before = (stable.hits, canary.hits)  # the probes stopped with the reload
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.get(px.url + "/") as r:
                assert r.status == 200
    assert (stable.hits, canary.hits) == (before[0], before[1] + 3)  # its own traffic, no failover
    await stable.close()
    await canary.close()


async def test_upstream_errors_are_logged_once_a_second_with_a_count(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """QA (eighth round): every refused connect was a WARNING line of its own (a dead canary
    under wrk: 59,779 lines, 11.5 MB in 10 s). Now a line per upstream and reason once a
    second at most, saying how many more there were; the metric counts every one."""
    dead = await Instance("dead").start()
    await dead.close()  # its port now refuses
    px = await start_proxy([{"name": "main", "backends": backends(only=([dead], 1))}], access_log="off")
    rt = px.server.runtime
    clock = [rt.now()]
    rt.now = lambda: clock[0]

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("upstream error:")]

    def counted() -> int:  # each request tries a few times: each try is an error
        return sum(
            n for (route, _, reason), n in rt.counts.upstream_errors.items() if (route, reason) == ("main", "connect")
        )

    caplog.set_level(logging.WARNING, logger="splitproxy")
    async with aiohttp.ClientSession() as s:
        for _ in range(20):
            async with s.get(px.url + "/x") as r:
                assert r.status == 502
        assert len(lines()) == 1
        before = counted()
        assert before >= 20
        clock[0] += 1.01
        async with s.get(px.url + "/x") as r:
            assert r.status == 502
    first, second = lines()
    assert "reason=connect" in first
    assert f"({before - 1} more like it since the last such line)" in second
