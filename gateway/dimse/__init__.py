"""The DIMSE front door: pynetdicom event handlers over the same services as DICOMweb."""
