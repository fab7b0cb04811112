"""Storage commitment across a restart of ``dicomweb-gateway serve`` (PS3.4 J.3.3): once the
gateway answered an N-ACTION with success it owes the modality the N-EVENT-REPORT, even when it
stops (or is killed) before the report went out. A pynetdicom modality asks for a commitment,
refuses the report on its association and does not listen on its port yet; the gateway stops
while it waits to try again; started again on the same data and index, it sends the report to
the modality's port with the right committed and failed lists, and then forgets the request.
Over both indexes: the embedded SQLite and PostgreSQL.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest

from gateway.adapters.postgres_index import PostgresIndex
from gateway.adapters.sqlite_index import SqliteIndex
from gateway.ports import PendingCommitment
from tests import factory
from tests.commitment_scu import (
    CT_IMAGE_STORAGE,
    FAILURES_EXIST,
    MODALITY,
    NO_SUCH_OBJECT_INSTANCE,
    REPORT_WAIT,
    Modality,
    references_of,
    request,
    study,
)
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.http_helpers import stow_body
from tests.peers.ports import free_port

GATEWAY_AET = "GATEWAY"


@pytest.fixture(params=["sqlite", "postgres"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'index.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))


def serve(tmp_path: Path, *, port: int, modality_port: int, index_url: str) -> RunningGateway:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'ae_title = "{GATEWAY_AET}"\nscp_port = {port}\nindex_url = "{index_url}"\n'
        f'[[dimse_clients]]\nname = "modality"\nae_title = "{MODALITY}"\nscopes = ["write"]\nport = {modality_port}\n'
    )
    return start_gateway(tmp_path, extra_args=("--config", str(config)))


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM"])
def test_a_report_owed_when_the_gateway_stopped_is_sent_once_it_runs_again(
    tmp_path: Path, index_url: str, stop: str
) -> None:
    port = free_port()
    modality = Modality()
    instances = study(seed=21, n=2)
    absent = (CT_IMAGE_STORAGE, factory.new_uid("absent", 21))
    transaction = factory.new_uid("transaction", 21, stop)
    gw = serve(tmp_path, port=port, modality_port=modality.port, index_url=index_url)
    try:
        body, content_type = stow_body(instances)
        stored = httpx.post(f"{gw.url}/studies", content=body, headers={"Content-Type": content_type}, timeout=30)
        assert stored.status_code == 200, stored.text
        called = type("Called", (), {"port": port, "ae_title": GATEWAY_AET})()
        with Modality().associated(called, reports_here=False) as assoc:
            assert request(assoc, transaction, [*references_of(instances), absent]) == 0x0000
            wait_for_log(gw.log, f"storage commitment {transaction}: not on its association", "0x0110")
        # The modality's port is closed: the report waits for the next attempt, and the gateway goes.
        wait_for_log(gw.log, f"storage commitment {transaction}: attempt ", "not established")
    finally:
        if stop == "SIGKILL":
            gw.process.send_signal(signal.SIGKILL)
            gw.process.wait(10)
        else:
            stop_gateway(gw)
    assert "report given up" not in gw.log()

    with modality.listening():
        again = serve(tmp_path, port=port, modality_port=modality.port, index_url=index_url)
        try:
            report = modality.next_report()
            wait_for_log(again.log, f"storage commitment {transaction} from modality: status 0x0000", "new association")
        finally:
            stop_gateway(again)
    assert not report.same_association
    assert report.calling_ae == GATEWAY_AET
    assert str(report.info.TransactionUID) == transaction
    assert report.event_type == FAILURES_EXIST
    assert sorted(report.committed) == sorted(references_of(instances))
    assert report.failed == {absent[1]: NO_SUCH_OBJECT_INSTANCE}
    assert modality.reports.empty()  # reported once
    assert anyio.run(pending_commitments, index_url) == []  # and forgotten


async def pending_commitments(index_url: str) -> list[PendingCommitment]:
    sqlite = index_url.startswith("sqlite:")
    index = SqliteIndex(Path(index_url.removeprefix("sqlite:///"))) if sqlite else PostgresIndex(index_url)
    try:
        return await index.pending_commitments()
    finally:
        await index.aclose()


def wait_for_log(log: Callable[[], str], text: str, also: str) -> None:
    """Until a line of the log holds ``text`` and then ``also``."""
    deadline = time.monotonic() + REPORT_WAIT  # only bounds a broken run
    while not any(text in line and also in line.split(text, 1)[1] for line in log().splitlines()):
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{log()[-3000:]}"
        time.sleep(0.05)
