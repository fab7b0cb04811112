"""Which attributes live at which QIDO level, and which ones a QIDO response must carry.

The tables here are shared by every index implementation and, later, by the C-FIND identifier
translation, so that "study-level attribute" means the same thing everywhere:

* :data:`STUDY_TAGS` — Patient (PS3.3 C.7.1.1), General Study (C.7.2.1) and Patient Study
  (C.7.2.2) modules, plus SpecificCharacterSet, TimezoneOffsetFromUTC and InstitutionName.
  InstitutionName belongs to General Equipment (series) in the IOD, but archives commonly offer
  it as a study key and the index keeps it with the study (first instance wins).
* :data:`SERIES_TAGS` — General Series (C.7.3.1) and General Equipment (C.7.5.1).
* Everything else in the data dictionary is instance-level.

Tags are 8-digit upper-case hex strings, the key form of DICOM JSON (PS3.18 F.2.1).
"""

from __future__ import annotations

from typing import Literal

from pydicom.datadict import dictionary_VR, tag_for_keyword

Level = Literal["study", "series", "instance"]
LEVELS: tuple[Level, ...] = ("study", "series", "instance")


def tag_of(keyword: str) -> str:
    """Hex tag of a data-dictionary keyword; KeyError for unknown keywords."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


def vr_of(tag: str) -> str | None:
    """The dictionary VR of ``tag`` (first choice of ambiguous ones like "US or SS"); None when
    the tag is not in the dictionary (private or unknown)."""
    try:
        vr = dictionary_VR(int(tag, 16))
    except (KeyError, ValueError):
        return None
    return vr.split(" or ")[0]


def _tags(*keywords: str) -> frozenset[str]:
    return frozenset(tag_of(k) for k in keywords)


STUDY_TAGS = _tags(
    "SpecificCharacterSet",
    "TimezoneOffsetFromUTC",
    "InstitutionName",
    # Patient module, PS3.3 C.7.1.1
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "EthnicGroup",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "BreedRegistrationSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "QualityControlSubject",
    "ReferencedPatientSequence",
    # General Study module, PS3.3 C.7.2.1
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "ConsultingPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "RequestingService",
    "ProcedureCodeSequence",
    "ReasonForPerformedProcedureCodeSequence",
    "ReferencedStudySequence",
    # Patient Study module, PS3.3 C.7.2.2
    "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientSizeCodeSequence",
    "Occupation",
    "AdditionalPatientHistory",
    "AdmissionID",
    "IssuerOfAdmissionIDSequence",
    "MedicalAlerts",
    "Allergies",
    "SmokingStatus",
    "PregnancyStatus",
    "LastMenstrualDate",
    "PatientState",
    "PatientSexNeutered",
    "ServiceEpisodeID",
    "ServiceEpisodeDescription",
)

SERIES_TAGS = _tags(
    # General Series module, PS3.3 C.7.3.1
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "Laterality",
    "SeriesDate",
    "SeriesTime",
    "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence",
    "ProtocolName",
    "SeriesDescription",
    "SeriesDescriptionCodeSequence",
    "OperatorsName",
    "OperatorIdentificationSequence",
    "ReferencedPerformedProcedureStepSequence",
    "RelatedSeriesSequence",
    "AnatomicalOrientationType",
    "BodyPartExamined",
    "PatientPosition",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "RequestAttributesSequence",
    "PerformedProcedureStepID",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime",
    "PerformedProcedureStepDescription",
    "PerformedProtocolCodeSequence",
    "CommentsOnThePerformedProcedureStep",
    # General Equipment module, PS3.3 C.7.5.1 (constant within a series)
    "Manufacturer",
    "InstitutionAddress",
    "StationName",
    "InstitutionalDepartmentName",
    "ManufacturerModelName",
    "DeviceSerialNumber",
    "SoftwareVersions",
)

# Attributes the server computes rather than stores (PS3.4 C.6.1.1.5, PS3.18 Table 10.6.3-3).
MODALITIES_IN_STUDY = tag_of("ModalitiesInStudy")
NUMBER_OF_STUDY_RELATED_SERIES = tag_of("NumberOfStudyRelatedSeries")
NUMBER_OF_STUDY_RELATED_INSTANCES = tag_of("NumberOfStudyRelatedInstances")
NUMBER_OF_SERIES_RELATED_INSTANCES = tag_of("NumberOfSeriesRelatedInstances")
INSTANCE_AVAILABILITY = tag_of("InstanceAvailability")
RETRIEVE_URL = tag_of("RetrieveURL")

STUDY_INSTANCE_UID = tag_of("StudyInstanceUID")
SERIES_INSTANCE_UID = tag_of("SeriesInstanceUID")
SOP_INSTANCE_UID = tag_of("SOPInstanceUID")

# Never part of a QIDO row: the pixel data itself (the metadata should not hold it anyway).
PIXEL_DATA_TAGS = _tags("PixelData", "FloatPixelData", "DoubleFloatPixelData")

_COMPUTED_LEVEL: dict[str, Level | None] = {
    MODALITIES_IN_STUDY: "study",
    NUMBER_OF_STUDY_RELATED_SERIES: "study",
    NUMBER_OF_STUDY_RELATED_INSTANCES: "study",
    NUMBER_OF_SERIES_RELATED_INSTANCES: "series",
    INSTANCE_AVAILABILITY: None,  # exists at every level
    RETRIEVE_URL: None,
}

# Computed keys that can only be asked for (empty value), not matched. ModalitiesInStudy is the
# one computed key that is matchable (PS3.4 C.6.1.1.5.1).
RETURN_ONLY_TAGS = frozenset(_COMPUTED_LEVEL) - {MODALITIES_IN_STUDY}


def attribute_level(tag: str) -> Level | None:
    """The level an attribute lives at; None for the per-row computed attributes that exist at
    every level (InstanceAvailability, RetrieveURL)."""
    if tag in _COMPUTED_LEVEL:
        return _COMPUTED_LEVEL[tag]
    if tag in STUDY_TAGS:
        return "study"
    if tag in SERIES_TAGS:
        return "series"
    return "instance"


# PS3.18 Table 10.6.3-3: attributes returned for every match. The first set of each level is
# always returned (empty when the entity has no value, as a C-FIND SCP would); the second only
# when present, because those are conditional or only meaningful for some SOP classes.
# RetrieveURL is added by the QIDO service, which knows the public base URL.
REQUIRED_RETURN: dict[Level, tuple[frozenset[str], frozenset[str]]] = {
    "study": (
        _tags(
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "InstanceAvailability",
            "ModalitiesInStudy",
            "ReferringPhysicianName",
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyInstanceUID",
            "StudyID",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
        ),
        _tags("TimezoneOffsetFromUTC"),
    ),
    "series": (
        _tags(
            "Modality",
            "SeriesDescription",
            "SeriesInstanceUID",
            "SeriesNumber",
            "NumberOfSeriesRelatedInstances",
            "PerformedProcedureStepStartDate",
            "PerformedProcedureStepStartTime",
        ),
        _tags("TimezoneOffsetFromUTC", "RequestAttributesSequence"),
    ),
    "instance": (
        _tags("SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "InstanceNumber"),
        _tags("TimezoneOffsetFromUTC", "Rows", "Columns", "BitsAllocated", "NumberOfFrames"),
    ),
}

# The UIDs of the entities above a row are always returned so a client can address the row
# (e.g. build the RetrieveURL) even when the query was scoped by the path.
PARENT_UIDS: dict[Level, frozenset[str]] = {
    "study": frozenset(),
    "series": frozenset({STUDY_INSTANCE_UID}),
    "instance": frozenset({STUDY_INSTANCE_UID, SERIES_INSTANCE_UID}),
}
