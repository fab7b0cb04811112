"""Storage commitment requests kept in the index (gateway/dimse/commitment_journal.py), between
replicas: a replica that stops hands its unreported requests to another, which reports them;
a request the index cannot record is refused rather than answered and then forgotten; a
request reported or given up leaves nothing behind.

Two stand-in SCPs (tests/dimse_commitment_scp.py) on one data directory share the store and the
SQLite index as two replicas do; the modality is a real pynetdicom SCU over the network. A
replica killed outright is in test_dimse_commitment_restart.py (the real serve command), the
lease rules over both databases in test_commitments_index.py."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

from gateway.errors import IndexError_
from gateway.ports import PendingCommitment, PendingCommitments
from tests import factory
from tests.commitment_scu import (
    ALL_COMMITTED,
    MODALITY,
    REPORT_WAIT,
    Modality,
    references_of,
    request,
    study,
)
from tests.dimse_commitment_scp import CommitmentScp, Peer, commitment_scp


def pending(scp: CommitmentScp) -> list[PendingCommitment]:
    assert isinstance(scp.index, PendingCommitments)
    result: list[PendingCommitment] = scp.portal.call(scp.index.pending_commitments)
    return result


def test_a_replica_stopping_hands_its_pending_report_to_another(tmp_path: Path) -> None:
    instances = study(seed=31, n=2)
    modality = Modality()
    peers = {MODALITY: Peer("modality", port=modality.port)}
    transaction = factory.new_uid("transaction", 31)
    with ExitStack() as replica_b:
        with commitment_scp(tmp_path, peers=peers, holder="replica-a", report_retry_delays=(30.0,)) as a:
            a.stow(*instances)
            with modality.associated(a, reports_here=False) as assoc:
                assert request(assoc, transaction, references_of(instances)) == 0x0000
            a.first_failed_report(timeout=REPORT_WAIT)  # the modality's port is closed: A waits 30 s
            b = replica_b.enter_context(commitment_scp(tmp_path, peers=peers, holder="replica-b"))
            time.sleep(0.5)  # B looks twice meanwhile: A's lease holds, B leaves the request alone
            assert b.outcomes == []
        # A stopped: its request is released, not given up, and B takes it at its next look.
        assert a.outcomes == []
        with modality.listening():
            report = modality.next_report()
        (outcome,) = b.wait_outcomes(1)
    assert not report.same_association
    assert str(report.info.TransactionUID) == transaction
    assert report.event_type == ALL_COMMITTED
    assert sorted(report.committed) == sorted(references_of(instances))
    assert (outcome.peer, outcome.delivered, outcome.transaction_uid) == ("modality", "new association", transaction)
    assert modality.reports.empty()


class Unrecordable:
    """The index as the journal sees it, refusing to record a request (a database down)."""

    def __init__(self, store: PendingCommitments) -> None:
        self._store = store

    async def add_commitment(self, pending: PendingCommitment, holder: str, until: float) -> None:
        raise IndexError_("index unavailable (injected)")

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def test_a_request_the_index_cannot_record_is_refused_with_processing_failure(tmp_path: Path) -> None:
    instances = study(seed=32, n=1)
    modality = Modality()
    with commitment_scp(
        tmp_path,
        peers={MODALITY: Peer("modality")},
        holder="replica-a",
        wrap_journal=Unrecordable,
    ) as scp:
        scp.stow(*instances)
        with modality.associated(scp) as assoc:
            assert request(assoc, factory.new_uid("transaction", 32), references_of(instances)) == 0x0110
        (outcome,) = scp.wait_outcomes(1)
        assert outcome.comment == "the request cannot be recorded now"
        assert scp.handler.pending == 0
    assert modality.reports.empty()


def test_a_request_reported_or_given_up_leaves_nothing_in_the_index(tmp_path: Path) -> None:
    instances = study(seed=33, n=1)
    listening, deaf = Modality(), Modality("DEAF")
    peers = {MODALITY: Peer("modality", port=listening.port), "DEAF": Peer("deaf", port=deaf.port)}
    with commitment_scp(tmp_path, peers=peers, holder="replica-a", report_retry_delays=(0.1, 0.2)) as scp:
        scp.stow(*instances)
        with listening.associated(scp) as assoc:
            assert request(assoc, factory.new_uid("transaction", 33, 1), references_of(instances)) == 0x0000
            assert listening.next_report().event_type == ALL_COMMITTED
        with deaf.associated(scp, reports_here=False) as assoc:
            assert request(assoc, factory.new_uid("transaction", 33, 2), references_of(instances)) == 0x0000
        given_up = scp.wait_outcomes(2)[1]
        assert (given_up.delivered, given_up.status) == ("", 0x0110)
        assert pending(scp) == []
