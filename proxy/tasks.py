"""The one way to start background work: a strong reference and a name for every task.

asyncio keeps only a weak reference to tasks (see the ``create_task`` docs), so a task
nobody holds can vanish mid-flight; and an exception in it would be reported only at
garbage collection. ``spawn`` keeps the task until it ends and logs what it raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("splitproxy")

T = TypeVar("T")

_running: set[asyncio.Task[Any]] = set()


def _done(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background task %s failed", task.get_name(), exc_info=exc)


def spawn(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_done)
    return task


def running() -> frozenset[asyncio.Task[Any]]:
    return frozenset(_running)
