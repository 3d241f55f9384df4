"""The admin API from the command line: ``splitproxy weights|promote|rollback|status|history|restore``.

Tier 3: the installed command in a subprocess, against a real ``splitproxy run`` in another
(``ProxyProcess``; the admin API needs no live upstream, so the backends point at dead
ports). Exit codes, stdout, stderr, as a user or a CI job sees them. Nothing sleeps: the
proxy is ready when it prints its ports, and every CLI call runs to completion.

A few pure tests of ``proxy.client`` (argument parsing, rendering) come first, as tables.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.client import (
    DEFAULT_ADMIN,
    ApiError,
    UsageError,
    admin_url,
    client_from,
    parse_weights,
    render_change,
    render_history,
    render_status,
    share_text,
    weight_text,
    weights_change_text,
)

from .conftest import SPLITPROXY, ProxyProcess, StartProcess, StartUpstream, config_text, route

TOKEN = "s3cret-for-tests"
HINT = "(is `splitproxy run` running? set --admin or SPLITPROXY_ADMIN)"
# The variables the CLI reads; every call below states the ones it wants.
CLIENT_ENV = ("SPLITPROXY_ADMIN", "SPLITPROXY_ADMIN_TOKEN", "COLUMNS")


# ---- pure: the command line and the tables ---------------------------------------------------

WEIGHT_WORDS = {
    "two": (["stable=90", "canary=10"], {"stable": 90.0, "canary": 10.0}),
    "fraction": (["canary=2.5"], {"canary": 2.5}),
    "zero": (["canary=0"], {"canary": 0.0}),
    "spaces-around-name": ([" canary =1"], {"canary": 1.0}),
}


@pytest.mark.parametrize(("words", "expected"), WEIGHT_WORDS.values(), ids=WEIGHT_WORDS.keys())
def test_parse_weights(words: list[str], expected: dict[str, float]) -> None:
    assert parse_weights(words) == expected


BAD_WEIGHT_WORDS = {
    "no-equals": (["canary"], "expected BACKEND=WEIGHT"),
    "no-name": (["=5"], "expected BACKEND=WEIGHT"),
    "no-number": (["canary="], "must be a number"),
    "word": (["canary=ten"], "must be a number"),
    "percent": (["canary=10%"], "must be a number"),
    "nan": (["canary=nan"], "finite"),
    "inf": (["canary=inf"], "finite"),
    "underscore": (["canary=1_000"], "must be a number"),
    "twice": (["canary=1", "canary=2"], "given twice"),
    "negative": (["canary=-1"], "must be >= 0"),  # QA (eighth round): it was sent to the API
    "none": ([], "at least one"),
}


@pytest.mark.parametrize(("words", "message"), BAD_WEIGHT_WORDS.values(), ids=BAD_WEIGHT_WORDS.keys())
def test_parse_weights_refuses(words: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_weights(words)


ADMIN_URLS = {
    "default": ("http://127.0.0.1:9901", "http://127.0.0.1:9901"),
    "trailing-slash": ("http://127.0.0.1:9901/", "http://127.0.0.1:9901"),
    "no-scheme": ("127.0.0.1:9901", "http://127.0.0.1:9901"),
    "https-with-prefix": ("https://admin.example.com/splitproxy/", "https://admin.example.com/splitproxy"),
    # Review: a bare HOST:PORT/ was refused as a path without a scheme; a prefix ending in
    # /api or /ui (a reverse proxy's) was refused as the API's own.
    "no-scheme-trailing-slash": ("127.0.0.1:9901/", "http://127.0.0.1:9901"),
    "prefix-ending-in-api": ("http://h:1/team/api", "http://h:1/team/api"),
    "prefix-ending-in-ui": ("http://h:1/ops/ui/", "http://h:1/ops/ui"),
    "ipv6": ("http://[::1]:9901", "http://[::1]:9901"),
}


@pytest.mark.parametrize(("text", "expected"), ADMIN_URLS.values(), ids=ADMIN_URLS.keys())
def test_admin_url(text: str, expected: str) -> None:
    assert admin_url(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("ftp://x", id="scheme"),
        pytest.param("http://", id="no-host"),
        pytest.param("http://h:port", id="port-not-a-number"),
        pytest.param("http://h:9901/?a=1", id="query"),
        pytest.param("http://[::1", id="unclosed-bracket"),
        pytest.param("http://[zz]:1", id="bracketed-not-an-address"),
        pytest.param("[::1", id="unclosed-bracket-no-scheme"),
        pytest.param("http://user:pw@127.0.0.1:9901", id="user-and-password"),
        pytest.param("http://user@127.0.0.1:9901", id="user"),
        # QA: host "http" (exit 1, "Name or service not known"), and a 404 that did not say why.
        pytest.param("http//127.0.0.1:9901", id="scheme-without-colon"),
        pytest.param("127.0.0.1:9901/x", id="path-without-scheme"),
        pytest.param("http://127.0.0.1:9901/api/v1", id="api-path"),
        pytest.param("http://127.0.0.1:9901/api/v1/", id="api-path-slash"),
    ],
)
def test_admin_url_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="--admin") as caught:
        admin_url(text)
    assert "\n" not in caught.value.message
    assert "pw" not in caught.value.message  # a password is not echoed


@pytest.mark.parametrize(
    ("token", "message"),
    [
        pytest.param("a\nb", "control character", id="newline"),
        pytest.param("a\rb", "control character", id="carriage-return"),
        pytest.param("a\x00b", "control character", id="nul"),
        pytest.param("a\ud800b", "not text that can be sent", id="lone-surrogate"),
    ],
)
def test_a_token_that_cannot_be_a_header_is_a_usage_error(token: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        client_from(DEFAULT_ADMIN, environ={"SPLITPROXY_ADMIN_TOKEN": token})
    assert token not in caught.value.message


@pytest.mark.parametrize(
    ("weight", "text"),
    [
        (90.0, "90"),
        (2.5, "2.5"),
        (0, "0"),
        (10.0000001, "10.0000001"),  # QA: shown as 10, and a change to it read "10 → 10"
        (123456.7891, "123456.7891"),  # QA: shown as 123457
        (1e-6, "1e-06"),
        (1e6, "1000000"),
        (None, "-"),
    ],
)
def test_weight_text_shows_the_weight_exactly(weight: object, text: str) -> None:
    assert weight_text(weight) == text


@pytest.mark.parametrize(
    ("share", "text"),
    [(0.25, "25.0%"), (0.0, "0.0%"), (1.0, "100.0%"), (0.5 / 1e6, "<0.1%"), (1 - 0.5 / 1e6, ">99.9%"), (None, "-")],
)
def test_share_text_never_rounds_a_share_to_none_or_all(share: object, text: str) -> None:
    assert share_text(share) == text


CHANGES = {
    "initial": ({}, {"stable": 95.0, "canary": 5.0}, "stable 95, canary 5"),
    "set": ({"stable": 95.0, "canary": 5.0}, {"stable": 90.0, "canary": 10.0}, "stable 95→90, canary 5→10"),
    "one-unchanged": ({"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 2.5}, "a 1, b 2→2.5"),
    "backend-removed": ({"a": 1.0, "old": 3.0}, {"a": 1.0}, "a 1, old 3→-"),
}


@pytest.mark.parametrize(("before", "after", "text"), CHANGES.values(), ids=CHANGES.keys())
def test_weights_change_text(before: dict[str, float], after: dict[str, float], text: str) -> None:
    assert weights_change_text(before, after) == text


def _entry(version: int, reason: str) -> dict[str, Any]:
    return {
        "version": version,
        "time": 1_700_000_000.25,
        "route": "shop",
        "before": {"stable": 95.0, "canary": 5.0},
        "after": {"stable": 90.0, "canary": 10.0},
        "actor": "cli:alice",
        "reason": reason,
        "kind": "set",
    }


def test_history_is_one_line_per_change_when_it_fits() -> None:
    out = render_history({"entries": [_entry(3, "ramp")]}, width=120).splitlines()
    assert out[0].split() == ["VERSION", "TIME", "(UTC)", "ROUTE", "WEIGHTS", "BEFORE→AFTER", "ACTOR", "KIND", "REASON"]
    words = ["3", "2023-11-14T22:13:20Z", "shop", "stable", "95→90,", "canary", "5→10", "cli:alice", "set", "ramp"]
    assert out[1].split() == words


def test_history_has_a_narrow_layout_for_a_narrow_terminal() -> None:
    reason = "error rate flat for an hour on every endpoint; p99 latency within 5% of stable; next step 25%"
    out = render_history({"entries": [_entry(3, reason), _entry(2, "")]}, width=80).splitlines()
    assert all(len(line) <= 80 for line in out), out
    assert out[0].split() == ["VERSION", "TIME", "(UTC)", "ROUTE", "KIND", "ACTOR"]
    assert out[1].split() == ["3", "2023-11-14T22:13:20Z", "shop", "set", "cli:alice"]
    indent = " " * out[0].index("TIME")
    assert out[2] == f"{indent}weights: stable 95→90, canary 5→10"
    assert out[3].startswith(f"{indent}reason:  error rate")
    assert " ".join(line.strip() for line in out[3:5]) == f"reason:  {reason}"  # wrapped, all of it
    assert out[5].split() == ["2", "2023-11-14T22:13:20Z", "shop", "set", "cli:alice"]
    assert out[6:] == [f"{indent}weights: stable 95→90, canary 5→10"]  # no reason, no reason line


# Text from the API goes to a terminal: a NUL or an ESC (the start of a colour or cursor
# sequence) is shown as an escape, never sent raw. QA: a stored reason changed the colours.
HOSTILE = "a\x00b\x1b[31m\u2028red"
HOSTILE_SHOWN = "a\\x00b\\x1b[31m\\u2028red"


def _assert_printable(text: str) -> None:
    assert all(ch.isprintable() or ch == "\n" for ch in text), repr(text)


@pytest.mark.parametrize("width", [200, 40], ids=["wide", "narrow"])
def test_history_shows_control_characters_as_escapes(width: int) -> None:
    entry = _entry(3, HOSTILE) | {"actor": f"api{HOSTILE}", "kind": f"set{HOSTILE}", "route": f"shop{HOSTILE}"}
    out = render_history({"entries": [entry]}, width=width)
    _assert_printable(out)
    assert HOSTILE_SHOWN in out
    assert f"api{HOSTILE_SHOWN}" in out


def test_status_and_change_show_control_characters_as_escapes() -> None:
    route_json = {
        "name": f"shop{HOSTILE}",
        "version": 2,
        "match": {"host": None, "path_prefix": f"/{HOSTILE}"},
        "baseline": "stable",
        "sticky": {"by": "header", "name": HOSTILE},
        "backends": [{"name": HOSTILE, "weight": 1.0, "share": 1.0, "upstreams": [{"url": HOSTILE, "healthy": True}]}],
        "overrides": [{"header": "x-canary", "value": HOSTILE, "backend": "stable"}],
        "shadow": {"backend": HOSTILE, "percent": 5, "methods": ["GET"]},
    }
    status = render_status({"version": 2, "routes": [route_json]})
    _assert_printable(status)
    assert status.count(HOSTILE_SHOWN) == 7
    change = {"route": "shop", "version": 3, "before": {}, "after": {HOSTILE: 1.0}, "kind": "set"}
    changed = render_change({"change": change | {"actor": HOSTILE, "reason": HOSTILE}})
    _assert_printable(changed)
    assert changed.count(HOSTILE_SHOWN) == 3


def test_an_api_error_message_shows_control_characters_as_escapes() -> None:
    error = ApiError(400, f"no backend {HOSTILE}", f"weights.{HOSTILE}")
    _assert_printable(error.message)
    assert error.message == f"weights.{HOSTILE_SHOWN}: no backend {HOSTILE_SHOWN} (HTTP 400)"


# ---- running the command ---------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str

    def rows(self) -> list[list[str]]:
        return [line.split() for line in self.out.splitlines()]

    def row(self, *first: str) -> list[str]:
        """The first line of stdout that starts with the words ``first``, as words."""
        return next(r for r in self.rows() if tuple(r[: len(first)]) == first)

    @property
    def version(self) -> int:
        m = re.search(r"is now at version (\d+)", self.out)
        assert m, self.out
        return int(m[1])


async def splitproxy(
    *args: str, admin: str | None, token: str | None = None, env: dict[str, str] | None = None, within: float = 30
) -> Result:
    """One CLI command, to completion, in its own process; never a traceback."""
    environ = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    if token is not None:
        environ["SPLITPROXY_ADMIN_TOKEN"] = token
    environ.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        SPLITPROXY,
        *args,
        *(["--admin", admin] if admin else []),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    async with asyncio.timeout(within):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    result = Result(proc.returncode, out.decode(), err.decode())
    assert "Traceback" not in result.err, result.err
    return result


def free_port() -> int:
    """A port nothing listens on: the OS hands it out, then it is closed at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _no_token_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    # The proxy subprocess inherits this process's environment (ProxyProcess.start passes
    # none): a token in the developer's shell must not protect the proxies of these tests.
    for name in CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)


def write_config(tmp_path: Path, **top: Any) -> Path:
    path = tmp_path / "splitproxy.yaml"
    shop = route(
        "shop", "/", stable=(["http://127.0.0.1:9", "http://127.0.0.1:10"], 95), canary=("http://127.0.0.1:11", 5)
    )
    api = route("api", "/api", v1="http://127.0.0.1:12", v2=("http://127.0.0.1:13", 0))
    path.write_text(config_text(tmp_path, [shop, api], access_log="off", **top))
    return path


@pytest.fixture
async def proxy(tmp_path: Path, proxy_process: StartProcess) -> ProxyProcess:
    return await proxy_process(write_config(tmp_path))


async def start_protected(
    tmp_path: Path, proxy_process: StartProcess, monkeypatch: pytest.MonkeyPatch, **top: Any
) -> ProxyProcess:
    """A proxy started with ``SPLITPROXY_ADMIN_TOKEN`` (its default ``admin.token_env``) set:
    ``ProxyProcess.start`` passes no ``env``, so the subprocess takes this process's."""
    monkeypatch.setenv("SPLITPROXY_ADMIN_TOKEN", TOKEN)
    started = await proxy_process(write_config(tmp_path, **top))
    monkeypatch.delenv("SPLITPROXY_ADMIN_TOKEN")
    return started


@pytest.fixture
async def protected(tmp_path: Path, proxy_process: StartProcess, monkeypatch: pytest.MonkeyPatch) -> ProxyProcess:
    return await start_protected(tmp_path, proxy_process, monkeypatch)


def admin_of(p: ProxyProcess) -> str:
    return f"http://127.0.0.1:{p.admin_port}"


async def status_json(admin: str, route_name: str = "shop") -> dict[str, Any]:
    result = await splitproxy("status", route_name, "--json", admin=admin)
    assert result.code == 0, result.err
    answer: dict[str, Any] = json.loads(result.out)
    return answer


def weights_of(route_json: dict[str, Any]) -> dict[str, float]:
    return {b["name"]: b["weight"] for b in route_json["backends"]}


# ---- weights, status -------------------------------------------------------------------------


async def test_weights_then_status_shows_them(proxy: ProxyProcess) -> None:
    admin = admin_of(proxy)
    changed = await splitproxy("weights", "shop", "stable=90", "canary=10", "--reason", "canary 10%", admin=admin)
    assert changed.code == 0, changed.err
    assert changed.err == ""
    assert changed.out.startswith("route shop is now at version ")
    assert changed.row("BACKEND") == ["BACKEND", "WAS", "WEIGHT", "SHARE"]
    assert changed.row("stable") == ["stable", "95", "90", "90.0%"]
    assert changed.row("canary") == ["canary", "5", "10", "10.0%"]

    status = await splitproxy("status", admin=admin)
    assert status.code == 0, status.err
    assert status.rows()[0] == ["config", "version", str(changed.version)]
    assert status.row("route")[:4] == ["route", "shop:", "version", f"{changed.version},"]
    assert status.row("BACKEND") == ["BACKEND", "WEIGHT", "SHARE", "UPSTREAM", "HEALTH"]
    assert status.row("stable") == ["stable", "90", "90.0%", "http://127.0.0.1:9", "healthy"]
    assert ["http://127.0.0.1:10", "healthy"] in status.rows()  # the second upstream, own line
    assert status.row("canary") == ["canary", "10", "10.0%", "http://127.0.0.1:11", "healthy"]
    assert status.row("v2") == ["v2", "0", "0.0%", "http://127.0.0.1:13", "healthy"]
    assert all(len(line) <= 80 for line in status.out.splitlines()), status.out

    one = await splitproxy("status", "api", admin=admin)
    assert one.code == 0, one.err
    assert one.row("v1") == ["v1", "1", "100.0%", "http://127.0.0.1:12", "healthy"]
    assert "shop" not in one.out


async def test_weights_already_in_force_say_nothing_changed(proxy: ProxyProcess) -> None:
    admin = admin_of(proxy)
    first = await splitproxy("weights", "shop", "canary=10", "--reason", "step 1", admin=admin)
    again = await splitproxy("weights", "shop", "canary=10", "--reason", "step 1 again", admin=admin)
    assert again.code == 0, again.err
    assert again.out.startswith(
        f"route shop already has these weights: nothing changed, still at version {first.version} (set by cli:"
    ), again.out
    assert again.out.splitlines()[0].endswith(": step 1)"), again.out  # the change that set them
    # QA: it showed that entry's WAS (canary 5 → 10), a change not made now.
    assert again.row("canary") == ["canary", "10", "9.5%"]
    assert "WAS" not in again.out


async def test_weights_keeps_backends_not_named_and_honours_if_match(proxy: ProxyProcess) -> None:
    admin = admin_of(proxy)
    first = await splitproxy("weights", "shop", "canary=15", admin=admin)
    assert first.code == 0, first.err
    assert first.row("stable") == ["stable", "95", "95", "86.4%"]

    stale = await splitproxy("weights", "shop", "canary=50", "--if-match", str(first.version - 1), admin=admin)
    assert stale.code == 1
    assert stale.out == ""
    assert stale.err.startswith(
        f"splitproxy: If-Match: route 'shop' is at version {first.version}, not {first.version - 1} (HTTP 412)"
    )
    assert weights_of(await status_json(admin)) == {"stable": 95, "canary": 15}  # nothing changed

    fresh = await splitproxy("weights", "shop", "canary=50", "--if-match", str(first.version), admin=admin)
    assert fresh.code == 0, fresh.err
    assert fresh.version > first.version


async def test_two_changes_from_the_same_version_one_wins(proxy: ProxyProcess) -> None:
    admin = admin_of(proxy)
    version = str((await status_json(admin))["version"])
    results = await asyncio.gather(
        splitproxy("weights", "shop", "canary=20", "--if-match", version, admin=admin),
        splitproxy("weights", "shop", "canary=30", "--if-match", version, admin=admin),
    )
    assert sorted(r.code for r in results) == [0, 1], [r.err for r in results]
    [won] = [r for r in results if r.code == 0]
    [lost] = [r for r in results if r.code == 1]
    assert "(HTTP 412)" in lost.err
    assert weights_of(await status_json(admin))["canary"] == int(won.row("canary")[2])


# ---- history, restore, promote, rollback -----------------------------------------------------


async def test_history_lists_the_change_with_the_cli_actor(proxy: ProxyProcess) -> None:
    admin = admin_of(proxy)
    changed = await splitproxy("weights", "shop", "stable=90", "canary=10", "--reason", "canary 10%", admin=admin)
    assert changed.code == 0, changed.err

    history = await splitproxy("history", "shop", admin=admin, env={"COLUMNS": "200"})
    assert history.code == 0, history.err
    header, newest, *older = history.out.splitlines()
    assert header.split() == ["VERSION", "TIME", "(UTC)", "ROUTE", "WEIGHTS", "BEFORE→AFTER", "ACTOR", "KIND", "REASON"]
    version, when, route_name, *change = newest.split()
    assert int(version) == changed.version
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", when), when
    assert route_name == "shop"
    assert " ".join(change) == f"stable 95→90, canary 5→10 cli:{getpass.getuser()} set canary 10%"
    assert [line.split()[2:] for line in older] == [
        ["shop", "stable", "95,", "canary", "5", "config", "initial", "start-up"]
    ]

    as_json = await splitproxy("history", "--json", admin=admin)
    assert as_json.code == 0, as_json.err
    entries = json.loads(as_json.out)["entries"]
    assert {e["route"] for e in entries} == {"shop", "api"}  # no ROUTE: every route
    assert entries[0]["actor"] == f"cli:{getpass.getuser()}"
    assert entries[0]["version"] == changed.version

    limited = await splitproxy("history", "--limit", "1", "--json", admin=admin)
    assert [e["version"] for e in json.loads(limited.out)["entries"]] == [changed.version]


async def test_history_fits_an_80_column_terminal(proxy: ProxyProcess) -> None:
    admin = admin_of(proxy)
    reason = "error rate and p99 flat for an hour on every endpoint; next step 25%"
    changed = await splitproxy("weights", "shop", "stable=90", "canary=10", "--reason", reason, admin=admin)
    assert changed.code == 0, changed.err
    history = await splitproxy("history", admin=admin)  # a pipe, no COLUMNS: 80 columns
    assert history.code == 0, history.err
    lines = history.out.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[1].split()[2:] == ["shop", "set", f"cli:{getpass.getuser()}"]
    assert lines[2].split() == ["weights:", "stable", "95→90,", "canary", "5→10"]
    assert " ".join(" ".join(line.split()) for line in lines[3:5]) == f"reason: {reason}"


async def test_restore_brings_back_an_earlier_version(proxy: ProxyProcess) -> None:
    admin = admin_of(proxy)
    ninety = await splitproxy("weights", "shop", "stable=90", "canary=10", admin=admin)
    half = await splitproxy("weights", "shop", "stable=50", "canary=50", admin=admin)
    assert (ninety.code, half.code) == (0, 0), ninety.err + half.err

    restored = await splitproxy("restore", str(ninety.version), admin=admin)
    assert restored.code == 0, restored.err
    assert restored.version > half.version  # a new version, not a rewind
    assert f"(restore by cli:{getpass.getuser()}: restore version {ninety.version})" in restored.out
    assert restored.row("stable") == ["stable", "50", "90", "90.0%"]
    assert weights_of(await status_json(admin)) == {"stable": 90, "canary": 10}

    history = await splitproxy("history", "shop", "--limit", "1", "--json", admin=admin)
    [entry] = json.loads(history.out)["entries"]
    assert (entry["kind"], entry["version"]) == ("restore", restored.version)

    custom = await splitproxy("restore", str(half.version), "--reason", "back to 50/50", admin=admin)
    assert custom.code == 0, custom.err
    assert "back to 50/50" in custom.out


async def test_promote_then_rollback(proxy: ProxyProcess) -> None:
    admin = admin_of(proxy)
    promoted = await splitproxy("promote", "shop", "canary", "--reason", "green for an hour", admin=admin)
    assert promoted.code == 0, promoted.err
    assert "(promote by cli:" in promoted.out
    assert "green for an hour" in promoted.out
    assert promoted.row("canary") == ["canary", "5", "100", "100.0%"]
    assert promoted.row("stable") == ["stable", "95", "0", "0.0%"]

    rolled = await splitproxy("rollback", "shop", admin=admin)
    assert rolled.code == 0, rolled.err
    assert "rollback to baseline" in rolled.out  # the API's default reason
    assert rolled.version > promoted.version
    assert weights_of(await status_json(admin)) == {"stable": 100, "canary": 0}

    history = await splitproxy("history", "shop", "--json", admin=admin)
    kinds = [e["kind"] for e in json.loads(history.out)["entries"]]
    assert kinds[:2] == ["rollback", "promote"]


async def test_changes_made_with_the_cli_survive_a_restart(tmp_path: Path, proxy_process: StartProcess) -> None:
    config = write_config(tmp_path)
    first = await proxy_process(config)
    changed = await splitproxy("weights", "shop", "stable=90", "canary=10", admin=admin_of(first))
    assert changed.code == 0, changed.err
    assert await first.stop() == 0

    second = await proxy_process(config)
    admin = admin_of(second)
    shop = await status_json(admin)
    assert (weights_of(shop), shop["version"]) == ({"stable": 90, "canary": 10}, changed.version)
    history = await splitproxy("history", "shop", "--limit", "1", "--json", admin=admin)
    [entry] = json.loads(history.out)["entries"]
    assert entry["version"] == changed.version
    again = await splitproxy("weights", "shop", "canary=20", "--if-match", str(changed.version), admin=admin)
    assert again.code == 0, again.err  # the route's version is the one from before the restart


# ---- errors ----------------------------------------------------------------------------------

REFUSALS = {
    "weights": (["weights", "nosuch", "a=1"], "route: no route 'nosuch' (HTTP 404)"),
    "promote": (["promote", "nosuch", "canary"], "route: no route 'nosuch' (HTTP 404)"),
    "rollback": (["rollback", "nosuch"], "route: no route 'nosuch' (HTTP 404)"),
    "status": (["status", "nosuch"], "route: no route 'nosuch' (HTTP 404)"),
    "history": (["history", "nosuch"], "route: no route 'nosuch' (HTTP 404)"),
    "restore": (["restore", "999"], "version: no version 999 (HTTP 404)"),
    "backend": (
        ["weights", "shop", "beta=5"],
        "weights.beta: no backend 'beta' in route 'shop' (backends: stable, canary) (HTTP 400)",
    ),
    "promote-backend": (
        ["promote", "shop", "beta"],
        "backend: no backend 'beta' in route 'shop' (backends: stable, canary) (HTTP 400)",
    ),
    "too-large": (
        ["weights", "shop", "canary=2e6"],
        "weights.canary: must be <= 1e+06 (shares are weight / sum), got 2000000 (HTTP 400)",
    ),
    "all-zero": (
        ["weights", "shop", "stable=0", "canary=0"],
        "weights: at least one backend needs a positive weight (HTTP 400)",
    ),
}


async def test_refusals_print_the_apis_message_and_change_nothing(proxy: ProxyProcess) -> None:
    # One proxy for the table: a refusal changes nothing, so the cases cannot disturb each other.
    admin = admin_of(proxy)
    before = await splitproxy("history", "--json", admin=admin)
    for case, (args, message) in REFUSALS.items():
        result = await splitproxy(*args, admin=admin)
        assert (result.code, result.out, result.err) == (1, "", f"splitproxy: {message}\n"), case
    after = await splitproxy("history", "--json", admin=admin)
    assert json.loads(after.out) == json.loads(before.out)


BAD_SYNTAX = {
    "no-equals": ["canary"],
    "not-a-number": ["canary=ten"],
    "nan": ["canary=nan"],
    "twice": ["canary=1", "canary=2"],
    "no-weights": [],
}


@pytest.fixture
async def listener() -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP listener that counts connections: the proof that a command sent nothing."""
    connections: list[int] = []

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", connections


@pytest.mark.parametrize("words", BAD_SYNTAX.values(), ids=BAD_SYNTAX.keys())
async def test_bad_weight_syntax_is_a_usage_error_before_any_request(
    words: list[str], listener: tuple[str, list[int]]
) -> None:
    admin, connections = listener
    result = await splitproxy("weights", "shop", *words, admin=admin)
    assert result.code == 2
    assert result.out == ""
    assert result.err.startswith("usage: splitproxy weights")
    assert "splitproxy weights: error:" in result.err
    assert connections == []


@pytest.mark.parametrize(
    "args",
    [
        ["history", "--limit", "0"],
        ["restore", "v3"],
        ["weights", "shop", "a=1", "--if-match", "x"],
        ["status", "--timeout", "0"],
        ["status", "--timeout", "99999999h"],  # beyond what a socket takes: was an OverflowError
    ],
    ids=["limit", "version", "if-match", "timeout", "timeout-too-long"],
)
async def test_other_usage_errors_send_nothing(args: list[str], listener: tuple[str, list[int]]) -> None:
    admin, connections = listener
    result = await splitproxy(*args, admin=admin)
    assert (result.code, result.out) == (2, "")
    assert f"splitproxy {args[0]}: error: argument" in result.err
    assert connections == []


@pytest.mark.parametrize(
    "admin",
    ["http://[::1", "http://[zz]:{port}", "http://user:pw@127.0.0.1:{port}"],
    ids=["unclosed-bracket", "bracketed-not-an-address", "credentials"],
)
async def test_a_bad_admin_url_is_one_line_and_exit_2(admin: str, listener: tuple[str, list[int]]) -> None:
    url, connections = listener
    admin = admin.format(port=url.rpartition(":")[2])
    result = await splitproxy("status", admin=admin)
    assert (result.code, result.out) == (2, "")
    [line] = result.err.splitlines()
    assert line.startswith("splitproxy: --admin: "), line
    assert "pw" not in line
    assert connections == []


UNREACHABLE_CALLS = {
    "status": ["status"],
    "weights": ["weights", "shop", "canary=10"],
    "history": ["history"],
    "restore": ["restore", "3"],
}


@pytest.mark.parametrize("args", UNREACHABLE_CALLS.values(), ids=UNREACHABLE_CALLS.keys())
async def test_unreachable_admin_says_what_to_check(args: list[str]) -> None:
    admin = f"http://127.0.0.1:{free_port()}"
    result = await splitproxy(*args, admin=admin)
    assert (result.code, result.out) == (1, "")
    [line] = result.err.splitlines()
    assert line == f"splitproxy: cannot reach the admin API at {admin}: Connection refused {HINT}"


async def test_admin_url_and_its_default_come_from_the_environment(proxy: ProxyProcess) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    from_env = await splitproxy("status", admin=None, env={"SPLITPROXY_ADMIN": dead})
    assert from_env.code == 1
    assert f"cannot reach the admin API at {dead}:" in from_env.err

    live = await splitproxy("status", admin=None, env={"SPLITPROXY_ADMIN": f"127.0.0.1:{proxy.admin_port}"})
    assert live.code == 0, live.err
    assert "route shop:" in live.out

    flag_wins = await splitproxy("status", admin=admin_of(proxy), env={"SPLITPROXY_ADMIN": dead})
    assert flag_wins.code == 0, flag_wins.err

    bad = await splitproxy("status", admin="ftp://somewhere")
    assert (bad.code, bad.err) == (
        2,
        "splitproxy: --admin: expected a URL such as http://127.0.0.1:9901, got 'ftp://somewhere'\n",
    )


async def test_the_data_port_is_not_mistaken_for_the_admin_api(proxy: ProxyProcess) -> None:
    result = await splitproxy("status", admin=proxy.url)
    assert result.code == 1
    [line] = result.err.splitlines()
    assert line.startswith(f"splitproxy: {proxy.url} answered HTTP 502")
    assert line.endswith(
        f", not the admin API's JSON (is {proxy.url} the admin listener? if so, the proxy's log says what failed)"
    )


async def test_a_silent_admin_times_out() -> None:
    with socket.socket() as silent:  # accepts (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        admin = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = await splitproxy("status", "--timeout", "300ms", admin=admin)
    assert result.code == 1
    assert result.err == f"splitproxy: cannot reach the admin API at {admin}: no answer within 0.3s {HINT}\n"


async def test_a_change_left_unanswered_says_it_may_have_been_made() -> None:
    """QA: with a stopped worker the proxy made the change and answered 503 after its 10 s
    wait, but the CLI, also at 10 s, said it could not reach the admin API."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        admin = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = await splitproxy("weights", "main", "canary=5", "--timeout", "300ms", admin=admin)
    assert result.code == 1
    assert result.err == (
        f"splitproxy: no answer from the admin API at {admin} within 0.3s: the change may have been made or not; "
        "`splitproxy history` shows which\n"
    )
    helped = await splitproxy("weights", "--help", admin=None)
    assert "default 30s" in helped.out


async def test_a_change_that_could_not_be_sent_says_it_could_not_reach() -> None:
    """Review: a time-out while connecting (urllib's URLError) also said the change "may have
    been made", though nothing was sent."""
    with socket.socket() as full, socket.socket() as filler:
        full.bind(("127.0.0.1", 0))
        full.listen(0)  # one connection waits in the queue, never accepted; the next cannot connect
        filler.connect(full.getsockname())
        admin = f"http://127.0.0.1:{full.getsockname()[1]}"
        result = await splitproxy("weights", "main", "canary=5", "--timeout", "500ms", admin=admin)
    assert result.code == 1
    assert result.err.startswith(f"splitproxy: cannot reach the admin API at {admin}: "), result.err


async def test_restore_of_a_version_beyond_sqlite_integers_is_404(proxy: ProxyProcess) -> None:
    # The CLI refuses such a VERSION itself (exit 2, above), so this goes to the API directly.
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{admin_of(proxy)}/api/v1/history/{2**63}/restore") as resp,
    ):
        assert resp.status == 404
        assert (await resp.json())["error"]["where"] == "version"


# ---- the token -------------------------------------------------------------------------------


async def test_a_token_protected_admin_api(protected: ProxyProcess) -> None:
    admin = admin_of(protected)
    # Reads are open on the admin listener (SPEC §5), mutations need the token.
    read = await splitproxy("status", admin=admin)
    assert read.code == 0, read.err

    without = await splitproxy("weights", "shop", "canary=10", admin=admin)
    assert (without.code, without.out) == (1, "")
    assert without.err == (
        f"splitproxy: the admin API at {admin} needs a token (HTTP 401): "
        "set SPLITPROXY_ADMIN_TOKEN to the token the proxy was started with\n"
    )

    wrong = await splitproxy("weights", "shop", "canary=10", admin=admin, token="not-it")
    assert wrong.code == 1
    assert "refused the token in SPLITPROXY_ADMIN_TOKEN (HTTP 401)" in wrong.err

    for args in (["promote", "shop", "canary"], ["rollback", "shop"], ["restore", "1"]):
        refused = await splitproxy(*args, admin=admin)
        assert refused.code == 1, args
        assert "set SPLITPROXY_ADMIN_TOKEN" in refused.err, args
    assert weights_of(await status_json(admin)) == {"stable": 95, "canary": 5}  # nothing changed

    with_token = await splitproxy("weights", "shop", "canary=10", admin=admin, token=TOKEN)
    assert with_token.code == 0, with_token.err
    assert with_token.row("canary") == ["canary", "5", "10", "9.5%"]
    assert weights_of(await status_json(admin)) == {"stable": 95, "canary": 10}


@pytest.mark.parametrize("token", ["s\u00e9cret", "\u79d8\u5bc6"], ids=["latin-1", "beyond-latin-1"])
async def test_a_wrong_token_outside_ascii_is_refused_as_wrong(protected: ProxyProcess, token: str) -> None:
    """QA: ``SPLITPROXY_ADMIN_TOKEN=s\u00e9cret splitproxy weights ...`` got an HTTP 500."""
    admin = admin_of(protected)
    wrong = await splitproxy("weights", "shop", "canary=10", admin=admin, token=token)
    assert (wrong.code, wrong.out) == (1, "")
    assert wrong.err == (
        f"splitproxy: the admin API at {admin} refused the token in SPLITPROXY_ADMIN_TOKEN (HTTP 401): "
        "set it to the token the proxy was started with\n"
    )
    assert weights_of(await status_json(admin)) == {"stable": 95, "canary": 5}


async def test_a_token_outside_ascii_works_when_it_is_the_proxys(
    tmp_path: Path, proxy_process: StartProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPLITPROXY_ADMIN_TOKEN", "s\u00e9cret")
    p = await proxy_process(write_config(tmp_path))
    monkeypatch.delenv("SPLITPROXY_ADMIN_TOKEN")
    changed = await splitproxy("weights", "shop", "canary=10", admin=admin_of(p), token="s\u00e9cret")
    assert changed.code == 0, changed.err


async def test_protected_reads_need_the_token_too(
    tmp_path: Path, proxy_process: StartProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = await start_protected(
        tmp_path, proxy_process, monkeypatch, admin={"listen": "127.0.0.1:0", "protect_reads": True}
    )
    admin = admin_of(p)
    for args in (["status"], ["status", "shop"], ["history"]):
        without = await splitproxy(*args, admin=admin)
        assert without.code == 1, args
        assert "needs a token (HTTP 401): set SPLITPROXY_ADMIN_TOKEN" in without.err, args
        with_token = await splitproxy(*args, admin=admin, token=TOKEN)
        assert with_token.code == 0, (args, with_token.err)


# ---- --json, --help, odd terminals -----------------------------------------------------------


async def test_json_output_is_the_apis_json(proxy: ProxyProcess) -> None:
    admin = admin_of(proxy)
    listing = await splitproxy("status", "--json", admin=admin)
    routes = json.loads(listing.out)
    assert [r["name"] for r in routes["routes"]] == ["shop", "api"]
    assert routes["routes"][0]["backends"][0]["share"] == pytest.approx(0.95)
    assert listing.out.startswith('{\n  "')  # indented for a reader

    one = json.loads((await splitproxy("status", "shop", "--json", admin=admin)).out)
    assert one == routes["routes"][0]

    changed = await splitproxy("weights", "shop", "canary=10", "--json", admin=admin)
    answer = json.loads(changed.out)
    assert answer["change"]["after"] == {"stable": 95.0, "canary": 10.0}
    assert answer["route"]["version"] == answer["change"]["version"] == routes["version"] + 1

    set_version = answer["change"]["version"]  # canary 10: a change after the rollback
    for args in (["promote", "shop", "canary"], ["rollback", "shop"], ["restore", str(set_version)]):
        result = await splitproxy(*args, "--json", admin=admin)
        assert result.code == 0, result.err
        assert set(json.loads(result.out)) == {"route", "change", "changed"}, args

    history = json.loads((await splitproxy("history", "--json", admin=admin)).out)
    assert set(history) == {"version", "entries"}
    assert [e["kind"] for e in history["entries"][:4]] == ["restore", "rollback", "promote", "set"]


async def test_history_and_status_show_a_reasons_escape_sequence_escaped(proxy: ProxyProcess) -> None:
    admin = admin_of(proxy)
    reason = "a\x1b[31mred\x07"
    changed = await splitproxy("weights", "shop", "canary=10", "--reason", reason, admin=admin)
    assert changed.code == 0, changed.err
    assert "\x1b" not in changed.out
    assert "a\\x1b[31mred\\x07" in changed.out
    for args in (["history"], ["history", "shop"]):
        for columns in ("200", "40"):
            shown = await splitproxy(*args, admin=admin, env={"COLUMNS": columns})
            assert shown.code == 0, shown.err
            assert "\x1b" not in shown.out
            assert "\x07" not in shown.out
            assert "a\\x1b[31mred\\x07" in shown.out, (args, columns)
    as_json = await splitproxy("history", "--json", admin=admin)  # as sent: JSON escapes it
    assert json.loads(as_json.out)["entries"][0]["reason"] == reason


async def test_a_terminal_that_cannot_show_arrows_gets_no_traceback(proxy: ProxyProcess) -> None:
    admin = admin_of(proxy)
    ascii_only = {"PYTHONIOENCODING": "ascii"}
    changed = await splitproxy("weights", "shop", "canary=10", "--reason", "ramp ✓", admin=admin, env=ascii_only)
    assert changed.code == 0, changed.err
    history = await splitproxy("history", admin=admin, env=ascii_only)
    assert history.code == 0, history.err
    assert "95?90" not in history.out  # unchanged weights: no arrow
    assert "canary 5?10" in history.out


CLIENT_COMMANDS = ["weights", "promote", "rollback", "status", "history", "restore"]


@pytest.mark.parametrize("command", CLIENT_COMMANDS)
async def test_help_explains_with_an_example(command: str) -> None:
    result = await splitproxy(command, "--help", admin=None)
    assert result.code == 0, result.err
    assert result.err == ""
    assert result.out.startswith(f"usage: splitproxy {command}")
    for word in ("--admin", "--json", "--timeout", "SPLITPROXY_ADMIN_TOKEN", "example:", f"  splitproxy {command} "):
        assert word in result.out, (word, result.out)
    assert all(len(line) <= 80 for line in result.out.splitlines()), result.out


async def test_top_level_help_lists_the_client_commands() -> None:
    result = await splitproxy("--help", admin=None)
    assert result.code == 0
    for command in CLIENT_COMMANDS:
        assert re.search(rf"^    {command} ", result.out, re.MULTILINE), (command, result.out)


async def test_a_client_pointed_at_something_else_says_what_to_check(start_upstream: StartUpstream) -> None:
    """QA: `status --admin <the proxy's port>` said "unexpected answer (KeyError('backends'))"."""
    up = await start_upstream()  # a JSON-answering HTTP server, not an admin API
    result = await splitproxy("status", admin=up.url)
    assert result.code == 1
    assert result.err.startswith(f"splitproxy: {up.url} answered, but not as splitproxy's admin API does")
    assert "is it the admin listener (admin.listen)" in result.err
