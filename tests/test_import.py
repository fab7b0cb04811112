"""``dicomweb-gateway import`` (issue #18, part 1): folder trees, ZIPs, DICOMDIR media and S3
prefixes imported beside a running gateway on the same data, read back byte for byte over
WADO-RS; second runs skip what is done; an import interrupted (SIGINT) or killed (SIGKILL)
resumes with every file stored once; conflicts and broken files are reported with the reason."""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests import factory
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.fixtures_s3 import S3Bucket
from tests.http_helpers import split_multipart, stow, uids_of

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
NOT_DICOM = "not a DICOM Part 10 file"
JUNK = {
    "README.txt": b"exported by the PACS on 2024-01-15\n",
    ".DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(200),
    "empty": b"",
}


def instances(seed: int, count: int) -> list[bytes]:
    """``count`` small CT slices of one series (seed: which study)."""
    return factory.ct_series(count, rows=16, cols=16, seed=seed, patient_name=f"IMPORT^{seed}")


def import_cmd(gw: RunningGateway, *sources: str, report: Path, extra: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gateway",
        "import",
        *sources,
        "--report",
        str(report),
        *extra,
        *gw.args,
    ]


def run_import(
    gw: RunningGateway,
    *sources: str,
    report: Path,
    extra: Sequence[str] = ("--quiet",),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        import_cmd(gw, *sources, report=report, extra=extra),
        env={**gw.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def rows(report: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in report.read_text().splitlines() if line]


def outcomes(report: Path) -> Counter[str]:
    return Counter(row["outcome"] for row in rows(report))


def as_stored(gw: RunningGateway, data: bytes) -> bytes:
    study, series, sop = uids_of(data)
    response = httpx.get(
        f"{gw.url}/studies/{study}/series/{series}/instances/{sop}", headers={"Accept": AS_STORED}, timeout=30
    )
    assert response.status_code == 200, response.text
    (part,) = split_multipart(response)
    return part[1]


def indexed(gw: RunningGateway) -> dict[str, str]:
    """SOP Instance UID -> origin, as the (SQLite) index has it."""
    with sqlite3.connect(gw.data_dir / "index.sqlite3") as db:
        return dict(db.execute("SELECT sop_uid, origin FROM instances").fetchall())


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_folder_tree_is_imported_beside_a_running_gateway_and_a_second_run_skips_it(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    first, second = instances(1, 3), instances(2, 2)
    tree = tmp_path / "share"
    write_tree(tree, {f"PAT1/STUDY1/SER1/IM{i}": d for i, d in enumerate(first)})
    write_tree(tree, {f"2024/01/15/{uids_of(d)[2]}.dcm": d for d in second})
    write_tree(tree, {f"PAT1/{name}": data for name, data in JUNK.items()})

    report = tmp_path / "report.jsonl"
    done = run_import(gateway, str(tree), report=report)
    assert done.returncode == 0, done.stderr
    assert outcomes(report) == {"stored": 5, "skipped": 3}
    for row in rows(report):
        if row["outcome"] == "skipped":
            assert Path(row["file"]).name in JUNK
            assert NOT_DICOM in row["reason"]
    for data in first + second:
        assert as_stored(gateway, data) == data
    assert set(indexed(gateway).values()) == {"import"}
    assert "5 stored, 0 duplicate, 3 skipped, 0 failed" in done.stderr

    again = tmp_path / "again.jsonl"
    rerun = run_import(gateway, str(tree), report=again)
    assert rerun.returncode == 0, rerun.stderr
    assert outcomes(again) == {"skipped": 8}
    by_file = {row["file"]: row for row in rows(report)}
    for row in rows(again):
        assert row["sop_instance_uid"] == by_file[row["file"]]["sop_instance_uid"]
        assert "by an earlier run" in row["reason"]
    assert len(indexed(gateway)) == 5


def test_dicomdir_medium_made_by_dcmmkdir(file_gateway: RunningGateway, tmp_path: Path) -> None:
    medium = tmp_path / "cdrom"
    data = instances(3, 4)
    write_tree(medium, {f"DICOM/SER00001/IM{i:06d}": d for i, d in enumerate(data)})
    made = subprocess.run(
        ["dcmmkdir", "+r", "+I", "+id", str(medium), "+D", str(medium / "DICOMDIR"), "DICOM"],
        cwd=medium,
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    assert (medium / "DICOMDIR").is_file()

    report = tmp_path / "report.jsonl"
    done = run_import(file_gateway, str(medium), report=report)
    assert done.returncode == 0, done.stderr
    assert outcomes(report) == {"stored": 4, "skipped": 1}
    (dicomdir,) = [row for row in rows(report) if row["outcome"] == "skipped"]
    assert Path(dicomdir["file"]).name == "DICOMDIR"
    assert dicomdir["reason"].startswith("DICOMDIR")
    for d in data:
        assert as_stored(file_gateway, d) == d

    # A medium named by its DICOMDIR file is its folder: the same files, done already.
    again = tmp_path / "again.jsonl"
    assert run_import(file_gateway, str(medium / "DICOMDIR"), report=again).returncode == 0
    assert outcomes(again) == {"skipped": 5}
    assert {row["file"] for row in rows(again)} == {row["file"] for row in rows(report)}


def test_zip_with_an_osirix_tree(file_gateway: RunningGateway, tmp_path: Path) -> None:
    data = instances(4, 3)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for i, d in enumerate(data):
            z.writestr(f"OsiriX Export/DOE JOHN - 123/CT CHEST - 1/IM-0001-{i + 1:04d}.dcm", d)
        z.writestr("OsiriX Export/README.txt", JUNK["README.txt"])
    archive = tmp_path / "export.zip"
    archive.write_bytes(buf.getvalue())

    report = tmp_path / "report.jsonl"
    done = run_import(file_gateway, str(archive), report=report)
    assert done.returncode == 0, done.stderr
    assert outcomes(report) == {"stored": 3, "skipped": 1}
    assert all(row["file"].startswith(f"{archive.absolute()}!OsiriX Export/") for row in rows(report))
    for d in data:
        assert as_stored(file_gateway, d) == d

    again = tmp_path / "again.jsonl"
    assert run_import(file_gateway, str(archive), report=again).returncode == 0
    assert outcomes(again) == {"skipped": 4}


def test_s3_prefix_on_seaweedfs(
    file_gateway: RunningGateway, s3_bucket: S3Bucket, s3_admin: S3Client, tmp_path: Path
) -> None:
    data = instances(5, 4)
    outside = instances(6, 1)[0]
    for i, d in enumerate(data):
        s3_admin.put_object(Bucket=s3_bucket.bucket, Key=f"exports/2024/series1/{i:04d}", Body=d)
    s3_admin.put_object(Bucket=s3_bucket.bucket, Key="exports/2024/manifest.json", Body=b'{"files": 4}')
    s3_admin.put_object(Bucket=s3_bucket.bucket, Key="other/0000", Body=outside)
    env = {
        "AWS_ACCESS_KEY_ID": s3_bucket.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_bucket.secret_key,
        "AWS_REGION": s3_bucket.region or "us-east-1",
    }
    source = f"s3://{s3_bucket.bucket}/exports/2024/"
    extra = ("--quiet", "--s3-endpoint-url", s3_bucket.endpoint_url)

    report = tmp_path / "report.jsonl"
    done = run_import(file_gateway, source, report=report, extra=extra, env=env)
    assert done.returncode == 0, done.stderr
    assert outcomes(report) == {"stored": 4, "skipped": 1}
    for d in data:
        assert as_stored(file_gateway, d) == d
    assert uids_of(outside)[2] not in indexed(file_gateway)

    again = tmp_path / "again.jsonl"
    rerun = run_import(file_gateway, source, report=again, extra=extra, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert outcomes(again) == {"skipped": 5}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_an_interrupted_import_resumes_with_every_file_stored_once(
    file_gateway: RunningGateway, tmp_path: Path, sig: signal.Signals
) -> None:
    count = 300
    data = instances(7, count)
    tree = tmp_path / "share"
    write_tree(tree, {f"S{i // 100}/IM{i:04d}": d for i, d in enumerate(data)})
    state = tmp_path / "state.jsonl"
    report = tmp_path / "first.jsonl"
    extra = ("--state", str(state), "--jobs", "2", "--progress-interval", "0.05")
    with (tmp_path / "first.err").open("w") as err:
        proc = subprocess.Popen(
            import_cmd(file_gateway, str(tree), report=report, extra=extra),
            env=file_gateway.env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            while not state.exists() or state.read_bytes().count(b"\n") < 40:
                assert proc.poll() is None, (tmp_path / "first.err").read_text()
                time.sleep(0.01)
            proc.send_signal(sig)
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    first_err = (tmp_path / "first.err").read_text()
    assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL), first_err
    first_stored = [row["sop_instance_uid"] for row in rows(report) if row["outcome"] == "stored"]
    assert 0 < len(first_stored) < count
    if sig == signal.SIGINT:
        # Stopped cleanly: the report and the state say the same, and the summary says how to go on.
        assert "interrupted with" in first_err
        assert "files/s" in first_err
        assert "ETA" in first_err
        assert state.read_bytes().count(b"\n") == len(first_stored)

    second = tmp_path / "second.jsonl"
    resumed = run_import(file_gateway, str(tree), report=second, extra=("--quiet", "--state", str(state)))
    assert resumed.returncode == 0, resumed.stderr
    counts = outcomes(second)
    assert counts["failed"] == 0
    assert sum(counts.values()) == count
    # Instances stored by the killed run but not yet in its state are found identical, never stored twice.
    now = {row["sop_instance_uid"] for row in rows(second) if row["outcome"] in ("stored", "duplicate")}
    skipped = {row["sop_instance_uid"] for row in rows(second) if row["outcome"] == "skipped"}
    assert now.isdisjoint(skipped)
    assert now | skipped == {uids_of(d)[2] for d in data}
    if sig == signal.SIGINT:
        assert counts["duplicate"] == 0
        assert skipped == set(first_stored)
    else:
        assert counts["duplicate"] <= 2  # at most the files in flight (--jobs 2)
    assert set(indexed(file_gateway)) == {uids_of(d)[2] for d in data}
    listed = httpx.get(f"{file_gateway.url}/instances?limit=1000", timeout=30).json()
    assert len(listed) == count
    for d in (data[0], data[count // 2], data[-1]):
        assert as_stored(file_gateway, d) == d


def test_conflicting_and_broken_files_are_reported_failed_with_the_reason(
    file_gateway: RunningGateway, tmp_path: Path
) -> None:
    original = instances(8, 1)[0]
    assert stow(file_gateway.url, [original]).status_code == 200
    study, series, sop = uids_of(original)
    clash = factory.to_part10_bytes(
        factory.ct_dataset(seed=9, rows=16, cols=16, study_uid=study, series_uid=series, sop_uid=sop)
    )
    fine = instances(10, 1)[0]
    tree = tmp_path / "share"
    write_tree(tree, {"clash.dcm": clash, "truncated.dcm": factory.truncated(fine), "fine.dcm": fine})

    report = tmp_path / "report.jsonl"
    done = run_import(file_gateway, str(tree), report=report)
    assert done.returncode == 1, done.stderr
    by_name = {Path(row["file"]).name: row for row in rows(report)}
    assert by_name["fine.dcm"]["outcome"] == "stored"
    assert by_name["clash.dcm"]["outcome"] == "failed"
    assert by_name["clash.dcm"]["sop_instance_uid"] == sop
    assert "already stored with different content" in by_name["clash.dcm"]["reason"]
    assert "0x0111" in by_name["clash.dcm"]["reason"]
    assert by_name["truncated.dcm"]["outcome"] == "failed"
    assert by_name["truncated.dcm"]["reason"]
    assert as_stored(file_gateway, original) == original  # the stored instance is untouched

    # Failures are not remembered as done: the next run tries them again.
    again = tmp_path / "again.jsonl"
    assert run_import(file_gateway, str(tree), report=again).returncode == 1
    assert outcomes(again) == {"skipped": 1, "failed": 2}


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DICOMWEB_GATEWAY_", "AWS_"))}
    data = tmp_path / "data"

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "import", *argv, "--data", str(data), "--quiet"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    missing = cli(str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert "no such file or directory" in missing.stderr
    folder = tmp_path / "share"
    folder.mkdir()
    zero = cli(str(folder), "--jobs", "0")
    assert zero.returncode == 2
    assert "--jobs" in zero.stderr
    no_source = cli()
    assert no_source.returncode == 2

    state = tmp_path / "state.jsonl"
    with state.open("ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        busy = cli(str(folder), "--state", str(state))
    assert busy.returncode == 2
    assert "another import" in busy.stderr
    assert cli(str(folder), "--state", str(state)).returncode == 0


def test_limits_hostile_archives_and_links(file_gateway: RunningGateway, tmp_path: Path) -> None:
    small, large = instances(11, 1)[0], factory.ct_series(1, rows=128, cols=128, seed=12)[0]
    outside = tmp_path / "elsewhere"
    write_tree(outside, {"IM0": instances(13, 1)[0]})
    tree = tmp_path / "share"
    write_tree(tree, {"small.dcm": small, "large.dcm": large})
    (tree / "link").symlink_to(outside, target_is_directory=True)
    (tree / "link.dcm").symlink_to(outside / "IM0")
    hostile = tmp_path / "hostile.zip"
    with zipfile.ZipFile(hostile, "w") as z:
        z.writestr("../escape.dcm", small)
    limit = (len(small) + len(large)) // 2
    assert len(small) < limit < len(large)

    report = tmp_path / "report.jsonl"
    env = {"DICOMWEB_GATEWAY_LIMITS__MAX_PART_BYTES": str(limit)}
    done = run_import(file_gateway, str(tree), str(hostile), report=report, env=env)
    assert done.returncode == 1, done.stderr
    by_name = {Path(row["file"]).name: row for row in rows(report)}
    # Symbolic links inside a tree are not followed: only the two files are listed.
    assert set(by_name) == {"small.dcm", "large.dcm", "hostile.zip"}
    assert by_name["small.dcm"]["outcome"] == "stored"
    assert by_name["large.dcm"]["outcome"] == "failed"
    assert "limits.max_part_bytes" in by_name["large.dcm"]["reason"]
    assert by_name["hostile.zip"]["outcome"] == "failed"
    assert "'..' path component" in by_name["hostile.zip"]["reason"]
    assert set(indexed(file_gateway)) == {uids_of(small)[2]}

    # With the default limit the large file goes in; what was done is not done again.
    again = tmp_path / "again.jsonl"
    assert run_import(file_gateway, str(tree), report=again).returncode == 0
    assert outcomes(again) == {"stored": 1, "skipped": 1}


@pytest.mark.s3
def test_two_imports_at_once_beside_a_gateway_on_s3_and_postgresql(
    tmp_path: Path, s3_bucket: S3Bucket, postgres_url: str
) -> None:
    count = 60
    data = instances(14, count)
    tree = tmp_path / "share"
    write_tree(tree, {f"IM{i:04d}": d for i, d in enumerate(data)})
    gw = start_gateway(tmp_path, store_kind="s3", s3=s3_bucket, extra_args=("--index-url", postgres_url))
    try:
        runs = []
        for name in ("one", "two"):
            extra = ("--quiet", "--index-url", postgres_url, "--state", str(tmp_path / f"{name}.state"))
            command = import_cmd(gw, str(tree), report=tmp_path / f"{name}.jsonl", extra=extra)
            runs.append(subprocess.Popen(command, env=gw.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for run in runs:
            assert run.wait(300) == 0, run.stderr.read() if run.stderr else ""
        # Each instance is stored by one import and found identical by the other, never twice.
        one, two = outcomes(tmp_path / "one.jsonl"), outcomes(tmp_path / "two.jsonl")
        assert one["stored"] + two["stored"] == count
        assert one["duplicate"] + two["duplicate"] == count
        listed = httpx.get(f"{gw.url}/instances?limit=1000", timeout=30).json()
        assert len(listed) == count
        for d in (data[0], data[-1]):
            assert as_stored(gw, d) == d
    finally:
        stop_gateway(gw)
