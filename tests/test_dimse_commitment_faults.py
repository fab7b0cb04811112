"""Storage commitment when things go wrong: the requesting association gone before the report,
a modality not listening yet or never, too many requests pending, the index unavailable.

These need to hold the gateway's check back or to fail it, which the real listener offers no
way to do, so they run the gateway's CommitmentHandler in the stand-in SCP of
tests/dimse_commitment_scp.py (an in-process gateway, a plain pynetdicom AE); the modality is
still a real pynetdicom SCU talking to it over the network.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from gateway.dimse.commitment import Checker
from gateway.errors import ServiceUnavailable
from gateway.security.access import Restriction
from gateway.services.commitment import DUPLICATE_TRANSACTION_UID, PROCESSING_FAILURE, Reference, Verdict
from tests import factory
from tests.commitment_scu import (
    ALL_COMMITTED,
    FAILURES_EXIST,
    MODALITY,
    REPORT_WAIT,
    Modality,
    references_of,
    request,
    study,
)
from tests.dimse_commitment_scp import Peer, commitment_scp


def test_the_report_goes_on_a_new_association_once_the_modality_released(tmp_path: Any) -> None:
    instances = study(seed=5)
    modality = Modality()
    with commitment_scp(tmp_path, peers={MODALITY: Peer("modality", port=modality.port)}) as scp:
        scp.stow(*instances)
        transaction = factory.new_uid("transaction", 5)
        with modality.listening():
            with scp.hold(), modality.associated(scp) as assoc:
                assert request(assoc, transaction, references_of(instances)) == 0x0000
            # Released before the gateway checked anything: the report must come to its port.
            report = modality.next_report()
        assert not report.same_association
        assert report.calling_ae == scp.ae_title
        assert report.event_type == ALL_COMMITTED
        assert str(report.info.TransactionUID) == transaction
        assert sorted(report.committed) == sorted(references_of(instances))
        assert [o.delivered for o in scp.outcomes] == ["new association"]


def test_the_report_is_retried_until_the_modality_listens(tmp_path: Any) -> None:
    instances = study(seed=6, n=1)
    modality = Modality()
    delays = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
    peers = {MODALITY: Peer("modality", port=modality.port)}
    with commitment_scp(tmp_path, peers=peers, report_retry_delays=delays) as scp:
        scp.stow(*instances)
        with scp.hold(), modality.associated(scp) as assoc:
            assert request(assoc, factory.new_uid("transaction", 6), references_of(instances)) == 0x0000
        scp.first_failed_report(timeout=REPORT_WAIT)  # the modality's port is still closed
        with modality.listening():
            report = modality.next_report()
        assert not report.same_association
        assert report.event_type == ALL_COMMITTED
        (outcome,) = scp.outcomes
        assert outcome.delivered == "new association"
        assert outcome.attempts >= 2


def test_a_report_nobody_takes_is_given_up_and_audited(tmp_path: Any) -> None:
    instances = study(seed=7, n=1)
    modality = Modality()  # never listening
    peers = {MODALITY: Peer("modality", port=modality.port)}
    with commitment_scp(tmp_path, peers=peers, report_retry_delays=(0.1, 0.2)) as scp:
        scp.stow(*instances)
        with scp.hold(), modality.associated(scp) as assoc:
            assert request(assoc, factory.new_uid("transaction", 7), references_of(instances)) == 0x0000
        (outcome,) = scp.wait_outcomes(1)
        assert (outcome.committed, outcome.delivered, outcome.attempts, outcome.status) == (1, "", 3, 0x0110)
        assert "not established" in outcome.comment or "rejected" in outcome.comment
        assert scp.handler.pending == 0


def test_requests_beyond_max_pending_are_refused_with_resource_limitation(tmp_path: Any) -> None:
    instances = study(seed=9, n=1)
    references = references_of(instances)
    modality = Modality()
    with commitment_scp(tmp_path, peers={MODALITY: Peer("modality")}, max_pending=1) as scp:
        scp.stow(*instances)
        with modality.associated(scp) as assoc:
            with scp.hold():
                assert request(assoc, factory.new_uid("transaction", 9, 1), references) == 0x0000
                assert request(assoc, factory.new_uid("transaction", 9, 2), references) == 0x0213
            report = modality.next_report()
            assert report.event_type == ALL_COMMITTED
            scp.wait_outcomes(2)  # the refusal, then the reported request: nothing pending
            assert request(assoc, factory.new_uid("transaction", 9, 3), references) == 0x0000
            assert modality.next_report().event_type == ALL_COMMITTED


class Flaky:
    """The commitment check behind an index that fails ``failures`` times, then recovers."""

    def __init__(self, check: Checker, failures: int) -> None:
        self._check = check
        self.failures = failures

    async def verdicts(self, references: Sequence[Reference], restriction: Restriction | None) -> list[Verdict]:
        if self.failures:
            self.failures -= 1
            raise ServiceUnavailable("index unavailable (injected)")
        return await self._check.verdicts(references, restriction)


@pytest.mark.parametrize(("failures", "expected"), [(2, ALL_COMMITTED), (100, FAILURES_EXIST)])
def test_an_index_outage_is_retried_then_reported_as_processing_failure(
    tmp_path: Any, failures: int, expected: int
) -> None:
    instances = study(seed=10, n=2)
    modality = Modality()
    with commitment_scp(
        tmp_path, peers={MODALITY: Peer("modality")}, wrap_check=lambda check: Flaky(check, failures)
    ) as scp:
        scp.stow(*instances)
        with modality.associated(scp) as assoc:
            assert request(assoc, factory.new_uid("transaction", 10, failures), references_of(instances)) == 0x0000
            report = modality.next_report()
    assert report.event_type == expected
    if expected == FAILURES_EXIST:
        assert report.committed == []
        assert set(report.failed.values()) == {PROCESSING_FAILURE}


def test_stopping_the_gateway_ends_the_commitment_threads(tmp_path: Any) -> None:
    instances = study(seed=11, n=1)
    modality = Modality()
    with commitment_scp(tmp_path, peers={MODALITY: Peer("modality")}) as scp:
        scp.stow(*instances)
        with modality.associated(scp) as assoc:
            assert request(assoc, factory.new_uid("transaction", 11), references_of(instances)) == 0x0000
            assert modality.next_report().event_type == ALL_COMMITTED
        assert [t for t in threading.enumerate() if t.name.startswith("commitment")]
    assert not [t.name for t in threading.enumerate() if t.name.startswith("commitment")]


def test_a_transaction_uid_still_in_use_is_reported_as_duplicate(tmp_path: Any) -> None:
    """PS3.4 J.3.3.1.2: a Transaction UID is in use until its report is sent; a second request
    under it meanwhile gets every instance failed with 0x0131, and the first is reported as usual."""
    instances = study(seed=12, n=2)
    references = references_of(instances)
    transaction = factory.new_uid("transaction", 12)
    modality = Modality()
    with commitment_scp(tmp_path, peers={MODALITY: Peer("modality")}) as scp:
        scp.stow(*instances)
        with modality.associated(scp) as assoc:
            with scp.hold():
                assert request(assoc, transaction, references) == 0x0000
                assert request(assoc, transaction, references) == 0x0000
            reports = sorted((modality.next_report(), modality.next_report()), key=lambda r: r.event_type)
            # Both reported (their outcomes come after), the UID is no longer in use: a new request
            # under it is the SCU's mistake to make (J.3.3.1.2), not a duplicate of a pending one.
            scp.wait_outcomes(2)
            assert request(assoc, transaction, references) == 0x0000
            assert modality.next_report().event_type == ALL_COMMITTED
    first, second = reports
    assert {str(r.info.TransactionUID) for r in reports} == {transaction}
    assert (first.event_type, sorted(first.committed)) == (ALL_COMMITTED, sorted(references))
    assert (second.event_type, second.committed) == (FAILURES_EXIST, [])
    assert second.failed == {sop: DUPLICATE_TRANSACTION_UID for _, sop in references}
