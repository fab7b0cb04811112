"""The soak test's measurements of the gateway process and its pass/fail criteria.

A :class:`Sampler` thread records the resident memory, open file descriptors and threads of the
gateway's process tree every few seconds. :func:`evaluate` turns those samples and the load
process's result into figures and verdicts; :func:`render` writes them as markdown.

What "no leak" means here, concretely:

- RSS: the median of the samples in a window right after the warm-up (the first
  ``warmup_fraction`` of the run, when caches and pools have filled) against the median of the
  samples in the last window of the run; growth must stay under ``max_rss_growth``.
- File descriptors under load move with the connections and requests in flight, so "flat" is
  judged twice: the highest count in the second half of the post-warm-up run may exceed the
  highest of its first half by at most ``fd_allowance``. With no client connected, after the
  load: no connection on the gateway's port is left open, and the descriptors other than
  sockets and SQLite files (the pools of store connections and SQLite readers, bounded by their
  sizes and opened lazily) may exceed their count before the load (after seeding and a priming
  load) by at most ``fd_allowance``. The idle samples also say what each descriptor is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped, unused-ignore]

MB = 1024 * 1024
SQLITE_FILES = "index.sqlite3"


@dataclass(frozen=True)
class ProcessSample:
    at: float  # epoch seconds
    rss: int  # VmRSS = anon + file + shmem
    fds: int
    threads: int
    anon: int = 0  # RssAnon: the heap, thread stacks and arenas, anonymous mappings
    file: int = 0  # RssFile: mapped files (libraries, SQLite's WAL index, mmapped reads)
    shmem: int = 0  # RssShmem
    fd_kinds: tuple[tuple[str, int], ...] = ()  # what the descriptors are (idle samples only)
    load1: float = 0.0  # the machine's 1-minute load average
    client_connections: int = 0  # TCP connections on the listening port, open (idle samples only)
    index_memory: int = -1  # what SQLite holds (page caches, statements), from /metrics; -1 unknown
    cache_bytes: int = -1  # what the gateway's bounded in-memory caches hold, from /metrics

    def describe_fds(self) -> str:
        return ", ".join(f"{kind} {n}" for kind, n in self.fd_kinds)

    @property
    def unpooled_fds(self) -> int:
        """Descriptors other than sockets and the SQLite files that reader connections hold:
        those two are pools, bounded by their size, and open lazily under load."""
        pooled = sum(n for kind, n in self.fd_kinds if kind == "socket" or kind.startswith(SQLITE_FILES))
        return self.fds - pooled


def _status_kib(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/PID/status``, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            out[name] = int(value.split()[0]) * 1024
    return out


def _fd_kind(target: str) -> str:
    """``socket``, ``pipe``, ``anon_inode:[eventpoll]``..., or a file's name (its directory dropped)."""
    if target.startswith(("socket:", "pipe:")):
        return target.split(":")[0]
    return target if target.startswith("anon_inode:") else Path(target).name


def fd_kinds(pids: list[int]) -> tuple[tuple[str, int], ...]:
    counts: Counter[str] = Counter()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                counts[_fd_kind(os.readlink(fd))] += 1
    return tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def sample_tree(pid: int, *, idle_port: int | None = None) -> ProcessSample | None:
    """Memory, open FDs and threads of ``pid`` and its children summed; None once it is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        fds = sum(p.num_fds() for p in procs)
        threads = sum(p.num_threads() for p in procs)
        status = [_status_kib(p.pid) for p in procs]
        kinds = fd_kinds([p.pid for p in procs]) if idle_port else ()
        clients = sum(
            1
            for p in procs
            for c in (p.net_connections("tcp") if idle_port else ())
            if c.laddr and c.laddr.port == idle_port and c.status != psutil.CONN_LISTEN
        )
    except (psutil.Error, OSError):
        return None

    def total(field: str) -> int:
        return sum(s.get(field, 0) for s in status)

    return ProcessSample(
        time.time(),
        total("VmRSS"),
        fds,
        threads,
        total("RssAnon"),
        total("RssFile"),
        total("RssShmem"),
        kinds,
        os.getloadavg()[0],
        clients,
    )


def scrape_memory(metrics_url: str) -> tuple[int, int]:
    """(index library memory, bytes in the in-memory caches) from the gateway's ``/metrics``;
    -1 each when it does not answer. They tell bounded caches filling from a leak."""
    index = cache = -1
    try:
        text = httpx.get(metrics_url, timeout=5).text
    except httpx.HTTPError:
        return index, cache
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == "dicomweb_gateway_index_memory_bytes":
            index = int(float(value))
        elif name.startswith("dicomweb_gateway_cache_bytes{"):
            cache = max(cache, 0) + int(float(value))
    return index, cache


class Sampler:
    """Samples :func:`sample_tree` every ``interval`` seconds in a thread while running, and the
    gateway's own memory figures from ``metrics_url`` when given."""

    def __init__(self, pid: int, interval: float, metrics_url: str | None = None) -> None:
        self.pid = pid
        self.interval = interval
        self.metrics_url = metrics_url
        self.samples: list[ProcessSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"soak-sampler-{pid}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            sample = sample_tree(self.pid)
            if sample is not None and self.metrics_url:
                index, cache = scrape_memory(self.metrics_url)
                sample = dataclasses.replace(sample, index_memory=index, cache_bytes=cache)
            if sample is not None:
                self.samples.append(sample)
            if self._stop.wait(self.interval):
                return


@dataclass(frozen=True)
class Criteria:
    warmup_fraction: float = 0.10
    max_rss_growth: float = 0.05
    fd_allowance: int = 4


@dataclass(frozen=True)
class Verdict:
    name: str
    ok: bool
    detail: str


@dataclass
class Figures:
    """Everything the report shows; ``verdicts`` decide the exit status."""

    planned: int
    issued: int
    completed: int
    seconds: float
    rate: float
    max_in_flight: int
    max_lag: float
    kinds: dict[str, dict[str, Any]]
    groups: dict[str, dict[str, Any]]
    server_errors: int  # of the run and the priming
    wrong_answers: int
    prime_requests: int
    prime_failures: int
    rss_warm: int
    rss_end: int
    rss_growth: float
    rss_max: int
    index_warm: int  # SQLite's own memory (window medians as for RSS; -1 unknown)
    index_end: int
    caches_warm: int  # the gateway's bounded in-memory caches
    caches_end: int
    fd_min: int
    fd_max: int
    fd_max_first_half: int
    fd_max_second_half: int
    threads_min: int
    threads_max: int
    load1_median: float
    load1_max: float
    idle_before: ProcessSample
    idle_after: ProcessSample
    acknowledged: int
    verified: int
    verify_problems: list[str]
    spool_leftovers: int
    log_tracebacks: int
    samples: int
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(tallies: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [x for t in tallies for x in t["latencies"]]
    statuses: dict[str, int] = {}
    for t in tallies:
        for status, n in t["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    return {
        "count": sum(statuses.values()),
        "statuses": dict(sorted(statuses.items())),
        "p50": percentile(latencies, 0.50),
        "p95": percentile(latencies, 0.95),
        "p99": percentile(latencies, 0.99),
        "server_errors": sum(t["server_errors"] for t in tallies),
        "wrong": sum(t["unexpected"] + t["invalid"] for t in tallies),
        "failures": [f for t in tallies for f in t["failures"]],
    }


def _window_median(samples: list[ProcessSample], start: float, end: float, what: str = "rss") -> int:
    inside = [value for s in samples if start <= s.at <= end and (value := getattr(s, what)) >= 0]
    return int(statistics.median(inside)) if inside else -1


def evaluate(
    load: dict[str, Any],
    samples: list[ProcessSample],
    idle_before: ProcessSample,
    idle_after: ProcessSample,
    *,
    verified: int,
    verify_problems: list[str],
    spool_leftovers: int,
    log_tracebacks: int,
    criteria: Criteria,
    prime: dict[str, Any] | None = None,
) -> Figures:
    """``prime``: the result of the priming load before ``idle_before`` (its failures count too)."""
    primed = _summary(list(prime["kinds"].values())) if prime else _summary([])
    started = float(load["started"])
    seconds = float(load["planned_seconds"])
    warm_at = started + criteria.warmup_fraction * seconds
    end_at = float(load["ended"])
    window = max(0.05 * seconds, 10.0)
    steady = [s for s in samples if warm_at <= s.at <= end_at]
    if len(steady) < 4:
        raise RuntimeError(f"only {len(steady)} samples after the warm-up: run longer or sample more often")
    half = (warm_at + end_at) / 2
    first = [s for s in steady if s.at <= half]
    second = [s for s in steady if s.at > half]
    rss_warm = _window_median(samples, warm_at, warm_at + window)
    rss_end = _window_median(samples, end_at - window, end_at)
    kinds = {name: _summary([t]) | {"group": t["group"]} for name, t in load["kinds"].items()}
    groups = {
        group: _summary([t for t in load["kinds"].values() if t["group"] == group])
        for group in ("QIDO", "WADO", "STOW")
    }
    groups["all"] = _summary(list(load["kinds"].values()))
    figures = Figures(
        planned=int(load["rate"] * seconds),
        issued=int(load["issued"]),
        completed=int(load["completed"]),
        seconds=seconds,
        rate=float(load["rate"]),
        max_in_flight=int(load["max_in_flight"]),
        max_lag=float(load["max_lag"]),
        kinds=kinds,
        groups=groups,
        server_errors=groups["all"]["server_errors"] + primed["server_errors"],
        wrong_answers=groups["all"]["wrong"] + primed["wrong"],
        prime_requests=primed["count"],
        prime_failures=primed["server_errors"] + primed["wrong"],
        rss_warm=rss_warm,
        rss_end=rss_end,
        rss_growth=(rss_end - rss_warm) / rss_warm if rss_warm else float("inf"),
        rss_max=max(s.rss for s in steady),
        index_warm=_window_median(samples, warm_at, warm_at + window, "index_memory"),
        index_end=_window_median(samples, end_at - window, end_at, "index_memory"),
        caches_warm=_window_median(samples, warm_at, warm_at + window, "cache_bytes"),
        caches_end=_window_median(samples, end_at - window, end_at, "cache_bytes"),
        fd_min=min(s.fds for s in steady),
        fd_max=max(s.fds for s in steady),
        fd_max_first_half=max(s.fds for s in first),
        fd_max_second_half=max(s.fds for s in second),
        threads_min=min(s.threads for s in steady),
        threads_max=max(s.threads for s in steady),
        load1_median=statistics.median(s.load1 for s in samples),
        load1_max=max(s.load1 for s in samples),
        idle_before=idle_before,
        idle_after=idle_after,
        acknowledged=len(load["acknowledged"]) + (len(prime["acknowledged"]) if prime else 0),
        verified=verified,
        verify_problems=verify_problems,
        spool_leftovers=spool_leftovers,
        log_tracebacks=log_tracebacks,
        samples=len(samples),
    )
    figures.verdicts = _verdicts(figures, criteria)
    return figures


def _verdicts(f: Figures, c: Criteria) -> list[Verdict]:
    allowance = c.fd_allowance
    return [
        Verdict("every request issued on schedule and answered", f.issued == f.planned and f.completed == f.issued,
                f"{f.issued} of {f.planned} issued, {f.completed} answered or failed"),
        Verdict("0 server errors (5xx, no answer, broken connection)", f.server_errors == 0, str(f.server_errors)),
        Verdict("0 unexpected statuses or wrong answers", f.wrong_answers == 0, str(f.wrong_answers)),
        Verdict(f"RSS growth after warm-up < {c.max_rss_growth:.0%}", f.rss_growth < c.max_rss_growth,
                f"{f.rss_warm / MB:.1f} MiB -> {f.rss_end / MB:.1f} MiB ({f.rss_growth:+.2%})"),
        Verdict(f"open FDs flat under load (2nd-half max <= 1st-half max + {allowance})",
                f.fd_max_second_half <= f.fd_max_first_half + allowance,
                f"1st half max {f.fd_max_first_half}, 2nd half max {f.fd_max_second_half}"),
        Verdict(f"open FDs back to idle, pools aside (after <= before + {allowance})",
                f.idle_after.unpooled_fds <= f.idle_before.unpooled_fds + allowance,
                f"idle before {f.idle_before.unpooled_fds}, after {f.idle_after.unpooled_fds} (sockets and SQLite "
                f"files aside: {f.idle_before.fds} / {f.idle_after.fds} in all)"),
        Verdict("no client connection open after the load", f.idle_after.client_connections == 0,
                str(f.idle_after.client_connections)),
        Verdict("every acknowledged instance reads back byte for byte",
                f.acknowledged > 0 and f.verified == f.acknowledged and not f.verify_problems,
                f"{f.verified} of {f.acknowledged} verified" + "".join(f"; {p}" for p in f.verify_problems[:1])),
        Verdict("no spool files left behind", f.spool_leftovers == 0, str(f.spool_leftovers)),
        Verdict("no tracebacks in the gateway log", f.log_tracebacks == 0, str(f.log_tracebacks)),
    ]  # fmt: skip


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def render(f: Figures, *, title: str, setup: str, load_average: tuple[str, str]) -> str:
    lines = [
        f"## {title}",
        "",
        setup,
        "",
        f"{f.issued} requests at {f.rate:g}/s over {f.seconds / 60:g} min (open loop); at most "
        f"{f.max_in_flight} in flight; scheduler at most {_ms(f.max_lag)} ms late. "
        f"Load average (1, 5, 15 min) before / after: {load_average[0]} / {load_average[1]}; 1-minute "
        f"load average during the run: median {f.load1_median:.1f}, max {f.load1_max:.1f} "
        f"({os.cpu_count()} cores). Before the run, "
        f"{f.prime_requests} requests of the same mix primed the gateway's pools "
        f"({f.prime_failures} server errors or wrong answers).",
        "",
        "| kind | requests | statuses | p50 ms | p95 ms | p99 ms | server errors | wrong answers |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    rows = [*f.kinds.items(), *((f"**{g}**", s) for g, s in f.groups.items())]
    for name, s in rows:
        statuses = ", ".join(f"{k}: {v}" for k, v in s["statuses"].items())
        lines.append(
            f"| {name} | {s['count']} | {statuses} | {_ms(s['p50'])} | {_ms(s['p95'])} | {_ms(s['p99'])} "
            f"| {s['server_errors']} | {s['wrong']} |"
        )
    lines += [
        "",
        "| gateway process | value |",
        "|---|---|",
        f"| RSS after warm-up (median of window) | {f.rss_warm / MB:.1f} MiB |",
        f"| RSS at the end (median of window) | {f.rss_end / MB:.1f} MiB |",
        f"| RSS growth | {f.rss_growth:+.2%} |",
        f"| RSS max after warm-up | {f.rss_max / MB:.1f} MiB |",
        f"| SQLite's own memory after warm-up / end | {_mib(f.index_warm)} / {_mib(f.index_end)} |",
        f"| frame/rendering caches after warm-up / end | {_mib(f.caches_warm)} / {_mib(f.caches_end)} |",
        f"| RSS idle before / after the load | {f.idle_before.rss / MB:.1f} / {f.idle_after.rss / MB:.1f} MiB |",
        f"| RssAnon / RssFile, idle before | {f.idle_before.anon / MB:.1f} / {f.idle_before.file / MB:.1f} MiB |",
        f"| RssAnon / RssFile, idle after | {f.idle_after.anon / MB:.1f} / {f.idle_after.file / MB:.1f} MiB |",
        f"| open FDs after warm-up, min / max | {f.fd_min} / {f.fd_max} |",
        f"| open FDs max, 1st / 2nd half | {f.fd_max_first_half} / {f.fd_max_second_half} |",
        f"| open FDs idle before / after the load | {f.idle_before.fds} / {f.idle_after.fds} |",
        f"| open FDs idle before the load | {f.idle_before.describe_fds()} |",
        f"| open FDs idle after the load | {f.idle_after.describe_fds()} |",
        f"| threads after warm-up, min / max | {f.threads_min} / {f.threads_max} |",
        f"| threads idle before / after the load | {f.idle_before.threads} / {f.idle_after.threads} |",
        f"| acknowledged instances read back | {f.verified} / {f.acknowledged} |",
        f"| samples | {f.samples} |",
        "",
        "| criterion | result | figures |",
        "|---|---|---|",
        *(f"| {v.name} | {'PASS' if v.ok else '**FAIL**'} | {v.detail} |" for v in f.verdicts),
    ]
    failures = [x for s in f.kinds.values() for x in s["failures"]]
    if failures:
        lines += ["", "First failures:", "", *(f"- `{x}`" for x in failures[:20])]
    return "\n".join(lines) + "\n"


def _mib(value: int) -> str:
    return "unknown" if value < 0 else f"{value / MB:.1f} MiB"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def samples_csv(samples: list[ProcessSample], started: float) -> str:
    rows = ["seconds,rss_mib,anon_mib,file_mib,shmem_mib,index_mib,caches_mib,fds,threads,load1"]
    for s in samples:
        memory = ",".join(f"{m / MB:.2f}" for m in (s.rss, s.anon, s.file, s.shmem, s.index_memory, s.cache_bytes))
        rows.append(f"{s.at - started:.1f},{memory},{s.fds},{s.threads},{s.load1:.2f}")
    return "\n".join(rows) + "\n"
