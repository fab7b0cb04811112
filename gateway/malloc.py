"""Cap glibc's malloc arenas in the serving process.

glibc gives threads that allocate at the same time arenas of their own, up to eight per core.
The gateway's worker threads (``anyio.to_thread``: parsing, SQLite, boto3, rendering) come and
go, and what they free stays fragmented in those arenas: under steady load the resident size
climbed by ~30 MiB over the first minutes before levelling off (``bench/soak.py``, 10 requests/s;
about 10 MiB with two arenas). Two arenas are enough for a process whose Python code holds one
interpreter lock. An operator's own ``MALLOC_ARENA_MAX`` wins; without glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_ARENA_MAX = -8  # <malloc.h>
ARENAS = 2


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
