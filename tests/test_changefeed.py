"""GET {base}/changefeed and {base}/changefeed/latest over a real gateway process, on the SQLite
and the PostgreSQL index: every way in writes one entry (STOW, ZIP STOW, a DIMSE C-STORE by
DCMTK's storescu), an identical re-send none, a DELETE one per instance; Microsoft's spelling and
parameters, and a 400 for each malformed one."""

from __future__ import annotations

import io
import queue
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests import factory
from tests.dimse_gateway import client, dimse_gateway
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.http_helpers import stow, uids_of

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["sqlite", "postgres"])
def gw(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningGateway]:
    args: tuple[str, ...] = ()
    if request.param == "postgres":
        args = ("--index-url", request.getfixturevalue("postgres_url"))
    running = start_gateway(tmp_path, extra_args=args)
    try:
        yield running
    finally:
        stop_gateway(running)


def feed(gw: RunningGateway, **params: Any) -> list[dict[str, Any]]:
    response = httpx.get(gw.url + "/changefeed", params=params, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    entries: list[dict[str, Any]] = response.json()
    return entries


def test_stow_writes_one_entry_per_instance_and_an_identical_resend_none(gw: RunningGateway) -> None:
    instances = factory.ct_series(2, 64, 64, seed=161)
    assert stow(gw.url, instances).status_code == 200
    assert stow(gw.url, instances).status_code == 200  # the same bytes again: nothing changed
    entries = feed(gw)
    # The parts of one request are written concurrently: their entries follow commit order.
    assert sorted(uids_of(data) for data in instances) == sorted(
        (e["StudyInstanceUid"], e["SeriesInstanceUid"], e["SopInstanceUid"]) for e in entries
    )
    assert [(e["Action"], e["State"], e["Origin"]) for e in entries] == [("create", "current", "stow")] * 2
    assert entries[0]["Sequence"] < entries[1]["Sequence"]
    assert entries[0]["Timestamp"].endswith("Z")
    # Metadata by default (Microsoft's v2), as WADO-RS metadata gives it: absolute BulkDataURIs.
    metadata = entries[0]["Metadata"]
    assert metadata["00080018"]["Value"] == [entries[0]["SopInstanceUid"]]
    assert metadata["7FE00010"]["BulkDataURI"].startswith(gw.url + "/studies/")
    assert [e["Metadata"] for e in feed(gw, includeMetadata="false")] == [None, None]
    latest = httpx.get(gw.url + "/changefeed/latest", timeout=30).json()
    assert latest == entries[1]


def test_offset_limit_and_time_window(gw: RunningGateway) -> None:
    assert stow(gw.url, factory.ct_series(5, 64, 64, seed=162)).status_code == 200
    everything = feed(gw, includeMetadata="false")
    assert len(everything) == 5
    assert feed(gw, offset=1, limit=2, includeMetadata="false") == everything[1:3]
    # Microsoft's names are case-insensitive.
    assert feed(gw, OFFSET=4, IncludeMetadata="false") == everything[4:]
    assert feed(gw, startTime="2999-01-01T00:00:00Z") == []
    assert feed(gw, endTime="2000-01-01T00:00:00+01:00") == []
    assert feed(gw, startTime="2000-01-01T00:00:00", includeMetadata="false") == everything  # UTC when no offset


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": "201"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"startTime": "yesterday"}, "startTime"),
        ({"endTime": "2026-13-45T99:00:00Z"}, "endTime"),
        ({"startTime": "2026-02-01T00:00:00Z", "endTime": "2026-01-01T00:00:00Z"}, "endTime"),
        ({"includeMetadata": "maybe"}, "includeMetadata"),
    ],
)
def test_bad_parameters_are_400_naming_them(file_gateway: RunningGateway, params: dict[str, str], named: str) -> None:
    response = httpx.get(file_gateway.url + "/changefeed", params=params, timeout=30)
    assert response.status_code == 400
    assert named in response.json()["reason"]


def test_an_empty_feed_has_no_latest_entry(file_gateway: RunningGateway) -> None:
    assert feed(file_gateway) == []
    assert httpx.get(file_gateway.url + "/changefeed/latest", timeout=30).status_code == 204


def test_zip_stow_and_delete_write_their_entries(file_gateway: RunningGateway) -> None:
    instances = factory.ct_series(2, 64, 64, seed=163)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for i, data in enumerate(instances):
            zf.writestr(f"{i}.dcm", data)
    response = httpx.post(
        file_gateway.url + "/studies",
        content=archive.getvalue(),
        headers={"Content-Type": "application/zip", "Accept": "application/dicom+json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    study = uids_of(instances[0])[0]
    assert httpx.delete(f"{file_gateway.url}/studies/{study}", timeout=30).status_code == 204
    entries = feed(file_gateway)
    assert [(e["Action"], e["Origin"], e["State"]) for e in entries] == [("create", "stow", "deleted")] * 2 + [
        ("delete", "delete", "deleted")
    ] * 2
    assert [e["Metadata"] for e in entries] == [None] * 4  # gone: no metadata to give


@pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK is not installed (apt-get install dcmtk)")
def test_a_c_store_by_storescu_writes_one_entry(tmp_path: Path) -> None:
    data = factory.ct_series(1, 64, 64, seed=164)[0]
    path = factory.write(tmp_path / "one.dcm", data)
    with dimse_gateway(tmp_path, clients=[client("MODALITY", scopes=["write"])]) as gw:
        argv = ["storescu", "-aet", "MODALITY", "-aec", gw.ae_title, "-to", "30", "127.0.0.1", str(gw.port), str(path)]
        for _ in range(2):  # the second push is an identical re-send: no second entry
            result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
            assert result.returncode == 0, result.stdout + result.stderr
        response = gw.get("/changefeed")
        assert response.status_code == 200, response.text
        entries = response.json()
    assert [(e["SopInstanceUid"], e["Action"], e["Origin"]) for e in entries] == [
        (uids_of(data)[2], "create", "dimse:modality")
    ]


def test_the_changes_command_prints_and_follows_the_feed(file_gateway: RunningGateway) -> None:
    gw = file_gateway
    instances = factory.ct_series(3, 64, 64, seed=165)
    for instance in instances[:2]:  # one request each: the feed's order is the order sent
        assert stow(gw.url, [instance]).status_code == 200
    study, series, sop = uids_of(instances[0])
    assert httpx.delete(f"{gw.url}/studies/{study}/series/{series}/instances/{sop}", timeout=30).status_code == 204

    run = gw.cli("changes")
    assert run.returncode == 0, run.stderr
    lines = [line.split("\t") for line in run.stdout.splitlines()]
    assert [(cols[2], cols[3], cols[4], cols[7]) for cols in lines] == [
        ("create", "deleted", "stow", sop),
        ("create", "current", "stow", uids_of(instances[1])[2]),
        ("delete", "deleted", "delete", sop),
    ]
    assert lines[2][8] == "anonymous"  # who deleted it (authentication is off on loopback)
    run = gw.cli("changes", "--json", "--after", lines[0][0])
    assert run.returncode == 0, run.stderr
    entries = [orjson.loads(line) for line in run.stdout.splitlines()]
    assert [(e["Sequence"], e["Action"], e["Principal"]) for e in entries] == [
        (int(lines[1][0]), "create", None),
        (int(lines[2][0]), "delete", "anonymous"),
    ]
    assert gw.cli("changes", "--after", "-1").returncode == 2

    follower = subprocess.Popen(
        [sys.executable, "-m", "gateway", "changes", "--follow", "--json", "--interval", "0.1", *gw.args],
        env=gw.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines_seen: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines_seen.put(line) for line in follower.stdout or ()], daemon=True).start()
    try:
        followed = [orjson.loads(lines_seen.get(timeout=60)) for _ in range(3)]
        assert [e["Sequence"] for e in followed] == [int(cols[0]) for cols in lines]
        assert stow(gw.url, instances[2:]).status_code == 200
        arrived = orjson.loads(lines_seen.get(timeout=60))
        assert (arrived["SopInstanceUid"], arrived["Action"]) == (uids_of(instances[2])[2], "create")
    finally:
        follower.terminate()
        follower.wait(30)
