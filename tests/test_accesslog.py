"""Tier 1: the access log (proxy/accesslog.py) writing to a temporary file."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from proxy.accesslog import FLUSH_ROWS, AccessLog

FIELDS = {
    "ts",
    "pid",
    "client",
    "method",
    "path",
    "status",
    "route",
    "backend",
    "upstream",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "request_id",
    "by",
}


def entry(**changes: Any) -> dict[str, Any]:
    """Arguments of one ``AccessLog.request`` call."""
    args: dict[str, Any] = {
        "ts": 1700000000.123456,
        "client": b"203.0.113.7",
        "method": b"GET",
        "url": b"/items/42?x=1",
        "status": 200,
        "route": "shop",
        "backend": "canary",
        "upstream": "10.0.0.2:8000",
        "duration": 0.0123456,
        "bytes_in": 17,
        "bytes_out": 2048,
        "request_id": b"5f1c2a-1",
        "decided_by": "sticky",
    }
    args.update(changes)
    return args


def read_lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") or not text
    return [json.loads(line) for line in text.splitlines()]


def test_each_line_is_one_json_object_with_the_fields(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    assert log.enabled
    log.request(**entry())
    log.request(**entry(status=502, backend="stable", decided_by="weight", client=b"::1"))
    log.close()
    first, second = read_lines(path)
    assert first == {
        "ts": 1700000000.123,
        "client": "203.0.113.7",
        "method": "GET",
        "path": "/items/42?x=1",
        "status": 200,
        "route": "shop",
        "backend": "canary",
        "upstream": "10.0.0.2:8000",
        "duration_ms": 12.346,
        "bytes_in": 17,
        "bytes_out": 2048,
        "request_id": "5f1c2a-1",
        "by": "sticky",
        "pid": os.getpid(),
    }
    assert set(second) == FIELDS
    assert (second["status"], second["backend"], second["by"], second["client"]) == (
        502,
        "stable",
        "weight",
        "::1",
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(b'/search?q="quoted"', '/search?q="quoted"', id="double-quotes"),
        pytest.param(b"/a\\b\\", "/a\\b\\", id="backslashes"),
        pytest.param(b'/x\\"y', '/x\\"y', id="backslash-quote"),
        pytest.param("/café/日本".encode(), "/café/日本", id="utf-8"),
        pytest.param(b"/bad\xff\xfe", "/bad\ufffd\ufffd", id="invalid-utf-8"),
        pytest.param(b"/ctl\x00\x1b\t\r\n", "/ctl\x00\x1b\t\r\n", id="control-characters"),
        pytest.param(b"/del\x7f", "/del\x7f", id="del"),
        pytest.param(b"/\xe2\x80\xa8", "/\u2028", id="line-separator"),
    ],
)
def test_hostile_urls_stay_valid_json_on_one_line(tmp_path: Path, url: bytes, expected: str) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.request(**entry(url=url, request_id=url))
    log.request(**entry())
    log.close()
    raw = path.read_bytes()
    assert raw.count(b"\n") == 2  # a newline in the URL must not split the record
    first, second = read_lines(path)
    assert first["path"] == expected
    assert first["request_id"] == expected
    assert second["path"] == "/items/42?x=1"


def test_off_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    log = AccessLog("off")
    assert not log.enabled
    log.request(**entry())
    log.flush()
    log.close()
    assert os.listdir(tmp_path) == []


def test_lines_wait_in_the_buffer_until_flush(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    log.request(**entry())
    assert path.read_bytes() == b""
    log.flush()
    assert len(read_lines(path)) == 1
    log.flush()  # nothing new: nothing written twice
    assert len(read_lines(path)) == 1
    log.close()


def test_flushes_by_itself_once_enough_lines_gathered(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    url = b"/" + b"p" * 500
    written = 0
    while path.stat().st_size == 0:
        log.request(**entry(url=url, bytes_out=written))
        written += 1
        assert written <= FLUSH_ROWS, "no flush after FLUSH_ROWS lines"
    assert written == FLUSH_ROWS
    lines = read_lines(path)
    assert [line["bytes_out"] for line in lines] == list(range(written))
    # The buffer started again empty: the next line waits for the next flush.
    size = path.stat().st_size
    log.request(**entry(bytes_out=-1))
    assert path.stat().st_size == size
    log.close()
    assert read_lines(path)[-1]["bytes_out"] == -1


def test_appends_and_creates_directories(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "proxy" / "access.log"
    for status in (200, 404):
        log = AccessLog(str(path))
        log.request(**entry(status=status))
        log.close()
    assert [line["status"] for line in read_lines(path)] == [200, 404]


needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


@needs_dev_full
def test_a_full_disk_loses_lines_but_flush_does_not_raise() -> None:
    log = AccessLog("/dev/full")
    for _ in range(3):
        log.request(**entry())
        log.flush()  # ENOSPC, swallowed: a full disk must not take the proxy down
    with contextlib.suppress(OSError):  # see test_a_full_disk_does_not_make_close_raise
        log.close()


@needs_dev_full
def test_a_full_disk_does_not_make_close_raise() -> None:
    log = AccessLog("/dev/full")
    log.request(**entry())
    log.flush()
    log.close()


def test_a_path_under_a_file_names_the_file(tmp_path: Path) -> None:
    """QA (eighth round): it said "File exists", as state.path did before it was fixed."""
    from proxy.accesslog import AccessLogError

    (tmp_path / "al.yaml").write_text("x")
    with pytest.raises(AccessLogError, match=rf"{tmp_path / 'al.yaml'} is a file, not a directory"):
        AccessLog(str(tmp_path / "al.yaml" / "x.log"))
