"""Tier 1: the settings a serving process makes for itself (proxy/process.py), each checked in
a fresh interpreter, since they are process-wide."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Sixteen 64 KiB blocks made and dropped, 200 times, after one round to warm up: what a
# proxy capturing bodies for the shadow diff does, a few requests at a time. Prints the
# page faults. "default" sets the thresholds glibc starts with (128 KiB both), which it
# raises by itself once it has unmapped a larger block: what an interpreter did before the
# test (imports, a build's extension modules) would otherwise decide what it measures.
CHURN = textwrap.dedent(
    """
    import ctypes, resource, sys
    from proxy import process
    if sys.argv[1] == "tuned":
        assert process.keep_freed_memory()
    else:
        mallopt = ctypes.CDLL(None).mallopt
        assert mallopt(process._M_MMAP_THRESHOLD, 128 << 10) and mallopt(process._M_TRIM_THRESHOLD, 128 << 10)

    def request():
        bodies = [b"x" * 65536 for _ in range(16)]
        del bodies

    request()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(200):
        request()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, timeout=60, check=True)
    return int(done.stdout)


def test_freed_memory_is_kept_for_the_next_requests() -> None:
    # glibc's thresholds hand the freed blocks back to the kernel every round (16 pages
    # each, faulted in again); tuned, the same pages serve every round.
    default, tuned = faults("default"), faults("tuned")
    assert default >= 200 * 16 * 16 // 2, default
    assert tuned < 50, tuned


def test_settle_freezes_and_tunes_the_collector() -> None:
    code = textwrap.dedent(
        """
        import gc
        from proxy import process
        process.settle()
        assert gc.get_threshold()[0] == 50_000
        assert gc.get_freeze_count() > 0
        """
    )
    subprocess.run([sys.executable, "-c", code], timeout=60, check=True)
