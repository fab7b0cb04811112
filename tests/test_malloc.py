"""gateway.malloc: freed heap memory goes back to the kernel (the soak's RSS criterion).

Each check runs in a fresh interpreter: the test process's own heap is whatever earlier tests
left, and the figures are the process's resident anonymous memory, as an operator sees it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from gateway import malloc

pytestmark = pytest.mark.skipif(not malloc.trim_now(), reason="needs glibc (malloc_trim)")

# Fragment the heap from a worker thread as the gateway's threads do: ~110 MiB of blocks
# allocated, three in four freed, one in four kept (~27 MiB), so that free pages lie between live
# ones and no heap top is free for glibc to give back on its own (without a trim the process stays
# at ~117 MiB resident; after one, ~80 MiB).
_FRAGMENT = """
import threading
kept = []

def work():
    blocks = [bytearray(size) for size in (600, 2000, 5000) * 15000]
    kept.extend(blocks[::4])

thread = threading.Thread(target=work)
thread.start()
thread.join()

def anon_mib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
"""


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _FRAGMENT + textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_trim_returns_the_free_pages_between_live_blocks() -> None:
    out = _run(
        """
        from gateway.malloc import trim_now
        before = anon_mib()
        assert trim_now()
        print(before, anon_mib(), sum(len(b) for b in kept) / 2**20)
        """
    )
    before, after, live = map(float, out.split())
    assert before - after > 20, (before, after)
    assert after > live  # the live blocks stay, of course


def test_the_trimming_thread_trims_without_being_asked() -> None:
    out = _run(
        """
        import time
        from gateway.malloc import trim_periodically
        before = anon_mib()
        stop = trim_periodically(0.2)
        assert stop is not None
        time.sleep(1.0)
        stop()
        print(before, anon_mib())
        """
    )
    before, after = map(float, out.split())
    assert before - after > 20, (before, after)


def test_interval_zero_means_never() -> None:
    assert malloc.trim_periodically(0) is None
