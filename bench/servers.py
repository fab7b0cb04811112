"""The two servers under test, started on free ports and loaded with the same data."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.dataset import multipart_body
from tests.fixtures_gateway import start_gateway, stop_gateway
from tests.peers.orthanc import run_orthanc

GATEWAY, ORTHANC = "gateway", "Orthanc"
# Every request of the benchmark: no gzip (Orthanc would gzip pixel data, PEERS.md).
HEADERS = {"Accept-Encoding": "identity"}
TIMEOUT = httpx.Timeout(600.0, connect=10.0)
LOAD_BATCH = 50


@dataclass
class Server:
    """A running server: its DICOMweb root, process id and a persistent (keep-alive) client."""

    name: str
    base: str
    pid: int
    client: httpx.Client
    version: str = ""


def new_client() -> httpx.Client:
    return httpx.Client(headers=HEADERS, timeout=TIMEOUT)


@contextmanager
def gateway_server(tmp: Path, extra_args: tuple[str, ...] = ()) -> Iterator[Server]:
    """The gateway on its embedded defaults (file store + SQLite) under ``tmp``, with
    ``extra_args`` for ``serve``."""
    tmp.mkdir(parents=True, exist_ok=True)
    gw = start_gateway(tmp, extra_args=extra_args)
    try:
        with new_client() as client:
            yield Server(GATEWAY, gw.url, gw.process.pid, client)
    finally:
        stop_gateway(gw)


@contextmanager
def orthanc_server(tmp: Path) -> Iterator[Server]:
    """Orthanc with its DICOMweb plugin, storage under ``tmp``."""
    with run_orthanc(tmp) as orthanc, new_client() as client:
        version = client.get(orthanc.http_url + "/system").json()["Version"]
        plugin = client.get(orthanc.http_url + "/plugins/dicom-web").json()["Version"]
        yield Server(ORTHANC, orthanc.dicomweb_url, orthanc.pid, client, f"{version}, DICOMweb plugin {plugin}")


def stow(server: Server, instances: Sequence[bytes]) -> httpx.Response:
    """One STOW-RS request; raises unless every instance was stored."""
    body, content_type = multipart_body(instances)
    response = server.client.post(
        server.base + "/studies",
        content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
    )
    check(response, server, "STOW-RS")
    return response


def load(server: Server, files: Sequence[Path]) -> None:
    """STOW every file, ``LOAD_BATCH`` per request."""
    for start in range(0, len(files), LOAD_BATCH):
        stow(server, [f.read_bytes() for f in files[start : start + LOAD_BATCH]])


def check(response: httpx.Response, server: Server, what: str) -> None:
    if response.status_code != 200:
        detail = response.headers.get("warning") or response.text[:300]
        raise RuntimeError(f"{server.name}: {what} {response.request.url} answered {response.status_code}: {detail}")
