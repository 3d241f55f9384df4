"""Stickiness, weight changes and metrics across worker processes and separate proxies."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from pathlib import Path

import aiohttp

from .conftest import StartProcess, StartProxy, StartUpstream, Upstream, config_text, read_response, route

KEYS = [f"user-{i}" for i in range(200)]


def sticky_route(stable: Upstream, canary: Upstream, ws: float, wc: float) -> dict:
    r = route(stable=(stable, ws), canary=(canary, wc))
    r["sticky"] = {"by": "header", "name": "X-User"}
    return r


async def one_request(port: int, headers: dict[str, str] | None = None, path: str = "/") -> dict:
    """A request on a new connection, so that the kernel may hand it to any worker."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())
        resp = await read_response(reader)
    finally:
        writer.close()
    assert resp.status == 200, resp
    return json.loads(resp.body)


async def assignments(port: int) -> dict[str, str]:
    out = {}
    for key in KEYS:
        out[key] = (await one_request(port, {"X-User": key}))["upstream"]
    return out


async def test_two_workers_agree_on_sticky_users_and_follow_weight_changes(
    tmp_path: Path, start_upstream: StartUpstream, proxy_process: StartProcess
) -> None:
    stable = await start_upstream("stable")
    canary = await start_upstream("canary")
    cfg = tmp_path / "splitproxy.yaml"
    cfg.write_text(config_text(tmp_path, [sticky_route(stable, canary, 70, 30)]))
    px = await proxy_process(cfg, "--workers", "2")
    assert any("(2 workers)" in line for line in px.lines)

    first = await assignments(px.port)
    second = await assignments(px.port)
    assert first == second, "a sticky user changed backend between two rounds"
    assert 0.15 < Counter(first.values())["canary"] / len(KEYS) < 0.45

    admin = f"http://127.0.0.1:{px.admin_port}"
    async with aiohttp.ClientSession() as s:
        # A change acknowledged by the API is in force in every worker at once.
        async with s.put(f"{admin}/api/v1/routes/main/weights", json={"weights": {"stable": 0, "canary": 100}}) as r:
            assert r.status == 200, await r.text()
        after = await asyncio.gather(*(one_request(px.port, {"X-User": k}) for k in KEYS[:100]))
        assert {a["upstream"] for a in after} == {"canary"}

        async with s.get(f"{admin}/metrics") as r:
            text = await r.text()
    # /metrics sums the workers: every request above is counted once.
    total = sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("splitproxy_requests_total{")
    )
    assert total == 2 * len(KEYS) + 100


async def test_every_serving_process_keeps_freed_memory(
    tmp_path: Path, start_upstream: StartUpstream, proxy_process: StartProcess
) -> None:
    # proxy/process.py's allocator setting (what it does: test_process.py) is made by the
    # supervising process and by each worker, which is a process of its own.
    stable = await start_upstream("stable")
    cfg = tmp_path / "splitproxy.yaml"
    cfg.write_text(config_text(tmp_path, [route(stable=stable)]))
    px = await proxy_process(cfg, "--workers", "2")
    lines: list[str] = []
    while len(lines) < 3:
        after = px.lines.index(lines[-1]) + 1 if lines else 0
        lines.append(await px.wait_for("allocator: glibc keeps up to 32 MiB", after=after))
    workers = {line.split("[worker ", 1)[1].split("]", 1)[0] for line in lines if "[worker " in line}
    assert len(workers) == 2, lines


async def test_both_workers_serve(tmp_path: Path, start_upstream: StartUpstream, proxy_process: StartProcess) -> None:
    up = await start_upstream()
    cfg = tmp_path / "splitproxy.yaml"
    cfg.write_text(config_text(tmp_path, [route(stable=up)]))
    px = await proxy_process(cfg, "--workers", "2")
    await asyncio.gather(*(one_request(px.port) for _ in range(200)))
    assert await px.stop() == 0  # flushes the workers' access logs
    px_pids: Counter[int] = Counter()
    for line in (tmp_path / "access.log").read_text().splitlines():
        px_pids[json.loads(line)["pid"]] += 1
    assert len(px_pids) == 2, px_pids  # SO_REUSEPORT spread the connections over both


async def test_two_separate_proxies_agree_on_sticky_users(
    tmp_path: Path, start_upstream: StartUpstream, proxy_process: StartProcess
) -> None:
    stable = await start_upstream("stable")
    canary = await start_upstream("canary")
    maps = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        cfg = d / "splitproxy.yaml"
        cfg.write_text(config_text(d, [sticky_route(stable, canary, 50, 50)]))
        px = await proxy_process(cfg)
        maps.append(await assignments(px.port))
    assert maps[0] == maps[1], "two replicas with the same config disagree"


async def test_rollout_is_monotone_under_load(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    """Canary 1 % → 5 % → 25 % → 50 % → 100 %: no user who reached canary goes back."""
    stable = await start_upstream("stable")
    canary = await start_upstream("canary")
    px = await start_proxy([sticky_route(stable, canary, 99, 1)], access_log="off")
    history: dict[str, list[str]] = defaultdict(list)
    stop = asyncio.Event()
    failures: list[str] = []

    async def background() -> None:
        async with aiohttp.ClientSession() as s:
            while not stop.is_set():
                async with s.get(px.url + "/bg") as r:
                    if r.status != 200:
                        failures.append(str(r.status))

    load = [asyncio.ensure_future(background()) for _ in range(4)]
    try:
        async with aiohttp.ClientSession() as s:
            for pct in (1, 5, 25, 50, 100):
                async with s.put(
                    px.admin_url + "/api/v1/routes/main/weights", json={"weights": {"stable": 100 - pct, "canary": pct}}
                ) as r:
                    assert r.status == 200
                for key in KEYS:
                    async with s.get(px.url + "/", headers={"X-User": key}) as r:
                        history[key].append((await r.json())["upstream"])
    finally:
        stop.set()
        await asyncio.gather(*load)
    assert failures == []
    for key, seen in history.items():
        if "canary" in seen:
            first = seen.index("canary")
            assert all(b == "canary" for b in seen[first:]), (key, seen)
    assert all(seen[-1] == "canary" for seen in history.values())
    shares = [sum(1 for seen in history.values() if seen[i] == "canary") / len(KEYS) for i in range(5)]
    assert shares == sorted(shares)
    assert shares[2] > 0.1  # around 25 %
