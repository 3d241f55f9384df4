# proxy._jsondiff: native/jsondiff.c, built by setup.py (optional: absent without a C compiler).
from collections.abc import Callable
from typing import Any

def diff(
    live: bytes,
    shadow: bytes | None,
    child: Callable[[str, str], tuple[str, str]],
    absent: object,
    ignored: object,
    trie: object,
    max_depth: int,
    room: int,
    /,
) -> tuple[list[str], list[tuple[str, str, str, Any, Any]]] | None: ...
def build_on_live(min_size: int, descend_min: int = 128, /) -> tuple[int, int]: ...
def counts() -> tuple[int, int]: ...
