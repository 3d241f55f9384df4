"""Routing core: which route a request belongs to and which backend serves it. Pure.

No sockets, no event loop, no clock and no RNG: the shell passes the request's facts
(host, path, header lookup, client address) and a uniform ``point`` in ``[0, 1)`` drawn
from its own RNG, and gets a small frozen ``Decision`` back.

Order of precedence (SPEC §4): an override beats stickiness, stickiness beats the
weighted draw.

Stickiness is *weighted rendezvous hashing* (Thaler & Ravishankar's HRW with weights,
as in Schindelhauer & Schomaker 2005): every backend scores the key as
``-weight / ln(u)`` where ``u`` in (0, 1) is a hash of (route, backend, key); the highest
score wins. That gives, for any number of backends and with no shared state:

* the share of keys on a backend is weight / sum of weights;
* raising one backend's weight only raises that backend's scores, so no key leaves it,
  and every key that moves, moves *to* it; lowering it only lowers its scores, so no key
  joins it, and every key that moves, moves *away* from it;
* a backend at weight 0 scores 0 and never wins while another weight is positive;
* the result depends on backend *names*, not their order in the file.

The weighted draw without a key uses cumulative intervals (``pick``), which is cheaper
and exact at the boundaries; it has no monotonicity to keep since it has no memory.
"""

from __future__ import annotations

import ipaddress
import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from hashlib import blake2b

from .config import Config, IPNetwork, Route, Upstream
from .headers import cookie_attributes

__all__ = [
    "BackendPlan",
    "Decision",
    "RoutePlan",
    "Table",
    "hrw_choice",
    "parse_cookie",
    "pick",
    "query_param",
]

# How a decision was reached; used in the access log and in tests.
BY_OVERRIDE = "override"
BY_STICKY = "sticky"
BY_WEIGHT = "weight"

_TWO52 = float(1 << 52)


def pick(cumulative: tuple[float, ...], point: float) -> int:
    """Index of the interval of ``cumulative`` (running sums of weights) holding ``point``.

    ``point`` is in [0, 1). Backends of weight 0 have empty intervals and are never picked.
    """
    total = cumulative[-1]
    i = bisect_right(cumulative, point * total)
    if i == len(cumulative):
        # point * total < total for a normal total, but a subnormal one has too few bits:
        # (1 - 2**-53) * 5e-324 rounds back up to 5e-324. Such a point belongs to the last
        # interval that is not empty, the first one ending at total.
        i = bisect_left(cumulative, total)
    return i


def _unit_hash(route: bytes, backend: bytes, key: bytes) -> float:
    # NUL cannot occur in route or backend names (config allows [A-Za-z0-9_.-]).
    digest = blake2b(b"%s\0%s\0%s" % (route, backend, key), digest_size=8).digest()
    # The top 52 bits as (n + 0.5) / 2**52: n + 0.5 needs 53 bits, a double's mantissa,
    # so the value is exact and lies strictly inside (0, 1); ln() is finite and negative.
    return ((int.from_bytes(digest, "big") >> 12) + 0.5) / _TWO52


def hrw_choice(route: bytes, names: tuple[bytes, ...], weights: tuple[float, ...], key: bytes) -> int:
    """Weighted rendezvous choice of a backend index for ``key``; see the module docstring."""
    best = -1
    best_score = -1.0
    for i, (name, weight) in enumerate(zip(names, weights, strict=True)):
        if weight <= 0:
            continue
        score = -weight / math.log(_unit_hash(route, name, key))
        if score > best_score:
            best, best_score = i, score
    return best


def parse_cookie(header: bytes, name: bytes, accept: Callable[[bytes], bool] | None = None) -> bytes | None:
    """The value of cookie ``name`` in a ``Cookie`` header, or None (RFC 6265 §5.4 form).

    With ``accept``, the first value it accepts: a browser sends every cookie of that name
    whose Path and Domain match, the longest path first (§5.4), so a stale copy set for a
    longer path or a parent domain may come before the one that counts."""
    for part in header.split(b";"):
        k, eq, v = part.strip().partition(b"=")
        if eq and k == name:
            v = v.strip()
            if len(v) >= 2 and v[:1] == b'"' and v[-1:] == b'"':
                v = v[1:-1]
            if accept is None or accept(v):
                return v
    return None


def query_param(url: bytes, name: bytes) -> bytes | None:
    """The first value of ``name`` in the query string of ``url`` (not percent-decoded)."""
    _, q, query = url.partition(b"?")
    if not q:
        return None
    for part in query.split(b"&"):
        k, _, v = part.partition(b"=")
        if k == name:
            return v
    return None


@dataclass(frozen=True, slots=True)
class BackendPlan:
    name: str
    weight: float
    upstreams: tuple[Upstream, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    backend: int  # index into RoutePlan.backends
    by: str  # BY_OVERRIDE | BY_STICKY | BY_WEIGHT
    set_cookie: bytes | None = None  # a sticky key to issue in Set-Cookie, when new


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """One route compiled for the hot path: bytes for comparisons, sums precomputed."""

    route: Route
    name: str
    bname: bytes
    host: bytes | None  # b"shop.example.com", b"*.example.com" or None
    prefix: bytes
    backends: tuple[BackendPlan, ...]
    baseline: int
    cumulative: tuple[float, ...]
    names: tuple[bytes, ...]
    weights: tuple[float, ...]
    header_overrides: tuple[tuple[bytes, bytes, int], ...]  # (lower name, value, backend)
    cookie_overrides: tuple[tuple[bytes, bytes, int], ...]
    sticky_by: str
    sticky_name: bytes  # lower-case for headers; as written for cookies and queries
    sticky_by_ip: bool  # sticky_by == "ip", as a flag: the forwarder tests it on every request
    sticky_cookie: bytes  # the sticky cookie's attributes (headers.cookie_attributes)
    wants_cookies: bool
    # The decisions without a cookie to issue, made once (a frozen dataclass per request
    # costs more than the choice itself).
    by_weight: tuple[Decision, ...]
    by_override: tuple[Decision, ...]
    by_sticky: tuple[Decision, ...]
    # key -> hrw_choice(key) for this plan's weights: a returning user's key costs a dict
    # lookup instead of a blake2b and a log per backend (~1.8 us for two). A memo of a pure
    # function, so no state of the route's: a weight change compiles a new plan, and a new
    # memo. Bounded (cleared when full; short keys only).
    sticky_memo: dict[bytes, int] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def compile(cls, route: Route) -> RoutePlan:
        index = {b.name: i for i, b in enumerate(route.backends)}
        weights = tuple(float(b.weight) for b in route.backends)
        running = 0.0
        cumulative = []
        for w in weights:
            running += w
            cumulative.append(running)
        headers = tuple(
            (o.name.lower().encode(), o.value.encode(), index[o.backend]) for o in route.overrides if o.kind == "header"
        )
        cookies = tuple(
            (o.name.encode(), o.value.encode(), index[o.backend]) for o in route.overrides if o.kind == "cookie"
        )
        sticky_name = (route.sticky.name or "").encode()
        if route.sticky.by == "header":
            sticky_name = sticky_name.lower()
        return cls(
            route=route,
            name=route.name,
            bname=route.name.encode(),
            host=route.match.host.lower().encode() if route.match.host else None,
            prefix=route.match.path_prefix.encode(),
            backends=tuple(BackendPlan(b.name, float(b.weight), b.upstreams) for b in route.backends),
            baseline=index[route.baseline],
            cumulative=tuple(cumulative),
            names=tuple(b.name.encode() for b in route.backends),
            weights=weights,
            header_overrides=headers,
            cookie_overrides=cookies,
            sticky_by=route.sticky.by,
            sticky_name=sticky_name,
            sticky_by_ip=route.sticky.by == "ip",
            sticky_cookie=cookie_attributes(
                max_age=int(route.sticky.max_age),
                path=route.sticky.path,
                domain=route.sticky.domain,
                secure=route.sticky.secure,
                http_only=route.sticky.http_only,
                same_site=route.sticky.same_site,
            ),
            wants_cookies=bool(cookies) or route.sticky.by == "cookie",
            by_weight=tuple(Decision(i, BY_WEIGHT) for i in range(len(route.backends))),
            by_override=tuple(Decision(i, BY_OVERRIDE) for i in range(len(route.backends))),
            by_sticky=tuple(Decision(i, BY_STICKY) for i in range(len(route.backends))),
        )

    def choose(
        self,
        header: Callable[[bytes], bytes | None],
        url: bytes,
        client_ip: bytes,
        point: float,
        new_key: Callable[[], bytes],
    ) -> Decision:
        """Decide the backend. ``header(lower_name)`` looks up a request header.

        ``new_key()`` is called only when ``sticky.by: cookie`` has no valid cookie yet;
        the returned key is hashed like a presented one and comes back in ``set_cookie``.
        """
        for name, value, backend in self.header_overrides:
            got = header(name)
            # llhttp keeps whitespace after a value, which is not part of it (RFC 9110 §5.5).
            if got is not None and (got == value or got.rstrip(b" \t") == value):
                return self.by_override[backend]
        cookie_header = header(b"cookie") if self.wants_cookies else None
        if cookie_header is not None:
            for name, value, backend in self.cookie_overrides:
                if parse_cookie(cookie_header, name) == value:
                    return self.by_override[backend]
        by = self.sticky_by
        if by == "none":
            cumulative = self.cumulative  # pick(), inlined: the common case, every request
            try:
                return self.by_weight[bisect_right(cumulative, point * cumulative[-1])]
            except IndexError:  # a subnormal total (see pick): a try costs nothing until then
                return self.by_weight[pick(cumulative, point)]
        fresh = None
        key: bytes | None
        if by == "cookie":
            # The first valid key: a stale copy sent before it (a Path=/app one, which the
            # proxy's Path=/ cookie can never replace) meant a new key on every request.
            key = parse_cookie(cookie_header, self.sticky_name, valid_sticky_key) if cookie_header else None
            if key is None:
                # A forged or garbled cookie is treated as absent: a new key is issued.
                key = fresh = new_key()
        elif by == "header":
            key = header(self.sticky_name)
            if key and (key[-1] == 32 or key[-1] == 9):  # a byte test: rstrip() on every request cost ~400 instructions
                key = key.rstrip(b" \t")  # "42 " is the user "42" (RFC 9110 §5.5)
        elif by == "query":
            key = query_param(url, self.sticky_name)
        else:  # ip
            key = client_ip
        if not key:
            return self.by_weight[pick(self.cumulative, point)]
        memo = self.sticky_memo
        chosen = memo.get(key, -1)
        if chosen < 0:
            chosen = hrw_choice(self.bname, self.names, self.weights, key)
            if len(key) <= STICKY_MEMO_KEY_MAX:
                if len(memo) >= STICKY_MEMO_MAX:
                    memo.clear()
                memo[key] = chosen
        return self.by_sticky[chosen] if fresh is None else Decision(chosen, BY_STICKY, fresh)


STICKY_MEMO_MAX = 16384  # keys remembered per route plan: ~3 MB at most (64-byte keys)
STICKY_MEMO_KEY_MAX = 64  # longer keys (a long header value) are hashed every time
_KEY_CHARS = frozenset(b"0123456789abcdef")
STICKY_KEY_LEN = 32  # 128 random bits, hex


def valid_sticky_key(key: bytes) -> bool:
    """Keys we issue are 32 lower-case hex digits; anything else is not ours."""
    return len(key) == STICKY_KEY_LEN and _KEY_CHARS.issuperset(key)


def _host_of(host_header: bytes) -> bytes:
    """``Host`` value without port or a trailing dot, lower-case (RFC 9110 §7.2; IPv6
    literals kept whole)."""
    if host_header.startswith(b"["):
        end = host_header.find(b"]")
        return host_header[: end + 1].lower() if end > 0 else host_header.lower()
    name = host_header.partition(b":")[0].lower()
    # A fully qualified name's trailing dot names the same host (nginx drops it too):
    # ``A.EXAMPLE.`` missed a.example's route and reached another route's upstream.
    return name[:-1] if name and name[-1] == 46 else name  # 46: ord("."), no slice made to test it


MAX_TRUST_MEMO = 4096  # addresses remembered as trusted or not (cleared when full)


class TrustedProxies:
    """Who the client is behind proxies of ours (``trusted_proxies``), for ``sticky: {by:
    ip}``: the TCP peer, unless it is one of them; then, walking ``X-Forwarded-For`` from the
    right (each proxy appends whom it got the request from), the first address that is not
    one of them: that one a proxy of ours wrote. What a client writes itself is on the left
    of it, never read (nginx's ``real_ip_recursive``). A hop that is not an address ends the
    walk at the peer."""

    __slots__ = ("_memo", "networks")

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self.networks = tuple(networks)
        self._memo: dict[bytes, bool] = {}

    def trusts(self, ip: bytes) -> bool:
        got = self._memo.get(ip)
        if got is None:
            addr = _address(ip)
            got = addr is not None and any(addr in n for n in self.networks if n.version == addr.version)
            if len(self._memo) >= MAX_TRUST_MEMO:
                self._memo.clear()
            self._memo[ip] = got
        return got

    def client(self, peer: bytes, forwarded_for: bytes | None) -> bytes:
        if not forwarded_for or not self.trusts(peer):
            return peer
        hops = [hop.strip(b" \t") for hop in forwarded_for.split(b",")]
        for hop in reversed(hops):
            if _address(hop) is None:
                return peer
            if not self.trusts(hop):
                return hop
        return hops[0]  # every hop one of ours: the first is the client


def _address(text: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # ::ffff:10.0.0.1, as a dual-stack socket names 10.0.0.1
    return addr


class Table:
    """All routes, indexed for matching. Immutable once built; swapped whole on change.

    Host precedence follows Envoy's virtual hosts: an exact host, then the longest
    ``*.suffix`` wildcard, then routes without a host. Within that group the longest
    ``path_prefix`` wins; when none of the group's prefixes match, the next group is tried.
    """

    __slots__ = ("_any", "_exact", "_wild", "config", "plans", "trusted")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.trusted = TrustedProxies(config.trusted_proxies) if config.trusted_proxies else None
        self.plans: dict[str, RoutePlan] = {}
        exact: dict[bytes, list[RoutePlan]] = {}
        wild: dict[bytes, list[RoutePlan]] = {}
        anyhost: list[RoutePlan] = []
        for route in config.routes:
            plan = RoutePlan.compile(route)
            self.plans[route.name] = plan
            if plan.host is None:
                anyhost.append(plan)
            elif plan.host.startswith(b"*."):
                wild.setdefault(plan.host[1:], []).append(plan)  # key b".example.com"
            else:
                exact.setdefault(plan.host, []).append(plan)

        def by_prefix(plans: list[RoutePlan]) -> tuple[RoutePlan, ...]:
            return tuple(sorted(plans, key=lambda p: len(p.prefix), reverse=True))

        self._exact = {h: by_prefix(p) for h, p in exact.items()}
        # Longest suffix first.
        self._wild = tuple((suffix, by_prefix(p)) for suffix, p in sorted(wild.items(), key=lambda kv: -len(kv[0])))
        self._any = by_prefix(anyhost)

    def match(self, host_header: bytes | None, path: bytes) -> RoutePlan | None:
        """The route for a request, or None (→ 404)."""
        if host_header and (self._exact or self._wild):
            host = _host_of(host_header)
            group = self._exact.get(host)
            if group:
                for plan in group:
                    if path.startswith(plan.prefix):
                        return plan
            for suffix, plans in self._wild:
                if host.endswith(suffix):
                    for plan in plans:
                        if path.startswith(plan.prefix):
                            return plan
        for plan in self._any:
            if path.startswith(plan.prefix):
                return plan
        return None

    def weights(self) -> Mapping[str, Mapping[str, float]]:
        return {name: dict(zip((b.name for b in p.backends), p.weights, strict=True)) for name, p in self.plans.items()}
