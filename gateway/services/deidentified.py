"""De-identified views: what a principal marked for it (an API key, a token claim, a DIMSE
client with ``deidentify = "basic"``) receives instead of the stored data, and how its requests,
which name de-identified UIDs, find the stored instances.

The front doors call this one service where they would hand out data (QIDO rows, metadata,
Part 10 instances) and where a request names UIDs (a path, a query, a C-FIND or C-MOVE
identifier). The profile itself is :mod:`gateway.dicom.deidentify`.

Resolving back: a replacement UID is a keyed hash, so it cannot be reversed; the service
remembers every pair it hands out (bounded), and a replacement it does not know, after a restart
or on another replica, is looked for by hashing the UIDs the index holds (one pass over the
index, remembered). A UID the gateway never handed out resolves to nothing: the original UIDs do
not work for a de-identified principal. Dummies (a Patient ID's ``ANON...``) are keyed hashes
too, and found back the same way: by hashing the values of that attribute the index holds.

Matching (QIDO, C-FIND) on an attribute the profile changes would let a de-identified principal
learn the stored value one guess at a time (``PatientName=DOE*``): such a query is refused. UIDs
are matched after resolving them back; attributes the profile keeps match as usual.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio
import orjson

from gateway.dicom.attributes import SERIES_INSTANCE_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID
from gateway.dicom.deidentify import BURNED_IN_ANNOTATION, Deidentifier, ProfileOptions, forget_hashes, table_actions
from gateway.dicom.deidentify_bytes import JsonBytesRewriter
from gateway.dicom.deidentify_part10 import deidentified_part10
from gateway.dicom.query import Match, QidoQuery
from gateway.dicom.restriction import Restriction
from gateway.errors import BadRequest
from gateway.ports import DicomJson, Index, InstanceRecord
from gateway.services.singleflight import SingleFlightCache
from gateway.settings import DeidentifySettings, Settings

# Pairs remembered (each ~150 bytes): beyond this the oldest are looked for again when asked.
MAX_REMEMBERED = 500_000
# De-identified metadata answers kept (see DeidentifiedViews.metadata_answer); each counts twice,
# for the stored metadata its key holds as well.
METADATA_ANSWERS_BYTES = 64 << 20
RELEARN_SECONDS = 10.0
_PAGE = 1000  # entities asked of the index at once when their values are hashed
# Stored metadata of an answer worked out on the event loop (see DeidentifiedViews.metadata_answer):
# about 2 ms of work at most.
_IN_PLACE_BYTES = 256 << 10
_UNKNOWN = "0.0"  # a valid UID no instance has: an unknown replacement matches nothing
_NO_VALUE = "\x7f"  # a value no stored text has (DEL is in no DICOM character repertoire)
_BURNED_IN_KEY = f'"{BURNED_IN_ANNOTATION}"'.encode("ascii")
_YES = re.compile(rb"[Yy][Ee][Ss]")
_UID_TAGS = frozenset({STUDY_INSTANCE_UID, SERIES_INSTANCE_UID, SOP_INSTANCE_UID})


def profile_options(settings: DeidentifySettings) -> ProfileOptions:
    return ProfileOptions(
        full_dates=settings.retain_full_dates,
        modified_dates=settings.retain_modified_dates,
        patient_characteristics=settings.retain_patient_characteristics,
        device=settings.retain_device_identity,
        institution=settings.retain_institution_identity,
        serve_burned_in=settings.serve_burned_in_annotation,
    )


def deidentify_key(settings: Settings) -> bytes:
    """``deidentify.key``, or the random key in ``{data_dir}/deidentify.key`` (made on first
    use, readable by the owner only, never replaced: every UID handed out depends on it)."""
    if settings.deidentify.key:
        return settings.deidentify.key.encode("utf-8")
    path = settings.data_dir / "deidentify.key"
    with contextlib.suppress(FileNotFoundError):
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    _create_key_file(path)
    return bytes.fromhex(path.read_text(encoding="ascii").strip())


def _create_key_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process made it first: its key is the key
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


class DeidentifiedViews:
    """The profile with the site's key and options, and the way back from its UIDs."""

    def __init__(self, index: Index, key: Callable[[], bytes], options: ProfileOptions) -> None:
        # The key is read (or made) when a de-identified principal first asks: a gateway without
        # one never writes a key file.
        self._index = index
        self._key = key
        self._options = options
        table_actions(options)  # the table for these options, before the first answer needs it
        self._profile: Deidentifier | None = None
        self._originals: OrderedDict[str, str] = OrderedDict()
        self._pseudonyms: OrderedDict[str, str] = OrderedDict()
        # Answers are de-identified in worker threads and on pynetdicom's threads at once.
        self._remembering = threading.Lock()
        self._learning = anyio.Lock()
        self._learned_at: float | None = None
        self._values_learned_at: dict[str, float] = {}  # an attribute: when its values were last hashed
        self._metadata_answers: SingleFlightCache[tuple[bytes, ...], bytes] = SingleFlightCache(
            "deidentified_metadata", max_bytes=METADATA_ANSWERS_BYTES, size=lambda answer: 2 * len(answer)
        )

    @property
    def profile(self) -> Deidentifier:
        if self._profile is None:
            self._profile = Deidentifier(
                self._key(), self._options, on_uid=self._remember, on_pseudonym=self._remember_pseudonym
            )
        return self._profile

    def _remember(self, original: str, replacement: str) -> None:
        _remember_in(self._originals, self._remembering, replacement, original)

    def _remember_pseudonym(self, original: str, pseudonym: str) -> None:
        _remember_in(self._pseudonyms, self._remembering, pseudonym, original)

    # -- requests: from de-identified UIDs to stored ones ----------------------------------------

    async def original(self, replacement: str) -> str:
        """The stored UID ``replacement`` stands for; ``0.0`` (no instance) when none."""
        found = self._originals.get(replacement)
        if found is None:
            found = await self._learn_index(replacement)
        return found or _UNKNOWN

    async def originals(self, study: str, series: str | None, sop: str | None) -> tuple[str, str | None, str | None]:
        return (
            await self.original(study),
            None if series is None else await self.original(series),
            None if sop is None else await self.original(sop),
        )

    async def _learn_index(self, wanted: str) -> str | None:
        """Hash every UID the index holds, remembering each pair (see the module); the original
        of ``wanted`` when it is among them (the pass may hold more UIDs than are remembered).
        One pass at a time, and at most one per ``RELEARN_SECONDS``: unknown UIDs sent on purpose
        cannot make the gateway scan its index over and over."""
        async with self._learning:
            now = time.monotonic()
            if self._learned_at is not None and now - self._learned_at < RELEARN_SECONDS:
                return self._originals.get(wanted)  # perhaps learned by the pass just made
            self._learned_at = now
            found = None
            seen: set[str] = set()
            async for key in self._index.instance_keys():
                for uid in key:
                    if uid not in seen:
                        seen.add(uid)
                        if self.profile.uid(uid) == wanted:
                            found = uid
            return found

    async def _learn_values(self, match: Match, restriction: Restriction | None, wanted: str) -> str | None:
        """Work out the dummy of every value of ``match``'s attribute the index holds (one
        pass over its entities at the attribute's level, as this principal may see them),
        remembering each pair: the value ``wanted`` stands for when it is among them. A dummy
        is a keyed hash of its value, so any replica, or this one after a restart, finds the
        value of a dummy it never handed out itself. At most one pass per attribute per
        ``RELEARN_SECONDS``, as for UIDs (:meth:`_learn_index`)."""
        async with self._learning:
            now = time.monotonic()
            learned_at = self._values_learned_at.get(match.tag)
            if learned_at is not None and now - learned_at < RELEARN_SECONDS:
                return self._pseudonyms.get(wanted)  # perhaps learned by the pass just made
            self._values_learned_at[match.tag] = now
            found = None
            seen: set[str] = set()
            page = QidoQuery(level=match.level, includes=frozenset({match.tag}), limit=_PAGE, restriction=restriction)
            while True:
                result = await self._index.search(page)
                for row in result.rows:
                    for value in (row.get(match.tag) or {}).get("Value") or ():
                        # The text a dummy is made of: a name's alphabetic group, as the answers do.
                        text = str(value.get("Alphabetic", "") if isinstance(value, dict) else value)
                        if text not in seen:
                            seen.add(text)
                            if self.profile.pseudonym(text) == wanted:
                                found = text
                if not result.more or not result.rows:
                    return found
                page = dataclasses.replace(page, offset=page.offset + len(result.rows))

    async def original_query(self, query: QidoQuery) -> QidoQuery:
        """``query`` (from a de-identified principal) over the stored data: UIDs resolved back;
        matching on what the profile changes refused (400)."""
        matches = [await self._original_match(match, query) for match in query.matches]
        study = None if query.study is None else await self.original(query.study)
        series = None if query.series is None else await self.original(query.series)
        includes = query.includes
        if query.level == "instance" and not self.profile.options.serve_burned_in:
            includes |= {BURNED_IN_ANNOTATION}  # so that :meth:`rows` can leave withheld instances out
        return dataclasses.replace(query, matches=tuple(matches), study=study, series=series, includes=includes)

    async def _original_match(self, match: Match, query: QidoQuery) -> Match:
        if match.kind == "universal":
            return match  # a return key (C-FIND), nothing matched on
        if match.tag in _UID_TAGS or (match.vr == "UI" and self.profile.action(match.tag) == "U"):
            values = tuple([await self.original(v) for v in match.values])
            value = "\\".join(values)
            return dataclasses.replace(match, value=value, values=values)
        action = self.profile.action(match.tag)
        if action == "D" and match.kind == "single":
            # A dummy this gateway handed out (a viewer looking for the priors of the Patient ID
            # it was shown) matches what it stands for; any other value matches nothing.
            pseudonym = match.value.rstrip("^")
            original = self._pseudonyms.get(pseudonym)
            if original is None:
                original = await self._learn_values(match, query.restriction, pseudonym)
            original = _NO_VALUE if original is None else original
            return dataclasses.replace(match, value=original, values=(original,))
        if action not in (None, "K"):
            raise BadRequest(
                f"{match.keyword} cannot be matched: it is de-identified in the answers to this principal"
                " (PS3.15 E.1 Basic Application Level Confidentiality Profile)"
            )
        return match

    # -- answers: what the principal receives ----------------------------------------------------

    def rows(self, rows: Sequence[DicomJson], asked: QidoQuery) -> list[DicomJson]:
        """QIDO rows or C-FIND identifiers for the query ``asked`` (before
        :meth:`original_query`), de-identified (only the attributes they carry); at instance
        level without the withheld instances."""
        out = []
        for row in rows:
            if asked.level == "instance" and self.profile.withholds(row):
                continue
            if BURNED_IN_ANNOTATION not in asked.includes and not asked.include_all:
                row = {tag: element for tag, element in row.items() if tag != BURNED_IN_ANNOTATION}
            out.append(self.profile.json_dataset(row, mark=False))
        return out

    def visible(self, records: Sequence[InstanceRecord]) -> list[InstanceRecord]:
        """The instances the principal may receive: burned in annotation withheld (PS3.15 E.1.1
        leaves pixel data to the Clean Pixel Data option, which this gateway does not offer)."""
        if _BURNED_IN_KEY not in b"".join([r.metadata for r in records]):
            return list(records)  # the attribute is in none of them: one look, not one per record
        return [r for r in records if not self.withholds(r)]

    def withholds(self, record: InstanceRecord) -> bool:
        return _may_say_burned_in(record.metadata) and self.profile.withholds(_metadata(record))

    def sends_bulkdata(self, path: str) -> bool:
        """Whether the value a BulkDataURI path names (``7FE00010``, ``00540016/0/00181072``) is
        kept by the profile: a removed or replaced one is not served."""
        tags = [part.upper() for part in path.split("/") if len(part) == 8]
        return all(self.profile.action(tag) in (None, "K") for tag in tags)

    async def metadata_answer(self, instances: Iterable[bytes]) -> bytes:
        """:meth:`metadata_body` of ``instances``, worked out the first time these instances
        are asked for and kept (bounded, least recently used first), so that the next request
        for them (a viewer opening the study again, another reader of the series) costs about
        what a plain answer does. The key is the stored metadata itself: an instance stored
        again with other metadata is a new key, never an old answer. An answer of up to
        ``_IN_PLACE_BYTES`` of stored metadata (a few hundred instances) is worked out on the
        event loop, in less time than handing it to a worker thread takes; a larger one in a
        worker thread."""
        stored = tuple(instances)
        return await self._metadata_answers.get(stored, lambda: self._worked_out(stored))

    async def _worked_out(self, stored: tuple[bytes, ...]) -> bytes:
        if sum(map(len, stored)) <= _IN_PLACE_BYTES:
            return self.metadata_body(stored)
        return await anyio.to_thread.run_sync(self.metadata_body, stored)

    def forget(self) -> None:
        """Let go of what was learned and kept, as a restart does (a benchmark timing first
        requests): the kept answers, the pairs handed out, the profile's remembered hashes."""
        with self._remembering:
            self._originals.clear()
            self._pseudonyms.clear()
        self._metadata_answers.clear()
        self._profile = None
        self._learned_at = None
        self._values_learned_at.clear()
        forget_hashes()

    def metadata_body(self, instances: Iterable[bytes]) -> bytes:
        """A metadata answer (a DICOM JSON array) of ``instances`` (the DICOM JSON of each, as
        the index keeps it), de-identified, each instance marked so: rewritten as bytes
        (:mod:`gateway.dicom.deidentify_bytes`), one instance at a time."""
        return JsonBytesRewriter(self.profile).answer(instances)

    def part10(self, data: bytes) -> bytes:
        """A Part 10 instance de-identified (pixel data bytes unchanged)."""
        return deidentified_part10(data, self.profile)


def _remember_in(pairs: OrderedDict[str, str], lock: threading.Lock, replacement: str, original: str) -> None:
    with contextlib.suppress(KeyError):  # forgotten meanwhile by another thread
        if pairs.get(replacement) == original:  # remembered already (a series' UIDs, instance after instance)
            pairs.move_to_end(replacement)
            return
    with lock:
        pairs[replacement] = original
        pairs.move_to_end(replacement)
        if len(pairs) > MAX_REMEMBERED:
            pairs.popitem(last=False)


def _may_say_burned_in(metadata: bytes) -> bool:
    """Whether stored metadata may hold Burned In Annotation ``YES``: without the attribute's
    tag and those letters (orjson escapes no ASCII letter) it cannot, and is not parsed."""
    return _BURNED_IN_KEY in metadata and _YES.search(metadata) is not None


def _metadata(record: InstanceRecord) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(record.metadata)
    return value
