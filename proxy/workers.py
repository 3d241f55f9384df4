"""``splitproxy run --workers N``: N processes serving the data port, one supervisor.

Design:

- The supervisor (the process started by the user) keeps the admin listener, the state
  database and the controller: there is one history, one version counter and one place
  where changes are decided.
- Each worker is ``python -m proxy.workers FD``: a ``LocalDataPlane`` bound to the data port
  with SO_REUSEPORT, so the kernel spreads new connections over the workers. The supervisor
  first binds the port itself (without listening) to resolve port 0 and hold the address,
  and closes it once every worker listens.
- Supervisor and worker talk over a Unix socket pair, one JSON object per line, each
  request with a sequence number answered by the worker:
  ``start`` (the config in force, pickled), ``install`` (the same, after a change),
  ``counts`` (the worker's metric counts, summed by the supervisor for ``/metrics``),
  ``stop`` (drain). Workers get the supervisor's config itself, never the file: what they
  serve is what the admin API shows, whatever the file says since (an edit not reloaded,
  a reload refused, a value a reload cannot change).
- A weight change is acknowledged by the admin API only after *every* worker has answered
  ``install``: when the API says 200, the change is in force everywhere.
- A worker that dies is replaced with the config in force (a replacement that fails to
  start is tried again, at growing intervals); one that leaves a control message
  unanswered for ``ANSWER_SECONDS`` is stuck (stopped, or its loop blocked): it is killed
  and replaced, as gunicorn does with a worker past its timeout. Reads for ``/metrics``
  wait ``READ_SECONDS`` at most and use a slow worker's last answer. A worker whose
  supervisor is gone (its socket closes) drains and exits.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import errno
import json
import logging
import os
import pickle
import signal
import socket
import sys
from collections.abc import Mapping
from typing import Any

from . import process, tasks
from .config import Config
from .diffing import RouteStats
from .diffing import merge as merge_stats
from .metrics import Counts, merge

log = logging.getLogger("splitproxy")

# How long a worker may take to answer a control message before it counts as stuck.
ANSWER_SECONDS = 10.0
# How long a scrape of /metrics waits for the workers' counts (Prometheus's default scrape
# timeout is 10 s): a worker slower than that is counted as of its last answer.
READ_SECONDS = 2.0
# A replacement worker that fails to start is tried again after 1 s, then 2, 4, ... 30.
RESTART_MAX_SECONDS = 30.0


class WorkerError(Exception):
    pass


class Worker:
    """The supervisor's handle on one worker process."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._seq = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader_task: asyncio.Task[None] | None = None
        self.gone = asyncio.Event()
        # It answered "start": its signal handlers are in place (SIGUSR1 before them is
        # the default, which ends the process).
        self.ready = False
        # What the worker found while it drained (sent as its last line, unasked).
        self.final: dict[str, Any] | None = None

    async def spawn(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "proxy.workers",
                str(child.fileno()),
                *(["debug"] if log.isEnabledFor(logging.DEBUG) else []),  # `run -v`
                pass_fds=(child.fileno(),),
                # A session of its own: a terminal's hangup or Ctrl-C, or a signal to the
                # process group, reaches the supervisor alone, which decides (a SIGHUP to the
                # group killed every worker, with the requests they were serving).
                start_new_session=True,
            )
        finally:
            child.close()
        reader, self.writer = await asyncio.open_unix_connection(sock=parent, limit=64 << 20)
        self.gone.clear()
        self._reader_task = tasks.spawn(self._read(reader, self.writer), f"worker-{self.index}-reader")

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async for line in reader:
                msg = json.loads(line)
                if "final" in msg:
                    self.final = msg["final"]
                    continue
                fut = self._waiting.pop(msg.get("seq", -1), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except ConnectionError:
            # A worker killed with a message it had not read yet: the kernel resets its
            # socket rather than closing it (or the pipe is broken). Gone all the same (no
            # traceback in the log).
            pass
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(WorkerError(f"worker {self.index} went away"))
            self._waiting.clear()
            writer.close()  # the worker's end is gone: nothing more can be said to it
            self.gone.set()

    async def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        if self.writer is None or self.gone.is_set():
            raise WorkerError(f"worker {self.index} is not running")
        self._seq += 1
        seq = self._seq
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[seq] = fut
        self.writer.write(json.dumps({"op": op, "seq": seq, **fields}).encode() + b"\n")
        try:
            async with asyncio.timeout(ANSWER_SECONDS):
                await self.writer.drain()
                answer = await fut
        except TimeoutError:
            self._waiting.pop(seq, None)
            if self.proc is not None and self.proc.returncode is None:
                log.error(
                    "worker %d (pid %d) left %r unanswered for %.0fs: stuck; killing it",
                    self.index,
                    self.proc.pid,
                    op,
                    ANSWER_SECONDS,
                )
                self.proc.kill()
            raise WorkerError(f"worker {self.index} did not answer {op!r} within {ANSWER_SECONDS:.0f}s") from None
        if not answer.get("ok"):
            raise WorkerError(f"worker {self.index}: {answer.get('error', 'failed')}")
        return answer

    async def wait_exit(self, within: float) -> None:
        if self.proc is None:
            return
        try:
            async with asyncio.timeout(within):
                await self.proc.wait()
        except TimeoutError:
            log.warning("worker %d did not exit in time; killing it", self.index)
            self.proc.kill()
            await self.proc.wait()


class WorkerPool:
    """The data plane as N worker processes (see the module docstring)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.port = 0
        self.workers = [Worker(i) for i in range(count)]
        self._config: Config | None = None
        self._stopping = False
        self._active_down: frozenset[tuple[str, str, str]] = frozenset()
        self._last_counts: dict[int, Counts] = {}
        self._retired = Counts()
        self._watchers: list[asyncio.Task[None]] = []
        self._known: Mapping[str, list[str]] = {}  # admit_endpoints: for workers started later too

    def _message(self, config: Config) -> dict[str, Any]:
        # The config in force itself (a frozen dataclass; the worker is this program, on
        # the other end of a private socket pair): never the file, which may say otherwise.
        return {"config": base64.b64encode(pickle.dumps(config)).decode("ascii")}

    async def start(self, config: Config) -> None:
        self._config = config
        # Resolve the port (port 0) and hold the address until the workers listen on it.
        family = socket.AF_INET6 if ":" in config.listen.host else socket.AF_INET
        holder = socket.socket(family, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            try:
                holder.bind((config.listen.host, config.listen.port))
            except OSError as exc:  # named as asyncio names it with one process (QA: it did not say where)
                where = (config.listen.host, config.listen.port)
                raise OSError(
                    exc.errno, f"error while attempting to bind on address {where!r}: {(exc.strerror or '').lower()}"
                ) from None
            self.port = holder.getsockname()[1]
            _refuse_a_listener_there(family, config.listen.host, self.port)
            await asyncio.gather(*(self._start_worker(w) for w in self.workers))
        except BaseException:
            await self._kill_all()
            raise
        finally:
            holder.close()
        self._watchers = [tasks.spawn(self._watch(w), f"worker-{w.index}-watch") for w in self.workers]

    async def _start_worker(self, worker: Worker) -> None:
        assert self._config is not None
        worker.ready = False
        await worker.spawn()
        try:
            await worker.ask("start", port=self.port, **self._message(self._config))
            worker.ready = True
            if self._known:
                await worker.ask("endpoints", known=self._known)
            if self._active_down:
                await worker.ask("health", down=sorted(self._active_down))
        except WorkerError as exc:
            raise OSError(f"worker {worker.index} could not start: {exc}") from None

    async def _watch(self, worker: Worker) -> None:
        """Replace a worker that died (or was killed as stuck), with the config in force."""
        while not self._stopping:
            await worker.gone.wait()
            if self._stopping:
                return
            if worker.proc is not None:
                await worker.wait_exit(5)
            code = worker.proc.returncode if worker.proc else None
            log.error("worker %d exited unexpectedly (code %s); starting a new one", worker.index, code)
            self._retired = merge([self._retired, self._last_counts.pop(worker.index, Counts())])
            delay = 1.0
            while not self._stopping:
                try:
                    await self._start_worker(worker)
                    break
                except OSError as exc:
                    # The process that failed to start is ended, or ``gone`` would never be
                    # set again and the worker never replaced.
                    if worker.proc is not None and worker.proc.returncode is None:
                        worker.proc.kill()
                    await worker.wait_exit(5)
                    await worker.gone.wait()  # its reader is done: the next one starts clean
                    log.error("%s; retrying in %.0fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RESTART_MAX_SECONDS)

    async def install(self, config: Config) -> None:
        self._config = config
        # Every worker must confirm before the change is acknowledged.
        await asyncio.gather(*(w.ask("install", **self._message(config)) for w in self.workers))

    async def counts(self) -> Counts:
        answers = await self._read_all("counts")
        for worker, answer in zip(self.workers, answers, strict=True):
            if isinstance(answer, dict):
                self._last_counts[worker.index] = Counts.from_json(answer["counts"])
        # Counters only grow: a worker that died keeps what it had counted (as of the last
        # scrape) in the sum, rather than looking like a counter reset.
        return merge([self._retired, *self._last_counts.values()])

    async def drain_shadow(self) -> dict[str, dict[str, Any]]:
        answers: list[object] = list(
            await asyncio.gather(*(w.ask("shadow") for w in self.workers), return_exceptions=True)
        )
        for w in self.workers:  # a worker that stopped: what its drain found
            if w.final is not None:
                answers.append({"batches": w.final})
                w.final = None
        merged: dict[str, RouteStats] = {}
        for answer in answers:
            if not isinstance(answer, dict):
                continue
            for route, doc in answer["batches"].items():
                batch = RouteStats.from_dict(doc)
                prior = merged.get(route)
                merged[route] = batch if prior is None else merge_stats(prior, batch)
        return {route: stats.to_dict() for route, stats in merged.items()}

    async def clear_shadow(self, route: str | None) -> None:
        await asyncio.gather(*(w.ask("clear_shadow", route=route) for w in self.workers))

    async def admit_endpoints(self, known: Mapping[str, list[str]]) -> None:
        self._known = known
        await asyncio.gather(*(w.ask("endpoints", known=known) for w in self.workers))

    async def set_active_down(self, keys: frozenset[tuple[str, str, str]]) -> None:
        self._active_down = keys
        await asyncio.gather(*(w.ask("health", down=sorted(keys)) for w in self.workers))

    def reopen_logs(self) -> None:
        for w in self.workers:  # each writes its own lines to the file (worker_main's SIGUSR1)
            # Only a worker that has started (one starting opens the file at its path anyway):
            # before its handler is in place, SIGUSR1 ended it.
            if w.ready and w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.proc.pid, signal.SIGUSR1)

    async def balance(self) -> dict[tuple[str, str, str], dict[str, object]]:
        """Each worker ejects on its own traffic: an instance is shown ejected (and not
        serving) when any worker has it ejected."""
        answers = await self._read_all("balance")
        merged: dict[tuple[str, str, str], dict[str, object]] = {}
        for answer in answers:
            if not isinstance(answer, dict):
                continue
            for route, backend, url, state in answer["instances"]:
                key = (route, backend, url)
                mine = merged.get(key)
                if mine is None:
                    merged[key] = dict(state)
                else:
                    mine["serving"] = bool(mine["serving"]) and bool(state["serving"])
                    mine["ejected"] = bool(mine["ejected"]) or bool(state["ejected"])
                    mine["ejected_for"] = max(float(mine["ejected_for"]), float(state["ejected_for"]))  # type: ignore[arg-type]
                    mine["failures"] = max(int(mine["failures"]), int(state["failures"]))  # type: ignore[call-overload]
        return merged

    async def _read_all(self, op: str) -> list[object]:
        """Every worker's answer to a read, waiting ``READ_SECONDS`` at most: a worker slower
        than that (an exception in its place) is left to finish, or to be found stuck."""

        async def one(worker: Worker) -> object:
            try:
                return await worker.ask(op)
            except (WorkerError, OSError) as exc:  # ask() logged a stuck worker already
                return exc

        asks = [tasks.spawn(one(w), f"worker-{w.index}-{op}") for w in self.workers]
        done, _slow = await asyncio.wait(asks, timeout=READ_SECONDS)
        return [task.result() if task in done else TimeoutError() for task in asks]

    async def stop(self, grace: float, *, announce: bool = True) -> None:
        self._stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        (log.info if announce else log.debug)("stopping: %d workers draining, up to %.0fs", self.count, grace)
        await asyncio.gather(*(self._stop_worker(w, grace) for w in self.workers))

    async def _stop_worker(self, worker: Worker, grace: float) -> None:
        # Already gone, or stuck: wait_exit kills it.
        with contextlib.suppress(WorkerError, TimeoutError, OSError):
            await worker.ask("stop", grace=grace)
        await worker.wait_exit(grace + 5)

    async def _kill_all(self) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.kill()
                await w.proc.wait()


# ---- the worker process ----------------------------------------------------------------------


def _refuse_a_listener_there(family: socket.AddressFamily, host: str, port: int) -> None:
    """OSError (EADDRINUSE) when a socket listens on (host, port) already. The workers bind
    with SO_REUSEPORT, which would let them join another program's listeners there (another
    ``splitproxy run --workers``) and split its connections with it; a socket bound without
    it is refused by any listener, while the supervisor's own holder (bound, not
    listening, SO_REUSEADDR) lets it through."""
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise OSError(
                errno.EADDRINUSE,
                f"error while attempting to bind on address ({host!r}, {port}): address already in use",
            ) from None
        raise
    finally:
        probe.close()


def _in_force(message: Mapping[str, Any], port: int) -> Config:
    """The supervisor's config in force, on the port the supervisor resolved."""
    config: Config = pickle.loads(base64.b64decode(message["config"]))
    return dataclasses.replace(config, listen=dataclasses.replace(config.listen, port=port))


async def worker_main(fd: int) -> None:
    from .dataplane import LocalDataPlane

    loop = asyncio.get_running_loop()
    # A worker has a session of its own (Worker.start), but SIGINT and SIGHUP sent to it by
    # hand are still the supervisor's to decide: workers wait for "stop" and "install".
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    stop_requested = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop_requested.set)
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd), limit=64 << 20)
    plane = LocalDataPlane(reuse_port=True)
    loop.add_signal_handler(signal.SIGUSR1, plane.reopen_logs)  # sent by WorkerPool.reopen_logs
    port = 0
    grace = 30.0

    def answer(seq: int, **fields: Any) -> None:
        writer.write(json.dumps({"seq": seq, **fields}).encode() + b"\n")

    async def serve_control() -> None:
        nonlocal port, grace
        async for line in reader:
            msg = json.loads(line)
            seq, op = msg["seq"], msg["op"]
            try:
                if op in ("start", "install"):
                    if op == "start":
                        port = msg["port"]
                    config = _in_force(msg, port)
                    if op == "start":
                        await plane.start(config)
                        process.settle()
                    else:
                        await plane.install(config)
                    answer(seq, ok=True, port=plane.port)
                elif op == "counts":
                    answer(seq, ok=True, counts=(await plane.counts()).to_json())
                elif op == "shadow":
                    answer(seq, ok=True, batches=await plane.drain_shadow())
                elif op == "health":
                    await plane.set_active_down(frozenset(tuple(k) for k in msg["down"]))
                    answer(seq, ok=True)
                elif op == "balance":
                    snapshot = await plane.balance()
                    answer(seq, ok=True, instances=[[*k, v] for k, v in snapshot.items()])
                elif op == "clear_shadow":
                    await plane.clear_shadow(msg.get("route"))
                    answer(seq, ok=True)
                elif op == "endpoints":
                    await plane.admit_endpoints(msg["known"])
                    answer(seq, ok=True)
                elif op == "stop":
                    grace = float(msg.get("grace", grace))
                    answer(seq, ok=True)
                    await writer.drain()
                    return
                else:
                    answer(seq, ok=False, error=f"unknown op {op!r}")
            except Exception as exc:  # reported to the supervisor, which logs it
                answer(seq, ok=False, error=f"{type(exc).__name__}: {exc}")
            await writer.drain()

    control = tasks.spawn(serve_control(), "control")
    await asyncio.wait([control, tasks.spawn(stop_requested.wait(), "sigterm")], return_when=asyncio.FIRST_COMPLETED)
    if plane.rt is not None:
        await plane.stop(grace)
        # The comparisons of requests that finished in the drain: the supervisor stores them.
        with contextlib.suppress(OSError):
            writer.write(json.dumps({"final": await plane.drain_shadow()}).encode() + b"\n")
            await writer.drain()
    writer.close()


def main() -> None:
    logging.basicConfig(
        level=logging.DEBUG if sys.argv[2:] == ["debug"] else logging.INFO,
        format=f"%(asctime)s %(levelname)s %(name)s[worker {os.getpid()}]: %(message)s",
        stream=sys.stderr,
    )
    fd = int(sys.argv[1])
    try:
        import uvloop
    except ImportError:
        asyncio.run(worker_main(fd))
    else:
        uvloop.run(worker_main(fd))


if __name__ == "__main__":
    main()
