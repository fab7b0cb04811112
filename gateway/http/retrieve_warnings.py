"""Warning headers for responses answered after a PACS retrieve that ended with a warning.

A C-GET or C-MOVE whose final status is a warning (PS3.4 C.4.2.1.5 / C.4.3.1.3, e.g. B000
"sub-operations complete, one or more failures") delivered only part of what was asked: the
response says so, naming the PACS and the sub-operation counts (PS3.18 8.3.4.x allows a Warning
header on any response; 299 is "miscellaneous persistent warning", RFC 7234 5.5.7).
"""

from __future__ import annotations

from starlette.responses import Response

from gateway.http.warning_header import add_warnings


def add_retrieve_warnings(response: Response, warnings: list[str]) -> Response:
    return add_warnings(response, warnings)
