"""What a bulk import has already done, so that a second run (after Ctrl-C, a crash, or to
pick up new files) skips it cheaply: a JSON-lines file, one line per file finished.

A file is finished when it was stored, found stored already (an identical duplicate), or found
not to be an instance (skipped); failures are not recorded, so the next run tries them again.
A line is appended only after the store service returned, that is after the instance is
durable (gateway.services.instance_writer), and flushed to the operating system at once: a
killed process loses at most the lines of instances whose store had not returned, and those
are found stored as identical duplicates on the next run, never stored twice.

A file is the same file when its name, size and version (modification time, ZIP member CRC,
S3 ETag: gateway.ports.SourceEntry) are. The file is held under an exclusive lock
(``flock``) for the run, so two imports cannot share it; a torn last line (a kill in the
middle of a write) is ignored when the file is read.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

from gateway.errors import Conflict
from gateway.ports import SourceEntry


class StateInUse(Conflict):
    """Another import holds the state file."""


@dataclass(frozen=True, slots=True)
class DoneFile:
    """How an earlier run finished a file: its outcome (stored, duplicate, skipped), the SOP
    Instance UID when it was an instance, and the reason it was skipped."""

    outcome: str
    sop_instance_uid: str | None
    reason: str | None


def _key(entry: SourceEntry) -> tuple[str, int, str]:
    return entry.name, entry.size, entry.version


class ImportState:
    """The state file of one import, open and locked; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = path.open("ab+")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise StateInUse(f"another import is running with the state file {path}") from None
        self._done: dict[tuple[str, int, str], DoneFile] = {}
        self._file.seek(0)
        torn = False
        for line in self._file:
            try:
                row = orjson.loads(line)
                done = DoneFile(row["outcome"], row.get("sop_instance_uid"), row.get("reason"))
                self._done[(row["file"], row["size"], row["version"])] = done
            except (orjson.JSONDecodeError, KeyError, TypeError):
                torn = True  # only the last line can be torn: the one a kill cut short
        if torn or not line_ended(self._file):
            self._file.write(b"\n")  # what follows starts on a line of its own
            self._file.flush()

    def __len__(self) -> int:
        return len(self._done)

    def done(self, entry: SourceEntry) -> DoneFile | None:
        return self._done.get(_key(entry))

    def record(self, entry: SourceEntry, done: DoneFile) -> None:
        """Remember ``entry`` as finished (appended and flushed at once)."""
        self._done[_key(entry)] = done
        row = {
            "file": entry.name,
            "size": entry.size,
            "version": entry.version,
            "outcome": done.outcome,
            "sop_instance_uid": done.sop_instance_uid,
            "reason": done.reason,
        }
        self._file.write(orjson.dumps(row) + b"\n")
        self._file.flush()

    def close(self) -> None:
        """Write what is buffered through to the disk, and let another import have the file."""
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def line_ended(f: IO[bytes]) -> bool:
    """Whether the file is empty or ends with a newline."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return True
    f.seek(size - 1)
    last = f.read(1)
    f.seek(0, os.SEEK_END)
    return last == b"\n"
