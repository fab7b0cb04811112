"""A WADO-RS instances response of stored instances sent as stored says its Content-Length (the
body is then written without chunk framing, and a client can show progress); one whose parts are
transcoded streams chunked; an object whose bytes no longer match its index row ends the response
with an error, never a body that disagrees with its announced length."""

from __future__ import annotations

import httpx
import pydicom

from tests import factory
from tests.fixtures_gateway import RunningGateway
from tests.http_helpers import split_multipart, stow, uids_of

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
IMPLICIT = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'


def test_a_series_sent_as_stored_says_its_length_and_its_bytes_are_the_stored_ones(
    file_gateway: RunningGateway,
) -> None:
    series = factory.ct_series(4, 64, 64, seed=41)
    assert stow(file_gateway.url, series).status_code == 200
    study, series_uid, _ = uids_of(series[0])
    url = f"{file_gateway.url}/studies/{study}/series/{series_uid}"

    response = httpx.get(url, headers={"Accept": AS_STORED}, timeout=30)
    assert response.status_code == 200
    assert "chunked" not in response.headers.get("transfer-encoding", "")
    assert int(response.headers["content-length"]) == len(response.content)
    assert sorted(body for _, body in split_multipart(response)) == sorted(series)

    study_response = httpx.get(f"{file_gateway.url}/studies/{study}", headers={"Accept": AS_STORED}, timeout=30)
    assert int(study_response.headers["content-length"]) == len(study_response.content)


def test_transcoded_parts_stream_without_a_length(file_gateway: RunningGateway) -> None:
    series = factory.ct_series(2, 64, 64, seed=42)  # stored Explicit VR Little Endian
    assert stow(file_gateway.url, series).status_code == 200
    study, series_uid, _ = uids_of(series[0])

    response = httpx.get(
        f"{file_gateway.url}/studies/{study}/series/{series_uid}", headers={"Accept": IMPLICIT}, timeout=30
    )
    assert response.status_code == 200
    assert "content-length" not in response.headers
    assert response.headers["transfer-encoding"] == "chunked"
    parts = split_multipart(response)
    assert len(parts) == 2
    for _, body in parts:
        assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(body)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"


def test_an_object_shorter_than_its_index_row_breaks_the_response_off(file_gateway: RunningGateway) -> None:
    series = factory.ct_series(3, 64, 64, seed=43)
    assert stow(file_gateway.url, series).status_code == 200
    study, series_uid, sop = uids_of(series[1])
    [stored] = [p for p in (file_gateway.data_dir / "objects").rglob("*.dcm") if sop in str(p)]
    stored.write_bytes(stored.read_bytes()[:-100])  # damaged behind the gateway's back

    url = f"{file_gateway.url}/studies/{study}/series/{series_uid}"
    try:
        response = httpx.get(url, headers={"Accept": AS_STORED}, timeout=30)
    except httpx.RemoteProtocolError:
        pass  # the connection was closed before the announced length: the client knows it is cut
    else:
        raise AssertionError(f"a complete response ({response.status_code}) for a damaged object")
    assert "holds" in file_gateway.log()
    assert sop in file_gateway.log()
    # The gateway goes on serving.
    assert httpx.get(f"{file_gateway.url}/studies/{study}/series", timeout=30).status_code == 200
