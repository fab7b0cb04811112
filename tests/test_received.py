"""A data set received by C-STORE becomes a Part 10 spool file (gateway.dicom.received): DCMTK's
storescu sends to a pynetdicom Storage SCP of this process receiving into files, and the spool
file is pynetdicom's file renamed (the same inode, nothing left in the receive folder), with the
gateway's own File Meta Information before the data set exactly as sent."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import CTImageStorage

from gateway.dicom.received import IMPLEMENTATION_VERSION, receive_into_files, spool_received
from gateway.dicom.records import ReceivedInstance
from tests import factory
from tests.peers.ports import free_port

pytestmark = [
    pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK is not installed (apt-get install dcmtk)"),
    pytest.mark.timeout(60),
]


def test_a_received_data_set_is_renamed_into_the_spool_with_the_gateways_meta(
    receive_folder: Path, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    sent_bytes = factory.ct_series(1, 256, 256, seed=77)[0]
    sent_file = factory.write(tmp_path / "sent.dcm", sent_bytes)
    spooled: list[tuple[ReceivedInstance, int]] = []

    def on_store(event: Any) -> int:
        inode = os.stat(event.request._dataset_path).st_ino  # pynetdicom's file, before the spool
        spooled.append((spool_received(event, spool), inode))
        return 0x0000

    ae = AE(ae_title="SPOOLTEST")
    ae.add_supported_context(CTImageStorage, pydicom.dcmread(sent_file).file_meta.TransferSyntaxUID)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        result = subprocess.run(
            ["/usr/bin/storescu", "-aec", "SPOOLTEST", "127.0.0.1", str(port), str(sent_file)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stdout + result.stderr
    ((item, inode),) = spooled
    assert os.stat(item.path).st_ino == inode  # renamed, not copied
    assert list(receive_folder.iterdir()) == []
    got = pydicom.dcmread(item.path)
    assert got.file_meta.ImplementationVersionName == IMPLEMENTATION_VERSION
    sent = pydicom.dcmread(BytesIO(sent_bytes))
    # The data set after the meta is the one sent, byte for byte.
    offset = 132 + 12 + int.from_bytes(item.path.read_bytes()[140:144], "little")
    sent_offset = 132 + 12 + int.from_bytes(sent_bytes[140:144], "little")
    assert item.path.read_bytes()[offset:] == sent_bytes[sent_offset:]
    assert got.SOPInstanceUID == sent.SOPInstanceUID


def test_apps_stopping_out_of_order_leave_the_temporary_directory_as_it_was(tmp_path: Path) -> None:
    # Two gateways in one process (the replica tests) started A, B and stopped A, B: B keeps
    # receiving into its own directory, and afterwards tempfile makes its files where it did
    # before either started, not in A's spool (gone with A's test directory).
    before = (tempfile.tempdir, _config.STORE_RECV_CHUNKED_DATASET)
    restore_a = receive_into_files(tmp_path / "a")
    restore_b = receive_into_files(tmp_path / "b")
    restore_a()
    assert tempfile.tempdir == str(tmp_path / "b")
    assert _config.STORE_RECV_CHUNKED_DATASET is True
    restore_b()
    assert (tempfile.tempdir, _config.STORE_RECV_CHUNKED_DATASET) == before
