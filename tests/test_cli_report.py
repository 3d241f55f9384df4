"""``splitproxy report``: the shadow-diff report from the command line.

Tier 3: a real ``splitproxy run`` in a subprocess (``ProxyProcess``) with a shadowed route in
front of two real upstreams. Both answer JSON with a field that differs for real between the
versions (``price``) and one that each version makes up per request (``stamp``, a uuid), so
only the noise replay (``noise.percent: 100``) can tell it is noise. Traffic goes through the
proxy; the installed ``splitproxy report`` then runs in its own process, as a user runs it.

Pure tests of the rendering (``proxy.client.render_report``) come first, as tables.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.client import clip_end, clip_middle, cols, latency_text, render_cleared, render_report, sample_lines, table

from .conftest import ProxyProcess, StartProcess, StartUpstream, Upstream, config_text, route
from .test_cli_client import CLIENT_ENV, Result
from .test_cli_client import splitproxy as run_cli

REQUESTS = 60
ENDPOINT = "GET /shop/items/{id}"


# ---- pure: rendering -------------------------------------------------------------------------


def _field(classification: str, differing: int, noise_differing: int, samples: int = 0) -> dict[str, Any]:
    return {
        "compared": 100,
        "differing": differing,
        "noise_compared": 20,
        "noise_differing": noise_differing,
        "rate": differing / 100,
        "noise_rate": noise_differing / 20,
        "classification": classification,
        "samples": [
            {
                "request": f"GET /users/{i}",
                "path": "$.user.name",
                "kind": "changed",
                "live": '"alice"',
                "shadow": '"Alice"',
                "live_status": 200,
                "shadow_status": 200,
                "live_body": "{}",
                "shadow_body": "{}",
            }
            for i in range(samples)
        ],
    }


def _endpoint(fields: dict[str, Any], compared: int = 100) -> dict[str, Any]:
    return {
        "compared": compared,
        "noise_compared": 20,
        "truncated": 0,
        "with_diff": 40,
        "with_real_diff": 30,
        "diff_rate": 0.4,
        "real_diff_rate": 0.3,
        "latency": {
            "live": {"count": compared, "p50": 0.0123, "p99": 0.25},
            "shadow": {"count": compared, "p50": 0.00045, "p99": None},
        },
        "fields_compared": 12,
        "fields_omitted": 0,
        "fields": fields,
    }


def _route(name: str, endpoints: dict[str, Any]) -> dict[str, Any]:
    compared = sum(e["compared"] for e in endpoints.values())
    return {
        "route": name,
        "shadow": {"backend": "v2", "percent": 50, "methods": ["GET"], "noise_percent": 10},
        "compared": compared,
        "noise_compared": 20 * len(endpoints),
        "with_diff": 40 * len(endpoints),
        "with_real_diff": 30 * len(endpoints),
        "thresholds": {"relative": 20.0, "absolute": 0.03},
        "endpoints": endpoints,
    }


def test_render_report_lists_real_fields_first_and_skips_fields_that_never_differed() -> None:
    fields = {
        "$.stamp": _field("noise", 100, 20),
        "$.user.name": _field("real", 30, 0),
        "header.x-only-live-vs-live": _field("none", 0, 1),
    }
    out = render_report({"routes": [_route("users", {"GET /users/{id}": _endpoint(fields)})]})
    lines = out.splitlines()
    assert lines[0] == "route users: shadow → v2, 50% of GET; noise replay 10%"
    assert lines[1] == "  compared 100: 30 with a real difference (30.0%), 40 with any (40.0%)"
    assert lines[2] == "  20 replays to the live version to learn its noise"
    assert lines[4].split() == ["ENDPOINT", "COMPARED", "DIFF", "REAL", "LIVE", "p50/p99", "SHADOW", "p50/p99"]
    assert lines[5].split() == ["GET", "/users/{id}", "100", "40.0%", "30.0%", "12.3/250", "ms", "0.45/-", "ms"]
    assert lines[6].split() == ["REAL", "$.user.name", "30.0%", "30/100", "vs", "noise", "0.0%", "0/20"]
    assert lines[7].split() == ["noise", "$.stamp", "100.0%", "100/100", "vs", "noise", "100.0%", "20/20"]
    assert "x-only-live-vs-live" not in out
    assert len(lines) == 8


def test_a_field_real_by_its_shape_says_so() -> None:
    """A field whose value is noise but which the shadow dropped (QA, eighth round): its line
    gives the differences of shape against the live version's own."""
    dropped = {**_field("real", 100, 20), "shape_differing": 100, "noise_shape_differing": 0}
    fields = {"$.rid": dropped, "$.stamp": _field("noise", 100, 20)}
    lines = render_report({"routes": [_route("users", {"GET /users/{id}": _endpoint(fields)})]}).splitlines()
    assert lines[6].split() == [
        "REAL",
        "$.rid",
        "100.0%",
        "100/100",
        "vs",
        "noise",
        "100.0%",
        "20/20",
        "(shape",
        "100",
        "vs",
        "0)",
    ]
    assert lines[7].split() == ["noise", "$.stamp", "100.0%", "100/100", "vs", "noise", "100.0%", "20/20"]


def test_render_report_fits_80_columns_with_long_names() -> None:
    long_endpoint = "GET /api/v2/organisations/{id}/projects/{id}/environments/{id}/deployments"
    long_key = "$.data.deployments[*].spec.template.spec.containers[*].resources.limits.memory"
    fields = {long_key: _field("real", 30, 0, samples=1), "$.b": _field("noise", 50, 10)}
    answer = {"routes": [_route("api", {long_endpoint: _endpoint(fields), "GET /x": _endpoint({})})]}
    lines = render_report(answer, 80, samples=True).splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    assert f"  {long_endpoint}" in lines  # on its own line, whole
    real = next(line for line in lines if line.lstrip().startswith("REAL"))
    key = real.split()[1]  # clipped in the middle: both ends of a path say something
    assert key == clip_middle(long_key, len(key))
    assert key.startswith("$.data.deploy")
    assert key.endswith("limits.memory")
    assert '         GET /users/0  200→200  $.user.name: "alice" → "Alice"' in lines


def test_render_report_with_nothing_to_show() -> None:
    assert render_report({"routes": []}) == "no shadowed routes (a route's `shadow:` section turns it on)"
    assert render_report({"routes": []}, route="plain") == "route plain has no shadow configured and no report"
    empty = _route("shop", {})
    assert render_report({"routes": [empty]}).splitlines()[1:] == ["  no comparisons yet"]
    assert render_cleared({"cleared": "all"}) == "cleared the shadow-diff report of every route"
    assert render_cleared({"cleared": "shop"}, "shop") == "cleared the shadow-diff report of route shop"


def test_render_report_never_sends_control_characters_to_the_terminal() -> None:
    evil = "GET /\x1b[2Jx/{id}"
    fields = {"$.a\nb": _field("real", 30, 0, samples=1)}
    fields["$.a\nb"]["samples"][0]["live"] = '"\x1b]0;pwned\x07"'
    out = render_report({"routes": [_route("r", {evil: _endpoint(fields)})]}, 200, samples=True)
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "\\x1b[2Jx" in out
    assert "$.a\\nb" in out


LATENCIES = {
    "sub-ms": ({"count": 3, "p50": 0.000161, "p99": 0.000538}, "0.16/0.54 ms"),
    "tens": ({"count": 3, "p50": 0.0125, "p99": 0.0999}, "12.5/99.9 ms"),
    "hundreds": ({"count": 3, "p50": 0.25, "p99": 1.5}, "250/1500 ms"),
    "none-yet": ({"count": 0, "p50": None, "p99": None}, "-"),
    "missing": (None, "-"),
}


@pytest.mark.parametrize(
    ("text", "width", "clipped"),
    [("$.a.b", 5, "$.a.b"), ("$.abcdef", 5, "$.…ef"), ("$.abcdef", 4, "$…ef"), ("$.abcdef", 1, "…")],
)
def test_clip_middle(text: str, width: int, clipped: str) -> None:
    assert clip_middle(text, width) == clipped


@pytest.mark.parametrize(("latency", "text"), LATENCIES.values(), ids=LATENCIES.keys())
def test_latency_text(latency: Any, text: str) -> None:
    assert latency_text(latency) == text


def test_a_long_sample_puts_its_values_on_a_second_line_clipped() -> None:
    sample = {
        "request": "GET /things/1",
        "path": "$.meta.trace",
        "live": '"' + "a" * 100 + '"',
        "shadow": None,
        "live_status": 200,
        "shadow_status": 500,
    }
    first, second = sample_lines(sample, 80)
    assert first.split() == ["GET", "/things/1", "200→500", "$.meta.trace"]
    assert second.endswith("… → (absent)")  # the short value is kept whole
    assert len(second) == 80


@pytest.mark.parametrize(
    ("live", "shadow"),
    [
        ('"' + "W" * 5000 + '"', '"' + "W" * 5001 + '"'),
        ('"' + "a" * 50 + "X" + "b" * 40 + '"', '"' + "a" * 50 + "Y" + "b" * 40 + '"'),
    ],
    ids=["longer", "one-character-far-in"],
)
def test_two_long_values_alike_at_the_start_are_shown_where_they_differ(live: str, shadow: str) -> None:
    """QA: both were cut from their start, so the line showed the same text twice."""
    sample = {
        "request": "GET /x",
        "path": "$.w",
        "live": live,
        "shadow": shadow,
        "live_status": 200,
        "shadow_status": 200,
    }
    _, second = sample_lines(sample, 80)
    shown_live, shown_shadow = second.strip().split(" → ")
    assert shown_live != shown_shadow
    assert len(second) <= 80


def test_wide_characters_are_measured_in_columns() -> None:
    """QA: CJK text was counted as one column a character: tables out of line, and a sample
    line of 142 columns at COLUMNS=80."""
    lines = table(["NAME", "N"], [["日本語のエンドポイント", "1"], ["ascii", "22"]], "<>")
    assert len({cols(line) for line in lines}) == 1  # the right-aligned column lines up
    sample = {
        "request": "GET /商品/一覧",
        "path": "$.名前",
        "live": '"' + "価格" * 40 + '"',
        "shadow": '"' + "値段" * 40 + '"',
        "live_status": 200,
        "shadow_status": 200,
    }
    for line in sample_lines(sample, 80):
        assert cols(line) <= 80, (cols(line), line)
    assert cols("日本") == 4
    assert cols("e\u0301") == 1  # a combining accent takes no column
    assert cols("vs\ufe0f") == 2  # nor a variation selector (QA, seventh round: rows out of line)
    assert clip_end("日本語", 5) == "日本…"


# ---- running the command ---------------------------------------------------------------------


async def splitproxy(*args: str, admin: str, within: float = 20) -> Result:
    """``splitproxy report ...`` to completion in its own process; never a traceback."""
    return await run_cli("report", *args, admin=admin, within=within)


@pytest.fixture(autouse=True)
def _no_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The proxy subprocess inherits this environment: a token in the developer's shell must
    # not protect the admin API of these tests.
    for name in CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)


def version_app(price: int) -> Any:
    """One version of a small JSON API: ``price`` differs between versions (a real
    difference), ``stamp`` is new on every answer of either version (noise)."""

    def factory(up: Upstream) -> web.Application:
        async def item(request: web.Request) -> web.Response:
            up.hits += 1
            item_id = int(request.match_info["id"])
            return web.json_response({"id": item_id, "name": "kettle", "price": price, "stamp": uuid.uuid4().hex})

        app = web.Application()
        app.router.add_get("/shop/items/{id}", item)
        return app

    return factory


@dataclass
class Shadowed:
    proxy: ProxyProcess

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.proxy.admin_port}"


@pytest.fixture
async def shadowed(tmp_path: Path, start_upstream: StartUpstream, proxy_process: StartProcess) -> Shadowed:
    """Route ``shop`` (shadowed, fed with traffic until all of it is compared) and route
    ``api`` (shadowed, never visited)."""
    live = await start_upstream("v1", version_app(price=10))
    candidate = await start_upstream("v2", version_app(price=12))  # same length: Content-Length agrees
    shop = route("shop", "/shop", stable=(live, 100), candidate=(candidate, 0))
    shop["shadow"] = {"backend": "candidate", "percent": 100, "noise": {"percent": 100}}
    api = route("api", "/api", v1=(live, 100), v2=(candidate, 0))
    api["shadow"] = {"backend": "v2", "percent": 50, "methods": ["GET", "HEAD"], "noise": {"percent": 0}}
    cfg = tmp_path / "splitproxy.yaml"
    cfg.write_text(config_text(tmp_path, [shop, api], access_log="off"))
    px = await proxy_process(cfg)

    async with aiohttp.ClientSession() as s:
        for i in range(REQUESTS):
            async with s.get(f"{px.url}/shop/items/{i % 7 + 1}") as resp:
                assert resp.status == 200
                await resp.read()
        # A mirror is compared once both answers are in, its noise replay once that one
        # is: wait (bounded) until the report holds every request.
        async with asyncio.timeout(10):
            while True:
                async with s.get(f"http://127.0.0.1:{px.admin_port}/api/v1/shadow/report?route=shop") as resp:
                    shop_report = (await resp.json())["routes"][0]
                ep = shop_report["endpoints"].get(ENDPOINT, {})
                if ep.get("compared") == REQUESTS and ep.get("noise_compared") == REQUESTS:
                    break
                await asyncio.sleep(0.05)
    return Shadowed(px)


async def test_report_table_names_the_real_field_and_the_noise(shadowed: Shadowed) -> None:
    result = await splitproxy(admin=shadowed.admin)
    assert result.code == 0, result.err
    assert result.err == ""
    lines = result.out.splitlines()
    assert all(len(line) <= 80 for line in lines), result.out
    assert lines[0] == "route shop: shadow → candidate, 100% of GET, HEAD; noise replay 100%"
    assert (
        lines[1] == f"  compared {REQUESTS}: {REQUESTS} with a real difference (100.0%), {REQUESTS} with any (100.0%)"
    )
    assert lines[2] == f"  {REQUESTS} replays to the live version to learn its noise"

    endpoint = result.row("GET", "/shop/items/{id}")
    assert endpoint[2:5] == [str(REQUESTS), "100.0%", "100.0%"]
    assert endpoint[6] == endpoint[8] == "ms"  # live p50/p99 ms, shadow p50/p99 ms
    for p50_p99 in (endpoint[5], endpoint[7]):
        p50, p99 = (float(x) for x in p50_p99.split("/"))
        assert 0 < p50 <= p99
    n = f"{REQUESTS}/{REQUESTS}"
    real = ["REAL", "$.price", "100.0%", n, "vs", "noise", "0.0%", f"0/{REQUESTS}"]
    noise = ["noise", "$.stamp", "100.0%", n, "vs", "noise", "100.0%", n]
    at = lines.index(next(line for line in lines if line.split()[:2] == ["GET", "/shop/items/{id}"]))
    assert [line.split() for line in lines[at + 1 : at + 3]] == [real, noise]  # real first, under its endpoint

    # The other shadowed route is listed, and says it has nothing yet.
    api_at = lines.index("route api: shadow → v2, 50% of GET, HEAD; no noise replay")
    assert lines[api_at + 1] == "  no comparisons yet"
    assert "→ 12" not in result.out  # no samples unless asked


async def test_report_json_agrees_with_the_table(shadowed: Shadowed) -> None:
    table, as_json = await asyncio.gather(
        splitproxy("--route", "shop", admin=shadowed.admin),
        splitproxy("--route", "shop", "--json", admin=shadowed.admin),
    )
    assert (table.code, as_json.code) == (0, 0), table.err + as_json.err
    doc = json.loads(as_json.out)
    assert as_json.out.startswith('{\n  "generated_at"')  # indented
    [shop] = doc["routes"]  # --route: only that route
    assert (shop["route"], shop["shadow"]["backend"], shop["compared"]) == ("shop", "candidate", REQUESTS)
    ep = shop["endpoints"][ENDPOINT]
    classes = {k: f["classification"] for k, f in ep["fields"].items()}
    assert classes == {"$.price": "real", "$.stamp": "noise"}
    price = ep["fields"]["$.price"]
    assert (price["differing"], price["compared"], price["noise_differing"]) == (REQUESTS, REQUESTS, 0)

    assert "route api" not in table.out
    assert table.row("REAL")[:4] == ["REAL", "$.price", f"{price['rate'] * 100:.1f}%", f"{REQUESTS}/{REQUESTS}"]
    assert table.row("noise", "$.stamp")[2:4] == ["100.0%", f"{REQUESTS}/{REQUESTS}"]
    live = ep["latency"]["live"]
    assert table.row("GET")[5] == latency_text(live).split()[0]


async def test_report_samples_show_the_values(shadowed: Shadowed) -> None:
    result = await splitproxy("--route", "shop", "--samples", admin=shadowed.admin)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert all(len(line) <= 80 for line in lines), result.out
    real_at = next(i for i, line in enumerate(lines) if line.split()[:1] == ["REAL"])
    noise_at = next(i for i, line in enumerate(lines) if line.split()[:2] == ["noise", "$.stamp"])
    price_samples = [line.split() for line in lines[real_at + 1 : noise_at]]
    assert price_samples, result.out
    for words in price_samples:
        assert words[0] == "GET"
        assert words[1].startswith("/shop/items/")
        assert words[2:] == ["200→200", "$.price:", "10", "→", "12"]
    stamp_samples = "\n".join(lines[noise_at + 1 :])
    assert "$.stamp" in stamp_samples
    assert " → " in stamp_samples


async def test_report_unknown_route_and_unreachable_admin(shadowed: Shadowed) -> None:
    unknown = await splitproxy("--route", "nope", admin=shadowed.admin)
    assert unknown.code == 1
    assert unknown.out == ""
    assert unknown.err.startswith("splitproxy: ")
    assert "nope" in unknown.err
    assert "(HTTP 404)" in unknown.err

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    gone = await splitproxy(admin=dead)
    assert gone.code == 1
    assert gone.out == ""
    assert gone.err.startswith(f"splitproxy: cannot reach the admin API at {dead}: ")

    both = await splitproxy("--clear", "--samples", admin=shadowed.admin)
    assert both.code == 2
    assert "not allowed with" in both.err


async def test_report_clear_empties_it(shadowed: Shadowed) -> None:
    cleared = await splitproxy("--route", "shop", "--clear", admin=shadowed.admin)
    assert cleared.code == 0, cleared.err
    assert cleared.out == "cleared the shadow-diff report of route shop\n"

    after = await splitproxy("--route", "shop", admin=shadowed.admin)
    assert after.code == 0, after.err
    assert after.out.splitlines() == [
        "route shop: shadow → candidate, 100% of GET, HEAD; noise replay 100%",
        "  no comparisons yet",
    ]
    doc = json.loads((await splitproxy("--json", admin=shadowed.admin)).out)
    assert [(r["route"], r["compared"], r["endpoints"]) for r in doc["routes"]] == [("shop", 0, {}), ("api", 0, {})]

    everything = await splitproxy("--clear", "--json", admin=shadowed.admin)
    assert everything.code == 0, everything.err
    assert json.loads(everything.out) == {"cleared": "all"}
    unknown = await splitproxy("--route", "nope", "--clear", admin=shadowed.admin)
    assert unknown.code == 1
    assert "(HTTP 404)" in unknown.err
