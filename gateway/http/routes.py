"""The route table: every DICOMweb resource under the configured base path (PS3.18 10)."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route

from gateway.http import (
    bulk_update,
    capabilities,
    changefeed,
    delete,
    health,
    landing,
    protection,
    qido,
    rendered,
    stow,
    wado,
    wado_uri,
)
from gateway.http.middleware import metrics

S = "/studies/{study}"
SE = S + "/series/{series}"
I = SE + "/instances/{instance}"  # noqa: E741


def dicomweb_routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = [
        Route("/studies", qido.search_studies, methods=["GET"]),
        Route("/studies", stow.store_instances, methods=["POST"]),
        # Before {study}: "$bulkUpdate" would otherwise be taken for a Study Instance UID.
        Route("/studies/$bulkUpdate", bulk_update.bulk_update, methods=["POST"]),
        Route("/series", qido.search_series, methods=["GET"]),
        Route("/instances", qido.search_instances, methods=["GET"]),
        Route("/wado", wado_uri.retrieve, methods=["GET"]),  # WADO-URI (PS3.18 9)
        Route(S, wado.retrieve, methods=["GET"]),
        Route(S, stow.store_instances, methods=["POST"]),
        Route(S + "/metadata", wado.metadata, methods=["GET"]),
        Route(S + "/series", qido.search_series, methods=["GET"]),
        Route(S + "/instances", qido.search_instances, methods=["GET"]),
        Route(SE, wado.retrieve, methods=["GET"]),
        Route(SE + "/metadata", wado.metadata, methods=["GET"]),
        Route(SE + "/instances", qido.search_instances, methods=["GET"]),
        Route(I, wado.retrieve, methods=["GET"]),
        Route(I + "/metadata", wado.metadata, methods=["GET"]),
        Route(I + "/frames/{frames}", wado.frames, methods=["GET"]),
        Route(I + "/bulkdata/{path:path}", wado.bulkdata, methods=["GET"]),
        # Rendered and thumbnail resources (PS3.18 10.4.1.1.3) at every level.
        *(
            Route(level + "/" + kind, endpoint, methods=["GET"])
            for level in (S, SE, I, I + "/frames/{frames}")
            for kind, endpoint in (("rendered", rendered.rendered), ("thumbnail", rendered.thumbnail))
        ),
    ]
    # One PACS alone, as a read-only DICOMweb root of its own: {base}/pacs/{name}/studies, ...
    # (gateway.services.federation explains the selector; an unknown name is a 404).
    read_only = [r for r in routes if isinstance(r, Route) and "POST" not in (r.methods or ())]
    # The change feed is the gateway's own history, not a PACS's: only at the root.
    # So are the changes made to it: DELETE and rejections (IOCM codes, OHIF's supportsReject).
    routes += [
        Route("/changefeed", changefeed.changefeed, methods=["GET"]),
        Route("/changefeed/latest", changefeed.latest, methods=["GET"]),
        *(Route(level, delete.delete, methods=["DELETE"]) for level in (S, SE, I)),
        *(Route(level + "/reject/{code}", delete.reject, methods=["POST"]) for level in (S, SE, I)),
        # Kept from retention sweeps (gateway.services.retention), Orthanc's 1/0 convention.
        Route(S + "/protected", protection.get_protected, methods=["GET"]),
        Route(S + "/protected", protection.put_protected, methods=["PUT"]),
        # Metadata corrections (Microsoft's $bulkUpdate) and what they replaced.
        Route("/operations/{operation}", bulk_update.operation_status, methods=["GET"]),
        Route(I + "/original", bulk_update.original, methods=["GET"]),
    ]
    # The Capabilities transaction (PS3.18 8.9) on every resource: OPTIONS only, so other methods
    # on unknown paths stay 404 (gateway.http.capabilities).
    options = capabilities.OptionsRoute("/{path:path}", capabilities.describe, methods=["OPTIONS"])
    return [*routes, options, Mount("/pacs/{pacs}", routes=read_only)]


def all_routes(base_path: str) -> list[BaseRoute]:
    probes: list[BaseRoute] = [
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/metrics", metrics.metrics, methods=["GET"]),
    ]
    if not base_path:
        return [*probes, Route("/", landing.landing, methods=["GET"]), *dicomweb_routes()]
    base = capabilities.OptionsRoute(base_path, capabilities.describe, methods=["OPTIONS"])  # OPTIONS {base}
    # GET {base} and {base}/: what this is and where to go (a 404 after a redirect before).
    home = [Route(path, landing.landing, methods=["GET"]) for path in (base_path, base_path + "/")]
    return [*probes, base, *home, Mount(base_path, routes=dicomweb_routes())]
