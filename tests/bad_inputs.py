"""A corpus of hostile and malformed requests for the gateway (no pytest here).

Every case is something a correct gateway must refuse with a 4xx, storing nothing:
malformed multipart bodies, malformed DICOM, hostile UIDs (``../`` and friends) in files and
in URLs, oversized fields, and bombs. Deterministic: random bytes come from seeded generators.
"""

from __future__ import annotations

import random
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests import factory

DICOM_TYPE = 'multipart/related; type="application/dicom"; boundary=BOUNDARY'
BOUNDARY = b"BOUNDARY"
END = b"\r\n--BOUNDARY--\r\n"


@dataclass(frozen=True)
class Case:
    name: str
    method: str = "POST"
    path: str = "/studies"  # below the DICOMweb base path
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": DICOM_TYPE})
    # False for requests that are odd but harmless (e.g. a 20000-character name to match): they
    # may succeed; like every case they must not fail with a 5xx or store anything.
    must_refuse: bool = True


def wrap(*parts: bytes, part_type: str = "application/dicom") -> bytes:
    out = b"".join(b"--BOUNDARY\r\nContent-Type: " + part_type.encode() + b"\r\n\r\n" + p + b"\r\n" for p in parts)
    return out + b"--BOUNDARY--\r\n"


def small_instance(seed: int = 0, **identity: object) -> bytes:
    return factory.to_part10_bytes(factory.ct_dataset(seed=seed, rows=8, cols=8, **identity))


HOSTILE_UIDS = [
    "..",
    "../../etc/passwd",
    "1.2.3/../../x",
    "1.2.3\\..\\x",
    "%2e%2e",
    "1.2.3%2F..",
    "",
    " ",
    "1." + "2" * 70,
    "1.02.3",
    "1..2",
    ".1.2",
    "1.2.",
    "1.2.3 4",
    "1.2\x003",
    "１.２.３",
    "1.2.a",
    "-1.2",
    "1.2.3;rm -rf /",
    "1.2.3\r\nX-Injected: 1",
]


def _elements(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(offset of the length field, its size, value length) of the top-level Explicit VR LE
    data set elements of ``data`` (a small file from :func:`small_instance`)."""
    (group_length,) = struct.unpack("<L", data[140:144])
    pos = 144 + group_length
    while pos + 8 <= len(data):
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OF", b"OD", b"OL", b"OV", b"SV", b"UV"):
            (length,) = struct.unpack("<L", data[pos + 8 : pos + 12])
            yield pos + 8, 4, length
            pos += 12 + length
        else:
            (length,) = struct.unpack("<H", data[pos + 6 : pos + 8])
            yield pos + 6, 2, length
            pos += 8 + length


def multipart_cases() -> Iterator[Case]:
    good = small_instance(1)
    rng = random.Random(1)
    content_types = {
        "no content type": None,
        "text/plain": "text/plain",
        "form-data": "multipart/form-data; boundary=BOUNDARY",
        "related without boundary": 'multipart/related; type="application/dicom"',
        "empty boundary": 'multipart/related; type="application/dicom"; boundary=""',
        "overlong boundary": 'multipart/related; type="application/dicom"; boundary=' + "b" * 300,
        "json part type": 'multipart/related; type="application/json"; boundary=BOUNDARY',
        "dicom+json part type": 'multipart/related; type="application/dicom+json"; boundary=BOUNDARY',
        "garbage params": "multipart/related; ;;;=;boundary",
        "non-latin content type": "multipart/related; boundary=ÿÿÿ",
        "application/dicom body": "application/dicom",
        "wrong boundary": 'multipart/related; type="application/dicom"; boundary=OTHER',
    }
    for name, ctype in content_types.items():
        yield Case(f"content-type: {name}", body=wrap(good), headers={"Content-Type": ctype} if ctype else {})
    bodies = {
        "empty body": b"",
        "no delimiter": good,
        "only the closing delimiter": b"--BOUNDARY--\r\n",
        "preamble only": b"this is a preamble\r\n",
        "truncated before closing": wrap(good)[:-20],
        "delimiter without CRLF": b"--BOUNDARY" + good + b"--BOUNDARY--",
        "LF line endings": wrap(good).replace(b"\r\n", b"\n"),
        "header without colon": b"--BOUNDARY\r\nContent-Type application/dicom\r\n\r\n"
        + good
        + b"\r\n--BOUNDARY--\r\n",
        "header with NUL": b"--BOUNDARY\r\nContent-Type: app\x00/dicom\r\n\r\n" + good + b"\r\n--BOUNDARY--\r\n",
        "oversized part header": b"--BOUNDARY\r\nX-Pad: " + b"a" * 5000 + b"\r\n\r\n" + good + b"\r\n--BOUNDARY--\r\n",
        "many part headers": b"--BOUNDARY\r\n" + b"X: y\r\n" * 1000 + b"\r\n" + good + b"\r\n--BOUNDARY--\r\n",
        "too many parts": wrap(*[b"x"] * 25),
        "too many empty parts": b"--BOUNDARY\r\n\r\n\r\n" * 30 + b"--BOUNDARY--\r\n",
        "text/plain part": wrap(b"hello", part_type="text/plain"),
        "nested multipart part": wrap(wrap(good), part_type="multipart/related; boundary=BOUNDARY"),
        "json part": wrap(b'{"00100010": {}}', part_type="application/dicom+json"),
        "empty part": wrap(b""),
        "closing delimiter without dashes": wrap(good)[:-4] + b"\r\n",
        "boundary inside the part": wrap(b"--BOUNDARY\r\n" + good),
        "CRLF flood": b"\r\n" * 100_000,
        "dashes flood": b"-" * 100_000,
        "delimiter storm": b"--BOUNDARY\r\n" * 5000,
    }
    for name, body in bodies.items():
        yield Case(f"multipart: {name}", body=body)
    for i in range(20):
        size = rng.choice([1, 7, 100, 1000, 10_000, 100_000])
        yield Case(f"multipart: random bytes #{i}", body=bytes(rng.getrandbits(8) for _ in range(size)))
    for i in range(10):
        junk = bytes(rng.getrandbits(8) for _ in range(200))
        yield Case(
            f"multipart: random part headers #{i}", body=b"--BOUNDARY\r\n" + junk + b"\r\n\r\nx\r\n--BOUNDARY--\r\n"
        )


def dicom_cases() -> Iterator[Case]:
    rng = random.Random(2)
    good = small_instance(2)
    for i in range(20):
        size = rng.choice([0, 1, 128, 132, 200, 1000, 5000])
        yield Case(f"dicom: random bytes #{i}", body=wrap(bytes(rng.getrandbits(8) for _ in range(size))))
    for cut in range(0, len(good) - 10, max(1, len(good) // 30)):
        if cut >= 132:
            yield Case(f"dicom: truncated at {cut}", body=wrap(good[:cut]))
    yield Case("dicom: no preamble", body=wrap(good[128:]))
    yield Case("dicom: wrong magic", body=wrap(good[:128] + b"DICX" + good[132:]))
    yield Case("dicom: no meta", body=wrap(good[:132]))
    for k, (offset, size, length) in enumerate(_elements(good)):
        huge = b"\xf0\xff" if size == 2 else b"\xf0\xff\xff\x7f"
        yield Case(f"dicom: element {k} length overrun", body=wrap(good[:offset] + huge + good[offset + size :]))
        if length % 2 == 0 and size == 4:
            odd = struct.pack("<L", length + 1)
            yield Case(f"dicom: element {k} odd length", body=wrap(good[:offset] + odd + good[offset + size :]))
    for ts in ("1.2.3.4.5.6", "1.2.840.10008.1.2.4.999", "garbage", "../../x", "1.2.840.10008.1.2.1.98"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield Case(f"dicom: transfer syntax {ts!r}", body=wrap(factory.with_meta(good, TransferSyntaxUID=ts)))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        yield Case(f"dicom: without {keyword}", body=wrap(factory.without(good, keyword)))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        for j, uid in enumerate(HOSTILE_UIDS):
            if uid.strip() == "":
                continue  # same as "without"
            raw = uid.encode("utf-8").decode("latin-1")  # the UTF-8 bytes, written as they are
            data = factory.without(good, **{keyword: raw})
            yield Case(f"dicom: hostile {keyword} #{j} {uid[:20]!r}", body=wrap(data))
    for depth in (33, 64, 128, 300, 1000):
        yield Case(f"dicom: {depth} nested sequences", body=wrap(factory.nested_sequences(depth)))
        yield Case(
            f"dicom: {depth} nested defined-length sequences",
            body=wrap(factory.nested_sequences(depth, defined_length=True)),
        )
        yield Case(
            f"dicom: {depth} nested implicit sequences",
            body=wrap(factory.nested_sequences(depth, explicit=False)),
        )
    yield Case("dicom: deflate bomb 16 MB", body=wrap(factory.deflate_bomb(16 << 20)))
    yield Case("dicom: deflate bomb 300 MB", body=wrap(factory.deflate_bomb(300 << 20)))
    deflated = factory.deflated_instance(seed=3)
    yield Case("dicom: corrupt deflate stream", body=wrap(deflated[:400] + b"\xff" * 50 + deflated[450:]))
    yield Case("dicom: truncated deflate stream", body=wrap(deflated[: len(deflated) // 2]))
    for ts in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        yield Case(f"dicom: DICOMDIR-like SOP class in {ts}", body=wrap(
            factory.with_meta(good, MediaStorageSOPClassUID="1.2.840.10008.1.3.10", TransferSyntaxUID=ts)
        ))  # fmt: skip
    # Implicit VR has 32-bit lengths: text values past PS3.5's maxima (and past what explicit VR
    # can encode) are refused by gateway.dicom.textlimits.
    for keyword, size in (("PatientName", 3 << 20), ("StudyDescription", 300), ("ImageComments", 1 << 20)):
        ds = factory.ct_dataset(seed=4, rows=8, cols=8)
        setattr(ds, keyword, "X" * size)
        yield Case(
            f"dicom: implicit VR {keyword} of {size} bytes",
            body=wrap(factory.to_part10_bytes(ds, ImplicitVRLittleEndian)),
        )
    study = factory.new_uid("other-study")
    yield Case("dicom: study mismatch with URL", path=f"/studies/{study}", body=wrap(good))


def url_cases() -> Iterator[Case]:
    s, se, i = (factory.new_uid(x) for x in ("s", "se", "i"))
    for j, uid in enumerate(HOSTILE_UIDS):
        # Percent-encode everything but letters and digits, dots too: the server, not the client's
        # URL normalization, must see the "..".
        quoted = "".join(c if c.isalnum() else f"%{ord(c):02X}" for c in uid.encode().decode("latin-1"))
        if not quoted:
            continue
        yield Case(f"url: hostile study #{j}", "GET", f"/studies/{quoted}", headers={})
        yield Case(f"url: hostile series #{j}", "GET", f"/studies/{s}/series/{quoted}/metadata", headers={})
        yield Case(f"url: hostile instance #{j}", "GET", f"/studies/{s}/series/{se}/instances/{quoted}", headers={})
        yield Case(f"url: hostile STOW study #{j}", "POST", f"/studies/{quoted}", body=wrap(b"x"))
    base = f"/studies/{s}/series/{se}/instances/{i}"
    for frames in ("0", "-1", "1,,2", "99999999999999999999999", "a", ",", "1;2", "%00", "1" * 5000):
        yield Case(f"url: frames {frames[:20]!r}", "GET", f"{base}/frames/{frames}", headers={})
    for path in (
        "..%2F..%2Fetc%2Fpasswd",
        "7FE00010/%2E%2E/%2E%2E/x",
        "%2e%2e/%2e%2e",
        "00000000/0/1",
        "ZZZZ",
        "7FE00010" * 100,
    ):
        yield Case(f"url: bulkdata {path[:20]!r}", "GET", f"{base}/bulkdata/{path}", headers={})
    tolerated = [
        "PatientName=" + "A" * 20000,  # matches nothing
        "includefield=" + ",".join(["00100010"] * 5000),  # one include, many times
        "PatientName=%FF%FE",  # decoded with replacement characters; matches nothing
        "PatientName=%00",
    ]
    for j, q in enumerate(tolerated):
        for level in ("/studies", "/series", "/instances"):
            yield Case(f"url: odd query #{j} at {level}", "GET", f"{level}?{q}", headers={}, must_refuse=False)
    queries = [
        "NoSuchKey=1",
        "limit=-1",
        "limit=abc",
        "offset=99999999999999999999",
        "includefield=../etc",
        "StudyDate=20240101-20230101-",
        "StudyDate=abc",
        "StudyInstanceUID=../../x",
        "StudyInstanceUID=" + ",".join(["1.2.3"] * 2000),
        "fuzzymatching=maybe",
        "00100010.00100020=x",
        "0002000=1",
        "00020010=1.2",
        "SeriesNumber=one",
        "Rows=1e999",
        "limit=1&limit=2",
    ]
    for j, q in enumerate(queries):
        for level in ("/studies", "/series", "/instances"):
            yield Case(f"url: query #{j} at {level}", "GET", f"{level}?{q}", headers={})
    for accept in ("garbage", "multipart/related; type=", "application/dicom; transfer-syntax=../..", "*/*;q=abc"):
        yield Case(f"url: Accept {accept!r}", "GET", f"/studies/{s}/metadata", headers={"Accept": accept})


def all_cases() -> list[Case]:
    cases = [*multipart_cases(), *dicom_cases(), *url_cases()]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases
