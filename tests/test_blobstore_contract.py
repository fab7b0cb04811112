"""One contract for every BlobStore: the filesystem store and S3 (a real SeaweedFS).

The tests at the end are specific to one implementation: temp-file hygiene and the two write
paths of the file store, and multipart uploads (never left unfinished) and error translation
of the S3 store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest
from botocore.exceptions import BotoCoreError

from gateway.adapters.filestore import FileBlobStore
from gateway.adapters.s3 import S3BlobStore
from gateway.errors import AlreadyExists, MetadataNotWritten, NotFound, StorageError
from gateway.ports import BlobStore, ObjectInfo, UnfinishedWrite
from tests.fixtures_s3 import S3Bucket
from tests.peers.ports import free_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.anyio

MiB = 1 << 20
# Low multipart threshold so a test-sized file takes the multipart path (S3's minimum part is 5 MiB).
THRESHOLD = 6 * MiB
PART_SIZE = 5 * MiB
DCM = "application/dicom"
KEY = "studies/1.2.3/series/4.5/instances/6.7.dcm"
META_KEY = "studies/1.2.3/series/4.5/instances/6.7.json"

BAD_KEYS = [
    "",
    "/studies/1.2/x.dcm",
    "studies/../../etc/passwd",
    "studies/1.2/..",
    "studies/./x.dcm",
    "studies//x.dcm",
    "studies/1.2/",
    "studies\\1.2\\x.dcm",
    ".hidden",
    "studies/.x.dcm.0123.tmp",
    "studies/a\x00b",
]


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ per seed and per position (no repeating short pattern)."""
    block = hashlib.sha256(f"{seed}".encode()).digest()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(block + counter.to_bytes(8, "big")).digest() * 64
        counter += 1
    return bytes(out[:size])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_source(directory: Path, data: bytes, name: str = "source.bin") -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def make_s3_store(bucket: S3Bucket, **kwargs: Any) -> S3BlobStore:
    # read_timeout: the shared SeaweedFS serialises conditional writes of one key, and on a busy
    # test machine the last of 16 racers waits longer than the production default (6 s).
    options: dict[str, Any] = {"multipart_threshold": THRESHOLD, "part_size": PART_SIZE, "read_timeout": 30.0, **kwargs}
    return S3BlobStore(
        bucket.bucket,
        "gw",  # a prefix, so that stripping it is part of the contract under test
        endpoint_url=bucket.endpoint_url,
        region=bucket.region,
        access_key=bucket.access_key,
        secret_key=bucket.secret_key,
        **options,
    )


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "file":
        root = tmp_path / "store"
        root.mkdir()
        instance: BlobStore = FileBlobStore(root)
    else:
        instance = make_s3_store(request.getfixturevalue("s3_bucket"))
    try:
        yield instance
    finally:
        await instance.aclose()


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    path = tmp_path / "sources"
    path.mkdir()
    return path


async def put(store: BlobStore, key: str, data: bytes, directory: Path, name: str = "source.bin") -> None:
    await store.put_file(key, write_source(directory, data, name), sha256=sha256(data), content_type=DCM)


async def collect(iterator: AsyncIterator[str]) -> list[str]:
    return sorted([item async for item in iterator])


# ---------------------------------------------------------------------------------------------
# The contract
# ---------------------------------------------------------------------------------------------


async def test_put_file_is_create_only(store: BlobStore, source_dir: Path) -> None:
    original, other = payload(300_000, 1), payload(300_000, 2)
    await put(store, KEY, original, source_dir, "a")
    with pytest.raises(AlreadyExists):
        await put(store, KEY, other, source_dir, "b")
    assert await store.read_all(KEY) == original
    info = await store.stat(KEY)
    assert info is not None
    assert info.sha256 == sha256(original)


async def test_put_instance_writes_object_and_metadata_create_only(store: BlobStore, source_dir: Path) -> None:
    data, other = payload(300_000, 5), payload(300_000, 6)
    await store.put_instance(
        KEY, write_source(source_dir, data, "a"), sha256=sha256(data), metadata_key=META_KEY, metadata=b'{"a": 1}'
    )
    with pytest.raises(AlreadyExists):  # nothing of the second call is written
        await store.put_instance(
            KEY, write_source(source_dir, other, "b"), sha256=sha256(other), metadata_key=META_KEY, metadata=b"{}"
        )
    assert await store.read_all(KEY) == data
    assert await store.read_all(META_KEY) == b'{"a": 1}'


async def test_put_file_leaves_the_source_usable(store: BlobStore, source_dir: Path) -> None:
    data = payload(100_000, 3)
    source = write_source(source_dir, data)
    await store.put_file(KEY, source, sha256=sha256(data), content_type=DCM)
    assert source.read_bytes() == data
    source.unlink()  # what the caller does next: the object must not depend on it
    assert await store.read_all(KEY) == data


async def test_concurrent_put_file_has_one_winner(store: BlobStore, source_dir: Path) -> None:
    datas = [payload(200_000, seed) for seed in range(16)]
    sources = [write_source(source_dir, data, f"s{i}") for i, data in enumerate(datas)]
    winners: list[int] = []
    losers: list[int] = []

    async def attempt(i: int) -> None:
        try:
            await store.put_file(KEY, sources[i], sha256=sha256(datas[i]), content_type=DCM)
        except AlreadyExists:
            losers.append(i)
        else:
            winners.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(16):
            tg.start_soon(attempt, i)

    assert len(winners) == 1
    assert len(losers) == 15
    stored = await store.read_all(KEY)
    assert stored == datas[winners[0]]
    info = await store.stat(KEY)
    assert info is not None
    assert (info.size, info.sha256) == (len(stored), sha256(stored))


async def test_concurrent_large_put_file_has_one_winner(store: BlobStore, source_dir: Path) -> None:
    """Above the S3 multipart threshold: the conditional complete must keep one winner too."""
    datas = [payload(THRESHOLD + MiB, seed) for seed in range(4)]
    sources = [write_source(source_dir, data, f"s{i}") for i, data in enumerate(datas)]
    results: dict[int, str] = {}

    async def attempt(i: int) -> None:
        try:
            await store.put_file(KEY, sources[i], sha256=sha256(datas[i]), content_type=DCM)
        except AlreadyExists:
            results[i] = "exists"
        else:
            results[i] = "created"

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(attempt, i)

    winners = [i for i, outcome in results.items() if outcome == "created"]
    assert len(winners) == 1
    assert sorted(results.values()).count("exists") == 3
    assert await store.read_all(KEY) == datas[winners[0]]


async def test_stat(store: BlobStore, source_dir: Path) -> None:
    data = payload(123_457, 4)
    await put(store, KEY, data, source_dir)
    info = await store.stat(KEY)
    assert info is not None
    assert info.key == KEY
    assert info.size == len(data)
    assert info.sha256 == sha256(data)
    assert await store.stat("studies/1.2.3/series/4.5/instances/9.dcm") is None
    assert await store.stat("studies/1.2.3") is None  # a "directory" is not an object


async def test_stream_returns_the_exact_bytes(store: BlobStore, source_dir: Path) -> None:
    data = payload(5 * MiB + 12_345, 5)
    await put(store, KEY, data, source_dir)
    chunks = [chunk async for chunk in store.stream(KEY, chunk_size=MiB)]
    assert b"".join(chunks) == data
    assert all(0 < len(chunk) <= MiB for chunk in chunks)


async def test_stream_can_stop_early(store: BlobStore, source_dir: Path) -> None:
    await put(store, KEY, payload(3 * MiB, 6), source_dir)
    stream = store.stream(KEY, chunk_size=64 * 1024)
    first = await anext(stream)
    assert len(first) == 64 * 1024
    await cast(AsyncGenerator[bytes, None], stream).aclose()
    assert len(await store.read_all(KEY)) == 3 * MiB  # the store still works afterwards


async def test_stream_of_a_missing_key_raises_not_found_before_any_chunk(store: BlobStore) -> None:
    stream = store.stream(KEY)
    with pytest.raises(NotFound):
        await anext(stream)


async def test_read_range(store: BlobStore, source_dir: Path) -> None:
    data = payload(1_000_003, 7)
    size = len(data)
    await put(store, KEY, data, source_dir)
    for offset, length in [(0, 1), (0, size), (17, 4096), (size - 1, 1), (size - 100, 100), (500_000, 0)]:
        assert await store.read_range(KEY, offset, length) == data[offset : offset + length], (offset, length)


async def test_read_range_beyond_the_end_or_missing(store: BlobStore, source_dir: Path) -> None:
    data = payload(10_000, 8)
    await put(store, KEY, data, source_dir)
    with pytest.raises(StorageError):
        await store.read_range(KEY, len(data) - 10, 11)  # one byte short
    with pytest.raises(StorageError):
        await store.read_range(KEY, len(data), 1)  # starts past the end
    with pytest.raises(NotFound):
        await store.read_range("studies/9/x.dcm", 0, 1)
    with pytest.raises(ValueError, match="invalid range"):
        await store.read_range(KEY, -1, 1)


async def test_read_all(store: BlobStore, source_dir: Path) -> None:
    data = payload(4321, 9)
    await put(store, KEY, data, source_dir)
    assert await store.read_all(KEY) == data
    with pytest.raises(NotFound):
        await store.read_all("studies/9/x.dcm")


async def test_put_bytes_overwrites(store: BlobStore) -> None:
    key = KEY.removesuffix(".dcm") + ".json"
    await store.put_bytes(key, b'{"v": 1}', content_type="application/json")
    assert await store.read_all(key) == b'{"v": 1}'
    await store.put_bytes(key, b'{"v": 2, "longer": true}', content_type="application/json")
    assert await store.read_all(key) == b'{"v": 2, "longer": true}'
    info = await store.stat(key)
    assert info is not None
    assert info.size == len(b'{"v": 2, "longer": true}')


async def test_delete_is_idempotent(store: BlobStore, source_dir: Path) -> None:
    await put(store, KEY, b"first", source_dir, "a")
    await store.delete(KEY)
    assert await store.stat(KEY) is None
    await store.delete(KEY)  # absent now
    await store.delete("studies/never/stored.dcm")
    await put(store, KEY, b"second", source_dir, "b")  # the key can be created again
    assert await store.read_all(KEY) == b"second"


async def test_list_keys(store: BlobStore) -> None:
    keys = [
        "studies/1.2/series/3/instances/4.dcm",
        "studies/1.2/series/3/instances/4.json",
        "studies/1.2/series/5/instances/6.dcm",
        "studies/1.3/series/7/instances/8.dcm",
        "other/x.json",
    ]
    for key in keys:
        await store.put_bytes(key, key.encode(), content_type="application/octet-stream")
    assert await collect(store.list_keys()) == sorted(keys)
    assert await collect(store.list_keys("studies/")) == sorted(keys[:4])
    assert await collect(store.list_keys("studies/1.2/")) == sorted(keys[:3])
    assert await collect(store.list_keys("studies/1.2/series/3/instances/4.")) == sorted(keys[:2])
    assert await collect(store.list_keys("studies/1.")) == sorted(keys[:4])  # a plain string prefix
    assert await collect(store.list_keys("studies/9/")) == []
    assert await collect(store.list_keys("nothing")) == []


async def test_download(store: BlobStore, source_dir: Path, tmp_path: Path) -> None:
    data = payload(2 * MiB + 3, 10)
    await put(store, KEY, data, source_dir)
    target = tmp_path / "downloaded.dcm"
    await store.download(KEY, target)
    assert target.read_bytes() == data
    missing = tmp_path / "missing.dcm"
    with pytest.raises(NotFound):
        await store.download("studies/9/x.dcm", missing)
    assert not missing.exists()


async def test_bad_keys_are_rejected(store: BlobStore, source_dir: Path) -> None:
    source = write_source(source_dir, b"x")
    operations: dict[str, Callable[[str], Awaitable[object]]] = {
        "put_file": lambda key: store.put_file(key, source, sha256=sha256(b"x"), content_type=DCM),
        "put_bytes": lambda key: store.put_bytes(key, b"x", content_type=DCM),
        "stat": store.stat,
        "read_all": store.read_all,
        "read_range": lambda key: store.read_range(key, 0, 1),
        "download": lambda key: store.download(key, source_dir / "out"),
        "delete": store.delete,
    }
    accepted: list[str] = []
    for key in BAD_KEYS:
        for name, operation in operations.items():
            try:
                await operation(key)
            except ValueError:
                continue
            accepted.append(f"{name}({key!r})")
    assert accepted == []
    assert not (source_dir / "out").exists()


@pytest.mark.parametrize("prefix", ["/", "../", "studies/../", "a//", "studies\\"])
async def test_bad_list_prefixes_are_rejected(store: BlobStore, prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        await collect(store.list_keys(prefix))


async def test_ping(store: BlobStore) -> None:
    await store.ping()


# ---------------------------------------------------------------------------------------------
# The file store
# ---------------------------------------------------------------------------------------------


def hidden_files(root: Path) -> list[Path]:
    return list(root.rglob(".*"))


@pytest.fixture
def file_store(tmp_path: Path) -> FileBlobStore:
    root = tmp_path / "store"
    root.mkdir()
    return FileBlobStore(root)


@pytest.fixture
def copy_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the copy path, as for a source on another filesystem."""
    monkeypatch.setattr(FileBlobStore, "_link_source", lambda self, key, source, final: False)


async def test_file_store_put_instance_keeps_the_object_when_its_metadata_fails(
    file_store: FileBlobStore, source_dir: Path
) -> None:
    # The writer must learn that the object exists (it undoes it): MetadataNotWritten says so.
    (file_store.root / META_KEY).mkdir(parents=True)  # the metadata cannot be renamed into place
    data = payload(10_000, 13)
    with pytest.raises(MetadataNotWritten):
        await file_store.put_instance(
            KEY, write_source(source_dir, data), sha256=sha256(data), metadata_key=META_KEY, metadata=b"{}"
        )
    assert (file_store.root / KEY).read_bytes() == data
    assert hidden_files(file_store.root) == []


@pytest.mark.usefixtures("copy_only")
async def test_file_store_copy_path(file_store: FileBlobStore, source_dir: Path) -> None:
    data = payload(3 * MiB + 1, 11)
    source = write_source(source_dir, data)
    await file_store.put_file(KEY, source, sha256=sha256(data), content_type=DCM)
    assert os.stat(source).st_ino != os.stat(file_store.root / KEY).st_ino
    assert source.read_bytes() == data
    with pytest.raises(AlreadyExists):
        await put(file_store, KEY, b"other", source_dir, "b")
    assert (file_store.root / KEY).read_bytes() == data
    assert hidden_files(file_store.root) == []


async def test_file_store_link_path_publishes_the_source_itself(file_store: FileBlobStore, source_dir: Path) -> None:
    data = payload(10_000, 12)
    source = write_source(source_dir, data)
    await file_store.put_file(KEY, source, sha256=sha256(data), content_type=DCM)
    assert os.stat(source).st_ino == os.stat(file_store.root / KEY).st_ino  # no copy was made


@pytest.mark.usefixtures("copy_only")
async def test_file_store_leaves_no_temp_files_after_failures(
    file_store: FileBlobStore, source_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = file_store.root
    with pytest.raises(StorageError):  # the source does not exist
        await file_store.put_file(KEY, source_dir / "missing", sha256="0" * 64, content_type=DCM)
    assert hidden_files(root) == []

    import gateway.adapters.filestore as filestore

    real_copy = filestore._copy_fd

    def copy_then_fail(src: int, dst: int) -> None:
        real_copy(src, dst)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(filestore, "_copy_fd", copy_then_fail)
    with pytest.raises(StorageError, match="No space left"):
        await put(file_store, KEY, payload(MiB, 13), source_dir)
    assert hidden_files(root) == []
    assert not (root / KEY).exists()
    monkeypatch.setattr(filestore, "_copy_fd", real_copy)

    def failing_replace(src: Any, dst: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StorageError, match="Input/output error"):
        await file_store.put_bytes("studies/1/x.json", b"{}", content_type="application/json")
    monkeypatch.undo()
    assert hidden_files(root) == []
    assert not (root / "studies/1/x.json").exists()

    # A losing create-only write removes its temp file too.
    await put(file_store, KEY, b"winner", source_dir, "a")
    with pytest.raises(AlreadyExists):
        await put(file_store, KEY, b"loser", source_dir, "b")
    assert hidden_files(root) == []


async def test_file_store_list_keys_skips_temp_files(file_store: FileBlobStore) -> None:
    await file_store.put_bytes("studies/1/x.json", b"{}", content_type="application/json")
    (file_store.root / "studies/1/.x.json.abc.tmp").write_bytes(b"partial")
    assert await collect(file_store.list_keys()) == ["studies/1/x.json"]


async def test_file_store_ping_fails_without_a_root(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        await FileBlobStore(tmp_path / "absent").ping()


# ---------------------------------------------------------------------------------------------
# The S3 store
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def s3_store(s3_bucket: S3Bucket) -> AsyncIterator[S3BlobStore]:
    store = make_s3_store(s3_bucket)
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
def unfinished_uploads(s3_admin: S3Client, s3_bucket: S3Bucket) -> Callable[[], list[str]]:
    """Keys of the multipart uploads started and neither completed nor aborted in the bucket."""

    def keys() -> list[str]:
        uploads = s3_admin.list_multipart_uploads(Bucket=s3_bucket.bucket).get("Uploads", [])
        return [upload.get("Key", "") for upload in uploads]

    return keys


@pytest.mark.s3
async def test_s3_multipart_round_trip(
    s3_store: S3BlobStore,
    s3_admin: S3Client,
    s3_bucket: S3Bucket,
    unfinished_uploads: Callable[[], list[str]],
    source_dir: Path,
) -> None:
    data = payload(2 * PART_SIZE + 3 * MiB + 7, 20)  # three parts: 5 + 5 + 3 MiB
    await put(s3_store, KEY, data, source_dir)
    info = await s3_store.stat(KEY)
    assert info is not None
    assert (info.size, info.sha256) == (len(data), sha256(data))
    assert await s3_store.read_all(KEY) == data
    boundary = PART_SIZE - 10
    assert await s3_store.read_range(KEY, boundary, 20) == data[boundary : boundary + 20]
    assert unfinished_uploads() == []

    head = s3_admin.head_object(Bucket=s3_bucket.bucket, Key="gw/" + KEY)
    assert head["ContentType"] == DCM
    assert head["Metadata"]["sha256"] == sha256(data)


@pytest.mark.s3
async def test_s3_multipart_already_exists_aborts_the_upload(
    s3_store: S3BlobStore,
    unfinished_uploads: Callable[[], list[str]],
    source_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = payload(THRESHOLD + MiB, 21)
    await put(s3_store, KEY, original, source_dir, "a")
    # The early stat answers most duplicates; the conditional complete is checked here.
    with pytest.raises(AlreadyExists):
        await put(s3_store, KEY, payload(THRESHOLD + MiB, 22), source_dir, "b")

    async def absent(key: str) -> None:
        return None

    monkeypatch.setattr(s3_store, "stat", absent)
    with pytest.raises(AlreadyExists) as caught:
        await put(s3_store, KEY, payload(THRESHOLD + 2 * MiB, 23), source_dir, "c")
    assert "CompleteMultipartUpload" in caught.value.reason
    monkeypatch.undo()
    assert unfinished_uploads() == []
    assert await s3_store.read_all(KEY) == original


@pytest.mark.s3
async def test_s3_multipart_lost_race_is_detected_after_complete(
    s3_store: S3BlobStore,
    unfinished_uploads: Callable[[], list[str]],
    source_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writer in another process completing the same key after us (a server whose conditional
    complete is not atomic) shows up as a foreign digest: that is AlreadyExists, not success."""
    answers: list[ObjectInfo | None] = [None, ObjectInfo(KEY, 1, "f" * 64)]  # before upload, after complete

    async def stat(key: str) -> ObjectInfo | None:
        return answers.pop(0)

    monkeypatch.setattr(s3_store, "stat", stat)
    with pytest.raises(AlreadyExists, match="concurrent upload"):
        await put(s3_store, KEY, payload(THRESHOLD + MiB, 26), source_dir)
    assert answers == []
    assert unfinished_uploads() == []


@pytest.mark.s3
async def test_s3_multipart_failure_aborts_the_upload(
    s3_store: S3BlobStore,
    unfinished_uploads: Callable[[], list[str]],
    source_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_upload_part: Callable[..., str] = s3_store._upload_part

    def fail_on_part_two(name: str, upload_id: str, number: int, *args: Any) -> str:
        if number == 2:
            raise OSError(5, "Input/output error")
        return real_upload_part(name, upload_id, number, *args)

    monkeypatch.setattr(s3_store, "_upload_part", fail_on_part_two)
    with pytest.raises(StorageError, match="Input/output error"):  # not an ExceptionGroup
        await put(s3_store, KEY, payload(3 * PART_SIZE, 24), source_dir)
    assert unfinished_uploads() == []
    assert await s3_store.stat(KEY) is None


@pytest.mark.s3
async def test_s3_multipart_cancellation_aborts_the_upload(
    s3_store: S3BlobStore,
    unfinished_uploads: Callable[[], list[str]],
    source_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = anyio.Event()

    async def hang(*args: Any) -> list[Any]:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    monkeypatch.setattr(s3_store, "_upload_parts", hang)
    source = write_source(source_dir, payload(THRESHOLD + MiB, 25))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: s3_store.put_file(KEY, source, sha256="0" * 64, content_type=DCM))
        await started.wait()
        assert len(unfinished_uploads()) == 1
        tg.cancel_scope.cancel()
    assert unfinished_uploads() == []


@pytest.mark.s3
async def test_s3_ensure_bucket_and_ping(s3_bucket: S3Bucket, s3_admin: S3Client) -> None:
    store = make_s3_store(dataclasses.replace(s3_bucket, bucket=s3_bucket.bucket + "-new"))
    try:
        with pytest.raises(StorageError, match="does not exist"):
            await store.ping()
        await store.ensure_bucket()
        await store.ensure_bucket()  # idempotent
        await store.ping()
    finally:
        await store.aclose()
        s3_admin.delete_bucket(Bucket=s3_bucket.bucket + "-new")


@pytest.mark.s3
async def test_s3_wrong_credentials_are_a_storage_error(s3_bucket: S3Bucket) -> None:
    store = make_s3_store(dataclasses.replace(s3_bucket, secret_key="wrong"))
    try:
        with pytest.raises(StorageError) as caught:
            await store.stat(KEY)
        with pytest.raises(StorageError):
            await store.ping()
    finally:
        await store.aclose()
    assert caught.value.__cause__ is not None


async def test_s3_unreachable_endpoint_is_a_storage_error() -> None:
    store = S3BlobStore(
        "bucket",
        endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        region="us-east-1",
        access_key="a",
        secret_key="b",
    )
    try:
        with pytest.raises(StorageError) as caught:
            await store.read_all(KEY)
        assert isinstance(caught.value.__cause__, BotoCoreError)
        with pytest.raises(StorageError):
            await store.ping()
    finally:
        await store.aclose()


# ---------------------------------------------------------------------------------------------
# Crash recovery (reindex --repair): listings with ages, unfinished writes
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def leave_unfinished(request: pytest.FixtureRequest, store: BlobStore) -> Callable[[str], None]:
    """Leave what a process killed in the middle of ``put_file(key, ...)`` leaves in ``store``:
    a temp file beside the key (file store), an upload with one part sent (S3)."""
    if isinstance(store, FileBlobStore):

        def temp_file(key: str) -> None:
            from gateway.adapters import filestore

            final = store.root / key
            final.parent.mkdir(parents=True, exist_ok=True)
            _, fd = filestore._new_temp(final.parent, final.name)
            os.write(fd, b"the first bytes of an object")
            os.close(fd)

        return temp_file
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    admin: S3Client = request.getfixturevalue("s3_admin")

    def multipart(key: str) -> None:
        name = "gw/" + key  # make_s3_store's prefix
        upload = admin.create_multipart_upload(Bucket=bucket.bucket, Key=name)
        admin.upload_part(Bucket=bucket.bucket, Key=name, UploadId=upload["UploadId"], PartNumber=1, Body=b"x" * 1000)

    return multipart


async def test_list_objects_gives_sizes_and_ages(store: BlobStore) -> None:
    before = time.time()
    sizes = {
        "studies/1.2/series/3/instances/4.dcm": 1000,
        "studies/1.2/series/3/instances/4.json": 10,
        "studies/1.3/series/5/instances/6.dcm": 0,
        "other/x.json": 3,
    }
    for key, size in sizes.items():
        await store.put_bytes(key, payload(size, size), content_type="application/octet-stream")
    after = time.time()
    listed = {item.key: item async for item in store.list_objects("studies/")}
    assert {key: item.size for key, item in listed.items()} == {k: v for k, v in sizes.items() if k.startswith("s")}
    for item in listed.values():
        # S3 reports whole seconds; clocks of the store and this host may differ a little.
        assert before - 2 <= item.modified <= after + 2
    assert [item.key async for item in store.list_objects("studies/1.3/")] == ["studies/1.3/series/5/instances/6.dcm"]
    assert [item.key async for item in store.list_objects("nothing/")] == []


async def test_unfinished_writes_are_listed_by_age_and_discarded(
    store: BlobStore, leave_unfinished: Callable[[str], None], source_dir: Path
) -> None:
    await store.put_bytes("studies/1/series/2/instances/3.json", b"{}", content_type="application/json")
    await anyio.to_thread.run_sync(leave_unfinished, KEY)
    assert [w async for w in store.list_unfinished(time.time() - 600)] == []  # too young: maybe in flight
    (write,) = [w async for w in store.list_unfinished(time.time() + 5)]
    assert write.key == KEY
    assert time.time() - 600 < write.started < time.time() + 5
    # An unfinished write is no object, and its key stays free.
    assert await collect(store.list_keys()) == ["studies/1/series/2/instances/3.json"]
    assert await store.stat(KEY) is None
    await store.discard_unfinished(write)
    assert [w async for w in store.list_unfinished(time.time() + 5)] == []
    await store.discard_unfinished(write)  # gone already: not an error
    await put(store, KEY, b"complete", source_dir)
    assert await store.read_all(KEY) == b"complete"


async def test_completed_writes_are_not_unfinished(store: BlobStore, source_dir: Path) -> None:
    await put(store, KEY, payload(THRESHOLD + MiB, 30), source_dir)  # multipart on S3
    await store.put_bytes("studies/1/x.json", b"{}", content_type="application/json")
    assert [w async for w in store.list_unfinished(time.time() + 5)] == []


async def test_file_store_discards_only_its_temp_files(file_store: FileBlobStore) -> None:
    await file_store.put_bytes("studies/1/x.json", b"{}", content_type="application/json")
    for handle in ("studies/1/x.json", "../outside/.x.0123456789abcdef0123456789abcdef.tmp", "/etc/passwd"):
        with pytest.raises(ValueError, match=r"temp file|invalid object key"):
            await file_store.discard_unfinished(UnfinishedWrite("studies/1/x.json", 0.0, handle))
    assert (file_store.root / "studies/1/x.json").exists()


@pytest.mark.s3
async def test_s3_lists_only_uploads_under_its_prefix(
    s3_store: S3BlobStore, s3_admin: S3Client, s3_bucket: S3Bucket, unfinished_uploads: Callable[[], list[str]]
) -> None:
    upload = s3_admin.create_multipart_upload(Bucket=s3_bucket.bucket, Key="elsewhere/x.dcm")
    assert [w async for w in s3_store.list_unfinished(time.time() + 5)] == []
    assert unfinished_uploads() == ["elsewhere/x.dcm"]
    s3_admin.abort_multipart_upload(Bucket=s3_bucket.bucket, Key="elsewhere/x.dcm", UploadId=upload["UploadId"])
