"""Command line: ``splitproxy`` / ``python -m proxy``. The only place that exits."""

from __future__ import annotations

import signal
import sys


def _ignore_until_handled() -> None:
    """A SIGHUP (a `systemctl reload` right after start) or a SIGUSR1 (a log rotation)
    before the server's handlers are in place ended the process: ignored until then
    (`run` says "still starting" for a SIGHUP once it can)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


if sys.argv[1:2] in (["run"], ["demo"]):
    _ignore_until_handled()  # before the imports below, which take ~0.15 s

import argparse
import asyncio
import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__, data_plane_build
from .client import (
    ADMIN_ENV,
    DEFAULT_ADMIN,
    DEFAULT_TIMEOUT,
    TOKEN_ENV,
    AdminClient,
    ClientError,
    client_from,
    parse_weights,
    render_change,
    render_cleared,
    render_history,
    render_report,
    render_status,
)
from .config import ConfigError, load_file, parse_duration

DESCRIPTION = """\
splitproxy: an edge reverse proxy for safe deployments — weighted canary, sticky
sessions, header/cookie overrides, shadow traffic with noise-cancelled diffs.
"""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _run_loop(coro: object) -> None:
    """Run on uvloop when it is installed (SPEC: ``run`` uses uvloop when available)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


def _print_problems(exc: ConfigError) -> None:
    """One line a problem, each naming the file (QA, eighth round: under systemd or Docker a
    line alone did not say which file was wrong); a problem with the file itself names it."""
    for problem in exc.problems:
        print(problem if problem.where == exc.source else f"{exc.source}: {problem}", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_file(args.config)
    except ConfigError as exc:
        _print_problems(exc)
        return 2
    backends = sum(len(r.backends) for r in config.routes)
    routes = len(config.routes)
    counted = f"{routes} route{'' if routes == 1 else 's'}, {backends} backend{'' if backends == 1 else 's'}"
    print(f"{args.config}: ok ({counted})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    _ignore_until_handled()  # also when main() is called with arguments of its own
    from .server import StartupError, serve

    try:
        config = load_file(args.config)
    except ConfigError as exc:
        _print_problems(exc)
        return 2
    _setup_logging(args.verbose)
    try:
        _run_loop(serve(config, args.config, grace=args.grace, workers=args.workers))
    except StartupError as exc:
        print(f"splitproxy: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"splitproxy: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    _ignore_until_handled()
    from .demo import run_demo
    from .server import StartupError

    _setup_logging(args.verbose)
    try:
        _run_loop(run_demo(args.listen, args.admin_listen, traffic=args.traffic))
    except ConfigError as exc:  # --listen / --admin-listen: named as typed, no line of a file
        options = {"listen": "--listen", "admin.listen": "--admin-listen"}
        for problem in exc.problems:
            print(f"splitproxy demo: {options.get(problem.where, problem.where)}: {problem.what}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"splitproxy demo: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"splitproxy demo: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 256, got {text!r}")
    return n


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ---- client commands: the admin API from the command line ------------------------------------

MAX_VERSION = 2**63 - 1  # versions are SQLite INTEGERs; a larger number cannot name one

Call = Callable[[AdminClient], dict[str, Any]]


def _call_admin(args: argparse.Namespace, call: Call, render: Callable[[dict[str, Any]], str]) -> int:
    """One admin API call: print its answer (a table, or the JSON with ``--json``), or one
    ``splitproxy: ...`` line on stderr and exit 1 (2 for a bad ``--admin``)."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        # A reason or actor may hold any character; a C-locale terminal must not turn that
        # into a traceback after the change has been made.
        sys.stdout.reconfigure(errors="replace")
    try:
        client = client_from(args.admin, timeout=args.timeout, environ=os.environ)
        answer = call(client)
    except ClientError as exc:
        print(f"splitproxy: {exc.message}", file=sys.stderr)
        return exc.exit_code
    try:
        text = json.dumps(answer, indent=2) if args.json else render(answer)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # A newer or older admin API with another shape: say so instead of a traceback.
        print(
            f"splitproxy: {client.base_url} answered, but not as splitproxy's admin API does"
            f" ({exc!r}): is it the admin listener (admin.listen), not the proxy's? --json shows the answer",
            file=sys.stderr,
        )
        return 1
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # `splitproxy history | head`: the reader has gone; the Python docs' recipe, so that
        # the interpreter's own flush at exit does not print a second error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    return _call_admin(
        args,
        lambda c: c.set_weights(args.route, args.weights, reason=args.reason, if_match=args.if_match),
        render_change,
    )


def cmd_promote(args: argparse.Namespace) -> int:
    return _call_admin(
        args, lambda c: c.promote(args.route, args.backend, reason=args.reason, if_match=args.if_match), render_change
    )


def cmd_rollback(args: argparse.Namespace) -> int:
    return _call_admin(
        args, lambda c: c.rollback(args.route, reason=args.reason, if_match=args.if_match), render_change
    )


def cmd_status(args: argparse.Namespace) -> int:
    return _call_admin(args, lambda c: c.routes() if args.route is None else c.route(args.route), render_status)


def cmd_history(args: argparse.Namespace) -> int:
    width = shutil.get_terminal_size((80, 24)).columns
    return _call_admin(
        args, lambda c: c.history(args.route, limit=args.limit), lambda answer: render_history(answer, width)
    )


def cmd_restore(args: argparse.Namespace) -> int:
    return _call_admin(args, lambda c: c.restore(args.version, reason=args.reason), render_change)


def cmd_report(args: argparse.Namespace) -> int:
    if args.clear:
        return _call_admin(
            args, lambda c: c.clear_shadow_report(args.route), lambda answer: render_cleared(answer, args.route)
        )
    width = shutil.get_terminal_size((80, 24)).columns
    return _call_admin(
        args,
        lambda c: c.shadow_report(args.route),
        lambda answer: render_report(answer, width, samples=args.samples, route=args.route),
    )


class _WeightsAction(argparse.Action):
    """``BACKEND=W ...`` → ``{backend: weight}``; a bad word is a usage error (exit 2), before
    any request is made."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        words = [values] if isinstance(values, str) else list(values or [])
        try:
            setattr(namespace, self.dest, parse_weights(words))
        except ValueError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None


def _whole(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip().strip('"'))  # an ETag pasted with its quotes: "7"
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


MAX_TIMEOUT = 24 * 3600.0  # sockets take a time-out up to about 292 years only; no call needs a day


def _timeout(text: str) -> float:
    seconds = _duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    if seconds > MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"must be at most 24h, got {text!r}")
    return seconds


def _client_options(*, json_help: str) -> argparse.ArgumentParser:
    """The options every client command takes (SPEC §2)."""
    from_env = os.environ.get(ADMIN_ENV, "").strip()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--admin",
        metavar="URL",
        default=from_env or DEFAULT_ADMIN,
        help=f"the admin API (default: ${ADMIN_ENV}, else {DEFAULT_ADMIN})" + (f"; now {from_env}" if from_env else ""),
    )
    common.add_argument(
        "--timeout",
        type=_timeout,
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help=f"give up after this long (default {DEFAULT_TIMEOUT:g}s, at most 24h)",
    )
    common.add_argument("--json", action="store_true", help=json_help)
    return common


def _client_parser(
    sub: Any, name: str, *, help: str, description: str, example: str, json_help: str = "print the API's answer as JSON"
) -> argparse.ArgumentParser:
    return sub.add_parser(  # type: ignore[no-any-return]
        name,
        help=help,
        description=description,
        epilog=f"example:\n{example}\n\nThe token for a protected admin API is read from ${TOKEN_ENV}.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_client_options(json_help=json_help)],
    )


def _add_client_commands(sub: Any) -> None:
    mutation_json = "print the API's answer (the route and the recorded change) as JSON"

    weights = _client_parser(
        sub,
        "weights",
        help="set a route's weights through the admin API",
        description="Set the weights of ROUTE's backends at run time, without a restart\n"
        "(PUT /api/v1/routes/ROUTE/weights). Backends not named keep their weight; a\n"
        "backend's share of traffic is its weight over the sum. Prints the new weights\n"
        "and shares, and the route's new version.",
        example="  splitproxy weights shop stable=90 canary=10 --reason 'canary 10%'\n"
        "  splitproxy weights shop canary=25 --if-match 7   # only if still at version 7",
        json_help=mutation_json,
    )
    weights.add_argument("route", metavar="ROUTE", help="the route's name (see `splitproxy status`)")
    weights.add_argument(
        "weights", metavar="BACKEND=W", nargs="+", action=_WeightsAction, help="a backend and its new weight (>= 0)"
    )
    weights.add_argument("--reason", metavar="TEXT", help="why, recorded in the history")
    weights.add_argument(
        "--if-match",
        metavar="VERSION",
        type=_whole(0),
        help="change only if the route is still at this version (else HTTP 412, nothing changes)",
    )
    weights.set_defaults(func=cmd_weights)

    promote = _client_parser(
        sub,
        "promote",
        help="send all of a route's traffic to one backend",
        description="Promote BACKEND: weight 100 to it and 0 to every other backend of ROUTE\n"
        "(POST /api/v1/routes/ROUTE/promote).",
        example="  splitproxy promote shop canary --reason 'error rate flat for 1h'",
        json_help=mutation_json,
    )
    promote.add_argument("route", metavar="ROUTE", help="the route's name")
    promote.add_argument("backend", metavar="BACKEND", help="the backend to receive all traffic")
    promote.add_argument("--reason", metavar="TEXT", help="why, recorded in the history (default: promote BACKEND)")
    promote.add_argument("--if-match", metavar="VERSION", type=_whole(0), help="change only at this route version")
    promote.set_defaults(func=cmd_promote)

    rollback = _client_parser(
        sub,
        "rollback",
        help="send all of a route's traffic back to its baseline",
        description="Roll ROUTE back: weight 100 to its baseline backend and 0 to the others\n"
        "(POST /api/v1/routes/ROUTE/rollback).",
        example="  splitproxy rollback shop --reason '5xx on /checkout'",
        json_help=mutation_json,
    )
    rollback.add_argument("route", metavar="ROUTE", help="the route's name")
    rollback.add_argument("--reason", metavar="TEXT", help="why, recorded in the history")
    rollback.add_argument("--if-match", metavar="VERSION", type=_whole(0), help="change only at this route version")
    rollback.set_defaults(func=cmd_rollback)

    status = _client_parser(
        sub,
        "status",
        help="routes, backends, weights, shares, upstream health, config version",
        description="Show every route (or ROUTE): its backends with weight and share of traffic,\n"
        "their upstreams with health, and the config version (GET /api/v1/routes).",
        example="  splitproxy status\n  splitproxy status shop --json",
        json_help="print the API's answer as JSON, as sent",
    )
    status.add_argument("route", metavar="ROUTE", nargs="?", help="only this route")
    status.set_defaults(func=cmd_status)

    history = _client_parser(
        sub,
        "history",
        help="list the recorded weight changes, newest first",
        description="List the recorded changes of weights, newest first: version, time (UTC), route,\n"
        "weights before → after, actor, kind and reason (GET /api/v1/history).\n"
        "Any version can be brought back with `splitproxy restore VERSION`.",
        example="  splitproxy history shop --limit 10",
        json_help="print the API's answer as JSON, as sent",
    )
    history.add_argument("route", metavar="ROUTE", nargs="?", help="only this route's changes")
    history.add_argument(
        "--limit", type=_whole(1, 1000), default=20, metavar="N", help="at most N changes (1-1000, default 20)"
    )
    history.set_defaults(func=cmd_history)

    restore = _client_parser(
        sub,
        "restore",
        help="bring back the weights of an earlier version",
        description="Restore the weights that VERSION set, as a new version\n"
        "(POST /api/v1/history/VERSION/restore). `splitproxy history` lists the versions.",
        example="  splitproxy restore 12 --reason 'back to the 90/10 split'",
        json_help=mutation_json,
    )
    restore.add_argument(
        "version", metavar="VERSION", type=_whole(1, MAX_VERSION), help="a version from `splitproxy history`"
    )
    restore.add_argument("--reason", metavar="TEXT", help="why, recorded in the history (default: restore version N)")
    restore.set_defaults(func=cmd_restore)

    report = _client_parser(
        sub,
        "report",
        help="print the shadow-diff report: what the shadow answers differently, real vs noise",
        description="Print the shadow-diff report (GET /api/v1/shadow/report).\n"
        "Per shadowed route: how many requests were compared, how many differed for real.\n"
        "Per endpoint: COMPARED, DIFF (share with any difference), REAL (share with a real\n"
        "one), live vs shadow latency p50/p99. Under it, the fields that differed, REAL\n"
        "first (the shadow differs more often than the live version differs from itself,\n"
        "as replays of a sample to the live version show), then noise (timestamps, ids:\n"
        "the live version differs from itself as often). Each with its rate and count live\n"
        "vs shadow, then (vs noise) its rate and count live vs live.\n",
        example="  splitproxy report\n"
        "  splitproxy report --route shop --samples\n"
        "  splitproxy report --route shop --clear   # start afresh, e.g. after a new shadow build",
        json_help="print the API's answer as JSON, as sent",
    )
    report.add_argument("--route", metavar="ROUTE", help="only this route")
    what = report.add_mutually_exclusive_group()
    what.add_argument(
        "--samples", action="store_true", help="also print each field's samples: request, statuses, live → shadow"
    )
    what.add_argument(
        "--clear",
        action="store_true",
        help="clear the report of ROUTE, or of every route (DELETE /api/v1/shadow/report)",
    )
    report.set_defaults(func=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitproxy", description=DESCRIPTION)
    parser.add_argument(
        "--version",
        action="version",
        version=f"splitproxy {__version__} (data plane: {data_plane_build()})",
        help="print the version and whether the data plane is compiled (mypyc) or interpreted",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the proxy (data listener + admin listener)",
        description="Run the proxy on a config file: the data listener, the admin API, health checks and "
        "shadow mirroring. SIGHUP re-reads the file (a bad one is refused and the running config stays); "
        "SIGUSR1 reopens the access log (after a rotation); "
        "SIGTERM or Ctrl-C drains in-flight requests for up to --grace, then exits 0. Exit 2: a bad config "
        "or state database; exit 1: a port that cannot be listened on.",
    )
    run.add_argument("-c", "--config", required=True, help="YAML config file (see config/example.yaml)")
    run.add_argument(
        "--grace",
        type=_duration,
        default=30.0,
        help="on SIGTERM, how long in-flight requests may take to finish (default 30s)",
    )
    run.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="processes serving the data port, sharing it with SO_REUSEPORT (default 1); "
        "the admin API, state and history stay in one supervisor process",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "check",
        help="validate a config: exit 0, or print every problem and exit 2",
        description="Validate a config file as run would, without starting anything: print "
        "'FILE: ok (N routes, M backends)' and exit 0, or every problem as 'where: what (line N)' and exit 2.",
    )
    check.add_argument("-c", "--config", required=True, help="YAML config file")
    check.set_defaults(func=cmd_check)

    demo = sub.add_parser(
        "demo",
        help="start two built-in demo versions (v1, v2) and a proxy in front of them",
        description="Start two built-in versions of a small JSON API and splitproxy in front of them "
        "(90/10 canary, sticky by cookie, the X-Canary header and canary=1 cookie overrides; every GET "
        "mirrored to v2 and a quarter of them replayed to the live version, for noise), and print the URLs "
        "to try. The state database is "
        "in a new temporary directory, removed when the demo stops, unless $SPLITPROXY_DEMO_STATE names one; "
        "the two versions listen "
        "on free loopback ports.",
    )
    demo.add_argument("--listen", default="127.0.0.1:8080", help="proxy address (default 127.0.0.1:8080)")
    demo.add_argument("--admin-listen", default="127.0.0.1:9901", help="admin address (default 127.0.0.1:9901)")
    demo.add_argument("--traffic", action="store_true", help="drive a little load through the proxy")
    demo.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    demo.set_defaults(func=cmd_demo)

    _add_client_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
