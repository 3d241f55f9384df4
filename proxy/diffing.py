"""Shadow-diff engine: endpoint grouping, response comparison, noise statistics, report. Pure.

The shadow shell (I/O) hands this module complete, already captured responses and the
time and random points it drew itself; nothing here awaits, reads a clock or draws a
random number, so every result is a function of the arguments (STYLE.md: randomness and
time are inputs). The pieces, in the order the shell uses them:

1. ``endpoint_template(method, path, templates)`` groups requests: ``GET /users/{id}``.
   ``EndpointCap`` bounds how many endpoints a route tracks (metric labels stay bounded).
2. ``compare(live, shadow, ...)`` diffs two ``Captured`` responses and returns a
   ``Comparison``: the field keys that were compared, the keys that differed, and one
   ``FieldDiff`` sample per differing key. ``diff()`` is the same, diffs only.
3. ``RouteStats.record(...)`` adds a live-vs-shadow comparison (plus latencies and a
   redacted sample), ``RouteStats.record_noise(...)`` a live-vs-live-replay comparison.
   ``classify(FieldStats, ShadowNoise)`` is the noise-cancellation rule.
4. ``report(stats, noise=...)`` renders the JSON-ready report.
5. ``merge(a, b)``, ``RouteStats.to_dict()`` / ``RouteStats.from_dict()``: accumulators
   are commutative monoids (every bounded part keeps the *k smallest* items of a fixed
   total order, every count is a sum), so batches and worker processes can be summed in
   any grouping.

Field keys and paths. ``FieldDiff.path`` is exact (``$.items[3].price``); the field key
used for counting folds every array index to ``[*]`` and id-like object keys to
``.{id}`` (``$.items[*].price``), and so do all the member names of an object of more than
``WIDE_OBJECT`` members (a map keyed by slugs, SKUs, user names: ``$.prices.{id}``), so
counts stay bounded. Keys are ``status``, ``header.<name>``, ``body`` (text and binary
bodies) and JSON paths (``$...``). Any key from the report is also a valid
``ignore_fields`` / redact pattern (whose ``{id}`` matches any name).

Two implementations of the JSON walk. When ``proxy._jsondiff`` is built (native/jsondiff.c,
setup.py), both bodies are parsed by yyjson and walked in C, with Python objects made only
for what is reported: ~4.5x less time on a 64 KiB pair that differs. The Python walk below is
the same algorithm, visit for visit, and runs when the module is missing or leaves a body
to it (NaN, integers beyond 64 bits, repeated keys, lone surrogates: what the C walk does
not mirror exactly); tests/test_jsondiff_native.py keeps the two in agreement.

Cost (bench/bench_diff.py): the JSON parse dominates; equal sub-trees are skipped with
one C-level ``==`` and then visited through one exemplar per (field key, key set). Two
consequences, both bounded to sub-trees that Python already found equal: a nested
optional field that appears only in later, identical elements is not counted as compared
for that response (a differing field always is); and since ``True == 1`` in Python, a
``1`` -> ``true`` change is caught in the exemplar (so a change made by a serialiser,
which hits every element, is caught) but not in a later element of the same shape.
Arrays of 8 or more elements find the elements to visit (differing ones, and the first of
each new key tuple) with C-level passes rather than a Python loop over every element; the
visits and their order are the same. Comparing an answer with an equal one (the common
outcome) is remembered: small equal answers map to their ``Comparison``, equal JSON bodies
to their field keys. Both memos are exact (keyed by the bytes themselves) and bounded by the
bytes they hold; a repeat then costs a hash of the body instead of a parse and a walk.
"""

from __future__ import annotations

import codecs
import copy
import difflib
import hashlib
import heapq
import json
import math
import re
import zlib
from collections.abc import Hashable, Iterable, Mapping, Set
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from itertools import compress
from operator import eq, ne, not_
from typing import Any, Final, Generic, Literal, NamedTuple, TypeAlias, TypeVar, cast
from urllib.parse import quote, unquote_plus

import orjson

from proxy.config import ShadowNoise
from proxy.fieldpath import ANY_INDEX, ANY_KEY, ID, field_path_spans, parse_field_path

try:
    # The same JSON walk in C (native/jsondiff.c): several times cheaper on large bodies.
    from proxy import _jsondiff

    _native: Any = _jsondiff
except ImportError:  # pragma: no cover - installed without a C compiler: the Python walk does it all
    _native = None

DiffKind: TypeAlias = Literal["changed", "type", "missing", "extra", "length", "bytes"]
# Differences of shape rather than of value: a field present on one side only, or of another
# JSON type. Counted apart (``FieldStats.shape_differing``): a field whose value changes from
# one answer of the live version to the next is noise as a value, not when the shadow drops it
# or sends it as another type (QA, eighth round).
SHAPE_KINDS: Final[frozenset[str]] = frozenset({"missing", "extra", "type"})
BodyMode: TypeAlias = Literal["json", "text", "bytes", "empty", "truncated"]
Classification: TypeAlias = Literal["real", "noise", "none"]

DEFAULT_IGNORE_HEADERS: Final = frozenset({"date", "server", "x-request-id"})
# RFC 9110 §7.6.1: hop-by-hop fields describe one connection, not the representation, so a
# difference in them says nothing about the two versions. Same set as proxy/headers.py.
HOP_BY_HOP_HEADERS: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
ALWAYS_REDACTED_HEADERS: Final = frozenset(
    {"authorization", "cookie", "set-cookie", "proxy-authorization"}
    # API keys and tokens sent as headers of their own (QA, seventh round)
    | {"x-api-key", "x-auth-token", "x-access-token", "x-amz-security-token", "x-goog-api-key", "x-csrf-token"}
)
# Query parameters whose values are replaced in a sample's request line.
SENSITIVE_QUERY_PARAMS: Final = frozenset(
    {"access_token", "api_key", "apikey", "auth", "key", "password", "secret", "sig", "signature", "token"}
    # Session ids sent in the URL (a path parameter, /cart;jsessionid=...): a Cookie's worth.
    | {"jsessionid", "phpsessid", "sessionid", "session_id"}
    # OAuth's (RFC 6749: codes, client secrets, refresh and id tokens), presigned URLs' (S3's
    # X-Amz-*, Google Cloud Storage's X-Goog-*), and more names of passwords and keys; "-"
    # reads as "_" (QA, seventh round)
    | {"client_secret", "code", "refresh_token", "id_token", "passwd", "pwd", "private_key", "credential"}
    | {"x_amz_signature", "x_amz_credential", "x_amz_security_token", "x_goog_signature", "x_goog_credential"}
)
REDACTED: Final = "[redacted]"
OTHER_ENDPOINT: Final = "{other}"
_OTHER_SUFFIX: Final = " " + OTHER_ENDPOINT
DEFAULT_MAX_ENDPOINTS: Final = 100

MAX_VALUE_CHARS: Final = 200  # FieldDiff.live / .shadow
MAX_SAMPLE_PATH: Final = 1000  # a sample's exact path (long member names make long paths)
# a sample's request line, once redacted: a client's 60 KB query made 93 MB of report
MAX_SAMPLE_REQUEST: Final = 1000
# A JSON pair whose walk would count more field keys than this compares as text (or bytes),
# as a body that does not parse: each distinct key is a Python string made and hashed, ~1-2 us
# apiece, and an upstream's 1.2 MB of 32,000 objects under names of their own made 96,000 of
# them, ~0.2 s of the event loop per comparison (such a map folds its names now, WIDE_OBJECT;
# many names in objects no wider than that still count a key each). Both walks stop as they
# pass it.
MAX_JSON_FIELD_KEYS: Final = 4096
# Field keys counted per comparison: all that a JSON walk finds (MAX_JSON_FIELD_KEYS, past
# which a pair is compared as text). With 500, a body of more keys had its deeper ones counted
# as compared only in the comparisons where they differed: a rate of 100 %, "real", however
# rarely (QA, eighth round: a map of 900 members named by slugs). What an endpoint keeps of
# them is ``Limits.fields``, cut back in a fixed order, which depends on no count.
MAX_FIELDS: Final = MAX_JSON_FIELD_KEYS + 256  # and status, body, the headers
MAX_DIFFS: Final = 100  # FieldDiff samples per comparison
MAX_TEXT_DIFFS: Final = 5  # differing lines reported per text body
MAX_JSON_DEPTH: Final = 64  # deeper sub-trees are compared whole, as one field
MAX_DECODED_BODY: Final = 8 << 20  # gzip/deflate output cap; beyond it the body counts as truncated
# gzip members read in one body; beyond it the body counts as truncated. Each member's end
# copies the rest of the body (zlib's unused_data): 131,000 empty members in 1 MiB took 1.8 s.
MAX_GZIP_MEMBERS: Final = 32
MAX_SIGNATURE_KEYS: Final = 32
SAMPLE_BODY_CHARS: Final = 2048
# Above this much work (differing lines n * m * min(n, m): difflib's worst case, lines that
# repeat) the lines are paired by position. An area bound (n * m <= 40,000) let 200 by 200
# repeated lines take 79 ms on the event loop; this one is ~5 ms at worst.
_DIFFLIB_MAX_WORK: Final = 400_000


# ---- endpoints ---------------------------------------------------------------------------------

_UUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
_ID_RE: Final = re.compile(rf"[0-9]+|{_UUID}|[0-9A-Fa-f]{{16,}}")


# An object key longer than this is an id too (a URL, a sentence, a blob used as a key): field
# keys stay short, and what is kept for them bounded (an upstream's 63 nested 15,000-character
# names made 30 MB of field keys in one comparison, and GBs in the report and the database).
MAX_KEY_NAME: Final = 64
# An object of more members than this is read as a map: all its member names fold to ``.{id}``
# as ids do (both sides' keys, when either side is this wide after ignore_fields; a pattern's
# ``{id}`` matches any name, see _Node). A map of 1,400 products keyed by slug made 4,200
# field keys, one per member and field: a pair past MAX_JSON_FIELD_KEYS was compared as text,
# where a timestamp's line made every real change noise (QA, eighth round). Records wider
# than this are rare (GitHub's repository object, one of the widest in common use, has ~90
# members).
WIDE_OBJECT: Final = 128


def is_id(segment: str) -> bool:
    """A path segment or object key that names one thing: digits, a UUID, >= 16 hex digits,
    or anything over MAX_KEY_NAME characters."""
    return len(segment) > MAX_KEY_NAME or _ID_RE.fullmatch(segment) is not None


def is_id_segment(segment: str) -> bool:
    """A path segment that names one thing, not a kind of thing, so it folds to ``{id}``:
    what ``is_id`` folds; a number in any notation (``-5``, ``1.5``, ``2024-05-01``,
    ``12:30``); anything with an ``@`` (an e-mail address); three digits in a row in five
    or more characters (``ORD-7781``, ``user1234``); 7 to 15 hex digits with a digit and a
    letter among them (a short git commit or Docker id, ``28cbaa2cb34e``); a token, letters, digits, ``_`` and
    ``-`` only, of 12 or more characters with a digit and both cases (``aB3xY9zQk2Lm_Tq``)
    or of 20 or more with a letter and a digit; and any segment over 64 characters. Names
    stay (``/users/alice``, ``oauth2callback``, ``jquery-3.6.0.min.js``): a
    ``diff.endpoints`` template folds those. One regex call at
    most: it runs for every mirrored request whose URL the endpoint cache has not seen."""
    if segment.isalpha() and len(segment) < 16:  # most segments ("users"): no regex at all
        return False
    return _SEGMENT_ID.fullmatch(segment) is not None


MAX_ENDPOINT_SEGMENT: Final = 64
MAX_ENDPOINT_CHARS: Final = 256  # a longer endpoint name (after folding) is counted as {other}
_SEGMENT_ID: Final = re.compile(
    r"(?s)[+-]?[0-9]+(?:[.,:_-][0-9]+)*"  # a number in any notation
    rf"|{_UUID}|[0-9A-Fa-f]{{16,}}"  # is_id's
    r"|.*(?:@|%40).*"  # an e-mail address
    r"|(?=.{5}).*[0-9]{3}.*"  # three digits in a row
    r"|(?=[0-9A-Fa-f]{7,15}\Z)(?=.*[0-9])(?=.*[A-Fa-f]).*"  # a short hex id: a git or Docker one
    r"|(?=[A-Za-z0-9_-]{12,}\Z)(?=.*[0-9])(?=.*[a-z])(?=.*[A-Z]).*"  # a token, both cases
    r"|(?=[A-Za-z0-9_-]{20,}\Z)(?=.*[0-9])(?=.*[A-Za-z]).*"  # a long token
    rf"|.{{{MAX_ENDPOINT_SEGMENT + 1},}}"  # long
)


@dataclass(frozen=True, slots=True)
class _Template:
    text: str
    parts: tuple[str | None, ...]  # None: a ``{name}`` parameter, one non-empty segment
    literals: int


@lru_cache(maxsize=64)
def _compile_templates(templates: tuple[str, ...]) -> dict[int, tuple[_Template, ...]]:
    by_len: dict[int, list[_Template]] = {}
    for text in templates:
        parts = tuple(
            None if s.startswith("{") and s.endswith("}") and len(s) > 2 else _as_in_paths(s) for s in text.split("/")
        )
        literals = sum(p is not None for p in parts)
        by_len.setdefault(len(parts), []).append(_Template(text, parts, literals))
    # Most literal segments first ("/users/me" beats "/users/{id}"); ties keep config order.
    return {n: tuple(sorted(ts, key=lambda t: -t.literals)) for n, ts in by_len.items()}


def _path_only(target: str) -> str:
    path = target.partition("?")[0].partition("#")[0]
    if not path.startswith("/") and "://" in path:  # absolute-form request target
        path = "/" + path.partition("://")[2].partition("/")[2]
    if ";" in path:  # RFC 3986 §3.3 path parameters (;jsessionid=...): not the endpoint's
        path = _PATH_PARAMS.sub("", path)
    if "%" in path:  # RFC 3986 §6.2.2.2: /t/%31%32 is /t/12, and its id folds like it
        path = _PERCENT.sub(_unreserved, path)
    return path or "/"


_PERCENT: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_PATH_PARAMS: Final = re.compile(r";[^/]*")
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _as_in_paths(literal: str) -> str:
    """A template's literal segment as request paths come (``_path_only``): ``/ü/`` arrives
    as ``/%C3%BC/``, so a template written with the character never matched."""
    return _PERCENT.sub(_unreserved, quote(literal, safe="%!$&'()*+,;=:@"))


def _unreserved(m: re.Match[str]) -> str:
    """An escaped unreserved character as itself; any other escape as it came, in upper case."""
    ch = chr(int(m[1], 16))
    return ch if ch in _UNRESERVED else m[0].upper()


def endpoint_template(method: str, path: str, templates: tuple[str, ...] = ()) -> str:
    """``"GET /users/{id}"`` for ``("GET", "/users/42?x=1")``.

    The query string is dropped. A configured template (``/orgs/{org}/repos/{repo}``,
    ``{name}`` matches one non-empty segment) wins when it matches, the one with most
    literal segments first. Otherwise id-like segments fold to ``{id}`` (``is_id_segment``),
    and a name still longer than MAX_ENDPOINT_CHARS is the method's ``{other}``.
    """
    path = _path_only(path)
    segments = path.split("/")
    if templates:
        for t in _compile_templates(templates).get(len(segments), ()):
            if all((p is None and s) or p == s for p, s in zip(t.parts, segments, strict=True)):
                return f"{method} {t.text}"
    name = method + " " + "/".join("{id}" if s and is_id_segment(s) else s for s in segments)
    return name if len(name) <= MAX_ENDPOINT_CHARS else overflow_endpoint(name)


def overflow_endpoint(endpoint: str) -> str:
    """Where an endpoint beyond the cap is counted: ``"GET {other}"``."""
    return f"{endpoint.partition(' ')[0]} {OTHER_ENDPOINT}"


def capped_endpoint(endpoint: str, known: Set[str], limit: int) -> str:
    """``endpoint`` when it is known or there is room for it, else its overflow endpoint."""
    if endpoint in known or len(known) < limit:
        return endpoint
    return overflow_endpoint(endpoint)


class EndpointCap:
    """The endpoints one route tracks: first come, first kept, at most ``limit``.

    Admission never evicts, so a metric label once issued stays valid. Keep one per route
    per process; summed over ``W`` workers a route has at most ``W * limit`` endpoints.
    """

    __slots__ = ("_known", "limit")

    def __init__(self, limit: int = DEFAULT_MAX_ENDPOINTS, known: Iterable[str] = ()) -> None:
        self.limit = limit
        self._known: set[str] = set()
        for e in known:
            self.admit(e)

    def admit(self, endpoint: str) -> str:
        got = capped_endpoint(endpoint, self._known, self.limit)
        if got == endpoint and not endpoint.endswith(_OTHER_SUFFIX):  # {other} takes no slot
            self._known.add(endpoint)
        return got

    @property
    def known(self) -> frozenset[str]:
        return frozenset(self._known)

    def __contains__(self, endpoint: object) -> bool:
        return endpoint in self._known

    def __len__(self) -> int:
        return len(self._known)


# ---- field paths (ignore and redact patterns) ----------------------------------------------------

# The grammar of the patterns is proxy/fieldpath.py (the config check parses each with it).


class _Node:
    """A trie of compiled patterns; ``terminal``: the path so far is ignored / redacted.
    ``{id}`` compiles to ``any_key``, as ``*`` does: a report's ``.{id}`` stands for any name
    (an id, or any member of an object wider than WIDE_OBJECT), and a pattern that matched
    names by the width of their object would not match the same names in both answers when
    one answer's object is wider than WIDE_OBJECT and the other's is not (the walk folds
    both, and reported the members the pattern stripped from one side only)."""

    __slots__ = ("any_index", "any_key", "indexes", "keys", "terminal")

    def __init__(self) -> None:
        self.keys: dict[str, _Node] = {}
        self.indexes: dict[int, _Node] = {}
        self.any_key: _Node | None = None
        self.any_index: _Node | None = None
        self.terminal = False


_States: TypeAlias = tuple[_Node, ...]


@lru_cache(maxsize=128)
def _compile_paths(patterns: tuple[str, ...]) -> _Node | None:
    if not patterns:
        return None
    root = _Node()
    for pattern in patterns:
        node = root
        for seg in parse_field_path(pattern):
            if seg is ANY_INDEX:
                node.any_index = node = node.any_index or _Node()
            elif seg is ANY_KEY or seg is ID:
                node.any_key = node = node.any_key or _Node()
            elif isinstance(seg, int):
                node = node.indexes.setdefault(seg, _Node())
            else:
                assert isinstance(seg, str)
                node = node.keys.setdefault(seg, _Node())
        node.terminal = True
    return root


def _step_key(states: _States, key: str) -> tuple[_States, bool]:
    nxt: list[_Node] = []
    for node in states:
        for child in (node.keys.get(key), node.any_key):
            if child is not None:
                if child.terminal:
                    return (), True
                nxt.append(child)
    return tuple(nxt), False


def _step_index(states: _States, index: int) -> tuple[_States, bool]:
    nxt: list[_Node] = []
    for node in states:
        for child in (node.indexes.get(index), node.any_index):
            if child is not None:
                if child.terminal:
                    return (), True
                nxt.append(child)
    return tuple(nxt), False


# ---- values ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Captured:
    """One complete response as the shell teed it (``truncated``: the diff cap was reached)."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()  # lower-case names, in received order
    body: bytes = b""
    truncated: bool = False

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name]
        return ", ".join(values) if values else None


class FieldDiff(NamedTuple):
    """One difference. ``live`` / ``shadow`` are short renderings, ``None`` where absent.

    A named tuple rather than a frozen dataclass: one is made per difference found, and a
    frozen dataclass's ``__init__`` (five ``object.__setattr__`` calls) costs ~0.9 us under
    mypyc, a named tuple ~0.3: ~3 of the ~120 us a 64 KiB pair with five differences took."""

    path: str  # exact: "$.items[3].price", "header.etag", "status", "body.line[12]", "body"
    kind: DiffKind
    live: str | None
    shadow: str | None
    key: str = ""  # the aggregation key ("$.items[*].price"); "" means the same as path

    @property
    def field_key(self) -> str:
        return self.key or self.path


@dataclass(frozen=True, slots=True)
class Comparison:
    """What ``compare`` looked at and found: ``differing`` is a subset of ``fields``, and
    ``shape`` (keys with a difference of SHAPE_KINDS, whatever their first one) of
    ``differing``."""

    fields: frozenset[str]
    differing: frozenset[str]
    diffs: tuple[FieldDiff, ...]  # at most one per differing key, status and headers first
    body: BodyMode
    shape: frozenset[str] = frozenset()


_ABSENT: Final = object()
_NOTHING: Final[frozenset[str]] = frozenset()


def _clip(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip_pair(a: str | None, b: str | None) -> tuple[str | None, str | None]:
    """Both values of a difference in MAX_VALUE_CHARS characters each, cut so that where they
    first differ shows: two long strings that differ near their end read the same once each
    was cut at its start. Values come here in RENDER_CHARS at most (``_render``)."""
    limit = MAX_VALUE_CHARS
    if a is None or b is None or (len(a) <= limit and len(b) <= limit):
        return (None if a is None else _clip(a)), (None if b is None else _clip(b))
    same, n = 0, min(len(a), len(b))
    while same < n and a[same] == b[same]:
        same += 1
    if same < limit - _CONTEXT_CHARS:  # the plain cut shows it, with what follows
        return _clip(a), _clip(b)
    start = same - _CONTEXT_CHARS
    return _clip("…" + a[start:]), _clip("…" + b[start:])


RENDER_CHARS: Final = 4000  # a value is rendered this far before _clip_pair cuts it
_CONTEXT_CHARS: Final = 50  # what a cut value shows before its first difference


def _parse_json(body: bytes) -> Any:
    """orjson where it can (parsing is most of a JSON diff's cost, and orjson parses several
    times faster), the standard library for what orjson refuses but JSON bodies in the wild
    hold: NaN and Infinity. Same values either way. orjson does not refuse an integer beyond
    64 bits: it makes it a float, and two ids that differ only in their last digits would
    compare equal. So a body with a run of 19 digits or more anywhere (such an integer, or a
    long digit string or fraction, which the standard library parses to the same values)
    goes to the standard library; finding the run costs ~a third of orjson's parse."""
    if _LONG_DIGITS in body.translate(_DIGITS_ONLY):
        return json.loads(body)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


# Every digit as b"0", every other byte as a space: a run of 19 digits then reads _LONG_DIGITS
# (2**63 has 19 digits, so any integer beyond 64 bits has at least as many).
_DIGITS_ONLY: Final = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_DIGITS: Final = b"0" * 19


_ENCODE: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=repr).encode


def _render(value: object) -> str | None:
    if value is _ABSENT:
        return None
    # What _ENCODE gives, without its machinery for the scalars that most differences are
    # (it costs ~2 us a number, a good part of compare()'s own time on a large pair): the
    # encoder writes ints and finite floats with their repr, and the three constants.
    t = type(value)
    if t is float and math.isfinite(cast(float, value)):
        return _clip(float.__repr__(cast(float, value)), RENDER_CHARS)
    if t is int:
        return _clip(int.__repr__(cast(int, value)), RENDER_CHARS)
    if value is None or t is bool:
        return _CONSTANTS[cast(bool | None, value)]
    if t is str and len(cast(str, value)) > RENDER_CHARS:
        value = cast(str, value)[:RENDER_CHARS]  # do not JSON-escape 1 MB to show 200 characters
    return _clip(_ENCODE(value), RENDER_CHARS)


_CONSTANTS: Final[dict[bool | None, str]] = {None: "null", True: "true", False: "false"}


def _first_difference(a: str, b: str) -> int:
    """Where two strings first differ (the shorter one's length if one starts the other):
    compared by 4 KiB slices, then by character in the one that differs."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i : i + 4096] == b[i : i + 4096]:
        i += 4096
    while i < n and a[i] == b[i]:
        i += 1
    return min(i, n)


def _windows(a: str, b: str) -> tuple[str, str, bool]:
    """Both strings from a little before where they first differ, at most RENDER_CHARS each,
    and whether they were cut at their start: ``_clip_pair`` then shows the difference,
    wherever it is (cut at RENDER_CHARS first, two long strings alike that far read the same)."""
    start = max(0, _first_difference(a, b) - _CONTEXT_CHARS)
    return a[start : start + RENDER_CHARS], b[start : start + RENDER_CHARS], start > 0


def _render_pair(live: str, shadow: str) -> tuple[str, str]:
    """``_render`` of two differing JSON strings, as ``_clip_pair`` then shows them: long ones
    from where they first differ (``"…`` in front). The Python walk calls it for any two
    strings; the C walk for two of which one is too long for it to render itself."""
    if len(live) <= RENDER_CHARS and len(shadow) <= RENDER_CHARS:
        return cast(str, _render(live)), cast(str, _render(shadow))
    a, b, cut = _windows(live, shadow)
    if not cut:
        return cast(str, _render(a)), cast(str, _render(b))
    return '"…' + _ENCODE(a)[1:], '"…' + _ENCODE(b)[1:]


# ---- the JSON walk -----------------------------------------------------------------------------

# Parent field key -> object key -> (exact path segment, child field key). A memo of a pure
# function: array elements share their parent key, so most child keys are built and hashed
# once per process rather than once per element. Bounded by clearing.
_CHILDREN: dict[str, dict[str, tuple[str, str]]] = {}
_CHILDREN_MAX: Final = 4096


# The same for the members of wide objects (WIDE_OBJECT), whose field key is the parent's
# ".{id}" whatever the name.
_WIDE_CHILDREN: dict[str, dict[str, tuple[str, str]]] = {}


def _kids(key: str, wide: bool) -> dict[str, tuple[str, str]]:
    """What ``_CHILDREN`` (or, for a wide object, ``_WIDE_CHILDREN``) knows under ``key``."""
    return (_WIDE_CHILDREN if wide else _CHILDREN).get(key) or {}


def _new_child(key: str, name: str, fields: set[str], wide: bool = False) -> tuple[str, str]:
    """``_child`` (``_wide_child`` for a member of a wide object) for the walk, where a name is
    not yet known: it stops the walk of a body with too many field keys (checked here, as a
    new name is what makes a new key, and again at the end of the walk: what the memos knew
    is not checked as it comes)."""
    if len(fields) > MAX_JSON_FIELD_KEYS:
        raise _TooManyFields
    return _wide_child(key, name) if wide else _child(key, name)


# Names held by _CHILDREN and _WIDE_CHILDREN together, past which both are cleared: bounded
# per parent key and per memo alone, 4,096 parents of 4,096 names could hold 16.7 million
# (a shadow answering 500 wide maps of 1,000 names of its own grew them by 500,000 a call,
# 1.4 GB in eight calls; review, sixteenth session).
_CHILDREN_TOTAL_MAX: Final = 1 << 16
_children_total = 0


def _remember(memo: dict[str, dict[str, tuple[str, str]]], key: str) -> dict[str, tuple[str, str]]:
    """The memo's names under ``key``, for one more name to be added."""
    global _children_total  # noqa: PLW0603  # the memos' one counter
    _children_total += 1
    if _children_total > _CHILDREN_TOTAL_MAX:
        _CHILDREN.clear()
        _WIDE_CHILDREN.clear()
        _children_total = 1
    kids = memo.get(key)
    if kids is None:
        if len(memo) >= _CHILDREN_MAX:
            memo.clear()
        memo[key] = kids = {}
    elif len(kids) >= _CHILDREN_MAX:
        kids.clear()
    return kids


def _exact(name: str) -> str:
    """A member name's exact path segment: ``.name``, or ``["a b"]``."""
    return "." + name if name.isidentifier() else "[" + _ENCODE(name) + "]"


def _wide_child(key: str, name: str) -> tuple[str, str]:
    """``_child`` for a member of an object of more than WIDE_OBJECT members: its field key is
    ``key.{id}``, whatever the name."""
    exact = _exact(name)
    if len(name) > MAX_KEY_NAME:  # not remembered, as in _child
        return exact, key + ".{id}"
    got = _remember(_WIDE_CHILDREN, key)[name] = (exact, key + ".{id}")
    return got


def _child(key: str, name: str) -> tuple[str, str]:
    exact = _exact(name)
    if len(name) > MAX_KEY_NAME:  # an id (is_id), not remembered: 4,096 of them could be GBs
        return exact, key + ".{id}"
    got = _remember(_CHILDREN, key)[name] = (exact, key + (".{id}" if is_id(name) else exact))
    return got


class _Ignored:
    """Stands in for an ignored array element, so later indexes keep their places."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<ignored>"


_IGNORED: Final = _Ignored()


def _strip(value: Any, states: _States) -> Any:
    """Apply compiled ``ignore_fields`` patterns to a freshly parsed document, in place: a
    matched object member is deleted, a matched array element replaced by ``_IGNORED`` (so
    later indexes keep their places). Visits only nodes along the patterns, so the diff walk
    that follows needs no pattern state and keeps its ``==`` shortcuts. (Redaction, which
    also follows patterns through a change of shape, is ``_redact_states``.)"""
    if len(states) == 1:
        _strip_node(value, states[0])
    else:
        _strip_states(value, states)
    return value


def _strip_node(value: Any, node: _Node) -> None:
    """``_strip`` for one trie node: the common case, without building state tuples."""
    if type(value) is dict:
        if node.any_key is not None:
            _strip_states(value, (node,))
            return
        for k, child in node.keys.items():
            if k in value:
                if not child.terminal:
                    _strip_node(value[k], child)
                else:
                    del value[k]
    elif type(value) is list:
        elem = node.any_index
        if node.indexes or elem is None:
            if node.indexes:
                _strip_states(value, (node,))
            return
        if elem.terminal:
            value[:] = [_IGNORED] * len(value)
        elif (
            elem.keys
            and not elem.indexes
            and elem.any_index is None
            and elem.any_key is None
            and all(c.terminal for c in elem.keys.values())
        ):
            # "$.items[*].updated_at": drop the named members of every element, nothing deeper.
            # (Only names: "$.rows[*][1]" continues by an index, and all() of no names is
            # true; that pattern stripped nothing.)
            names = tuple(elem.keys)
            for x in value:
                if type(x) is dict:
                    for k in names:
                        if k in x:
                            del x[k]
        else:
            for x in value:
                _strip_node(x, elem)


def _strip_states(value: Any, states: _States) -> None:
    if type(value) is dict:
        if any(n.any_key is not None for n in states):
            names: Iterable[str] = list(value)
        else:
            names = list(dict.fromkeys(k for n in states for k in n.keys if k in value))
        for k in names:
            nxt, hit = _step_key(states, k)
            if hit:
                del value[k]
            elif nxt:
                _strip(value[k], nxt)
    elif type(value) is list:
        if any(n.any_index is not None for n in states):
            indexes: Iterable[int] = range(len(value))
        else:
            indexes = sorted({i for n in states for i in n.indexes if i < len(value)})
        for i in indexes:
            nxt, hit = _step_index(states, i)
            if hit:
                value[i] = _IGNORED
            elif nxt:
                _strip(value[i], nxt)


class _TooManyFields(Exception):
    """The Python walk passed MAX_JSON_FIELD_KEYS (what ``_jsondiff.diff`` returns False for)."""


class _Acc:
    __slots__ = ("differing", "diffs", "fields", "shape", "shapes")

    def __init__(self) -> None:
        self.fields: set[str] = set()  # the JSON walk's: at most MAX_JSON_FIELD_KEYS + 1
        self.differing: set[str] = set()
        self.shape: set[str] = set()  # differing keys with a difference of SHAPE_KINDS
        self.diffs: list[FieldDiff] = []
        # (field key, shape) of equal sub-trees already visited: one exemplar per shape.
        self.shapes: set[tuple[str, object] | None] = set()

    def found(self, path: str, key: str, kind: DiffKind, live: str | None, shadow: str | None) -> None:
        self.fields.add(key)
        if kind in SHAPE_KINDS:
            self.shape.add(key)
        if key not in self.differing:
            self.differing.add(key)
            if len(self.diffs) < MAX_DIFFS:
                live, shadow = _clip_pair(live, shadow)
                self.diffs.append(FieldDiff(path, kind, live, shadow, key))

    def found_values(self, path: str, key: str, kind: DiffKind, live: object, shadow: object) -> None:
        if key not in self.differing:  # render only the first occurrence
            if type(live) is str and type(shadow) is str:
                self.found(path, key, kind, *_render_pair(live, shadow))
            else:
                self.found(path, key, kind, _render(live), _render(shadow))
        elif kind in SHAPE_KINDS:
            self.shape.add(key)


def _shape(key: str, value: Any) -> tuple[str, object] | None:
    """What makes equal sub-trees interchangeable for key harvesting: an object's key set, or
    "a list of scalars"; ``None`` for a list of containers (its elements dedupe themselves)."""
    if type(value) is dict:
        return (key, tuple(value))
    first = type(value[0])
    return None if first is dict or first is list else (key, "scalars")


def _same_json_type(ta: type, tb: type) -> bool:
    # JSON has one number type: 1 and 1.0 are the same value; bool is not a number.
    return ta is tb or ((ta is int or ta is float) and (tb is int or tb is float))


# Arrays at least this long are scanned with C-level passes (map, compress) that pick the
# few elements the walk must visit; shorter ones are cheaper to loop over.
_BULK_MIN: Final = 8


def _first_new_shapes(
    tuples: list[tuple[str, ...]], equal: list[Any], after: Iterable[int], key: str, shapes: set[Any]
) -> list[int]:
    """Of objects with these key tuples, the indexes the walk visits as exemplars: for each
    key tuple not yet in ``shapes``, the first element that is ``equal`` to its counterpart,
    as the element-by-element loop picks them; ``after``: the indexes that are not. ``shapes``
    is not updated: the caller adds each one as it visits (nothing else adds one under ``key``
    meanwhile, as recursion only adds longer keys)."""
    # The first equal element of a key tuple starts the array, starts a run of that tuple,
    # or follows an element that is not equal: only those are looked at, found in C.
    candidates = {0, *compress(range(1, len(tuples)), map(ne, tuples[1:], tuples)), *(i + 1 for i in after)}
    first: dict[tuple[str, ...], int] = {}
    for j in sorted(candidates):
        if j < len(tuples) and equal[j]:
            first.setdefault(tuples[j], j)
    first.pop((), None)  # empty objects hold no keys: never visited
    return sorted(i for s, i in first.items() if (key, s) not in shapes)


def _diff_values(a: Any, b: Any, path: str, key: str, depth: int, acc: _Acc) -> None:  # noqa: PLR0917  # recursive hot path: positional arguments make the cheapest calls
    ta, tb = type(a), type(b)
    if (ta is dict and tb is dict) or (ta is list and tb is list):
        if depth >= MAX_JSON_DEPTH:
            acc.found_values(path, key, "changed", a, b)
        elif ta is dict:
            _diff_dicts(a, b, path, key, depth, acc)
        else:
            _diff_lists(a, b, path, key, depth, acc)
    elif not _same_json_type(ta, tb):
        acc.found_values(path, key, "type", a, b)
    elif a != b and not (ta is float and tb is float and math.isnan(a) and math.isnan(b)):
        acc.found_values(path, key, "changed", a, b)


def _diff_dicts(a: dict[str, Any], b: dict[str, Any], path: str, key: str, depth: int, acc: _Acc) -> None:  # noqa: PLR0917  # recursive hot path
    fields_add = acc.fields.add
    shapes = acc.shapes
    differing = acc.differing
    wide = len(a) > WIDE_OBJECT or len(b) > WIDE_OBJECT
    kids = _kids(key, wide)
    matched = 0
    for k, va in a.items():
        exact, ck = kids.get(k) or _new_child(key, k, acc.fields, wide)
        fields_add(ck)
        vb = b.get(k, _ABSENT)
        if vb is _ABSENT:
            acc.found_values(path + exact, ck, "missing", va, _ABSENT)
            continue
        matched += 1
        if va == vb:
            # _shape() and the bool check, inlined: this runs for every member of every
            # element of a differing array.
            tva = type(va)
            if tva is dict:
                if va:
                    shape = (ck, tuple(va))
                    if shape not in shapes:
                        shapes.add(shape)
                        _same(va, vb, path + exact, ck, depth + 1, acc)
            elif tva is list:
                if va:
                    first = type(va[0])
                    list_shape = None if first is dict or first is list else (ck, "scalars")
                    if list_shape is None or list_shape not in shapes:
                        shapes.add(list_shape)
                        _same(va, vb, path + exact, ck, depth + 1, acc)
            elif tva is not type(vb) and (tva is bool or type(vb) is bool):  # True == 1 in Python, not in JSON
                acc.found_values(path + exact, ck, "type", va, vb)
            continue
        if type(va) is dict and type(vb) is dict and depth + 1 < MAX_JSON_DEPTH:
            _diff_dicts(va, vb, path + exact, ck, depth + 1, acc)
        elif ck in differing and type(va) is type(vb) and type(va) is not dict and type(va) is not list:
            # Two different scalars of one type under a key already found: nothing to add
            # (_diff_values would only find "changed" again, which keeps the first).
            continue
        else:
            _diff_values(va, vb, path + exact, ck, depth + 1, acc)
    if matched != len(b):
        for k, vb in b.items():
            if k not in a:
                exact, ck = kids.get(k) or _new_child(key, k, acc.fields, wide)
                acc.found_values(path + exact, ck, "extra", _ABSENT, vb)


def _diff_lists(a: list[Any], b: list[Any], path: str, key: str, depth: int, acc: _Acc) -> None:  # noqa: PLR0917  # recursive hot path
    if len(a) != len(b):
        acc.found(path, key, "length", str(len(a)), str(len(b)))
    if not a and not b:
        return
    ck = key + "[*]"
    acc.fields.add(ck)
    n = min(len(a), len(b))
    if n >= _BULK_MIN:
        if len(a) != n:
            a = a[:n]
        elif len(b) != n:
            b = b[:n]
        types = set(map(type, a))
        if types == {dict}:
            _diff_list_of_dicts(a, b, path, ck, depth, acc)
            return
        if dict not in types and list not in types and list(map(type, a)) == list(map(type, b)):
            # Scalars of the same types pairwise: equal ones hide no bool-vs-int change, so
            # only the differing ones are visited.
            for i in compress(range(n), map(not_, map(eq, a, b))):
                _diff_values(a[i], b[i], f"{path}[{i}]", ck, depth + 1, acc)
            return
    shapes = acc.shapes
    for i, (x, y) in enumerate(zip(a, b, strict=False)):  # the common prefix; "length" said the rest
        if x == y:
            tx, ty = type(x), type(y)
            if tx is dict or tx is list:
                if x:
                    shape = _shape(ck, x)
                    if shape is None or shape not in shapes:
                        shapes.add(shape)
                        _same(x, y, f"{path}[{i}]", ck, depth + 1, acc)
            elif tx is not ty and (tx is bool or ty is bool):
                acc.found_values(f"{path}[{i}]", ck, "type", x, y)
            continue
        if type(x) is dict and type(y) is dict and depth + 1 < MAX_JSON_DEPTH:
            _diff_dicts(x, y, f"{path}[{i}]", ck, depth + 1, acc)
        else:
            _diff_values(x, y, f"{path}[{i}]", ck, depth + 1, acc)


def _diff_list_of_dicts(a: list[dict[str, Any]], b: list[Any], path: str, ck: str, depth: int, acc: _Acc) -> None:  # noqa: PLR0917  # recursive hot path
    """``_diff_lists`` for equally long arrays of objects: the same visits in the same order,
    picked with C-level passes. An equal element pair is visited only as the first of its
    key tuple (see ``_same``), a differing one always."""
    n = len(a)
    eqs = list(map(eq, a, b))
    tuples = list(map(tuple, a))
    visit = list(compress(range(n), map(not_, eqs)))
    if len(visit) < n:
        visit += _first_new_shapes(tuples, eqs, visit, ck, acc.shapes)
        visit.sort()
    shapes = acc.shapes
    deeper = depth + 1 < MAX_JSON_DEPTH
    keys: tuple[str, ...] = ()
    children: list[tuple[str, str]] = []
    for i in visit:
        x, y = a[i], b[i]
        if eqs[i]:
            shapes.add((ck, tuples[i]))
            _same(x, y, f"{path}[{i}]", ck, depth + 1, acc)
        elif not deeper or type(y) is not dict:
            _diff_values(x, y, f"{path}[{i}]", ck, depth + 1, acc)
        elif tuples[i] == tuple(y):
            # The usual differing element: the same keys in the same order on both sides.
            # Its member keys are resolved and counted once per run of one key tuple.
            if tuples[i] != keys:
                keys = tuples[i]
                wide = len(keys) > WIDE_OBJECT
                kids = _kids(ck, wide)
                children = [kids.get(k) or _new_child(ck, k, acc.fields, wide) for k in keys]
                acc.fields.update([c for _, c in children])
            _diff_members(x, y, children, path, i, depth + 1, acc)
        else:
            _diff_dicts(x, y, f"{path}[{i}]", ck, depth + 1, acc)


def _diff_members(  # noqa: PLR0917  # hot path
    a: dict[str, Any], b: dict[str, Any], children: list[tuple[str, str]], path: str, index: int, depth: int, acc: _Acc
) -> None:
    """``_diff_dicts`` for elements ``index`` of two arrays at ``path``: objects with the same
    keys in the same order, whose members' (exact path segment, field key) pairs are
    ``children`` and already counted as fields. Paths are built only for what is reported or
    descended into: most members of most elements are neither."""
    shapes = acc.shapes
    differing = acc.differing
    for (exact, ck), va, vb in zip(children, a.values(), b.values(), strict=True):
        if va == vb:
            tva = type(va)
            if tva is dict:
                if va:
                    shape = (ck, tuple(va))
                    if shape not in shapes:
                        shapes.add(shape)
                        _same(va, vb, f"{path}[{index}]{exact}", ck, depth + 1, acc)
            elif tva is list:
                if va:
                    first = type(va[0])
                    list_shape = None if first is dict or first is list else (ck, "scalars")
                    if list_shape is None or list_shape not in shapes:
                        shapes.add(list_shape)
                        _same(va, vb, f"{path}[{index}]{exact}", ck, depth + 1, acc)
            elif tva is not type(vb) and (tva is bool or type(vb) is bool):
                acc.found_values(f"{path}[{index}]{exact}", ck, "type", va, vb)
            continue
        if type(va) is dict and type(vb) is dict and depth + 1 < MAX_JSON_DEPTH:
            _diff_dicts(va, vb, f"{path}[{index}]{exact}", ck, depth + 1, acc)
        elif ck in differing and type(va) is type(vb) and type(va) is not dict and type(va) is not list:
            continue
        else:
            _diff_values(va, vb, f"{path}[{index}]{exact}", ck, depth + 1, acc)


def _same(a: Any, b: Any, path: str, key: str, depth: int, acc: _Acc) -> None:  # noqa: PLR0917  # recursive hot path
    """Two sub-trees that Python calls equal: add their field keys, and look for what Python's
    ``==`` hides, ``true`` vs ``1`` (bool is an int). Arrays are visited through one element
    pair per distinct key set (see the module docstring), so the cost stays near one pass
    over the *shapes* rather than over every element."""
    if depth >= MAX_JSON_DEPTH:
        return
    shapes = acc.shapes
    if type(a) is dict:
        fields_add = acc.fields.add
        wide = len(a) > WIDE_OBJECT
        kids = _kids(key, wide)
        for k, va in a.items():
            exact, ck = kids.get(k) or _new_child(key, k, acc.fields, wide)
            fields_add(ck)
            tva = type(va)
            if tva is dict:
                if va:
                    keys_shape = (ck, tuple(va))
                    if keys_shape not in shapes:
                        shapes.add(keys_shape)
                        _same(va, b[k], path + exact, ck, depth + 1, acc)
            elif tva is list:
                if va:
                    first = type(va[0])
                    list_shape = None if first is dict or first is list else (ck, "scalars")
                    if list_shape is None or list_shape not in shapes:
                        shapes.add(list_shape)
                        _same(va, b[k], path + exact, ck, depth + 1, acc)
            elif a is not b:
                tvb = type(b[k])
                if tva is not tvb and (tva is bool or tvb is bool):
                    acc.found_values(path + exact, ck, "type", va, b[k])
        return
    ck = key + "[*]"
    acc.fields.add(ck)
    if len(a) >= _BULK_MIN:
        types = set(map(type, a))
        if types == {dict}:
            tuples = list(map(tuple, a))
            for i in _first_new_shapes(tuples, [True] * len(a), (), ck, shapes):
                shapes.add((ck, tuples[i]))
                _same(a[i], b[i], f"{path}[{i}]", ck, depth + 1, acc)
            return
        if dict not in types and list not in types and (a is b or list(map(type, a)) == list(map(type, b))):
            return  # equal scalars of the same types: nothing hidden
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        tx, ty = type(x), type(y)
        if tx is dict or tx is list:
            if x:
                shape = _shape(ck, x)
                if shape is None or shape not in shapes:
                    shapes.add(shape)
                    _same(x, y, f"{path}[{i}]", ck, depth + 1, acc)
        elif tx is not ty and (tx is bool or ty is bool):
            acc.found_values(f"{path}[{i}]", ck, "type", x, y)


def _json_walk(a: Any, b: Any) -> _Acc | None:
    """The Python walk of two parsed (and stripped) documents; None past MAX_JSON_FIELD_KEYS,
    or nested deeper than the interpreter's stack can compare."""
    acc = _Acc()
    try:
        _diff_json(a, b, acc)
    except (_TooManyFields, RecursionError):
        # RecursionError: nesting json.loads took (up to ~1000 levels) that == on its lists
        # cannot compare within the interpreter's stack (interpreted build, past ~900): the
        # comparison was lost with a traceback; now it is compared as text
        return None
    return None if len(acc.fields) > MAX_JSON_FIELD_KEYS else acc


def _diff_json(a: Any, b: Any, acc: _Acc) -> None:
    acc.fields.add("$")
    if a == b:
        if type(a) in (dict, list) and a:
            _same(a, b, "$", "$", 0, acc)
        elif type(a) is not type(b) and (type(a) is bool or type(b) is bool):
            acc.found_values("$", "$", "type", a, b)
    else:
        _diff_values(a, b, "$", "$", 0, acc)


# ---- text and bytes ----------------------------------------------------------------------------


def _common_prefix(a: str, b: str) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # each probe compares only the new half: O(n) characters in all
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _lines(text: str) -> list[str]:
    """Lines ending in "\\n" (kept), the last one possibly without. Only "\\n" ends a line, so
    line numbers agree with ``str.count("\\n")``; "\\r\\n" lines keep their "\\r"."""
    lines = [line + "\n" for line in text.split("\n")]
    last = lines.pop()[:-1]
    if last:
        lines.append(last)
    return lines


def _diff_text(a: str, b: str, acc: _Acc) -> None:
    acc.fields.add("body")
    if a == b:
        return
    # Skip the common head and tail in C, then line-diff only the differing middle.
    start = a.rfind("\n", 0, _common_prefix(a, b)) + 1
    tail = _common_prefix(a[start:][::-1], b[start:][::-1])
    suffix = a[len(a) - tail :]
    newline = suffix.find("\n")
    # Extend the middle to whole lines; the suffix is identical on both sides.
    tail = 0 if newline < 0 else tail - newline - 1
    mid_a = _lines(a[start : len(a) - tail])
    mid_b = _lines(b[start : len(b) - tail])
    first = a.count("\n", 0, start) + 1  # 1-based line number of mid_a[0] (and of mid_b[0])
    out: list[tuple[str, DiffKind, str | None, str | None]] = []
    if len(mid_a) * len(mid_b) * min(len(mid_a), len(mid_b)) <= _DIFFLIB_MAX_WORK:
        ops = difflib.SequenceMatcher(None, mid_a, mid_b, autojunk=False).get_opcodes()
    else:
        n = min(len(mid_a), len(mid_b))
        ops = [("replace", 0, n, 0, n), ("delete", n, len(mid_a), n, n), ("insert", n, n, n, len(mid_b))]
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal":
            continue
        for k in range(max(i2 - i1, j2 - j1)):
            la = mid_a[i1 + k] if i1 + k < i2 else None
            lb = mid_b[j1 + k] if j1 + k < j2 else None
            if la == lb:
                continue
            line = first + (i1 + k if la is not None else j1 + k)
            kind: DiffKind = "changed" if la is not None and lb is not None else "missing" if lb is None else "extra"
            out.append((f"body.line[{line}]", kind, la, lb))
            if len(out) >= MAX_TEXT_DIFFS:
                break
        if len(out) >= MAX_TEXT_DIFFS:
            break
    if not out:  # cannot happen for a != b, but never report "equal" for different bodies
        out.append(("body", "changed", a[:RENDER_CHARS], b[:RENDER_CHARS]))
    acc.differing.add("body")
    # Lines one side has and the other not are a difference of shape, as a JSON field missing
    # or extra is (a shadow that answers nothing, or drops a line, where live's lines only
    # change: review, eighth round); judged on every line, not only the reported ones.
    if any(i2 - i1 != j2 - j1 for tag, i1, i2, j1, j2 in ops if tag != "equal"):
        acc.shape.add("body")
    for path, kind, la, lb in out:
        if len(acc.diffs) < MAX_DIFFS:
            if la is not None and lb is not None and (len(la) > RENDER_CHARS or len(lb) > RENDER_CHARS):
                wa, wb, cut = _windows(la, lb)
                shown = _clip_pair("…" + wa, "…" + wb) if cut else _clip_pair(wa, wb)
            else:
                shown = _clip_pair(None if la is None else la[:RENDER_CHARS], None if lb is None else lb[:RENDER_CHARS])
            acc.diffs.append(FieldDiff(path, kind, *shown, "body"))


def _bytes_summary(body: bytes) -> str:
    return f"{len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()[:16]}"


# ---- compare -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Media:
    """What one Content-Type value says about how to compare a body."""

    type: str  # lower-case media type, "" when absent
    charset: str | None  # lower-case, as given
    is_json: bool
    is_text: bool

    @property
    def text_charset(self) -> str | None:
        """The charset a body is decoded with: the declared one only for a text type."""
        return self.charset if self.is_text else None


# Content-Type value -> parsed. A memo of a pure function: a service sends a handful of
# distinct values, and header strings repeat (see shadow.parse_lines). Bounded by clearing.
_MEDIA: dict[str | None, _Media] = {}
_MEDIA_MAX: Final = 256


def _parse_media(value: str | None) -> _Media:
    got = _MEDIA.get(value)
    if got is None:
        if value is None:
            mt, charset = "", None
        else:
            head, _, params = value.partition(";")
            mt, charset = head.strip().lower(), None
            for p in params.split(";"):
                name, _, v = p.partition("=")
                if name.strip().lower() == "charset":
                    charset = v.strip().strip('"').lower() or None
        if len(_MEDIA) >= _MEDIA_MAX:
            _MEDIA.clear()
        _MEDIA[value] = got = _Media(mt, charset, _is_json_type(mt), _is_text_type(mt))
    return got


def _media(c: Captured) -> tuple[str, str | None]:
    """(media type, charset) from Content-Type, lower-case."""
    m = _parse_media(c.header("content-type"))
    return m.type, m.charset


def _is_json_type(mt: str) -> bool:
    return mt in ("application/json", "text/json") or mt.endswith("+json")


def _is_text_type(mt: str) -> bool:
    return (
        mt.startswith("text/")
        or mt.endswith("+xml")
        or mt in ("application/xml", "application/javascript", "application/x-www-form-urlencoded")
    )


def _decoded_body(c: Captured) -> tuple[bytes, bool, bool]:
    """(body, truncated, opaque) after undoing gzip/deflate; opaque: an encoding we cannot undo."""
    return _decode(c.body, c.truncated, c.header("content-encoding"))


def _decode(body: bytes, truncated: bool, content_encoding: str | None) -> tuple[bytes, bool, bool]:
    if content_encoding is None:
        return body, truncated, False
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body, truncated, False
    if truncated:
        return body, True, False
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return body, False, True
    if not body:
        return body, False, False
    for wbits in (47, -15):  # 47: zlib or gzip header (auto); -15: raw deflate, as some servers send
        got = _inflate(body, wbits)
        if got is not None:
            return got[0], got[1], False
    return body, False, True


def _inflate(body: bytes, wbits: int) -> tuple[bytes, bool] | None:
    """``body`` inflated, all of it: every member of a gzip body (RFC 1952 §2.2: a series of
    members, as gzip and Go's gzip.Reader read it). ``(out, truncated)``, truncated when the
    output reached MAX_DECODED_BODY; None when the body is not whole streams: bytes after
    the last one (that are not a member), or a stream without its end (a member cut short
    of its trailer). Only the first stream was read before, and the rest ignored: answers
    that differed there compared equal."""
    parts: list[bytes] = []
    size = 0
    rest = body
    while True:
        if len(parts) >= MAX_GZIP_MEMBERS:
            return b"".join(parts), True
        d = zlib.decompressobj(wbits=wbits)
        try:
            part = d.decompress(rest, MAX_DECODED_BODY - size)
        except zlib.error:
            return None
        parts.append(part)
        size += len(part)
        if d.unconsumed_tail:
            return b"".join(parts), True  # stopped at the cap
        if not d.eof:
            return None
        rest = d.unused_data
        if not rest:
            return b"".join(parts), False
        if wbits < 0:
            return None  # raw deflate has no members
        if size >= MAX_DECODED_BODY:
            return b"".join(parts), True


# The charsets a text body is decoded with: the WHATWG Encoding Standard's (what browsers
# decode) that Python has, and ASCII, Latin-1, UTF-16 and UTF-32; by codec name. Any other
# leaves the body compared as bytes: an upstream's charset must not buy CPU time or an error
# (punycode decodes in quadratic time, 160 KB in 2.7 s; idna and "undefined" raise
# UnicodeError, which lost the comparison).
_TEXT_CHARSETS: Final = frozenset(
    codecs.lookup(name).name
    for name in (
        *("utf-8", "ascii", "latin-1", "utf-16", "utf-16-be", "utf-16-le", "utf-32", "utf-32-be", "utf-32-le"),
        *("cp866", "koi8-r", "koi8-u", "mac-roman", "mac-cyrillic", "cp874"),
        *(f"iso8859-{n}" for n in (2, 3, 4, 5, 6, 7, 8, 10, 13, 14, 15, 16)),
        *(f"cp{n}" for n in range(1250, 1259)),
        *("gbk", "gb2312", "gb18030", "big5", "euc-jp", "iso2022-jp", "shift-jis", "euc-kr"),
    )
)


@lru_cache(maxsize=64)
def _text_codec(charset: str) -> str | None:
    """The codec a declared charset names, if it is one a text body is decoded with."""
    if len(charset) > 40:
        return None
    try:
        name = codecs.lookup(charset).name
    except LookupError:
        return None
    return name if name in _TEXT_CHARSETS else None


def _text(body: bytes, charset: str | None) -> str | None:
    codec = "utf-8" if not charset else _text_codec(charset)
    if codec is None:
        return None
    try:
        text = body.decode(codec)
    except UnicodeError:
        return None
    return None if "\x00" in text else text


@lru_cache(maxsize=64)
def _ignored_headers(ignore_headers: frozenset[str]) -> tuple[frozenset[str], frozenset[str]]:
    """The header names not compared: (when the bodies are compared, when one is truncated).

    "" stands for an empty ``Connection`` token, never a header worth a field."""
    ignored = frozenset(h.lower() for h in ignore_headers) | HOP_BY_HOP_HEADERS | {""}
    return ignored | {"content-length"}, ignored


def _length_without_body(c: Captured, headers: dict[str, str]) -> bool:
    """``c`` has no body but a ``Content-Length`` other than 0: the length of the body a GET
    would get (HEAD, 304). A 0 beside an empty body is framing only, as no length is."""
    return not c.body and headers.get("content-length", "0").strip() != "0"


def _header_map(c: Captured) -> dict[str, str]:
    out = dict(c.headers)
    if len(out) == len(c.headers):  # no repeated name: the common case, built in C
        return out
    out = {}
    for name, value in c.headers:
        prev = out.get(name)
        out[name] = value if prev is None else prev + ", " + value
    return out


def _diff_headers(lh: dict[str, str], sh: dict[str, str], ignored: frozenset[str], acc: _Acc) -> None:
    if "connection" in lh or "connection" in sh:  # RFC 9110 §7.6.1: the fields it names are hop-by-hop too
        tokens = {t.strip().lower() for c in (lh.get("connection"), sh.get("connection")) if c for t in c.split(",")}
        ignored = ignored | tokens
    if lh is sh:
        acc.fields.update(["header." + name for name in lh if name not in ignored])
        return
    # A plain loop: with a handful of names it beats building sets of names.
    fields_add = acc.fields.add
    differing = []
    for name, lv in lh.items():
        if name not in ignored:
            fields_add("header." + name)
            if sh.get(name) != lv:
                differing.append(name)
    if len(sh) != len(lh) or sh.keys() != lh.keys():
        for name in sh.keys() - lh.keys() - ignored:
            fields_add("header." + name)
            differing.append(name)
    if "content-type" in differing and _same_media_type(lh.get("content-type"), sh.get("content-type")):
        differing.remove("content-type")
    differing.sort()  # the order the FieldDiffs are listed in
    for name in differing:
        key = "header." + name
        live_value, shadow_value = lh.get(name), sh.get(name)
        kind: DiffKind = "missing" if shadow_value is None else "extra" if live_value is None else "changed"
        acc.found(
            key,
            key,
            kind,
            None if live_value is None else live_value[:RENDER_CHARS],
            None if shadow_value is None else shadow_value[:RENDER_CHARS],
        )


def _media_type_key(value: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A Content-Type as RFC 9110 §8.3 compares it: type, subtype and parameter names in any
    case, whitespace around ``;`` and ``=`` optional, a value quoted or not, the charset's
    value in any case; parameters in any order. JSON's charset is UTF-8 whatever is said
    (RFC 8259 §8.1): ``charset=utf-8`` on it is the same as none."""
    head, _, params = value.partition(";")
    mt = head.strip().lower()
    kept = []
    for p in params.split(";"):
        name, _, v = p.partition("=")
        name = name.strip().lower()
        if not name:
            continue
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] == '"':
            v = v[1:-1]
        if name == "charset":
            v = v.lower()
            if v == "utf-8" and _is_json_type(mt):
                continue
        kept.append((name, v))
    return mt, tuple(sorted(kept))


def _same_media_type(a: str | None, b: str | None) -> bool:
    """Two Content-Type values that differ as text name the same media type (QA, eighth round:
    ``application/json; charset=utf-8`` against ``application/json;charset=UTF-8`` or plain
    ``application/json``, a framework's upgrade, was a real difference in every request)."""
    return a is not None and b is not None and _media_type_key(a) == _media_type_key(b)


def compare(
    live: Captured,
    shadow: Captured,
    *,
    ignore_headers: frozenset[str] = DEFAULT_IGNORE_HEADERS,
    ignore_fields: tuple[str, ...] = (),
    max_fields: int = MAX_FIELDS,
    reuse: str | None = None,
) -> Comparison:
    """Compare two responses field by field.

    - ``status``: the status codes.
    - ``header.<name>``: every header on either side except ``ignore_headers``, the
      hop-by-hop set and those named in ``Connection``. ``Content-Length`` is ignored when
      the bodies are compared (the body diff says more, and chunked vs length framing is
      not a difference), and compared when they are not (truncated), or when a side has no
      body but a length other than 0 (an answer to HEAD, a 304: the length is all there is).
    - body, after undoing gzip/deflate (other encodings are compared as bytes):
      both media types JSON (``application/json``, ``*+json``) and both parse: by JSON path;
      else both decode as text (``text/*``, XML, or UTF-8 without NUL): by lines, key
      ``body``, paths ``body.line[N]`` (1-based); else by size and sha256, kind ``bytes``.
    - either body ``truncated`` (the diff cap was reached): status and headers only;
      ``Comparison.body == "truncated"`` says so once, and no body field counts as compared.

    ``ignore_fields`` are path prefixes (``$.meta`` skips ``$.meta.x``); ``[*]`` matches any
    index, ``.*`` any key. At most ``max_fields`` keys are kept: every differing key first,
    then status, body, headers, JSON keys by depth.

    ``reuse`` names the endpoint the answers come from (any str): the C walk keeps the live
    JSON body's parse under it and builds the next such call's documents on that answer's
    text, which the answers of one endpoint mostly share (the result is the same either way).
    """
    if len(live.body) <= _EQUAL_ANSWERS.max_entry and live == shadow:
        # The same answer on both sides is the common outcome, and it repeats (a static or
        # cached answer, until its Date changes); comparing an answer with itself is a
        # function of the answer.
        key = (live, ignore_headers, ignore_fields, max_fields)
        got = _EQUAL_ANSWERS.entries.get(key)
        if got is None:
            got = _compare(live, shadow, ignore_headers, ignore_fields, max_fields, reuse)
            _EQUAL_ANSWERS.put(key, got, len(live.body) + _ANSWER_OVERHEAD)
        return got
    return _compare(live, shadow, ignore_headers, ignore_fields, max_fields, reuse)


def _compare(  # noqa: PLR0917  # private: compare()'s arguments, in order
    live: Captured,
    shadow: Captured,
    ignore_headers: frozenset[str],
    ignore_fields: tuple[str, ...],
    max_fields: int,
    reuse: str | None,
) -> Comparison:
    acc = _Acc()
    fields = acc.fields
    fields.add("status")
    if live.status != shadow.status:
        acc.found("status", "status", "changed", str(live.status), str(shadow.status))

    lh = _header_map(live)
    # Both sides sending the very same header lines is common (one server software, one
    # second): one map then, and no value to compare.
    sh = lh if shadow.headers == live.headers else _header_map(shadow)
    live_body, live_cut, live_opaque = _decode(live.body, live.truncated, lh.get("content-encoding"))
    shadow_body, shadow_cut, shadow_opaque = _decode(shadow.body, shadow.truncated, sh.get("content-encoding"))
    truncated = live_cut or shadow_cut
    # Content-Length says no more than the bodies do, except where there is no body to say
    # it: a HEAD answer, a 304. There it is the size of the answer a GET gets.
    length_said = truncated or _length_without_body(live, lh) or _length_without_body(shadow, sh)
    _diff_headers(lh, sh, _ignored_headers(ignore_headers)[length_said], acc)

    mode: BodyMode
    if truncated:
        mode = "truncated"
    elif not live_body and not shadow_body:
        mode = "empty"
        fields.add("body")
    else:
        mode = _diff_body(
            _parse_media(lh.get("content-type")),
            _parse_media(sh.get("content-type")),
            live_body,
            shadow_body,
            live_opaque or shadow_opaque,
            ignore_fields,
            acc,
            reuse,
        )

    differing = acc.differing
    diffs = acc.diffs
    shape = acc.shape
    if len(fields) > max_fields:
        # the first max_fields in field_order, as sorted()[:max_fields] without sorting all
        keep = heapq.nsmallest(max_fields, differing, key=_field_order)
        keep += heapq.nsmallest(max_fields - len(keep), fields - differing, key=_field_order)
        fields = set(keep)
        differing = differing & fields
        shape = shape & fields
        diffs = [d for d in diffs if d.field_key in fields]
    if not differing:
        return Comparison(frozenset(fields), _NOTHING, (), mode)
    return Comparison(
        frozenset(fields), frozenset(differing), tuple(diffs), mode, frozenset(shape) if shape else _NOTHING
    )


def _diff_body(  # noqa: PLR0917  # private, one caller
    live_media: _Media,
    shadow_media: _Media,
    live_body: bytes,
    shadow_body: bytes,
    opaque: bool,
    ignore_fields: tuple[str, ...],
    acc: _Acc,
    reuse: str | None,
) -> BodyMode:
    same = live_body == shadow_body
    if (
        not opaque
        and live_media.is_json
        and shadow_media.is_json
        and _diff_json_body(live_body, shadow_body, same, ignore_fields, acc, reuse)
    ):
        return "json"
    if not opaque:
        live_cs, shadow_cs = live_media.text_charset, shadow_media.text_charset
        if same and live_cs == shadow_cs:
            # Equal bytes decoded alike are equal text: decode once, no line diff.
            if _text(live_body, live_cs) is not None:
                acc.fields.add("body")
                return "text"
        else:
            ta = _text(live_body, live_cs)
            tb = _text(shadow_body, shadow_cs)
            if ta is not None and tb is not None:
                _diff_text(ta, tb, acc)
                return "text"
    acc.fields.add("body")
    if not same:
        acc.found("body", "body", "bytes", _bytes_summary(live_body), _bytes_summary(shadow_body))
    return "bytes"


def _diff_json_body(  # noqa: PLR0917  # private, one caller
    live_body: bytes, shadow_body: bytes, same: bool, ignore_fields: tuple[str, ...], acc: _Acc, reuse: str | None
) -> bool:
    """Diff two JSON bodies into ``acc``; False (and nothing added) when either does not parse,
    or their walk would count more than MAX_JSON_FIELD_KEYS field keys."""
    if same:
        return _equal_json_body(live_body, ignore_fields, acc, reuse)
    got = _native_walk(live_body, shadow_body, ignore_fields, MAX_DIFFS - len(acc.diffs), reuse)
    if got is False:
        return False
    if got is not None:
        _absorb(got, acc)
        return True
    try:
        a = _parse_json(live_body)
        b = _parse_json(shadow_body)
    except (ValueError, RecursionError):
        return False  # not JSON after all: compare as text or bytes
    root = _compile_paths(ignore_fields)
    if root is not None:
        if root.terminal:  # "$" ignores the whole body
            return True
        a = _strip(a, (root,))
        b = _strip(b, (root,))
    walked = _json_walk(a, b)
    if walked is None:
        return False
    # JSON keys ("$...") are none of status's and the headers' already in acc
    acc.diffs += walked.diffs[: MAX_DIFFS - len(acc.diffs)]
    acc.differing |= walked.differing
    acc.shape |= walked.shape
    acc.fields |= walked.fields
    return True


# (field keys, [FieldDiff's fields: (path, kind, live, shadow, key), values rendered])
_Walked: TypeAlias = tuple[list[str], list[tuple[str, str, str | None, str | None, str]]]


def _native_walk(
    live: bytes, shadow: bytes | None, ignore_fields: tuple[str, ...], room: int, reuse: str | None
) -> _Walked | Literal[False] | None:
    """The C walk of two bodies (``shadow`` None: ``live`` against itself): field keys and the
    first difference per key; False past MAX_JSON_FIELD_KEYS. None where the Python walk must
    run instead: no C module, the whole body ignored (``$``), or a body the C walk leaves to
    Python. ``reuse``: see ``compare``."""
    if _native is None:
        return None
    root = _compile_paths(ignore_fields)
    if root is not None and root.terminal:
        return None
    got: _Walked | Literal[False] | None = _native.diff(
        live, shadow, _child, _render, _IGNORED, root, MAX_JSON_DEPTH, room, reuse, MAX_JSON_FIELD_KEYS, _render_pair
    )
    return got


def _absorb(got: _Walked, acc: _Acc) -> None:
    """Add what ``_native.diff`` found: the same calls the Python walk makes, in its order
    (one per key: the C walk skips later occurrences, as ``found_values`` would, and renders
    the values as ``found_values`` would, calling ``_render`` for what it does not render)."""
    fields, events = got
    acc.fields.update(fields)
    for path, kind, live, shadow, key in events:
        acc.found(path, key, cast(DiffKind, kind), live, shadow)


_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


def _equal_json_body(body: bytes, ignore_fields: tuple[str, ...], acc: _Acc, reuse: str | None) -> bool:
    """``_diff_json_body`` of a body against an equal one: parsed once (or built on the
    endpoint's kept answer, see ``compare``'s ``reuse``) and walked against itself, which finds
    field keys and never a difference. The keys are a function of the
    bytes and ``ignore_fields``, and the same answer tends to come again (a static or cached
    one), so they are remembered: a repeat costs a hash of the body, a few % of its parse."""
    key = (body, ignore_fields)
    remember = len(body) <= _EQUAL_JSON.max_entry
    fields = _EQUAL_JSON.entries.get(key) if remember else None
    if fields is None:
        fields = _own_fields(body, ignore_fields, reuse)
        if fields is None:
            return False  # not JSON after all: compare as text or bytes
        if remember:
            _EQUAL_JSON.put(key, fields, len(body))
    acc.fields |= fields
    return True


def _own_fields(body: bytes, ignore_fields: tuple[str, ...], reuse: str | None) -> frozenset[str] | None:
    """The field keys of a JSON body walked against itself (C walk or Python walk); None when
    it is not JSON, or has more than MAX_JSON_FIELD_KEYS."""
    got = _native_walk(body, None, ignore_fields, 0, reuse)
    if got is False:
        return None
    if got is not None:
        fields, differing = set(got[0]), {d[4] for d in got[1]}
    else:
        try:
            a = _parse_json(body)
        except (ValueError, RecursionError):
            return None
        root = _compile_paths(ignore_fields)
        if root is not None:
            if root.terminal:  # "$" ignores the whole body
                return frozenset()
            a = _strip(a, (root,))
        own = _json_walk(a, a)
        if own is None:
            return None
        fields, differing = own.fields, own.differing
    if differing:  # pragma: no cover - one parsed value against itself differs nowhere
        raise AssertionError(f"a JSON body differs from itself: {sorted(differing)}")
    return frozenset(fields)


class _Memo(Generic[_K, _V]):
    """Results of a pure function for arguments that hold response bodies, kept for repeats.

    Exact: a key holds the arguments themselves, so a hit costs their hash and an equality
    check (a memcmp for a body). Bounded by the bytes the keys hold, as ``put`` counts them;
    cleared when full, which keeps it simple and costs only misses.
    """

    __slots__ = ("entries", "max_bytes", "max_entry", "size")

    def __init__(self, max_bytes: int, max_entry: int) -> None:
        self.entries: dict[_K, _V] = {}
        self.max_bytes = max_bytes
        self.max_entry = max_entry  # callers skip (and do not even hash) larger arguments
        self.size = 0

    def put(self, key: _K, value: _V, size: int) -> None:
        if self.size + size > self.max_bytes:
            self.entries.clear()
            self.size = 0
        self.entries[key] = value
        self.size += size


# Equal JSON bodies -> their field keys (_equal_json_body).
_EQUAL_JSON: Final = _Memo[tuple[bytes, tuple[str, ...]], frozenset[str]](4 << 20, 256 << 10)
# Equal answers -> their comparison (compare). Small ones only: for a large body the hash
# would cost more than the fixed part of a comparison it saves.
_EQUAL_ANSWERS: Final = _Memo[tuple[Captured, frozenset[str], tuple[str, ...], int], Comparison](1 << 20, 4 << 10)
_ANSWER_OVERHEAD: Final = 256  # bytes counted per remembered answer beyond its body


def diff(
    live: Captured,
    shadow: Captured,
    *,
    ignore_headers: frozenset[str] = DEFAULT_IGNORE_HEADERS,
    ignore_fields: tuple[str, ...] = (),
) -> tuple[FieldDiff, ...]:
    """The differences only; see ``compare``."""
    return compare(live, shadow, ignore_headers=ignore_headers, ignore_fields=ignore_fields).diffs


def field_order(key: str) -> tuple[int, int, str]:
    """The fixed total order in which bounded sets keep field keys: status, body, headers,
    then JSON keys shallow before deep. It decides what survives a cap, independent of the
    order events arrived in, which is what keeps ``merge`` associative."""
    if key == "status":
        return (0, 0, key)
    if key.startswith("body"):
        return (1, 0, key)
    if key.startswith("header."):
        return (2, 0, key)
    return (3, key.count(".") + key.count("["), key)


# field_order of the keys comparisons meet, remembered: a body of 500 to MAX_JSON_FIELD_KEYS
# keys sent field_order ~4,000 calls a comparison to keep 500 (~0.9 us each, most of it).
_field_order: Final = lru_cache(maxsize=2 * MAX_JSON_FIELD_KEYS)(field_order)


# ---- noise classification ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldStats:
    """Counts for one field key of one endpoint."""

    compared: int = 0  # live vs shadow comparisons that included the field
    differing: int = 0  # ... in which it differed
    noise_compared: int = 0  # live vs live-replay comparisons that included it
    noise_differing: int = 0
    shape_differing: int = 0  # of ``differing``: those with a difference of SHAPE_KINDS
    noise_shape_differing: int = 0  # of ``noise_differing``: the same

    @property
    def rate(self) -> float:
        return self.differing / self.compared if self.compared else 0.0

    @property
    def noise_rate(self) -> float | None:
        return self.noise_differing / self.noise_compared if self.noise_compared else None


@lru_cache(maxsize=32)
def _thresholds(noise: ShadowNoise) -> tuple[Fraction, Fraction]:
    # Fraction(repr(x)) is the decimal the operator wrote: 0.03 is exactly 3/100, so the
    # boundary cases in the docstring hold exactly rather than to float rounding.
    return Fraction(repr(float(noise.relative_threshold))), Fraction(repr(float(noise.absolute_threshold)))


def classify(stats: FieldStats, noise: ShadowNoise) -> Classification:
    """``"real"``, ``"noise"`` or ``"none"`` for one field.

    Let ``r = differing / compared`` (live vs shadow) and ``n = noise_differing /
    noise_compared`` (live vs a replay to the live version itself), both as fractions:

    - ``none``: the field never differed live vs shadow (``differing == 0``);
    - ``real`` when no noise sample exists yet (``noise_compared == 0``): with no evidence
      that the live version disagrees with itself, a difference is taken at face value;
    - ``real`` when ``r > n`` and both
      ``100 * (r - n) >= absolute_threshold`` (percentage points) and
      ``100 * (r - n) >= relative_threshold * n`` (percent of the noise rate; always true
      when ``n == 0``);
    - ``real`` when that rule, on the differences of shape alone (``shape_differing`` and
      ``noise_shape_differing`` for ``differing`` and ``noise_differing``), says real: a
      value that changes between live's own answers is noise, live's field dropped or
      retyped by the shadow is not (unless live does that as often);
    - ``noise`` otherwise. Both boundaries are inclusive and computed exactly.

    Worked example, defaults (relative 20 %, absolute 0.03 points): 1000 comparisons, 300
    differ (r = 30 %); 100 replays, 20 differ (n = 20 %). Excess 10 points >= 0.03, and
    10 >= 20 % of 20 = 4, so **real**. With 26 of 100 replays differing: excess 4 points,
    but 4 < 20 % of 26 = 5.2, so **noise**. The exact boundary is r = 1.2 n: 24 of 100
    replays and 288 of 1000 is real (excess 4.8 = 20 % of 24).

    Versus Diffy (``JoinedDifferences.scala``, ``DifferencesFilterFactory``): Diffy calls a
    field real when ``raw > noise``, ``|raw - noise| / (raw + noise) * 100 > relative`` and
    ``|raw - noise| / total * 100 > absolute``, on *counts* over one total (primary,
    secondary and candidate all see every request). We differ in four ways: (1) rates, not
    counts, because the noise replay samples only ``noise.percent`` of requests, so the two
    denominators differ; (2) the relative excess is measured against the noise rate, not
    the sum ``r + n``; Diffy's 20 % means ``r > 1.5 n``, ours ``r >= 1.2 n`` (the first
    example above is noise for Diffy: 10 / 50 = 20 %, not > 20 %); (3) boundaries are
    inclusive ("at least"), Diffy's strict; (4) a field with no noise sample yet is real
    outright. Diffy never lacks one (the secondary sees every request), and with a noise
    count of 0 it would still apply the absolute threshold.
    """
    if stats.differing <= 0:
        return "none"
    if stats.noise_compared <= 0:
        return "real"
    relative, absolute = _thresholds(noise)
    c, nc = stats.compared, stats.noise_compared
    if _is_real(c, stats.differing, nc, stats.noise_differing, relative, absolute):
        return "real"
    # The same rule on differences of shape alone (SHAPE_KINDS): a field whose value changes
    # between two answers of the live version is noise as a value; the shadow dropping it, or
    # sending it as another type, is real unless the live version does that as often.
    if stats.shape_differing and _is_real(
        c, stats.shape_differing, nc, stats.noise_shape_differing, relative, absolute
    ):
        return "real"
    return "noise"


def _is_real(c: int, d: int, nc: int, nd: int, relative: Fraction, absolute: Fraction) -> bool:  # noqa: PLR0917  # the rule's four counts
    if c <= 0:
        return False
    excess = d * nc - nd * c  # (r - n) * c * nc
    if excess <= 0:
        return False
    if excess * 100 * absolute.denominator < absolute.numerator * c * nc:
        return False
    return excess * 100 * relative.denominator >= relative.numerator * nd * c


# ---- latency -----------------------------------------------------------------------------------

_LAT_LOW: Final = 1e-5  # bucket 0: <= 10 µs
_LAT_STEPS: Final = 8  # buckets per doubling: upper bounds within 9 % of the value
_LAT_LAST: Final = 8 * 26  # 10 µs * 2**26 ~ 671 s; the last bucket takes everything above
_LAT_LOG_STEP: Final = math.log(2) / _LAT_STEPS
_LAT_HIGH: Final = _LAT_LOW * math.pow(2.0, _LAT_LAST / _LAT_STEPS)


class LatencyHistogram:
    """Fixed log buckets (2**(1/8) apart, 10 µs to 11 min); mergeable by addition."""

    __slots__ = ("counts",)

    def __init__(self, counts: Mapping[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})

    @staticmethod
    def bucket(seconds: float) -> int:
        if not seconds > _LAT_LOW:  # also NaN and negatives
            return 0
        if seconds >= _LAT_HIGH:
            return _LAT_LAST
        return min(_LAT_LAST, max(1, math.ceil(math.log(seconds / _LAT_LOW) / _LAT_LOG_STEP - 1e-9)))

    @staticmethod
    def upper_bound(bucket: int) -> float:
        return _LAT_LOW * math.pow(2.0, bucket / _LAT_STEPS)

    def observe(self, seconds: float) -> None:
        i = self.bucket(seconds)
        self.counts[i] = self.counts.get(i, 0) + 1

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def quantile(self, q: float) -> float | None:
        """Nearest-rank quantile, as the upper bound of its bucket; ``None`` when empty."""
        total = self.count
        if not total:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return self.upper_bound(i)
        return self.upper_bound(max(self.counts))  # pragma: no cover - rank <= total

    def absorb(self, other: LatencyHistogram) -> None:
        for i, n in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + n

    def to_list(self) -> list[list[int]]:
        return [[i, self.counts[i]] for i in sorted(self.counts)]


# ---- samples and redaction ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One redacted example of a differing field. ``point`` (in [0, 1), drawn by the shell)
    decides which samples a bounded set keeps: the smallest points, a uniform sample."""

    point: float
    request: str
    path: str
    kind: str
    live: str | None
    shadow: str | None
    live_status: int
    shadow_status: int
    live_body: str
    shadow_body: str

    def sort_key(self) -> tuple[Any, ...]:
        return (
            self.point,
            self.request,
            self.path,
            self.kind,
            self.live is None,
            self.live or "",
            self.shadow is None,
            self.shadow or "",
            self.live_status,
            self.shadow_status,
            self.live_body,
            self.shadow_body,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "point": self.point,
            "request": self.request,
            "path": self.path,
            "kind": self.kind,
            "live": self.live,
            "shadow": self.shadow,
            "live_status": self.live_status,
            "shadow_status": self.shadow_status,
            "live_body": self.live_body,
            "shadow_body": self.shadow_body,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "sample") -> Sample:
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected an object")
        return cls(
            point=_num(d, "point", where),
            request=_str(d, "request", where),
            path=_str(d, "path", where),
            kind=_str(d, "kind", where),
            live=_opt_str(d, "live", where),
            shadow=_opt_str(d, "shadow", where),
            live_status=_int(d, "live_status", where),
            shadow_status=_int(d, "shadow_status", where),
            live_body=_str(d, "live_body", where),
            shadow_body=_str(d, "shadow_body", where),
        )


def redact_json(value: Any, redact_fields: tuple[str, ...]) -> Any:
    """A copy of ``value`` with every sub-tree matching a pattern replaced by ``"[redacted]"``."""
    root = _compile_paths(redact_fields)
    if root is None:
        return value
    return _redact_body(copy.deepcopy(value), root)


def _redact_body(value: Any, root: _Node) -> Any:
    """A parsed body with ``redact_fields`` (``root``) applied, in place where it can be."""
    return REDACTED if root.terminal else _redact_states(value, (root,))


def _redact_states(value: Any, states: _States) -> Any:
    """``value`` where patterns continue (``states``, none terminal): each match replaced by
    ``"[redacted]"``, the patterns followed through a change of shape, as a version that
    turns a record into a list of records, a list into one record, or a record into the
    string it held still sends its secrets: an array's elements are read as records by the
    patterns that name members (``$.user.email`` reaches ``{"user": [{"email": ...}]}``), an
    object is also read as one element by the patterns that index (``$.users[*].email``
    reaches ``{"users": {"email": ...}}``), and a string or number where a pattern continues
    is redacted whole (null and the booleans stay). Differences follow the same reading
    (``_shape_step``)."""
    t = type(value)
    if t is dict:
        elems = _elements(states)
        if any(e.terminal for e in elems):  # "$.users[*]" and an object: the one element
            return REDACTED
        look = _unique((*states, *elems)) if elems else states
        for k in list(value):
            nxt, hit = _step_key(look, k)
            if hit:
                value[k] = REDACTED
            elif nxt:
                value[k] = _redact_states(value[k], nxt)
        return value
    if t is list:
        named = tuple(n for n in states if _names(n))
        for i, x in enumerate(value):
            nxt, hit = _step_index(states, i)
            if hit:
                value[i] = REDACTED
            elif nxt or named:
                value[i] = _redact_states(x, _unique((*nxt, *named)) if named else nxt)
        return value
    return value if value is None or t is bool else REDACTED


def _names(node: _Node) -> bool:
    """Whether a pattern state steps into an object's members."""
    return bool(node.keys) or node.any_key is not None


def _elements(states: _States) -> _States:
    """The states an object is read with as the one element of an array: the children of
    the given states' index steps."""
    return tuple(c for n in states for c in (*n.indexes.values(), n.any_index) if c is not None)


def _unique(states: Iterable[_Node]) -> _States:
    return tuple(dict.fromkeys(states))


def _shape_step(states: _States, seg: object) -> tuple[_States, int]:
    """One segment of an exact path or a field key through the patterns, read across a
    change of shape as ``_redact_states`` reads a body. The states below, and 0; or () and
    1 when the segment names a redacted value, 2 when the object it steps into is redacted
    whole (read as an element that a pattern redacts)."""
    if seg is ANY_INDEX or isinstance(seg, int):
        nxt, hit = _step_any(states, True) if seg is ANY_INDEX else _step_index(states, cast(int, seg))
        if hit:
            return (), 1
        return _unique((*nxt, *(n for n in states if _names(n)))), 0
    elems = _elements(states)
    if any(e.terminal for e in elems):
        return (), 2
    look = _unique((*states, *elems)) if elems else states
    nxt, hit = _step_any(look, False) if seg is ID else _step_key(look, cast(str, seg))
    return nxt, int(hit)


def _path_touches(path: str, root: _Node) -> bool:
    """Whether an exact JSON path lies under a pattern or a pattern reaches inside it, read
    across a change of shape (``_shape_step``)."""
    try:
        segments = parse_field_path(path)
    except ValueError:
        return False
    states: _States = (root,)
    if root.terminal:
        return True
    for seg in segments:
        if seg is ANY_KEY:  # pragma: no cover - exact paths hold no wildcards
            return True
        states, hit = _shape_step(states, seg)
        if hit:
            return True
        if not states:
            return False
    return True  # a pattern continues below this path: its rendering may hold a redacted value


def _step_any(states: _States, index: bool) -> tuple[_States, bool]:
    """``_step_index`` / ``_step_key`` for a field key's ``[*]`` / ``.{id}``: every pattern
    step that one of the values it stands for can take (``.{id}`` stands for any name: the
    members of an object wider than WIDE_OBJECT fold whatever their names)."""
    nxt: list[_Node] = []
    for node in states:
        children = [*node.indexes.values(), node.any_index] if index else [*node.keys.values(), node.any_key]
        for child in children:
            if child is not None:
                if child.terminal:
                    return (), True
                nxt.append(child)
    return tuple(nxt), False


def _redacted_prefix(path: str, root: _Node) -> str:
    """``path`` (an exact path or a field key) cut to the value a pattern covers, when it lies
    inside one: the names below a redacted value are part of it (a map keyed by session
    token)."""
    if root.terminal:
        return "$"
    try:
        spans = field_path_spans(path)
    except ValueError:
        return path
    states: _States = (root,)
    before = 1  # where the value the next segment steps into ends: "$" first
    for seg, end in spans:
        if seg is ANY_KEY:  # pragma: no cover - ".*" is no segment of a field key or exact path
            return path
        states, hit = _shape_step(states, seg)
        if hit:
            return path[: end if hit == 1 else before]
        if not states:
            return path
        before = end
    return path


_FOLDED: dict[tuple[str, ...], dict[str, str]] = {}
_FOLDED_MAX: Final = 4096


def redact_comparison(c: Comparison, redact_fields: tuple[str, ...]) -> Comparison:
    """``c`` with every JSON field key and difference inside a value ``redact_fields`` covers
    cut to that value's path (``$.sessions.<token>`` -> ``$.sessions``): the report then
    holds no name from inside a redacted value. Such a difference becomes one ``changed``
    of the redacted value, its values ``[redacted]``."""
    root = _compile_paths(redact_fields)
    if root is None:
        return c
    cache = _FOLDED.get(redact_fields)
    if cache is None or len(cache) >= _FOLDED_MAX:
        if len(_FOLDED) >= 64:
            _FOLDED.clear()
        _FOLDED[redact_fields] = cache = {}

    def fold(key: str) -> str:
        got = cache.get(key)
        if got is None:
            got = cache[key] = _redacted_prefix(key, root) if key.startswith("$") else key
        return got

    if all(fold(k) == k for k in c.fields):
        return c
    diffs: list[FieldDiff] = []
    seen: set[str] = set()
    for d in c.diffs:
        key = fold(d.field_key)
        if key in seen:
            continue
        seen.add(key)
        if key == d.field_key:
            diffs.append(d)
        else:
            path = _redacted_prefix(d.path, root)
            diffs.append(FieldDiff(path, "changed", REDACTED, REDACTED, "" if key == path else key))
    fields = frozenset(map(fold, c.fields))
    return Comparison(fields, frozenset(map(fold, c.differing)), tuple(diffs), c.body, frozenset(map(fold, c.shape)))


def redact_request(request: str, names: frozenset[str] = frozenset()) -> str:
    """``"GET /login?token=abc&page=2"`` -> ``"GET /login?token=[redacted]&page=2"``; the
    same in a fragment (``#access_token=...``, as OAuth's implicit flow sends it). ``names``:
    more parameter names to redact (``shadow.diff.redact_query``, lower-case)."""
    parts = _QUERY_PARTS.split(request)  # the path, then separators and pairs by turns
    if len(parts) == 1:
        return request
    in_path = True  # before any "?" or "#": ";" starts a path parameter, whose value ends at "/"
    for i in range(2, len(parts), 2):
        in_path = in_path and parts[i - 1] == ";"
        name, eq, value = parts[i].partition("=")
        if eq and _sensitive_param(name, names):
            rest = "/" + value.partition("/")[2] if in_path and "/" in value else ""
            parts[i] = f"{name}={REDACTED}{rest}"
    return "".join(parts)


def _sensitive_param(name: str, names: frozenset[str] = frozenset()) -> bool:
    """Whether a query parameter's value is a secret: its name, decoded and stripped as an
    app's form parser reads it, is one of SENSITIVE_QUERY_PARAMS ("-" read as "_") or of
    ``names``, or names one in brackets (``token[]``, an array as PHP and Rails send it;
    ``user[password]``, a nested field)."""
    key = unquote_plus(name).strip().lower()
    if key in names or key.replace("-", "_") in SENSITIVE_QUERY_PARAMS:
        return True
    return "[" in key and any(
        p in names or p.replace("-", "_") in SENSITIVE_QUERY_PARAMS for p in map(str.strip, _BRACKETS.split(key))
    )


_BRACKETS: Final = re.compile(r"[\[\]]")
# "?" and "#", which start the query and the fragment; "&", and ";" which older servers (and
# the HTML 4 recommendation) also split a query on.
_QUERY_PARTS: Final = re.compile(r"([?#&;])")


def _looks_like_json(body: bytes, charset: str | None) -> bool:
    """Whether a body's text starts as a JSON object or array does (after any whitespace)."""
    # a charset Python does not know, or not one a text body is decoded with: as UTF-8
    codec = (_text_codec(charset) if charset else None) or "utf-8"
    if codec.startswith(("utf-16", "utf-32")):
        text = body.decode(codec, errors="ignore")  # rare: all of it, whitespace and text
    else:  # whitespace is ASCII's: skipped as bytes, however long it is
        text = body.removeprefix(codecs.BOM_UTF8).lstrip(b" \t\r\n")[:64].decode(codec, errors="ignore")
    return text.lstrip("\ufeff \t\r\n")[:1] in ("{", "[")


def _json_for_redaction(c: Captured) -> bool:
    """Whether ``redact_fields`` apply to this answer's body: it says it is JSON, or its text
    looks like JSON whatever it says (a version that changed its Content-Type still sends
    the same fields; they were stored in clear)."""
    mt, charset = _media(c)
    if _is_json_type(mt):
        return True
    body, _, opaque = _decoded_body(c)
    return not opaque and _looks_like_json(body, charset)


def _sample_body(c: Captured, root: _Node | None) -> str:
    body, truncated, opaque = _decoded_body(c)
    if opaque:
        return f"[{_bytes_summary(c.body)}, {c.header('content-encoding')}]"
    mt, charset = _media(c)
    if root is not None and (_is_json_type(mt) or _looks_like_json(body, charset)):
        if truncated:
            return "[withheld: a truncated JSON body cannot be redacted]"
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            return "[withheld: a JSON body that does not parse cannot be redacted]"
        try:
            return _clip(_ENCODE(_redact_body(value, root)), SAMPLE_BODY_CHARS)
        except RecursionError:  # nesting json.loads took, deeper than the walk's stack
            return "[withheld: a JSON body nested too deeply to be redacted]"
    head = body[: SAMPLE_BODY_CHARS * 4]
    if _is_json_type(mt) or _is_text_type(mt):
        codec = (_text_codec(charset) if charset else None) or "utf-8"  # as _looks_like_json
        return _clip(head.decode(codec, errors="replace"), SAMPLE_BODY_CHARS)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of the slice
            return f"[{_bytes_summary(body)}]"
        text = head[: e.start].decode("utf-8")
    return _clip(text, SAMPLE_BODY_CHARS)


def _redact_diff_value(d: FieldDiff, root: _Node | None, redact_headers: frozenset[str], json_typed: bool) -> bool:
    """Whether a difference's values must not be stored. ``json_typed``: either answer is JSON
    for ``redact_fields`` (``_json_for_redaction``). Such a body compared by lines or bytes
    (it did not parse, or the other side's type is not JSON) cannot be redacted by path, so
    with ``redact_fields`` set its values are withheld, as ``_sample_body`` withholds the
    body itself when it does not parse."""
    if d.path.startswith("header."):
        name = d.path[7:]
        return name in ALWAYS_REDACTED_HEADERS or name in redact_headers
    if root is None:
        return False
    if d.path.startswith("$"):
        return _path_touches(d.path, root)
    return json_typed and d.path.startswith("body")


# ---- accumulators ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds of one route's accumulator; each keeps the smallest items of a fixed order."""

    fields: int = 1000  # field keys per endpoint (the rest summed into fields_overflow)
    signatures: int = 64  # distinct sets of differing fields per endpoint
    samples_per_field: int = 3
    sampled_fields: int = 16  # field keys per endpoint that keep samples

    def meet(self, other: Limits) -> Limits:
        return Limits(
            min(self.fields, other.fields),
            min(self.signatures, other.signatures),
            min(self.samples_per_field, other.samples_per_field),
            min(self.sampled_fields, other.sampled_fields),
        )


def _signature_order(sig: tuple[str, ...]) -> tuple[int, tuple[str, ...]]:
    return (len(sig), sig)


class EndpointStats:
    """Counts for one endpoint. Mutable; use through ``RouteStats``."""

    __slots__ = (
        "compared",
        "differing",
        "fields",
        "fields_overflow",
        "live_latency",
        "noise_compared",
        "samples",
        "shadow_latency",
        "signatures",
        "signatures_overflow",
        "truncated",
    )

    def __init__(self) -> None:
        self.compared = 0  # live vs shadow comparisons
        self.noise_compared = 0  # live vs live-replay comparisons
        self.differing = 0  # comparisons with at least one difference
        self.truncated = 0  # comparisons whose bodies were not compared (cap reached)
        # key -> [compared, differing, noise_compared, noise_differing, shape_differing,
        # noise_shape_differing] (FieldStats)
        self.fields: dict[str, list[int]] = {}
        self.fields_overflow = [0, 0, 0, 0, 0, 0]
        # Sorted set of differing keys -> [requests, requests classified real when recorded].
        # Lets the report count requests with a real diff under *today's* classification.
        self.signatures: dict[tuple[str, ...], list[int]] = {}
        self.signatures_overflow = [0, 0]
        self.samples: dict[str, list[Sample]] = {}
        self.live_latency = LatencyHistogram()
        self.shadow_latency = LatencyHistogram()

    def field(self, key: str) -> FieldStats:
        counts = self.fields.get(key)
        return FieldStats(*counts) if counts is not None else FieldStats()

    # -- recording

    def _count(self, comparison: Comparison, compared: int, differing: int, shape: int) -> None:
        fields = self.fields
        for key in comparison.fields:
            counts = fields.get(key)
            if counts is None:
                fields[key] = counts = [0, 0, 0, 0, 0, 0]
            counts[compared] += 1
        for key in comparison.differing:
            counts = fields.get(key)
            if counts is None:  # a hand-made Comparison may name a differing key it did not list
                fields[key] = counts = [0, 0, 0, 0, 0, 0]
                counts[compared] += 1
            counts[differing] += 1
        for key in comparison.shape:  # a subset of differing
            fields[key][shape] += 1

    def _classify_now(self, key: str, noise: ShadowNoise, prior: EndpointStats | None) -> Classification:
        counts = self.fields.get(key, [0, 0, 0, 0, 0, 0])
        if prior is not None and (p := prior.fields.get(key)) is not None:
            counts = [x + y for x, y in zip(counts, p, strict=True)]
        return classify(FieldStats(*counts), noise)

    def record(
        self,
        comparison: Comparison,
        *,
        live: Captured,
        shadow: Captured,
        request: str,
        live_seconds: float,
        shadow_seconds: float,
        point: float,
        noise: ShadowNoise,
        limits: Limits,
        redact_fields: tuple[str, ...] = (),
        redact_headers: frozenset[str] = frozenset(),
        redact_query: frozenset[str] = frozenset(),
        prior: EndpointStats | None = None,
    ) -> Classification:
        self.compared += 1
        if comparison.body == "truncated":
            self.truncated += 1
        self.live_latency.observe(live_seconds)
        self.shadow_latency.observe(shadow_seconds)
        self._count(comparison, 0, 1, 4)
        if not comparison.differing:
            return "none"
        self.differing += 1
        real = any(self._classify_now(k, noise, prior) == "real" for k in comparison.differing)
        sig = tuple(sorted(comparison.differing))
        slot = self.signatures_overflow if len(sig) > MAX_SIGNATURE_KEYS else self.signatures.setdefault(sig, [0, 0])
        slot[0] += 1
        slot[1] += real
        self._offer_samples(
            comparison,
            live=live,
            shadow=shadow,
            request=request,
            point=point,
            limits=limits,
            redact_fields=redact_fields,
            redact_headers=redact_headers,
            redact_query=redact_query,
        )
        if len(self.fields) > 2 * limits.fields or len(self.signatures) > 2 * limits.signatures:
            self.prune(limits)
        return "real" if real else "noise"

    def record_noise(self, comparison: Comparison) -> None:
        self.noise_compared += 1
        self._count(comparison, 2, 3, 5)

    def _offer_samples(
        self,
        comparison: Comparison,
        *,
        live: Captured,
        shadow: Captured,
        request: str,
        point: float,
        limits: Limits,
        redact_fields: tuple[str, ...],
        redact_headers: frozenset[str],
        redact_query: frozenset[str],
    ) -> None:
        if limits.samples_per_field <= 0 or limits.sampled_fields <= 0:
            return
        root = _compile_paths(redact_fields)
        bodies: tuple[str, str] | None = None
        redacted_request: str | None = None
        offered: set[str] = set()
        for d in comparison.diffs:
            key = d.field_key
            if key in offered:  # text bodies give several lines under one key: the first speaks
                continue
            offered.add(key)
            kept = self.samples.get(key)
            if kept is None:
                if len(self.samples) >= limits.sampled_fields and field_order(key) > max(
                    map(field_order, self.samples)
                ):
                    continue
            elif len(kept) >= limits.samples_per_field and point > kept[-1].point:
                continue
            if bodies is None:  # rendered once per request, and only when a sample is taken
                bodies = (_sample_body(live, root), _sample_body(shadow, root))
                json_typed = _json_for_redaction(live) or _json_for_redaction(shadow)
                redacted_request = _clip(redact_request(request, redact_query), MAX_SAMPLE_REQUEST)
            hide = _redact_diff_value(d, root, redact_headers, json_typed)
            sample = Sample(
                point=point,
                request=cast(str, redacted_request),
                path=_clip(d.path, MAX_SAMPLE_PATH),
                kind=d.kind,
                live=REDACTED if hide and d.live is not None else d.live,
                shadow=REDACTED if hide and d.shadow is not None else d.shadow,
                live_status=live.status,
                shadow_status=shadow.status,
                live_body=bodies[0],
                shadow_body=bodies[1],
            )
            kept = self.samples.setdefault(key, [])
            kept.append(sample)
            kept.sort(key=Sample.sort_key)
            del kept[limits.samples_per_field :]
        if len(self.samples) > limits.sampled_fields:
            for key in sorted(self.samples, key=_field_order)[limits.sampled_fields :]:
                del self.samples[key]

    # -- bounding, merging, serialising

    def prune(self, limits: Limits) -> None:
        """Keep the first ``limits`` items of each fixed order; sum the rest into overflow."""
        if len(self.fields) > limits.fields:
            pop = self.fields.pop
            dropped = [pop(key) for key in sorted(self.fields, key=_field_order)[limits.fields :]]
            # summed a column at a time: a body of thousands of keys cuts back ~1,700 of them
            self.fields_overflow = [
                x + sum(col) for x, col in zip(self.fields_overflow, zip(*dropped, strict=True), strict=True)
            ]
        if len(self.signatures) > limits.signatures:
            for sig in sorted(self.signatures, key=_signature_order)[limits.signatures :]:
                n, real = self.signatures.pop(sig)
                self.signatures_overflow[0] += n
                self.signatures_overflow[1] += real
        for key in [k for k in self.samples if k not in self.fields]:
            del self.samples[key]
        if len(self.samples) > limits.sampled_fields:
            for key in sorted(self.samples, key=_field_order)[limits.sampled_fields :]:
                del self.samples[key]
        for kept in self.samples.values():
            del kept[limits.samples_per_field :]

    def absorb(self, other: EndpointStats, limits: Limits) -> None:
        """Add ``other`` into this one (``other`` is not changed)."""
        self.compared += other.compared
        self.noise_compared += other.noise_compared
        self.differing += other.differing
        self.truncated += other.truncated
        for key, counts in other.fields.items():
            mine = self.fields.get(key)
            self.fields[key] = list(counts) if mine is None else [x + y for x, y in zip(mine, counts, strict=True)]
        self.fields_overflow = [x + y for x, y in zip(self.fields_overflow, other.fields_overflow, strict=True)]
        for sig, pair in other.signatures.items():
            mine = self.signatures.get(sig)
            self.signatures[sig] = list(pair) if mine is None else [mine[0] + pair[0], mine[1] + pair[1]]
        self.signatures_overflow = [
            x + y for x, y in zip(self.signatures_overflow, other.signatures_overflow, strict=True)
        ]
        for key, samples in other.samples.items():
            kept = sorted([*self.samples.get(key, ()), *samples], key=Sample.sort_key)
            self.samples[key] = kept[: limits.samples_per_field]
        self.live_latency.absorb(other.live_latency)
        self.shadow_latency.absorb(other.shadow_latency)
        self.prune(limits)

    def to_dict(self) -> dict[str, Any]:
        return {
            "compared": self.compared,
            "noise_compared": self.noise_compared,
            "differing": self.differing,
            "truncated": self.truncated,
            # Four counts a field, as every version wrote them (a database stays readable by
            # the version before: it refused six, and dropped the whole endpoint), and the
            # differences of shape apart, for the fields that had any.
            "fields": {k: self.fields[k][:4] for k in sorted(self.fields)},
            "fields_shape": {k: self.fields[k][4:] for k in sorted(self.fields) if any(self.fields[k][4:])},
            "fields_overflow": self.fields_overflow[:4],
            "fields_overflow_shape": self.fields_overflow[4:],
            "signatures": [[list(s), *self.signatures[s]] for s in sorted(self.signatures, key=_signature_order)],
            "signatures_overflow": list(self.signatures_overflow),
            "samples": {k: [s.to_dict() for s in self.samples[k]] for k in sorted(self.samples)},
            "latency": {"live": self.live_latency.to_list(), "shadow": self.shadow_latency.to_list()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "endpoint") -> EndpointStats:
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected an object")
        ep = cls()
        ep.compared = _int(d, "compared", where)
        ep.noise_compared = _int(d, "noise_compared", where)
        ep.differing = _int(d, "differing", where)
        ep.truncated = _int(d, "truncated", where)
        # Four counts a field, and those of shape apart (``to_dict``); absent in rows stored
        # before differences of shape were counted (0 then).
        shape = _mapping(d, "fields_shape", where)
        ep.fields = {
            k: _counts(v, shape.get(k), f"{where}.fields[{k!r}]") for k, v in _mapping(d, "fields", where).items()
        }
        ep.fields_overflow = _counts(
            d.get("fields_overflow"), d.get("fields_overflow_shape"), f"{where}.fields_overflow"
        )
        if stray := shape.keys() - ep.fields.keys():
            raise ValueError(f"{where}.fields_shape: keys without counts: {sorted(stray)[:3]}")
        for i, row in enumerate(_list(d, "signatures", where)):
            w = f"{where}.signatures[{i}]"
            if not isinstance(row, list) or len(row) != 3 or not isinstance(row[0], list):
                raise ValueError(f"{w}: expected [[keys...], count, real]")
            keys = tuple(row[0])
            if not all(isinstance(k, str) for k in keys):
                raise ValueError(f"{w}: keys must be strings")
            ep.signatures[keys] = _ints(row[1:], 2, w)
        ep.signatures_overflow = _ints(d.get("signatures_overflow"), 2, f"{where}.signatures_overflow")
        for key, rows in _mapping(d, "samples", where).items():
            if not isinstance(rows, list):
                raise ValueError(f"{where}.samples[{key!r}]: expected a list")
            ep.samples[key] = sorted(
                (Sample.from_dict(r, f"{where}.samples[{key!r}][{i}]") for i, r in enumerate(rows)),
                key=Sample.sort_key,
            )
        latency = _mapping(d, "latency", where)
        for role, hist in (("live", ep.live_latency), ("shadow", ep.shadow_latency)):
            rows = latency.get(role, [])
            if not isinstance(rows, list):
                raise ValueError(f"{where}.latency.{role}: expected a list of [bucket, count]")
            for i, row in enumerate(rows):
                bucket, n = _ints(row, 2, f"{where}.latency.{role}[{i}]")
                if not 0 <= bucket <= _LAT_LAST:
                    raise ValueError(f"{where}.latency.{role}[{i}]: bucket out of range")
                hist.counts[bucket] = hist.counts.get(bucket, 0) + n
        return ep


class RouteStats:
    """The shadow-diff accumulator of one route: endpoint name -> ``EndpointStats``.

    The endpoint names are what the shell passes (``EndpointCap.admit(endpoint_template(...))``).
    """

    __slots__ = ("endpoints", "limits")

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.endpoints: dict[str, EndpointStats] = {}

    def endpoint(self, name: str) -> EndpointStats:
        ep = self.endpoints.get(name)
        if ep is None:
            self.endpoints[name] = ep = EndpointStats()
        return ep

    def record(
        self,
        endpoint: str,
        comparison: Comparison,
        *,
        live: Captured,
        shadow: Captured,
        request: str,
        live_seconds: float,
        shadow_seconds: float,
        point: float,
        noise: ShadowNoise,
        redact_fields: tuple[str, ...] = (),
        redact_headers: frozenset[str] = frozenset(),
        redact_query: frozenset[str] = frozenset(),
        prior: RouteStats | None = None,
    ) -> Classification:
        """Add one live-vs-shadow comparison; return how this request classifies now.

        ``request`` is the request line (``"GET /users/42?page=2"``); ``point`` a number in
        [0, 1) the shell draws per request (which samples are kept); ``prior``: already
        persisted totals, when this accumulator is a fresh batch, so that the returned
        classification (for ``splitproxy_shadow_diffs_total{kind}``) sees the noise learnt
        so far. Samples are redacted here, before they are stored: Authorization, Cookie,
        Set-Cookie (and ``redact_headers``) and JSON fields matching ``redact_fields``
        become ``"[redacted]"``, as do sensitive query parameters of ``request`` (and
        ``redact_query``); field keys
        inside a redacted value are cut to its path (``redact_comparison``).
        """
        return self.endpoint(endpoint).record(
            redact_comparison(comparison, redact_fields),
            live=live,
            shadow=shadow,
            request=request,
            live_seconds=live_seconds,
            shadow_seconds=shadow_seconds,
            point=point,
            noise=noise,
            limits=self.limits,
            redact_fields=redact_fields,
            redact_headers=redact_headers,
            redact_query=redact_query,
            prior=None if prior is None else prior.endpoints.get(endpoint),
        )

    def record_noise(self, endpoint: str, comparison: Comparison, redact_fields: tuple[str, ...] = ()) -> None:
        """Add one live-vs-live-replay comparison (the noise sample); ``redact_fields`` as for
        ``record``, so that both count the same field keys."""
        self.endpoint(endpoint).record_noise(redact_comparison(comparison, redact_fields))

    def prune(self) -> None:
        for ep in self.endpoints.values():
            ep.prune(self.limits)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (normalises: applies the limits first)."""
        self.prune()
        return {
            "version": 1,
            "limits": {
                "fields": self.limits.fields,
                "signatures": self.limits.signatures,
                "samples_per_field": self.limits.samples_per_field,
                "sampled_fields": self.limits.sampled_fields,
            },
            "endpoints": {name: self.endpoints[name].to_dict() for name in sorted(self.endpoints)},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RouteStats:
        """Inverse of ``to_dict``; raises ``ValueError`` naming the bad part."""
        if not isinstance(d, Mapping) or d.get("version") != 1:
            raise ValueError("route stats: expected an object with version 1")
        lim = _mapping(d, "limits", "route stats")
        limits = Limits(
            fields=_int(lim, "fields", "limits"),
            signatures=_int(lim, "signatures", "limits"),
            samples_per_field=_int(lim, "samples_per_field", "limits"),
            sampled_fields=_int(lim, "sampled_fields", "limits"),
        )
        stats = cls(limits)
        for name, ep in _mapping(d, "endpoints", "route stats").items():
            stats.endpoints[name] = EndpointStats.from_dict(ep, f"endpoints[{name!r}]")
        stats.prune()
        return stats


def merge(a: RouteStats, b: RouteStats) -> RouteStats:
    """A new accumulator holding both; neither input changes. Associative and commutative;
    the limits of the result are the smaller of each."""
    out = RouteStats(a.limits.meet(b.limits))
    for src in (a, b):
        for name, ep in src.endpoints.items():
            out.endpoint(name).absorb(ep, out.limits)
    return out


# ---- report ------------------------------------------------------------------------------------

_CLASS_RANK: Final = {"real": 0, "noise": 1, "none": 2}


def _rate(n: int, total: int) -> float:
    return round(n / total, 6) if total else 0.0


def _latency(h: LatencyHistogram) -> dict[str, Any]:
    p50, p99 = h.quantile(0.5), h.quantile(0.99)
    return {
        "count": h.count,
        "p50": None if p50 is None else round(p50, 6),
        "p99": None if p99 is None else round(p99, 6),
    }


def report(stats: RouteStats, *, noise: ShadowNoise | None = None, max_fields: int = 100) -> dict[str, Any]:
    """The JSON-ready report of one route.

    Per endpoint: comparisons, requests with any / a real difference (classified now),
    their rates, live and shadow latency p50 / p99 (upper bounds of 9 % buckets, seconds),
    and the fields that differed in either comparison, real first, each with its counts,
    rates, classification and up to ``Limits.samples_per_field`` redacted samples.
    """
    noise = noise or ShadowNoise()
    stats.prune()
    endpoints: dict[str, Any] = {}
    totals = {"compared": 0, "noise_compared": 0, "with_diff": 0, "with_real_diff": 0}
    for name in sorted(stats.endpoints):
        ep = stats.endpoints[name]
        classes = {k: classify(FieldStats(*v), noise) for k, v in ep.fields.items()}
        # A key pruned from ``fields`` has no noise counts any more: taken as real.
        real_requests = ep.signatures_overflow[1] + sum(
            n for sig, (n, _) in ep.signatures.items() if any(classes.get(k, "real") == "real" for k in sig)
        )
        shown = sorted(
            (k for k, v in ep.fields.items() if v[1] or v[3]),
            key=lambda k: (_CLASS_RANK[classes[k]], -ep.fields[k][1] / max(1, ep.fields[k][0]), field_order(k)),
        )
        fields: dict[str, Any] = {}
        for k in shown[:max_fields]:
            fs = FieldStats(*ep.fields[k])
            nr = fs.noise_rate
            fields[k] = {
                "compared": fs.compared,
                "differing": fs.differing,
                "noise_compared": fs.noise_compared,
                "noise_differing": fs.noise_differing,
                "shape_differing": fs.shape_differing,
                "noise_shape_differing": fs.noise_shape_differing,
                "rate": round(fs.rate, 6),
                "noise_rate": None if nr is None else round(nr, 6),
                "classification": classes[k],
                "samples": [{k2: v for k2, v in s.to_dict().items() if k2 != "point"} for s in ep.samples.get(k, ())],
            }
        entry: dict[str, Any] = {
            "compared": ep.compared,
            "noise_compared": ep.noise_compared,
            "truncated": ep.truncated,
            "with_diff": ep.differing,
            "with_real_diff": real_requests,
            "diff_rate": _rate(ep.differing, ep.compared),
            "real_diff_rate": _rate(real_requests, ep.compared),
            "latency": {"live": _latency(ep.live_latency), "shadow": _latency(ep.shadow_latency)},
            "fields_compared": len(ep.fields),
            "fields_omitted": max(0, len(shown) - max_fields),
            "fields": fields,
        }
        if any(ep.fields_overflow):
            c, d, nc, nd, sd, nsd = ep.fields_overflow
            entry["fields_overflow"] = {
                "compared": c,
                "differing": d,
                "noise_compared": nc,
                "noise_differing": nd,
                "shape_differing": sd,
                "noise_shape_differing": nsd,
            }
        endpoints[name] = entry
        totals["compared"] += ep.compared
        totals["noise_compared"] += ep.noise_compared
        totals["with_diff"] += ep.differing
        totals["with_real_diff"] += real_requests
    return {
        **totals,
        "thresholds": {"relative": noise.relative_threshold, "absolute": noise.absolute_threshold},
        "endpoints": endpoints,
    }


# ---- dict validation helpers -------------------------------------------------------------------


def _mapping(d: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    v = d.get(key, {})
    if not isinstance(v, Mapping):
        raise ValueError(f"{where}.{key}: expected an object")
    return v


def _list(d: Mapping[str, Any], key: str, where: str) -> list[Any]:
    v = d.get(key, [])
    if not isinstance(v, list):
        raise ValueError(f"{where}.{key}: expected a list")
    return v


def _int(d: Mapping[str, Any], key: str, where: str) -> int:
    v = d.get(key)
    if type(v) is not int or v < 0:
        raise ValueError(f"{where}.{key}: expected a non-negative integer, got {v!r}")
    return v


def _num(d: Mapping[str, Any], key: str, where: str) -> float:
    v = d.get(key)
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise ValueError(f"{where}.{key}: expected a number, got {v!r}")
    return float(v)


def _str(d: Mapping[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise ValueError(f"{where}.{key}: expected a string, got {v!r}")
    return v


def _opt_str(d: Mapping[str, Any], key: str, where: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise ValueError(f"{where}.{key}: expected a string or null, got {v!r}")
    return v


def _counts(v: object, shape: object, where: str) -> list[int]:
    """A field's six counts (FieldStats'): its four, and its two of shape (None: 0 and 0)."""
    counts = [*_ints(v, 4, where), *(_ints(shape, 2, f"{where} (of shape)") if shape is not None else (0, 0))]
    if counts[4] > counts[1] or counts[5] > counts[3]:
        raise ValueError(f"{where}: more differences of shape than differences, got {counts!r}")
    return counts


def _ints(v: object, n: int, where: str) -> list[int]:
    if not isinstance(v, list) or len(v) != n or not all(type(x) is int and x >= 0 for x in v):
        raise ValueError(f"{where}: expected {n} non-negative integers, got {v!r}")
    return list(v)


__all__ = [
    "ALWAYS_REDACTED_HEADERS",
    "DEFAULT_IGNORE_HEADERS",
    "DEFAULT_MAX_ENDPOINTS",
    "HOP_BY_HOP_HEADERS",
    "REDACTED",
    "BodyMode",
    "Captured",
    "Classification",
    "Comparison",
    "DiffKind",
    "EndpointCap",
    "EndpointStats",
    "FieldDiff",
    "FieldStats",
    "LatencyHistogram",
    "Limits",
    "RouteStats",
    "Sample",
    "capped_endpoint",
    "classify",
    "compare",
    "diff",
    "endpoint_template",
    "field_order",
    "is_id",
    "is_id_segment",
    "merge",
    "overflow_endpoint",
    "parse_field_path",
    "redact_json",
    "redact_request",
    "report",
]
