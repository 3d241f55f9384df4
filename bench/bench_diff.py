"""Cost of the shadow-diff engine (proxy/diffing.py) per call, without sockets.

Builds realistic JSON answer pairs (a list of products with ids, prices and timestamps,
a ``meta`` block, a handful of differences between live and shadow) of about 1, 8 and
64 KiB, and prints the median µs per ``compare()`` over repeated batches, next to the
floor set by ``json.loads`` of both bodies, a few harder variants, ``RouteStats.record``
and ``endpoint_template``; then the whole comparison of one finished mirror
(``DiffRecorder``, proxy/shadow.py) as the proxy benchmark's 100 % GET shadowing produces
it. The run is bounded (``--seconds``, default 5 in all).

    .venv/bin/python bench/bench_diff.py [--seconds 5]
    .venv-compiled/bin/python bench/bench_diff.py     # the mypyc build (make compiled)

It measures the ``proxy`` package the running interpreter has installed, and says which
build and which JSON walk (the C one in ``proxy._jsondiff``, or the Python one without it);
"the Python walk" rows switch the C one off for comparison, and "the shadow parsed whole"
rows keep the C walk but have it parse the shadow body whole rather than build its document
on the live one's text; the last rows give the ratio of the two, run in alternating batches
(this machine's speed drifts between rows).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from proxy import data_plane_build, diffing
from proxy.config import ShadowNoise, parse_text
from proxy.diffing import Captured, RouteStats, compare, endpoint_template
from proxy.forwarder import Exchange
from proxy.runtime import Runtime
from proxy.shadow import COMPARED, Capture, Mirror, ShadowLeg

HEADERS = (
    ("content-type", "application/json"),
    ("date", "Mon, 23 Nov 2026 16:00:00 GMT"),
    ("server", "gunicorn"),
    ("x-request-id", "1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
    ("cache-control", "no-store"),
    ("etag", '"abc"'),
)
TEMPLATES = ("/users/{id}", "/orgs/{org}/repos/{repo}", "/orgs/{org}/members", "/users/me", "/search/{kind}")


def product(rng: random.Random, i: int) -> dict[str, Any]:
    return {
        "id": 100_000 + i,
        "sku": f"SKU-{rng.randrange(10**6):06d}",
        "name": f"Product {i} {rng.choice(['blue', 'red', 'large', 'small', 'eco'])}",
        "price": {"amount": round(rng.uniform(1, 500), 2), "currency": "EUR"},
        "stock": rng.randrange(100),
        "active": rng.random() < 0.9,
        "tags": rng.sample(["new", "sale", "garden", "kitchen", "tools", "kids"], 2),
        "updated_at": f"2026-11-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
    }


def document(size: int, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    doc: dict[str, Any] = {
        "meta": {"generated_at": "2026-11-23T16:00:00.123Z", "request_id": "r-1", "page": 1, "count": 0},
        "items": [],
    }
    while len(json.dumps(doc)) < size:
        doc["items"].append(product(rng, len(doc["items"])))
    doc["meta"]["count"] = len(doc["items"])
    return doc


def handful_of_differences(doc: dict[str, Any]) -> dict[str, Any]:
    """The shadow's answer: new timestamp and request id, two prices, one field gone, one added."""
    out = copy.deepcopy(doc)
    items = out["items"]
    out["meta"]["generated_at"] = "2026-11-23T16:00:00.456Z"
    out["meta"]["request_id"] = "r-2"
    items[len(items) // 3]["price"]["amount"] += 1
    items[-1]["price"]["amount"] += 2
    del items[len(items) // 2]["tags"]
    items[0]["discount"] = 0.1
    return out


def answers(doc: dict[str, Any], n: int = 8) -> list[dict[str, Any]]:
    """``n`` answers of the endpoint ``doc`` answers, as it gives them over time: the same records,
    each answer with its own ``generated_at`` and ``request_id`` and three records' stock
    changed (the kept-answer build has different live text to follow on every call). All of
    ``doc``'s length (bench/run.py checks the length of what the upstream serves)."""
    out = []
    for i in range(n):
        rng = random.Random(1000 + i)
        answer = copy.deepcopy(doc)
        answer["meta"]["generated_at"] = f"2026-11-23T16:00:{i:02d}.{rng.randrange(1000):03d}Z"
        answer["meta"]["request_id"] = f"r-{i}"
        for item in rng.sample(answer["items"], 3):
            stock = item["stock"]  # another one with as many digits
            if stock < 10:
                item["stock"] = (stock + rng.randrange(1, 10)) % 10
            else:
                item["stock"] = 10 + (stock + rng.randrange(1, 90)) % 90
        out.append(answer)
    return out


def feed_pages(doc: dict[str, Any], n: int = 8) -> list[dict[str, Any]]:
    """``n`` pages of a feed whose first page is ``doc``: page k has k newer records on top and
    as many fewer at the bottom, so the records below shift by k places."""
    rng = random.Random(7)
    newer = [product(rng, 10_000 + k) for k in range(n)]
    items = doc["items"]
    return [{**doc, "items": (newer[:k][::-1] + items)[: len(items)]} for k in range(n)]


def shadowed(doc: dict[str, Any]) -> tuple[Captured, Captured]:
    """The live answer ``doc`` and its shadow's (``handful_of_differences``), as captured."""
    return captured(doc), captured(handful_of_differences(doc))


def in_turn(pairs: list[tuple[Captured, Captured]], reuse: str | None) -> Callable[[], object]:
    """``compare()`` of each pair in turn, each one's live answer kept under ``reuse``."""
    turn = iter(range(10**12))

    def run() -> object:
        live, shadow = pairs[next(turn) % len(pairs)]
        return compare(live, shadow, reuse=reuse)

    return run


def every_element_differs(doc: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    for item in out["items"]:
        item["updated_at"] = "2026-11-30T00:00:00Z"
    return out


def captured(doc: Any) -> Captured:
    return Captured(200, HEADERS, json.dumps(doc).encode())


RECORDER_CONFIG = """
listen: "127.0.0.1:0"
access_log: "off"
routes:
  - name: bench
    backends:
      stable: {upstreams: ["http://127.0.0.1:9"], weight: 100}
      candidate: {upstreams: ["http://127.0.0.1:10"], weight: 0}
    shadow: {backend: candidate, percent: 100, noise: {percent: 0}}
"""


def request() -> Exchange:
    """A forwarder ``Exchange`` as a Mirror sees it: a GET without body."""
    ex = Exchange(0.0)
    ex.method = b"GET"
    ex.url = b"/products/1"
    return ex


def nginx_answer(t0: float) -> Capture:
    """A capture of nginx's fixed answer (bench/upstream), filled as the proxy fills one: head
    lines and body are new objects each time, as they are for every response."""
    capture = Capture(1 << 20, t0)
    lines = [  # header parts, as UpstreamConnection hands them on
        *(b"Server", b": ", b"nginx/1.24.0", b"\r\n"),
        *(b"Date", b": ", b"Mon, 23 Nov 2026 16:00:00 GMT", b"\r\n"),
        *(b"Content-Type", b": ", b"text/plain", b"\r\n"),
    ]
    capture.head(200, lines, [b"content-length: " + b"100" + b"\r\n"])
    capture.take(bytes(bytearray(b"x" * 100)))
    capture.t_end = t0 + 0.001
    return capture


def recorder_cases() -> tuple[list[tuple[str, str, Callable[[], object]]], Callable[[], None]]:
    """``DiffRecorder.__call__`` (comparison and recording, not the I/O) on a finished mirror of
    a GET whose live and shadow answers are nginx's 100-byte text answer; and the cost of
    building that mirror alone, which the first figure includes."""
    loop = asyncio.new_event_loop()
    rt = Runtime(parse_text(RECORDER_CONFIG, "<bench>"), loop)
    plan = rt.table.plans["bench"]
    pool = next(iter(rt.pools.values()))
    mirror = Mirror(rt.shadow, request(), plan)
    leg = ShadowLeg(mirror, "shadow", pool, b"")
    leg.outcome = COMPARED
    mirror.legs = [leg]

    def finished() -> Mirror:
        mirror.live = nginx_answer(1.0)
        leg.capture = nginx_answer(1.0)
        return mirror

    def close() -> None:
        rt.close()
        loop.close()

    cases = [
        ("DiffRecorder, identical 100-byte text answers", "100 B", lambda: rt.diffs(finished())),
        ("  building the mirror only", "100 B", finished),
    ]
    return cases, close


def median_us(fn: Callable[[], object], budget: float) -> tuple[float, int]:
    """Median µs per call over batches of >= 2 ms, within ``budget`` seconds."""
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    batch = max(1, int(0.002 / once))
    samples: list[float] = []
    deadline = time.perf_counter() + budget
    while time.perf_counter() < deadline or len(samples) < 3:
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - start) / batch * 1e6)
    return statistics.median(samples), len(samples) * batch


def alternating_samples(batches: list[Callable[[], float]], budget: float) -> list[list[float]]:
    """Run each of ``batches`` (one batch of calls, returning its µs per call) in turn, round
    after round, within ``budget`` seconds (at least 3 rounds): each one's samples, by round."""
    samples: list[list[float]] = [[] for _ in batches]
    deadline = time.perf_counter() + budget
    while time.perf_counter() < deadline or len(samples[0]) < 3:
        for batch, out in zip(batches, samples, strict=True):
            out.append(batch())
    return samples


def timed_batch(fn: Callable[[], object], batch: int) -> Callable[[], float]:
    """A batch of ``batch`` calls of ``fn``, returning µs per call (for ``alternating_samples``)."""

    def run() -> float:
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        return (time.perf_counter() - start) / batch * 1e6

    return run


def alternating_us(fns: list[Callable[[], object]], budget: float) -> list[tuple[float, int]]:
    """``median_us`` of each of ``fns``, run in alternating batches of >= 2 ms within ``budget``
    seconds: the figures share the machine's drift."""
    batches = [max(1, int(0.002 / max(median_us(fn, 0.0)[0] * 1e-6, 1e-7))) for fn in fns]
    samples = alternating_samples([timed_batch(fn, n) for fn, n in zip(fns, batches, strict=True)], budget)
    return [(statistics.median(out), len(out) * batch) for out, batch in zip(samples, batches, strict=True)]


def interleaved_ratio(fn: Callable[[], object], base: Callable[[], object], budget: float) -> float:
    """Median over rounds of (µs per call of ``fn``) / (µs per call of ``base``), the two run in
    alternating batches of >= 2 ms: robust to a machine whose speed drifts between rows."""
    batch = max(1, int(0.002 / max(median_us(base, 0.0)[0] * 1e-6, 1e-7)))
    ratios: list[float] = []
    deadline = time.perf_counter() + budget
    while time.perf_counter() < deadline or len(ratios) < 5:
        times = []
        for f in (fn, base):
            start = time.perf_counter()
            for _ in range(batch):
                f()
            times.append(time.perf_counter() - start)
        ratios.append(times[0] / times[1])
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="total time budget (default 5)")
    parser.add_argument(
        "--pair-cost",
        action="store_true",
        help="only time compare() of the 64 KiB pair with a handful of differences (bench/run.py's"
        " JSON answers) for --seconds: on its own (us), and as the endpoint's 8 answers in turn,"
        " each built on the one kept before (kept_us); and the C walk's parse of the live body"
        " alone (parse_us, the floor under any diff of a body seen first; null without the C"
        ' walk); print {"us": ..., "kept_us": ..., "parse_us": ...} as JSON',
    )
    args = parser.parse_args()
    if args.pair_cost:
        doc = document(64 << 10)
        live, shadow = shadowed(doc)
        turns = [shadowed(a) for a in answers(doc)]
        timed = [lambda: compare(live, shadow), in_turn(turns, "GET /bench.json")]
        native = diffing._native
        if native is not None:
            timed.append(lambda: native.parse_only(live.body))
        got = alternating_us(timed, args.seconds)
        (us, calls), (kept_us, kept_calls) = got[:2]
        out: dict[str, float | None] = {"us": round(us, 1), "calls": calls, "kept_us": round(kept_us, 1)}
        out |= {"kept_calls": kept_calls, "parse_us": round(got[2][0], 1) if native is not None else None}
        print(json.dumps({**out, "body_bytes": len(live.body)}))
        return

    pairs = {}
    for label, size in (("1 KiB", 1 << 10), ("8 KiB", 8 << 10), ("64 KiB", 64 << 10)):
        doc = document(size)
        pairs[label] = shadowed(doc)
    big_live, big_shadow = pairs["64 KiB"]
    big_doc = json.loads(big_live.body)
    all_differ = captured(every_element_differs(big_doc))
    ignore_ts = ("$.items[*].updated_at", "$.meta.generated_at", "$.meta.request_id")

    stats = RouteStats()
    comparison = compare(big_live, big_shadow)
    noise = ShadowNoise()
    counter = iter(range(10**9))

    def record() -> None:
        n = next(counter)
        stats.record(
            "GET /products",
            comparison,
            live=big_live,
            shadow=big_shadow,
            request="GET /products?page=1",
            live_seconds=0.012,
            shadow_seconds=0.015,
            point=0.5 + (n % 1000) / 2000,  # after the first few, no sample is kept: steady state
            noise=noise,
        )

    def comparing(live: Captured, shadow: Captured) -> Callable[[], object]:
        return lambda: compare(live, shadow)

    def parsing(live: Captured, shadow: Captured) -> Callable[[], object]:
        return lambda: (json.loads(live.body), json.loads(shadow.body))

    def python_walk(fn: Callable[[], object]) -> Callable[[], object]:
        """``fn`` with the C walk switched off: the Python walk, as without a C compiler."""

        def run() -> object:
            native, diffing._native = diffing._native, None
            try:
                return fn()
            finally:
                diffing._native = native

        return run

    def parsed_whole(fn: Callable[[], object]) -> Callable[[], object]:
        """``fn`` with the C walk parsing the shadow body whole, as before it built the shadow
        document on the live one's text."""
        native = diffing._native
        if native is None:
            return fn

        def run() -> object:
            was = native.build_on_live(1 << 62)
            try:
                return fn()
            finally:
                native.build_on_live(*was)

        return run

    cases: list[tuple[str, str, Callable[[], object]]] = []
    a, b = big_live.body, big_shadow.body
    for label, (live, shadow) in pairs.items():
        cases.append((f"compare, handful of diffs ({len(live.body)} B)", label, comparing(live, shadow)))
        cases.append(("  json.loads of both bodies (stdlib)", label, parsing(live, shadow)))
        if label in {"8 KiB", "64 KiB"} and diffing._native is not None:
            cases.append(("  the shadow parsed whole", label, parsed_whole(comparing(live, shadow))))
        if label == "64 KiB":
            turns = [shadowed(x) for x in answers(big_doc)]
            cases.append(("  8 answers in turn, no key", label, in_turn(turns, None)))
            cases.append(("  8 answers in turn, built on the kept one", label, in_turn(turns, "GET /p")))
            # a static endpoint: the same live answer each time, kept, and its shadow's changes
            cases.append(("  the same answer again, built on the kept one", label, in_turn(turns[:1], "GET /s")))
            # a feed, newest first: each answer 0-7 newer records on top (the others shift)
            pages = [shadowed(x) for x in feed_pages(big_doc)]
            cases.append(("  feed pages in turn, no key", label, in_turn(pages, None)))
            cases.append(("  feed pages in turn, built on the kept one", label, in_turn(pages, "GET /f")))
            cases.append(("  the Python walk (orjson)", label, python_walk(comparing(live, shadow))))
            cases.append(("  orjson.loads of both bodies", label, lambda: (orjson.loads(a), orjson.loads(b))))

    def fresh_twins() -> tuple[Captured, Captured]:
        # Bytes as they come off the wire: a new object per answer, so its hash is not cached.
        twin = Captured(200, HEADERS, bytes(bytearray(big_live.body)))
        return twin, twin

    # 100 distinct equal pairs, more than the remembered equal bodies hold: never seen before.
    unseen = [captured({**big_doc, "meta": {**big_doc["meta"], "request_id": f"r-{i}"}}) for i in range(100)]
    unseen_next = iter(range(10**9))

    def compare_unseen(reuse: str | None = None) -> object:
        c = unseen[next(unseen_next) % len(unseen)]
        return compare(c, c, reuse=reuse)

    # Long arrays whose elements do not say where they start (numbers, arrays): a time series
    # and a list of ids, the last element changed. Building the shadow's document on the live
    # text was O(n^2) on these until 2026-12-04 (~0.5 s for the series).
    def last_changed(doc: Any, change: Callable[[Any], None]) -> tuple[Captured, Captured]:
        other = json.loads(json.dumps(doc))
        change(other)
        return captured(doc), captured(other)

    series = last_changed(
        {"points": [[1_700_000_000 + 60 * i, 1.5 + i % 7 / 10] for i in range(52_000)]},
        lambda d: d["points"][-1].__setitem__(1, 9.9),
    )
    ids = last_changed(list(range(32_000)), lambda d: d.__setitem__(-1, -1))
    # Objects keyed by name: under ids (one field key for them all, a name each to look up);
    # maps under names of their own (more than diffing.WIDE_OBJECT members: read as a map,
    # the names fold to one key since 2026-12-05; each such name cost a field key of ~1-2 us
    # until 2026-12-04, then made the pair text past MAX_JSON_FIELD_KEYS); and as many names
    # in objects of 100 members (a field key each), within the bound and past it (text).
    by_id = last_changed(
        {str(100_000 + i): {"a": i, "b": "x"} for i in range(32_000)}, lambda d: d["100005"].update(a=-1)
    )
    mapped = last_changed({f"user{i}x": {"a": i} for i in range(2_000)}, lambda d: d["user5x"].update(a=-1))
    big_map = last_changed({f"user{i}x": {"a": i, "b": "x"} for i in range(32_000)}, lambda d: d["user5x"].update(a=-1))

    def shelves(n: int) -> dict[str, Any]:
        return {f"g{g}": {f"user{i}x": {"a": i} for i in range(g * 100, g * 100 + 100)} for g in range(n)}

    within = last_changed(shelves(20), lambda d: d["g0"]["user5x"].update(a=-1))
    past = last_changed(shelves(30), lambda d: d["g0"]["user5x"].update(a=-1))
    for name, (live, shadow) in (
        ("compare, time series, last point differs", series),
        ("compare, 32,000 ids, last differs", ids),
        ("compare, 32,000 members keyed by id", by_id),
        ("compare, a map of 2,000 members named, 3 keys", mapped),
        ("compare, a map of 32,000 members named, 4 keys", big_map),
        ("compare, 2,000 named in objects of 100, 4,021 keys", within),
        ("compare, 3,000 named in objects of 100, 6,031 keys (text)", past),
    ):
        label = f"{len(live.body) >> 10} KiB"
        cases.append((name, label, comparing(live, shadow)))
        if diffing._native is not None:
            cases.append(("  the shadow parsed whole", label, parsed_whole(comparing(live, shadow))))
        cases.append(("  the Python walk (orjson)", label, python_walk(comparing(live, shadow))))

    cases += [
        ("compare, identical bodies", "64 KiB", lambda: compare(big_live, big_live)),
        ("compare, identical bodies, fresh bytes", "64 KiB", lambda: compare(*fresh_twins())),
        ("compare, identical bodies, never seen", "64 KiB", compare_unseen),
        ("  built on the kept one", "64 KiB", lambda: compare_unseen("GET /u")),
        ("compare, every element differs", "64 KiB", lambda: compare(big_live, all_differ)),
        (
            "  8 answers in turn, built on the kept one",
            "64 KiB",
            in_turn([(captured(x), captured(every_element_differs(x))) for x in answers(big_doc)], "GET /q"),
        ),
        ("  the shadow parsed whole", "64 KiB", parsed_whole(lambda: compare(big_live, all_differ))),
        ("  the Python walk (orjson)", "64 KiB", python_walk(lambda: compare(big_live, all_differ))),
        (
            "compare, every element differs, ignored",
            "64 KiB",
            lambda: compare(big_live, all_differ, ignore_fields=ignore_ts),
        ),
        ("RouteStats.record (steady state)", "64 KiB", record),
        ("endpoint_template, auto folding", "-", lambda: endpoint_template("GET", "/users/42/orders/9f8e?x=1")),
        (
            "endpoint_template, 5 templates",
            "-",
            lambda: endpoint_template("GET", "/orgs/acme/repos/web?tab=1", TEMPLATES),
        ),
    ]
    recording, close = recorder_cases()
    cases += recording

    budget = args.seconds / len(cases)
    c = compare(big_live, big_shadow)
    print(f"data plane: {data_plane_build()}")
    print(f"JSON walk: {'C (proxy._jsondiff)' if diffing._native is not None else 'Python (no proxy._jsondiff)'}")
    print(f"64 KiB pair: {len(c.fields)} fields compared, differing: {sorted(c.differing)}")
    print(f"{'case':<46} {'body':>7} {'µs/call':>10} {'calls':>8}")
    for name, label, fn in cases:
        us, calls = median_us(fn, budget)
        print(f"{name:<46} {label:>7} {us:>10.1f} {calls:>8}")
    close()
    if diffing._native is not None:
        print("built on the live text / the shadow parsed whole, interleaved (median ratio):")
        for name, label, (live, shadow) in (
            ("compare, handful of diffs", "8 KiB", pairs["8 KiB"]),
            ("compare, handful of diffs", "64 KiB", pairs["64 KiB"]),
            ("compare, every element differs", "64 KiB", (big_live, all_differ)),
        ):
            fn = comparing(live, shadow)
            ratio = interleaved_ratio(fn, parsed_whole(fn), max(budget, 1.0))
            print(f"{name:<46} {label:>7} {ratio:>10.2f}")


if __name__ == "__main__":
    main()
