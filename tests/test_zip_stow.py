"""STOW-RS of ZIP archives (issue #5, part 6): the three layouts people upload (flat, a
numbered series, the OsiriX / Horos folder tree with or without DICOMDIR), as a whole
``application/zip`` body or as parts of ``multipart/related``; non-DICOM members reported and
skipped; hostile archives (zip bombs, path tricks, nested archives, lying or encrypted
members) refused with nothing left behind."""

from __future__ import annotations

import io
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.fileset import FileSet

from tests import factory
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.http_helpers import referenced_sops, uids_of

ZIP = {"Content-Type": "application/zip", "Accept": "application/dicom+json"}


def archive(members: Sequence[tuple[str, bytes]], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def post_zip(gw: RunningGateway, body: bytes, study: str | None = None) -> httpx.Response:
    url = gw.url + "/studies" + (f"/{study}" if study else "")
    return httpx.post(url, content=body, headers=ZIP, timeout=120)


def sops(instances: Sequence[bytes]) -> list[str]:
    return [uids_of(d)[2] for d in instances]


def stored_sops(gw: RunningGateway) -> set[str]:
    rows = httpx.get(gw.url + "/instances?limit=1000", timeout=30).json()
    return {row["00080018"]["Value"][0] for row in rows}


def leftovers(gw: RunningGateway) -> list[str]:
    spool = gw.data_dir / "spool"
    return [str(p) for p in spool.rglob("*") if p.is_file()] if spool.exists() else []


def dicomdir_for(instances: Sequence[bytes]) -> bytes:
    """A real DICOMDIR (pydicom's FileSet) for ``instances``."""
    fs = FileSet()
    for data in instances:
        fs.add(pydicom.dcmread(io.BytesIO(data)))
    with tempfile.TemporaryDirectory() as d:
        fs.write(d)
        return (Path(d) / "DICOMDIR").read_bytes()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("zip"))
    try:
        yield gateway
    finally:
        stop_gateway(gateway)


# --- the layouts ---------------------------------------------------------------------------------


def test_flat_archive_of_one_instance(gw: RunningGateway) -> None:
    one = factory.ct_instance(seed=701, rows=16, cols=16)
    response = post_zip(gw, archive([("image.dcm", one)]))
    assert response.status_code == 200, response.text
    assert referenced_sops(response) == sops([one])
    assert "warning" not in response.headers


def test_flat_archive_of_many_instances(gw: RunningGateway) -> None:
    many = [
        factory.ct_instance(seed=702, rows=16, cols=16),
        factory.mr_instance(seed=703, rows=16, cols=16),
        factory.rle_instance(seed=704, rows=16, cols=16),
        factory.multiframe_xa(seed=705, frames=3, rows=16, cols=16),
        factory.sr_instance(seed=706),
    ]
    response = post_zip(gw, archive([(f"file{i}", d) for i, d in enumerate(many)]))
    assert response.status_code == 200, response.text
    assert sorted(referenced_sops(response)) == sorted(sops(many))
    assert set(sops(many)) <= stored_sops(gw)


def test_numbered_multi_file_series(gw: RunningGateway) -> None:
    series = factory.ct_series(12, 16, 16, seed=707)
    members = [(f"IM{i + 1:04d}.dcm", d) for i, d in enumerate(series)]
    response = post_zip(gw, archive(members, compression=zipfile.ZIP_STORED))
    assert response.status_code == 200, response.text
    assert sorted(referenced_sops(response)) == sorted(sops(series))
    study, series_uid, _ = uids_of(series[0])
    rows = httpx.get(f"{gw.url}/studies/{study}/series/{series_uid}/instances").json()
    assert len(rows) == 12


@pytest.mark.parametrize("with_dicomdir", [True, False], ids=["with-DICOMDIR", "without-DICOMDIR"])
def test_osirix_folder_tree(gw: RunningGateway, with_dicomdir: bool) -> None:
    """Patient / study / series folders, file names without extension, Mac leftovers."""
    seed = 710 if with_dicomdir else 720
    patient = factory.Patient("HOROS^HANNA", f"HOR-{seed}")
    head = factory.ct_series(3, 16, 16, seed=seed, patient=patient, patient_name=patient.name, series_number=1)
    body = factory.ct_series(2, 16, 16, seed=seed, patient=patient, patient_name=patient.name, series_number=2,
                             study_uid=uids_of(head[0])[0])  # fmt: skip
    other_study = [factory.mr_instance(seed=seed + 1, patient=patient, rows=16, cols=16)]
    members = []
    for folder, instances in (
        ("HOROS^HANNA - HOR/CT HEAD - 1/AXIAL - 1", head),
        ("HOROS^HANNA - HOR/CT HEAD - 1/AXIAL - 2", body),
        ("HOROS^HANNA - HOR/MR BRAIN - 2/T1 SAG - 1", other_study),
    ):
        members += [(f"{folder}/IM-0001-{i + 1:04d}", d) for i, d in enumerate(instances)]
    members += [("HOROS^HANNA - HOR/.DS_Store", b"\x00\x00\x00\x01Bud1" + b"\x00" * 200)]
    members += [("__MACOSX/._IM-0001-0001", b"\x00\x05\x16\x07" + b"\x00" * 60)]
    members += [("HOROS^HANNA - HOR/", b"")]  # a directory entry
    if with_dicomdir:
        members.insert(0, ("DICOMDIR", dicomdir_for([*head, *body, *other_study])))
    response = post_zip(gw, archive(members))
    assert response.status_code == 200, response.text
    everything = [*head, *body, *other_study]
    assert sorted(referenced_sops(response)) == sorted(sops(everything))
    warnings = response.headers.get_list("warning")
    assert any(".DS_Store: skipped, not a DICOM Part 10 file" in w for w in warnings)
    assert any("__MACOSX/._IM-0001-0001: skipped" in w for w in warnings)
    assert any("DICOMDIR: skipped" in w for w in warnings) == with_dicomdir
    assert set(sops(everything)) <= stored_sops(gw)


def test_zip_parts_in_multipart_related(gw: RunningGateway) -> None:
    plain = factory.ct_instance(seed=730, rows=16, cols=16)
    zipped = [factory.ct_instance(seed=731, rows=16, cols=16), factory.ct_instance(seed=732, rows=16, cols=16)]
    boundary = "zipmix"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"
            for kind, data in (
                ("application/dicom", plain),
                ("application/zip", archive([("a.dcm", zipped[0]), ("notes.txt", b"hello")])),
                ("application/zip", archive([("b.dcm", zipped[1])])),
            )
        )
        + f"--{boundary}--\r\n".encode()
    )
    response = httpx.post(
        gw.url + "/studies",
        content=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert referenced_sops(response) == sops([plain, *zipped])
    assert any("notes.txt: skipped" in w for w in response.headers.get_list("warning"))


def test_study_in_the_url_still_applies(gw: RunningGateway) -> None:
    mine, other = factory.ct_instance(seed=740, rows=16, cols=16), factory.ct_instance(seed=741, rows=16, cols=16)
    response = post_zip(gw, archive([("1", mine), ("2", other)]), study=uids_of(mine)[0])
    assert response.status_code == 202
    assert referenced_sops(response) == sops([mine])


def test_an_archive_without_dicom_is_a_bad_request(gw: RunningGateway) -> None:
    response = post_zip(gw, archive([("readme.txt", b"no images here")]))
    assert response.status_code == 400
    assert post_zip(gw, b"PK\x03\x04 this is not really a zip").status_code == 400


# --- hostile archives ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway with small limits: 20 MB per request, 50 parts."""
    env = {"DICOMWEB_GATEWAY_LIMITS__MAX_BODY_BYTES": "20000000", "DICOMWEB_GATEWAY_LIMITS__MAX_PARTS": "50"}
    gateway = start_gateway(tmp_path_factory.mktemp("zip-small"), env=env)
    try:
        yield gateway
    finally:
        stop_gateway(gateway)


def _patched(data: bytes, find: bytes, replace: bytes) -> bytes:
    assert data.count(find) >= 1
    return data.replace(find, replace)


def hostile_archives() -> dict[str, tuple[bytes, int, str]]:
    good = factory.ct_instance(seed=750, rows=16, cols=16)
    bomb = b"\x00" * (50 << 20)  # 50 MB of zeros: about 50 kB deflated, a ratio of ~1000
    symlink = zipfile.ZipInfo("link.dcm")
    symlink.external_attr = (0o120777 << 16) | 0x10
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("good.dcm", good)
        z.writestr(symlink, b"/etc/passwd")
    with_symlink = buf.getvalue()
    lying = archive([("good.dcm", good), ("liar.dcm", good)], compression=zipfile.ZIP_STORED)
    size = len(good).to_bytes(4, "little")
    # Both headers of liar.dcm (and good.dcm: they have the same size) claim 100 bytes fewer.
    lying = _patched(lying, size + size, (len(good) - 100).to_bytes(4, "little") * 2)
    encrypted = archive([("good.dcm", good)])
    central = encrypted.rindex(b"PK\x01\x02")
    flags = central + 8
    encrypted = encrypted[:flags] + bytes([encrypted[flags] | 1]) + encrypted[flags + 1 :]
    return {
        "ratio bomb": (archive([("good.dcm", good), ("bomb.dcm", bomb)]), 400, "zip bomb"),
        "total size cap": (archive([(f"part{i}", b"\x00" * (1 << 20)) for i in range(30)]), 413, "expands to more"),
        "too many members": (archive([(f"m{i}", b"x") for i in range(60)]), 413, "members"),
        "dot-dot path": (archive([("good.dcm", good), ("../../etc/evil.dcm", good)]), 400, "'..'"),
        "absolute path": (archive([("/var/tmp/evil.dcm", good)]), 400, "absolute"),
        "drive letter": (archive([("C:\\evil.dcm", good)]), 400, "absolute"),
        "symbolic link": (with_symlink, 400, "symbolic link"),
        "nested by name": (archive([("good.dcm", good), ("inner.zip", archive([("x.dcm", good)]))]), 400, "nested"),
        "nested by content": (archive([("good.dcm", good), ("data.bin", archive([("x", good)]))]), 400, "nested"),
        "gzip inside": (archive([("good.dcm", good), ("x", b"\x1f\x8b" + zlib.compress(good))]), 400, "nested"),
        "lying sizes": (lying, 400, "ZIP member"),
        "encrypted": (encrypted, 400, "encrypted"),
    }


HOSTILE = hostile_archives()


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_archives_are_refused(small_gw: RunningGateway, name: str) -> None:
    body, status, reason = HOSTILE[name]
    before = stored_sops(small_gw)
    response = post_zip(small_gw, body)
    assert response.status_code == status, response.text
    assert reason in response.json()["reason"], response.json()
    assert stored_sops(small_gw) == before, "nothing of a refused archive is kept"
    assert leftovers(small_gw) == []
