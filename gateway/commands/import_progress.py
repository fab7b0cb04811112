"""The progress line of ``dicomweb-gateway import`` on stderr: files, bytes, rate and ETA.

On a terminal one line is redrawn in place (``\\r``) a few times a second; into a file or a
pipe (a log, a CI job) a whole line is written every ``interval`` seconds instead, so the log
neither fills with redraws nor stays silent for hours.
"""

from __future__ import annotations

import time
from typing import TextIO

import anyio

from gateway.services.bulk_import import ImportProgress

TTY_REFRESH = 0.5  # seconds between redraws on a terminal


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def progress_line(p: ImportProgress, now: float | None = None) -> str:
    if p.listing:
        return f"import: listing the sources, {p.files_total} file(s) to import so far"
    elapsed = max(1e-6, (now if now is not None else time.monotonic()) - p.started)
    rate = p.files_done / elapsed
    byte_rate = p.bytes_done / elapsed
    left = p.bytes_total - p.bytes_done
    eta = human_duration(left / byte_rate) if byte_rate > 0 and p.files_done else "?"
    return (
        f"import: {p.files_done}/{p.files_total} files, {human_bytes(p.bytes_done)}/{human_bytes(p.bytes_total)},"
        f" {rate:.1f} files/s, {human_bytes(byte_rate)}/s, ETA {eta}"
    )


def summary_line(p: ImportProgress, elapsed: float, *, interrupted: bool) -> str:
    c = p.counts
    rate = p.files_done / elapsed if elapsed > 0 else 0.0
    byte_rate = p.bytes_done / elapsed if elapsed > 0 else 0.0
    line = (
        f"import: {c['stored']} stored, {c['duplicate']} duplicate, {c['skipped']} skipped, {c['failed']} failed;"
        f" {p.files_done} file(s), {human_bytes(p.bytes_done)} read in {elapsed:.1f} s"
        f" ({rate:.1f} files/s, {human_bytes(byte_rate)}/s)"
    )
    if interrupted:
        line += f"; interrupted with {p.files_total - p.files_done} file(s) left: run the same command again to resume"
    return line


async def show_progress(p: ImportProgress, out: TextIO, *, interval: float) -> None:
    """Write the progress line until cancelled."""
    tty = out.isatty()
    while True:
        await anyio.sleep(TTY_REFRESH if tty else interval)
        if tty:
            out.write("\r\x1b[2K" + progress_line(p))
        else:
            out.write(progress_line(p) + "\n")
        out.flush()


def end_progress(out: TextIO) -> None:
    """Leave the terminal line the progress redraws, so what follows starts on its own."""
    if out.isatty():
        out.write("\r\x1b[2K")
        out.flush()
