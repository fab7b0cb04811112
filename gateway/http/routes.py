"""The route table: every DICOMweb resource under the configured base path (PS3.18 10)."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route

from gateway.http import health, qido, stow, wado

S = "/studies/{study}"
SE = S + "/series/{series}"
I = SE + "/instances/{instance}"  # noqa: E741


def dicomweb_routes() -> list[BaseRoute]:
    return [
        Route("/studies", qido.search_studies, methods=["GET"]),
        Route("/studies", stow.store_instances, methods=["POST"]),
        Route("/series", qido.search_series, methods=["GET"]),
        Route("/instances", qido.search_instances, methods=["GET"]),
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
    ]


def all_routes(base_path: str) -> list[BaseRoute]:
    probes: list[BaseRoute] = [
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
    ]
    if not base_path:
        return probes + dicomweb_routes()
    return [*probes, Mount(base_path, routes=dicomweb_routes())]
