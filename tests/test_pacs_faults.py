"""The PACS bridge under faults: a closed port, a listener that never answers, a PACS killed in
the middle of a C-MOVE. Every request ends promptly with the right status, and nothing of the
failed operation (association, connection, thread) stays behind."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import httpx
import psutil
import pytest
from pynetdicom.association import Association

from gateway.adapters.dimse import DimseUpstream
from gateway.adapters.dimse_contexts import GET_KIND, QUERY_KIND, association_contexts
from gateway.adapters.dimse_pool import AssociationPool
from gateway.settings import PacsNode
from tests.fixtures_gateway import RunningGateway
from tests.fixtures_pacs import GATEWAY_AET, GatewayFactory, PacsData, load_orthanc, node
from tests.http_helpers import uids_of
from tests.peers.blackhole import black_hole
from tests.peers.orthanc import OrthancPeer, run_orthanc
from tests.peers.ports import free_port

pytestmark = pytest.mark.timeout(120)

AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
UNKNOWN_STUDY = "1.2.826.0.1.3680043.8.498.1"


def timed_get(url: str, **kwargs: object) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.get(url, timeout=30, **kwargs)  # type: ignore[arg-type]
    return response, time.monotonic() - started


def test_closed_port_is_502_within_a_second(pacs_gateway_factory: GatewayFactory) -> None:
    gw = pacs_gateway_factory([node("closed", free_port(), "CLOSED")])
    response, elapsed = timed_get(f"{gw.url}/studies/{UNKNOWN_STUDY}", headers=AS_STORED)
    assert response.status_code == 502, response.text
    assert "Connection refused" in response.json()["reason"]
    assert elapsed < 1.0
    # QIDO keeps working: no rows, a Warning naming the PACS.
    response, elapsed = timed_get(f"{gw.url}/studies")
    assert response.status_code == 200
    assert response.json() == []
    assert "PACS closed" in response.headers["warning"]
    assert elapsed < 1.0
    # Searching that PACS alone has no other source: its failure is the answer.
    response, elapsed = timed_get(f"{gw.url}/pacs/closed/studies")
    assert response.status_code == 502, response.text
    assert "Connection refused" in response.json()["reason"]
    assert elapsed < 1.0


def test_black_hole_is_504_within_the_configured_timeout(pacs_gateway_factory: GatewayFactory) -> None:
    with black_hole() as port:
        gw = pacs_gateway_factory([node("hole", port, "HOLE", acse_timeout=1.0)])
        response, elapsed = timed_get(f"{gw.url}/studies/{UNKNOWN_STUDY}", headers=AS_STORED)
        assert response.status_code == 504, response.text
        assert "within 1 s" in response.json()["reason"]
        # Bounded by acse_timeout (1 s), not by dimse_timeout or the HTTP client; slack for load.
        assert 0.9 <= elapsed < 2.5
        response, elapsed = timed_get(f"{gw.url}/studies")
        assert response.status_code == 200
        assert "PACS hole" in response.headers["warning"]
        assert elapsed < 2.5
        response, elapsed = timed_get(f"{gw.url}/pacs/hole/studies")
        assert response.status_code == 504, response.text
        assert elapsed < 2.5


def _dicom_connections(pid: int, ports: set[int]) -> list[psutil._common.pconn]:
    return [
        c
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED
        and ((c.raddr and c.raddr.port in ports) or (c.laddr and c.laddr.port in ports))
    ]


def test_pacs_killed_mid_c_move_ends_the_response(
    pacs_gateway_factory: GatewayFactory, pacs_data: PacsData, scp_port: int, tmp_path: Path
) -> None:
    with run_orthanc(tmp_path / "doomed", gateway_aet=GATEWAY_AET, gateway_port=scp_port) as doomed:
        load_orthanc(doomed, [*pacs_data.series, *pacs_data.catalog[:2]])
        gw = pacs_gateway_factory([node("doomed", doomed.dicom_port, "ORTHANC", retrieve="move", dimse_timeout=10)])
        pid = gw.process.pid
        # Warm up: a small C-MOVE, so the threads any retrieve needs exist before counting.
        warm_study = uids_of(pacs_data.catalog[0])[0]
        assert httpx.get(f"{gw.url}/studies/{warm_study}", headers=AS_STORED, timeout=30).status_code == 200
        threads_before = psutil.Process(pid).num_threads()

        study, series = pacs_data.series_uids
        total = len(pacs_data.series)
        started = time.monotonic()
        body = b""
        with httpx.stream("GET", f"{gw.url}/studies/{study}/series/{series}", headers=AS_STORED, timeout=30) as r:
            assert r.status_code == 200
            chunks = r.iter_raw()
            body = next(chunks)
            os.kill(doomed.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            try:
                for chunk in chunks:
                    body += chunk
            except httpx.RemoteProtocolError:
                pass  # the gateway ended the chunked body without its last chunk: truncated
        ended = time.monotonic() - killed_at
    assert ended < 2.0, f"the response went on for {ended:.1f} s after the PACS died"
    parts = body.count(b"Content-Type: application/dicom")
    assert 0 < parts < total, "the PACS was not killed mid-retrieve"
    assert not body.rstrip().endswith(b"--"), "a truncated retrieve must not look complete"
    assert "the response broke off after it started" in gw.log()
    # An expected upstream fault is one warning line, not a crash report of the gateway's.
    assert "Exception in ASGI application" not in gw.log()
    assert "unhandled error" not in gw.log()
    # Nothing stays behind: no DIMSE connection, no extra thread.
    deadline = time.monotonic() + 5
    while _dicom_connections(pid, {doomed.dicom_port, scp_port}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _dicom_connections(pid, {doomed.dicom_port, scp_port}) == []
    while psutil.Process(pid).num_threads() > threads_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert psutil.Process(pid).num_threads() <= threads_before
    assert time.monotonic() - started < 30
    # The gateway still serves (the cached part of the series, QIDO with a warning).
    response = httpx.get(f"{gw.url}/studies", timeout=10)
    assert response.status_code == 200
    assert "PACS doomed" in response.headers["warning"]


def test_gateway_still_works_after_faults(pacs_gateway: RunningGateway) -> None:
    assert httpx.get(pacs_gateway.root + "/readyz", timeout=10).status_code == 200


@pytest.mark.anyio
async def test_a_consumer_leaving_early_aborts_the_retrieve(
    orthanc_pacs: OrthancPeer, pacs_data: PacsData, tmp_path: Path
) -> None:
    """The adapter alone: closing its iterator mid-retrieve aborts the C-GET, removes what was
    spooled, and frees the node's capacity (the next operation runs at once)."""
    node_settings = PacsNode(
        name="orthanc", ae_title=orthanc_pacs.aet, host="127.0.0.1", port=orthanc_pacs.dicom_port, max_associations=1
    )
    upstream = DimseUpstream(node_settings, ae_title=GATEWAY_AET, spool_dir=tmp_path / "spool")
    study, series = pacs_data.series_uids
    try:
        retrieve = upstream.retrieve(study, series)
        first = await retrieve.__anext__()
        first.path.unlink()
        await retrieve.aclose()
        with anyio.fail_after(5):  # max_associations = 1: waits for the aborted retrieve's slot
            assert await upstream.echo() > 0
        # What was received and not consumed is gone (the retrieve ended before echo could run).
        assert not any((tmp_path / "spool").glob("*.dcm"))
    finally:
        await upstream.aclose()


def test_associations_being_opened_count_against_the_cap(orthanc_pacs: OrthancPeer) -> None:
    """max_associations bounds what is open at once, including associations still being
    requested: an idle one of another kind is released to make room for them."""
    node_settings = PacsNode(
        name="orthanc", ae_title=orthanc_pacs.aet, host="127.0.0.1", port=orthanc_pacs.dicom_port, max_associations=2
    )
    both_opening = threading.Barrier(2, timeout=10)

    class RacingPool(AssociationPool):
        def open(self, kind: Hashable, *, retry: bool = True) -> Association:
            if kind == GET_KIND:
                both_opening.wait()  # two checkouts are past the cap check before either connects
            return super().open(kind, retry=retry)

    pool = RacingPool(node_settings, GATEWAY_AET, association_contexts)
    try:
        idle, _ = pool.checkout(QUERY_KIND)
        pool.checkin(idle, QUERY_KIND, healthy=True)
        with ThreadPoolExecutor(2) as threads:
            opened = [future.result() for future in [threads.submit(pool.checkout, GET_KIND) for _ in range(2)]]
        assert all(assoc.is_established and not reused for assoc, reused in opened)
        assert _settled(lambda: not idle.is_established)
        assert len(_dicom_connections(os.getpid(), {orthanc_pacs.dicom_port})) <= 2
        for assoc, _ in opened:
            pool.checkin(assoc, GET_KIND, healthy=True)
    finally:
        pool.close()


def _settled(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
