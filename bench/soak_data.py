"""The soak test's data: the seeded studies, the instances STOWed during the run, and the check
that every acknowledged instance reads back byte for byte.

New instances come from one 64×64 CT encoded once with placeholder UIDs and patient identity of
fixed length; each new instance is that template with its own values written over the
placeholders (so the load process spends microseconds, not a pydicom encode, per instance). A
``variant`` changes one pixel byte: same UIDs, other content (a conflicting duplicate).
"""

from __future__ import annotations

import hashlib
import io
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pydicom

from tests import factory

# The run's UIDs are ``{root}.{role}.{n}`` with ``n`` of eight digits and no leading zero
# (PS3.5 9.1), so every UID of a role has the same length as its placeholder.
_ROLE_STUDY, _ROLE_SERIES, _ROLE_SOP = 1, 2, 3
_FIRST = 10**7
TEMPLATE_SIZE = 64
SEED_CT, SEED_XA, SEED_JPEG, SEED_RLE = 900, 901, 902, 903


def new_run_root() -> str:
    """A UID root no earlier run used: ten random digits under the factory's prefix."""
    return f"{factory.UID_PREFIX}88.{secrets.randbelow(9 * 10**9) + 10**9}"


def run_uid(root: str, role: int, n: int) -> str:
    return f"{root}.{role}.{_FIRST + n}"


@dataclass(frozen=True)
class Target:
    """One readable instance: where it lives and how many frames it has."""

    study: str
    series: str
    sop: str
    frames: int = 1


@dataclass(frozen=True)
class Seed:
    """What is stored before the load starts."""

    files: list[bytes]
    targets: list[Target]


def seed_data() -> Seed:
    """Six small catalog studies (varied names, dates, modalities, character sets), a 20-slice CT
    series, a 30-frame XA, a JPEG baseline and an RLE instance: what QIDO and WADO requests hit."""
    files = [
        *factory.study_catalog(),
        *factory.ct_series(20, 128, 128, seed=SEED_CT, study_description="SOAK CT", patient_name="SOAK^SEED"),
        factory.multiframe_xa(seed=SEED_XA, frames=30, rows=128, cols=128),
        factory.jpeg_baseline_instance(seed=SEED_JPEG, rows=128, cols=128),
        factory.rle_instance(seed=SEED_RLE, rows=128, cols=128),
    ]
    targets = []
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        targets.append(Target(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), frames))
    return Seed(files, targets)


class InstanceTemplate:
    """Builds the run's new instances; see the module docstring."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._placeholders = {
            "study": run_uid(root, _ROLE_STUDY, 0).encode(),
            "series": run_uid(root, _ROLE_SERIES, 0).encode(),
            "sop": run_uid(root, _ROLE_SOP, 0).encode(),
            "name": self.patient_name(0).encode(),
            "id": self.patient_id(0).encode(),
        }
        ds = factory.ct_dataset(
            seed=SEED_CT + 100,
            rows=TEMPLATE_SIZE,
            cols=TEMPLATE_SIZE,
            study_uid=self._placeholders["study"].decode(),
            series_uid=self._placeholders["series"].decode(),
            sop_uid=self._placeholders["sop"].decode(),
            patient=factory.Patient(self.patient_name(0), self.patient_id(0), "19600101", "F"),
            study_description="SOAK STOW",
            series_description="SOAK SERIES",
            accession="SOAK",
        )
        self._bytes = factory.to_part10_bytes(ds)
        expected = {"study": 1, "series": 1, "sop": 2, "name": 1, "id": 1}  # the SOP UID is in the file meta too
        for key, count in expected.items():
            if self._bytes.count(self._placeholders[key]) != count:
                raise RuntimeError(f"soak template: placeholder {key} not found {count} time(s)")

    @staticmethod
    def patient_name(study: int) -> str:
        return f"SOAK^PATIENT{study:04d}"

    @staticmethod
    def patient_id(study: int) -> str:
        return f"SOAKID{study:04d}"

    def uids(self, study: int, series: int, sop: int) -> tuple[str, str, str]:
        return (
            run_uid(self.root, _ROLE_STUDY, study),
            run_uid(self.root, _ROLE_SERIES, series),
            run_uid(self.root, _ROLE_SOP, sop),
        )

    def build(self, study: int, series: int, sop: int, *, variant: int = 0) -> bytes:
        """Instance ``sop`` of series ``series`` of the run's study ``study``."""
        study_uid, series_uid, sop_uid = self.uids(study, series, sop)
        data = self._bytes
        for key, value in (
            ("study", study_uid),
            ("series", series_uid),
            ("sop", sop_uid),
            ("name", self.patient_name(study)),
            ("id", self.patient_id(study)),
        ):
            data = data.replace(self._placeholders[key], value.encode())
        if variant:  # the last byte is pixel data: other content under the same UIDs
            data = data[:-1] + bytes([(data[-1] + variant) % 256])
        return data


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """The part bodies of a complete multipart/related response (PS3.18 8.6.1.2)."""
    boundary = _boundary(content_type)
    delimiter = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the close delimiter
            break
        head_end = chunk.find(b"\r\n\r\n")
        if head_end < 0:
            raise ValueError("multipart part without a header block")
        payload = chunk[head_end + 4 :]
        parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts


def _boundary(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            return value.strip('"')
    raise ValueError(f"no boundary in {content_type!r}")


@dataclass(frozen=True)
class Acknowledged:
    """An instance the gateway acknowledged (STOW 200) and the digest of the bytes sent."""

    study: str
    series: str
    sop: str
    sha256: str


def by_series(acked: Iterable[Acknowledged]) -> dict[tuple[str, str], dict[str, str]]:
    """``{(study, series): {sop: sha256}}``."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for item in acked:
        out.setdefault((item.study, item.series), {})[item.sop] = item.sha256
    return out


def series_mismatch(expected: dict[str, str], parts: Sequence[bytes]) -> str | None:
    """None when the retrieved parts are exactly the expected instances, byte for byte."""
    got: dict[str, str] = {}
    for part in parts:
        ds = pydicom.dcmread(io.BytesIO(part), stop_before_pixels=True)
        got[str(ds.SOPInstanceUID)] = sha256(part)
    missing = sorted(set(expected) - set(got))
    changed = sorted(sop for sop in set(expected) & set(got) if expected[sop] != got[sop])
    extra = sorted(set(got) - set(expected))
    if not (missing or changed or extra):
        return None
    example = (missing + changed + extra)[0]
    return f"{len(missing)} missing, {len(changed)} with other bytes, {len(extra)} unexpected (e.g. {example})"
