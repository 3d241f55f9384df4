"""The admin API client behind ``splitproxy weights|promote|rollback|status|history|restore|report``.

Two halves, as elsewhere (STYLE.md). The pure half parses what the user typed
(``BACKEND=W``, ``--admin URL``) and renders the API's JSON as plain aligned tables that
fit an 80-column terminal. The I/O half, ``AdminClient``, is one synchronous HTTP call per
command on the standard library's ``urllib``: no event loop, no aiohttp import, so the
commands start fast and this module imports cheaply.

Every failure is a ``ClientError`` whose text is the whole line to print and whose
``exit_code`` ``__main__`` exits with (1: the API or the network said no; 2: the command
line is wrong and nothing was sent). The API's own errors come through with their
``where`` (SPEC §5: ``{"error": {"status", "message", "where"}}``).
"""

from __future__ import annotations

import getpass
import http.client
import ipaddress
import json
import math
import textwrap
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import __version__

ADMIN_ENV = "SPLITPROXY_ADMIN"
TOKEN_ENV = "SPLITPROXY_ADMIN_TOKEN"
DEFAULT_ADMIN = "http://127.0.0.1:9901"
# Longer than the proxy takes to give up on a worker that does not confirm a change (10 s,
# proxy.workers.ANSWER_SECONDS), so its 503 saying so arrives instead of a time-out here.
DEFAULT_TIMEOUT = 30.0

# What a failed connection should make the user check.
UNREACHABLE_HINT = f"is `splitproxy run` running? set --admin or {ADMIN_ENV}"


# ---- errors ----------------------------------------------------------------------------------


class ClientError(Exception):
    """A failure to print as one line (without the ``splitproxy:`` prefix) and exit with."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(ClientError):
    """The command line is wrong; nothing was sent."""

    exit_code = 2


class Unreachable(ClientError):
    """No answer from an admin API: refused, unknown host, timed out, or an answer that is
    not the admin API's (``--admin`` names the data listener or another service)."""


class Unauthorized(ClientError):
    """401: no token, or the wrong one."""


class ApiError(ClientError):
    """The admin API answered with an error (400, 404, 412, 5xx...)."""

    def __init__(self, status: int, message: str, where: str | None = None, hint: str = "") -> None:
        self.status = status
        self.where = where
        text = f"{where}: {message}" if where else message
        super().__init__(f"{_one_line(text)} (HTTP {status}){hint}")


# ---- the command line (pure) -----------------------------------------------------------------


def admin_url(text: str) -> str:
    """A validated base URL of the admin API, without a trailing slash.

    ``127.0.0.1:9901`` is taken as ``http://127.0.0.1:9901``, as one types it after
    ``splitproxy demo --admin-listen``. Raises ``UsageError``.
    """
    raw = text.strip()
    if raw and "://" not in raw:
        if "/" in raw.rstrip("/"):  # "http//127.0.0.1:9901" was host "http"; a path needs the scheme
            raise UsageError(f"--admin: expected a URL such as {DEFAULT_ADMIN} or HOST:PORT, got {text!r}")
        raw = "http://" + raw
    try:
        parts = urllib.parse.urlsplit(raw)
    except ValueError as exc:  # an unclosed [, or brackets around what is not an IP address
        raise UsageError(f"--admin: not a URL ({exc}): {text!r}") from None
    try:
        parts.port  # noqa: B018  # .port validates the number and raises ValueError
    except ValueError:
        raise UsageError(f"--admin: bad port in {text!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--admin: expected a URL such as {DEFAULT_ADMIN}, got {text!r}")
    if "@" in parts.netloc:
        # Not echoed: it may hold a password. urllib would look the whole user:pw@host up in DNS.
        raise UsageError(f"--admin: a user or password in the URL is not supported; set the token in {TOKEN_ENV}")
    if parts.query or parts.fragment:
        raise UsageError(f"--admin: a base URL has no query or fragment, got {text!r}")
    if parts.path.rstrip("/").endswith("/api/v1"):  # the API's own prefix, which the CLI adds
        raise UsageError(f"--admin: the admin listener's base URL, without '/api/v1', got {text!r}")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def parse_weights(words: Sequence[str]) -> dict[str, float]:
    """``["stable=90", "canary=10"]`` → ``{"stable": 90.0, "canary": 10.0}``.

    Syntax only: a backend name, ``=``, a finite number >= 0, each backend once. Whether the
    backend exists and the number is in range is the API's to say (it names the route's
    backends in its answer). Raises ``ValueError`` with the word at fault.
    """
    weights: dict[str, float] = {}
    for word in words:
        name, sep, number = word.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"expected BACKEND=WEIGHT such as canary=10, got {word!r}")
        try:
            if "_" in number:  # float() takes 1_000; a weight is written as JSON writes it
                raise ValueError(number)
            weight = float(number)
        except ValueError:
            raise ValueError(f"{name}: the weight must be a number, got {number!r}") from None
        if not math.isfinite(weight):
            raise ValueError(f"{name}: the weight must be a finite number, got {number!r}")
        if weight < 0:  # QA (eighth round): sent, when --help says >= 0 and exit 2 is "nothing sent"
            raise ValueError(f"{name}: the weight must be >= 0, got {number!r}")
        if name in weights:
            raise ValueError(f"{name}: given twice")
        weights[name] = weight
    if not weights:
        raise ValueError("expected at least one BACKEND=WEIGHT")
    return weights


def actor_for(user: str | None) -> str:
    """The ``X-Splitproxy-Actor`` the CLI sends: ``cli:<login>``, or ``cli`` when unknown.

    HTTP header values are Latin-1 on the wire (http.client encodes them so); a login name
    outside ASCII is kept readable rather than failing the request."""
    if not user:
        return "cli"
    safe = "".join(ch if ch.isascii() and ch.isprintable() else "?" for ch in user)
    return f"cli:{safe}"


def login_name() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # KeyError or OSError: no $USER/$LOGNAME and no passwd entry (containers)
        return None


# ---- rendering (pure) ------------------------------------------------------------------------


def cols(text: str) -> int:
    """The terminal columns ``text`` takes: East Asian wide and fullwidth characters two,
    combining marks none (``len`` counted CJK text half its width: tables out of line)."""
    if text.isascii():
        return len(text)
    return sum(_char_cols(ch) for ch in text)


def _char_cols(ch: str) -> int:
    # combining marks, and the nonspacing ones of class 0 (U+FE0F, the emoji variation selector)
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _pad(text: str, width: int, left: bool) -> str:
    fill = " " * max(0, width - cols(text))
    return text + fill if left else fill + text


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], align: str, indent: str = "") -> list[str]:
    """Plain aligned columns, two spaces apart; ``align`` has one ``<`` (left) or ``>``
    (right) per column; headers of right-aligned columns are right-aligned too. Cells come
    from the API: control characters in them are shown as escapes (``_one_line``)."""
    body = [[_one_line(c) for c in r] for r in rows]
    widths = [max(cols(str(c)) for c in col) for col in zip(headers, *body, strict=True)]
    lines = []
    for cells in [list(headers), *body]:
        parts = [_pad(cell, width, a == "<") for cell, width, a in zip(cells, widths, align, strict=True)]
        lines.append((indent + "  ".join(parts)).rstrip())
    return lines


def weight_text(weight: object) -> str:
    """``90.0`` → ``90``; ``2.5`` → ``2.5``; ``10.0000001`` as it is (``:g`` showed ``10``,
    and a change from 10 to it read ``10 → 10``); missing → ``-``."""
    if isinstance(weight, int | float) and not isinstance(weight, bool):
        if float(weight).is_integer() and abs(weight) < 1e15:
            return str(int(weight))
        return repr(float(weight))
    return "-"


def share_text(share: object) -> str:
    """``0.25`` → ``25.0%``; a share that rounds to 0 or 100 but is not says so."""
    if isinstance(share, int | float) and not isinstance(share, bool):
        text = f"{share * 100:.1f}%"
        if text == "0.0%" and share > 0:
            return "<0.1%"
        if text == "100.0%" and share < 1:
            return ">99.9%"
        return text
    return "-"


def shares(weights: Mapping[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {name: (w / total if total > 0 else 0.0) for name, w in weights.items()}


def time_text(entry: Mapping[str, Any]) -> str:
    """ISO-8601 in UTC to the second: ``2024-05-01T12:00:05Z``."""
    when = entry.get("time")
    if isinstance(when, int | float):
        return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(entry.get("time_iso", "-"))


def weights_change_text(before: Mapping[str, float], after: Mapping[str, float]) -> str:
    """``stable 100→90, canary 0→10``: per backend, before → after; unchanged shown once."""
    if not before:
        return ", ".join(f"{name} {weight_text(w)}" for name, w in after.items())
    names = [*after, *(n for n in before if n not in after)]
    parts = []
    for name in names:
        old, new = before.get(name), after.get(name)
        if old == new:
            parts.append(f"{name} {weight_text(new)}")
        else:
            parts.append(f"{name} {weight_text(old)}→{weight_text(new)}")
    return ", ".join(parts)


def _route_heading(route: Mapping[str, Any]) -> list[str]:
    """``route shop: version 7, baseline stable, sticky by cookie sp`` and what it matches."""
    sticky = route.get("sticky") or {}
    by = sticky.get("by") or "none"
    sticky_text = "not sticky" if by == "none" else f"sticky by {by} {sticky.get('name') or ''}".rstrip()
    match = route.get("match") or {}
    host = f"host {match['host']}" if match.get("host") else "any host"
    return [
        f"route {route['name']}: version {route.get('version', '?')}, baseline {route.get('baseline', '?')}, "
        f"{sticky_text}",
        f"  matches {host}, path prefix {match.get('path_prefix') or '/'}",
    ]


def health_text(upstream: Mapping[str, Any]) -> str:
    """An upstream's state in a word or three, as `status` and the viewer show it."""
    healthy = upstream.get("healthy")
    if healthy is None:
        return "unknown"
    if upstream.get("ejected"):
        return f"EJECTED {upstream.get('ejected_for', 0):g}s"
    if not healthy:
        return "DOWN"
    failures = upstream.get("failures") or 0
    return f"healthy ({failures} failing)" if failures else "healthy"


def route_lines(route: Mapping[str, Any]) -> list[str]:
    """One route of ``GET /api/v1/routes``: a heading, a backends table, extras."""
    rows: list[list[str]] = []
    for b in route["backends"]:
        upstreams = b.get("upstreams") or [{}]
        for i, up in enumerate(upstreams):
            first = i == 0
            rows.append(
                [
                    b["name"] if first else "",
                    weight_text(b.get("weight")) if first else "",
                    share_text(b.get("share")) if first else "",
                    str(up.get("url", "-")),
                    health_text(up) if up else "-",
                ]
            )
    lines = _route_heading(route)
    lines += table(["BACKEND", "WEIGHT", "SHARE", "UPSTREAM", "HEALTH"], rows, "<>><<", indent="  ")
    for o in route.get("overrides") or []:
        kind = "header" if "header" in o else "cookie"
        lines.append(f"  override: {kind} {o.get(kind)}: {o.get('value')} → {o.get('backend')}")
    shadow = route.get("shadow")
    if shadow:
        methods = ", ".join(shadow.get("methods") or [])
        lines.append(f"  shadow: {weight_text(shadow.get('percent'))}% of {methods} → {shadow.get('backend')}")
    return [_one_line(line) for line in lines]


def render_status(answer: Mapping[str, Any]) -> str:
    """``GET /api/v1/routes`` (``{"version", "routes"}``) or one route of it."""
    if "routes" not in answer:
        return "\n".join(route_lines(answer))
    lines = [f"config version {answer.get('version', '?')}"]
    if not answer["routes"]:
        lines.append("no routes")
    for route in answer["routes"]:
        lines += ["", *route_lines(route)]
    return "\n".join(lines)


def render_history(answer: Mapping[str, Any], width: int = 80) -> str:
    """``GET /api/v1/history``: newest first, as the API sends it.

    One line per change when every line fits in ``width`` columns. Otherwise a narrow
    layout: a short line per change (version, time, route, kind, actor) and under it the
    weights and the reason, wrapped — so nothing is cut and nothing runs off the screen.
    """
    entries = answer["entries"]
    if not entries:
        return "no changes recorded"
    fields = [
        {
            "VERSION": str(e["version"]),
            "TIME (UTC)": time_text(e),
            "ROUTE": _one_line(str(e["route"])),
            "WEIGHTS BEFORE→AFTER": _one_line(weights_change_text(e.get("before") or {}, e.get("after") or {})),
            "ACTOR": _one_line(str(e.get("actor", ""))),
            "KIND": _one_line(str(e.get("kind", ""))),
            "REASON": _one_line(str(e.get("reason") or "")),
        }
        for e in entries
    ]
    wide = ["VERSION", "TIME (UTC)", "ROUTE", "WEIGHTS BEFORE→AFTER", "ACTOR", "KIND", "REASON"]
    lines = table(wide, [[f[h] for h in wide] for f in fields], "><<<<<<")
    if max(cols(line) for line in lines) <= width:
        return "\n".join(lines)

    narrow = ["VERSION", "TIME (UTC)", "ROUTE", "KIND", "ACTOR"]
    heads = table(narrow, [[f[h] for h in narrow] for f in fields], "><<<<")
    indent = " " * heads[0].index("TIME")
    out = [heads[0]]
    for head, f in zip(heads[1:], fields, strict=True):
        out.append(head)
        for label, text in (("weights: ", f["WEIGHTS BEFORE→AFTER"]), ("reason:  ", f["REASON"])):
            out += textwrap.wrap(
                text,
                max(width, 40),
                initial_indent=indent + label,
                subsequent_indent=indent + " " * len(label),
                break_on_hyphens=False,
            )
    return "\n".join(out)


def render_change(answer: Mapping[str, Any]) -> str:
    """The answer to a weights, promote, rollback or restore call: ``{"route", "change", "changed"}``."""
    change = answer["change"]
    before: Mapping[str, float] = change.get("before") or {}
    after: Mapping[str, float] = change["after"]
    share = shares(after)
    why = f"{change.get('kind', 'change')} by {change.get('actor', '?')}"
    if change.get("reason"):
        why += f": {change['reason']}"
    if answer.get("changed") is False:  # the weights asked for were already in force
        # The entry is the one that set them, earlier: its WAS is not a change made now.
        heading = _one_line(
            f"route {change['route']} already has these weights: nothing changed, "
            f"still at version {change['version']} ({why})"
        )
        headers = ["BACKEND", "WEIGHT", "SHARE"]
        rows = [[name, weight_text(w), share_text(share[name])] for name, w in after.items()]
        return "\n".join([heading, *table(headers, rows, "<>>", indent="  ")])
    heading = _one_line(f"route {change['route']} is now at version {change['version']} ({why})")
    headers = ["BACKEND", "WAS", "WEIGHT", "SHARE"]
    rows = [[name, weight_text(before.get(name)), weight_text(w), share_text(share[name])] for name, w in after.items()]
    return "\n".join([heading, *table(headers, rows, "<>>>", indent="  ")])


# ---- the shadow-diff report (pure) -----------------------------------------------------------

CLASS_LABELS = {"real": "REAL", "noise": "noise"}
_CLASS_RANK = {"real": 0, "noise": 1}
MIN_KEY_WIDTH = 16  # a field key is clipped in the middle to fit the terminal, never below this


def count_text(n: object) -> str:
    return str(n) if isinstance(n, int) and not isinstance(n, bool) else "-"


def rate_text(rate: object) -> str:
    """``0.94`` → ``94.0%``; ``None`` (no sample yet) → ``-``."""
    if isinstance(rate, int | float) and not isinstance(rate, bool):
        return f"{rate * 100:.1f}%"
    return "-"


def ratio_text(part: int, whole: int) -> str:
    return rate_text(part / whole if whole else 0.0)


def ms_text(seconds: object) -> str:
    """Seconds as milliseconds with two or three significant digits: ``0.16``, ``12.5``, ``340``."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "-"
    ms = seconds * 1000
    if ms < 10:
        return f"{ms:.2f}"
    if ms < 100:
        return f"{ms:.1f}"
    return f"{ms:.0f}"


def latency_text(latency: object) -> str:
    """``{"count", "p50", "p99"}`` (seconds) → ``0.16/0.54 ms``; no measurement → ``-``."""
    if not isinstance(latency, Mapping) or not latency.get("count"):
        return "-"
    return f"{ms_text(latency.get('p50'))}/{ms_text(latency.get('p99'))} ms"


def clip_middle(text: str, width: int) -> str:
    """``$.data[*].attributes.colour`` → ``$.data[*…s.colour``: both ends of a path matter."""
    if cols(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    head = (width - 1) // 2
    tail = width - 1 - head
    end = _fit(text[::-1], tail)[::-1] if tail else ""
    return _fit(text, head) + "…" + end


def clip_end(text: str, width: int) -> str:
    return text if cols(text) <= width else _fit(text, max(0, width - 1)) + "…"


def _fit(text: str, width: int) -> str:
    """The longest start of ``text`` that takes at most ``width`` columns."""
    if text.isascii():
        return text[:width]
    used = 0
    for i, ch in enumerate(text):
        used += _char_cols(ch)
        if used > width:
            return text[:i]
    return text


def _one_line(text: str) -> str:
    """Text from requests and responses as one safe line: control characters (a text
    body's newline, a terminal escape sequence's ESC) shown as escapes, never sent raw."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _report_heading(r: Mapping[str, Any]) -> str:
    shadow = r.get("shadow")
    if r.get("removed"):
        return _one_line(
            f"route {r['route']}: no longer in the config (the report is from before; "
            f"`splitproxy report --route {r['route']} --clear` clears it)"
        )
    if not shadow:
        return _one_line(f"route {r['route']}: no shadow configured now (the report is from before)")
    methods = ", ".join(shadow.get("methods") or []) or "no methods"
    noise = shadow.get("noise_percent")
    replay = f"; noise replay {weight_text(noise)}%" if noise else "; no noise replay"
    percent = weight_text(shadow.get("percent"))
    return _one_line(f"route {r['route']}: shadow → {shadow.get('backend')}, {percent}% of {methods}{replay}")


def _totals(r: Mapping[str, Any], width: int) -> list[str]:
    compared, real, anydiff = int(r["compared"]), int(r["with_real_diff"]), int(r["with_diff"])
    texts = [
        f"compared {compared}: {real} with a real difference ({ratio_text(real, compared)}), "
        f"{anydiff} with any ({ratio_text(anydiff, compared)})",
        f"{r['noise_compared']} replays to the live version to learn its noise"
        if r.get("noise_compared")
        else "no replays to the live version yet: every difference counts as real",
    ]
    return [
        line
        for text in texts
        for line in textwrap.wrap(text, max(width, 40), initial_indent="  ", subsequent_indent="    ")
    ]


def _shown_fields(ep: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The fields that differed live vs shadow, real first (then in the API's order)."""
    fields: Mapping[str, Any] = ep.get("fields") or {}
    shown = [(k, f) for k, f in fields.items() if f.get("classification") in _CLASS_RANK]
    return sorted(shown, key=lambda kf: _CLASS_RANK[kf[1]["classification"]])


def _field_cells(key: str, f: Mapping[str, Any]) -> list[str]:
    return [
        CLASS_LABELS[f["classification"]],
        key,
        rate_text(f.get("rate")),
        f"{count_text(f.get('differing'))}/{count_text(f.get('compared'))}",
        "vs noise",
        rate_text(f.get("noise_rate")),
        f"{count_text(f.get('noise_differing'))}/{count_text(f.get('noise_compared'))}",
        # differences of shape (missing, extra, another type) vs the live version's own
        f"(shape {count_text(f.get('shape_differing'))} vs {count_text(f.get('noise_shape_differing'))})"
        if f.get("shape_differing")
        else "",
    ]


FIELD_ALIGN = "<<><<><<"
FIELD_INDENT = "    "
SAMPLE_INDENT = "         "


def _field_lines(fields: list[tuple[str, Mapping[str, Any]]], width: int) -> list[str]:
    """Per field, its line: aligned across the whole route; the key clipped so a line fits."""
    if not fields:
        return []
    rest = table([""] * 8, [_field_cells("", f) for _, f in fields], FIELD_ALIGN, indent=FIELD_INDENT)
    room = max(MIN_KEY_WIDTH, width - max(cols(line) for line in rest))
    rows = [_field_cells(clip_middle(_one_line(k), room), f) for k, f in fields]
    return table([""] * 8, rows, FIELD_ALIGN, indent=FIELD_INDENT)[1:]


def _values_text(live: str, shadow: str, room: int) -> str:
    """``live → shadow`` in ``room`` columns: a short value is kept whole, the other clipped.
    Two long values alike at the start are shown from a little before where they differ (cut
    from the start, 5000 ``W`` against 5001 showed the same text twice)."""
    room -= len(" → ")
    shorter = min(len(live), len(shadow))
    common = next((i for i in range(shorter) if live[i] != shadow[i]), shorter)
    if live != shadow and shorter > room // 2 and common > room // 2 - 12:
        start = common - 8
        live, shadow = "…" + live[start:], "…" + shadow[start:]
    short = min(cols(live), cols(shadow), room // 2)
    live = clip_end(live, room - min(cols(shadow), room - short))
    return f"{live} → {clip_end(shadow, room - cols(live))}"


def sample_lines(sample: Mapping[str, Any], width: int = 80) -> list[str]:
    """One sample: ``GET /products/3  200→200  $.data.price: 6.25 → 625`` on one line when
    it fits ``width``, else the values on a second line; clipped, never wrapped."""
    width = max(width, 40)
    live, shadow = (
        ("(absent)" if v is None else _one_line(str(v))) for v in (sample.get("live"), sample.get("shadow"))
    )
    statuses = f"{count_text(sample.get('live_status'))}→{count_text(sample.get('shadow_status'))}"
    where = f"{_one_line(str(sample.get('request', '?')))}  {statuses}  {_one_line(str(sample.get('path', '?')))}"
    one = f"{SAMPLE_INDENT}{where}: {live} → {shadow}"
    if cols(one) <= width:
        return [one]
    second = SAMPLE_INDENT + "  "
    return [
        clip_end(SAMPLE_INDENT + where, width),
        second + _values_text(live, shadow, width - len(second)),
    ]


def _endpoint_notes(ep: Mapping[str, Any]) -> list[str]:
    notes = []
    truncated = ep.get("truncated") or 0
    if truncated:
        notes.append(f"{FIELD_INDENT}{truncated} comparisons over the diff cap: status and headers only")
    omitted = ep.get("fields_omitted") or 0
    if omitted:
        notes.append(f"{FIELD_INDENT}… and {omitted} more differing fields (the report lists the first)")
    overflow = ep.get("fields_overflow")
    if overflow and overflow.get("differing"):
        notes.append(
            f"{FIELD_INDENT}… fields beyond the per-endpoint limit, counted together: "
            f"{count_text(overflow.get('differing'))}/{count_text(overflow.get('compared'))} differing"
        )
    return notes


def report_route_lines(r: Mapping[str, Any], width: int = 80, *, samples: bool = False) -> list[str]:
    """One route of ``GET /api/v1/shadow/report``: heading, totals, then per endpoint a line
    and under it the fields that differed (real first), optionally with their samples."""
    lines = [_report_heading(r)]
    endpoints: Mapping[str, Any] = r.get("endpoints") or {}
    if not r.get("compared") and not endpoints:
        lines.append("  no comparisons yet")
        return lines
    lines += _totals(r, width)
    names = list(endpoints)  # path templates from requests: printed with _one_line
    headers = ["ENDPOINT", "COMPARED", "DIFF", "REAL", "LIVE p50/p99", "SHADOW p50/p99"]
    rows = [
        [
            _one_line(name),
            count_text(ep.get("compared")),
            rate_text(ep.get("diff_rate")),
            rate_text(ep.get("real_diff_rate")),
            latency_text((ep.get("latency") or {}).get("live")),
            latency_text((ep.get("latency") or {}).get("shadow")),
        ]
        for name, ep in endpoints.items()
    ]
    heads = table(headers, rows, "<>>>>>", indent="  ")
    names_apart = max(cols(line) for line in heads) > width
    if names_apart:  # long endpoint names: each on its own line, the numbers under it
        heads = table(headers[1:], [row[1:] for row in rows], ">>>>>", indent="    ")
    lines += ["", heads[0]]
    per_endpoint = [_shown_fields(endpoints[name]) for name in names]
    field_lines = iter(_field_lines([f for fs in per_endpoint for f in fs], width))
    for name, row_line, fields in zip(names, heads[1:], per_endpoint, strict=True):
        if names_apart:
            lines.append(f"  {clip_end(_one_line(name), max(width, 40) - 2)}")
        lines.append(row_line)
        for _key, f in fields:
            lines.append(next(field_lines))
            if samples:
                lines += [line for s in f.get("samples") or [] for line in sample_lines(s, width)]
        lines += _endpoint_notes(endpoints[name])
    return lines


def render_report(
    answer: Mapping[str, Any], width: int = 80, *, samples: bool = False, route: str | None = None
) -> str:
    """``GET /api/v1/shadow/report``: every shadowed route (or ``route``), one block each."""
    routes = answer["routes"]
    if not routes:
        if route is not None:
            return f"route {route} has no shadow configured and no report"
        return "no shadowed routes (a route's `shadow:` section turns it on)"
    return "\n\n".join("\n".join(report_route_lines(r, width, samples=samples)) for r in routes)


def render_cleared(answer: Mapping[str, Any], route: str | None = None) -> str:
    """``DELETE /api/v1/shadow/report``: ``{"cleared": route | "all"}``."""
    cleared = route if route is not None else _one_line(str(answer["cleared"]))
    if route is None and cleared == "all":
        return "cleared the shadow-diff report of every route"
    return f"cleared the shadow-diff report of route {cleared}"


# ---- the HTTP client (I/O) -------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """A host (an admin URL's, a listen address) that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe(err: object, timeout: float) -> str:
    """A short reason for a failed connection: ``Connection refused``, not ``[Errno 111] ...``."""
    if isinstance(err, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip()
    return text or type(err).__name__


@dataclass(frozen=True)
class AdminClient:
    """One admin API (``base_url``), as the CLI talks to it: one request per call."""

    base_url: str
    token: str | None = None
    actor: str = "cli"
    timeout: float = DEFAULT_TIMEOUT
    _opener: urllib.request.OpenerDirector = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        # An http_proxy in the environment must not carry a loopback admin call to another
        # machine (urllib honours it unless no_proxy lists the host); remote ones follow it.
        handlers = [urllib.request.ProxyHandler({})] if is_loopback(host) else []
        object.__setattr__(self, "_opener", urllib.request.build_opener(*handlers))

    # -- the API, one method per endpoint ---------------------------------------------------

    def routes(self) -> dict[str, Any]:
        return self.call("GET", "/api/v1/routes")

    def route(self, name: str) -> dict[str, Any]:
        return self.call("GET", f"/api/v1/routes/{_segment(name)}")

    def set_weights(
        self, route: str, weights: Mapping[str, float], *, reason: str | None = None, if_match: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"weights": {name: _number(w) for name, w in weights.items()}}
        if reason is not None:
            body["reason"] = reason
        return self.call("PUT", f"/api/v1/routes/{_segment(route)}/weights", body=body, if_match=if_match)

    def promote(
        self, route: str, backend: str, *, reason: str | None = None, if_match: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"backend": backend}
        if reason is not None:
            body["reason"] = reason
        return self.call("POST", f"/api/v1/routes/{_segment(route)}/promote", body=body, if_match=if_match)

    def rollback(self, route: str, *, reason: str | None = None, if_match: int | None = None) -> dict[str, Any]:
        body = {} if reason is None else {"reason": reason}
        return self.call("POST", f"/api/v1/routes/{_segment(route)}/rollback", body=body, if_match=if_match)

    def history(self, route: str | None = None, *, limit: int | None = None) -> dict[str, Any]:
        query: dict[str, str] = {}
        if route is not None:
            query["route"] = route
        if limit is not None:
            query["limit"] = str(limit)
        return self.call("GET", "/api/v1/history", query=query)

    def restore(self, version: int, *, reason: str | None = None) -> dict[str, Any]:
        body = {} if reason is None else {"reason": reason}
        return self.call("POST", f"/api/v1/history/{version}/restore", body=body)

    def shadow_report(self, route: str | None = None) -> dict[str, Any]:
        return self.call("GET", "/api/v1/shadow/report", query=None if route is None else {"route": route})

    def clear_shadow_report(self, route: str | None = None) -> dict[str, Any]:
        return self.call("DELETE", "/api/v1/shadow/report", query=None if route is None else {"route": route})

    # -- the one request --------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: object = None,
        if_match: int | None = None,
    ) -> dict[str, Any]:
        """One request; the answer's JSON object, or a ``ClientError`` saying what went wrong."""
        url = self.base_url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {
            "Accept": "application/json",
            "User-Agent": f"splitproxy-cli/{__version__}",
            "X-Splitproxy-Actor": self.actor,
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            # http.client sends header values as Latin-1: this sends the token's UTF-8 bytes
            # (or the environment's own bytes, kept by surrogateescape), which the API compares.
            headers["Authorization"] = "Bearer " + self.token.encode("utf-8", "surrogateescape").decode("latin-1")
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:  # an answer, with an error status
            with exc:
                try:
                    raw = exc.read()
                except (OSError, http.client.HTTPException):
                    raw = b""
            raise self._error(exc.code, raw) from None
        except urllib.error.URLError as exc:  # connecting or sending: no answer was awaited yet
            raise self._unreachable(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets while reading the answer
            raise self._unreachable(exc, method) from None
        return self._answer(status, raw)

    def _unreachable(self, err: object, method: str = "GET") -> Unreachable:
        if isinstance(err, TimeoutError) and method not in ("GET", "HEAD"):
            # The request may have been read and the change made (a slow worker, a full disk).
            return Unreachable(
                f"no answer from the admin API at {self.base_url} within {self.timeout:g}s: the change may "
                "have been made or not; `splitproxy history` shows which"
            )
        return Unreachable(
            f"cannot reach the admin API at {self.base_url}: {_describe(err, self.timeout)} ({UNREACHABLE_HINT})"
        )

    def _answer(self, status: int, raw: bytes) -> dict[str, Any]:
        try:
            answer = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            answer = None
        if not isinstance(answer, dict):
            raise self._not_admin(status, raw)
        return answer

    def _not_admin(self, status: int, raw: bytes) -> Unreachable:
        """An HTTP answer without the admin API's JSON: most often ``--admin`` names the data
        listener or another service."""
        body = f" {_snippet(raw)!r}" if raw.strip() else ""
        if status >= 500:
            hint = f"is {self.base_url} the admin listener? if so, the proxy's log says what failed"
        else:
            hint = UNREACHABLE_HINT
        return Unreachable(f"{self.base_url} answered HTTP {status}{body}, not the admin API's JSON ({hint})")

    def _error(self, status: int, raw: bytes) -> ClientError:
        if status == 401:
            if self.token:
                return Unauthorized(
                    f"the admin API at {self.base_url} refused the token in {TOKEN_ENV} "
                    "(HTTP 401): set it to the token the proxy was started with"
                )
            return Unauthorized(
                f"the admin API at {self.base_url} needs a token (HTTP 401): "
                f"set {TOKEN_ENV} to the token the proxy was started with"
            )
        try:
            error = json.loads(raw)["error"]
            message = str(error["message"])
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            return self._not_admin(status, raw)
        where = error.get("where") if isinstance(error, dict) else None
        hint = "; `splitproxy status ROUTE` shows the current version" if status == 412 else ""
        return ApiError(status, message, str(where) if where else None, hint)


def _segment(name: str) -> str:
    """A route name as one path segment: ``a/b`` must not become two."""
    return urllib.parse.quote(name, safe="")


def _number(weight: float) -> float | int:
    """Whole weights go out as integers, so the API's history reads ``90``, not ``90.0``."""
    return int(weight) if weight.is_integer() else weight


def _snippet(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return text if len(text) <= 200 else text[:200] + "…"


def client_from(admin: str, *, timeout: float = DEFAULT_TIMEOUT, environ: Mapping[str, str]) -> AdminClient:
    """The client the CLI uses: ``--admin``, the token from ``SPLITPROXY_ADMIN_TOKEN``, the actor."""
    token = environ.get(TOKEN_ENV, "").strip() or None
    if token is not None:
        _check_token(token)
    return AdminClient(admin_url(admin), token=token, actor=actor_for(login_name()), timeout=timeout)


def _check_token(token: str) -> None:
    """A token must fit in one header line (http.client refuses a CR or LF, with the token in its
    message). Raises ``UsageError``, which never shows the token."""
    if any(ch < " " or ch == "\x7f" for ch in token):
        raise UsageError(f"{TOKEN_ENV} holds a control character: a bearer token is one line of text")
    try:
        token.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no environment gives: only from a caller
        raise UsageError(f"{TOKEN_ENV} is not text that can be sent") from None
