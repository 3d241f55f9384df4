"""Tier 3: the installed ``splitproxy`` command in a subprocess, as a user runs it.

Exit codes, what goes to stdout and stderr, and the demo over real HTTP. Nothing sleeps
to wait for a process: readiness is a line it prints, read as it comes (STYLE.md).
Also here: the container image's files (Dockerfile, config/docker.yaml) agree with each
other and with the source tree, since no Docker engine runs the tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Literal

import aiohttp
import pytest

from proxy.config import load_file
from proxy.store import Store

from .conftest import SPLITPROXY

ROOT = Path(__file__).resolve().parent.parent
DOCKER_CONFIG = ROOT / "config" / "docker.yaml"
DOCKERFILE = ROOT / "Dockerfile"

# The console script and the module: both are documented ways to run it.
INVOCATIONS = {
    "splitproxy": [SPLITPROXY],
    "python -m proxy": [sys.executable, "-m", "proxy"],
}

# `where: what (line N)`, as SPEC §2 and STYLE.md spell a config problem.
# `file: where: what (line N)`
PROBLEM_RE = re.compile(r"(?P<file>\S+\.yaml): (?P<where>\S+): (?P<what>.+) \(line (?P<line>\d+)\)")


def cli(*args: str, cwd: Path = ROOT, within: float = 30) -> subprocess.CompletedProcess[str]:
    """One command, to completion; a hang fails the test by name."""
    return subprocess.run(
        [SPLITPROXY, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=within,
        check=False,
    )


def line_of(text: str, needle: str) -> int:
    """The 1-based line of ``text`` that contains ``needle``, so tests need not count lines."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the OS just handed out (all bound at once, so none repeats)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def small_config(tmp_path: Path, *, listen: str = "127.0.0.1:0", admin: str = "127.0.0.1:0") -> Path:
    path = tmp_path / "splitproxy.yaml"
    path.write_text(
        f"""\
listen: "{listen}"
admin: {{listen: "{admin}"}}
state: {{path: "{tmp_path / "state.db"}"}}
access_log: "off"
routes:
  - name: main
    backends:
      only: {{upstreams: ["http://127.0.0.1:9"], weight: 1}}
"""
    )
    return path


# ---- --help ----------------------------------------------------------------------------------

HELP = {
    (): ["usage: splitproxy", "run", "check", "demo"],
    ("run",): ["usage: splitproxy run", "--config", "--grace", "--verbose"],
    ("check",): ["usage: splitproxy check", "--config"],
    ("demo",): ["usage: splitproxy demo", "--listen", "--admin-listen", "--traffic"],
}


@pytest.mark.parametrize("invocation", INVOCATIONS.values(), ids=INVOCATIONS.keys())
@pytest.mark.parametrize("command", HELP.keys(), ids=lambda c: " ".join(c) or "top")
def test_help_names_commands_and_options(invocation: list[str], command: tuple[str, ...]) -> None:
    result = subprocess.run(
        [*invocation, *command, "--help"], capture_output=True, text=True, timeout=30, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for word in HELP[command]:
        assert word in result.stdout, (word, result.stdout)


# ---- check -----------------------------------------------------------------------------------


def test_check_accepts_the_example() -> None:
    result = cli("check", "-c", "config/example.yaml")  # relative, as the example's comment says
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config/example.yaml: ok")
    assert result.stderr == ""


BAD = """\
listen: "127.0.0.1:0"
admin:
  listen: "127.0.0.1:0"
  colour: blue
routes:
  - name: shop
    backends:
      stable: {upstreams: ["http://127.0.0.1:8001"], weight: 10}
      canary:
        upstreams: ["http://127.0.0.1:8002"]
        weight: -5
    baseline: nosuch
    sticky: {by: cookie, max_age: 3 days}
"""


def test_check_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = cli("check", "-c", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    problems = [PROBLEM_RE.fullmatch(line) for line in lines]
    assert all(problems), lines  # one problem per line, each `file: where: what (line N)`
    assert {m["file"] for m in problems if m} == {str(path)}
    got = {(m["where"], int(m["line"])): m["what"] for m in problems if m}
    expected = {  # (where, line) -> a word the explanation must contain
        ("admin.colour", line_of(BAD, "colour:")): "unknown key",
        ("routes[0].backends.canary.weight", line_of(BAD, "weight: -5")): ">= 0",
        ("routes[0].baseline", line_of(BAD, "baseline:")): "nosuch",
        ("routes[0].sticky.max_age", line_of(BAD, "max_age:")): "duration",
    }
    assert set(got) == set(expected), lines
    for key, word in expected.items():
        assert word in got[key], (key, got[key])
    assert [int(m["line"]) for m in problems if m] == sorted(k[1] for k in expected)  # file order


def test_check_names_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "splitproxy.yaml"
    result = cli("check", "-c", str(path))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{path}: "), line
    assert "No such file or directory" in line, line
    assert result.stdout == ""


def test_check_gives_the_line_of_a_yaml_syntax_error(tmp_path: Path) -> None:
    text = 'listen: "127.0.0.1:0"\nadmin:\n  listen: "127.0.0.1:0"\nstate: path: /tmp/x.db\nroutes: []\n'
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    result = cli("check", "-c", str(path))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    m = PROBLEM_RE.fullmatch(line)
    assert m, line
    assert m["where"] == "<yaml>"
    assert int(m["line"]) == line_of(text, "state: path:")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["check", "run"])
def test_an_admin_off_loopback_with_token_env_null_is_refused_by_check_and_run(tmp_path: Path, command: str) -> None:
    """QA: ``check`` said ok for a file ``run`` always refuses; no token is possible with
    ``token_env: null``, so it is a problem of the file, with its line."""
    path = small_config(tmp_path, admin="0.0.0.0:28691")
    text = path.read_text().replace(
        'admin: {listen: "0.0.0.0:28691"}', 'admin: {listen: "0.0.0.0:28691", token_env: null}'
    )
    path.write_text(text)
    result = cli(command, "-c", str(path))
    assert (result.returncode, result.stdout) == (2, "")
    [line] = result.stderr.splitlines()
    m = PROBLEM_RE.fullmatch(line)
    assert m, line
    assert (m["where"], int(m["line"])) == ("admin.listen", line_of(text, "admin:"))
    assert "0.0.0.0:28691 is not a loopback address" in m["what"]


# ---- run -------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["{tmp}", "/proc/version"], ids=["a-directory", "not-writable"])
def test_an_access_log_that_cannot_be_opened_is_named(tmp_path: Path, target: str) -> None:
    """QA: it was "cannot listen: [Errno 21] Is a directory" (exit 1)."""
    path = small_config(tmp_path)
    path.write_text(path.read_text().replace('access_log: "off"', f'access_log: "{target.format(tmp=tmp_path)}"'))
    result = cli("run", "-c", str(path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("splitproxy: access_log: cannot open"), result.stderr
    assert "listen" not in result.stderr


def test_run_refuses_a_bad_config_without_starting(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = cli("run", "-c", str(path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 4, lines
    assert all(PROBLEM_RE.fullmatch(line) for line in lines), lines
    assert "listening" not in result.stderr
    assert result.stdout == ""


def test_run_refuses_a_damaged_state_database_by_name(tmp_path: Path) -> None:
    """QA: a database damaged past its header (a page overwritten) was a traceback, exit 1;
    one that is not SQLite at all was already refused by name, exit 2."""
    path = small_config(tmp_path)
    store = Store(tmp_path / "state.db")
    store.record("main", {}, {"only": 1.0}, actor="config", reason="start-up", kind="initial")
    store.close()
    db = tmp_path / "state.db"
    data = bytearray(db.read_bytes())
    assert len(data) > 8192
    data[4096:8192] = bytes(range(256)) * 16  # the second page: the tables' contents
    db.write_bytes(bytes(data))
    result = cli("run", "-c", str(path))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"splitproxy: {db}: cannot "), line
    assert "malformed" in line, line


@pytest.mark.parametrize("taken", ["listen", "admin"])
def test_run_on_a_taken_port_says_so_in_one_line(tmp_path: Path, taken: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        path = small_config(tmp_path, **{taken: f"127.0.0.1:{port}"})
        result = cli("run", "-c", str(path))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert "cannot listen" in line, line
    assert str(port) in line, line
    # QA: a start that failed had already recorded its weights in the history (and the
    # file's weights as last applied), as if it had run.
    store = Store(tmp_path / "state.db")
    try:
        assert store.history("main") == []
        assert store.config_weights() == {}
    finally:
        store.close()


# ---- processes that keep running -------------------------------------------------------------


class Running:
    """A long-running command; its stdout and stderr lines are collected as they come, and
    waiting for one is waiting on an event."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = asyncio.Event()
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._readers = asyncio.gather(self._read(proc.stdout, self.out), self._read(proc.stderr, self.err))

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> Running:
        proc = await asyncio.create_subprocess_exec(
            SPLITPROXY,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(proc)

    async def _read(self, stream: asyncio.StreamReader, into: list[str]) -> None:
        async for raw in stream:
            into.append(raw.decode(errors="replace").rstrip())
            self._changed.set()
        self._changed.set()

    async def wait_for(self, stream: Literal["out", "err"], text: str, *, within: float = 20) -> str:
        """The first line of ``stream`` that contains ``text``."""
        lines = self.out if stream == "out" else self.err
        try:
            async with asyncio.timeout(within):
                while True:
                    for line in lines:
                        if text in line:
                            return line
                    if self._readers.done():
                        raise AssertionError(f"process ended without {text!r}: {self.out} {self.err}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {text!r} within {within}s: {self.out} {self.err}") from None

    async def exited(self, *, within: float = 20) -> int:
        """The exit code, once every line has been read."""
        async with asyncio.timeout(within):
            code = await self.proc.wait()
            await self._readers
        return code

    async def stopped(self, sig: int, *, within: float = 15) -> int:
        """Send ``sig`` and return the exit code."""
        self.proc.send_signal(sig)
        return await self.exited(within=within)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await self._readers


@pytest.fixture
async def running() -> AsyncIterator[list[Running]]:
    """Processes to kill at the end if a test did not stop them."""
    procs: list[Running] = []
    yield procs
    for p in procs:
        await p.kill()


# ---- demo ------------------------------------------------------------------------------------


@dataclass
class Answer:
    version: str
    sticky_cookie: str | None


async def get(session: aiohttp.ClientSession, url: str, **headers: str) -> Answer:
    async with session.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        json.loads(await resp.read())  # the demo API answers JSON
        cookie = resp.cookies.get("sp_demo")
        return Answer(resp.headers["X-Demo-Version"], cookie.value if cookie else None)


async def test_demo_serves_both_versions_with_overrides_and_stickiness(tmp_path: Path, running: list[Running]) -> None:
    port, admin_port = free_ports(2)
    env = {**os.environ, "SPLITPROXY_DEMO_STATE": str(tmp_path)}
    demo = await Running.start(
        "demo", "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}", env=env
    )
    running.append(demo)
    await demo.wait_for("err", "listening:")
    proxy_line = await demo.wait_for("out", "proxy:")
    admin_line = await demo.wait_for("out", "admin:")
    proxy_url = re.search(r"(http://\S+)/products", proxy_line)
    admin_url = re.search(r"(http://\S+)/healthz", admin_line)
    assert proxy_url, demo.out
    assert admin_url, demo.out
    assert proxy_url[1] == f"http://127.0.0.1:{port}"
    assert admin_url[1] == f"http://127.0.0.1:{admin_port}"
    products = proxy_url[1] + "/products"

    # Cookies by hand: each request says exactly which cookie it presents.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        first = await get(session, products)
        assert first.version in {"v1", "v2"}
        assert first.sticky_cookie, "no Set-Cookie: sp_demo on a first visit"
        again = [await get(session, products, Cookie=f"sp_demo={first.sticky_cookie}") for _ in range(20)]
        assert {a.version for a in again} == {first.version}

        canary = [await get(session, products, **{"X-Canary": "always"}) for _ in range(10)]
        assert {a.version for a in canary} == {"v2"}

        # 90 % v1: twenty fresh visitors all on v2 has a chance of 1e-20.
        fresh = [await get(session, products) for _ in range(20)]
        assert "v1" in {a.version for a in fresh}

        async with session.get(admin_url[1] + "/healthz") as resp:
            assert resp.status == 200

    assert await demo.stopped(signal.SIGINT) == 0
    assert not any("Traceback" in line for line in demo.err), demo.err


async def test_demo_prints_the_bound_ports(tmp_path: Path, running: list[Running]) -> None:
    env = {**os.environ, "SPLITPROXY_DEMO_STATE": str(tmp_path)}
    demo = await Running.start("demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", env=env)
    running.append(demo)
    listening = await demo.wait_for("err", "listening:")
    m = re.search(r"proxy on \S+:(\d+), admin on \S+:(\d+)", listening)
    assert m, listening
    proxy_line = await demo.wait_for("out", "proxy:")
    admin_line = await demo.wait_for("out", "admin:")
    assert f"http://127.0.0.1:{m[1]}/products" in proxy_line
    assert f"http://127.0.0.1:{m[2]}/healthz" in admin_line


async def test_demo_banner_says_the_weights_in_force_and_its_temporary_state_goes(
    tmp_path: Path, running: list[Running]
) -> None:
    """QA (fifth round): the banner said "90 % v1, 10 % v2" whatever a kept state database
    held, and each run left its temporary state directory behind."""
    kept = tmp_path / "kept"
    kept.mkdir()
    env = {**os.environ, "SPLITPROXY_DEMO_STATE": str(kept)}
    demo = await Running.start("demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", env=env)
    running.append(demo)
    assert "(90 % v1, 10 % v2, sticky" in await demo.wait_for("out", "proxy:")
    admin = re.search(r"(http://\S+)/healthz", await demo.wait_for("out", "admin:"))
    assert admin, demo.out
    async with aiohttp.ClientSession() as session:
        change = {"weights": {"v1": 70, "v2": 30}}
        async with session.put(admin[1] + "/api/v1/routes/demo/weights", json=change) as resp:
            assert resp.status == 200, await resp.text()
    assert await demo.stopped(signal.SIGINT) == 0
    again = await Running.start("demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", env=env)
    running.append(again)
    assert "(70 % v1, 30 % v2, sticky" in await again.wait_for("out", "proxy:")
    assert await again.stopped(signal.SIGINT) == 0
    assert (kept / "state.db").exists()  # a directory the user named stays

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "SPLITPROXY_DEMO_STATE"} | {"TMPDIR": str(scratch)}
    temporary = await Running.start("demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", env=env)
    running.append(temporary)
    state = re.search(r"state:\s+(\S+)", await temporary.wait_for("out", "state:"))
    assert state, temporary.out
    assert Path(state[1]).parent.parent == scratch
    assert await temporary.stopped(signal.SIGINT) == 0
    assert os.listdir(scratch) == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--listen", "127.0.0.1:1", "--admin-listen", "127.0.0.1:1"], "--admin-listen: uses the same port as listen"),
        (["--listen", "nonsense"], "--listen: must be host:port"),
    ],
    ids=["same-port", "not-an-address"],
)
async def test_demo_with_bad_addresses_says_so_in_one_line(
    tmp_path: Path, running: list[Running], args: list[str], says: str
) -> None:
    """QA (fifth round): a Python traceback, exit 1."""
    env = {k: v for k, v in os.environ.items() if k != "SPLITPROXY_DEMO_STATE"} | {"TMPDIR": str(tmp_path)}
    demo = await Running.start("demo", *args, env=env)
    running.append(demo)
    assert await demo.exited(within=30) == 2
    assert len(demo.err) == 1, demo.err
    assert demo.err[0].startswith("splitproxy demo: " + says), demo.err
    assert "(line" not in demo.err[0]  # no file to have lines
    assert os.listdir(tmp_path) == []  # no state directory left behind


def run_args(tmp_path: Path) -> list[str]:
    return ["run", "-c", str(small_config(tmp_path))]


def demo_args(tmp_path: Path) -> list[str]:
    return ["demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]


@pytest.mark.parametrize(
    ("args", "sig"),
    [(run_args, signal.SIGTERM), (demo_args, signal.SIGINT), (demo_args, signal.SIGHUP)],
    ids=["run-SIGTERM", "demo-SIGINT", "demo-SIGHUP"],  # the demo's terminal closed (QA, eighth round)
)
async def test_a_signal_right_after_listening_stops_cleanly(
    tmp_path: Path, running: list[Running], args: Callable[[Path], list[str]], sig: int
) -> None:
    """A supervisor may signal as soon as the process says it is up: no default kill, no
    KeyboardInterrupt traceback. Three times, since a race shows only sometimes."""
    env = {**os.environ, "SPLITPROXY_DEMO_STATE": str(tmp_path)}
    for _ in range(3):
        proc = await Running.start(*args(tmp_path), env=env)
        running.append(proc)
        await proc.wait_for("err", "listening:")
        code = await proc.stopped(sig)
        assert not any("Traceback" in line for line in proc.err), proc.err
        assert code == 0


# ---- the container image ---------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    return instructions


def dockerfile_args(instruction: str) -> list[list[str]]:
    """The arguments of every ``instruction``: the JSON form as is, the shell form split."""
    found = []
    for word, rest in dockerfile_instructions():
        if word == instruction:
            found.append(json.loads(rest) if rest.startswith("[") else shlex.split(rest))
    return found


def dockerignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "!"))
    ]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch(p, pat) or fnmatch(p, pat.removeprefix("**/")) for p in prefixes for pat in patterns)


def test_docker_config_passes_check() -> None:
    result = cli("check", "-c", "config/docker.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == "config/docker.yaml: ok (1 route, 2 backends)\n"  # QA: it said "1 routes"


def test_dockerfile_copies_files_that_exist_and_are_not_ignored() -> None:
    copies = dockerfile_args("COPY")
    assert copies
    for args in copies:
        if any(a.startswith("--from=") for a in args):
            continue  # from an earlier build stage, not from the repository
        *sources, _dest = [a for a in args if not a.startswith("--")]  # drop --chown= and friends
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"


def test_dockerfile_agrees_with_its_config() -> None:
    config = load_file(DOCKER_CONFIG)
    [entrypoint] = dockerfile_args("ENTRYPOINT")
    [cmd] = dockerfile_args("CMD")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["splitproxy"]
    assert "splitproxy" in scripts

    # The config run reads is the one copied in.
    assert cmd[:2] == ["run", "-c"]
    copies = [[a for a in args if not a.startswith("--")] for args in dockerfile_args("COPY")]
    copied_to = {args[-1]: args[-2] for args in copies}
    assert copied_to.get(cmd[2]) == "config/docker.yaml"

    # Listeners reachable from outside the container, and exposed.
    assert config.listen.host == "0.0.0.0"
    assert config.admin.listen.host == "0.0.0.0"
    exposed = {int(p) for args in dockerfile_args("EXPOSE") for p in args}
    assert exposed == {config.listen.port, config.admin.listen.port}

    # The health check asks the admin listener.
    [healthcheck] = [rest for word, rest in dockerfile_instructions() if word == "HEALTHCHECK"]
    assert f"http://127.0.0.1:{config.admin.listen.port}/healthz" in healthcheck

    # State lives in the volume, and the process is not root.
    volumes = {v for args in dockerfile_args("VOLUME") for v in args}
    assert str(Path(config.state.path).parent) in volumes
    [user] = dockerfile_args("USER")
    assert user[0].split(":")[0] not in {"root", "0"}


def healthcheck_command(admin_port: int) -> list[str]:
    """The Dockerfile's HEALTHCHECK command, aimed at ``admin_port`` and this interpreter."""
    [healthcheck] = [rest for word, rest in dockerfile_instructions() if word == "HEALTHCHECK"]
    _, _, command = healthcheck.partition("CMD ")
    argv = json.loads(command)
    assert argv[0] == "python"
    return [sys.executable, *(a.replace(":9901/", f":{admin_port}/") for a in argv[1:])]


async def test_docker_config_runs_with_a_token_and_answers_the_healthcheck(
    tmp_path: Path, running: list[Running]
) -> None:
    """config/docker.yaml as the image runs it, on ports the OS picks instead of 8080/9901."""
    text = DOCKER_CONFIG.read_text()
    for old, new in [
        ('"0.0.0.0:8080"', '"0.0.0.0:0"'),
        ('"0.0.0.0:9901"', '"0.0.0.0:0"'),
        ("/var/lib/splitproxy/splitproxy.db", str(tmp_path / "state.db")),
    ]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "splitproxy.yaml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "SPLITPROXY_ADMIN_TOKEN"}

    # Admin off loopback and no token: refused, saying which variable to set.
    refused = await Running.start("run", "-c", str(path), env=env)
    running.append(refused)
    assert await refused.exited() == 2
    assert any("SPLITPROXY_ADMIN_TOKEN" in line for line in refused.err), refused.err
    assert not any("Traceback" in line for line in refused.err), refused.err

    proxy = await Running.start("run", "-c", str(path), env={**env, "SPLITPROXY_ADMIN_TOKEN": "s3cret"})
    running.append(proxy)
    listening = await proxy.wait_for("err", "listening:")
    m = re.search(r"admin on \S+:(\d+)", listening)
    assert m, listening
    check = await asyncio.create_subprocess_exec(*healthcheck_command(int(m[1])), stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(20):
        _, err = await check.communicate()
    assert check.returncode == 0, err.decode()
    assert await proxy.stopped(signal.SIGTERM) == 0
