"""DICOM TLS on the associations the gateway opens to a [[dimse_clients]] entry's port (PS3.15
B.1): a C-MOVE to DCMTK's storescp listening over TLS, which requires the gateway's client
certificate (a destination whose certificate another CA signed is not reached: 0xA801, nothing
sent to it in the clear), and a storage commitment report on a new association to a modality
that takes reports only over TLS."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest
import trustme

from tests import factory
from tests.commitment_scu import ALL_COMMITTED, MODALITY, Modality, references_of, request, study
from tests.dimse_gateway import client, dimse_gateway
from tests.dimse_retrieve_scp import retrieve_scp
from tests.http_helpers import uids_of
from tests.peers.ports import free_port
from tests.test_dimse_retrieve import DEST_AET, PEERS, movescu, received, storescp

pytestmark = [
    pytest.mark.skipif(shutil.which("storescp") is None, reason="DCMTK is not installed (apt-get install dcmtk)"),
    pytest.mark.timeout(180),
]


def _pems(where: Path, name: str, cert: trustme.LeafCert) -> tuple[Path, Path]:
    key, pem = where / f"{name}.key", where / f"{name}.pem"
    cert.private_key_pem.write_to_path(str(key))
    cert.cert_chain_pems[0].write_to_path(str(pem))
    return key, pem


@pytest.mark.parametrize("trusted", [True, False], ids=["destination-trusted", "destination-from-another-ca"])
def test_a_move_reaches_a_tls_destination_only_when_its_certificate_is_trusted(tmp_path: Path, trusted: bool) -> None:
    ca, other_ca = trustme.CA(), trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    dest_key, dest_pem = _pems(tmp_path, "dest", (ca if trusted else other_ca).issue_cert("127.0.0.1", "localhost"))
    gw_key, gw_pem = _pems(tmp_path, "gateway", ca.issue_cert("gateway.example"))
    series = factory.ct_series(3, rows=32, cols=32, seed=71)
    study = uids_of(series[0])[0]
    out = tmp_path / "dest"
    out.mkdir()
    # storescp over TLS, verifying the caller's certificate against the CA (-rc: required).
    tls_options = ("+tls", str(dest_key), str(dest_pem), "+cf", str(ca_file), "-rc")
    with storescp(out, *tls_options) as port:
        options = {DEST_AET: {"tls": {"ca_file": str(ca_file), "cert_file": str(gw_pem), "key_file": str(gw_key)}}}
        destinations = {DEST_AET: ("127.0.0.1", port)}
        with retrieve_scp(tmp_path, peers=PEERS, destinations=destinations, options=options) as scp:
            scp.stow(*series)
            log = movescu(scp, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
    [outcome] = scp.outcomes
    if trusted:
        assert (outcome.status, outcome.completed) == (0x0000, 3), log
        assert sorted(received(out)) == sorted(uids_of(d)[2] for d in series)
    else:
        assert outcome.status == 0xA801, log
        assert outcome.comment == "the destination cannot be reached"
        assert list(out.iterdir()) == []


def test_a_commitment_report_goes_over_tls_to_a_modality_that_takes_it_only_there(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    key, pem = _pems(tmp_path, "modality", ca.issue_cert("127.0.0.1"))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(pem), str(key))
    modality = Modality()
    modality.port = free_port()
    tls = {"ca_file": str(ca_file)}
    clients = [client(MODALITY, name="modality", scopes=["write"], port=modality.port, tls=tls)]
    instances = study(seed=9, n=2)
    with dimse_gateway(tmp_path / "gw", clients=clients) as gw:
        gw.stow(*instances)
        transaction = factory.new_uid("transaction", 9)
        with modality.listening(server), modality.associated(gw, reports_here=False) as assoc:
            assert request(assoc, transaction, references_of(instances)) == 0x0000
            report = modality.next_report()
    assert not report.same_association
    assert report.event_type == ALL_COMMITTED
    assert str(report.info.TransactionUID) == transaction
