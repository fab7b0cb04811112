"""Fixtures for the OHIF viewer tests: the viewer's ``dist/``, playwright-core and Chromium,
installed on first use into the gitignored ``.peers/`` (tests/peers/ohif.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.peers import ohif


@pytest.fixture(scope="session")
def viewer_dist() -> Path:
    """OHIF's prebuilt viewer, with Chromium and playwright-core ready to drive it."""
    ohif.ensure_chromium()
    ohif.ensure_playwright()
    return ohif.ensure_ohif_dist()
