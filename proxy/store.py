"""The state database: weights as last set, every change of them, the config as last applied.

One SQLite file (``state.path``, stdlib ``sqlite3``) shared by the admin API, the CLI
commands behind it and start-up. Tables (schema version 1, kept in ``PRAGMA user_version``):

- ``history``: one row per change of one route's weights. ``version`` is the global,
  monotonically increasing config version (``AUTOINCREMENT``: never reused); a change that
  touches three routes is three rows written in one transaction. The newest row of a route
  holds its current weights (``latest_weights``): that is what survives a restart.
- ``config_weights``: the config file's weights per route as of the last apply — what
  ``reconcile`` compares the file against to tell an edited file from an unchanged one.
- ``shadow_endpoints`` (schema version 2): the shadow-diff aggregates, one JSON document per
  route and endpoint, replaced as batches arrive, and bounded in age and rows.

Durability: WAL journal with ``synchronous=FULL``. When ``record`` returns, the change is in
the WAL and fsynced: it survives ``kill -9`` and, as far as SQLite and the disk can promise,
a power loss. Any problem with the file (not a SQLite database, another program's database,
a schema newer than this code, disk full) is a ``StoreError`` naming the path and what is
wrong, never a raw ``sqlite3`` traceback.

Precedence of weights (``reconcile``, applied at start-up and on every reload, per route
of the config file):

1. A route with no stored weights (first start, or a route new to the database) takes the
   config file's weights.
2. A route whose weights in the config file differ from the file's weights when the config
   was last applied takes the config file's weights: the operator edited the file on purpose.
   Only the weights of backends in both count: adding or removing a backend is not an edit
   of the others' weights (rule 3 fits them). A route absent from the last applied config
   counts as edited; when the last applied config is unknown (``previous_config`` is None),
   no route counts as edited.
3. Otherwise the stored weights win: weights set through the admin API or CLI survive restarts
   and reloads. They are fitted to the config's backends: a stored backend that is no longer
   in the config is dropped, and a backend new in the config takes its config weight.
4. If the weights from rule 3 sum to 0, the config file's weights are used instead.

Routes no longer in the config are left out. Wherever the result differs from the stored
weights it is recorded (``reconcile_changes``): kind ``"initial"`` for a route with no stored
weights, ``"reload"`` otherwise. At start-up and on reload the caller does::

    stored = store.latest_weights()
    effective = reconcile(file_weights, stored, store.config_weights())
    store.record_many(reconcile_changes(effective, stored), config_weights=file_weights)

``record_many`` writes the changes and the applied file weights in one transaction, so a
crash cannot leave one without the other.

Threads: every call is short (one indexed query, or one small transaction and its fsync).
The connection is opened with ``check_same_thread=False`` and each call holds a
``threading.Lock``, so callers on the event loop may run any method in a worker thread with
``asyncio.to_thread`` (writes wait for an fsync) while others call it directly.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal, get_args

from .errors import os_reason

__all__ = [
    "KINDS",
    "SCHEMA_VERSION",
    "Change",
    "ChangeKind",
    "HistoryEntry",
    "Store",
    "StoreError",
    "reconcile",
    "reconcile_changes",
]

Weights = Mapping[str, float]
RouteWeights = Mapping[str, Weights]

ChangeKind = Literal["set", "promote", "rollback", "restore", "reload", "initial"]
KINDS: frozenset[str] = frozenset(get_args(ChangeKind))


class StoreError(Exception):
    """The state database cannot be used; the message names the path and what is wrong."""


# ---- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One route's weights changing, as handed to ``Store.record_many``."""

    route: str
    before: Weights
    after: Weights
    actor: str  # who: an admin token's name, "config", "api", "cli"
    reason: str
    kind: ChangeKind


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One recorded change; ``version`` is the config version it created."""

    version: int
    time: float  # unix seconds
    route: str
    before: Weights  # read-only mappings, backend -> weight
    after: Weights
    actor: str
    reason: str
    kind: ChangeKind

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: the fields, plus ``time_iso`` (ISO-8601, UTC, milliseconds)."""
        iso = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds")
        return {
            "version": self.version,
            "time": self.time,
            "time_iso": iso.replace("+00:00", "Z"),
            "route": self.route,
            "before": dict(self.before),
            "after": dict(self.after),
            "actor": self.actor,
            "reason": self.reason,
            "kind": self.kind,
        }


# ---- precedence (pure) -----------------------------------------------------------------------


def reconcile(
    config_weights: RouteWeights,
    stored: RouteWeights,
    previous_config: RouteWeights | None,
) -> dict[str, dict[str, float]]:
    """The weights to run with, per route of ``config_weights``, by the rule in the module docstring.

    ``config_weights``: the config file's weights now; ``stored``: ``Store.latest_weights()``;
    ``previous_config``: ``Store.config_weights()``, the file's weights as last applied, or
    None when unknown. Backends come out in the config's order.
    """
    result: dict[str, dict[str, float]] = {}
    for route, file_weights in config_weights.items():
        from_file = {backend: float(w) for backend, w in file_weights.items()}
        kept = stored.get(route)
        edited = previous_config is not None and _edited(_as_floats(previous_config.get(route)), from_file)
        if kept is None or edited:  # rules 1 and 2
            result[route] = from_file
            continue
        fitted = {backend: float(kept.get(backend, w)) for backend, w in from_file.items()}  # rule 3
        result[route] = fitted if sum(fitted.values()) > 0 else from_file  # rule 4
    return result


def _edited(previous: dict[str, float] | None, now: dict[str, float]) -> bool:
    """Rule 2: the file gives a backend it gave before another weight (or the route is new
    to it). Adding or removing a backend is no edit of the others' weights: rule 3 fits the
    stored weights to the new set of backends (a shadow candidate added at weight 0 used to
    put a canary set to 20 % back to the file's 5 %)."""
    if previous is None:
        return True
    return any(backend in previous and previous[backend] != w for backend, w in now.items())


def reconcile_changes(
    effective: RouteWeights,
    stored: RouteWeights,
    *,
    actor: str = "config",
    reason: str = "config applied",
) -> list[Change]:
    """The changes to record for ``effective = reconcile(...)``: one per route whose weights moved."""
    changes: list[Change] = []
    for route, after in effective.items():
        before = stored.get(route)
        if before is not None and _as_floats(before) == _as_floats(after):
            continue
        kind: ChangeKind = "initial" if before is None else "reload"
        changes.append(Change(route, dict(before or {}), dict(after), actor, reason, kind))
    return changes


def _as_floats(weights: Weights | None) -> dict[str, float] | None:
    return None if weights is None else {backend: float(w) for backend, w in weights.items()}


# ---- schema ----------------------------------------------------------------------------------

# Marks the file as ours (SQLite's PRAGMA application_id): b"SPLT" as a big-endian integer.
APPLICATION_ID = 0x53504C54

# _MIGRATIONS[i] takes the schema from version i to i + 1; each runs in one transaction with
# the user_version bump. Append, never edit: files in the field are at every version.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: weights history and the config as last applied.
    (
        f"PRAGMA application_id = {APPLICATION_ID}",
        """
        CREATE TABLE history (
            version  INTEGER PRIMARY KEY AUTOINCREMENT,
            time     REAL NOT NULL,
            route    TEXT NOT NULL,
            "before" TEXT NOT NULL,
            "after"  TEXT NOT NULL,
            actor    TEXT NOT NULL,
            reason   TEXT NOT NULL,
            kind     TEXT NOT NULL
        )
        """,
        # history(route) pages and latest_weights' MAX(version) per route both walk this index.
        "CREATE INDEX history_route_version ON history (route, version)",
        "CREATE TABLE config_weights (route TEXT PRIMARY KEY, weights TEXT NOT NULL)",
    ),
    # 2: shadow-diff aggregates, one row per route and endpoint: the endpoint's counts,
    # field statistics, latency histograms and redacted samples as one JSON document
    # (diffing.EndpointStats.to_dict). Bounded by ``prune_shadow`` (age and rows).
    (
        """
        CREATE TABLE shadow_endpoints (
            route    TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            updated  REAL NOT NULL,
            stats    TEXT NOT NULL,
            PRIMARY KEY (route, endpoint)
        )
        """,
        "CREATE INDEX shadow_endpoints_updated ON shadow_endpoints (updated)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

# Seconds a write waits for another connection's lock (another process on the same file).
BUSY_TIMEOUT = 5.0

_HISTORY_COLUMNS = 'version, time, route, "before", "after", actor, reason, kind'


# ---- one proxy per file ----------------------------------------------------------------------


class StateLock:
    """The running proxy's hold on its state database: an exclusive ``flock`` on a ``.lock``
    file beside it, held until ``release`` (or the process ends, ``kill -9`` included).

    Two proxies on one file each installed their own weights over the other's: a change
    acknowledged by one was undone by the next change made through the other (each
    computes "before" from what it holds), and after a restart it was gone. SQLite's own
    locks cover a write, not a running proxy. Readers (tests, tools) may still open the
    database itself."""

    def __init__(self, path: str | Path) -> None:
        db = Path(path)
        # The file itself, not the name it was given: a symlink to another proxy's database
        # took a lock of its own beside the link. (A hard link still would: one file, two
        # names, is not something this can see.)
        real = Path(os.path.realpath(db))
        self.path = real.with_name(real.name + ".lock")
        try:
            real.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StoreError(f"{db}: cannot create its lock file {self.path}: {os_reason(e, real.parent)}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise StoreError(
                f"{db}: in use by another running splitproxy (pid {holder}); give each proxy its own state.path"
            ) from None
        try:  # the pid, for the message above (a full disk: say so here, not as "cannot listen")
            os.ftruncate(fd, 0)
            os.write(fd, b"%d\n" % os.getpid())
        except OSError as e:
            os.close(fd)
            raise StoreError(f"{db}: cannot write its lock file {self.path}: {e.strerror or e}") from e
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the flock goes with the descriptor; the file stays
            self._fd = None


# ---- the store -------------------------------------------------------------------------------


class Store:
    """The open state database; see the module docstring. Safe to call from several threads."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"{self.path}: cannot create the directory {self.path.parent}: {os_reason(e, self.path.parent)}"
            ) from e
        if self.path.is_dir():  # SQLite says only "unable to open database file"
            raise StoreError(
                f"{self.path}: cannot open the state database: it is a directory;"
                " state.path names the database file (e.g. .../state.db)"
            )
        try:
            # Readable by its owner only: it holds the report's sample bodies (SQLite gives
            # its -wal and -shm files the database's permissions). A file that exists keeps
            # the ones it has.
            # (the file a symlink names: O_EXCL refuses a dangling link, and SQLite made its
            # target with the umask's mode)
            os.close(os.open(os.path.realpath(self.path), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            pass
        except OSError as e:
            raise StoreError(f"{self.path}: cannot create the state database: {e.strerror or e}") from e
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot open the state database: {e}") from e
        try:
            self._open(conn)
        except StoreError:
            conn.close()
            raise
        except sqlite3.Error as e:
            conn.close()
            hint = ""
            if "readonly" in str(e) and not os.access(self.path.parent, os.W_OK):
                # The file itself may be writable: SQLite's message does not say what is not.
                hint = (
                    f" (the directory {self.path.parent} is not writable, and SQLite keeps its -wal and -shm files"
                    " there)"
                )
            raise StoreError(f"{self.path}: cannot use as the state database: {e}{hint}") from e
        self._conn = conn
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)

    def _check_file(self, what: str) -> None:
        """That the file at the path is still the database this process opened. In WAL mode
        SQLite commits to the -wal file and reads what it needs from there: with the file
        deleted, emptied or replaced under it, changes were acknowledged and lost for good
        (the next start made a new database; QA, seventh round)."""
        try:
            st = os.stat(self.path)
        except OSError as e:
            gone = f"the file is gone ({e.strerror or e})"
        else:
            if (st.st_dev, st.st_ino) != self._identity:
                gone = "another file took its place"
            elif st.st_size < 512:  # not even one page: emptied (a new database has 4 KiB here)
                gone = f"the file was emptied ({st.st_size} bytes)"
            else:
                return
        raise StoreError(
            f"{self.path}: cannot {what}: {gone} since splitproxy opened it, so nothing can be"
            " recorded durably; restart splitproxy (what the file held is lost unless restored"
            " from a copy)"
        )

    def _open(self, conn: sqlite3.Connection) -> None:
        # Check that the file is ours and not too new before changing anything in it
        # (journal_mode=WAL would convert another program's database).
        # One statement, one snapshot: another process creating the schema at the same time
        # cannot show us its tables with the old user_version.
        version, application_id, tables = conn.execute(
            "SELECT user_version, application_id, (SELECT count(*) FROM sqlite_master)"
            " FROM pragma_user_version, pragma_application_id"
        ).fetchone()
        self._check_version(version)
        if application_id not in (0, APPLICATION_ID):
            raise StoreError(
                f"{self.path}: not a splitproxy state database (application_id {application_id:#x});"
                " point state.path at a new file"
            )
        if version == 0 and tables:
            raise StoreError(
                f"{self.path}: a SQLite database of another program (it has tables but no splitproxy schema);"
                " point state.path at a new file"
            )
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: WAL commits are fsynced, so an acknowledged change survives a power loss,
        # not only a crash of this process (NORMAL in WAL mode may lose the last commits).
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        if version < SCHEMA_VERSION:
            with _transaction(conn):
                # Read again under the write lock: another process may have migrated meanwhile.
                version = _pragma_int(conn, "user_version")
                self._check_version(version)
                for statements in _MIGRATIONS[version:]:
                    for statement in statements:
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this splitproxy knows"
                f" ({SCHEMA_VERSION}); run a newer splitproxy or point state.path at another file"
            )

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database; calling it again does nothing."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _use(self, what: str) -> Iterator[sqlite3.Connection]:
        """The connection under the lock; sqlite3 errors become a StoreError saying what failed."""
        with self._lock:
            self._check_file(what)
            try:
                yield self._conn
            except sqlite3.Error as e:
                raise StoreError(f"{self.path}: cannot {what}: {e}") from e

    # -- history ------------------------------------------------------------------------------

    def record(
        self,
        route: str,
        before: Weights,
        after: Weights,
        *,
        actor: str,
        reason: str,
        kind: ChangeKind,
    ) -> HistoryEntry:
        """Record one change (durably, before returning) and return it with its new version."""
        (entry,) = self.record_many([Change(route, before, after, actor, reason, kind)])
        return entry

    def record_many(
        self, changes: Iterable[Change], *, config_weights: RouteWeights | None = None
    ) -> list[HistoryEntry]:
        """Record several changes in one transaction: all are stored or none (ValueError, StoreError).

        They share one time and get consecutive versions, in order. With ``config_weights``,
        the same transaction also replaces the config as last applied (``save_config_weights``).
        """
        changes = list(changes)
        now = self._clock()
        entries: list[HistoryEntry] = []
        with self._use("record a change of weights") as conn, _transaction(conn):
            for change in changes:
                # Encoded inside the transaction: a bad change rolls back the ones before it.
                row = _encode_change(change)
                cursor = conn.execute(
                    'INSERT INTO history (time, route, "before", "after", actor, reason, kind)'
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (now, *row),
                )
                assert cursor.lastrowid is not None  # an INSERT into a rowid table always sets it
                entries.append(
                    HistoryEntry(
                        version=cursor.lastrowid,
                        time=now,
                        route=change.route,
                        before=_frozen(change.before),
                        after=_frozen(change.after),
                        actor=change.actor,
                        reason=change.reason,
                        kind=change.kind,
                    )
                )
            if config_weights is not None:
                _replace_config_weights(conn, config_weights)
        return entries

    def history(
        self, route: str | None = None, *, limit: int = 100, before_version: int | None = None
    ) -> list[HistoryEntry]:
        """Changes, newest first: of one route or all; at most ``limit``; older than ``before_version``.

        The next page starts at ``before_version=page[-1].version``.
        """
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        where: list[str] = []
        params: list[object] = []
        if route is not None:
            where.append("route = ?")
            params.append(route)
        if before_version is not None:
            where.append("version < ?")
            params.append(before_version)
        sql = f"SELECT {_HISTORY_COLUMNS} FROM history"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY version DESC LIMIT ?"
        with self._use("read the history") as conn:
            rows = conn.execute(sql, (*params, limit)).fetchall()
        return [self._entry(row) for row in rows]

    def entry(self, version: int) -> HistoryEntry | None:
        """The change that created ``version``, or None if there is no such version."""
        with self._use(f"read version {version}") as conn:
            row = conn.execute(f"SELECT {_HISTORY_COLUMNS} FROM history WHERE version = ?", (version,)).fetchone()
        return None if row is None else self._entry(row)

    def current_version(self) -> int:
        """The newest config version, 0 before the first change."""
        with self._use("read the config version") as conn:
            (version,) = conn.execute("SELECT coalesce(max(version), 0) FROM history").fetchone()
        return int(version)

    def latest_weights(self) -> dict[str, dict[str, float]]:
        """Each route's weights after its newest change: the state to restore at start-up."""
        with self._use("read the current weights") as conn:
            rows = conn.execute(
                'SELECT route, "after", version FROM history'
                " WHERE version IN (SELECT max(version) FROM history GROUP BY route) ORDER BY route"
            ).fetchall()
        return {route: self._decode(text, f"version {version}") for route, text, version in rows}

    # -- shadow-diff aggregates ---------------------------------------------------------------

    def shadow_endpoints(self) -> dict[str, dict[str, dict[str, Any]]]:
        """route -> endpoint -> the stored document (``EndpointStats.to_dict`` form)."""
        with self._use("read the shadow-diff report") as conn:
            rows = conn.execute(
                "SELECT route, endpoint, stats FROM shadow_endpoints ORDER BY route, endpoint"
            ).fetchall()
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for route, endpoint, text in rows:
            try:
                doc = json.loads(text)
            except ValueError as e:
                raise StoreError(f"{self.path}: shadow report row {route!r} {endpoint!r} is corrupt: {e}") from e
            out.setdefault(route, {})[endpoint] = doc
        return out

    def save_shadow_endpoints(self, rows: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
        """Replace the documents of the given (route, endpoint)s, in one transaction."""
        now = self._clock()
        with self._use("save the shadow-diff report") as conn, _transaction(conn):
            for route, endpoints in rows.items():
                for endpoint, doc in endpoints.items():
                    conn.execute(
                        "INSERT INTO shadow_endpoints (route, endpoint, updated, stats) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (route, endpoint)"
                        " DO UPDATE SET updated = excluded.updated, stats = excluded.stats",
                        (route, endpoint, now, json.dumps(doc, separators=(",", ":"))),
                    )

    def prune_shadow(self, *, max_age: float, max_rows: int) -> list[tuple[str, str]]:
        """Retention: drop endpoints not updated for ``max_age`` seconds, then the least
        recently updated beyond ``max_rows`` in all. Returns the (route, endpoint) rows that
        went, for the caller to drop from what it holds in memory."""
        cutoff = self._clock() - max_age
        with self._use("prune the shadow-diff report") as conn, _transaction(conn):
            gone = conn.execute("SELECT route, endpoint FROM shadow_endpoints WHERE updated < ?", (cutoff,)).fetchall()
            gone += conn.execute(
                "SELECT route, endpoint FROM shadow_endpoints WHERE updated >= ?"
                " ORDER BY updated DESC LIMIT -1 OFFSET ?",
                (cutoff, max_rows),
            ).fetchall()
            conn.executemany("DELETE FROM shadow_endpoints WHERE route = ? AND endpoint = ?", gone)
        return [(str(route), str(endpoint)) for route, endpoint in gone]

    def clear_shadow(self, route: str | None = None) -> None:
        with self._use("clear the shadow-diff report") as conn, _transaction(conn):
            if route is None:
                conn.execute("DELETE FROM shadow_endpoints")
            else:
                conn.execute("DELETE FROM shadow_endpoints WHERE route = ?", (route,))

    # -- config as last applied ---------------------------------------------------------------

    def config_weights(self) -> dict[str, dict[str, float]]:
        """The config file's weights per route as last applied (empty before the first apply)."""
        with self._use("read the applied config weights") as conn:
            rows = conn.execute("SELECT route, weights FROM config_weights ORDER BY route").fetchall()
        return {route: self._decode(text, f"config_weights of route {route!r}") for route, text in rows}

    def save_config_weights(self, weights: RouteWeights) -> None:
        """Replace the config as last applied with ``weights`` (every route of the config)."""
        with self._use("save the applied config weights") as conn, _transaction(conn):
            _replace_config_weights(conn, weights)

    # -- rows ---------------------------------------------------------------------------------

    def _entry(self, row: tuple[Any, ...]) -> HistoryEntry:
        version, at, route, before, after, actor, reason, kind = row
        where = f"version {version}"
        if kind not in KINDS:
            raise StoreError(f"{self.path}: {where}: unknown kind {kind!r}")
        return HistoryEntry(
            version=version,
            time=at,
            route=route,
            before=_frozen(self._decode(before, where)),
            after=_frozen(self._decode(after, where)),
            actor=actor,
            reason=reason,
            kind=kind,
        )

    def _decode(self, text: str, where: str) -> dict[str, float]:
        try:
            value = json.loads(text)
        except (TypeError, ValueError):
            value = None
        if not isinstance(value, dict) or not all(
            isinstance(w, int | float) and not isinstance(w, bool) for w in value.values()
        ):
            raise StoreError(f"{self.path}: {where}: weights are not a JSON object of numbers: {text!r:.80}")
        return {backend: float(w) for backend, w in value.items()}


# ---- helpers ---------------------------------------------------------------------------------


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so the busy timeout applies at BEGIN instead
    # of failing a transaction half-way when another process writes.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may already have rolled back (e.g. an I/O error or a full disk).
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _pragma_int(conn: sqlite3.Connection, name: str) -> int:
    return int(conn.execute(f"PRAGMA {name}").fetchone()[0])


def _encode_weights(weights: Weights, what: str) -> str:
    for backend, w in weights.items():
        if not isinstance(backend, str) or not backend:
            raise ValueError(f"{what}: backend names must be non-empty strings, got {backend!r}")
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{what}: weight of {backend!r} must be a finite number >= 0, got {w!r}")
    return json.dumps({backend: float(w) for backend, w in weights.items()}, separators=(",", ":"))


def _encode_change(change: Change) -> tuple[str, str, str, str, str, str]:
    """The row of ``change`` (route, before, after, actor, reason, kind), or ValueError."""
    if not change.route:
        raise ValueError("route must not be empty")
    if change.kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(sorted(KINDS))}, got {change.kind!r}")
    before = _encode_weights(change.before, "before")
    after = _encode_weights(change.after, "after")
    return change.route, before, after, change.actor, change.reason, change.kind


def _replace_config_weights(conn: sqlite3.Connection, weights: RouteWeights) -> None:
    rows = [(route, _encode_weights(w, f"config_weights[{route!r}]")) for route, w in weights.items()]
    conn.execute("DELETE FROM config_weights")
    conn.executemany("INSERT INTO config_weights (route, weights) VALUES (?, ?)", rows)


def _frozen(weights: Weights) -> Weights:
    return MappingProxyType({backend: float(w) for backend, w in weights.items()})
