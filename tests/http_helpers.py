"""Small raw-HTTP helpers for the end-to-end tests (independent of the gateway's own code)."""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Sequence

import httpx
import pydicom
from pydicom.dataset import Dataset

CONNECTION_TIMEOUT = httpx.Timeout(60.0)


def stow_body(
    instances: Sequence[bytes], *, boundary: str | None = None, part_type: str = "application/dicom"
) -> tuple[bytes, str]:
    """A multipart/related STOW body and its Content-Type, built by hand."""
    boundary = boundary or uuid.uuid4().hex
    chunks = []
    for data in instances:
        chunks.append(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(base: str, instances: Sequence[bytes], *, study: str | None = None) -> httpx.Response:
    body, content_type = stow_body(instances)
    url = f"{base}/studies" + (f"/{study}" if study else "")
    return httpx.post(
        url,
        content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        timeout=CONNECTION_TIMEOUT,
    )


def split_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart response: (lower-cased headers, body)."""
    content_type = response.headers["content-type"]
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match, f"no boundary in {content_type!r}"
    delimiter = b"--" + match.group(1).encode()
    body = response.content
    assert body.rstrip(b"\r\n").endswith(delimiter + b"--"), "multipart body lacks its closing delimiter"
    pieces = body.split(b"\r\n" + delimiter)
    first = pieces[0]
    assert first.startswith(delimiter), "multipart body does not start with the delimiter"
    pieces[0] = first[len(delimiter) :]
    parts = []
    for piece in pieces:
        if piece.startswith(b"--"):
            break
        assert piece.startswith(b"\r\n")
        head, _, content = piece[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
    return parts


def read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def uids_of(data: bytes) -> tuple[str, str, str]:
    ds = read(data)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def failure_reasons(response: httpx.Response) -> list[int]:
    body = response.json()
    return [item["00081197"]["Value"][0] for item in body.get("00081198", {}).get("Value", [])]


def referenced_sops(response: httpx.Response) -> list[str]:
    body = response.json()
    return [item["00081155"]["Value"][0] for item in body.get("00081199", {}).get("Value", [])]
