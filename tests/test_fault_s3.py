"""S3 outage and throttling (issue #7): the real gateway over a private SeaweedFS it can lose.

* killed: the S3 process ends (connections refused);
* frozen: the S3 process is SIGSTOPped (connections accepted, nothing ever answers);
* throttled: an S3-speaking proxy (tests/peers/s3_proxy.py) answers ``503 SlowDown`` as AWS does;
* slow: the proxy reads uploads slowly, or stalls a download mid-body.

What a user checks: STOW answers 503 with Retry-After within 10 s and acknowledges nothing it
did not store; WADO from the store answers 503 (metadata comes from the index and still works);
``/readyz`` says the store is unavailable; when S3 is back, without restarting the gateway,
everything works and every indexed instance reads back byte for byte.
"""

from __future__ import annotations

import concurrent.futures
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio
import httpx
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from gateway.adapters.s3 import S3BlobStore
from gateway.adapters.s3_retry import Failure, backoff, classify, worst_case_backoff
from tests.factory import ct_instance, new_uid, write_large_multiframe
from tests.fixtures_gateway import RunningGateway, start_gateway, stop_gateway
from tests.fixtures_s3 import S3Bucket
from tests.http_helpers import referenced_sops, split_multipart, stow, uids_of
from tests.peers.s3_proxy import S3FaultProxy, s3_fault_proxy
from tests.peers.seaweed import SeaweedServer, restartable_seaweed, s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.timeout(150)

OUTAGE_BOUND = 10.0  # the issue: STOW answers 503 with Retry-After "within 10 s"
CLIENT_TIMEOUT = 30.0  # a typical HTTP client timeout: a throttled STOW must answer well before
PREFIX = "gw"  # start_gateway stores under s3://bucket/gw
INSTANCE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
T = TypeVar("T")


# -- peers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A SeaweedFS for this module alone: stopping or freezing it disturbs no other test."""
    with restartable_seaweed(tmp_path_factory.mktemp("seaweed-faults")) as server:
        yield server


@pytest.fixture
def bucket(private_s3: SeaweedServer) -> Iterator[S3Bucket]:
    """A fresh bucket on the private S3; the server runs again afterwards, whatever the test did."""
    private_s3.thaw()
    if not private_s3.running:
        private_s3.start()
    name = f"faults-{uuid.uuid4().hex[:20]}"
    admin = s3_client(private_s3.peer)
    admin.create_bucket(Bucket=name)
    admin.close()
    peer = private_s3.peer
    yield S3Bucket(endpoint_url=peer.endpoint_url, access_key=peer.access_key, secret_key=peer.secret_key, bucket=name)
    private_s3.thaw()
    if not private_s3.running:
        private_s3.start()


@pytest.fixture
def admin(private_s3: SeaweedServer) -> Iterator[S3Client]:
    client = s3_client(private_s3.peer)
    yield client
    client.close()


@pytest.fixture
def proxy(private_s3: SeaweedServer) -> Iterator[S3FaultProxy]:
    with s3_fault_proxy(private_s3.peer.endpoint_url) as running:
        yield running


def gateway_on(tmp: Path, bucket: S3Bucket, *, via: S3FaultProxy | None = None, **s3: str) -> RunningGateway:
    """The real ``dicomweb-gateway serve`` on ``bucket`` (through ``via`` if given); ``s3``: [s3]
    settings as environment variables, e.g. read_timeout="2"."""
    target = bucket if via is None else S3Bucket(**{**bucket.__dict__, "endpoint_url": via.endpoint_url})
    env = {f"DICOMWEB_GATEWAY_S3__{name.upper()}": value for name, value in s3.items()}
    return start_gateway(tmp, store_kind="s3", s3=target, env=env)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[RunningGateway]]:
    """Gateways a test starts (stopped afterwards)."""
    started: list[RunningGateway] = []
    yield started
    for gw in started:
        stop_gateway(gw)


# -- helpers -----------------------------------------------------------------------------------


def timed(call: Callable[[], T]) -> tuple[T, float]:
    began = time.monotonic()
    result = call()
    return result, time.monotonic() - began


def study(n: int, seed: int) -> list[bytes]:
    """``n`` small CT instances of one new study."""
    study_uid, series_uid = new_uid("faults-study", seed, uuid.uuid4().hex), new_uid("faults-series", seed)
    return [
        ct_instance(seed=seed * 100 + i, study_uid=study_uid, series_uid=series_uid, instance_number=i + 1)
        for i in range(n)
    ]


def assert_unavailable(response: httpx.Response, seconds: float, bound: float = OUTAGE_BOUND) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert "S3" in response.json()["reason"]
    assert seconds < bound, f"answered after {seconds:.1f} s"


def wado(gw: RunningGateway, data: bytes, tail: str = "", accept: str = INSTANCE_ACCEPT) -> httpx.Response:
    st, se, sop = uids_of(data)
    url = f"{gw.url}/studies/{st}/series/{se}/instances/{sop}{tail}"
    return httpx.get(url, headers={"Accept": accept, "Accept-Encoding": "identity"}, timeout=60)


def indexed_sops(gw: RunningGateway, study_uid: str) -> set[str]:
    response = httpx.get(f"{gw.url}/studies/{study_uid}/instances", timeout=30)
    if response.status_code == 204:
        return set()
    assert response.status_code == 200, response.text
    return {row["00080018"]["Value"][0] for row in response.json()}


def object_keys(admin: S3Client, bucket: S3Bucket) -> set[str]:
    keys: set[str] = set()
    for page in admin.get_paginator("list_objects_v2").paginate(Bucket=bucket.bucket, Prefix=PREFIX + "/"):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


def assert_consistent(gw: RunningGateway, admin: S3Client, bucket: S3Bucket, instances: Sequence[bytes]) -> set[str]:
    """Nothing half-written: every instance the index lists has its object and metadata in S3 and
    reads back byte for byte. Returns the SOP Instance UIDs indexed."""
    keys = object_keys(admin, bucket)
    indexed: set[str] = set()
    for st in {uids_of(data)[0] for data in instances}:
        indexed |= indexed_sops(gw, st)
    for data in instances:
        st, se, sop = uids_of(data)
        if sop not in indexed:
            continue
        base = f"{PREFIX}/studies/{st}/series/{se}/instances/{sop}"
        assert {base + ".dcm", base + ".json"} <= keys, f"{sop} is indexed without its objects"
        response = wado(gw, data)
        assert response.status_code == 200, response.text
        assert split_multipart(response)[0][1] == data
    return indexed


def metric(gw: RunningGateway, name: str, **labels: str) -> float:
    text = httpx.get(f"{gw.root}/metrics", timeout=10).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def wait_ready(gw: RunningGateway, within: float = 20.0) -> float:
    """Seconds until /readyz says ready again (the same gateway process, never restarted)."""
    began = time.monotonic()
    while True:
        if httpx.get(f"{gw.root}/readyz", timeout=10).status_code == 200:
            return time.monotonic() - began
        assert time.monotonic() - began < within, "the gateway did not become ready again"
        time.sleep(0.2)


def read_into(received: list[bytes], url: str) -> None:
    """Stream a WADO response into ``received``; it must start as a 200."""
    with httpx.stream("GET", url, headers={"Accept": INSTANCE_ACCEPT}, timeout=60) as response:
        assert response.status_code == 200
        received.extend(response.iter_bytes())


def in_parallel(*calls: Callable[[], T]) -> list[tuple[T, float]]:
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(timed, call) for call in calls]
        return [f.result() for f in futures]


# -- S3 killed ---------------------------------------------------------------------------------


def test_s3_killed_then_back(
    tmp_path: Path, private_s3: SeaweedServer, bucket: S3Bucket, admin: S3Client, running: list[RunningGateway]
) -> None:
    gw = gateway_on(tmp_path, bucket)
    running.append(gw)
    before = study(2, seed=1)
    assert stow(gw.url, before).status_code == 200
    st, se, _ = uids_of(before[0])
    metadata_before = httpx.get(f"{gw.url}/studies/{st}/series/{se}/metadata", timeout=30).json()

    private_s3.stop()
    single, multi = study(1, seed=2), study(3, seed=3)
    response, seconds = timed(lambda: stow(gw.url, single))
    assert_unavailable(response, seconds)
    response, seconds = timed(lambda: stow(gw.url, multi))
    assert_unavailable(response, seconds)

    # Reads that need the object store answer 503 (never a 200 that breaks off) ...
    for tail, accept in (("", INSTANCE_ACCEPT), ("/frames/1", FRAME_ACCEPT)):
        response, seconds = timed(lambda tail=tail, accept=accept: wado(gw, before[0], tail, accept))
        assert_unavailable(response, seconds)
    series = f"{gw.url}/studies/{st}/series/{se}"
    response, seconds = timed(lambda: httpx.get(series, headers={"Accept": INSTANCE_ACCEPT}, timeout=60))
    assert_unavailable(response, seconds)
    # ... while metadata and QIDO are the index's, which is up: they need no object.
    assert httpx.get(f"{series}/metadata", timeout=30).json() == metadata_before
    assert indexed_sops(gw, st) == {uids_of(d)[2] for d in before}

    ready = httpx.get(f"{gw.root}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["checks"]["store"].startswith("unavailable: S3")
    assert ready.json()["checks"]["index"] == "ok"
    assert metric(gw, "dicomweb_gateway_store_errors_total", kind="unreachable") >= 1

    private_s3.start()  # same ports, same data
    wait_ready(gw)
    assert gw.process.poll() is None  # never restarted
    # Nothing of the refused uploads was indexed; what was acknowledged before is all there.
    assert assert_consistent(gw, admin, bucket, before + single + multi) == {uids_of(d)[2] for d in before}
    for instances in (single, multi):
        response = stow(gw.url, instances)
        assert response.status_code == 200, response.text
        assert sorted(referenced_sops(response)) == sorted(uids_of(d)[2] for d in instances)
    indexed = assert_consistent(gw, admin, bucket, before + single + multi)
    assert indexed == {uids_of(d)[2] for d in before + single + multi}


# -- S3 frozen (SIGSTOP) -----------------------------------------------------------------------


def test_s3_frozen_answers_within_bound_with_default_timeouts(
    tmp_path: Path, private_s3: SeaweedServer, bucket: S3Bucket, admin: S3Client, running: list[RunningGateway]
) -> None:
    gw = gateway_on(tmp_path, bucket)  # the default [s3] timeouts: these are what is promised
    running.append(gw)
    before = study(2, seed=11)
    assert stow(gw.url, before).status_code == 200
    single, multi = study(1, seed=12), study(3, seed=13)

    private_s3.freeze()
    # All at once, so each waits on the hung store itself (none is helped by another's failure).
    results = in_parallel(
        lambda: stow(gw.url, single),
        lambda: stow(gw.url, multi),
        lambda: wado(gw, before[0]),
        lambda: wado(gw, before[1], "/frames/1", FRAME_ACCEPT),
    )
    for response, seconds in results:
        assert_unavailable(response, seconds)
    # Later requests fail at once while the store is known to be down; readiness says why.
    response, seconds = timed(lambda: stow(gw.url, single))
    assert_unavailable(response, seconds)
    ready, seconds = timed(lambda: httpx.get(f"{gw.root}/readyz", timeout=10))
    assert ready.status_code == 503
    assert seconds < OUTAGE_BOUND
    assert ready.json()["checks"]["store"].startswith("unavailable: S3")
    assert metric(gw, "dicomweb_gateway_store_errors_total", kind="stalled") >= 1

    private_s3.thaw()
    wait_ready(gw)
    assert gw.process.poll() is None
    # The hung store may still carry out a PUT it had queued (an orphan object, swept by
    # reindex), but nothing unacknowledged is indexed and nothing indexed lacks its object.
    assert assert_consistent(gw, admin, bucket, before + single + multi) == {uids_of(d)[2] for d in before}
    for instances in (single, multi):
        assert stow(gw.url, instances).status_code == 200
    assert assert_consistent(gw, admin, bucket, before + single + multi) == {
        uids_of(d)[2] for d in before + single + multi
    }


# -- throttling (503 SlowDown through the proxy) -----------------------------------------------


def test_throttling_transient_is_retried_persistent_answers_503(
    tmp_path: Path, bucket: S3Bucket, admin: S3Client, proxy: S3FaultProxy, running: list[RunningGateway]
) -> None:
    attempts = 3  # the default max_attempts
    gw = gateway_on(tmp_path, bucket, via=proxy)
    running.append(gw)
    single, multi, later = study(1, seed=21), study(3, seed=22), study(3, seed=23)

    # Transient: two SlowDowns, fewer than the attempts a call has, wherever they fall.
    proxy.throttle(2)
    response = stow(gw.url, single)
    assert response.status_code == 200, response.text
    proxy.throttle(2)
    response = stow(gw.url, multi)
    assert response.status_code == 200, response.text
    proxy.throttle(2, methods=("GET",))
    assert split_multipart(wado(gw, multi[0]))[0][1] == multi[0]
    assert proxy.count(outcome="throttled") == 6
    assert metric(gw, "dicomweb_gateway_store_retries_total", kind="throttled") == 6

    # Persistent: 503 with Retry-After, after a bounded number of attempts.
    proxy.throttle(fraction=1.0)
    proxy.reset_counts()
    response, seconds = timed(lambda: stow(gw.url, later[:1]))
    assert_unavailable(response, seconds, bound=CLIENT_TIMEOUT)
    assert int(response.headers["retry-after"]) == 2  # throttled: come back soon, more slowly
    # One new instance is one PutObject: exactly max_attempts of them, then the answer.
    assert proxy.count() == proxy.count("PUT", "throttled") == attempts
    proxy.reset_counts()
    response, seconds = timed(lambda: stow(gw.url, later))
    assert_unavailable(response, seconds, bound=CLIENT_TIMEOUT)
    assert 1 <= proxy.count() <= len(later) * attempts
    proxy.reset_counts()
    response, seconds = timed(lambda: wado(gw, single[0]))
    assert_unavailable(response, seconds, bound=CLIENT_TIMEOUT)
    assert proxy.count("GET") == attempts
    assert metric(gw, "dicomweb_gateway_store_errors_total", kind="throttled") >= 3

    proxy.heal()
    assert stow(gw.url, later).status_code == 200
    everything = single + multi + later
    assert assert_consistent(gw, admin, bucket, everything) == {uids_of(d)[2] for d in everything}


def test_random_throttling_never_loses_or_half_writes(
    tmp_path: Path, bucket: S3Bucket, admin: S3Client, proxy: S3FaultProxy, running: list[RunningGateway]
) -> None:
    """Every request is 200, 202 (some instances failed: PS3.18 10.5.3) or 503 (never 500); what
    was acknowledged is stored; what a failure left is complete or absent; retrying the uploads
    that were not wholly stored stores everything exactly once."""
    gw = gateway_on(tmp_path, bucket, via=proxy)
    running.append(gw)
    uploads = [study(2, seed=40 + i) for i in range(5)]
    proxy.throttle(fraction=0.5, seed=7)
    acknowledged: set[str] = set()
    refused: list[list[bytes]] = []
    for instances in uploads:
        response = stow(gw.url, instances)
        assert response.status_code in (200, 202, 503), response.text
        if response.status_code == 503:
            assert response.headers["retry-after"]
        else:
            acknowledged |= set(referenced_sops(response))
        if response.status_code != 200:
            refused.append(instances)
    proxy.heal()
    everything = [data for instances in uploads for data in instances]
    assert acknowledged <= assert_consistent(gw, admin, bucket, everything)
    for instances in refused:
        assert stow(gw.url, instances).status_code == 200
    assert assert_consistent(gw, admin, bucket, everything) == {uids_of(d)[2] for d in everything}


# -- slow but alive ----------------------------------------------------------------------------


def test_slow_uploads_outlast_the_read_timeout(
    tmp_path: Path, bucket: S3Bucket, admin: S3Client, proxy: S3FaultProxy, running: list[RunningGateway]
) -> None:
    """read_timeout bounds silence, not a transfer: with the default 6 s, 16 MiB parts that take
    over 8 s each to go up (2 MB/s per connection, 16 Mbit/s) are stored."""
    gw = gateway_on(tmp_path, bucket, via=proxy, multipart_threshold=str(16 << 20))
    running.append(gw)
    data = write_large_multiframe(tmp_path / "large.dcm", frames=80, rows=512, cols=512).read_bytes()  # 40 MiB
    proxy.slow_uploads(2e6)  # bytes per second, per request
    response, seconds = timed(lambda: stow(gw.url, [data]))
    assert response.status_code == 200, response.text
    assert seconds > 8  # it really was slow: a 16 MiB part took longer than the read timeout
    proxy.heal()
    assert assert_consistent(gw, admin, bucket, [data]) == {uids_of(data)[2]}


def test_download_stalling_mid_body_ends_the_response(
    tmp_path: Path, bucket: S3Bucket, proxy: S3FaultProxy, running: list[RunningGateway]
) -> None:
    """A store that hangs after the response has started: the response is cut off (the client
    sees an incomplete body) after the read timeout, not left hanging; the gateway carries on."""
    gw = gateway_on(tmp_path, bucket, via=proxy, read_timeout="2")
    running.append(gw)
    data = write_large_multiframe(tmp_path / "large.dcm", frames=24, rows=512, cols=512).read_bytes()
    assert stow(gw.url, [data]).status_code == 200
    proxy.stall_downloads(after_bytes=3 << 20)  # the first chunks go out, then nothing
    st, se, sop = uids_of(data)
    url = f"{gw.url}/studies/{st}/series/{se}/instances/{sop}"
    received: list[bytes] = []
    began = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):  # the body ends before its announced end
        read_into(received, url)
    assert time.monotonic() - began < OUTAGE_BOUND
    assert 0 < sum(map(len, received)) < len(data)
    proxy.heal()
    wait_ready(gw)  # the stall made the store count as down for a moment
    assert split_multipart(wado(gw, data))[0][1] == data


# -- listings (reindex --repair) ---------------------------------------------------------------


def test_a_throttled_listing_page_is_retried_and_the_listing_resumes(
    bucket: S3Bucket, admin: S3Client, proxy: S3FaultProxy
) -> None:
    """``reindex --repair`` lists every object and unfinished upload page by page; a page refused
    once (SlowDown) is asked again where the listing stood, not the listing ended or failed."""
    names = [f"{PREFIX}/studies/1.2/series/3.4/instances/5.{n}.dcm" for n in range(5)]
    for name in names:
        admin.put_object(Bucket=bucket.bucket, Key=name, Body=b"x")
    uploads = {admin.create_multipart_upload(Bucket=bucket.bucket, Key=name)["UploadId"] for name in names[:3]}
    store = S3BlobStore(
        bucket.bucket,
        PREFIX,
        endpoint_url=proxy.endpoint_url,
        access_key=bucket.access_key,
        secret_key=bucket.secret_key,
    )

    async def listed() -> tuple[list[str], set[str]]:
        keys: list[str] = []
        async for item in store.list_objects(page_size=2):
            keys.append(item.key)
            if len(keys) == 2:
                proxy.throttle(1)  # the request for the second page
        handles: set[str] = set()
        async for write in store.list_unfinished(time.time() + 3600, page_size=2):
            handles.add(write.handle)
            if len(handles) == 2:
                proxy.throttle(1)
        await store.aclose()
        return keys, handles

    keys, handles = anyio.run(listed)
    assert keys == sorted(name.removeprefix(PREFIX + "/") for name in names)
    assert handles == uploads
    assert proxy.count("GET", "throttled") == 2


# -- the retry table (no peers) ----------------------------------------------------------------


def _answer(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": ""}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (_answer("SlowDown", 503), Failure.THROTTLED),
        (_answer("503", 503), Failure.THROTTLED),  # HEAD: no body, the status is the code
        (_answer("TooManyRequests", 429), Failure.THROTTLED),
        (_answer("InternalError", 500), Failure.SERVER),
        (_answer("502", 502), Failure.SERVER),
        (EndpointConnectionError(endpoint_url="http://s3"), Failure.UNREACHABLE),
        (ConnectionClosedError(endpoint_url="http://s3"), Failure.UNREACHABLE),
        (ConnectTimeoutError(endpoint_url="http://s3"), Failure.STALLED),
        (ReadTimeoutError(endpoint_url="http://s3"), Failure.STALLED),
        (_answer("NoSuchKey", 404), Failure.FINAL),
        (_answer("AccessDenied", 403), Failure.FINAL),
        (_answer("PreconditionFailed", 412), Failure.FINAL),
        (FileNotFoundError("spool file"), Failure.FINAL),
    ],
)
def test_failures_are_classified(exc: BaseException, failure: Failure) -> None:
    assert classify(exc) is failure
    # Only a timeout is not retried among the store's faults; answers like 404 never are.
    assert failure.retryable == (failure in (Failure.THROTTLED, Failure.SERVER, Failure.UNREACHABLE))


def test_backoff_is_jittered_and_bounded() -> None:
    rng = random.Random(1)
    waits = [backoff(Failure.THROTTLED, attempt, rng) for attempt in (1, 2) for _ in range(200)]
    assert all(0 <= w <= 2.0 for w in waits)
    assert len(set(waits)) == len(waits)  # full jitter: clients do not retry in step
    assert max(backoff(Failure.UNREACHABLE, 1, rng) for _ in range(200)) <= 0.05
    assert worst_case_backoff(3) == 3.0  # 1 s + 2 s: the default's longest total wait
