"""Bytes on the wire of a 300-instance series' DICOM JSON, uncoded and gzip/br/zstd-coded.

``python -m bench.json_size [--slices N]`` starts the real gateway, stores two CT series and
asks for their series metadata and full instance searches with each Accept-Encoding; prints a
Markdown table of wire bytes, the ratio to uncoded, and the median time of a request on
loopback (which includes the coding). One series has the test factory's lean headers; the
other copies the header of a scanner's CT (pydicom's ``CT_small.dcm``: GE private groups,
acquisition details) with each slice's own UIDs, position and times, closer to what a viewer
meets. A link's time is then bytes / bandwidth: at 20 Mbit/s, 1 MB costs 400 ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pydicom

from tests import factory
from tests.fixtures_gateway import start_gateway, stop_gateway
from tests.http_helpers import stow, uids_of

CODINGS = ("identity", "gzip", "br", "zstd")
READS = 7


def scanner_series(n: int) -> list[bytes]:
    """``n`` slices with the header of a real CT, each with its own UIDs, position and times."""
    template = pydicom.dcmread(factory.testdata_path("CT_small.dcm"))
    study, series = factory.new_uid("bench-json-study"), factory.new_uid("bench-json-series")
    out = []
    for i in range(n):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = factory.new_uid("bench-json", i)
        ds.InstanceNumber = i + 1
        ds.SliceLocation = f"{-100 + 1.25 * i:.2f}"
        ds.ImagePositionPatient = [-158.135803, -179.035797, -100 + 1.25 * i]
        ds.AcquisitionTime = ds.ContentTime = f"{101500 + i // 60 * 100 + i % 60:06d}.{i * 37 % 1000:03d}"
        out.append(factory.to_part10_bytes(ds, str(ds.file_meta.TransferSyntaxUID)))
    return out


def wire(client: httpx.Client, url: str, coding: str) -> tuple[int, float]:
    """Bytes of the body as sent, and seconds for the whole request."""
    started = time.perf_counter()
    with client.stream("GET", url, headers={"Accept-Encoding": coding}) as response:
        response.raise_for_status()
        size = sum(len(chunk) for chunk in response.iter_raw())
    return size, time.perf_counter() - started


def measure(base: str, name: str, study: str, series: str) -> list[str]:
    urls = {
        f"{name}: series `/metadata`": f"{base}/studies/{study}/series/{series}/metadata",
        f"{name}: QIDO `.../instances?includefield=all`": (
            f"{base}/studies/{study}/series/{series}/instances?includefield=all"
        ),
    }
    lines = []
    with httpx.Client(timeout=60) as client:
        for label, url in urls.items():
            plain = 0
            for coding in CODINGS:
                wire(client, url, coding)  # warm-up
                runs = [wire(client, url, coding) for _ in range(READS)]
                size = runs[0][0]
                plain = plain or size
                seconds = statistics.median(t for _, t in runs)
                lines.append(f"| {label} | {coding} | {size:,} | {size / plain:.2f} | {seconds * 1000:.1f} ms |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args(argv)
    data = {
        "factory CT": factory.ct_series(args.slices, rows=16, cols=16, seed=17, study_description="BENCH CT"),
        "scanner CT header": scanner_series(args.slices),
    }
    lines = ["| answer | coding | bytes | of uncoded | request (median) |", "|---|---|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        gw = start_gateway(Path(tmp))
        try:
            for name, series in data.items():
                for start in range(0, len(series), 100):
                    stow(gw.url, series[start : start + 100]).raise_for_status()
                study, series_uid, _ = uids_of(series[0])
                lines += measure(gw.url, name, study, series_uid)
        finally:
            stop_gateway(gw)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
