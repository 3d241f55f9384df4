"""Field paths: the grammar of ``ignore_fields`` and ``redact_fields`` patterns. Pure.

``$.a["b.c"][0].items[*].{id}``: ``.name`` and ``["name"]`` (a JSON string, for any other
key) are object keys, ``[N]`` an index, ``[*]`` any index, ``.*`` any key, ``.{id}`` any key
too (the report's field keys fold id-like keys, and every name of an object wider than
``diffing.WIDE_OBJECT``, to it; until 2026-12-05 it matched id-like keys only). Any field
key of the report is a valid pattern. Used by the config check (every pattern is parsed
when the config is read) and by the diff (proxy/diffing.py compiles them).
"""

from __future__ import annotations

import json
import re
from typing import Final

ANY_INDEX: Final = object()  # "[*]"
ANY_KEY: Final = object()  # ".*"
ID: Final = object()  # ".{id}"
_NAME_RE: Final = re.compile(r"\.([^.\[\]]+)")
_INDEX_RE: Final = re.compile(r"\[(\*|[0-9]+)\]")
_QUOTED_RE: Final = re.compile(r"\[(\"(?:[^\"\\]|\\.)*\")\]")


def parse_field_path(text: str) -> tuple[object, ...]:
    """Segments of ``$.a["b.c"][0].items[*].{id}``; raises ``ValueError`` naming the position."""
    return tuple(seg for seg, _ in field_path_spans(text))


def field_path_spans(text: str) -> tuple[tuple[object, int], ...]:
    """``parse_field_path``'s segments, each with where it ends in ``text``: ``text[:end]`` is
    the path down to that segment."""
    if not text.startswith("$"):
        raise ValueError(f"must start with '$', e.g. '$.meta.generated_at', got {text!r}")
    out: list[tuple[object, int]] = []
    pos = 1
    while pos < len(text):
        if m := _NAME_RE.match(text, pos):
            name = m.group(1)
            if ("{" in name or "}" in name) and name != "{id}":
                # "$.products.{sku}.price", as endpoint templates write names, was a member
                # named "{sku}": a redaction that matched nothing (QA, sixteenth session)
                raise ValueError(
                    f"bad field path {text!r} at position {pos}: only .{{id}} stands for any name"
                    f" (or .*); a member named {name!r} is written [{json.dumps(name)}]"
                )
            out.append((ANY_KEY if name == "*" else ID if name == "{id}" else name, m.end()))
        elif m := _INDEX_RE.match(text, pos):
            out.append((ANY_INDEX if m.group(1) == "*" else int(m.group(1)), m.end()))
        elif m := _QUOTED_RE.match(text, pos):
            try:
                out.append((json.loads(m.group(1)), m.end()))
            except ValueError:
                raise ValueError(f"bad field path {text!r} at position {pos}: not a JSON string") from None
        else:
            raise ValueError(f'bad field path {text!r} at position {pos}: expected .name, [N], [*] or ["name"]')
        pos = m.end()
    return tuple(out)
