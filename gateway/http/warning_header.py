"""The gateway's Warning header values (PS3.18 8.3.4.x allows a Warning on any response).

Code 299 is "miscellaneous persistent warning" (RFC 7234 5.5.7); the text is a quoted-string,
so it is reduced to printable ASCII without quotes or backslashes (RFC 7230 3.2.6) and kept
short: it may carry a PACS's error comment or a file name from an upload.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.responses import Response

MAX_TEXT = 300


def warning_value(text: str) -> str:
    """One Warning header value carrying ``text``."""
    cleaned = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else " " for c in text)[:MAX_TEXT]
    return f'299 dicomweb-gateway "{cleaned}"'


def add_warnings(response: Response, texts: Iterable[str]) -> Response:
    """Append one Warning header per text (headers stay separate, in order)."""
    for text in texts:
        response.headers.append("warning", warning_value(text))
    return response
