"""What a writer may create, and what its refusals reveal (the write side of study restrictions).

A study's PatientID decides who sees it, so the index keeps every study on the patient it was
first stored with (a "relational mismatch" is refused for everyone), a principal restricted by
StudyInstanceUID alone may add to its studies but not create one, and every refusal on the
grounds of a restriction reads the same whether the study or instance is absent, hidden or
another patient's. Run against a real gateway process with OIDC tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pydicom
import pytest

from tests import factory
from tests.fixtures_gateway import stop_gateway
from tests.fixtures_security import (
    RESTRICTION_CLAIM,
    Issuer,
    JwksServer,
    SecuredGateway,
    bearer,
    oidc_config,
    start_secured_gateway,
)
from tests.http_helpers import failure_reasons, stow_body, uids_of

pytestmark = pytest.mark.timeout(300)

PATIENT_MISMATCH = 0xA779
NOT_AUTHORIZED = 0x0124
ALICE = factory.Patient("ALPHA^ALICE", "PAT-ALICE")
BOB = factory.Patient("BRAVO^BOB", "PAT-BOB")
CAROL = factory.Patient("CHARLIE^CAROL", "PAT-CAROL")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, jwks_server: JwksServer) -> Iterator[SecuredGateway]:
    sg = start_secured_gateway(tmp_path_factory.mktemp("writes"), oidc_config(jwks_server.url))
    try:
        yield sg
    finally:
        stop_gateway(sg.gw)


def token(issuer: Issuer, scope: str, restriction: dict[str, Any] | None = None) -> dict[str, str]:
    claims: dict[str, Any] = {"scope": scope}
    if restriction is not None:
        claims[RESTRICTION_CLAIM] = restriction
    return bearer(issuer.token(sub=f"writer-{abs(hash(repr(claims)))}", **claims))


def stow(sg: SecuredGateway, headers: dict[str, str], *instances: bytes) -> httpx.Response:
    body, content_type = stow_body(list(instances))
    return httpx.post(sg.url + "/studies", content=body, headers={**headers, "Content-Type": content_type})


def refusal(response: httpx.Response, sent: bytes | None = None) -> tuple[int, int, str]:
    """What a client learns from a refused one-instance STOW: status, FailureReason, Warning
    (without the SOP Instance UID the client itself sent, which the Warning repeats)."""
    (reason,) = failure_reasons(response)
    warning = response.headers.get("warning", "")
    if sent is not None:
        warning = warning.replace(uids_of(sent)[2], "{sop}")
    return response.status_code, reason, warning


def test_a_study_keeps_the_patient_it_was_first_stored_with(gateway: SecuredGateway, issuer: Issuer) -> None:
    # The attack: a writer restricted to Alice plants a study under a UID it expects the modality
    # to use next; the modality then stores Bob's image there.
    alice_writer = token(issuer, "read write", {"PatientID": [ALICE.id]})
    decoy = factory.ct_instance(seed=7001, patient=ALICE)
    study, _, _ = uids_of(decoy)
    assert stow(gateway, alice_writer, decoy).status_code == 200

    modality = token(issuer, "write")
    bobs = factory.ct_instance(seed=7002, patient=BOB, study_uid=study)
    response = stow(gateway, modality, bobs)
    status, reason, warning = refusal(response)
    assert (status, reason) == (409, PATIENT_MISMATCH)
    assert "relational mismatch" in warning
    assert ALICE.id not in response.text
    assert ALICE.id not in warning

    # Alice's writer reads only its decoy; Bob's readers see nothing of the study.
    metadata = httpx.get(f"{gateway.url}/studies/{study}/metadata", headers=alice_writer)
    assert metadata.status_code == 200
    assert BOB.id not in metadata.text
    assert len(metadata.json()) == 1
    bob_reader = token(issuer, "read", {"PatientID": [BOB.id]})
    assert httpx.get(f"{gateway.url}/studies/{study}/metadata", headers=bob_reader).status_code == 404
    assert httpx.get(f"{gateway.url}/studies", headers=bob_reader).json() == []


def test_another_issuer_is_another_patient(gateway: SecuredGateway, issuer: Issuer) -> None:
    writer = token(issuer, "write")
    first = factory.ct_instance(seed=7011, patient=CAROL, IssuerOfPatientID="HOSPITAL-1")
    study, _, _ = uids_of(first)
    assert stow(gateway, writer, first).status_code == 200
    same_id_other_issuer = factory.ct_instance(
        seed=7012, patient=CAROL, study_uid=study, instance_number=2, IssuerOfPatientID="HOSPITAL-2"
    )
    assert refusal(stow(gateway, writer, same_id_other_issuer))[:2] == (409, PATIENT_MISMATCH)
    same_patient = factory.ct_instance(
        seed=7013, patient=CAROL, study_uid=study, instance_number=3, IssuerOfPatientID="HOSPITAL-1"
    )
    assert stow(gateway, writer, same_patient).status_code == 200


def test_a_study_restricted_writer_adds_to_its_study_but_creates_none(gateway: SecuredGateway, issuer: Issuer) -> None:
    existing = factory.ct_instance(seed=7021, patient=ALICE)
    study, series, _ = uids_of(existing)
    assert stow(gateway, token(issuer, "write"), existing).status_code == 200
    planned = pydicom.uid.generate_uid()
    writer = token(issuer, "read write", {"StudyInstanceUID": [study, planned]})

    # A key image for its study (same patient): stored.
    addition = factory.ct_instance(seed=7022, patient=ALICE, study_uid=study, series_uid=series, instance_number=2)
    assert stow(gateway, writer, addition).status_code == 200
    # The same study under another patient: the relational check, as for anyone.
    moved = factory.ct_instance(seed=7023, patient=BOB, study_uid=study, instance_number=3)
    assert refusal(stow(gateway, writer, moved))[:2] == (409, PATIENT_MISMATCH)
    # A listed study that does not exist yet: not created, whoever the patient (no planting).
    planted = factory.ct_instance(seed=7024, patient=BOB, study_uid=planned)
    assert refusal(stow(gateway, writer, planted))[:2] == (409, NOT_AUTHORIZED)
    assert httpx.get(f"{gateway.url}/studies/{planned}/metadata", headers=token(issuer, "read")).status_code == 404


def test_refusals_do_not_tell_hidden_from_forbidden(gateway: SecuredGateway, issuer: Issuer) -> None:
    bobs = factory.ct_instance(seed=7031, patient=BOB)
    bob_study, _, bob_sop = uids_of(bobs)
    assert stow(gateway, token(issuer, "write"), bobs).status_code == 200
    alice_writer = token(issuer, "write", {"PatientID": [ALICE.id]})

    # 1. An instance of a patient outside the restriction: the reference refusal.
    carols = factory.ct_instance(seed=7032, patient=CAROL)
    forbidden = refusal(stow(gateway, alice_writer, carols), carols)
    # 2. Alice's instance into Bob's (hidden) study.
    into_bobs = factory.ct_instance(seed=7033, patient=ALICE, study_uid=bob_study)
    into_hidden_study = refusal(stow(gateway, alice_writer, into_bobs), into_bobs)
    # 3. A new study of Alice's that reuses the SOP Instance UID of Bob's hidden instance.
    reuse = factory.ct_instance(seed=7034, patient=ALICE, sop_uid=bob_sop)
    reused_sop = refusal(stow(gateway, alice_writer, reuse), reuse)

    assert forbidden[:2] == (409, NOT_AUTHORIZED)
    assert into_hidden_study == forbidden
    assert reused_sop == forbidden
    assert "{sop}: this instance is outside the studies" in forbidden[2]
    assert bob_study not in into_hidden_study[2]
    # Nothing was left under Alice's would-be study; Bob's instance is untouched.
    reader = token(issuer, "read")
    assert httpx.get(f"{gateway.url}/studies/{uids_of(reuse)[0]}/metadata", headers=reader).status_code == 404
    (bob_meta,) = httpx.get(f"{gateway.url}/studies/{bob_study}/metadata", headers=reader).json()
    assert bob_meta["00100020"]["Value"] == [BOB.id]
