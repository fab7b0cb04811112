"""STOW-RS endpoints: ``POST {base}/studies[/{study}]`` (PS3.18 10.5)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

import anyio
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gateway.dicom import uids
from gateway.dicom.media import APPLICATION_DICOM, APPLICATION_DICOM_JSON, MULTIPART_RELATED, parse_content_type
from gateway.dicom.multipart import MultipartLimits, iter_parts
from gateway.dicom.ziparchive import Skipped, ZipLimits, is_zip_media_type
from gateway.errors import BadRequest, ClientDisconnected, PayloadTooLarge, UnsupportedMediaType
from gateway.http.context import base_url, gateway_of
from gateway.http.middleware.security import restriction_of
from gateway.http.warning_header import add_warnings
from gateway.services.stow import StowOutcome
from gateway.services.stow_response import MAX_NOTES, store_instances_response
from gateway.services.zipstow import expand_archive, expand_archives
from gateway.spool import process_spool_dir


async def store_instances(request: Request) -> Response:
    gw = gateway_of(request)
    limits = gw.settings.limits
    study = request.path_params.get("study")
    if study is not None:
        uids.require_uid(study, "StudyInstanceUID")
    raw_type = request.headers.get("content-type")
    if not raw_type:
        raise UnsupportedMediaType(
            'STOW-RS needs Content-Type: multipart/related; type="application/dicom" (PS3.18 10.5.1)'
        )
    media, params = parse_content_type(raw_type)
    # ZIP archives (issue #5): the whole body, or zip parts of a multipart body (services/zipstow.py).
    skipped: list[Skipped] = []
    zip_limits = ZipLimits(
        max_entries=limits.max_parts, max_entry_bytes=limits.max_part_bytes, max_total_bytes=limits.max_body_bytes
    )
    if is_zip_media_type(media):
        return await _store_archive(request, study, zip_limits, skipped)
    if media != MULTIPART_RELATED:
        raise UnsupportedMediaType(
            f'STOW-RS takes multipart/related; type="application/dicom", not {media or "no Content-Type"}'
            " (PS3.18 10.5.1)"
        )
    part_type = params.get("type", APPLICATION_DICOM).lower()
    if part_type != APPLICATION_DICOM and not is_zip_media_type(part_type):
        raise UnsupportedMediaType(
            f'multipart/related type "{part_type}" is not supported; send application/dicom parts'
        )
    boundary = params.get("boundary")
    if not boundary:
        raise BadRequest("multipart/related Content-Type has no boundary parameter")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limits.max_body_bytes}")
    spool = process_spool_dir(gw.settings.effective_spool_dir)  # swept when this process is gone
    spool.mkdir(parents=True, exist_ok=True)
    multipart_limits = MultipartLimits(
        max_parts=limits.max_parts,
        max_part_header_bytes=limits.max_part_header_bytes,
        max_body_bytes=limits.max_body_bytes,
        max_part_bytes=limits.max_part_bytes,
    )
    async with (
        aclosing(
            iter_parts(_body(request), boundary.encode("latin-1"), spool_dir=spool, limits=multipart_limits)
        ) as received,
        aclosing(expand_archives(received, spool, zip_limits, skipped)) as parts,
    ):
        outcome = await gw.stow.store_parts(parts, study_uid=study, restriction=restriction_of(request))
    return await _finish(request, outcome, study, skipped)


async def _body(request: Request) -> AsyncIterator[bytes]:
    """The request body as it arrives. A client that hangs up before its end raises
    :class:`ClientDisconnected`, a client-side refusal: it was never answered, so the service
    undoes what the request stored (instances whose parts arrived whole before the cut too),
    except what another upload was also told is stored."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise ClientDisconnected("the client closed the connection before the end of the request body") from None


async def _store_archive(
    request: Request, study: str | None, zip_limits: ZipLimits, skipped: list[Skipped]
) -> Response:
    """``Content-Type: application/zip``: the body is spooled whole (a ZIP is read from its end),
    then its DICOM files are stored as the parts of a multipart body would be."""
    gw = gateway_of(request)
    limit = gw.settings.limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    spool = process_spool_dir(gw.settings.effective_spool_dir)  # swept when this process is gone
    spool.mkdir(parents=True, exist_ok=True)
    path = spool / f".zipbody-{uuid.uuid4().hex}"
    try:
        size = 0
        async with await anyio.open_file(path, "wb") as f:
            async for chunk in _body(request):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
                await f.write(chunk)
        async with aclosing(expand_archive(path, spool, zip_limits, skipped)) as parts:
            outcome = await gw.stow.store_parts(parts, study_uid=study, restriction=restriction_of(request))
    finally:
        path.unlink(missing_ok=True)
    return await _finish(request, outcome, study, skipped)


async def _finish(request: Request, outcome: StowOutcome, study: str | None, skipped: list[Skipped]) -> Response:
    gw = gateway_of(request)
    if skipped and not outcome.stored and not outcome.failed:
        raise BadRequest(f"no DICOM file in the ZIP archive ({len(skipped)} other member(s) skipped)")
    if gw.forward is not None:
        # Queued durably before the acknowledgement; sent to the PACS after it (services/forward.py).
        await gw.forward.enqueue((s.study_uid, s.series_uid, s.sop_instance_uid) for s in outcome.stored)
    # For the audit trail (gateway.http.middleware.audit): which instances this request stored, and which
    # it did not (a refused upload is a trace too).
    state = request.scope.setdefault("state", {})
    state["stored_instances"] = [(s.study_uid, s.series_uid, s.sop_instance_uid) for s in outcome.stored]
    state["failed_instances"] = [(f.study_uid, f.sop_instance_uid, f.failure_reason) for f in outcome.failed]
    answer = store_instances_response(outcome, base_url(request), study)
    response = Response(orjson.dumps(answer.dataset), status_code=answer.status, media_type=APPLICATION_DICOM_JSON)
    # Members of ZIP archives that are not instances: reported, not stored, not failures.
    skipped_notes = [
        f"{item.name}: skipped, {item.reason}" for item in skipped[: max(0, MAX_NOTES - len(answer.notes))]
    ]
    return add_warnings(response, [*answer.notes, *skipped_notes])
