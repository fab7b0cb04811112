"""Client faults (issue #7): uploads and downloads the client abandons leave nothing behind.

What "nothing" means, checked from outside the real gateway process: no spool file, no
temporary file in the store, no object, no index row (QIDO), no multipart upload left in S3, no
thread, file descriptor or connection beyond what the gateway held after a warm-up over the
same code paths (worker pools that already existed may stay; they are not leaks).

The semantics held: a STOW whose body is cut was never acknowledged (the client got no
response), so instances whose parts arrived whole before the cut are undone too, unless
another request acknowledged them meanwhile (then they stay: its client was told they are
stored). A download the client abandons stops reading the store; a PACS retrieve it started
still completes into the cache, which then holds only complete, byte-identical instances.

Aborts are raw sockets: headers and part of a body, then a close (FIN) or a reset (RST,
SO_LINGER 0). The settle waits are bounded polls; the thread check nudges the gateway with a
request each round, because anyio retires idle pool threads (after 10 s) only when a new job
arrives.
"""

from __future__ import annotations

import contextlib
import random
import socket
import sqlite3
import struct
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests import factory
from tests.fixtures_gateway import RunningGateway
from tests.fixtures_pacs import GatewayFactory, PacsData, node
from tests.footprint import footprint, footprint_problems, http_port, settle
from tests.http_helpers import referenced_sops, split_multipart, stow, uids_of
from tests.peers.orthanc import OrthancPeer
from tests.test_pacs_wado import dataset_bytes, orthanc_file

pytestmark = pytest.mark.timeout(300)

WORKERS = 8  # concurrent aborts
# The warm-up runs the same requests at twice that concurrency: the worker-thread and connection
# pools it leaves are what the aborts may use without growing them.
WARM_UP_WORKERS = 2 * WORKERS
# The S3 adapter's connections: its pool (settings.s3.max_threads default) and the readiness
# probe's client (one connection).
S3_POOL = 16 + 1
MAX_ASSOCIATIONS = 4  # to the PACS: the pool's bound
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


# --- the gateway process, seen from outside ------------------------------------------------


def nudge(gw: RunningGateway) -> None:
    """One small request that runs in a worker thread (an index read)."""
    httpx.get(gw.url + "/studies", params={"limit": "1"}, timeout=30)


def qido_sops(gw: RunningGateway, path: str = "/instances") -> set[str]:
    response = httpx.get(gw.url + path, params={"limit": "1000"}, timeout=30)
    if response.status_code == 204:
        return set()
    assert response.status_code == 200, response.text
    return {row["00080018"]["Value"][0] for row in response.json()}


def spool_files(gw: RunningGateway) -> list[Path]:
    """Anything under the whole spool tree (per-process subdirectories included)."""
    return [p for p in (gw.data_dir / "spool").rglob("*") if not p.is_dir()]


class StoreView:
    """The object store's content as seen by its own client: files or S3 keys and uploads."""

    def __init__(self, gw: RunningGateway, request: pytest.FixtureRequest) -> None:
        self.gw = gw
        self.bucket = request.getfixturevalue("s3_bucket").bucket if gw.store_kind == "s3" else None
        self.s3 = request.getfixturevalue("s3_admin") if self.bucket else None
        self.s3_port = int(request.getfixturevalue("seaweed").endpoint_url.rsplit(":", 1)[1]) if self.bucket else None

    @property
    def pool_limits(self) -> dict[int, int]:
        return {self.s3_port: S3_POOL} if self.s3_port else {}

    def objects(self) -> set[str]:
        if self.s3 is None:
            root = self.gw.data_dir / "objects"
            return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}
        keys: set[str] = set()
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys.update(item["Key"] for item in page.get("Contents", []))
        return keys

    def unfinished_uploads(self) -> list[str]:
        if self.s3 is None:
            return []
        listing = self.s3.list_multipart_uploads(Bucket=self.bucket)
        return [upload["Key"] for upload in listing.get("Uploads", [])]

    def temp_files(self) -> list[str]:
        """Hidden temporary files the file store writes before publishing an object."""
        return sorted(name for name in self.objects() if Path(name).name.startswith("."))


# --- raw clients that give up -------------------------------------------------------------


def abort_after(port: int, data: bytes, *, rst: bool, linger: float = 0.0, read: int = 0) -> int:
    """Send ``data``, read up to ``read`` bytes of the answer, wait ``linger`` seconds, then
    close (FIN) or reset (RST). Returns the bytes read."""
    got = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        while got < read:
            chunk = sock.recv(min(65536, read - got))
            if not chunk:
                break
            got += len(chunk)
        if linger:
            time.sleep(linger)
        if rst:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return got


@dataclass(frozen=True)
class Upload:
    """A multipart STOW body with where each part's DICOM data starts."""

    body: bytes
    content_type: str
    starts: list[int]
    sizes: list[int]
    study: str


def multipart_upload(instances: Sequence[bytes], preamble: bytes = b"") -> Upload:
    boundary = uuid.uuid4().hex
    body, starts = bytearray(preamble), []
    for data in instances:
        body += f"\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        starts.append(len(body))
        body += data
    body += f"\r\n--{boundary}--\r\n".encode()
    if not preamble:
        del body[:2]  # no preamble: the body starts with the delimiter itself
        starts = [s - 2 for s in starts]
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return Upload(bytes(body), content_type, starts, [len(d) for d in instances], uids_of(instances[0])[0])


def stow_head(upload: Upload, *, chunked: bool, length: int | None = None) -> bytes:
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length or len(upload.body)}"
    return (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {upload.content_type}\r\n"
        f"Accept: application/dicom+json\r\n{framing}\r\n\r\n"
    ).encode()


def chunked_prefix(body: bytes, cut: int, size: int = 16384) -> bytes:
    """The chunked transfer coding of ``body`` sent up to byte ``cut`` of the body: the last
    chunk announced whole and sent in part."""
    out = bytearray()
    for start in range(0, len(body), size):
        chunk = body[start : start + size]
        out += b"%x\r\n" % len(chunk)
        if start + len(chunk) > cut:
            out += chunk[: cut - start]
            return bytes(out)
        out += chunk + b"\r\n"
    return bytes(out)


# The cut points: (name, where in the body, parts complete before it).
CUTS: list[tuple[str, Callable[[Upload], int], int]] = [
    ("in the preamble", lambda u: u.starts[0] // 3, 0),
    ("in the first part's headers", lambda u: u.starts[0] - 8, 0),
    ("in the first part", lambda u: u.starts[0] + u.sizes[0] // 2, 0),
    ("after one part", lambda u: u.starts[1] + u.sizes[1] // 2, 1),
    ("after three parts", lambda u: u.starts[3] + u.sizes[3] // 2, 3),
    ("before the closing delimiter", lambda u: len(u.body) - 4, 3),
]


def upload_for(i: int) -> Upload:
    """Four instances of a study of their own, behind a preamble (RFC 2046 allows one)."""
    instances = factory.ct_series(4, rows=160, cols=160, seed=10_000 + i, patient_name=f"ABORT^{i}")
    return multipart_upload(instances, preamble=b"This is a preamble some clients send.\r\n" * 4)


def abort_upload(port: int, upload: Upload, cut: int, *, chunked: bool, rst: bool, linger: float) -> None:
    sent = chunked_prefix(upload.body, cut) if chunked else upload.body[:cut]
    abort_after(port, stow_head(upload, chunked=chunked) + sent, rst=rst, linger=linger)


# --- STOW ----------------------------------------------------------------------------------


def _warm_up_stow(gw: RunningGateway) -> set[str]:
    """Complete uploads and uploads refused after some parts were stored (400: no closing
    delimiter): the code paths and pools the aborts will use."""
    port = http_port(gw)
    stored: set[str] = set()

    def complete(i: int) -> None:
        instances = factory.ct_series(4, rows=160, cols=160, seed=500 + i, patient_name=f"WARM^{i}")
        response = stow(gw.url, instances)
        assert response.status_code == 200, response.text
        stored.update(uids_of(d)[2] for d in instances)

    def refused(i: int) -> None:
        upload = upload_for(900 + i)
        truncated = upload.body[: len(upload.body) - 4]
        data = stow_head(upload, chunked=False, length=len(truncated)) + truncated
        assert abort_after(port, data, rst=False, read=12) == 12  # the status line: answered

    with ThreadPoolExecutor(WARM_UP_WORKERS) as pool:
        list(pool.map(complete, range(WARM_UP_WORKERS)))
        list(pool.map(refused, range(WARM_UP_WORKERS)))
    return stored


def test_aborted_uploads_leave_nothing_behind(gateway: RunningGateway, request: pytest.FixtureRequest) -> None:
    store = StoreView(gateway, request)
    port = http_port(gateway)
    kept = _warm_up_stow(gateway)
    assert qido_sops(gateway) == kept
    kept_objects = store.objects()
    baseline = footprint(gateway, list(store.pool_limits))
    rng = random.Random(7)

    # 10 one at a time, each cut only once the parts before the cut are indexed: proof that
    # stored parts are undone, not merely never written.
    for i in range(10):
        name, where, complete = CUTS[3 + i % 3]
        upload = upload_for(i)
        chunked = i % 4 == 1
        cut = where(upload)
        sent = chunked_prefix(upload.body, cut) if chunked else upload.body[:cut]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(stow_head(upload, chunked=chunked) + sent)
            deadline = time.monotonic() + 30
            while len(qido_sops(gateway, f"/studies/{upload.study}/instances")) < complete:
                assert time.monotonic() < deadline, f"cut {name}: the complete parts were never stored"
                time.sleep(0.05)
            if i % 2 == 0:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    # 90 more, WORKERS at a time, at every cut point, Content-Length or chunked, FIN or RST,
    # after a random pause (some parts stored before the end, some not).
    def one(i: int) -> None:
        _, where, _ = CUTS[i % len(CUTS)]
        upload = upload_for(i)
        abort_upload(port, upload, where(upload), chunked=i % 3 == 0, rst=i % 2 == 0, linger=rng.random() * 0.3)

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, range(10, 100)))

    def left_behind() -> list[str]:
        problems = []
        if extra := qido_sops(gateway) - kept:
            problems.append(f"{len(extra)} aborted instance(s) still indexed")
        if extra_objects := store.objects() - kept_objects:
            problems.append(f"{len(extra_objects)} object(s) left in the store, e.g. {sorted(extra_objects)[:3]}")
        if uploads := store.unfinished_uploads():
            problems.append(f"unfinished multipart uploads: {uploads}")
        if spooled := spool_files(gateway):
            problems.append(f"spool files: {spooled[:3]}")
        problems += footprint_problems(footprint(gateway, list(store.pool_limits)), baseline, store.pool_limits)
        return problems

    settle(left_behind, nudge=lambda: nudge(gateway))
    assert qido_sops(gateway) == kept, "an acknowledged instance was lost"
    assert "unhandled error" not in gateway.log()  # a hang-up is not a bug (no 500, no traceback)
    # Still serving uploads.
    fresh = factory.ct_instance(seed=4242)
    assert stow(gateway.url, [fresh]).status_code == 200


def test_an_aborted_upload_keeps_what_another_upload_acknowledged(file_gateway: RunningGateway) -> None:
    """The claim logic and the index decide this, whatever the store: the file store only."""
    gateway = file_gateway
    instances = factory.ct_series(3, rows=160, cols=160, seed=77, patient_name="SHARED^ONE")
    upload = multipart_upload(instances)
    sops = [uids_of(d)[2] for d in instances]
    cut = upload.starts[2] + upload.sizes[2] // 2  # the first two parts arrive whole
    with socket.create_connection(("127.0.0.1", http_port(gateway)), timeout=30) as sock:
        sock.sendall(stow_head(upload, chunked=False) + upload.body[:cut])
        deadline = time.monotonic() + 30
        while qido_sops(gateway, f"/studies/{upload.study}/instances") != set(sops[:2]):
            assert time.monotonic() < deadline, "the complete parts were never stored"
            time.sleep(0.05)
        # Another client uploads the first instance, the same bytes, and is told it is stored.
        other = stow(gateway.url, instances[:1])
        assert other.status_code == 200, other.text
        assert referenced_sops(other) == sops[:1]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    settle(lambda: [] if qido_sops(gateway) == set(sops[:1]) else [f"indexed: {qido_sops(gateway)}"], lambda: None)
    response = httpx.get(
        f"{gateway.url}/studies/{upload.study}/series/{uids_of(instances[0])[1]}/instances/{sops[0]}",
        headers={"Accept": AS_STORED},
        timeout=30,
    )
    assert response.status_code == 200
    assert [body for _, body in split_multipart(response)] == instances[:1]


# --- WADO ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Download:
    kind: str
    path: str
    accept: str

    def request(self) -> bytes:
        return (
            f"GET /dicomweb{self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {self.accept}\r\n"
            "Accept-Encoding: identity\r\n\r\n"
        ).encode()


def _store_wado_data(gw: RunningGateway, tmp: Path) -> list[Download]:
    """A 24-slice 512x512 CT series (~12 MB) and a 48-frame 512x512 instance (~25 MB): both
    far larger than what loopback socket buffers hold, so an abort finds the response mid-way."""
    series = factory.ct_series(24, seed=31, patient_name="WADO^ABORT")
    multiframe = factory.write_large_multiframe(tmp / "multiframe.dcm", frames=48, seed=32).read_bytes()
    for batch in (series, [multiframe]):
        assert stow(gw.url, batch).status_code == 200
    study, series_uid, sop = uids_of(series[5])
    mf_study, mf_series, mf_sop = uids_of(multiframe)
    frames = ",".join(str(n) for n in range(1, 49))
    mf_path = f"/studies/{mf_study}/series/{mf_series}/instances/{mf_sop}"
    return [
        Download("series", f"/studies/{study}/series/{series_uid}", AS_STORED),
        Download("instance", mf_path, AS_STORED),
        Download("frames", f"{mf_path}/frames/{frames}", 'multipart/related; type="application/octet-stream"'),
        Download("rendered", f"/studies/{study}/series/{series_uid}/instances/{sop}/rendered", "image/png"),
    ]


def fetch_whole(gw: RunningGateway, download: Download) -> list[tuple[str | None, bytes]]:
    """The complete response: (content type, body) of each part, or of the single body."""
    response = httpx.get(
        gw.root + "/dicomweb" + download.path,
        headers={"Accept": download.accept, "Accept-Encoding": "identity"},
        timeout=60,
    )
    assert response.status_code == 200, f"{download.kind}: {response.status_code} {response.text[:200]}"
    if response.headers["content-type"].startswith("multipart/"):
        return [(headers.get("content-type"), body) for headers, body in split_multipart(response)]
    return [(response.headers["content-type"], response.content)]


def test_aborted_downloads_leave_nothing_behind(
    gateway: RunningGateway, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = StoreView(gateway, request)
    port = http_port(gateway)
    downloads = _store_wado_data(gateway, tmp_path)
    # Warm-up: every kind whole, several times at once; what they answer is the reference.
    warm_up = downloads * (WARM_UP_WORKERS // len(downloads))
    with ThreadPoolExecutor(WARM_UP_WORKERS) as pool:
        answers = list(pool.map(lambda d: fetch_whole(gateway, d), warm_up))
    reference = {d.kind: answer for d, answer in zip(warm_up, answers, strict=True)}
    assert all(answer == reference[d.kind] for d, answer in zip(warm_up, answers, strict=True))
    assert all(len(reference[k]) == n for k, n in (("series", 24), ("instance", 1), ("frames", 48)))
    objects = store.objects()
    baseline = footprint(gateway, list(store.pool_limits))
    rng = random.Random(11)
    # Frames are read whole before the response starts (one ranged read each: slow on S3), and
    # a rendered image is small: the client hangs up after its head, mid-body or not.
    mix = [downloads[0]] * 5 + [downloads[1]] * 3 + [downloads[2]] + [downloads[3]]

    def one(i: int) -> int:
        download = mix[i % len(mix)]
        read = rng.randrange(100, 1000) if download.kind == "rendered" else rng.randrange(1024, 64 * 1024)
        return abort_after(port, download.request(), rst=i % 2 == 0, read=read)

    with ThreadPoolExecutor(WORKERS) as pool:
        received = list(pool.map(one, range(100)))
    assert all(n > 0 for n in received), "every download had started when it was abandoned"

    def left_behind() -> list[str]:
        problems = footprint_problems(footprint(gateway, list(store.pool_limits)), baseline, store.pool_limits)
        if spooled := spool_files(gateway):
            problems.append(f"spool files: {spooled[:3]}")
        if temp := store.temp_files():
            problems.append(f"temporary files in the store: {temp[:3]}")
        return problems

    settle(left_behind, nudge=lambda: nudge(gateway))
    assert store.objects() == objects
    assert "unhandled error" not in gateway.log()
    for download in downloads:  # still answered, byte for byte as before
        assert fetch_whole(gateway, download) == reference[download.kind], download.kind


# --- PACS-backed downloads ----------------------------------------------------------------


def indexed_sops(gw: RunningGateway) -> set[tuple[str, str, str]]:
    """The gateway's own index (not QIDO, which would ask the PACS too), read-only."""
    with contextlib.closing(sqlite3.connect(f"file:{gw.data_dir / 'index.sqlite3'}?mode=ro", uri=True)) as db:
        return set(db.execute("SELECT study_uid, series_uid, sop_uid FROM instances").fetchall())


def test_aborted_pacs_downloads_leave_no_association_and_a_complete_cache(
    orthanc_pacs: OrthancPeer, pacs_data: PacsData, pacs_gateway_factory: GatewayFactory
) -> None:
    """20 downloads from Orthanc abandoned mid-way, each while its C-GET was under way: 10 of
    single instances of the series (10 retrieves at the instance level, at most MAX_ASSOCIATIONS
    at once), then 5 of the series and 5 of its study (not cached as such yet: one retrieve each,
    shared by the 5)."""
    study, series = pacs_data.series_uids
    originals = [uids_of(d)[2] for d in pacs_data.series]
    dicom_port = orthanc_pacs.dicom_port
    gw = pacs_gateway_factory(
        [node("orthanc", dicom_port, orthanc_pacs.aet, dimse_timeout=10, max_associations=MAX_ASSOCIATIONS)]
    )
    port = http_port(gw)

    def spool_drained() -> list[str]:
        return [f"spool: {f}" for f in spool_files(gw)]

    # Warm-up over the same paths and concurrency: catalog instances and a catalog study, whole.
    catalog = [uids_of(d) for d in pacs_data.catalog]
    warm = [Download("warm", f"/studies/{s}/series/{se}/instances/{i}", AS_STORED) for s, se, i in catalog[:5]]
    warm += [Download("warm", f"/studies/{catalog[-1][0]}", AS_STORED)] * 5
    with ThreadPoolExecutor(len(warm)) as pool:
        assert all(pool.map(lambda d: fetch_whole(gw, d), warm))
    settle(spool_drained, lambda: None)
    baseline = footprint(gw, [dicom_port])

    rounds = [[f"/studies/{study}/series/{series}/instances/{sop}" for sop in originals[:10]]]
    rounds += [[f"/studies/{study}/series/{series}"] * 5, [f"/studies/{study}"] * 5]
    for paths in rounds:

        def one(i: int, paths: list[str] = paths) -> int:
            request = Download("pacs", paths[i], AS_STORED).request()
            return abort_after(port, request, rst=i % 2 == 0, read=(i % 5 + 1) * 8192)

        with ThreadPoolExecutor(len(paths)) as pool:
            assert all(n > 0 for n in pool.map(one, range(len(paths)))), "every download had started"
        settle(spool_drained, lambda: None)  # the retrieve outlives its clients and is cached

    def left_behind() -> list[str]:
        problems = footprint_problems(footprint(gw, [dicom_port]), baseline, {dicom_port: MAX_ASSOCIATIONS})
        problems += spool_drained()
        if (cached := {sop for _, _, sop in indexed_sops(gw)} & set(originals)) != set(originals):
            problems.append(f"{len(cached)} of {len(originals)} instances cached")
        return problems

    settle(left_behind, nudge=lambda: nudge(gw))
    # The cache holds complete instances only: each indexed one is Orthanc's, byte for byte.
    for row_study, row_series, sop in sorted(indexed_sops(gw)):
        key = f"studies/{row_study}/series/{row_series}/instances/{sop}.dcm"
        cached = (gw.data_dir / "objects" / key).read_bytes()
        assert dataset_bytes(cached) == dataset_bytes(orthanc_file(orthanc_pacs, sop)), sop
    assert "unhandled error" not in gw.log()
