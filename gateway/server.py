"""``dicomweb-gateway serve``: run the app under uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn

from gateway.app import create_app
from gateway.settings import Settings


def serve(settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=False,
        server_header=False,
        # DICOM objects are rarely compressible enough to pay for gzip; never compress here.
        timeout_keep_alive=15,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except OSError as exc:  # e.g. address already in use
        print(f"dicomweb-gateway: cannot serve on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0 if server.started else 1
