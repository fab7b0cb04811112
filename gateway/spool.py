"""Per-process spool directories, so that what a killed gateway leaves in the spool does not pile up.

A STOW spools each received part to a file (``gateway.dicom.multipart``) and deletes it once the
instance is stored or refused; instances received from a PACS and copies being forwarded to one
wait in its ``pacs`` subdirectory the same way (``gateway.services.bundle.pacs_spool_dir``). A process
killed mid-request (SIGKILL, OOM killer, power cut) never gets to delete its files, and the
spool is shared: several gateway processes may use one data directory. So each process spools
under a directory of its own, ``{spool_dir}/stow-{pid}-{start}-{host}``, and a directory whose
process is no longer running is removed whole: at start-up (:func:`sweep_dead_spools`, called
by ``serve``) and by ``dicomweb-gateway reindex --repair``.

``start`` is the process's start time (Linux ``/proc/PID/stat``), so a recycled pid is not
mistaken for the dead process; ``host`` keeps processes of other machines sharing the directory
(a network volume) out of it: their liveness cannot be checked from here, so they are left alone.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
from pathlib import Path

_PREFIX = "stow-"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def process_spool_dir(root: Path) -> Path:
    """This process's spool directory under ``root`` (not created here)."""
    return root / (_PREFIX + _tag(os.getpid()))


def sweep_dead_spools(root: Path, *, remove: bool = True) -> int:
    """Remove the spool directories of this host's processes that are not running any more;
    returns how many files they held (``remove=False``: only count). Safe while other gateway
    processes run."""
    host = _host()
    removed = 0
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    for entry in entries:
        owner = _owner(entry.name)
        if owner is None or not entry.is_dir(follow_symlinks=False):
            continue
        pid, start, entry_host = owner
        if entry_host != host or _running(pid, start):
            continue
        removed += sum(1 for path in Path(entry.path).rglob("*") if not path.is_dir())
        if remove:
            shutil.rmtree(entry.path, ignore_errors=True)
    return removed


@functools.cache
def _tag(pid: int) -> str:
    # Cached per pid: a forked child computes its own.
    return f"{pid}-{_start_time(pid) or '0'}-{_host()}"


def _host() -> str:
    return _UNSAFE.sub("_", socket.gethostname()) or "localhost"


def _owner(name: str) -> tuple[int, str, str] | None:
    """(pid, start, host) of a spool directory name; None for other names."""
    if not name.startswith(_PREFIX):
        return None
    parts = name[len(_PREFIX) :].split("-", 2)
    if len(parts) != 3 or not parts[0].isdigit():
        return None
    return int(parts[0]), parts[1], parts[2]


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3 onwards of ``/proc/PID/stat`` (after the command name, which may hold spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None  # field 22: starttime


def _running(pid: int, start: str) -> bool:
    """Whether the process that made a spool directory still runs. When unsure: yes."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    fields = _proc_stat(pid)
    if fields is None:
        return True  # no /proc here: the pid exists, assume it is the same process
    if fields[0] == "Z":
        return False  # exited, not yet reaped by its parent
    return start == "0" or len(fields) <= 19 or fields[19] == start
