"""Tier 1: ``DiffRecorder`` (proxy/shadow.py) records what ``compare`` and ``RouteStats.record``
say about each finished mirror, with its cached endpoints and options, and no sockets."""

from __future__ import annotations

import asyncio
import gc
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest

from proxy import diffing
from proxy.config import parse_text
from proxy.diffing import Captured, RouteStats
from proxy.forwarder import Exchange
from proxy.routing import RoutePlan
from proxy.runtime import Runtime
from proxy.shadow import COMPARED, Capture, Mirror, ShadowLeg

from .test_diffing_fastpaths import reference_compare

CONFIG = """
listen: "127.0.0.1:0"
access_log: "off"
routes:
  - name: shop
    backends:
      stable: {{upstreams: ["http://127.0.0.1:9"], weight: 100}}
      candidate: {{upstreams: ["http://127.0.0.1:10"], weight: 0}}
    shadow:
      backend: candidate
      percent: 100
      noise: {{percent: 0}}
      diff: {{ignore_headers: [{ignore}], redact_fields: ["$.token"]}}
"""

NGINX = [b"Server: nginx/1.24.0\r\n", b"Date: Mon, 23 Nov 2026 16:00:00 GMT\r\n", b"Content-Type: text/plain\r\n"]
JSON = [b"Content-Type: application/json\r\n", b"Date: Mon, 23 Nov 2026 16:00:01 GMT\r\n"]
ANSWERS = [
    pytest.param((NGINX, b"x" * 100), (NGINX, b"x" * 100), id="identical-text"),
    pytest.param((NGINX, b"a\nb\n"), (NGINX, b"a\nc\n"), id="differing-text"),
    pytest.param((JSON, b'{"a": [1, 2], "token": "s"}'), (JSON, b'{"a": [1, 3], "token": "t"}'), id="json-diff"),
    pytest.param((JSON, b'{"ok": 1}'), ([*JSON[:1], b"Date: later\r\n"], b'{"ok": 1}'), id="equal-json-bodies"),
    pytest.param((NGINX, b"x"), ([*NGINX, b"X-Extra: 1\r\n"], b"x"), id="extra-header"),
]


def request() -> Exchange:
    """A forwarder ``Exchange`` as a ``Mirror`` reads it: a GET without body."""
    ex = Exchange(0.0)
    ex.method = b"GET"
    ex.url = b"/products/1?token=abc&page=2"
    return ex


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    loop = asyncio.new_event_loop()
    rt = Runtime(parse_text(CONFIG.format(ignore="date, server")), loop, rng=random.Random(7))
    yield rt
    rt.close()
    loop.close()


def answer(lines: list[bytes], body: bytes, t0: float) -> Capture:
    capture = Capture(1 << 20, t0)
    capture.head(200, [bytes(line) for line in lines], [b"content-length: %d\r\n" % len(body)])
    capture.take(bytes(body))
    capture.t_end = t0 + 0.002
    return capture


def finished(rt: Runtime, plan: RoutePlan, live: Any, shadow: Any) -> Mirror:
    mirror = Mirror(rt.shadow, request(), plan)
    leg = ShadowLeg(mirror, "shadow", next(iter(rt.pools.values())), b"")
    leg.capture = answer(*shadow, 1.0)
    leg.outcome = COMPARED
    mirror.legs = [leg]
    mirror.live = answer(*live, 1.0)
    return mirror


def as_captured(lines: list[bytes], body: bytes) -> Captured:
    head = [*lines, b"content-length: %d\r\n" % len(body)]
    pairs = [line.decode("latin-1").rstrip("\r\n").partition(":") for line in head]
    return Captured(200, tuple((n.strip().lower(), v.strip()) for n, _, v in pairs), body)


@pytest.mark.parametrize(("live", "shadow"), ANSWERS)
def test_records_what_compare_and_record_say(runtime: Runtime, live: Any, shadow: Any) -> None:
    plan = runtime.table.plans["shop"]
    for _ in range(3):  # the second and third come through the recorder's caches
        runtime.diffs(finished(runtime, plan, live, shadow))

    points = random.Random(7)
    expected = RouteStats()
    for _ in range(3):
        expected.record(
            "GET /products/{id}",
            reference_compare(as_captured(*live), as_captured(*shadow), ignore_headers=frozenset({"date", "server"})),
            live=as_captured(*live),
            shadow=as_captured(*shadow),
            request="GET /products/1?token=abc&page=2",
            live_seconds=0.002,
            shadow_seconds=0.002,
            point=points.random(),
            noise=plan.route.shadow.noise,  # type: ignore[union-attr]
            redact_fields=("$.token",),
        )
    assert runtime.diffs.batch["shop"].to_dict() == expected.to_dict()


def test_answers_of_one_endpoint_are_compared_on_the_last_one_kept(runtime: Runtime) -> None:
    # The recorder names the endpoint to compare(reuse=...): the C walk keeps the first live
    # answer and builds the next ones' documents (and their shadows') on its text.
    native = diffing._native
    assert native is not None, "proxy._jsondiff did not build"
    native.forget()
    plan = runtime.table.plans["shop"]
    start = native.kept()[:3]
    for n in range(3):
        items = [{"id": i, "name": f"Product {i}", "stock": i % 7} for i in range(200)]
        live = {"meta": {"at": f"2026-12-03T08:00:0{n}Z"}, "items": items}
        shadow = {**live, "items": [*items[:50], {**items[50], "stock": -1}, *items[51:]]}
        runtime.diffs(finished(runtime, plan, (JSON, json.dumps(live).encode()), (JSON, json.dumps(shadow).encode())))
    warm, missed, kept = (now - was for now, was in zip(native.kept()[:3], start, strict=True))
    assert (warm, missed, kept) == (2, 0, 1)
    assert runtime.diffs.batch["shop"].endpoints["GET /products/{id}"].fields["$.items[*].stock"][:2] == [3, 3]
    native.forget()


def test_a_reload_that_changes_the_diff_options_takes_effect(runtime: Runtime) -> None:
    old = runtime.table.plans["shop"]
    runtime.diffs(finished(runtime, old, (NGINX, b"x"), (NGINX, b"x")))
    runtime.install(parse_text(CONFIG.format(ignore="server")))
    new = runtime.table.plans["shop"]
    assert new.route.shadow is not None
    assert new.route.shadow.diff is not old.route.shadow.diff  # type: ignore[union-attr]
    runtime.diffs(finished(runtime, new, (NGINX, b"x"), ([*NGINX[:1], b"Date: later\r\n", *NGINX[2:]], b"x")))
    fields = runtime.diffs.batch["shop"].endpoints["GET /products/{id}"].fields
    assert fields["header.date"] == [1, 1, 0, 0, 0, 0]  # compared and differing once: after the reload
    assert fields["header.content-type"] == [2, 0, 0, 0, 0, 0]


def test_a_reload_that_changes_the_endpoint_templates_regroups_urls_already_seen(runtime: Runtime) -> None:
    """The recorder remembers each URL's endpoint; a reload with other templates used to leave
    the URLs it had seen under their old endpoints."""
    plan = runtime.table.plans["shop"]
    runtime.diffs(finished(runtime, plan, (NGINX, b"x"), (NGINX, b"x")))
    assert list(runtime.diffs.batch["shop"].endpoints) == ["GET /products/{id}"]
    templated = CONFIG.format(ignore="date, server").replace(
        "redact_fields", 'endpoints: ["/products/{n}"], redact_fields'
    )
    runtime.install(parse_text(templated))
    runtime.diffs(finished(runtime, runtime.table.plans["shop"], (NGINX, b"x"), (NGINX, b"x")))
    assert runtime.diffs.batch["shop"].endpoints["GET /products/{n}"].compared == 1


@pytest.mark.parametrize("ending", ["compared", "cancelled"])
def test_a_finished_mirror_is_freed_without_the_cycle_collector(runtime: Runtime, ending: str) -> None:
    """A mirror and its legs refer to each other: the manager unlinks them when the mirror
    ends, so reference counting frees them at once. Left to the cycle collector (whose young
    generation serve() makes large), they piled up and each pass cost tens of ms."""
    plan = runtime.table.plans["shop"]
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            mirror = finished(runtime, plan, (NGINX, b"x"), (NGINX, b"x"))
            runtime.shadow.in_flight.setdefault("shop", set()).add(mirror)
            if ending == "compared":
                mirror.live_done = True
                runtime.shadow.completed(mirror)
            else:
                runtime.shadow.cancel(mirror, "error")
            del mirror
        runtime.loop.run_until_complete(asyncio.sleep(0))  # the comparisons, in their callbacks
        alive = [o for o in gc.get_objects() if isinstance(o, (Mirror, ShadowLeg))]
    finally:
        gc.enable()
    assert alive == []
    if ending == "compared":
        assert runtime.diffs.batch["shop"].endpoints["GET /products/{id}"].compared == 20
