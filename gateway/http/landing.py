"""``GET {base}`` (and ``{base}/``): a short JSON answer naming the service, its version and its
main resources, so that a person or a script opening the base URL learns where to go instead of
meeting a 404. The Capabilities transaction (``OPTIONS {base}``, PS3.18 8.9) is the full list."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway import package_version
from gateway.http.context import base_url


async def landing(request: Request) -> JSONResponse:
    base = base_url(request)
    body = {
        "service": "dicomweb-gateway",
        "version": package_version(),
        "standard": "DICOMweb, DICOM PS3.18",
        "base_url": base,
        "endpoints": {
            "QIDO-RS": [f"{base}/studies", f"{base}/series", f"{base}/instances"],
            "WADO-RS": f"{base}/studies/{{study}}[/series/{{series}}[/instances/{{instance}}]]",
            "STOW-RS": f"POST {base}/studies",
            "WADO-URI": f"{base}/wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..",
            "Capabilities": f"OPTIONS {base}",
        },
    }
    return JSONResponse(body, headers={"Cache-Control": "no-cache"})
