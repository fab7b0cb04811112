"""C-GET follows the requester's transfer syntax preference (gateway/dimse/get_syntaxes.py):
DCMTK's getscu proposes its storage contexts with one syntax first (``+xt``: JPEG-LS Lossless,
then Explicit VR Little Endian...); the gateway accepts that one when it can deliver any
instance in it, sends each instance stored in it as stored, and encodes the others into it
losslessly. A lossy syntax first (``+xy``: JPEG Baseline) is passed over for one the gateway
can deliver everything in: nothing is lossily re-encoded."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests import factory
from tests.dimse_gateway import DimseGateway, client, dimse_gateway
from tests.http_helpers import uids_of
from tests.test_dimse_store import dataset_bytes

pytestmark = [
    pytest.mark.skipif(shutil.which("getscu") is None, reason="DCMTK is not installed (apt-get install dcmtk)"),
    pytest.mark.timeout(180),
]

ELE = "1.2.840.10008.1.2.1"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseGateway]:
    with dimse_gateway(tmp_path_factory.mktemp("get"), clients=[client("GETSCU", scopes=["read"])]) as running:
        yield running


@pytest.fixture(scope="module")
def study(gw: DimseGateway) -> dict[str, bytes]:
    """SOP Instance UID → the instance as sent: one stored in each of JPEG-LS Lossless, Explicit
    VR Little Endian and JPEG 2000 Lossless, in one study."""
    ident = {"study_uid": factory.new_uid("get-syntax-study"), "series_uid": factory.new_uid("get-syntax-series")}
    instances = [
        factory.jpegls_lossless_instance(seed=71, **ident),
        factory.ct_instance(seed=72, **ident),
        factory.j2k_lossless_instance(seed=73, **ident),
    ]
    gw.stow(*instances)
    return {uids_of(data)[2]: data for data in instances}


def getscu(gw: DimseGateway, study: dict[str, bytes], out: Path, preference: str) -> dict[str, Path]:
    study_uid = uids_of(next(iter(study.values())))[0]
    out.mkdir()
    argv = ["getscu", "-v", preference, "-S", "-aet", "GETSCU", "-aec", gw.ae_title, "-od", str(out), "-to", "30"]
    argv += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(gw.port)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    got = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID): path for path in out.iterdir()}
    assert got.keys() == study.keys(), done.stdout + done.stderr
    return got


def syntax_of(data: bytes | Path) -> str:
    source = data if isinstance(data, Path) else pydicom.filebase.DicomBytesIO(data)
    return str(pydicom.dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def pixels(data: bytes | Path) -> np.ndarray:
    source = data if isinstance(data, Path) else pydicom.filebase.DicomBytesIO(data)
    return pydicom.dcmread(source).pixel_array


def test_the_requesters_first_syntax_is_used_and_what_is_stored_in_it_goes_as_stored(
    gw: DimseGateway, study: dict[str, bytes], tmp_path: Path
) -> None:
    got = getscu(gw, study, tmp_path / "jls", "+xt")  # JPEG-LS Lossless first, then uncompressed
    for sop, original in study.items():
        assert syntax_of(got[sop]) == JPEG_LS_LOSSLESS, sop
        if syntax_of(original) == JPEG_LS_LOSSLESS:
            assert dataset_bytes(got[sop].read_bytes()) == dataset_bytes(original)  # its stored bytes
        else:
            assert np.array_equal(pixels(got[sop]), pixels(original)), sop  # encoded losslessly


def test_a_lossy_first_choice_is_passed_over_for_one_everything_can_go_in(
    gw: DimseGateway, study: dict[str, bytes], tmp_path: Path
) -> None:
    got = getscu(gw, study, tmp_path / "lossy", "+xy")  # JPEG Baseline first, then uncompressed
    for sop, original in study.items():
        assert syntax_of(got[sop]) == ELE, sop
        assert np.array_equal(pixels(got[sop]), pixels(original)), sop
    (stored_ele,) = [sop for sop, data in study.items() if syntax_of(data) == ELE]
    assert dataset_bytes(got[stored_ele].read_bytes()) == dataset_bytes(study[stored_ele])
