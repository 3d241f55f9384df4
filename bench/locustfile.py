"""Locust load for bench/run.py: latency under a set, moderate load.

Each user sends `GET /` at a fixed pace (`--rps-per-user`, default 100/s), so the offered
load is users x rate whatever the proxy's speed: this measures latency at that load, not a
ceiling (wrk does that). One Locust process with FastHttpUser tops out near 7.5k req/s on
the bench machine (shared/PERF-NOTES.md), so keep users x rate well below that.

    locust -f bench/locustfile.py --headless -u 20 -r 20 -t 10s \
        --host http://127.0.0.1:PORT --rps-per-user 100 --csv PREFIX
"""

from __future__ import annotations

from typing import Any

from locust import FastHttpUser, constant_throughput, events, task


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    parser.add_argument(
        "--rps-per-user",
        type=float,
        default=100.0,
        help="requests per second each user sends (paced, not a ceiling)",
    )


class BenchUser(FastHttpUser):
    def wait_time(self) -> float:
        # constant_throughput keeps its pacing state on the user, so a fresh closure per
        # call paces the same as a class attribute would; this one reads the CLI option.
        pace = constant_throughput(self.environment.parsed_options.rps_per_user)
        return pace(self)

    @task
    def index(self) -> None:
        self.client.get("/")
