"""Command line: ``splitproxy`` / ``python -m proxy``. The only place that exits."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

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


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_file(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    backends = sum(len(r.backends) for r in config.routes)
    print(f"{args.config}: ok ({len(config.routes)} routes, {backends} backends)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .server import StartupError, serve

    try:
        config = load_file(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
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
    from .demo import run_demo

    _setup_logging(args.verbose)
    try:
        _run_loop(run_demo(args.listen, args.admin_listen, traffic=args.traffic))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitproxy", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the proxy (data listener + admin listener)")
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

    check = sub.add_parser("check", help="validate a config: exit 0, or print every problem and exit 2")
    check.add_argument("-c", "--config", required=True, help="YAML config file")
    check.set_defaults(func=cmd_check)

    demo = sub.add_parser(
        "demo",
        help="start two built-in demo versions (v1, v2) and a proxy in front of them",
        description="Start two built-in versions of a small JSON API and splitproxy in front of them "
        "(90/10 canary, sticky by cookie, X-Canary override), and print the URLs to try.",
    )
    demo.add_argument("--listen", default="127.0.0.1:8080", help="proxy address (default 127.0.0.1:8080)")
    demo.add_argument("--admin-listen", default="127.0.0.1:9901", help="admin address (default 127.0.0.1:9901)")
    demo.add_argument("--traffic", action="store_true", help="drive a little load through the proxy")
    demo.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
