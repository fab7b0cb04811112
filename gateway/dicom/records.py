"""The pure records of one stored instance: what the parser produces, the index keeps and the
frame readers use. They sit in ``gateway.dicom`` (the floor below the ports) so that the DICOM
helpers never import the ports; ``gateway.ports`` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.dicom.uids import instance_key

# Byte range (offset, length) of one fragment value inside a stored Part 10 object.
Span = tuple[int, int]


@dataclass(frozen=True)
class PixelDescription:
    """What a decoder needs to turn one stored frame into pixels (PS3.3 C.7.6.3)."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    planar_configuration: int
    number_of_frames: int


@dataclass(frozen=True)
class InstanceRecord:
    """Everything the index keeps about one stored instance.

    ``metadata`` is the instance's DICOM JSON (orjson bytes, one object) without pixel data;
    its BulkDataURI values are *relative* (``studies/.../bulkdata/...``) and are made absolute
    at response time by prefixing the public base URL, so the index never stores a host name.
    ``frames[i]`` lists the spans of frame i+1's fragment values (one span for native data).
    """

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    size: int
    sha256: str
    # "stow", "reindex", "import" (dicomweb-gateway import), "dimse:<name>" (a DIMSE client's
    # C-STORE), "pacs:<name>" (cached from a PACS)
    origin: str
    metadata: bytes
    frames: tuple[tuple[Span, ...], ...] = ()
    pixel: PixelDescription | None = None
    stored_at: float = 0.0  # seconds since the epoch
    # Which object holds it: "" the one stored under its UIDs, else a corrected version of it
    # (gateway.services.bulk_update; gateway.dicom.uids.instance_key).
    version: str = ""
    # A copy cached from a PACS that an upload was also told is stored: the cache expiry keeps
    # it. Set by the index as it reads the row; not part of what the instance *is*.
    shared: bool = field(default=False, compare=False)

    @property
    def object_key(self) -> str:
        """The object key of the Part 10 file this record describes."""
        return instance_key(self.study_uid, self.series_uid, self.sop_uid, self.version)


@dataclass(frozen=True)
class ReceivedInstance:
    """One instance received over DIMSE (a C-STORE: a C-GET or C-MOVE sub-operation, or a DIMSE
    client's push), spooled as a Part 10 file at ``path``. The consumer owns the file and deletes
    it when done."""

    path: Path
    sop_uid: str
    transfer_syntax: str
