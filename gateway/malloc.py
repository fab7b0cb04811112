"""Keep the serving process's resident memory close to what it uses: glibc malloc settings.

Arenas. glibc gives threads that allocate at the same time arenas of their own, up to eight per core.
The gateway's worker threads (``anyio.to_thread``: parsing, SQLite, boto3, rendering) come and
go, and what they free stays fragmented in those arenas: under steady load the resident size
climbed by ~30 MiB over the first minutes before levelling off (``bench/soak.py``, 10 requests/s;
about 10 MiB with two arenas). Two arenas are enough for a process whose Python code holds one
interpreter lock. An operator's own ``MALLOC_ARENA_MAX`` wins; without glibc this does nothing.

Trimming. glibc gives memory back to the kernel only from the top of a heap; pages freed in the
middle stay resident until reused. Under load, short peaks (SQLite's reader page caches, dropped
and refilled whenever another connection wrote; a batch of parsed instances) leave such holes, so
the resident size follows the highest peak seen so far rather than the memory in use: +5 % over
30 minutes of steady load with the embedded index (``bench/soak.py``), in a process whose Python
heap stayed flat. ``malloc_trim(0)`` returns every whole free page of every arena
(``MADV_DONTNEED``), so a thread calls it every :data:`TRIM_INTERVAL` seconds (setting
``memory_trim_interval``); on a 200 MiB heap it takes 4–20 ms, with the interpreter lock
released. A real leak still shows: trimming returns only what was freed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from collections.abc import Callable

M_ARENA_MAX = -8  # <malloc.h>
ARENAS = 2
TRIM_INTERVAL = 30.0

log = logging.getLogger(__name__)


def cap_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Limit glibc to ``arenas`` malloc arenas; True when it took effect. Call before threads start."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))  # musl's mallopt is a stub answering 0


def _malloc_trim() -> Callable[[], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


def trim_now() -> bool:
    """Return the heap's free pages to the kernel once; False when this libc cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim()
    return True


def trim_periodically(interval: float = TRIM_INTERVAL) -> Callable[[], None] | None:
    """Start a daemon thread that trims the heap every ``interval`` seconds; returns what stops
    it, or None when this libc cannot trim (or ``interval`` is 0)."""
    trim = _malloc_trim()
    if trim is None or interval <= 0:
        return None
    stopped = threading.Event()

    def loop() -> None:
        while not stopped.wait(interval):
            try:
                trim()
            except Exception:  # never let housekeeping take the process down
                log.exception("malloc_trim failed")
                return

    threading.Thread(target=loop, name="malloc-trim", daemon=True).start()
    return stopped.set
