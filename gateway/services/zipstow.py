"""STOW-RS of ZIP archives: each archive (a whole ``application/zip`` body, or a zip part of a
``multipart/related`` body) becomes the DICOM files in it, one upload part each, for
:meth:`gateway.services.stow.StowService.store_parts`.

The archive is checked as a whole before its first member is stored (gateway.dicom.ziparchive);
a refusal raised while members are extracted (a header that lied about a size, a nested
archive found by content) fails the request, and the STOW service then removes what the
request had stored. Members that are not instances (the DICOMDIR, a README, ``.DS_Store``)
are listed in ``skipped`` for the response, not stored and not failed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio

from gateway.dicom import ziparchive
from gateway.dicom.ziparchive import Skipped, ZipLimits
from gateway.services.stow import UploadedPart


@dataclass(frozen=True)
class ArchivePart:
    content_type: str | None
    path: Path


def is_archive(part: UploadedPart) -> bool:
    media = (part.content_type or "").split(";", 1)[0]
    return ziparchive.is_zip_media_type(media)


async def expand_archives(
    parts: AsyncIterator[UploadedPart], spool_dir: Path, limits: ZipLimits, skipped: list[Skipped]
) -> AsyncGenerator[UploadedPart, None]:
    """``parts`` with every ZIP part replaced by the DICOM files in it."""
    async for part in parts:
        if not is_archive(part):
            yield part
            continue
        # The multipart reader deletes a part's file when it reads on: take the archive over.
        owned = part.path.with_name(f".zipstow-{uuid.uuid4().hex}")
        os.replace(part.path, owned)
        try:
            async for member in expand_archive(owned, spool_dir, limits, skipped):
                yield member
        finally:
            owned.unlink(missing_ok=True)


async def expand_archive(
    path: Path, spool_dir: Path, limits: ZipLimits, skipped: list[Skipped]
) -> AsyncGenerator[UploadedPart, None]:
    """The DICOM files of the archive at ``path``, each spooled to a file of its own; the
    consumer takes a file over (moves it) before asking for the next, else it is removed."""
    archive = await anyio.to_thread.run_sync(ziparchive.open_archive, path)
    try:
        infos = await anyio.to_thread.run_sync(ziparchive.check_archive, archive, limits)
        for info in infos:
            item = await anyio.to_thread.run_sync(ziparchive.extract_member, archive, info, spool_dir)
            if isinstance(item, Skipped):
                skipped.append(item)
                continue
            try:
                yield ArchivePart("application/dicom", item.path)
            finally:
                item.path.unlink(missing_ok=True)
    finally:
        archive.close()
