"""How much memory the SQLite library behind :mod:`sqlite3` holds, for the metrics.

SQLite allocates its page caches, prepared statements and schema outside Python's allocator, so
neither ``tracemalloc`` nor the Python heap shows them; ``sqlite3_memory_used()`` (the library's
own counter) does. Read through ctypes from the very library the ``_sqlite3`` extension is linked
with: a second copy of SQLite would count nothing of ours. Where the extension links SQLite
statically or the counter is compiled out, the figure is unknown (None).
"""

from __future__ import annotations

import _sqlite3
import ctypes
import functools

__all__ = ["sqlite_memory_used"]


@functools.cache
def _counter() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        # dlsym on the extension's handle searches the extension and the libraries it was
        # linked with, so this finds the libsqlite3 already loaded into the process.
        function = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_int64
    function.argtypes = []
    return function


def sqlite_memory_used() -> int | None:
    """Bytes SQLite has allocated and not freed, across every connection of this process."""
    counter = _counter()
    return None if counter is None else int(counter())
