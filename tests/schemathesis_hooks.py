"""Schemathesis hooks for tests/test_openapi.py (loaded by the CLI through SCHEMATHESIS_HOOKS).

STOW-RS bodies are ``multipart/related``, which schemathesis cannot serialize by itself: the
generated payload becomes one part, and every other request also carries a real DICOM instance
(new UIDs each time), so that the 200/202/409 Store Instances Responses are checked too.
"""

from __future__ import annotations

import uuid
from typing import Any

import schemathesis

from tests import factory

BOUNDARY = "schemathesis-8d2f"


@schemathesis.serializer("multipart/related")
def multipart_related(ctx: Any, value: Any) -> bytes:
    payload = value if isinstance(value, bytes) else str(value).encode()
    parts = [payload]
    if len(payload) % 2 == 0:
        parts.append(factory.ct_instance(seed=uuid.uuid4().int % 1000, rows=8, cols=8))
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{BOUNDARY}--\r\n".encode()


# DELETE and rejections of the seeded study would leave the other operations only 404s to check.
SPARED_STUDY = "1.2.826.0.1.3680043.8.498.10.1"


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    destructive = case.method == "DELETE" or (case.method == "POST" and "/reject/" in case.path)
    if destructive and (case.path_parameters or {}).get("study") == SPARED_STUDY:
        case.path_parameters = {**case.path_parameters, "study": f"2.25.{uuid.uuid4().int}"}
    if case.media_type == "multipart/related" and case.method == "POST":
        case.headers = {**(case.headers or {}), "Content-Type": f"multipart/related; boundary={BOUNDARY}"}
