"""Index outage (issue #7): the gateway's PostgreSQL stops, crashes, restarts or has its backends
terminated, while a real ``dicomweb-gateway serve`` keeps running on it.

The same rules as for a store outage: STOW answers 503 with Retry-After within 10 s and never
acknowledges what it did not store; reads that need the index answer 503 (not 500, not a hang);
``/readyz`` names the index; once PostgreSQL is back everything works without a gateway restart,
and every instance acknowledged before the outage is still there, byte-identical.

PostgreSQL here is a private cluster (tests/peers/postgres.py): the machine-wide one is shared
and must not be stopped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from tests import factory
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.http_helpers import CONNECTION_TIMEOUT, referenced_sops, split_multipart, stow, stow_body, uids_of
from tests.peers.postgres import PrivatePostgres, run_postgres

AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
# The bound for a STOW during an outage; reads are held to the same one.
OUTAGE_ANSWER_BOUND = 10.0
# "Within a few seconds" of PostgreSQL accepting connections again (the gateway probes every
# second); generous, the machine is shared.
RECOVERY_BOUND = 10.0


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    """One cluster for the module (initdb takes seconds on a busy machine); each test gets a
    fresh schema in it and finds it running."""
    with run_postgres() as server:
        yield server


@pytest.fixture
def postgres(private_postgres: PrivatePostgres) -> PrivatePostgres:
    if not private_postgres.running:  # a failed test may have left it stopped
        private_postgres.start()
    return private_postgres


@pytest.fixture
def schema() -> str:
    return f"t_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def gateway_on_postgres(tmp_path: Path, postgres: PrivatePostgres, schema: str) -> Iterator[RunningGateway]:
    gw = start_gateway(tmp_path, extra_args=("--index-url", f"{postgres.url}?schema={schema}"))
    try:
        yield gw
    finally:
        stop_gateway(gw)


def _instances(count: int, label: str) -> list[bytes]:
    study = factory.new_uid("index-outage", label)
    series = factory.new_uid("index-outage", label, "series")
    return [
        factory.ct_instance(
            seed=n,
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            SOPInstanceUID=factory.new_uid("index-outage", label, n),
        )
        for n in range(count)
    ]


def _retrieve(gw: RunningGateway, data: bytes) -> httpx.Response:
    study, series, sop = uids_of(data)
    return httpx.get(
        f"{gw.url}/studies/{study}/series/{series}/instances/{sop}", headers=AS_STORED, timeout=CONNECTION_TIMEOUT
    )


def _stored_bytes(gw: RunningGateway, data: bytes) -> bytes:
    response = _retrieve(gw, data)
    assert response.status_code == 200, response.text
    [(_, body)] = split_multipart(response)
    return body


def _timed(call: object) -> tuple[httpx.Response, float]:
    assert callable(call)
    started = time.monotonic()
    response = call()
    assert isinstance(response, httpx.Response)
    return response, time.monotonic() - started


def _assert_index_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert "index" in response.json()["reason"]
    assert elapsed < OUTAGE_ANSWER_BOUND


def _objects_named(gw: RunningGateway, sop: str) -> list[Path]:
    """Files of the file store (objects, metadata, temp files) that belong to ``sop``."""
    return [path for path in gw.data_dir.rglob(f"*{sop}*") if path.is_file()]


def _indexed_sops(postgres: PrivatePostgres, schema: str) -> set[str]:
    with psycopg.connect(postgres.url, autocommit=True, connect_timeout=5) as conn:
        query = sql.SQL("SELECT sop_uid FROM {}.instances").format(sql.Identifier(schema))
        return {row[0] for row in conn.execute(query)}


def _wait_until_serving(gw: RunningGateway, study: str) -> float:
    """Seconds until a QIDO needing the index succeeds again (polled every 50 ms)."""
    started = time.monotonic()
    while True:
        response = httpx.get(f"{gw.url}/studies", params={"StudyInstanceUID": study}, timeout=CONNECTION_TIMEOUT)
        if response.status_code == 200:
            return time.monotonic() - started
        assert response.status_code == 503, response.text  # unavailable, never a 500
        assert time.monotonic() - started < RECOVERY_BOUND, f"no recovery within {RECOVERY_BOUND} s: {response.text}"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["fast", "immediate", "crash"])
def test_index_outage_answers_503_and_recovers_without_restart(
    gateway_on_postgres: RunningGateway, postgres: PrivatePostgres, how: str
) -> None:
    gw = gateway_on_postgres
    before = _instances(3, f"before-{how}")
    study, series, _ = uids_of(before[0])
    assert stow(gw.url, before).status_code == 200
    late = _instances(1, f"late-{how}")
    late_study, _, late_sop = uids_of(late[0])

    if how == "crash":
        postgres.crash()
    else:
        postgres.stop("fast" if how == "fast" else "immediate")

    response, elapsed = _timed(lambda: stow(gw.url, late))
    _assert_index_unavailable(response, elapsed)
    # Not acknowledged, and nothing of it stays behind (the index row is the commit point, so the
    # objects written before the index failed are removed).
    assert _objects_named(gw, late_sop) == []

    reads = {
        "QIDO": lambda: httpx.get(f"{gw.url}/studies", timeout=CONNECTION_TIMEOUT),
        "series QIDO": lambda: httpx.get(f"{gw.url}/studies/{study}/series", timeout=CONNECTION_TIMEOUT),
        "metadata": lambda: httpx.get(f"{gw.url}/studies/{study}/series/{series}/metadata", timeout=CONNECTION_TIMEOUT),
        "instance": lambda: _retrieve(gw, before[0]),
    }
    for name, read in reads.items():
        response, elapsed = _timed(read)
        assert response.status_code == 503, (name, response.text)
        _assert_index_unavailable(response, elapsed)

    ready = httpx.get(f"{gw.root}/readyz", timeout=CONNECTION_TIMEOUT)
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["store"] == "ok"
    assert checks["index"].startswith("unavailable")
    assert "index database" in checks["index"]
    assert httpx.get(f"{gw.root}/healthz", timeout=CONNECTION_TIMEOUT).status_code == 200

    postgres.start()
    recovery = _wait_until_serving(gw, study)
    print(f"\nindex outage ({how}): serving again {recovery:.2f} s after PostgreSQL accepted connections")

    assert gw.process.poll() is None, "the gateway must not have restarted"
    assert httpx.get(f"{gw.root}/readyz", timeout=CONNECTION_TIMEOUT).status_code == 200
    for data in before:
        assert _stored_bytes(gw, data) == data
    response = stow(gw.url, late)
    assert response.status_code == 200, response.text
    assert referenced_sops(response) == [late_sop]
    assert _stored_bytes(gw, late[0]) == late[0]
    rows = httpx.get(f"{gw.url}/studies/{late_study}/series", timeout=CONNECTION_TIMEOUT)
    assert rows.status_code == 200
    assert len(rows.json()) == 1
    metadata = httpx.get(f"{gw.url}/studies/{study}/series/{series}/metadata", timeout=CONNECTION_TIMEOUT)
    assert metadata.status_code == 200
    assert len(metadata.json()) == 3


def test_terminated_backends_are_replaced_without_a_failed_request(
    gateway_on_postgres: RunningGateway, postgres: PrivatePostgres
) -> None:
    gw = gateway_on_postgres
    stored = _instances(4, "terminated")
    study, series, _ = uids_of(stored[0])
    assert stow(gw.url, stored).status_code == 200

    def search(_: int = 0) -> httpx.Response:
        return httpx.get(f"{gw.url}/studies/{study}/series/{series}/instances", timeout=CONNECTION_TIMEOUT)

    # Concurrent requests make the pool hold several connections, all of which are then cut.
    with ThreadPoolExecutor(8) as pool:
        assert {r.status_code for r in pool.map(search, range(32))} == {200}
    terminated = postgres.terminate_backends()
    assert terminated >= 2, "the pool should have held several connections"
    assert postgres.client_backends() == 0

    # The gateway is idle when its connections die: the next requests do not see it.
    assert search().status_code == 200
    assert _stored_bytes(gw, stored[0]) == stored[0]
    more = _instances(2, "after-terminate")
    response = stow(gw.url, more)
    assert response.status_code == 200, response.text
    with ThreadPoolExecutor(8) as pool:
        assert {r.status_code for r in pool.map(search, range(32))} == {200}
    assert httpx.get(f"{gw.root}/readyz", timeout=CONNECTION_TIMEOUT).status_code == 200
    assert postgres.client_backends() >= 1


def test_outage_in_the_middle_of_a_multi_instance_stow(
    gateway_on_postgres: RunningGateway, postgres: PrivatePostgres, schema: str
) -> None:
    """PostgreSQL crashes after some instances of one STOW are indexed and before the others are:
    the answer (within the bound) is a 202 (PS3.18 10.5.3) naming exactly what is stored and
    failing the rest with a processing failure; every acknowledged instance is readable; the
    client's retry then stores everything, each instance exactly once."""
    gw = gateway_on_postgres
    instances = _instances(30, "mid-stow")
    study, series, _ = uids_of(instances[0])
    body, content_type = stow_body(instances)
    half = len(body) // 2
    crashed_at: list[float] = []

    def chunks() -> Iterator[bytes]:
        # The first half of the body, then wait until the gateway has indexed some of it, then crash.
        yield body[:half]
        deadline = time.monotonic() + 30
        while len(_indexed_sops(postgres, schema)) < 3:
            assert time.monotonic() < deadline, "the gateway indexed nothing of the first half"
            time.sleep(0.02)
        postgres.crash()
        crashed_at.append(time.monotonic())
        yield body[half:]

    response = httpx.post(
        f"{gw.url}/studies",
        content=chunks(),
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        timeout=CONNECTION_TIMEOUT,
    )
    answered_after = time.monotonic() - crashed_at[0]
    assert response.status_code == 202, response.text
    assert answered_after < OUTAGE_ANSWER_BOUND
    acknowledged = set(referenced_sops(response))
    failed = _failed_sops(response)
    assert acknowledged
    assert failed
    assert acknowledged | failed == {uids_of(data)[2] for data in instances}

    postgres.start()
    _wait_until_serving(gw, study)
    # Every instance the index committed before the crash has its object, byte-identical.
    committed = _indexed_sops(postgres, schema)
    assert committed, "the crash should have come after some instances were indexed"
    assert len(committed) < len(instances), "the crash should have come before the last ones were"
    print(f"\nmid-STOW crash: {len(committed)} of {len(instances)} indexed before it, 202 after {answered_after:.2f} s")
    assert acknowledged <= committed  # acknowledged means committed
    by_sop = {uids_of(data)[2]: data for data in instances}
    for sop in committed:  # (one whose commit outcome was unknown may be committed, not acknowledged)
        assert _stored_bytes(gw, by_sop[sop]) == by_sop[sop]
    # Uncommitted instances left nothing readable behind.
    for sop, data in by_sop.items():
        if sop not in committed:
            assert _retrieve(gw, data).status_code == 404

    retry = stow(gw.url, instances)
    assert retry.status_code == 200, retry.text
    assert sorted(referenced_sops(retry)) == sorted(by_sop)
    listed = httpx.get(f"{gw.url}/studies/{study}/series/{series}/instances", timeout=CONNECTION_TIMEOUT)
    assert listed.status_code == 200
    assert len(listed.json()) == len(instances)
    for data in instances:
        assert _stored_bytes(gw, data) == data


def _failed_sops(response: httpx.Response) -> set[str]:
    """FailedSOPSequence (0008,1198) of a Store Instances Response: every item a processing
    failure (0110H, PS3.4 Annex B) with its SOP Instance UID."""
    items = response.json().get("00081198", {}).get("Value", [])
    assert all(item["00081197"]["Value"] == [0x0110] for item in items)
    return {item["00081155"]["Value"][0] for item in items}


def test_frozen_server_answers_503_at_the_operation_deadline_and_recovers(
    tmp_path: Path, postgres: PrivatePostgres, schema: str
) -> None:
    """A server that stops answering without closing anything (every PostgreSQL process
    SIGSTOPped: connects still succeed, sent data is still acknowledged by the kernel) must not
    hang requests: the index URL's ``operation_timeout`` bounds each statement on the server and,
    a second later, each use of a connection on the client."""
    operation_timeout = 3
    gw = start_gateway(
        tmp_path, extra_args=("--index-url", f"{postgres.url}?schema={schema}&operation_timeout={operation_timeout}")
    )
    try:
        before = _instances(3, "before-freeze")
        study, series, _ = uids_of(before[0])
        assert stow(gw.url, before).status_code == 200
        late = _instances(1, "late-freeze")
        late_sop = uids_of(late[0])[2]

        postgres.freeze()
        try:
            response, elapsed = _timed(lambda: stow(gw.url, late))
            _assert_index_unavailable(response, elapsed)
            print(f"\nfrozen index: STOW answered 503 after {elapsed:.2f} s (operation_timeout {operation_timeout} s)")
            assert _objects_named(gw, late_sop) == []
            for read in (
                lambda: httpx.get(f"{gw.url}/studies", timeout=CONNECTION_TIMEOUT),
                lambda: httpx.get(f"{gw.url}/studies/{study}/series/{series}/metadata", timeout=CONNECTION_TIMEOUT),
                lambda: _retrieve(gw, before[0]),
            ):
                response, elapsed = _timed(read)
                _assert_index_unavailable(response, elapsed)
            ready, elapsed = _timed(lambda: httpx.get(f"{gw.root}/readyz", timeout=CONNECTION_TIMEOUT))
            assert ready.status_code == 503
            assert ready.json()["checks"]["index"].startswith("unavailable")
            assert elapsed < OUTAGE_ANSWER_BOUND
        finally:
            postgres.thaw()

        recovery = _wait_until_serving(gw, study)
        print(f"frozen index: serving again {recovery:.2f} s after the server resumed")
        assert gw.process.poll() is None
        for data in before:
            assert _stored_bytes(gw, data) == data
        response = stow(gw.url, late)
        assert response.status_code == 200, response.text
        assert _stored_bytes(gw, late[0]) == late[0]
        # The connections cut by the deadline are gone on the server too, not piled up.
        assert postgres.client_backends() <= 10
    finally:
        stop_gateway(gw)


def test_started_while_the_server_is_down_it_serves_once_it_is_up(
    tmp_path: Path, postgres: PrivatePostgres, schema: str
) -> None:
    """PostgreSQL is a network peer: down when the gateway starts is an outage like any other,
    not a reason to exit (an orchestrator would restart it with growing back-off). The gateway
    serves unready, says why, and is ready as soon as the server is."""
    postgres.stop("fast")
    gw = start_gateway(tmp_path, extra_args=("--index-url", f"{postgres.url}?schema={schema}"), until="/healthz")
    try:
        ready = httpx.get(f"{gw.root}/readyz", timeout=CONNECTION_TIMEOUT)
        assert ready.status_code == 503
        assert ready.json()["checks"]["index"].startswith("unavailable")
        assert "index is unavailable at start-up" in gw.log()
        data = _instances(1, "cold-start")
        response, elapsed = _timed(lambda: stow(gw.url, data))
        _assert_index_unavailable(response, elapsed)

        postgres.start()
        _wait_until_serving(gw, uids_of(data[0])[0])
        assert httpx.get(f"{gw.root}/readyz", timeout=CONNECTION_TIMEOUT).status_code == 200
        assert stow(gw.url, data).status_code == 200
        assert _stored_bytes(gw, data[0]) == data[0]
        assert gw.process.poll() is None
    finally:
        stop_gateway(gw)
