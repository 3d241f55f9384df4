"""Benchmark harness: splitproxy against nginx and the bare upstream, on loopback.

`make bench`, or `.venv/bin/python bench/run.py --help`; bench/README.md explains the
method and every column. Stdlib only.

1. Start, on free 127.0.0.1 ports found at run time, with every file in a temp dir:
   - the upstream: nginx, 1 worker, a fixed 100-byte body (bench/upstream/nginx.conf);
   - the reference proxy: nginx, 1 worker, pooled keep-alive upstream connections
     (bench/nginx-proxy/nginx.conf), the floor: no access log, nothing added;
   - the same-job reference ("nginx:routing", unless --no-nginx-routing): the same nginx
     doing what splitproxy's `routing` scenario does: a 90/10 split over two upstream groups,
     a header override, X-Forwarded-* headers, a buffered JSON access log
     (bench/nginx-routing/nginx.conf);
   - one `splitproxy run -c <generated yaml>` per --scenario (see SCENARIOS).
   Each is ready when its port accepts a connection (bounded deadline, polled) and one
   `GET /` answers 200 with the upstream's body. A splitproxy that does not come up is
   skipped with the reason and the tail of its log; the rest of the run goes on.
2. Measure in interleaved rounds: every target once per round, the order rotated from round
   to round, so that the drift of this noisy shared VM hits every target alike.
   - throughput: `wrk -t1 -c50 --latency`: req/s, p50, p99, and the CPU time of the server's
     process tree (utime+stime from /proc) over the run divided by the requests it served;
   - latency at one connection: `wrk -t1 -c1 --latency` p50, reported as added over direct;
   - with a JSON scenario (`json`, `shadow100-json`), the cost of diffing their 64 KiB answer
     pair (`bench_diff.py --pair-cost`, placed like the -c1 runs), printed against the `json`
     scenario's proxied request for the live answer, round by round.
3. Run Locust (bench/locustfile.py) once per proxy at a fixed, moderate, paced load.
4. Print one table of medians over rounds; write it to bench/results/<UTC time>-<scenario>.md
   with the raw per-round figures in a .json beside it.

Every child runs in its own process group and is ended on exit: normal, exception, Ctrl-C
or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
UPSTREAM_BODY_SIZE = 100
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- Scenarios ------------------------------------------------------------------------------
# A scenario is a named splitproxy config variant: a function from the run's Env to a
# Scenario (the YAML text, extra `splitproxy run` arguments, how to place it on CPUs).
# To add one, write the function and add it to SCENARIOS; `--scenario NAME` selects it.


@dataclass(frozen=True)
class Env:
    """What a scenario's config may refer to. `tmp` is this splitproxy's own directory."""

    tmp: Path
    upstream: str  # "http://127.0.0.1:PORT", the bench upstream (nginx, 100-byte body)
    listen: str  # splitproxy's data listener, "127.0.0.1:PORT"
    admin_listen: str  # splitproxy's admin listener, "127.0.0.1:PORT"
    # "http://127.0.0.1:PORT" of a socket that listens and never answers: a shadow that
    # hangs (the kernel completes connections into the backlog; nothing is ever read).
    blackhole: str = ""
    # bench/bad_shadows.py, started only for the scenarios that name them: an upstream that
    # resets mid-body, and one whose answers are 50 MB.
    reset: str = ""
    huge: str = ""


@dataclass(frozen=True)
class Scenario:
    yaml: str
    args: tuple[str, ...] = ()  # appended to `splitproxy run -c FILE`, e.g. ("--workers", "2")
    # True: during throughput runs the proxy has one CPU to itself and wrk and the upstream
    # share the other. False (multi-worker scenarios): everything may run on every CPU.
    pinned: bool = True
    # What wrk requests: "/" is the upstream's 100-byte answer; JSON_PATH its 64 KiB JSON one.
    path: str = "/"


def _block(text: str, indent: int) -> str:
    return textwrap.indent(textwrap.dedent(text).strip("\n"), " " * indent)


def splitproxy_config(env: Env, *, top: str = "", backends: str = "", route: str = "") -> str:
    """The "routing" config. `top`, `backends` and `route` add YAML lines at that level.

    One route for every path with two backends on the same upstream (stable 90, canary 10),
    one header override (never matched by the load: its check is the cost measured) and an
    access log written to a file.
    """
    q = json.dumps  # a JSON string is a valid YAML double-quoted scalar
    upstreams = q([env.upstream])
    lines = [
        f"listen: {q(env.listen)}",
        f"admin: {{listen: {q(env.admin_listen)}}}",
        f"state: {{path: {q(str(env.tmp / 'state.db'))}}}",
        f"access_log: {q(str(env.tmp / 'access.log'))}",
        _block(top, 0),
        "routes:",
        "  - name: bench",
        "    match: {path_prefix: /}",
        "    backends:",
        f"      stable: {{upstreams: {upstreams}, weight: 90}}",
        f"      canary: {{upstreams: {upstreams}, weight: 10}}",
        _block(backends, 6),
        "    overrides:",
        "      - {header: X-Canary, value: always, backend: canary}",
        _block(route, 4),
    ]
    return "".join(line + "\n" for line in lines if line)


def routing(env: Env) -> Scenario:
    return Scenario(splitproxy_config(env))


def sticky(env: Env) -> Scenario:
    """Sticky by client IP: every request hashes its key (weighted rendezvous, 2 backends)."""
    return Scenario(splitproxy_config(env, route="sticky: {by: ip}"))


def shadow_to(target: str, *, noise: int = 0, timeout: str = "5s") -> Callable[[Env], Scenario]:
    """100 % of GETs mirrored to a `candidate` backend (`target`: one of BAD_SHADOWS, or
    "upstream", or "blackhole"); the rest of `shadow` at its defaults."""

    def make(env: Env) -> Scenario:
        url = {
            "upstream": env.upstream,
            "blackhole": env.blackhole,
            "dead": f"http://127.0.0.1:{dead_port()}",
            "reset": env.reset,
            "huge": env.huge,
        }[target]
        return Scenario(
            splitproxy_config(
                env,
                backends=f"candidate: {{upstreams: [{json.dumps(url)}], weight: 0}}",
                route=f"shadow: {{backend: candidate, percent: 100, noise: {{percent: {noise}}}, timeout: {timeout}}}",
            )
        )

    return make


# The scenarios whose candidate is bench/bad_shadows.py (started only when one is measured).
BAD_SHADOWS = {"shadow-reset", "shadow-huge"}


# The upstream's JSON answer (bench/upstream/nginx.conf): one of 8 answers of bench_diff's
# 64 KiB document (bench_diff.answers: its own timestamp and request id, three records' stock
# changed), picked by the request's X-Request-Id, to live requests; to mirrored ones
# (X-Shadow-Request: 1, the live request's X-Request-Id) the same answer with a handful of
# changes (two timestamps/ids, two prices, a field gone, one added), so every mirror is
# diffed, and the live answers of the endpoint vary from request to request as real ones do.
JSON_PATH = "/bench.json"
JSON_ANSWERS = 8


def json_answers(directory: Path) -> int:
    """Write the upstream's live-N.json and shadow-N.json; the size of the live ones."""
    from bench_diff import answers, document, handful_of_differences  # bench/ is sys.path[0]

    directory.mkdir()
    sizes = set()
    for i, answer in enumerate(answers(document(64 << 10), JSON_ANSWERS)):
        live = json.dumps(answer).encode()
        sizes.add(len(live))
        (directory / f"live-{i}.json").write_bytes(live)
        (directory / f"shadow-{i}.json").write_bytes(json.dumps(handful_of_differences(answer)).encode())
    (size,) = sizes  # all one length: check_get knows what to expect
    return size


def on_json(make: Callable[[Env], Scenario]) -> Callable[[Env], Scenario]:
    """The scenario `make`, measured with requests for the 64 KiB JSON answer."""
    return lambda env: dataclasses.replace(make(env), path=JSON_PATH)


SCENARIOS: dict[str, Callable[[Env], Scenario]] = {
    "routing": routing,
    "sticky": sticky,
    # Multi-process: nothing pinned, so compare workers2 with workers1 of the same run.
    "workers1": lambda env: Scenario(splitproxy_config(env), pinned=False),
    "workers2": lambda env: Scenario(splitproxy_config(env), ("--workers", "2"), pinned=False),
    # Shadowing: every GET also goes to a candidate on the same upstream (the physical limit
    # is about half of shadow-off: each request costs two upstream calls) ...
    "shadow100": shadow_to("upstream"),
    # ... or to a candidate that never answers, or is down: the live latency must not move.
    "shadow-hang": shadow_to("blackhole", timeout="1s"),
    "shadow-dead": shadow_to("dead"),
    # ... or to one that resets every answer mid-body, or answers 50 MB (bench/bad_shadows.py).
    "shadow-reset": shadow_to("reset"),
    "shadow-huge": shadow_to("huge"),
    # The same with 64 KiB JSON answers that differ: what comparing them costs. Compare the
    # two with each other (the ratios to nginx are for the 100-byte answer).
    "json": on_json(routing),
    "shadow100-json": on_json(shadow_to("upstream")),
    # Active health checks on every instance (every 1 s) and outlier detection: the hot
    # path must not pay for them.
    "health": lambda env: Scenario(
        splitproxy_config(env, route="health_check: {path: /, interval: 1s, timeout: 500ms}")
    ),
}


# --- Child processes ------------------------------------------------------------------------


class StartError(Exception):
    """A server did not come up; the message says why."""


class Children:
    """Child processes, each the leader of its own process group, all ended by close().

    A group of its own keeps Ctrl-C in the terminal away from the children (we end them in
    order) and lets one signal reach a server and everything it forked (nginx workers,
    splitproxy workers).
    """

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, argv: Sequence[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], log: Path, timeout: float) -> int:
        """Run to completion, bounded by `timeout` seconds; output goes to `log`."""
        proc = self.start(argv, log)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise StartError(f"{argv[0]} still running after {timeout:g} s; stopped") from None
        finally:
            self.stop(proc)

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Workers that outlived their leader (a master killed before it could stop them)
        # still carry its group id, which the kernel does not reuse while any member lives.
        if _group_members(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc in self._procs:
            self._procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(self._procs[:]):
            self.stop(proc)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --- /proc: CPU time and placement ----------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from field 3 (state) on; the command name may hold spaces."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _all_stats() -> Iterator[tuple[int, list[str]]]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            yield int(entry.name), fields


def _group_members(pgid: int) -> list[int]:
    return [pid for pid, fields in _all_stats() if int(fields[2]) == pgid]


def process_tree(root: int) -> list[int]:
    """`root` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for pid, fields in _all_stats():
        children.setdefault(int(fields[1]), []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    """CPU time (user + system) used so far by `root`'s process tree, threads included.

    utime+stime of every live process, plus cutime+cstime: the time of children already
    exited and reaped, which the kernel adds to their parent, so none is lost or counted
    twice. The resolution is one clock tick (10 ms), hence long runs.
    """
    ticks = 0
    for pid in process_tree(root):
        fields = _stat(pid)
        if fields is not None:
            # Fields 14-17: utime, stime, cutime, cstime.
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLK_TCK


def pin(root: int, cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of `root`'s process tree."""
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cpus)


@dataclass(frozen=True)
class Placement:
    """Which CPUs the server under test, the upstream and the load generator get."""

    server: set[int] | None  # None: leave the affinity alone
    upstream: set[int] | None
    load: set[int] | None


class Cpus:
    """The CPU layout (README, "Method"), or none at all with --no-pin or one CPU.

    Throughput: the server under test alone on CPU A; wrk and the upstream on CPU B (for
    direct, the upstream is the server under test). Unpinned scenarios: all on all CPUs.
    Latency at one connection: everything on CPU A, since waking an idle vCPU costs ~60 µs
    per hop on this VM (shared/PERF-NOTES.md), more than the overhead being measured.
    """

    def __init__(self, enabled: bool) -> None:
        available = sorted(os.sched_getaffinity(0))
        self.all = set(available)
        self.enabled = enabled and len(available) >= 2 and shutil.which("taskset") is not None
        self.a, self.b = ({available[0]}, {available[1]}) if self.enabled else (self.all, self.all)

    def describe(self) -> str:
        if not self.enabled:
            return "not pinned"
        a, b = min(self.a), min(self.b)
        return (
            f"throughput: server under test on CPU {a}, wrk/Locust and the upstream on CPU {b}"
            f" (unpinned scenarios: every CPU); latency at 1 connection: all on CPU {a}"
        )

    def place(self, kind: str, target: Target, upstream_pid: int) -> Placement:
        if not self.enabled:
            return Placement(None, None, None)
        if kind == "latency":
            placement = Placement(self.a, self.a, self.a)
        elif target.pinned:
            placement = Placement(self.a, self.b, self.b)
        else:
            placement = Placement(self.all, self.all, self.all)
        if target.proc.pid != upstream_pid and placement.upstream is not None:
            pin(upstream_pid, placement.upstream)
        if placement.server is not None:
            pin(target.proc.pid, placement.server)
        return placement

    @staticmethod
    def prefix(cpus: set[int] | None) -> list[str]:
        if cpus is None:
            return []
        return ["taskset", "-c", ",".join(str(cpu) for cpu in sorted(cpus))]


# --- Servers --------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    kind: str  # "direct", "nginx" (the floor), "nginx-routing" (the same job) or "splitproxy"
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    pinned: bool = True
    path: str = "/"
    scenario: str | None = None
    args: tuple[str, ...] = ()
    failed: str | None = None  # why it stopped being measured, if it did
    throughput: list[dict[str, Any]] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    locust: dict[str, Any] | None = None


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now; all held open together so that they differ."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], deadline_s: float) -> None:
    """Return once 127.0.0.1:`port` accepts a connection; StartError on exit or deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        if proc.poll() is not None:
            raise StartError(f"exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise StartError(f"not accepting on port {port} after {deadline_s:g} s") from None
        time.sleep(0.02)  # the poll interval; readiness itself is the accepted connect


def check_get(port: int, path: str = "/", size: int = UPSTREAM_BODY_SIZE) -> None:
    """One `GET path` must answer 200 with the upstream's body of that size."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise StartError(f"GET {path} failed: {exc!r}") from None
    finally:
        conn.close()
    if response.status != 200 or len(body) != size:
        raise StartError(
            f"GET {path} answered {response.status} with {len(body)} bytes (want 200 with {size}): {body[:200]!r}"
        )


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty log)"


def start_nginx(
    children: Children, nginx: str, name: str, template: Path, tmp: Path, **values: object
) -> subprocess.Popen[bytes]:
    """Run nginx in the foreground from `template` with its @NAME@ placeholders filled."""
    values = {"DIR": tmp, "USER": "user root;" if os.geteuid() == 0 else "", **values}
    conf = template.read_text()
    for key, value in values.items():
        conf = conf.replace(f"@{key}@", str(value))
    if left := re.findall(r"@[A-Z_]+@", conf):
        raise StartError(f"{template}: placeholders without a value: {sorted(set(left))}")
    conf_path = tmp / f"{name}.conf"
    conf_path.write_text(conf)
    (tmp / f"{name}-tmp").mkdir()
    return children.start(
        [nginx, "-p", f"{tmp}/", "-c", str(conf_path), "-e", str(tmp / f"{name}-error.log")],
        log=tmp / f"{name}.log",
    )


_BLACKHOLE: list[socket.socket] = []


def dead_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def blackhole_port() -> int:
    """A listening socket nobody accepts from (kept open for the run)."""
    if not _BLACKHOLE:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(4096)
        _BLACKHOLE.append(s)
    return int(_BLACKHOLE[0].getsockname()[1])


def start_bad_shadows(children: Children, tmp: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """bench/bad_shadows.py on two free ports (reset, huge), once it accepts on both."""
    reset_port, huge_port = free_ports(2)
    proc = children.start(
        [sys.executable, str(BENCH / "bad_shadows.py"), str(reset_port), str(huge_port)], log=tmp / "bad-shadows.log"
    )
    for port in (reset_port, huge_port):
        try:
            wait_for_port(port, proc, deadline_s=10)
        except StartError as exc:
            raise StartError(f"bench/bad_shadows.py: {exc}; its log:\n{tail(tmp / 'bad-shadows.log')}") from None
    return proc, reset_port, huge_port


def start_splitproxy(  # noqa: PLR0917  # one call site
    children: Children,
    command: str | None,
    name: str,
    tmp: Path,
    upstream_port: int,
    json_size: int,
    bad_shadows: tuple[int, int] = (0, 0),
) -> Target:
    """Start one splitproxy for scenario `name`; StartError if it does not come up."""
    if command is None:
        raise StartError("no `splitproxy` command (install the project into the venv)")
    port, admin_port = free_ports(2)
    own = tmp / f"splitproxy-{name}"
    own.mkdir()
    scenario = SCENARIOS[name](
        Env(
            tmp=own,
            upstream=f"http://127.0.0.1:{upstream_port}",
            listen=f"127.0.0.1:{port}",
            admin_listen=f"127.0.0.1:{admin_port}",
            blackhole=f"http://127.0.0.1:{blackhole_port()}",
            reset=f"http://127.0.0.1:{bad_shadows[0]}",
            huge=f"http://127.0.0.1:{bad_shadows[1]}",
        )
    )
    config = own / "splitproxy.yaml"
    config.write_text(scenario.yaml)
    log = own / "splitproxy.log"
    proc = children.start([command, "run", "-c", str(config), *scenario.args], log=log, cwd=own)
    target = Target(
        name=f"splitproxy:{name}",
        kind="splitproxy",
        port=port,
        proc=proc,
        log=log,
        pinned=scenario.pinned,
        path=scenario.path,
        scenario=name,
        args=scenario.args,
    )
    try:
        wait_for_port(port, proc, deadline_s=15)
        check_get(port, scenario.path, json_size if scenario.path == JSON_PATH else UPSTREAM_BODY_SIZE)
    except StartError as exc:
        children.stop(proc)
        raise StartError(f"{exc}; config {config}; last lines of its log:\n{tail(log)}") from None
    return target


# --- Load generators ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    nginx: str | None
    wrk: str | None
    locust: str | None
    splitproxy: str | None

    @classmethod
    def find(cls, splitproxy: str | None) -> Tools:
        venv_bin = Path(sys.executable).parent  # not resolved: the venv's bin/, not the base

        def venv_or_path(name: str) -> str | None:
            candidate = venv_bin / name
            return str(candidate) if candidate.exists() else shutil.which(name)

        return cls(
            nginx=shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None),
            wrk=shutil.which("wrk"),
            locust=venv_or_path("locust"),
            # A path is made absolute: the servers run with the temp dir as their cwd.
            splitproxy=(str(Path(splitproxy).absolute()) if "/" in splitproxy else splitproxy)
            if splitproxy
            else venv_or_path("splitproxy"),
        )


def run_wrk(
    children: Children,
    wrk: str,
    port: int,
    *,
    connections: int,
    duration: float,
    cpus: set[int] | None,
    log: Path,
    path: str = "/",
) -> dict[str, Any]:
    argv = [
        *Cpus.prefix(cpus),
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--latency",
        "-s",
        str(BENCH / "wrk_report.lua"),
        f"http://127.0.0.1:{port}{path}",
    ]
    log.write_text("")
    status = children.run(argv, log, timeout=duration + 30)
    output = log.read_text(errors="replace")
    match = re.search(r"^WRK_JSON (.*)$", output, re.MULTILINE)
    if status != 0 or match is None:
        raise StartError(f"wrk exited {status} without a report:\n{output[-2000:]}")
    report: dict[str, Any] = json.loads(match.group(1))
    report["errors_total"] = sum(report["errors"].values())
    report["rps"] = report["requests"] / (report["duration_us"] / 1e6)
    return report


def run_locust(
    children: Children,
    locust: str,
    port: int,
    *,
    args: argparse.Namespace,
    cpus: set[int] | None,
    out: Path,
) -> dict[str, Any]:
    users = args.locust_users
    prefix = out / "locust"
    argv = [
        *Cpus.prefix(cpus),
        locust,
        "-f",
        str(BENCH / "locustfile.py"),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{args.locust_duration:g}s",
        "--host",
        f"http://127.0.0.1:{port}",
        "--rps-per-user",
        f"{args.locust_rate / users:g}",
        "--csv",
        str(prefix),
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    log = out / "locust.log"
    # Locust exits 1 when a request failed; the failures are read from its CSV instead.
    children.run(argv, log, timeout=args.locust_duration + 60)
    try:
        with open(f"{prefix}_stats.csv", newline="") as file:
            row = next(r for r in csv.DictReader(file) if r["Name"] == "Aggregated")
    except (OSError, StopIteration):
        raise StartError(f"locust wrote no stats; last lines of its log:\n{tail(log)}") from None
    return {
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "rps": float(row["Requests/s"]),
        # Locust keeps response times in whole milliseconds below 100 ms.
        "p50_ms": float(row["50%"]),
        "p99_ms": float(row["99%"]),
        "mean_ms": float(row["Average Response Time"]),
    }


# --- Measuring ------------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    tools: Tools
    children: Children
    cpus: Cpus
    tmp: Path
    upstream: subprocess.Popen[bytes]
    targets: list[Target]
    notes: list[str] = field(default_factory=list)
    # bench_diff.py --pair-cost per round, beside the 1-connection runs of a JSON scenario
    diff_cost: list[dict[str, Any]] = field(default_factory=list)

    def alive(self, target: Target) -> bool:
        if target.failed is None and target.proc.poll() is not None:
            status = target.proc.returncode
            self.fail(target, f"exited with status {status}; log:\n{tail(target.log)}")
        return target.failed is None

    def fail(self, target: Target, reason: str) -> None:
        target.failed = reason
        self.notes.append(f"{target.name}: not measured further: {reason}")
        progress(f"{target.name}: not measured further: {reason}")

    def wrk_sample(self, target: Target, kind: str, connections: int, duration: float) -> dict[str, Any] | None:
        """One wrk run against `target`, with its CPU time; None if it failed."""
        if not self.alive(target):
            return None
        placement = self.cpus.place(kind, target, self.upstream.pid)
        is_direct = target.proc.pid == self.upstream.pid
        server_before = cpu_seconds(target.proc.pid)
        upstream_before = cpu_seconds(self.upstream.pid)
        assert self.tools.wrk is not None
        try:
            report = run_wrk(
                self.children,
                self.tools.wrk,
                target.port,
                connections=connections,
                duration=duration,
                cpus=placement.load,
                log=self.tmp / "wrk.log",
                path=target.path,
            )
        except StartError as exc:
            self.fail(target, str(exc))
            return None
        requests = max(report["requests"], 1)
        report["cpu_us_per_req"] = (cpu_seconds(target.proc.pid) - server_before) / requests * 1e6
        report["upstream_cpu_us_per_req"] = (
            None if is_direct else (cpu_seconds(self.upstream.pid) - upstream_before) / requests * 1e6
        )
        return report

    def measure(self) -> None:
        if self.tools.wrk is None:
            self.notes.append("wrk not installed (scripts/install-bench-deps.sh): no wrk figures")
        else:
            self.measure_wrk()
        if self.args.locust_duration <= 0:
            return
        if self.tools.locust is None:
            self.notes.append("locust not found in the venv or on PATH: no Locust figures")
            return
        for target in self.targets:
            if target.path != "/":
                self.notes.append(f"{target.name}: no Locust figures (bench/locustfile.py requests /)")
            elif target.kind != "direct" and self.alive(target):
                self.measure_locust(target)

    def measure_wrk(self) -> None:
        args, targets = self.args, self.targets
        if args.warmup > 0:
            for target in targets:
                self.wrk_sample(target, "throughput", args.connections, args.warmup)
        for round_ in range(args.rounds):
            shift = round_ % len(targets)
            order = targets[shift:] + targets[:shift]
            where = f"round {round_ + 1}/{args.rounds}"
            for target in order:
                sample = self.wrk_sample(target, "throughput", args.connections, args.duration)
                if sample is not None:
                    sample["round"] = round_
                    target.throughput.append(sample)
                    latency = sample["latency_us"]
                    errors = sample["errors_total"]
                    progress(
                        f"{where}  {target.name:<20} {sample['rps']:>9,.0f} req/s"
                        f"  p50 {latency['p50']:>6} µs  p99 {latency['p99']:>6} µs"
                        f"  {sample['cpu_us_per_req']:5.1f} CPU µs/req" + (f"  {errors} errors" if errors else "")
                    )
            for target in order:
                sample = self.wrk_sample(target, "latency", 1, args.latency_duration)
                if sample is not None:
                    sample["round"] = round_
                    target.latency.append(sample)
                    p50 = sample["latency_us"]["p50"]
                    progress(f"{where}  {target.name:<20} 1 connection: p50 {p50} µs")
            if any(t.path == JSON_PATH for t in targets):
                self.diff_sample(round_, where)

    def diff_sample(self, round_: int, where: str) -> None:
        """What diffing the JSON scenarios' answer pair costs, measured in the same round as
        the 1-connection runs and placed like them (all on CPU A): ``compare()`` of the
        same two bodies by bench_diff.py, in this interpreter (the build being measured)."""
        log = self.tmp / "bench_diff.log"
        argv = [
            *Cpus.prefix(self.cpus.a if self.cpus.enabled else None),
            sys.executable,
            str(BENCH / "bench_diff.py"),
            "--pair-cost",
            "--seconds",
            f"{self.args.latency_duration:g}",
        ]
        log.write_text("")
        try:
            status = self.children.run(argv, log, timeout=self.args.latency_duration + 60)
        except StartError as exc:
            status, output = -1, str(exc)
        else:
            output = log.read_text(errors="replace")
        lines = output.strip().splitlines()
        if status != 0 or not lines or not lines[-1].startswith("{"):
            self.notes.append(f"bench_diff.py --pair-cost failed ({status}):\n{output[-2000:]}")
            return
        sample: dict[str, Any] = json.loads(lines[-1])
        sample["round"] = round_
        self.diff_cost.append(sample)
        progress(
            f"{where}  diffing the 64 KiB JSON pair: {sample['us']} µs a compare(),"
            f" {sample['kept_us']} µs built on the endpoint's kept answer,"
            f" {sample.get('parse_us')} µs to parse the live body alone"
        )

    def measure_locust(self, target: Target) -> None:
        assert self.tools.locust is not None
        placement = self.cpus.place("throughput", target, self.upstream.pid)
        out = self.tmp / f"locust-{target.name.replace(':', '-')}"
        out.mkdir()
        before = cpu_seconds(target.proc.pid)
        try:
            result = run_locust(
                self.children,
                self.tools.locust,
                target.port,
                args=self.args,
                cpus=placement.load,
                out=out,
            )
        except StartError as exc:
            self.notes.append(f"{target.name}: no Locust figures: {exc}")
            return
        requests = max(result["requests"], 1)
        result["cpu_us_per_req"] = (cpu_seconds(target.proc.pid) - before) / requests * 1e6
        target.locust = result
        progress(
            f"locust  {target.name:<20} {result['rps']:>9,.0f} req/s"
            f"  p50 {result['p50_ms']:g} ms  p99 {result['p99_ms']:g} ms"
            f"  {result['failures']} failures"
        )


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- Results --------------------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _paired(
    target: list[dict[str, Any]], base: list[dict[str, Any]], combine: Callable[[Any, Any], float]
) -> float | None:
    """Median over rounds of combine(target's sample, base's sample of the same round)."""
    by_round = {sample["round"]: sample for sample in base}
    return _median([combine(s, by_round[s["round"]]) for s in target if s["round"] in by_round])


def diff_cost_note(targets: list[Target], diff_cost: list[dict[str, Any]]) -> str | None:
    """The cost of diffing the JSON pair against the time of a proxied request for its live
    answer (p50 at one connection, scenario `json`), paired by round."""
    if not diff_cost:
        return None
    proxied = next((t for t in targets if t.scenario == "json" and t.latency), None)
    us = _median([s["us"] for s in diff_cost])
    text = f"diffing the 64 KiB JSON pair (compare(), bench_diff.py --pair-cost, placed like -c1): {us:.1f} µs"
    if proxied is None:
        return text + " (no `json` scenario measured at one connection to compare it with)"
    kept_us = _median([s.get("kept_us") for s in diff_cost])
    if kept_us is not None:
        text += f", {kept_us:.1f} µs as the endpoint's answers in turn, built on the kept one"
    parse_us = _median([s.get("parse_us") for s in diff_cost])
    if parse_us is not None:
        text += f", {parse_us:.1f} µs to parse the live body alone (the floor under a first-seen pair)"
    p50 = _median([s["latency_us"]["p50"] for s in proxied.latency])
    text += f"; a proxied request for the live answer ({proxied.name}, p50 at 1 connection): {p50:.0f} µs"
    for name, what in (("us", "diff"), ("kept_us", "diff built on the kept answer"), ("parse_us", "parse alone")):
        by_round = {s["round"]: s[name] for s in diff_cost if s.get(name) is not None}
        ratios = [by_round[s["round"]] / s["latency_us"]["p50"] for s in proxied.latency if s["round"] in by_round]
        if not ratios:
            text += f"; {what}: no round with both"
            continue
        per_round = ", ".join(f"{r:.2f}" for r in ratios)
        text += f"; {what} / proxied request, paired by round: median {_median(ratios):.2f} ({per_round})"
    return text


def summarize(targets: list[Target]) -> list[dict[str, Any]]:
    """Medians over rounds; ratio and added latency are paired with the same round's base."""
    by_kind = {t.kind: t for t in targets if t.kind in ("direct", "nginx", "nginx-routing")}
    nginx, direct = by_kind.get("nginx"), by_kind.get("direct")
    same_job = by_kind.get("nginx-routing")
    rows = []
    for target in targets:
        thr, lat = target.throughput, target.latency
        rows.append(
            {
                "target": target.name,
                "source": "wrk",
                "rps": _median([s["rps"] for s in thr]),
                "ratio_to_nginx": (_paired(thr, nginx.throughput, lambda s, b: s["rps"] / b["rps"]) if nginx else None),
                "ratio_to_nginx_same_job": (
                    _paired(thr, same_job.throughput, lambda s, b: s["rps"] / b["rps"])
                    if same_job and target.kind == "splitproxy"
                    else None
                ),
                "p50_us": _median([s["latency_us"]["p50"] for s in thr]),
                "p99_us": _median([s["latency_us"]["p99"] for s in thr]),
                "cpu_us_per_req": _median([s["cpu_us_per_req"] for s in thr]),
                "upstream_cpu_us_per_req": _median([s["upstream_cpu_us_per_req"] for s in thr]),
                "p50_1conn_us": _median([s["latency_us"]["p50"] for s in lat]),
                "added_p50_1conn_us": (
                    _paired(
                        lat,
                        direct.latency,
                        lambda s, b: s["latency_us"]["p50"] - b["latency_us"]["p50"],
                    )
                    if direct and target is not direct
                    else None
                ),
                "errors": sum(s["errors_total"] for s in thr + lat),
                "rounds": len(thr),
            }
        )
    for target in targets:
        if target.locust is not None:
            result = target.locust
            rows.append(
                {
                    "target": f"{target.name} (locust)",
                    "source": "locust",
                    "rps": result["rps"],
                    "ratio_to_nginx": None,
                    "ratio_to_nginx_same_job": None,
                    "p50_us": result["p50_ms"] * 1000,
                    "p99_us": result["p99_ms"] * 1000,
                    "cpu_us_per_req": result["cpu_us_per_req"],
                    "upstream_cpu_us_per_req": None,
                    "p50_1conn_us": None,
                    "added_p50_1conn_us": None,
                    "errors": result["failures"],
                    "rounds": 1,
                }
            )
    return rows


COLUMNS = (
    "target",
    "req/s",
    "ratio to nginx",
    "ratio to nginx same job",
    "p50",
    "p99",
    "CPU µs/req",
    "added p50 @1 conn",
)


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _ms(us: float | None) -> str:
    return _fmt(None if us is None else us / 1000, ".2f", " ms")


def table(rows: list[dict[str, Any]]) -> str:
    cells = []
    for row in rows:
        if row["added_p50_1conn_us"] is not None:
            added = f"{row['added_p50_1conn_us']:+.0f} µs"
        elif row["p50_1conn_us"] is not None:
            added = f"(base {row['p50_1conn_us']:.0f} µs)"
        else:
            added = "—"
        cells.append(
            [
                row["target"] + (" !" if row["errors"] else ""),
                _fmt(row["rps"], ",.0f"),
                _fmt(row["ratio_to_nginx"], ".2f", "x"),
                _fmt(row["ratio_to_nginx_same_job"], ".2f", "x"),
                _ms(row["p50_us"]),
                _ms(row["p99_us"]),
                _fmt(row["cpu_us_per_req"], ".1f"),
                added,
            ]
        )
    widths = [max(len(line[i]) for line in [list(COLUMNS), *cells]) for i in range(len(COLUMNS))]

    def line(values: Sequence[str]) -> str:
        padded = [v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(COLUMNS), rule, *(line(c) for c in cells)])


def _command_output(argv: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else None


def describe_machine(tools: Tools) -> dict[str, Any]:
    cpu_model = None
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu_model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)
    git = ["git", "--no-optional-locks", "-C", str(ROOT)]  # never take the index lock
    commit = _command_output([*git, "rev-parse", "--short", "HEAD"])
    if commit and re.fullmatch(r"[0-9a-f]+", commit):
        if _command_output([*git, "status", "--porcelain", "--untracked-files=no"]):
            commit += " (with uncommitted changes)"
    else:
        commit = None
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git_commit": commit,
        "nginx": _version(tools.nginx, "-v"),
        "wrk": _version(tools.wrk, "--version"),  # wrk prints it atop its usage
        "locust": _version(tools.locust, "--version"),
        # "splitproxy 0.1.0 (data plane: compiled)": which build was measured (setup.py)
        "splitproxy": tools.splitproxy and _command_output([tools.splitproxy, "--version"]),
    }


def _version(command: str | None, flag: str) -> str | None:
    """ "nginx/1.22.1", "wrk 4.1.0-3+b2", "locust 2.47.0": the tool and its version only."""
    text = command and _command_output([command, flag])
    if not text:
        return None
    text = text.removeprefix("nginx version: ").replace("debian/", "")
    return " ".join(text.split()[:2]) if " " in text else text


def write_results(
    run: Run, rows: list[dict[str, Any]], skipped: list[str], started: datetime, argv: Sequence[str]
) -> Path:
    args = run.args
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    stem = f"{stamp}-{'+'.join(args.scenario)}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = describe_machine(run.tools)
    settings = {
        "rounds": args.rounds,
        "duration_s": args.duration,
        "latency_duration_s": args.latency_duration,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "nginx_routing": not args.no_nginx_routing,
        "locust": {
            "users": args.locust_users,
            "rate": args.locust_rate,
            "duration_s": args.locust_duration,
        },
        "cpu_placement": run.cpus.describe(),
    }
    command = shlex.join(["bench/run.py", *argv])
    notes = [*skipped, *run.notes]
    if any(row["errors"] for row in rows):
        notes.append("`!`: errors seen (wrk: socket errors or non-2xx answers; Locust: failures)")
    md = [
        f"# splitproxy bench, {started:%Y-%m-%d %H:%M} UTC, scenario {', '.join(args.scenario)}",
        "",
        f"- command: `{command}`",
        f"- commit: {machine['git_commit'] or 'none'}; {machine['cpus']} CPUs"
        f" ({machine['cpu_model']}), Linux {machine['kernel']}, Python {machine['python']}",
        f"- {machine['nginx']}; {machine['wrk']}; {machine['locust']}; {machine['splitproxy']}",
        f"- wrk: {args.rounds} interleaved rounds of {args.duration:g} s at -c{args.connections}"
        f" and {args.latency_duration:g} s at -c1, medians; Locust: {args.locust_users} users,"
        f" {args.locust_rate:g} req/s offered, {args.locust_duration:g} s, once",
        f"- CPU placement: {settings['cpu_placement']}",
        "",
        table(rows),
        "",
    ]
    for note in notes:
        first, _, rest = note.partition("\n")
        md.append(f"- {first}")
        if rest:
            md += ["", "  ```text", textwrap.indent(textwrap.dedent(rest), "  "), "  ```"]
    (RESULTS / f"{stem}.md").write_text("\n".join(md).rstrip() + "\n")
    targets = [
        {
            "name": t.name,
            "kind": t.kind,
            "scenario": t.scenario,
            "args": list(t.args),
            "pinned": t.pinned,
            "failed": t.failed,
            "throughput": t.throughput,
            "latency_1conn": t.latency,
            "locust": t.locust,
        }
        for t in run.targets
    ]
    document = {
        "started": started.isoformat(),
        "scenarios": args.scenario,
        "command": command,
        "machine": machine,
        "settings": settings,
        "summary": rows,
        "targets": targets,
        "diff_cost": run.diff_cost,
        "notes": notes,
    }
    (RESULTS / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    return RESULTS / f"{stem}.md"


# --- Main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark splitproxy against nginx and the bare upstream on loopback.",
        epilog="Scenarios: " + ", ".join(SCENARIOS),
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="splitproxy config variant to measure; repeatable (default: routing)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk -c50 run (default 5)")
    parser.add_argument("--latency-duration", type=float, default=3, help="seconds per wrk -c1 run (default 3)")
    parser.add_argument("--warmup", type=float, default=1, help="seconds of unrecorded load per target first")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--locust-users", type=int, default=20, help="Locust users (default 20)")
    parser.add_argument("--locust-rate", type=float, default=2000, help="total req/s Locust offers (default 2000)")
    parser.add_argument("--locust-duration", type=float, default=10, help="seconds of Locust load; 0 skips it")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--no-nginx-routing",
        action="store_true",
        help="do not measure nginx:routing, the nginx doing splitproxy's routing job",
    )
    parser.add_argument("--splitproxy", help="the splitproxy command (default: the venv's)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    args = parser.parse_args(argv)
    args.scenario = list(dict.fromkeys(args.scenario or ["routing"]))
    if args.rounds < 1 or args.duration <= 0 or args.latency_duration <= 0:
        parser.error("--rounds, --duration and --latency-duration must be positive")
    if args.locust_users < 1 or args.locust_rate <= 0:
        parser.error("--locust-users and --locust-rate must be positive")
    return args


def bench(args: argparse.Namespace, argv: Sequence[str], tools: Tools, tmp: Path) -> int:
    started = datetime.now(UTC)
    assert tools.nginx is not None
    with Children() as children:
        upstream_port, nginx_port, nginx_routing_port = free_ports(3)
        json_size = json_answers(tmp / "json")
        upstream = start_nginx(
            children,
            tools.nginx,
            "upstream",
            BENCH / "upstream" / "nginx.conf",
            tmp,
            PORT=upstream_port,
        )
        proxy = start_nginx(
            children,
            tools.nginx,
            "nginx-proxy",
            BENCH / "nginx-proxy" / "nginx.conf",
            tmp,
            PORT=nginx_port,
            UPSTREAM_PORT=upstream_port,
        )
        targets = [
            Target("direct", "direct", upstream_port, upstream, tmp / "upstream.log"),
            Target("nginx", "nginx", nginx_port, proxy, tmp / "nginx-proxy.log"),
        ]
        error_logs = [tmp / "upstream-error.log", tmp / "nginx-proxy-error.log"]
        if not args.no_nginx_routing:
            same_job = start_nginx(
                children,
                tools.nginx,
                "nginx-routing",
                BENCH / "nginx-routing" / "nginx.conf",
                tmp,
                PORT=nginx_routing_port,
                UPSTREAM_PORT=upstream_port,
            )
            targets.append(
                Target("nginx:routing", "nginx-routing", nginx_routing_port, same_job, tmp / "nginx-routing.log")
            )
            error_logs.append(tmp / "nginx-routing-error.log")
        for target, error_log in zip(targets, error_logs, strict=True):
            try:
                wait_for_port(target.port, target.proc, deadline_s=10)
                check_get(target.port)
            except StartError as exc:
                progress(f"{target.name} (nginx) did not come up: {exc}\n{tail(error_log)}")
                return 1
        skipped = []
        bad_ports = (0, 0)
        cpus = Cpus(not args.no_pin)
        if BAD_SHADOWS & set(args.scenario):
            bad, reset_port, huge_port = start_bad_shadows(children, tmp)
            bad_ports = (reset_port, huge_port)
            # On CPU B throughout, latency runs included: what is measured is what the proxy
            # does with a bad shadow, not the CPU a shadow on the same core would take.
            if cpus.enabled:
                pin(bad.pid, cpus.b)
        for name in args.scenario:
            try:
                target = start_splitproxy(children, tools.splitproxy, name, tmp, upstream_port, json_size, bad_ports)
            except StartError as exc:
                message = f"splitproxy ({name}): skipped: {exc}"
                skipped.append(message)
                progress(message)
            else:
                targets.append(target)
        run = Run(args, tools, children, cpus, tmp, upstream, targets)
        progress(f"measuring {', '.join(t.name for t in targets)}; CPU placement: {run.cpus.describe()}")
        run.measure()
        if note := diff_cost_note(targets, run.diff_cost):
            run.notes.append(note)
    rows = summarize(targets)
    path = write_results(run, rows, skipped, started, argv)
    print(table(rows))
    for note in [*skipped, *run.notes]:
        print(f"\n{note}")
    print(f"\nwritten: {path.relative_to(ROOT)} and .json")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    tools = Tools.find(args.splitproxy)
    if tools.nginx is None:
        progress("nginx is not installed: run scripts/install-bench-deps.sh first")
        return 2
    # Ctrl-C, kill and a closed terminal all unwind through the cleanup below (also when
    # started in the background, where the shell starts us with SIGINT ignored).
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="splitproxy-bench-"))
    try:
        return bench(args, argv, tools, tmp)
    except KeyboardInterrupt:
        progress("interrupted; every child process has been stopped")
        return 130
    except StartError as exc:
        progress(f"bench failed: {exc}")
        return 1
    finally:
        if args.keep_tmp:
            progress(f"temp dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
