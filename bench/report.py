"""The results as markdown: machine, table of medians, memory, and the targets met or not."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.measure import Result, Sample
from bench.memory import MemoryResult
from bench.servers import GATEWAY, ORTHANC

RSS_LIMIT = 300e6  # bytes


@dataclass(frozen=True)
class Row:
    """One line of the table: median seconds per server, rendered cells and a free note."""

    label: str
    key: str  # what the targets look for: qido, metadata, wado, first_byte, frame, stow
    gateway: float
    orthanc: float
    gateway_cell: str
    orthanc_cell: str
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.gateway / self.orthanc


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.1f} MB"


def rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:,.0f} MB/s"


def time_row(result: Result, key: str, note: Callable[[Sample], str] | None = None) -> Row:
    g, o = result.median(GATEWAY), result.median(ORTHANC)
    text = f"{note(result.last(GATEWAY))} / {note(result.last(ORTHANC))}" if note else ""
    return Row(result.case.label, key, g, o, ms(g), ms(o), text)


def rows_note(sample: Sample) -> str:
    return f"{sample.items} row{'' if sample.items == 1 else 's'}"


def bytes_note(sample: Sample) -> str:
    return mb(sample.nbytes)


def wado_rows(result: Result) -> list[Row]:
    """Total time with throughput, and time to first byte, of a streamed retrieve."""
    label = result.case.label
    g, o = result.median(GATEWAY), result.median(ORTHANC)
    gb, ob = result.last(GATEWAY).nbytes, result.last(ORTHANC).nbytes
    note = f"{mb(gb)} / {mb(ob)}"
    total = Row(label, "wado", g, o, f"{ms(g)} ({rate(gb, g)})", f"{ms(o)} ({rate(ob, o)})", note)
    gf, of = (result.median(s, lambda x: x.first_byte) for s in (GATEWAY, ORTHANC))
    return [total, Row(f"{label}: time to first byte", "first_byte", gf, of, ms(gf), ms(of))]


def stow_row(result: Result) -> Row:
    g, o = result.median(GATEWAY), result.median(ORTHANC)
    n = result.last(GATEWAY).items
    note = f"{n} × {mb(result.last(GATEWAY).nbytes / n)}"
    return Row(result.case.label, "stow", g, o, f"{ms(g)} ({n / g:.0f} inst/s)", f"{ms(o)} ({n / o:.0f} inst/s)", note)


# --- markdown ---------------------------------------------------------------------------------


def load_average() -> str:
    """The 1-minute load average: other work on the machine skews the timings."""
    return f"{os.getloadavg()[0]:.2f}"


def machine_lines(orthanc_version: str, quick: bool, load_before: str) -> list[str]:
    return [
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.machine()}, {cpu_model()}, {os.cpu_count()} cores",
        f"- Python {platform.python_version()}; gateway {git_revision()}; Orthanc {orthanc_version}",
        f"- mode: {'--quick (smoke test: small series, ~200 MB memory test)' if quick else 'full'}",
        f"- load average (1 min) at start / end: {load_before} / {load_average()} on {os.cpu_count()} cores",
    ]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_revision() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "(unknown revision)"
    return out.stdout.strip()


def table(rows: Sequence[Row], repeats: str) -> list[str]:
    lines = [
        f"Medians ({repeats}); ratio = gateway time / Orthanc time (below 1: gateway faster).",
        "",
        "| operation | gateway | Orthanc | gateway/Orthanc | notes (gateway / Orthanc) |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [f"| {r.label} | {r.gateway_cell} | {r.orthanc_cell} | {r.ratio:.2f}× | {r.note} |" for r in rows]
    return lines


def memory_table(results: Sequence[MemoryResult]) -> list[str]:
    lines = [
        "| server | idle RSS | before upload | peak while storing | store time | "
        "before streaming | peak while streaming | stream time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        cells = [m.server, mb(m.idle)]
        for phase in (m.upload, m.stream):
            if phase is None:
                cells += ["–", "–", m.error or "–"]
            else:
                cells += [
                    mb(phase.baseline),
                    mb(phase.peak),
                    f"{phase.seconds:.1f} s ({rate(phase.nbytes, phase.seconds)})",
                ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def targets(rows: Sequence[Row], memory: MemoryResult, quick: bool) -> list[str]:
    by_key = {key: [r for r in rows if r.key == key] for key in {r.key for r in rows}}

    def check(name: str, chosen: list[Row], limit: float) -> str:
        ok = all(r.ratio <= limit for r in chosen)
        detail = ", ".join(f"{r.label}: {r.ratio:.2f}×" for r in chosen)
        return f"- {'MET' if ok else 'NOT MET'}: {name} (ratio ≤ {limit}) — {detail}"

    lines = [
        check("QIDO and series metadata at least 2× faster than Orthanc", by_key["qido"] + by_key["metadata"], 0.5),
        check("WADO-RS series at least as fast as Orthanc", by_key["wado"], 1.0),
        check("STOW-RS at least as fast as Orthanc", by_key["stow"], 1.0),
        check("one frame within 1.5× of Orthanc", by_key["frame"], 1.5),
    ]
    lines.append(rss_target(memory, quick))
    return lines


def rss_target(memory: MemoryResult, quick: bool) -> str:
    size = mb(memory.upload.nbytes) if memory.upload else "?"
    caveat = f" (only {size} in --quick mode: not conclusive)" if quick else ""
    if memory.upload is None or memory.stream is None:
        return f"- NOT MET: gateway RSS under 300 MB — {memory.error}"
    peaks = memory.upload.peak, memory.stream.peak
    ok = max(peaks) < RSS_LIMIT
    return (
        f"- {'MET' if ok else 'NOT MET'}: gateway RSS under 300 MB while storing / streaming {size}{caveat} — "
        f"peaks {mb(peaks[0])} / {mb(peaks[1])}"
    )


def render(
    rows: Sequence[Row],
    memory: Sequence[MemoryResult],
    *,
    orthanc_version: str,
    quick: bool,
    repeats: str,
    dataset: str,
    load_before: str,
) -> str:
    gateway_memory = next(m for m in memory if m.server == GATEWAY)
    lines = [
        "# dicomweb-gateway vs Orthanc DICOMweb",
        "",
        *machine_lines(orthanc_version, quick, load_before),
        f"- data: {dataset}",
        "- client: httpx, one keep-alive connection per server, `Accept-Encoding: identity`, same process",
        "",
        "## Latency and throughput",
        "",
        *table(rows, repeats),
        "",
        f"## Memory (resident set size, sampled every 50 ms; {gateway_memory.slices} slices of 512×512×16 bit)",
        "",
        *memory_table(memory),
        "",
        "## Targets",
        "",
        *targets(rows, gateway_memory, quick),
        "",
    ]
    return "\n".join(lines)
