"""Fixtures that run the real ``dicomweb-gateway serve`` command on a free port.

``gateway`` is parametrized over both object stores: the embedded filesystem store and a
real S3 (SeaweedFS), so every end-to-end test proves both.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.peers.ports import free_port

BASE_PATH = "/dicomweb"


@dataclass
class RunningGateway:
    """A gateway process started by the tests; ``url`` is its DICOMweb base URL."""

    url: str
    root: str
    data_dir: Path
    store_kind: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run another ``dicomweb-gateway`` sub-command with this server's settings."""
        return subprocess.run(
            [sys.executable, "-m", "gateway", *argv, *self.args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def start_gateway(
    tmp: Path,
    *,
    store_kind: str = "file",
    s3: Any = None,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    until: str = "/readyz",
) -> RunningGateway:
    """``dicomweb-gateway serve`` in a process, returned once ``until`` answers 200 (``/healthz``
    for a gateway expected to start unready)."""
    port = free_port()
    data = tmp / "data"
    common = ["--data", str(data)]
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith(("DICOMWEB_GATEWAY_", "AWS_"))}
    if store_kind == "s3":
        common += ["--storage-url", f"s3://{s3.bucket}/gw", "--s3-endpoint-url", s3.endpoint_url]
        proc_env.update(
            AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key, AWS_REGION=s3.region or "us-east-1"
        )
    proc_env.update(env or {})
    log_path = tmp / f"gateway-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--port",
                str(port),
                "--base-path",
                BASE_PATH,
                *common,
                *extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=proc_env,
        )
    root = f"http://127.0.0.1:{port}"
    gw = RunningGateway(root + BASE_PATH, root, data, store_kind, process, log_path, proc_env, common)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{gw.log()}")
        try:
            if httpx.get(root + until, timeout=1).status_code == 200:
                return gw
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_gateway(gw)
            raise RuntimeError(f"gateway did not become ready:\n{gw.log()}")
        time.sleep(0.1)


def stop_gateway(gw: RunningGateway) -> None:
    if gw.process.poll() is None:
        gw.process.terminate()
        try:
            gw.process.wait(10)
        except subprocess.TimeoutExpired:
            gw.process.kill()
            gw.process.wait(10)


@pytest.fixture(params=["file", "s3"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningGateway]:
    """A fresh gateway (empty store and index) per test, over each object store."""
    s3 = request.getfixturevalue("s3_bucket") if request.param == "s3" else None
    gw = start_gateway(tmp_path, store_kind=request.param, s3=s3)
    try:
        yield gw
    finally:
        stop_gateway(gw)


@pytest.fixture
def file_gateway(tmp_path: Path) -> Iterator[RunningGateway]:
    """A fresh gateway on the embedded filesystem store only (for tests of HTTP behaviour)."""
    gw = start_gateway(tmp_path)
    try:
        yield gw
    finally:
        stop_gateway(gw)
