"""Timed requests and the runner that repeats each case against both servers in turn."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.dataset import multipart_body
from bench.servers import Server, check


@dataclass(frozen=True)
class Sample:
    """One timed request: wall time, time to the first body byte, body bytes and items
    (result rows for QIDO and metadata, instances for STOW)."""

    seconds: float
    first_byte: float | None = None
    nbytes: int = 0
    items: int = 0


@dataclass(frozen=True)
class Case:
    """One benchmark operation. ``prepare(rep)`` builds the payload of repetition ``rep``
    (untimed, shared by both servers); ``run`` times one request with it."""

    label: str
    run: Callable[[Server, Any], Sample]
    repeat: int
    warmup: int = 2
    prepare: Callable[[int], Any] = lambda rep: None


@dataclass
class Result:
    case: Case
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def median(self, server: str, metric: Callable[[Sample], float | None] = lambda s: s.seconds) -> float:
        values = [v for v in map(metric, self.samples[server]) if v is not None]
        return statistics.median(values)

    def last(self, server: str) -> Sample:
        return self.samples[server][-1]


def run_case(case: Case, servers: Sequence[Server]) -> Result:
    """Warm-up, then ``case.repeat`` timed repetitions; servers alternate within a repetition,
    each repetition starting with the next server: a server that follows another's large writes
    meets their write-back on the disk (a STOW of 52 MB is seen 10-20 % slower by the server that
    comes next), so that no server always comes first or always follows the same one."""
    result = Result(case, {s.name: [] for s in servers})
    for rep in range(case.warmup + case.repeat):
        payload = case.prepare(rep)
        first = rep % len(servers)
        for server in [*servers[first:], *servers[:first]]:
            sample = case.run(server, payload)
            if rep >= case.warmup:
                result.samples[server.name].append(sample)
    print(
        f"  {case.label}: " + ", ".join(f"{s.name} {result.median(s.name) * 1e3:.1f} ms" for s in servers),
        file=sys.stderr,
    )
    return result


# --- timed requests ---------------------------------------------------------------------------


def get_json(server: Server, path: str, accept: str = "application/dicom+json") -> Sample:
    """GET a JSON answer (QIDO, metadata); rows are counted after the clock stops."""
    start = time.perf_counter()
    response = server.client.get(server.base + path, headers={"Accept": accept})
    body = response.content
    seconds = time.perf_counter() - start
    check(response, server, "GET")
    return Sample(seconds, nbytes=len(body), items=len(orjson.loads(body)) if body else 0)


def get_stream(server: Server, path: str, accept: str) -> Sample:
    """GET a (large) body as a stream, read and discarded; times the first byte too."""
    first: float | None = None
    nbytes = 0
    start = time.perf_counter()
    with server.client.stream("GET", server.base + path, headers={"Accept": accept}) as response:
        for chunk in response.iter_raw():
            if first is None:
                first = time.perf_counter() - start
            nbytes += len(chunk)
        seconds = time.perf_counter() - start
        if response.status_code != 200:
            response.read()
        check(response, server, "GET")
    return Sample(seconds, first, nbytes)


def post_stow(server: Server, instances: Sequence[bytes], per_request: int) -> Sample:
    """STOW ``instances`` in requests of ``per_request``; bodies are built before the clock starts."""
    bodies = [multipart_body(instances[i : i + per_request]) for i in range(0, len(instances), per_request)]
    url = server.base + "/studies"
    responses = []
    start = time.perf_counter()
    for body, content_type in bodies:
        headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
        responses.append(server.client.post(url, content=body, headers=headers))
    seconds = time.perf_counter() - start
    for response in responses:
        check(response, server, "STOW-RS")
    return Sample(seconds, nbytes=sum(len(b) for b, _ in bodies), items=len(instances))
