"""Soak (issue #7): mixed QIDO/WADO/STOW load at a fixed rate from a second process.

The 30-minute run is ``bench/soak.py`` (not in CI); here the same code runs for two minutes at a
modest rate against a real gateway on SeaweedFS S3 + SQLite. The criteria's own logic is checked
on synthetic samples too, so a leak is known to fail them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.soak import Options, run_soak
from bench.soak_report import MB, Criteria, ProcessSample, evaluate
from gateway.malloc import cap_malloc_arenas

MINUTES = 2
RATE = 15.0  # requests per second; ~1800 requests, ~270 STOW requests
# A quarter of a two-minute run (30 s) before RSS is compared: after start-up the first requests
# still fill pools and caches (thread pool, S3 connections, SQLite pages), which is not a leak.
WARMUP = 0.25
FD_ALLOWANCE = 4


@pytest.mark.s3
@pytest.mark.timeout(600)
def test_two_minute_soak(tmp_path: Path) -> None:
    criteria = Criteria(warmup_fraction=WARMUP, max_rss_growth=0.05, fd_allowance=FD_ALLOWANCE)
    result = run_soak(Options(minutes=MINUTES, rate=RATE, workdir=tmp_path, criteria=criteria))
    f = result.figures
    print(result.markdown)

    assert f.issued == f.planned == int(MINUTES * 60 * RATE), result.markdown
    assert f.completed == f.issued, result.markdown
    assert f.server_errors == 0, result.markdown
    assert f.wrong_answers == 0, result.markdown
    # Each kind of request really ran, and conflicting duplicates were refused (PS3.18 10.5.3).
    assert all(k["count"] > 0 for k in f.kinds.values()), result.markdown
    assert f.kinds["stow_conflict"]["statuses"] == {"409": f.kinds["stow_conflict"]["count"]}, result.markdown
    assert f.rss_growth < 0.05, result.markdown
    assert f.fd_max_second_half <= f.fd_max_first_half + FD_ALLOWANCE, result.markdown
    assert f.idle_after.unpooled_fds <= f.idle_before.unpooled_fds + FD_ALLOWANCE, result.markdown
    assert f.idle_after.client_connections == 0, result.markdown
    assert f.acknowledged > 100, result.markdown
    assert f.verified == f.acknowledged, result.markdown
    assert not f.verify_problems, result.markdown
    assert f.spool_leftovers == 0, result.markdown
    assert f.log_tracebacks == 0, result.markdown
    assert result.ok, result.markdown


def _load(started: float, seconds: float, *, server_errors: int = 0) -> dict[str, Any]:
    tally = {
        "group": "QIDO",
        "latencies": [0.01] * 100,
        "statuses": {"200": 100 - server_errors, **({"503": server_errors} if server_errors else {})},
        "server_errors": server_errors,
        "unexpected": 0,
        "invalid": 0,
        "failures": [],
    }
    return {
        "started": started,
        "ended": started + seconds,
        "planned_seconds": seconds,
        "rate": 1.0,
        "issued": int(seconds),
        "completed": int(seconds),
        "max_in_flight": 1,
        "max_lag": 0.0,
        "kinds": {"qido": tally},
        "acknowledged": [{"study": "1", "series": "2", "sop": "3", "sha256": "x"}],
    }


def _evaluate(
    rss: list[int], fds: list[int], *, idle_fds: tuple[int, int] = (20, 20), server_errors: int = 0, clients: int = 0
) -> Any:
    seconds = 100.0
    step = seconds / (len(rss) - 1)
    samples = [ProcessSample(i * step, r, f, 10) for i, (r, f) in enumerate(zip(rss, fds, strict=True))]
    before = ProcessSample(-1, rss[0], idle_fds[0], 10)
    after = ProcessSample(seconds + 1, rss[-1], idle_fds[1], 10, client_connections=clients)
    figures = evaluate(
        _load(0.0, seconds, server_errors=server_errors),
        samples,
        before,
        after,
        verified=1,
        verify_problems=[],
        spool_leftovers=0,
        log_tracebacks=0,
        criteria=Criteria(warmup_fraction=0.1, max_rss_growth=0.05, fd_allowance=FD_ALLOWANCE),
    )
    return {v.name.split(" (")[0].split(" <")[0]: v.ok for v in figures.verdicts}


def test_soak_criteria_pass_a_flat_process() -> None:
    verdicts = _evaluate([100 * MB] * 51, [30, 31] * 25 + [30])
    assert all(verdicts.values()), verdicts


def test_soak_criteria_catch_growing_memory() -> None:
    # 100 MiB growing by 0.2 MiB per sample: +~9 % between the windows after warm-up and at the end.
    verdicts = _evaluate([100 * MB + i * MB // 5 for i in range(51)], [30] * 51)
    assert not verdicts["RSS growth after warm-up"], verdicts


def test_soak_criteria_catch_descriptors_that_keep_growing() -> None:
    verdicts = _evaluate([100 * MB] * 51, [30 + i // 2 for i in range(51)], idle_fds=(20, 45))
    assert not verdicts["open FDs flat under load"], verdicts
    assert not verdicts["open FDs back to idle, pools aside"], verdicts


def test_soak_criteria_catch_server_errors() -> None:
    verdicts = _evaluate([100 * MB] * 51, [30] * 51, server_errors=1)
    assert not verdicts["0 server errors"], verdicts


def test_soak_criteria_catch_a_client_connection_left_open() -> None:
    verdicts = _evaluate([100 * MB] * 51, [30] * 51, clients=1)
    assert not verdicts["no client connection open after the load"], verdicts


def test_malloc_arenas_are_capped_unless_the_operator_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    # gateway.malloc: the fix for the RSS creep this soak found; an explicit MALLOC_ARENA_MAX wins.
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert cap_malloc_arenas() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert cap_malloc_arenas() is True  # Linux with glibc, as on every machine the tests run on
