"""Warning headers for responses answered after a PACS retrieve that ended with a warning.

A C-GET or C-MOVE whose final status is a warning (PS3.4 C.4.2.1.5 / C.4.3.1.3, e.g. B000
"sub-operations complete, one or more failures") delivered only part of what was asked: the
response says so, naming the PACS and the sub-operation counts (PS3.18 8.3.4.x allows a Warning
header on any response; 299 is "miscellaneous persistent warning", RFC 7234 5.5.7).
"""

from __future__ import annotations

from starlette.responses import Response


def add_retrieve_warnings(response: Response, warnings: list[str]) -> Response:
    for warning in warnings:
        response.headers.append("warning", f'299 dicomweb-gateway "{_header_text(warning)}"')
    return response


def _header_text(text: str) -> str:
    # A quoted-string of printable ASCII (RFC 7230 3.2.6), kept short.
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else " " for c in text)[:300]
