# proxy._jsondiff: native/jsondiff.c, built by setup.py (optional: absent without a C compiler).
from collections.abc import Callable
from typing import Literal

def diff(
    live: bytes,
    shadow: bytes | None,
    child: Callable[[str, str], tuple[str, str]],
    render: Callable[[object], str],
    ignored: object,
    trie: object,
    max_depth: int,
    room: int,
    reuse: str | None = None,
    max_fields: int = -1,
    render_pair: Callable[[str, str], tuple[str, str]] | None = None,
    /,
) -> tuple[list[str], list[tuple[str, str, str | None, str | None, str]]] | Literal[False] | None: ...
def build_on_live(min_size: int, descend_min: int = 128, /) -> tuple[int, int]: ...
def parse_only(body: bytes, /) -> int | None: ...
def counts() -> tuple[int, int]: ...
def scanned() -> int: ...
def kept() -> tuple[int, int, int, int, int]: ...
def forget() -> None: ...
