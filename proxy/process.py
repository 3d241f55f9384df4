"""Process-wide settings for a serving process: `splitproxy run` (or `demo`) alone, or each of
its workers, once it is listening. Two runtimes it shares with every library in the process:

- the cycle collector: what was allocated while starting lives as long as the process, so it
  is frozen out of the collector's passes, and the young generation may grow before a pass
  (the hot path makes few reference cycles; shared/PERF-NOTES.md: +6 % requests/s, better p99);
- glibc's allocator, whose defaults suit a process that allocates once and keeps it, not one
  that makes and drops several 64 KiB bodies a request (below).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
from typing import Final

log = logging.getLogger("splitproxy.process")

# mallopt() parameters, <malloc.h>
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
# Free memory glibc keeps at the top of its heap before giving it back to the kernel.
TRIM_THRESHOLD: Final = 32 << 20
# Blocks at least this large are mapped (and unmapped when freed) on their own.
MMAP_THRESHOLD: Final = 4 << 20


def settle() -> None:
    """Call once the process serves: collector frozen and tuned, allocator tuned."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    if keep_freed_memory():
        log.info("allocator: glibc keeps up to %d MiB of freed memory for reuse", TRIM_THRESHOLD >> 20)
    else:
        log.info("allocator: not glibc, left as it is")


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for the next requests instead of returning it at once.

    By default glibc gives the top of its heap back to the kernel as soon as 128 KiB there is
    free, and serves blocks of 128 KiB or more from mappings of their own, unmapped on free.
    A proxy that captures bodies for the shadow diff makes and drops a few 64 KiB blocks a
    request (the live and shadow captures, the parser's copies), so its heap grew and shrank
    by them every request: ~25 page faults a request, each a zeroed page charged to the
    cgroup, ~16 % of the CPU of a mirrored 64 KiB JSON request (bench/README.md). Up to
    TRIM_THRESHOLD of free memory is kept instead (RSS does not grow by it: only what was in
    use at a peak is kept), and blocks below MMAP_THRESHOLD come from the heap.

    True when set; False where the C library is not glibc (musl, macOS: other allocators).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  # glibc only: mallopt's parameters are its own
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
