"""Stopping the peer processes the tests start (Orthanc, SeaweedFS, processes in a namespace)."""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds; reaps it either way."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
