"""Retention rules (issue #18 part 2): which instances a rule selects, in both indexes; a sweep
that removes exactly those through the path of DELETE (change-feed entries with origin
``retention``, audit lines naming the rule) and spares protected studies; two replicas sweeping
at once on one database removing each instance once; ``PUT {base}/studies/{study}/protected``
and its refusals; the dry-run command; rules refused at start-up."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from gateway.adapters.filestore import FileBlobStore
from gateway.adapters.sqlite_index import SqliteIndex
from gateway.commands.cli import main
from gateway.dicom.parse import ParseLimits
from gateway.errors import SettingsError
from gateway.ports import ChangeAction, ChangeQuery, Index, InstanceRecord, RetentionMatch
from gateway.services.access_clock import AccessClock
from gateway.services.instance_writer import InstanceWriter
from gateway.services.pacs_flights import PacsFlights
from gateway.services.removal import RemovalService
from gateway.services.retention import RetentionSweep
from gateway.services.visibility import Visibility
from gateway.settings import load_settings
from gateway.settings_retention import RetentionRule
from tests import factory
from tests.fixtures_gateway import start_gateway, stop_gateway
from tests.fixtures_index import Backend
from tests.fixtures_security import (
    RESTRICTION_CLAIM,
    Issuer,
    JwksServer,
    SecuredGateway,
    bearer,
    oidc_config,
    start_secured_gateway,
)
from tests.http_helpers import stow, stow_body, uids_of
from tests.test_index_contract import record

pytestmark = pytest.mark.timeout(300)

CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR Storage


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def at(rec: InstanceRecord, origin: str, stored_at: float) -> InstanceRecord:
    return dataclasses.replace(rec, origin=origin, stored_at=stored_at)


# -- the index's part, over SQLite and PostgreSQL ------------------------------------------------


@pytest.mark.anyio
async def test_rules_select_exactly_their_instances_outside_protected_studies(index: Index) -> None:
    old, new = 1000.0, 5000.0
    stow_cr = at(record(1, 1, 1, Modality="CR", SOPClassUID=CR_CLASS), "stow", old)
    stow_ct = at(record(2, 1, 1, Modality="CT"), "stow", old)
    stow_cr_new = at(record(3, 1, 1, Modality="CR", SOPClassUID=CR_CLASS), "stow", new)
    imported = at(record(4, 1, 1, Modality="MR"), "import", old)
    modality = at(record(5, 1, 1, Modality="CT"), "dimse:ct_1", old)
    other_client = at(record(6, 1, 1, Modality="CT"), "dimse:ct1", old)  # '_' is no wildcard
    cached = at(record(7, 1, 1, Modality="CT"), "pacs:orthanc", old)
    report = at(record(8, 1, 1, Modality="SR", SOPClassUID=SR_CLASS), "stow", old)
    protected = at(record(9, 1, 1, Modality="CR", SOPClassUID=CR_CLASS), "stow", old)
    everything = [stow_cr, stow_ct, stow_cr_new, imported, modality, other_client, cached, report, protected]
    for rec in everything:
        await index.add(rec)
    await index.set_protected(protected.study_uid, True)
    await index.set_protected(protected.study_uid, True)  # twice is once
    assert await index.is_protected(protected.study_uid)
    assert not await index.is_protected(stow_cr.study_uid)

    async def selected(before: float = 2000.0, **match: str) -> set[str]:
        found = await index.retention_candidates(RetentionMatch(**match), before, 100)
        return {c.sop_uid for c in found}

    def sops(*recs: InstanceRecord) -> set[str]:
        return {r.sop_uid for r in recs}

    assert await selected(origin="stow") == sops(stow_cr, stow_ct, report)
    assert await selected(origin="stow", modality="CR") == sops(stow_cr)
    assert await selected(origin="stow", modality="CR", before=9000.0) == sops(stow_cr, stow_cr_new)
    assert await selected(sop_class=SR_CLASS) == sops(report)
    assert await selected(origin="import") == sops(imported)
    assert await selected(origin="dimse:") == sops(modality, other_client)
    assert await selected(origin="dimse:ct_1") == sops(modality)
    assert await selected(origin="pacs:") == sops(cached)
    assert await selected(modality="CR", before=9000.0) == sops(stow_cr, stow_cr_new)
    candidate = (await index.retention_candidates(RetentionMatch(origin="import"), 2000.0, 10))[0]
    assert (candidate.study_uid, candidate.origin, candidate.stored_at) == (imported.study_uid, "import", old)

    await index.set_protected(protected.study_uid, False)
    assert await selected(modality="CR") == sops(stow_cr, protected)


@pytest.mark.anyio
async def test_a_lease_has_one_holder_until_it_runs_out(index: Index) -> None:
    assert await index.take_lease("retention", "replica-a", 60)
    assert not await index.take_lease("retention", "replica-b", 60)
    assert await index.take_lease("retention", "replica-a", 60)  # renewed by its holder
    assert await index.take_lease("other", "replica-b", 60)  # leases are by name
    assert await index.take_lease("short", "replica-a", 0.01)
    await anyio.sleep(0.05)
    assert await index.take_lease("short", "replica-b", 60)  # ran out: taken over


@pytest.mark.anyio
async def test_a_lease_given_up_is_free_at_once_for_another_holder(index: Index) -> None:
    assert await index.take_lease("retention", "replica-a", 60)
    await index.release_lease("retention", "replica-b")  # not its lease: left alone
    assert not await index.take_lease("retention", "replica-b", 60)
    await index.release_lease("retention", "replica-a")
    assert await index.take_lease("retention", "replica-b", 60)
    await index.release_lease("retention", "replica-a")  # no longer its lease: left alone
    assert not await index.take_lease("retention", "replica-a", 60)


@pytest.mark.anyio
async def test_idle_rules_count_from_the_last_read(index: Index) -> None:
    read = at(record(1, 1, 1, Modality="MR"), "stow", 1000.0)
    unread = at(record(2, 1, 1, Modality="MR"), "stow", 1000.0)
    fresh = at(record(3, 1, 1, Modality="MR"), "stow", 3000.0)
    for rec in (read, unread, fresh):
        await index.add(rec)
    await index.record_access([(read.study_uid, read.series_uid)], 2500.0)
    await index.record_access([(read.study_uid, read.series_uid)], 1500.0)  # a late note never moves it back
    idle = RetentionMatch(modality="MR", idle=True)
    assert [c.sop_uid for c in await index.retention_candidates(idle, 2000.0, 10)] == [unread.sop_uid]
    later = {c.sop_uid: c for c in await index.retention_candidates(idle, 2600.0, 10)}
    assert set(later) == {read.sop_uid, unread.sop_uid}
    assert (later[read.sop_uid].accessed_at, later[read.sop_uid].last_used) == (2500.0, 2500.0)
    assert (later[unread.sop_uid].accessed_at, later[unread.sop_uid].last_used) == (None, 1000.0)
    # An age rule ignores reads.
    aged = await index.retention_candidates(RetentionMatch(modality="MR"), 2000.0, 10)
    assert {c.sop_uid for c in aged} == {read.sop_uid, unread.sop_uid}


@pytest.mark.anyio
async def test_the_access_clock_writes_a_series_at_most_once_per_resolution(index: Index) -> None:
    rec = at(record(1, 1, 1, Modality="MR"), "stow", 100.0)
    other = at(record(1, 2, 1, Modality="MR"), "stow", 100.0)
    await index.add(rec)
    await index.add(other)
    clock = AccessClock(index, resolution=60.0)
    assert await clock.note([rec], now=1000.0) == 1
    assert await clock.note([rec, rec], now=1030.0) == 0  # within the resolution: not written
    assert await clock.note([rec, other], now=1045.0) == 1  # only the series not noted yet
    idle = RetentionMatch(modality="MR", idle=True)
    noted = {c.series_uid: c.accessed_at for c in await index.retention_candidates(idle, 1e9, 10)}
    assert noted == {rec.series_uid: 1000.0, other.series_uid: 1045.0}
    assert await clock.note([rec], now=1061.0) == 1
    noted = {c.series_uid: c.accessed_at for c in await index.retention_candidates(idle, 1e9, 10)}
    assert noted[rec.series_uid] == 1061.0


def _sweeper(index: Index, store: FileBlobStore, rules: list[RetentionRule]) -> RetentionSweep:
    writer = InstanceWriter(store, index)
    flights = PacsFlights(writer, index, {}, None, parse_limits=ParseLimits())
    removal = RemovalService(index, writer, Visibility(index), None, flights, grace=0)
    return RetentionSweep(index, removal, rules, interval=1.0)


@pytest.mark.anyio
async def test_two_replicas_sweeping_at_once_remove_each_instance_once(
    index: Index, backend: Backend, tmp_path: Path
) -> None:
    rule = RetentionRule(name="old-cr", modality="CR", max_age_seconds=100)
    now = time.time()
    doomed = [at(record(s, 1, n, Modality="CR"), "stow", now - 500) for s in (1, 2, 3) for n in (1, 2)]
    young = at(record(4, 1, 1, Modality="CR"), "stow", now)
    kept = at(record(5, 1, 1, Modality="CR"), "stow", now - 500)
    for rec in (*doomed, young, kept):
        await index.add(rec)
    await index.set_protected(kept.study_uid, True)
    store = FileBlobStore(tmp_path / "objects")
    other = backend.open()  # another replica on the same database
    try:
        counts: list[int] = []

        async def sweep(idx: Index) -> None:
            counts.append(await _sweeper(idx, store, [rule]).sweep(time.time()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(sweep, index)
            tg.start_soon(sweep, other)
    finally:
        await other.aclose()
    assert sorted(counts) == [0, len(doomed)]  # one replica held the lease
    deletes = [e for e in await index.changes(ChangeQuery(limit=100)) if e.action is ChangeAction.DELETE]
    assert sorted(e.sop_uid for e in deletes) == sorted(r.sop_uid for r in doomed)  # each once
    assert {(e.origin, e.reason) for e in deletes} == {("retention", "old-cr")}
    for rec in (young, kept):
        assert await index.get(rec.study_uid, rec.series_uid, rec.sop_uid) is not None
    for rec in doomed:
        assert await index.get(rec.study_uid, rec.series_uid, rec.sop_uid) is None


def _listed(url: str) -> list[str]:
    response = httpx.get(f"{url}/instances", params={"limit": 1000}, timeout=30)
    assert response.status_code in (200, 204), response.text
    return [row["00080018"]["Value"][0] for row in response.json()] if response.status_code == 200 else []


def test_two_gateways_on_postgresql_sweep_each_instance_once(tmp_path: Path, postgres_url: str) -> None:
    """Two replicas (processes) on one PostgreSQL index and one store, both running the sweep:
    every instance leaves once, with one change-feed entry, whichever replica took it."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        "retention_interval_seconds = 0.3\ndelete_grace = 0.5\n"
        '[[retention]]\nname = "short-ct"\nmodality = "CT"\nmax_age_seconds = 5\n'
    )
    args = (
        "--config", str(config), "--storage-url", f"file://{tmp_path / 'objects'}", "--index-url", postgres_url,
    )  # fmt: skip
    replicas = []
    try:
        for name in ("one", "two"):
            (tmp_path / name).mkdir()
            replicas.append(start_gateway(tmp_path / name, extra_args=args))
        studies = [factory.ct_series(4, 32, 32, seed=190 + n) for n in range(4)]
        for n, instances in enumerate(studies):
            assert stow(replicas[n % 2].url, instances).status_code == 200
        sops = sorted(uids_of(d)[2] for instances in studies for d in instances)
        assert sorted(_listed(replicas[1].url)) == sops

        deadline = time.monotonic() + 60
        while _listed(replicas[0].url):
            assert time.monotonic() < deadline, "the sweep never removed every instance"
            time.sleep(0.3)
        feed = httpx.get(f"{replicas[1].url}/changefeed", params={"limit": 200}, timeout=30).json()
        deletes = [e for e in feed if e["Action"] == "delete"]
        assert sorted(e["SopInstanceUid"] for e in deletes) == sops  # each once
        assert {e["Origin"] for e in deletes} == {"retention"}
        swept = sum(gw.log().count("retention: rule short-ct removed") for gw in replicas)
        assert swept >= 1
    finally:
        for gw in replicas:
            stop_gateway(gw)


def test_a_stopped_gateway_gives_the_sweep_lease_up(tmp_path: Path) -> None:
    """A gateway that stops gives up the retention lease it holds: another replica sweeps at
    its next interval, not a minute later when the lease would have run out."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        'retention_interval_seconds = 0.2\n[[retention]]\nname = "old-cr"\nmodality = "CR"\nmax_age_seconds = 60\n'
    )
    gw = start_gateway(tmp_path, extra_args=("--config", str(config)))

    async def probe(holder: str, seconds: float) -> bool:
        index = SqliteIndex(tmp_path / "data" / "index.sqlite3")
        try:
            return await index.take_lease("retention", holder, seconds)
        finally:
            await index.aclose()

    try:
        # A probe's lease of no time at all is free again at once for the gateway to take.
        deadline = time.monotonic() + 30
        while anyio.run(probe, "probe", 0.0):
            assert time.monotonic() < deadline, "the gateway never took the sweep's lease"
            time.sleep(0.1)
        assert not anyio.run(probe, "other-replica", 60.0)  # the gateway's, for a minute at least
    finally:
        stop_gateway(gw)
    assert "Application shutdown complete" in gw.log()  # stopped (SIGTERM), not killed
    assert anyio.run(probe, "other-replica", 60.0)


# -- the dry run and the settings --------------------------------------------------------------


def test_dry_run_lists_what_would_go_and_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    now = time.time()
    old_cr = at(record(1, 1, 1, Modality="CR"), "stow", now - 7200)
    new_cr = at(record(2, 1, 1, Modality="CR"), "stow", now)
    old_ct = at(record(3, 1, 1, Modality="CT"), "dimse:scanner", now - 7200)
    protected = at(record(4, 1, 1, Modality="CR"), "stow", now - 7200)

    async def fill() -> None:
        index = SqliteIndex(data / "index.sqlite3")
        try:
            for rec in (old_cr, new_cr, old_ct, protected):
                await index.add(rec)
            await index.set_protected(protected.study_uid, True)
        finally:
            await index.aclose()

    anyio.run(fill)
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'data_dir = "{data}"\n'
        '[[retention]]\nname = "cr-hour"\nmodality = "CR"\nmax_age_seconds = 3600\n'
        '[[retention]]\nname = "modalities"\norigin = "dimse"\nmax_age_seconds = 60\n'
    )
    assert main(["retention", "--dry-run", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    lines = sorted(line.split("\t") for line in out.splitlines())
    assert [(rule, origin, sop) for rule, _, origin, _, _, sop in lines] == [
        ("cr-hour", "stow", old_cr.sop_uid),
        ("modalities", "dimse:scanner", old_ct.sop_uid),
    ]
    assert all(7100 <= int(age.removesuffix("s")) <= 7300 for _, age, *_ in lines)
    assert "2 instance(s) of 2 study(ies) would be removed (dry run)" in err

    async def still_there() -> int:
        index = SqliteIndex(data / "index.sqlite3")
        try:
            recs = (old_cr, new_cr, old_ct, protected)
            found = [await index.get(r.study_uid, r.series_uid, r.sop_uid) for r in recs]
            return sum(f is not None for f in found)
        finally:
            await index.aclose()

    assert anyio.run(still_there) == 4  # a dry run removes nothing
    assert main(["retention", "--config", str(config)]) == 2  # the sweep itself runs in serve


BAD_RULES = [
    ('name = "x"\norigin = "email"\nmax_age_seconds = 10', "origin 'email' must be"),
    ('name = "x"\norigin = "stow:a"\nmax_age_seconds = 10', "origin 'stow:a' must be"),
    ('name = "x"\norigin = "pacs:"\nmax_age_seconds = 10', "names no client or node"),
    ('name = "x"\norigin = "stow"', "one of max_age_seconds (since stored) or max_idle_seconds"),
    ('name = "x"\norigin = "stow"\nmax_age_seconds = -5', "must be positive"),
    ('name = "x"\norigin = "stow"\nmax_idle_seconds = -60', "must be positive"),
    ('name = "x"\norigin = "stow"\nmax_idle_seconds = 60\nmax_age_seconds = 60', "only one"),
    ('name = "x"\nsop_class = "1.2.abc"\nmax_age_seconds = 10', "is not a UID"),
    ('name = "x"\nmodality = "c t"\nmax_age_seconds = 10', "is not a Modality code"),
    ('origin = "stow"\nmax_age_seconds = 10', "name must be"),
    ('name = "pacs-cache"\norigin = "stow"\nmax_age_seconds = 10', "reserved"),
    ('name = "x"\norigin = "stow"\nmax_age_days = 10', "unknown setting retention[0].max_age_days"),
]


@pytest.mark.parametrize(("rule", "message"), BAD_RULES)
def test_bad_rules_are_refused(tmp_path: Path, rule: str, message: str) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f"[[retention]]\n{rule}\n")
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(config_file=config)


def test_settings_refusals_beyond_one_rule(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    rule = '[[retention]]\nname = "x"\norigin = "stow"\nmax_age_seconds = 10\n'
    config.write_text(rule + rule)
    with pytest.raises(SettingsError, match="used by another rule"):
        load_settings(config_file=config)
    config.write_text("retention_interval_seconds = 0\n")
    with pytest.raises(SettingsError, match="retention_interval_seconds must be positive"):
        load_settings(config_file=config)


def test_a_gateway_with_a_bad_rule_does_not_start(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[[retention]]\nname = "x"\norigin = "stow"\n')
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--data", str(tmp_path / "data"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "one of max_age_seconds (since stored) or max_idle_seconds" in done.stderr


# -- a real gateway: the sweep and the protected route -----------------------------------------

MAX_AGE = 4.0  # seconds a CR instance stays
MAX_IDLE = 6.0  # seconds an MR instance stays unread


@pytest.fixture(scope="module")
def sg(tmp_path_factory: pytest.TempPathFactory, jwks_server: JwksServer) -> Iterator[SecuredGateway]:
    where = tmp_path_factory.mktemp("retention")
    config = (
        "retention_interval_seconds = 0.5\ndelete_grace = 0.5\n"
        f'[[retention]]\nname = "short-cr"\nmodality = "CR"\nmax_age_seconds = {MAX_AGE}\n'
        f'[[retention]]\nname = "idle-mr"\nmodality = "MR"\nmax_idle_seconds = {MAX_IDLE}\n'
        f'[audit]\ndestination = "{where / "audit.jsonl"}"\n' + oidc_config(jwks_server.url)
    )
    running = start_secured_gateway(where, config)
    running.extra["audit"] = where / "audit.jsonl"
    try:
        yield running
    finally:
        stop_gateway(running.gw)


def token(issuer: Issuer, scope: str, restriction: dict[str, Any] | None = None) -> dict[str, str]:
    claims: dict[str, Any] = {"scope": scope}
    if restriction is not None:
        claims[RESTRICTION_CLAIM] = restriction
    return bearer(issuer.token(sub="ops", **claims))


def store(sg: SecuredGateway, issuer: Issuer, instances: list[bytes]) -> str:
    body, content_type = stow_body(instances)
    headers = {**token(issuer, "read write"), "Content-Type": content_type, "Accept": "application/dicom+json"}
    response = httpx.post(sg.url + "/studies", content=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return uids_of(instances[0])[0]


def stored_sops(sg: SecuredGateway, issuer: Issuer, study: str) -> list[str]:
    response = httpx.get(f"{sg.url}/studies/{study}/instances", headers=token(issuer, "read"), timeout=30)
    assert response.status_code in (200, 204), response.text
    return sorted(row["00080018"]["Value"][0] for row in response.json()) if response.status_code == 200 else []


def protect(sg: SecuredGateway, headers: dict[str, str], study: str, body: bytes) -> httpx.Response:
    return httpx.put(f"{sg.url}/studies/{study}/protected", content=body, headers=headers, timeout=30)


def test_the_sweep_removes_exactly_the_matching_unprotected_studies(sg: SecuredGateway, issuer: Issuer) -> None:
    swept = store(sg, issuer, factory.ct_series(2, 32, 32, seed=181, modality="CR"))
    spared = store(sg, issuer, factory.ct_series(2, 32, 32, seed=182, modality="CR"))
    other = store(sg, issuer, factory.ct_series(2, 32, 32, seed=183))  # CT: no rule
    admin = token(issuer, "admin read")
    assert protect(sg, admin, spared, b"1").status_code == 204
    swept_sops = stored_sops(sg, issuer, swept)
    assert len(swept_sops) == 2

    deadline = time.monotonic() + 60
    while stored_sops(sg, issuer, swept):
        assert time.monotonic() < deadline, "the sweep never removed the CR study"
        time.sleep(0.2)
    time.sleep(2 * 0.5)  # two more sweeps: the protected and the unmatched ones have had their chance
    assert len(stored_sops(sg, issuer, spared)) == 2
    assert len(stored_sops(sg, issuer, other)) == 2
    assert httpx.get(f"{sg.url}/studies/{spared}/protected", headers=admin, timeout=30).text == "1"

    # One change-feed entry per instance, saying why.
    feed = httpx.get(sg.url + "/changefeed", params={"limit": 200}, headers=token(issuer, "read"), timeout=30)
    mine = [e for e in feed.json() if e["StudyInstanceUid"] == swept and e["Action"] == "delete"]
    assert sorted(e["SopInstanceUid"] for e in mine) == swept_sops
    assert {e["Origin"] for e in mine} == {"retention"}
    # An audit line naming the rule and every instance.
    events = [orjson.loads(line) for line in Path(sg.extra["audit"]).read_bytes().splitlines()]
    # (Usually one line; two when the instances' ages crossed the limit on either side of a sweep.)
    swept_events = [e for e in events if e["ActiveParticipant"][0]["UserID"] == "retention:short-cr"]
    assert swept_events
    assert {e["EventIdentification"]["EventActionCode"] for e in swept_events} == {"D"}
    deleted = [
        o for e in swept_events for o in e["ParticipantObjectIdentification"] if o.get("ParticipantObjectDescription")
    ]
    assert sorted(o["ParticipantObjectID"] for o in deleted) == swept_sops
    assert {o["ParticipantObjectDetail"]["StudyInstanceUID"] for o in deleted} == {swept}

    # Protecting is recorded as an update of the study (PS3.15 A.5.3: action U).
    (protected_event,) = [
        e
        for e in events
        if e.get("http", {}).get("method") == "PUT" and e["http"]["path"].endswith(f"{spared}/protected")
    ]
    assert protected_event["EventIdentification"]["EventActionCode"] == "U"
    assert protected_event["ParticipantObjectIdentification"][0]["ParticipantObjectID"] == spared

    # Lifting the protection lets the next sweep take it.
    assert protect(sg, admin, spared, b"0").status_code == 204
    assert httpx.get(f"{sg.url}/studies/{spared}/protected", headers=admin, timeout=30).text == "0"
    deadline = time.monotonic() + 60
    while stored_sops(sg, issuer, spared):
        assert time.monotonic() < deadline, "the study no longer protected was never swept"
        time.sleep(0.2)


def test_the_protected_route_refusals(sg: SecuredGateway, issuer: Issuer) -> None:
    mine = store(sg, issuer, factory.ct_series(1, 32, 32, seed=184))
    theirs = store(sg, issuer, factory.ct_series(1, 32, 32, seed=185))
    # Without the admin scope: 403.
    assert protect(sg, token(issuer, "read write"), mine, b"1").status_code == 403
    # A restricted admin: its own study only; another is the 404 of an absent one.
    restricted = token(issuer, "admin read", {"StudyInstanceUID": [mine]})
    assert protect(sg, restricted, theirs, b"1").status_code == 404
    assert httpx.get(f"{sg.url}/studies/{theirs}/protected", headers=restricted, timeout=30).status_code == 404
    assert protect(sg, restricted, mine, b"1").status_code == 204
    # Bad bodies: 400 with the reason.
    admin = token(issuer, "admin")
    for body in (b"", b"yes", b"2", b"1" * 100):
        response = protect(sg, admin, mine, body)
        assert response.status_code == 400, body
        assert "must be 1" in response.text
    assert protect(sg, admin, "1.2.3.abc", b"1").status_code == 400
    # Absent study: 404.
    assert protect(sg, admin, factory.new_uid("retention-absent"), b"1").status_code == 404


def test_an_idle_rule_spares_what_is_read_and_takes_what_is_not(sg: SecuredGateway, issuer: Issuer) -> None:
    read = store(sg, issuer, [factory.mr_instance(seed=186)])
    unread = store(sg, issuer, [factory.mr_instance(seed=187)])
    reader = token(issuer, "read")
    deadline = time.monotonic() + 60
    # A viewer keeps reading one study: its series is noted as read (every MAX_IDLE / 4 s at
    # most); the other one goes once unread for MAX_IDLE seconds.
    while stored_sops(sg, issuer, unread):
        assert time.monotonic() < deadline, "the unread study was never swept"
        response = httpx.get(f"{sg.url}/studies/{read}/metadata", headers=reader, timeout=30)
        assert response.status_code == 200
        time.sleep(0.3)
    assert len(stored_sops(sg, issuer, read)) == 1
    # Left alone, it goes too.
    deadline = time.monotonic() + 60
    while stored_sops(sg, issuer, read):
        assert time.monotonic() < deadline, "the study no longer read was never swept"
        time.sleep(0.3)
    feed = httpx.get(sg.url + "/changefeed", params={"limit": 200}, headers=reader, timeout=30).json()
    gone = {e["StudyInstanceUid"] for e in feed if e["Action"] == "delete" and e["Origin"] == "retention"}
    assert {read, unread} <= gone
