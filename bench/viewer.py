"""Viewer-grade operations, the gateway and Orthanc's DICOMweb plugin side by side (issue #5).

    .venv/bin/python bench/viewer.py            # ~3 minutes; writes bench/out/viewer.md
    .venv/bin/python bench/viewer.py --quick    # smoke test
    .venv/bin/python bench/viewer.py --codecs   # seconds: only the codec table (bench/codecs.py)
    .venv/bin/python bench/viewer.py --link     # ~10 minutes: OHIF over a 50 Mbit/s link (bench/viewer_link.py)

Both servers get the same CT series (512×512×16 bit, native Explicit VR Little Endian) by
STOW-RS. Then, alternating between the servers:

* one frame transcoded: ``/frames/1`` of an uncompressed slice asked as JPEG-LS Lossless, as
  JPEG 2000 Lossless and as HTJ2K Lossless RPCL (``multipart/related; type="image/jls";
  transfer-syntax=...``; Orthanc encodes no HTJ2K). "cold" asks
  for a slice not asked before each time (the gateway caches re-encoded frames), "warm" asks
  for the same slice again;
* a thumbnail of a slice (128×128 JPEG): the gateway's ``/thumbnail?viewport=128,128``;
  Orthanc's DICOMweb 1.7 has no thumbnail resource, so its ``/rendered?viewport=128,128``;
* time to first image in OHIF: the real viewer (tests/peers/ohif.py) behind a same-origin proxy
  to each server, in headless Chromium; from the start of the viewer page load (bundle cached)
  to the first rendered pixels on the canvas (read back from it), median of several openings;
* the codecs alone (bench/codecs.py): encode and decode time and bytes per frame for HTJ2K,
  JPEG-LS and JPEG 2000 lossless, in process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pydicom  # noqa: E402

from bench import codecs, report, viewer_link  # noqa: E402
from bench.servers import GATEWAY, ORTHANC, Server, gateway_server, load, orthanc_server  # noqa: E402
from tests import factory  # noqa: E402
from tests.peers import ohif  # noqa: E402

JLS, J2K, HTJ2K_RPCL = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.202"
DRIVER = ROOT / "tests" / "ohif_driver.js"


@dataclass(frozen=True)
class Plan:
    slices: int
    reads: int
    openings: int


FULL = Plan(slices=64, reads=15, openings=11)  # 3 x reads cold slices + 1
QUICK = Plan(slices=12, reads=3, openings=3)


@dataclass
class Line:
    label: str
    values: dict[str, float | None]  # seconds per server (None: not offered)
    note: str = ""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(server: Server, path: str, accept: str) -> float | None:
    """Seconds for one GET read to the end; None when the server does not offer it."""
    start = time.perf_counter()
    response = server.client.get(server.base + path, headers={"Accept": accept})
    body = response.content
    seconds = time.perf_counter() - start
    if response.status_code != 200 or not body:
        return None
    return seconds


def median(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if len(kept) == len(values) and kept else None


PathFor = Callable[[Server, int], tuple[str, str]]


def measure(servers: Sequence[Server], label: str, path_for: PathFor, reads: int, note: str = "") -> Line:
    samples: dict[str, list[float | None]] = {s.name: [] for s in servers}
    for rep in range(reads):
        for server in servers:
            path, accept = path_for(server, rep)
            samples[server.name].append(timed(server, path, accept))
    line = Line(label, {name: median(values) for name, values in samples.items()}, note)
    log(f"  {label}: " + ", ".join(f"{k} {cell(v)}" for k, v in line.values.items()))
    return line


def cell(seconds: float | None) -> str:
    return "n/a" if seconds is None else report.ms(seconds)


def time_to_first_image(server: Server, study: str, openings: int, dist: Path) -> tuple[float | None, str]:
    """Median milliseconds from the viewer page load to rendered pixels, over ``openings``
    openings of ``study`` after one warm-up opening (which loads the viewer's bundles)."""
    url = urlsplit(server.base)
    prefix, origin = url.path, f"{url.scheme}://{url.netloc}"
    viewer = ohif.ViewerServer(dist, "", proxy=(prefix, origin))
    try:
        # Orthanc's DICOMweb 1.7 has no thumbnail resource: OHIF then renders thumbnails itself.
        thumbnails = "thumbnail" if server.name == GATEWAY else "wadors"
        viewer.config_js = ohif.app_config(viewer.url + prefix, thumbnails=thumbnails).encode()
        payload = {
            "viewer": viewer.url,
            "chromium": ohif.CHROMIUM,
            "flags": list(ohif.CHROMIUM_FLAGS),
            "open": [study] * (openings + 1),
            "list": False,
            "timeoutMs": 60_000,
        }
        result = ohif.run_driver(DRIVER, payload, timeout=600)
    finally:
        viewer.close()
    if result.get("error"):
        return None, str(result["error"]).splitlines()[0][:200]
    times = [o["firstImageMs"] / 1000 for o in result["opened"][1:]]
    bad = len(result["bad"])
    return statistics.median(times), f"{bad} error response(s)" if bad else ""


def render(lines: Sequence[Line], orthanc_version: str, plan: Plan) -> str:
    out = [
        "| operation | gateway | Orthanc DICOMweb | note |",
        "|---|---|---|---|",
    ]
    for line in lines:
        out.append(f"| {line.label} | {cell(line.values[GATEWAY])} | {cell(line.values[ORTHANC])} | {line.note} |")
    return (
        f"Data: a CT series of {plan.slices} slices 512×512×16 bit (Explicit VR Little Endian), in both servers. "
        f"Medians of {plan.reads} requests per operation (alternating servers), {plan.openings} viewer openings. "
        f"Orthanc {orthanc_version}; {os.cpu_count()} cores, load average before: {report.load_average()}.\n\n"
        + "\n".join(out)
        + "\n"
    )


def benchmark(stack: ExitStack, tmp: Path, plan: Plan) -> str:
    series = factory.ct_series(plan.slices, 512, 512, seed=4242, study_description="BENCH VIEWER")
    files = [factory.write(tmp / f"{i:04d}.dcm", d) for i, d in enumerate(series)]
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study, se = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    sops = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    servers = [
        stack.enter_context(gateway_server(tmp / "gateway")),
        stack.enter_context(orthanc_server(tmp / "orthanc")),
    ]
    for server in servers:
        load(server, files)
    instance = f"/studies/{study}/series/{se}/instances/"
    fresh = iter(sops[1:])  # slices never asked for before: each cold request takes the next

    def cold(accept: str) -> PathFor:
        chosen: dict[int, str] = {}

        def path(server: Server, rep: int) -> tuple[str, str]:
            if rep not in chosen:
                chosen[rep] = next(fresh)  # the same new slice for both servers
            return f"{instance}{chosen[rep]}/frames/1", accept

        return path

    def warm(accept: str) -> PathFor:
        return lambda server, rep: (f"{instance}{sops[0]}/frames/1", accept)

    lines: list[Line] = []
    transcodings = (
        ("JPEG-LS", JLS, "image/jls"),
        ("JPEG 2000", J2K, "image/jp2"),
        ("HTJ2K RPCL", HTJ2K_RPCL, "image/jphc"),
    )
    for name, syntax, media in transcodings:
        accept = f'multipart/related; type="{media}"; transfer-syntax={syntax}'
        label = f"one frame, uncompressed → {name} lossless"
        lines.append(measure(servers, label + " (cold)", cold(accept), plan.reads, "a slice not asked before"))
        lines.append(measure(servers, label + " (warm)", warm(accept), plan.reads, "the same slice again"))

    def thumbnail(warm: bool) -> PathFor:
        chosen: dict[int, str] = {}

        def path(server: Server, rep: int) -> tuple[str, str]:
            if not warm and rep not in chosen:
                chosen[rep] = next(fresh)
            sop = sops[0] if warm else chosen[rep]
            kind = "thumbnail" if server.name == GATEWAY else "rendered"
            return f"{instance}{sop}/{kind}?viewport=128,128", "image/jpeg"

        return path

    note = "Orthanc: /rendered?viewport=128,128 (its DICOMweb 1.7 has no /thumbnail)"
    lines.append(measure(servers, "thumbnail 128×128 JPEG (cold)", thumbnail(False), plan.reads, note))
    lines.append(measure(servers, "thumbnail 128×128 JPEG (again)", thumbnail(True), plan.reads, note))
    dist = ohif.ensure_ohif_dist()
    ohif.ensure_playwright()
    ohif.ensure_chromium()
    values: dict[str, float | None] = {}
    notes = []
    for server in servers:
        seconds, problem = time_to_first_image(server, study, plan.openings, dist)
        values[server.name] = seconds
        if problem:
            notes.append(f"{server.name}: {problem}")
        log(f"  OHIF time to first image, {server.name}: {cell(seconds)} {problem}")
    lines.append(Line(f"OHIF: time to first image ({plan.slices}-slice CT)", values, "; ".join(notes)))
    return render(lines, servers[1].version, plan) + "\n" + codecs.codec_table()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--codecs", action="store_true", help="only the codec table (no servers, seconds)")
    parser.add_argument("--link", action="store_true", help="only OHIF over a throttled link (bench/viewer_link.py)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.codecs:
        print(codecs.codec_table())
        return 0
    if args.link:
        markdown = viewer_link.run(args.quick)
        print(markdown)
        out = args.out or ROOT / "bench" / "out" / "viewer-link.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown)
        return 0
    with tempfile.TemporaryDirectory(prefix="dicomweb-viewer-bench-") as tmp, ExitStack() as stack:
        markdown = benchmark(stack, Path(tmp), QUICK if args.quick else FULL)
    print(markdown)
    out = args.out or ROOT / "bench" / "out" / "viewer.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
