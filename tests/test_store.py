"""The state database against real SQLite files in tmp_path, and the pure precedence rule."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from proxy.store import (
    SCHEMA_VERSION,
    Change,
    HistoryEntry,
    StateLock,
    Store,
    StoreError,
    reconcile,
    reconcile_changes,
)

if TYPE_CHECKING:
    from proxy.diffing import RouteStats

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def ticking_clock(start: float = T0, step: float = 1.0) -> Callable[[], float]:
    counter = itertools.count()
    return lambda: start + step * next(counter)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "var" / "state.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store(db, clock=ticking_clock()) as s:
        yield s


def set_weights(store: Store, route: str, after: Mapping[str, float], before: Mapping[str, float] | None = None) -> int:
    return store.record(route, before or {}, after, actor="api", reason="test", kind="set").version


# ---- record, read back ------------------------------------------------------------------------


def test_record_returns_the_stored_entry(store: Store) -> None:
    entry = store.record(
        "shop", {"stable": 100}, {"stable": 95, "canary": 5}, actor="ops-token", reason="canary 5%", kind="set"
    )
    assert entry == HistoryEntry(
        version=1,
        time=T0,
        route="shop",
        before={"stable": 100.0},
        after={"stable": 95.0, "canary": 5.0},
        actor="ops-token",
        reason="canary 5%",
        kind="set",
    )
    assert store.entry(1) == entry
    assert store.history() == [entry]
    assert store.current_version() == 1


def test_a_new_database_is_readable_by_its_owner_only(db: Path) -> None:
    """QA (seventh round): the database, its -wal and -shm were created -rw-r--r--; they hold
    the report's sample bodies (its lock file was already 0600)."""
    with Store(db, clock=ticking_clock()) as s:
        s.record("shop", {}, {"stable": 100}, actor="a", reason="r", kind="set")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in db.parent.iterdir()}
    assert modes == {"state.db": 0o600, "state.db-wal": 0o600, "state.db-shm": 0o600}
    db.chmod(0o640)  # an existing file keeps what it has
    Store(db).close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o640
    # review: through a symlink to a file not made yet (O_EXCL refuses a dangling link)
    link, target = db.parent / "link.db", db.parent / "target.db"
    link.symlink_to(target)
    Store(link).close()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_path_under_a_file_says_which_file(tmp_path: Path) -> None:
    """QA (seventh round): ``state.path: conf.yaml/sp.db`` said "cannot create its lock file
    ...: File exists", not what was wrong."""
    (tmp_path / "conf.yaml").write_text("x")
    for make in (StateLock, Store):
        with pytest.raises(StoreError, match=f"{tmp_path / 'conf.yaml'} is a file, not a directory"):
            make(tmp_path / "conf.yaml" / "deeper" / "sp.db")


def test_empty_store(store: Store) -> None:
    assert store.current_version() == 0
    assert store.history() == []
    assert store.latest_weights() == {}
    assert store.config_weights() == {}
    assert store.entry(1) is None


def test_versions_are_global_across_routes_and_history_is_newest_first(store: Store) -> None:
    assert [set_weights(store, r, {"a": 1}) for r in ("shop", "api", "shop", "auth")] == [1, 2, 3, 4]
    assert [e.version for e in store.history()] == [4, 3, 2, 1]
    assert [e.version for e in store.history("shop")] == [3, 1]
    assert store.history("nope") == []
    assert store.current_version() == 4


def test_entry_of_unknown_version_is_none(store: Store) -> None:
    set_weights(store, "shop", {"a": 1})
    assert store.entry(1) is not None
    assert store.entry(2) is None
    assert store.entry(0) is None


def test_latest_weights_is_the_newest_after_of_each_route(store: Store) -> None:
    set_weights(store, "shop", {"stable": 100, "canary": 0})
    set_weights(store, "api", {"v1": 1})
    set_weights(store, "shop", {"stable": 90, "canary": 10})
    set_weights(store, "api", {"v1": 1, "v2": 3})
    set_weights(store, "shop", {"stable": 50, "canary": 50})
    assert store.latest_weights() == {
        "api": {"v1": 1.0, "v2": 3.0},
        "shop": {"stable": 50.0, "canary": 50.0},
    }


def test_weights_keep_backend_order(store: Store) -> None:
    set_weights(store, "shop", {"stable": 1, "canary": 2, "candidate": 3})
    assert list(store.latest_weights()["shop"]) == ["stable", "canary", "candidate"]
    assert list(store.history()[0].after) == ["stable", "canary", "candidate"]


@pytest.mark.parametrize(
    ("route", "before_version", "limit", "expected"),
    [
        (None, None, 100, [6, 5, 4, 3, 2, 1]),
        (None, None, 2, [6, 5]),
        (None, 5, 2, [4, 3]),
        (None, 3, 2, [2, 1]),
        (None, 1, 2, []),
        ("shop", None, 2, [5, 3]),
        ("shop", 3, 2, [1]),
        ("api", 6, 100, [4, 2]),
        ("api", 100, 1, [6]),
    ],
    ids=[
        "all",
        "first-page",
        "second-page",
        "last-page",
        "past-the-end",
        "route-first-page",
        "route-second-page",
        "route-before-excludes-that-version",
        "before-beyond-newest",
    ],
)
def test_history_pages(
    store: Store, route: str | None, before_version: int | None, limit: int, expected: list[int]
) -> None:
    for r in ("shop", "api", "shop", "api", "shop", "api"):
        set_weights(store, r, {"a": 1})
    page = store.history(route, limit=limit, before_version=before_version)
    assert [e.version for e in page] == expected
    assert all(e.route == route for e in page) or route is None


def test_paging_through_all_history_sees_every_version_once(store: Store) -> None:
    for i in range(7):
        set_weights(store, "shop", {"a": i})
    seen: list[int] = []
    page = store.history("shop", limit=3)
    while page:
        seen += [e.version for e in page]
        page = store.history("shop", limit=3, before_version=page[-1].version)
    assert seen == [7, 6, 5, 4, 3, 2, 1]


def test_history_limit_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError, match="limit must be >= 1"):
        store.history(limit=0)


def test_history_queries_use_the_route_version_index(store: Store, db: Path) -> None:
    set_weights(store, "shop", {"a": 1})
    conn = sqlite3.connect(db)
    try:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM history WHERE route = ? AND version < ? ORDER BY version DESC LIMIT 5",
            ("shop", 10),
        ).fetchall()
    finally:
        conn.close()
    assert "USING INDEX history_route_version (route=? AND version<?)" in str(plan)


# ---- record_many ------------------------------------------------------------------------------


def test_record_many_writes_consecutive_versions_with_one_time(store: Store) -> None:
    set_weights(store, "auth", {"a": 1})
    entries = store.record_many(
        [
            Change("shop", {"s": 1}, {"s": 2}, "config", "reload", "reload"),
            Change("api", {}, {"v1": 1}, "config", "reload", "initial"),
            Change("auth", {"a": 1}, {"a": 3}, "config", "reload", "reload"),
        ]
    )
    assert [(e.version, e.route, e.kind) for e in entries] == [
        (2, "shop", "reload"),
        (3, "api", "initial"),
        (4, "auth", "reload"),
    ]
    assert {e.time for e in entries} == {T0 + 1}
    assert store.history()[:3] == entries[::-1]


def test_record_many_is_all_or_nothing(store: Store) -> None:
    set_weights(store, "shop", {"a": 1})
    with pytest.raises(ValueError, match="weight of 'a' must be a finite number >= 0"):
        store.record_many(
            [
                Change("api", {}, {"v1": 1}, "config", "reload", "initial"),
                Change("auth", {}, {"a": -1}, "config", "reload", "initial"),
            ],
            config_weights={"api": {"v1": 1}},
        )
    assert [e.route for e in store.history()] == ["shop"]
    assert store.config_weights() == {}
    # The rolled-back transaction left the connection usable.
    assert set_weights(store, "api", {"v1": 1}) == 2


def test_record_many_saves_the_applied_config_with_the_changes(store: Store) -> None:
    store.save_config_weights({"old": {"x": 1}})
    store.record_many(
        [Change("shop", {}, {"s": 1}, "config", "start", "initial")],
        config_weights={"shop": {"s": 1}, "api": {"v1": 2, "v2": 0}},
    )
    assert store.config_weights() == {"shop": {"s": 1.0}, "api": {"v1": 2.0, "v2": 0.0}}


def test_record_many_of_nothing_records_nothing(store: Store) -> None:
    assert store.record_many([], config_weights={"shop": {"s": 1}}) == []
    assert store.current_version() == 0
    assert store.config_weights() == {"shop": {"s": 1.0}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (Change("", {}, {"a": 1}, "api", "", "set"), "route must not be empty"),
        (Change("shop", {}, {"a": 1}, "api", "", "oops"), "kind must be one of"),  # type: ignore[arg-type]
        (Change("shop", {}, {"a": -1}, "api", "", "set"), "after: weight of 'a'"),
        (Change("shop", {"a": math.nan}, {"a": 1}, "api", "", "set"), "before: weight of 'a'"),
        (Change("shop", {}, {"a": math.inf}, "api", "", "set"), "after: weight of 'a'"),
        (Change("shop", {}, {"a": True}, "api", "", "set"), "after: weight of 'a'"),
        (Change("shop", {}, {"a": "1"}, "api", "", "set"), "after: weight of 'a'"),  # type: ignore[dict-item]
        (Change("shop", {}, {"": 1}, "api", "", "set"), "backend names must be non-empty"),
    ],
    ids=["empty-route", "unknown-kind", "negative", "nan", "inf", "bool", "string", "empty-backend"],
)
def test_record_rejects_bad_changes(store: Store, change: Change, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        store.record_many([change])
    assert store.current_version() == 0


# ---- the entry value --------------------------------------------------------------------------


def test_entry_to_json(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", clock=lambda: T0 + 0.5) as store:
        entry = store.record("shop", {"stable": 100}, {"stable": 95, "canary": 5}, actor="cli", reason="", kind="set")
    doc = entry.to_json()
    assert doc == {
        "version": 1,
        "time": T0 + 0.5,
        "time_iso": "2023-11-14T22:13:20.500Z",
        "route": "shop",
        "before": {"stable": 100.0},
        "after": {"stable": 95.0, "canary": 5.0},
        "actor": "cli",
        "reason": "",
        "kind": "set",
    }
    assert json.loads(json.dumps(doc)) == doc


def test_entry_is_immutable(store: Store) -> None:
    weights = {"stable": 100.0}
    entry = store.record("shop", {}, weights, actor="api", reason="", kind="set")
    weights["stable"] = 0.0  # the caller's dict is not shared
    assert entry.after == {"stable": 100.0}
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.version = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        entry.after["stable"] = 1.0  # type: ignore[index]


# ---- durability -------------------------------------------------------------------------------


def test_everything_survives_close_and_reopen(db: Path) -> None:
    with Store(db, clock=ticking_clock()) as store:
        set_weights(store, "shop", {"stable": 100, "canary": 0})
        set_weights(store, "shop", {"stable": 90, "canary": 10}, before={"stable": 100, "canary": 0})
        store.save_config_weights({"shop": {"stable": 100, "canary": 0}})
        written = store.history()
    with Store(db) as store:
        assert store.history() == written
        assert store.current_version() == 2
        assert store.latest_weights() == {"shop": {"stable": 90.0, "canary": 10.0}}
        assert store.config_weights() == {"shop": {"stable": 100.0, "canary": 0.0}}
        assert set_weights(store, "shop", {"stable": 0, "canary": 100}) == 3


def test_versions_are_not_reused_after_reopen(db: Path) -> None:
    with Store(db) as store:
        set_weights(store, "shop", {"a": 1})
        set_weights(store, "shop", {"a": 2})
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM history WHERE version = 2")  # AUTOINCREMENT must not hand out 2 again
    conn.commit()
    conn.close()
    with Store(db) as store:
        assert set_weights(store, "shop", {"a": 3}) == 3


def test_connection_is_durable(store: Store, db: Path) -> None:
    # synchronous is per connection, so it is read from the store's own; journal_mode is
    # persistent in the file.
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store._conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


_KILLED_WRITER = """
import sys, time
from proxy.store import Store

store = Store(sys.argv[1])
store.record("shop", {"stable": 100}, {"stable": 90, "canary": 10}, actor="api", reason="before kill", kind="set")
print("recorded", flush=True)
time.sleep(600)
"""


def test_a_recorded_change_survives_kill_9(db: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(db)], stdout=subprocess.PIPE, cwd=ROOT, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"recorded\n"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    # The writer never closed the database: the change is only in the WAL, which SQLite
    # must recover on open.
    assert db.with_name(db.name + "-wal").stat().st_size > 0
    with Store(db) as store:
        (entry,) = store.history()
        assert (entry.version, entry.route, entry.reason) == (1, "shop", "before kill")
        assert store.latest_weights() == {"shop": {"stable": 90.0, "canary": 10.0}}


def test_threads_get_distinct_versions(store: Store) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        versions = list(pool.map(lambda i: set_weights(store, f"r{i % 3}", {"a": i}), range(40)))
    assert sorted(versions) == list(range(1, 41))
    assert store.current_version() == 40


async def test_usable_from_asyncio_to_thread(store: Store) -> None:
    entries = await asyncio.gather(
        *(asyncio.to_thread(store.record, "shop", {}, {"a": i}, actor="api", reason="", kind="set") for i in range(5))
    )
    assert sorted(e.version for e in entries) == [1, 2, 3, 4, 5]
    assert await asyncio.to_thread(store.current_version) == 5


# ---- files that are not ours ------------------------------------------------------------------


def test_creates_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "state.db"
    with Store(path):
        pass
    assert path.is_file()


def test_a_garbage_file_is_a_store_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    garbage = b"this is not a database, it is my notes\n" * 200
    path.write_bytes(garbage)
    with pytest.raises(StoreError, match="file is not a database") as caught:
        Store(path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == garbage  # left as it was


def test_a_newer_schema_is_a_store_error(db: Path) -> None:
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer") as caught:
        Store(db)
    assert str(db) in str(caught.value)


def test_another_programs_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="another program"):
        Store(path)
    conn = sqlite3.connect(path)
    try:  # not converted to WAL, not given our tables
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["users"]
    finally:
        conn.close()


def test_a_foreign_application_id_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 1234")
    conn.close()
    with pytest.raises(StoreError, match="application_id 0x4d2"):
        Store(path)


def test_a_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open the state database") as caught:
        Store(tmp_path)
    assert str(tmp_path) in str(caught.value)
    assert "it is a directory" in str(caught.value)  # QA (fifth round): SQLite's "unable to open database file"


def test_a_file_in_place_of_the_directory_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "var").write_text("")
    with pytest.raises(StoreError, match="cannot create the directory"):
        Store(tmp_path / "var" / "state.db")


def test_a_corrupted_row_is_a_store_error(store: Store, db: Path) -> None:
    set_weights(store, "shop", {"a": 1})
    conn = sqlite3.connect(db)
    conn.execute("""UPDATE history SET "after" = '[1, 2]' WHERE version = 1""")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="version 1: weights are not a JSON object of numbers"):
        store.history()


def test_shadow_retention_drops_old_endpoints_then_the_least_recent_beyond_max_rows(db: Path) -> None:
    now = [T0]
    day = 86400.0
    with Store(db, clock=lambda: now[0]) as store:
        for i, endpoint in enumerate(["GET /a", "GET /b", "GET /c", "GET /d"]):
            now[0] = T0 + i * day
            store.save_shadow_endpoints({"r": {endpoint: {"n": i}}})
        store.save_shadow_endpoints({"s": {"GET /e": {"n": 9}}})  # as recent as /d
        now[0] = T0 + 8.5 * day  # /a (8.5 days) and /b (7.5) are beyond 7 days; /c, /d, /e are not
        gone = store.prune_shadow(max_age=7 * day, max_rows=2)
        assert sorted(gone) == [("r", "GET /a"), ("r", "GET /b"), ("r", "GET /c")]
        assert store.shadow_endpoints() == {"r": {"GET /d": {"n": 3}}, "s": {"GET /e": {"n": 9}}}
        assert store.prune_shadow(max_age=7 * day, max_rows=2) == []


def _one_comparison() -> RouteStats:
    """A report batch: one comparison of GET /x on route-less stats (a RouteStats)."""
    from proxy.diffing import Captured, RouteStats, compare

    from .test_diffing import NOISE

    live, shadow = Captured(200, (), b"a"), Captured(200, (), b"b")
    batch = RouteStats()
    batch.record("GET /x", compare(live, shadow), live=live, shadow=shadow, request="GET /x",
                 live_seconds=0.01, shadow_seconds=0.01, point=0.5, noise=NOISE)  # fmt: skip
    return batch


def test_a_report_write_that_fails_is_tried_again_without_new_traffic(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QA: a write refused by a locked database dropped the changed endpoints' marks, so
    those comparisons were stored only if their endpoints got traffic again (lost at
    shutdown otherwise)."""
    from proxy import store as store_module
    from proxy.report import Reports

    monkeypatch.setattr(store_module, "BUSY_TIMEOUT", 0.05)  # the lock below is not let go
    batch = _one_comparison()
    with Store(db) as store:
        reports = Reports(store)
        reports.absorb({"r": batch.to_dict()})
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match="locked"):
            reports.persist()
        assert reports.dirty  # still to be written
        locker.execute("ROLLBACK")
        locker.close()
        reports.persist()  # the next turn, with nothing new
        assert store.shadow_endpoints()["r"]["GET /x"]["compared"] == 1
        assert not reports.dirty


def test_a_clear_during_a_report_write_is_not_undone(db: Path) -> None:
    """QA (sixth round): a DELETE of the report that came while the periodic write (a worker
    thread) was under way deleted first; the write then put the cleared rows back, and they
    were served again after a restart. The write is held inside the database call here, the
    clear starts, and the write is let go once the clear waits for it."""
    import threading

    from proxy.report import Reports

    batch = _one_comparison()
    writing, go_on, clear_waits = threading.Event(), threading.Event(), threading.Event()

    class HeldStore(Store):
        def save_shadow_endpoints(self, rows: Mapping[str, Mapping[str, Mapping[str, object]]]) -> None:
            writing.set()
            go_on.wait()
            super().save_shadow_endpoints(rows)

    class ObservedLock:
        """The report's database lock, saying when a second thread starts to wait for it."""

        def __init__(self) -> None:
            self.inner, self.holder = threading.Lock(), None

        def __enter__(self) -> None:
            if self.holder is not None:
                clear_waits.set()
            self.inner.acquire()
            self.holder = threading.current_thread()

        def __exit__(self, *exc: object) -> None:
            self.holder = None
            self.inner.release()

    with HeldStore(db) as store:
        reports = Reports(store)
        reports._io = ObservedLock()  # type: ignore[assignment]
        reports.absorb({"r": batch.to_dict()})
        with ThreadPoolExecutor(2) as pool:
            write = pool.submit(reports.persist)
            assert writing.wait(10)
            reports.clear(None)  # on the event loop, in the server
            cleared = pool.submit(reports.clear_stored, None)
            clear_waits.wait(10)  # (the code before the fix never waited: the write then undid the clear)
            go_on.set()
            write.result(10)
            cleared.result(10)
        assert store.shadow_endpoints() == {}
        assert reports.routes == {}
    with Store(db) as store:  # after a restart too
        assert store.shadow_endpoints() == {}


def test_what_is_found_between_a_clear_and_its_delete_is_stored_again(db: Path) -> None:
    """Review: a write that takes the lock between a clear (in memory) and its delete stores
    what was found since the clear; the delete then took it from the database, for good."""
    from proxy.report import Reports

    batch = _one_comparison()
    with Store(db) as store:
        reports = Reports(store)
        reports.absorb({"r": batch.to_dict()})
        reports.persist()
        reports.clear(None)
        reports.absorb({"r": batch.to_dict()})  # found after the clear
        reports.persist()  # the periodic write, first to the lock
        reports.clear_stored(None)
        reports.found_since_clear(None)
        reports.persist()
        assert store.shadow_endpoints()["r"]["GET /x"]["compared"] == 1


def test_a_closed_store_is_a_store_error(db: Path) -> None:
    store = Store(db)
    store.close()
    store.close()  # again: nothing happens
    with pytest.raises(StoreError, match="cannot record a change of weights"):
        set_weights(store, "shop", {"a": 1})


# ---- the precedence rule (pure) ---------------------------------------------------------------

W = dict[str, dict[str, float]]


@pytest.mark.parametrize(
    ("config", "stored", "previous", "expected"),
    [
        pytest.param(
            {"shop": {"stable": 95, "canary": 5}},
            {},
            None,
            {"shop": {"stable": 95.0, "canary": 5.0}},
            id="1-first-start-file",
        ),
        pytest.param(
            {"shop": {"stable": 95, "canary": 5}, "api": {"v1": 1}},
            {"shop": {"stable": 50, "canary": 50}},
            {"shop": {"stable": 95, "canary": 5}},
            {"shop": {"stable": 50.0, "canary": 50.0}, "api": {"v1": 1.0}},
            id="1-route-without-stored-weights-file",
        ),
        pytest.param(
            {"shop": {"stable": 80, "canary": 20}},
            {"shop": {"stable": 50, "canary": 50}},
            {"shop": {"stable": 95, "canary": 5}},
            {"shop": {"stable": 80.0, "canary": 20.0}},
            id="2-file-edited-file-wins",
        ),
        pytest.param(
            {"shop": {"stable": 95, "canary": 5}},
            {"shop": {"stable": 50, "canary": 50}},
            {"api": {"v1": 1}},
            {"shop": {"stable": 95.0, "canary": 5.0}},
            id="2-route-absent-from-last-apply-counts-as-edited",
        ),
        pytest.param(
            {"shop": {"stable": 95, "canary": 5}, "api": {"v1": 3, "v2": 1}},
            {"shop": {"stable": 50, "canary": 50}, "api": {"v1": 0, "v2": 1}},
            {"shop": {"stable": 95, "canary": 5}, "api": {"v1": 1, "v2": 1}},
            {"shop": {"stable": 50.0, "canary": 50.0}, "api": {"v1": 3.0, "v2": 1.0}},
            id="2-only-the-edited-route-takes-the-file",
        ),
        pytest.param(
            {"shop": {"stable": 95, "canary": 5}},
            {"shop": {"stable": 50, "canary": 50}},
            {"shop": {"stable": 95, "canary": 5}},
            {"shop": {"stable": 50.0, "canary": 50.0}},
            id="3-file-unchanged-stored-wins",
        ),
        pytest.param(
            {"shop": {"stable": 95.0, "canary": 5.0}},
            {"shop": {"stable": 50, "canary": 50}},
            {"shop": {"canary": 5, "stable": 95}},
            {"shop": {"stable": 50.0, "canary": 50.0}},
            id="3-same-numbers-other-order-is-unchanged",
        ),
        pytest.param(
            {"shop": {"stable": 95, "canary": 5}},
            {"shop": {"stable": 50, "canary": 50}},
            None,
            {"shop": {"stable": 50.0, "canary": 50.0}},
            id="3-last-apply-unknown-stored-wins",
        ),
        pytest.param(
            {"shop": {"stable": 95}},
            {"shop": {"stable": 50, "canary": 50}},
            None,
            {"shop": {"stable": 50.0}},
            id="3-stored-backend-gone-from-config-dropped",
        ),
        pytest.param(
            {"shop": {"stable": 95, "canary": 5, "candidate": 7}},
            {"shop": {"stable": 50, "canary": 50}},
            None,
            {"shop": {"stable": 50.0, "canary": 50.0, "candidate": 7.0}},
            id="3-backend-new-in-config-takes-config-weight",
        ),
        pytest.param(
            {"shop": {"stable": 95, "canary": 5}},
            {"shop": {"old": 100, "stable": 0, "canary": 0}},
            None,
            {"shop": {"stable": 95.0, "canary": 5.0}},
            id="4-zero-sum-after-dropping-file",
        ),
        pytest.param(
            {"shop": {"stable": 95, "canary": 0}},
            {"shop": {"old": 100}},
            None,
            {"shop": {"stable": 95.0, "canary": 0.0}},
            id="4-no-stored-backend-left-file",
        ),
        pytest.param(
            {"shop": {"stable": 95, "canary": 5, "candidate": 0}},
            {"shop": {"stable": 95, "canary": 20}},
            {"shop": {"stable": 95, "canary": 5}},
            {"shop": {"stable": 95.0, "canary": 20.0, "candidate": 0.0}},
            id="3-backend-added-to-file-is-no-edit-of-the-others",
        ),
        pytest.param(
            {"shop": {"stable": 95, "canary": 5}},
            {"shop": {"stable": 95, "canary": 20, "candidate": 0}},
            {"shop": {"stable": 95, "canary": 5, "candidate": 0}},
            {"shop": {"stable": 95.0, "canary": 20.0}},
            id="3-backend-removed-from-file-is-no-edit-of-the-others",
        ),
        pytest.param(
            {"shop": {"stable": 90, "canary": 10, "candidate": 0}},
            {"shop": {"stable": 95, "canary": 20}},
            {"shop": {"stable": 95, "canary": 5}},
            {"shop": {"stable": 90.0, "canary": 10.0, "candidate": 0.0}},
            id="2-edited-weight-beside-an-added-backend",
        ),
        pytest.param(
            {"shop": {"stable": 1}},
            {"shop": {"stable": 1}, "gone": {"a": 1}},
            {"shop": {"stable": 1}, "gone": {"a": 1}},
            {"shop": {"stable": 1.0}},
            id="route-gone-from-config-left-out",
        ),
    ],
)
def test_reconcile(config: W, stored: W, previous: W | None, expected: W) -> None:
    result = reconcile(config, stored, previous)
    assert result == expected
    for route, weights in result.items():
        assert list(weights) == list(config[route])  # backends in config order


def test_reconcile_changes_records_initial_and_reload_and_skips_unchanged() -> None:
    stored = {"shop": {"stable": 50.0, "canary": 50.0}, "api": {"v1": 1.0}, "gone": {"a": 1.0}}
    effective: W = {"shop": {"stable": 80.0, "canary": 20.0}, "api": {"v1": 1}, "auth": {"a": 1.0}}
    changes = reconcile_changes(effective, stored, actor="config", reason="SIGHUP")
    assert changes == [
        Change(
            "shop", {"stable": 50.0, "canary": 50.0}, {"stable": 80.0, "canary": 20.0}, "config", "SIGHUP", "reload"
        ),
        Change("auth", {}, {"a": 1.0}, "config", "SIGHUP", "initial"),
    ]


def test_apply_across_restarts(db: Path) -> None:
    """The documented start-up flow: API weights survive restarts until the file is edited."""

    def apply(file_weights: W) -> dict[str, dict[str, float]]:
        with Store(db) as store:
            stored = store.latest_weights()
            effective = reconcile(file_weights, stored, store.config_weights())
            store.record_many(reconcile_changes(effective, stored), config_weights=file_weights)
            return effective

    file_v1 = {"shop": {"stable": 100.0, "canary": 0.0}}
    assert apply(file_v1) == file_v1
    with Store(db) as store:
        store.record("shop", file_v1["shop"], {"stable": 70, "canary": 30}, actor="api", reason="", kind="set")
    assert apply(file_v1) == {"shop": {"stable": 70.0, "canary": 30.0}}  # restart: the API wins
    file_v2 = {"shop": {"stable": 90.0, "canary": 10.0}}
    assert apply(file_v2) == file_v2  # edited file wins
    assert apply(file_v2) == file_v2
    with Store(db) as store:
        assert [e.kind for e in store.history()] == ["reload", "set", "initial"]
        assert store.history()[0].before == {"stable": 70.0, "canary": 30.0}


def test_a_lock_file_that_cannot_be_written_is_a_store_error(tmp_path: Path) -> None:
    """QA: on a full disk the lock file was created but its pid could not be written, and
    ``run`` said "cannot listen: [Errno 28] No space left on device" (exit 1). The file-size
    limit of a child process makes the same write fail here (EFBIG), for real."""
    import resource

    script = (
        "import sys\nfrom proxy.store import StateLock, StoreError\n"
        "try:\n    StateLock(sys.argv[1])\nexcept StoreError as e:\n    print(e)\n"
    )

    def no_file_growth() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    db = tmp_path / "state.db"
    result = subprocess.run(
        [sys.executable, "-c", script, str(db)],
        check=False,
        capture_output=True,
        text=True,
        preexec_fn=no_file_growth,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{db}: cannot write its lock file {db}.lock: File too large", result.stdout
