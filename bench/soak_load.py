"""The soak test's load generator: mixed QIDO/WADO/STOW requests at a fixed rate, open loop.

Run by ``bench/soak.py`` as a second process (``python -m bench.soak_load PLAN.json RESULT.json``).
Request ``i`` is due at ``start + i / rate`` whether or not earlier ones have been answered, so a
slow server shows as latency and requests in flight, never as a lower request rate; each latency
is measured from the moment the request was due to the end of its response body.

Reads go half to the seeded instances, half to instances this run stored; frame and rendered
requests draw the latter from the first :data:`HOT_SET` stored only. The gateway keeps frames and
rendered images in bounded LRU caches (256 + 64 MiB by default): reading ever-new frames would
grow the resident size by design for hours, until those caches are full, and hide a leak's
growth in a cache's. With a fixed working set the caches reach their steady size in the warm-up.

The result
file holds, per kind of request, the statuses, latencies and failures, and every instance the
gateway acknowledged with the SHA-256 of the bytes sent (``bench/soak.py`` reads them all back).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.dataset import multipart_body  # noqa: E402
from bench.soak_data import Acknowledged, InstanceTemplate, Target, sha256  # noqa: E402

DICOM_JSON = "application/dicom+json"
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAME_AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
REFERENCED_SOP_SEQUENCE = "00081199"
MAX_FAILURE_SAMPLES = 10
HOT_SET = 100  # stored instances that frame and rendered requests read (see the module docstring)


@dataclass(frozen=True)
class Plan:
    """What the load process is told by ``bench/soak.py`` (a JSON file)."""

    base: str
    rate: float
    seconds: float
    run_root: str
    targets: list[Target]
    studies: int = 40  # the run's new instances go into this many studies
    seed: int = 7
    connections: int = 64
    request_timeout: float = 60.0
    progress_seconds: float = 30.0

    @classmethod
    def load(cls, path: Path) -> Plan:
        raw = json.loads(path.read_text())
        raw["targets"] = [Target(**t) for t in raw["targets"]]
        return cls(**raw)

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))


@dataclass
class Call:
    """One request and what counts as a right answer to it."""

    method: str
    url: str
    headers: dict[str, str]
    expected: frozenset[int]
    media: str  # the Content-Type a 200 must have (prefix)
    content: bytes | None = None
    # Checks a 200 answer: a problem, or None; may record what the answer acknowledged.
    check: Callable[[httpx.Response], str | None] | None = None


@dataclass
class Tally:
    """Everything observed for one kind of request."""

    group: str
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: int = 0  # 5xx, no answer, broken connection
    unexpected: int = 0  # a 4xx (or other status) this request must not get
    invalid: int = 0  # the expected status with a wrong body
    failures: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        if len(self.failures) < MAX_FAILURE_SAMPLES:
            self.failures.append(message)


@dataclass(frozen=True)
class Stored:
    """An acknowledged instance of this run: its template coordinates and digest."""

    study: int
    series: int
    sop: int
    sha256: str


class Mix:
    """The request mix: ~50 % QIDO, ~35 % WADO, ~15 % STOW (weights in :attr:`kinds`)."""

    def __init__(self, plan: Plan, rng: random.Random) -> None:
        self.plan = plan
        self.rng = rng
        self.template = InstanceTemplate(plan.run_root)
        self.stored: list[Stored] = []
        self._series = 0
        self._sop = 0
        self.kinds: dict[str, tuple[str, float, Callable[[], Call]]] = {
            "qido_studies_name": ("QIDO", 8, self.qido_studies_name),
            "qido_studies_ohif": ("QIDO", 8, lambda: self.qido("/studies", OHIF_LIST)),
            "qido_studies_date": ("QIDO", 6, lambda: self.qido("/studies", DATE_RANGE)),
            "qido_study_series": ("QIDO", 8, self.qido_study_series),
            "qido_series_modality": ("QIDO", 5, lambda: self.qido("/series", MR_SERIES)),
            "qido_series_instances": ("QIDO", 10, self.qido_series_instances),
            "qido_instances_class": ("QIDO", 5, self.qido_instances_class),
            "wado_instance": ("WADO", 8, self.wado_instance),
            "wado_series": ("WADO", 5, self.wado_series),
            "wado_metadata": ("WADO", 8, self.wado_metadata),
            "wado_frame": ("WADO", 8, self.wado_frame),
            "wado_rendered": ("WADO", 6, self.wado_rendered),
            "stow_single": ("STOW", 9, lambda: self.stow_new(1)),
            "stow_multi": ("STOW", 4, lambda: self.stow_new(self.rng.randint(2, 5))),
            "stow_duplicate": ("STOW", 1.5, self.stow_duplicate),
            "stow_conflict": ("STOW", 0.5, self.stow_conflict),
        }
        self._names = list(self.kinds)
        self._weights = [self.kinds[k][1] for k in self._names]

    def choose(self) -> str:
        return self.rng.choices(self._names, self._weights)[0]

    # -- targets ---------------------------------------------------------------------------

    def target(self, *, hot: bool = False) -> Target:
        """A seeded instance or, half of the time once there are some, one this run stored (for
        ``hot`` requests, one of the first :data:`HOT_SET` stored)."""
        if self.stored and self.rng.random() < 0.5:
            s = self.rng.choice(self.stored[:HOT_SET] if hot else self.stored)
            return Target(*self.template.uids(s.study, s.series, s.sop))
        return self.rng.choice(self.plan.targets)

    def url(self, t: Target, level: str) -> str:
        path = f"/studies/{t.study}"
        if level in ("series", "instance"):
            path += f"/series/{t.series}"
        if level == "instance":
            path += f"/instances/{t.sop}"
        return path

    # -- QIDO ------------------------------------------------------------------------------

    def qido(self, path: str, params: list[tuple[str, str]]) -> Call:
        query = urlencode(params)
        return Call("GET", path + ("?" + query if query else ""), {"Accept": DICOM_JSON}, QIDO_OK, DICOM_JSON)

    def qido_studies_name(self) -> Call:
        name = self.rng.choice(["DOE*", "SMITH*", f"SOAK^PATIENT00{self.rng.randint(0, 3)}*"])
        return self.qido("/studies", [("PatientName", name), ("includefield", "00081030")])

    def qido_study_series(self) -> Call:
        return self.qido(self.url(self.target(), "study") + "/series", [("includefield", "0008103E")])

    def qido_series_instances(self) -> Call:
        return self.qido(self.url(self.target(), "series") + "/instances", [("includefield", "all")])

    def qido_instances_class(self) -> Call:
        offset = str(self.rng.randrange(0, 200, 10))
        return self.qido("/instances", [("SOPClassUID", CT_STORAGE), ("limit", "50"), ("offset", offset)])

    # -- WADO ------------------------------------------------------------------------------

    def wado_instance(self) -> Call:
        return Call("GET", self.url(self.target(), "instance"), {"Accept": AS_STORED}, OK, "multipart/related")

    def wado_series(self) -> Call:
        return Call("GET", self.url(self.target(), "series"), {"Accept": AS_STORED}, OK, "multipart/related")

    def wado_metadata(self) -> Call:
        return Call("GET", self.url(self.target(), "series") + "/metadata", {"Accept": DICOM_JSON}, OK, DICOM_JSON)

    def wado_frame(self) -> Call:
        t = self.target(hot=True)
        frame = self.rng.randint(1, t.frames)
        url = f"{self.url(t, 'instance')}/frames/{frame}"
        return Call("GET", url, {"Accept": FRAME_AS_STORED}, OK, "multipart/related")

    def wado_rendered(self) -> Call:
        t = self.target(hot=True)
        choice = self.rng.random()
        if t.frames > 1 and choice < 0.5:
            path = f"{self.url(t, 'instance')}/frames/{self.rng.randint(1, t.frames)}/rendered"
        elif choice < 0.8:
            path = self.url(t, "instance") + "/rendered"
        else:
            path = self.url(t, "series") + "/thumbnail"
        return Call("GET", path, {"Accept": "image/jpeg"}, OK, "image/jpeg")

    # -- STOW ------------------------------------------------------------------------------

    def stow(self, instances: list[bytes], expected: frozenset[int], on_ok: Callable[[], None] | None) -> Call:
        body, content_type = multipart_body(instances)
        count = len(instances)

        def check(response: httpx.Response) -> str | None:
            try:
                referenced = orjson.loads(response.content)[REFERENCED_SOP_SEQUENCE]["Value"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return "STOW answer without a ReferencedSOPSequence"
            if len(referenced) != count:
                return f"STOW answer lists {len(referenced)} of {count} instances"
            if on_ok is not None:
                on_ok()
            return None

        headers = {"Content-Type": content_type, "Accept": DICOM_JSON}
        return Call("POST", "/studies", headers, expected, DICOM_JSON, body, check)

    def stow_new(self, count: int) -> Call:
        """``count`` new instances of a new series in one of the run's studies."""
        study = self.rng.randrange(self.plan.studies)
        self._series += 1
        series = self._series
        built = []
        for _ in range(count):
            self._sop += 1
            data = self.template.build(study, series, self._sop)
            built.append((Stored(study, series, self._sop, sha256(data)), data))

        def acknowledged() -> None:
            self.stored.extend(item for item, _ in built)

        return self.stow([data for _, data in built], OK, acknowledged)

    def stow_duplicate(self) -> Call:
        """An acknowledged instance sent again, byte for byte: stored once, answered 200."""
        if not self.stored:
            return self.stow_new(1)
        s = self.rng.choice(self.stored)
        return self.stow([self.template.build(s.study, s.series, s.sop)], OK, None)

    def stow_conflict(self) -> Call:
        """Other content under an acknowledged SOP Instance UID: refused with 409 (PS3.18 10.5.3)."""
        if not self.stored:
            return self.stow_new(1)
        s = self.rng.choice(self.stored)
        return self.stow([self.template.build(s.study, s.series, s.sop, variant=1)], CONFLICT, None)

    def acknowledged(self) -> list[Acknowledged]:
        return [Acknowledged(*self.template.uids(s.study, s.series, s.sop), s.sha256) for s in self.stored]


OK = frozenset({200})
QIDO_OK = frozenset({200, 204})  # 204: no match (PS3.18 10.6.3)
CONFLICT = frozenset({409})
OHIF_LIST = [("limit", "101"), ("offset", "0"), ("fuzzymatching", "false"), ("includefield", "00081030,00080060")]
DATE_RANGE = [("StudyDate", "20240101-20241231"), ("ModalitiesInStudy", "CT"), ("includefield", "00100030")]
MR_SERIES = [("Modality", "MR"), ("limit", "50")]


class Runner:
    """Issues the plan's requests on schedule and tallies the answers."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.mix = Mix(plan, random.Random(plan.seed))
        self.tallies = {name: Tally(group) for name, (group, _, _) in self.mix.kinds.items()}
        self.issued = 0
        self.completed = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.max_lag = 0.0  # how late the scheduler itself was in issuing a request

    async def run(self) -> dict[str, Any]:
        limits = httpx.Limits(max_connections=self.plan.connections, max_keepalive_connections=self.plan.connections)
        timeout = httpx.Timeout(self.plan.request_timeout)
        headers = {"Accept-Encoding": "identity"}  # no gzip (PEERS.md): measure the gateway, not zlib
        started = time.time()
        async with httpx.AsyncClient(
            base_url=self.plan.base, limits=limits, timeout=timeout, headers=headers
        ) as client:
            progress = asyncio.create_task(self.report_progress(started))
            try:
                await self.drive(client)
            finally:
                progress.cancel()
        return {
            "started": started,
            "ended": time.time(),
            "planned_seconds": self.plan.seconds,
            "rate": self.plan.rate,
            "issued": self.issued,
            "completed": self.completed,
            "max_in_flight": self.max_in_flight,
            "max_lag": self.max_lag,
            "kinds": {name: _tally_json(t) for name, t in self.tallies.items()},
            "acknowledged": [asdict(a) for a in self.mix.acknowledged()],
        }

    async def drive(self, client: httpx.AsyncClient) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        pending: set[asyncio.Task[None]] = set()
        for i in range(int(self.plan.rate * self.plan.seconds)):
            due = start + i / self.plan.rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.max_lag = max(self.max_lag, -delay)
            kind = self.mix.choose()
            call = self.mix.kinds[kind][2]()
            task = asyncio.create_task(self.one(client, kind, call, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
            self.issued += 1
        if pending:  # answers still owed; the request timeout bounds the wait
            await asyncio.wait(pending)

    async def one(self, client: httpx.AsyncClient, kind: str, call: Call, due: float) -> None:
        tally = self.tallies[kind]
        loop = asyncio.get_running_loop()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            response = await client.request(call.method, call.url, headers=call.headers, content=call.content)
        except httpx.HTTPError as exc:
            tally.server_errors += 1
            tally.statuses["no answer"] += 1
            tally.fail(f"{call.method} {call.url}: {type(exc).__name__}: {exc}")
            return
        finally:
            self.in_flight -= 1
            self.completed += 1
        tally.latencies.append(loop.time() - due)
        status = response.status_code
        tally.statuses[str(status)] += 1
        if status >= 500:
            tally.server_errors += 1
            tally.fail(f"{call.method} {call.url}: {status} {response.text[:300]}")
        elif status not in call.expected:
            tally.unexpected += 1
            tally.fail(f"{call.method} {call.url}: {status} {response.headers.get('warning', response.text[:300])}")
        elif status == 200:
            problem = self.problem(call, response)
            if problem:
                tally.invalid += 1
                tally.fail(f"{call.method} {call.url}: {problem}")

    @staticmethod
    def problem(call: Call, response: httpx.Response) -> str | None:
        media = response.headers.get("content-type", "")
        if not media.startswith(call.media):
            return f"Content-Type {media!r}, expected {call.media}"
        if not response.content:
            return "empty body"
        return call.check(response) if call.check else None

    async def report_progress(self, started: float) -> None:
        while True:
            await asyncio.sleep(self.plan.progress_seconds)
            errors = sum(t.server_errors for t in self.tallies.values())
            unexpected = sum(t.unexpected + t.invalid for t in self.tallies.values())
            print(
                f"  load: {time.time() - started:5.0f} s, {self.issued} issued, {self.completed} answered, "
                f"{self.in_flight} in flight, {errors} server errors, {unexpected} wrong answers",
                file=sys.stderr,
                flush=True,
            )


def _tally_json(tally: Tally) -> dict[str, Any]:
    return {
        "group": tally.group,
        "latencies": tally.latencies,
        "statuses": dict(tally.statuses),
        "server_errors": tally.server_errors,
        "unexpected": tally.unexpected,
        "invalid": tally.invalid,
        "failures": tally.failures,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bench.soak_load PLAN.json RESULT.json", file=sys.stderr)
        return 2
    plan = Plan.load(Path(argv[0]))
    result = asyncio.run(Runner(plan).run())
    Path(argv[1]).write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
