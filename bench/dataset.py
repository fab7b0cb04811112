"""The benchmark's data: a CT series, small studies, a multi-frame and compressed instances,
fresh batches for STOW, and a streamed multi-gigabyte upload built from one slice template."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom

from tests import factory

CT_ROWS = CT_COLS = 512
# Seeds keep the extra instances out of the CT series (factory UIDs derive from the seed).
SEED_CT, SEED_XA, SEED_JPEG, SEED_RLE, SEED_STOW = 0, 1, 2, 3, 1000
MULTIPART_DICOM = 'multipart/related; type="application/dicom"; boundary={}'


@dataclass(frozen=True)
class BenchData:
    """What was generated and where: every file is loaded into both servers."""

    files: list[Path]
    study_uid: str
    series_uid: str
    first_sop_uid: str
    slices: int
    total_bytes: int


def generate(root: Path, slices: int) -> BenchData:
    """Write the data set into ``root`` (one Part 10 file per instance)."""
    root.mkdir(parents=True, exist_ok=True)
    series = factory.ct_series(slices, CT_ROWS, CT_COLS, seed=SEED_CT, study_description="BENCH CT")
    others = [
        *factory.study_catalog(),
        factory.multiframe_xa(seed=SEED_XA, frames=30, rows=512, cols=512),
        factory.jpeg_baseline_instance(seed=SEED_JPEG, rows=512, cols=512),
        factory.rle_instance(seed=SEED_RLE, rows=512, cols=512),
    ]
    files = [factory.write(root / f"{i:05d}.dcm", data) for i, data in enumerate([*series, *others])]
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    return BenchData(
        files=files,
        study_uid=str(first.StudyInstanceUID),
        series_uid=str(first.SeriesInstanceUID),
        first_sop_uid=str(first.SOPInstanceUID),
        slices=slices,
        total_bytes=sum(len(d) for d in series),
    )


def stow_batch(rep: int, count: int) -> list[bytes]:
    """``count`` CT slices with UIDs never used before in this run (a new study per ``rep``)."""
    return factory.ct_series(count, CT_ROWS, CT_COLS, seed=SEED_STOW + rep, study_description="BENCH STOW")


def multipart_body(instances: Sequence[bytes]) -> tuple[bytes, str]:
    """A STOW-RS request body and its Content-Type."""
    boundary = uuid.uuid4().hex
    chunks = [_part_head(boundary) + data + b"\r\n" for data in instances]
    chunks.append(_closing(boundary))
    return b"".join(chunks), MULTIPART_DICOM.format(boundary)


def _part_head(boundary: str) -> bytes:
    return f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()


def _closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode()


class LargeUpload:
    """A STOW body of ``count`` 512x512 CT slices of one new series, produced part by part.

    One slice is encoded once with placeholder UIDs; each part is that slice with a new SOP
    Instance UID of the same length written over the placeholder in the header (the pixel data
    bytes are shared), so the body can be gigabytes while this process holds one slice.
    """

    def __init__(self, count: int) -> None:
        run = secrets.randbelow(9 * 10**9) + 10**9  # ten digits, no leading zero
        self.count = count
        self.study_uid = f"{factory.UID_PREFIX}77.{run}"
        self.series_uid = f"{factory.UID_PREFIX}77.{run}.1"
        self._sop_prefix = f"{factory.UID_PREFIX}77.{run}.1."
        placeholder = self._sop_uid(0)
        ds = factory.ct_dataset(
            seed=SEED_STOW - 1,
            rows=CT_ROWS,
            cols=CT_COLS,
            study_uid=self.study_uid,
            series_uid=self.series_uid,
            sop_uid=placeholder,
            study_description="BENCH LARGE UPLOAD",
        )
        data = factory.to_part10_bytes(ds)
        pixel_len = len(ds.PixelData)
        self._head, self._pixels = data[:-pixel_len], data[-pixel_len:]
        self._placeholder = placeholder.encode()
        if self._head.count(self._placeholder) != 2:  # file meta and data set
            raise RuntimeError("slice template: SOP Instance UID placeholder not found twice")
        self._boundary = uuid.uuid4().hex
        self.content_type = MULTIPART_DICOM.format(self._boundary)
        self.slice_bytes = len(data)

    def _sop_uid(self, index: int) -> str:
        return f"{self._sop_prefix}{10**7 + index}"  # fixed length for index < 9 * 10**7

    @property
    def content_length(self) -> int:
        per_part = len(_part_head(self._boundary)) + self.slice_bytes + 2
        return self.count * per_part + len(_closing(self._boundary))

    def __iter__(self) -> Iterator[bytes]:
        head = _part_head(self._boundary)
        for i in range(1, self.count + 1):
            yield head + self._head.replace(self._placeholder, self._sop_uid(i).encode())
            yield self._pixels
            yield b"\r\n"
        yield _closing(self._boundary)
